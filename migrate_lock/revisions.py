"""Revisions on both sides: what the code's scripts define, and what the database is at.

The database side is plain SQL on a psycopg connection (no SQLAlchemy), so the
"nothing to do" path stays cheap. The script side loads Alembic's ScriptDirectory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from migrate_lock.errors import UsageError

if TYPE_CHECKING:
    import psycopg
    from alembic.script import ScriptDirectory

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


def current_schema(connection: psycopg.Connection[Any]) -> str:
    row = connection.execute("SELECT current_schema()").fetchone()
    return str(row[0]) if row and row[0] else "public"


def database_revisions(
    connection: psycopg.Connection[Any], table: VersionTable
) -> tuple[str, ...] | None:
    """The revisions the database is at; ``()`` for an empty version table, None if absent."""
    row = connection.execute("SELECT to_regclass(%s)", (table.qualified,)).fetchone()
    if not row or row[0] is None:
        return None
    rows = connection.execute(f"SELECT version_num FROM {table.qualified}").fetchall()
    return tuple(sorted(str(r[0]) for r in rows))


def seen_revisions(
    connection: psycopg.Connection[Any], table: VersionTable, revisions: Iterable[str]
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
    connection: psycopg.Connection[Any],
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


class Scripts:
    """The migration scripts of one project (Alembic's ScriptDirectory, loaded once)."""

    def __init__(self, script: ScriptDirectory) -> None:
        self.script = script
        self._ancestors: dict[tuple[str, ...], frozenset[str]] = {}

    def heads(self) -> tuple[str, ...]:
        return tuple(sorted(self.script.get_heads()))

    def knows(self, revision: str) -> bool:
        from alembic.util import CommandError

        try:
            return self.script.get_revision(revision) is not None
        except CommandError:
            return False

    def resolve(self, target: str) -> tuple[str, ...]:
        """The revisions ``target`` (``heads``, ``head``, a revision, a label) stands for."""
        from alembic.script.revision import MultipleHeads, ResolutionError, Revision
        from alembic.util import CommandError

        if target == "heads":
            return self.heads()
        try:
            scripts = self.script.revision_map.get_revisions(target)
        except MultipleHeads:
            heads = ", ".join(self.heads())
            raise UsageError(
                f"'{target}' is ambiguous: the scripts have several heads ({heads})",
                hint="merge them with `alembic merge heads`, or upgrade to `heads`",
            ) from None
        except (ResolutionError, CommandError) as error:
            raise UsageError(
                f"unknown target revision '{target}' ({error})",
                hint="see `migrate-lock history` for the revisions this code has",
            ) from None
        revisions = tuple(sorted(s.revision for s in scripts if isinstance(s, Revision)))
        if not revisions:
            raise UsageError(
                f"target '{target}' names no revision", hint="upgrade to `heads` or a revision id"
            )
        return revisions

    def ancestry(self, revisions: tuple[str, ...]) -> frozenset[str]:
        """``revisions`` and everything they depend on."""
        key = tuple(sorted(revisions))
        if key not in self._ancestors:
            found = (
                frozenset(s.revision for s in self.script.iterate_revisions(key, "base"))
                if key
                else frozenset()
            )
            self._ancestors[key] = found
        return self._ancestors[key]

    def pending(self, current: tuple[str, ...], target: tuple[str, ...]) -> list[str]:
        """Revisions to apply to go from ``current`` to ``target``, oldest first."""
        done = self.ancestry(current)
        wanted = self.ancestry(target)
        order = [s.revision for s in self.script.walk_revisions("base", "heads")]
        return [rev for rev in reversed(order) if rev in wanted and rev not in done]


def load_scripts(config: Any) -> Scripts:
    """Load the project's scripts from an Alembic Config."""
    from alembic.script import ScriptDirectory

    return Scripts(ScriptDirectory.from_config(config))
