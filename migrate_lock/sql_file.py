"""Where revision files written before the ``seeds/`` package import ``run_sql_file`` from.

``from migrate_lock.sql_file import run_sql_file`` is in the baseline revision that
``migrate-lock init`` wrote until 0.1 and in the docs of that time; revision files
live for ever, so this path keeps working. New code imports ``migrate_lock.run_sql_file``.
"""

from __future__ import annotations

from migrate_lock.seeds.sql_file import run_sql_file

__all__ = ["run_sql_file"]
