"""The database side of revisions: Alembic's version table and our history, in plain SQL.

Light on purpose (no SQLAlchemy, no Alembic, no psycopg import): the at-head path reads
the database's revisions through the lean connection with these same functions, and the
full path through psycopg's. Both satisfy ``lean.abc.LockConnection``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from migrate_lock.lean.abc import LockConnection

#: Our own record of every revision a database has been at, so that a database whose
#: revision this code does not know can be told "ahead" (a newer release migrated it,
#: past our heads) from "unknown" (a revision we have never seen applied here).
HISTORY_TABLE = "migrate_lock_history"


@dataclass(frozen=True)
class VersionTable:
    """Where Alembic keeps the database's revision."""

    schema: str
    name: str

    @property
    def qualified(self) -> str:
        return f'"{self.schema}"."{self.name}"'

    @property
    def history_qualified(self) -> str:
        return f'"{self.schema}"."{HISTORY_TABLE}"'


def current_schema(connection: LockConnection) -> str:
    row = connection.execute("SELECT current_schema()").fetchone()
    return str(row[0]) if row and row[0] else "public"


def database_revisions(connection: LockConnection, table: VersionTable) -> tuple[str, ...] | None:
    """The revisions the database is at; ``()`` for an empty version table, None if absent."""
    row = connection.execute("SELECT to_regclass(%s)", (table.qualified,)).fetchone()
    if not row or row[0] is None:
        return None
    rows = connection.execute(f"SELECT version_num FROM {table.qualified}").fetchall()
    return tuple(sorted(str(r[0]) for r in rows))


def seen_revisions(
    connection: LockConnection, table: VersionTable, revisions: Iterable[str]
) -> set[str]:
    """Which of ``revisions`` this database has been at (from our history table)."""
    wanted = list(revisions)
    row = connection.execute("SELECT to_regclass(%s)", (table.history_qualified,)).fetchone()
    if not row or row[0] is None or not wanted:
        return set()
    rows = connection.execute(
        f"SELECT revision FROM {table.history_qualified}"
        " WHERE version_table = %s AND revision = ANY(%s)",
        (table.name, wanted),
    ).fetchall()
    return {str(r[0]) for r in rows}


def record_history(
    connection: LockConnection,
    table: VersionTable,
    revisions: Iterable[str],
    *,
    create: bool = True,
) -> None:
    """Remember that the database has been at (or past) each of ``revisions``.

    ``create=False``: the table is known to exist (spares a catalog lookup and a notice).
    """
    # Keyed by version table too: two applications may share a schema.
    if create:
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {table.history_qualified} ("
            " version_table text NOT NULL,"
            " revision text NOT NULL,"
            " first_applied_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (version_table, revision))"
        )
    connection.execute(
        f"INSERT INTO {table.history_qualified} (version_table, revision)"
        " SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING",
        (table.name, sorted(set(revisions))),
    )
