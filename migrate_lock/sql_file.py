"""Where revision files written before the ``seeds/`` package may import ``run_sql_file`` from.

Until 0.1 the SQL-file runner lived in this module (``migrate-lock init``'s baseline
imported it through ``migrate_lock.seed``, which still works too). Revision files live
for ever, so this path keeps working. New code imports ``migrate_lock.run_sql_file``.
"""

from __future__ import annotations

from migrate_lock.seeds.sql_file import run_sql_file

__all__ = ["run_sql_file"]
