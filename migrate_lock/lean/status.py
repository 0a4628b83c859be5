"""``status`` at head without Alembic, SQLAlchemy, psycopg or pydantic (issue 18, item 6).

``migrate-lock status`` is what a deploy script or a probe runs, often on every replica;
at head it should cost what ``upgrade`` at head costs. It answers as the at-head path
does: the heads from a fresh manifest or the revision files' text
(static_revisions.py), the database's revisions and the lock's holder over libpq.
Anything else (behind, ahead, unknown, heads it cannot vouch for, a setting or URL it
is unsure of, a connection problem) yields None, and inspection.status answers in full,
with the proper errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from migrate_lock.lean.fastpath import UNDECIDED, _migration_url
from migrate_lock.lean.pq import LeanConnection
from migrate_lock.lean.settings_schema import dotenv_path, read_dotenv, read_settings
from migrate_lock.lean.static_revisions import known_heads
from migrate_lock.lock import LockHolder, find_holder, lock_key
from migrate_lock.logs import log
from migrate_lock.state import SchemaState
from migrate_lock.version_table import (
    VersionTable,
    current_schema,
    database_revisions,
    version_table_busy,
)


@dataclass(frozen=True)
class LeanStatus:
    """The database at the heads, the lock's key and who holds it now."""

    state: SchemaState
    lock_key: int
    lock_holder: LockHolder | None


def lean_status(overrides: Mapping[str, Any] | None = None) -> LeanStatus | None:
    """The status when the database is at the heads and this path is certain, else None.

    ``overrides`` are settings by field name (None = not given), as for ``upgrade``.
    """
    overrides = overrides or {}
    try:
        dotenv = read_dotenv(dotenv_path(os.environ, overrides))
        settings = read_settings(os.environ, dotenv, overrides)
        log.configure(log_format=settings.log_format, level=settings.log_level)
        known = known_heads(settings.alembic_config)
        if known is None:
            return None
        url = _migration_url(settings)
        log.add_secret(url.password)
        timeout = int(min(10.0, max(1.0, settings.db_connect_timeout_seconds)))
        with LeanConnection.connect(url.libpq, timeout_seconds=timeout) as connection:
            schema = settings.version_table_schema or current_schema(connection)
            table = VersionTable(schema, settings.version_table)
            if version_table_busy(connection, table):
                return None  # a revision holds it: the full path says so (exit 75)
            current = database_revisions(connection, table)
            if not current or set(current) != set(known.heads):
                return None  # behind, ahead or unknown: the scripts' graph decides
            key = settings.migration_lock_key
            if key is None:
                row = connection.execute("SELECT current_database()").fetchone()
                database = str(row[0]) if row and row[0] else url.database
                key = lock_key(database, schema, table.name)
            return LeanStatus(
                state=SchemaState("at_head", current, known.heads, (), ()),
                lock_key=key,
                lock_holder=find_holder(connection, key),
            )
    except UNDECIDED:
        return None
