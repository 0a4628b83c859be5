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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from migrate_lock.lean.fastpath import (
    UNDECIDED,
    connector,
    lean_settings,
    migration_url,
    version_table_and_key,
)
from migrate_lock.lean.static_revisions import known_heads
from migrate_lock.lock import LockHolder, find_holder
from migrate_lock.state import SchemaState
from migrate_lock.version_table import (
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
    try:
        settings = lean_settings(overrides or {})
        known = known_heads(settings.alembic_config)
        if known is None:
            return None
        url = migration_url(settings)
        with connector(settings, url)() as connection:
            table, key = version_table_and_key(connection, settings, url)
            if version_table_busy(connection, table):
                return None  # a revision holds it: the full path says so (exit 75)
            current = database_revisions(connection, table)
            if not current or set(current) != set(known.heads):
                return None  # behind, ahead or unknown: the scripts' graph decides
            return LeanStatus(
                state=SchemaState("at_head", current, known.heads, (), ()),
                lock_key=key,
                lock_holder=find_holder(connection, key),
            )
    except UNDECIDED:
        return None
