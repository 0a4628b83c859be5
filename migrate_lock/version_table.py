"""The database side of revisions: Alembic's version table and our history, in plain SQL.

Light on purpose (no SQLAlchemy, no Alembic, no psycopg import): the at-head path reads
the database's revisions through the lean connection with these same functions, and the
full path through psycopg's. Both satisfy ``lean.abc.LockConnection``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from migrate_lock.errors import ConfigError

if TYPE_CHECKING:
    from migrate_lock.lean.abc import LockConnection

#: The schema of migrate-lock's own tables: one fixed place per database, whatever
#: VERSION_TABLE_SCHEMA says, and out of the application's schemas (so out of its
#: autogenerate). Created on first use by the role that migrates (a database owner may).
OWN_SCHEMA = "migrate_lock"

#: Our own record of every revision a database has been at, so that a database whose
#: revision this code does not know can be told "ahead" (a newer release migrated it,
#: past our heads) from "unknown" (a revision we have never seen applied here).
HISTORY_TABLE = f'"{OWN_SCHEMA}"."history"'

#: Where releases before the own schema kept their tables: beside the version table.
LEGACY_HISTORY = "migrate_lock_history"
LEGACY_SEEDS = "migrate_lock_seeds"

#: Our record of applied seed files (seeds/files.py and seeds/apply.py use it).
SEEDS_TABLE = f'"{OWN_SCHEMA}"."seeds"'
HISTORY_COLUMNS = ("version_table", "revision", "first_applied_at")
SEEDS_COLUMNS = (
    "version_table",
    "name",
    "checksum",
    "applied_at",
    "inserted",
    "updated",
    "unchanged",
    "deleted",
)


@dataclass(frozen=True)
class VersionTable:
    """Where Alembic keeps the database's revision."""

    schema: str
    name: str

    @property
    def qualified(self) -> str:
        return f'"{self.schema}"."{self.name}"'

    @property
    def key(self) -> str:
        """How our own tables tell applications apart: the version table, qualified."""
        return self.qualified

    @property
    def history_qualified(self) -> str:
        return HISTORY_TABLE

    def legacy(self, name: str) -> str:
        """Where a release before the own schema kept our table ``name``."""
        return f'"{self.schema}"."{name}"'


def current_schema(connection: LockConnection) -> str:
    row = connection.execute("SELECT current_schema()").fetchone()
    return str(row[0]) if row and row[0] else "public"


def database_revisions(connection: LockConnection, table: VersionTable) -> tuple[str, ...] | None:
    """The revisions the database is at; ``()`` for an empty version table, None if absent."""
    row = connection.execute("SELECT to_regclass(%s)", (table.qualified,)).fetchone()
    if not row or row[0] is None:
        return None
    return version_rows(connection, table)


def version_rows(connection: LockConnection, table: VersionTable) -> tuple[str, ...]:
    """The revisions in ``table``, which must exist (else the server's error)."""
    rows = connection.execute(f"SELECT version_num FROM {table.qualified}").fetchall()
    return tuple(sorted(str(r[0]) for r in rows))


def existing(connection: LockConnection, *tables: str) -> tuple[bool, ...]:
    """Which of the qualified ``tables`` exist (one query; a missing schema is no error)."""
    columns = ", ".join("to_regclass(%s) IS NOT NULL" for _ in tables)
    row = connection.execute(f"SELECT {columns}", tables).fetchone()
    return tuple(bool(value) for value in row) if row else tuple(False for _ in tables)


def seen_revisions(
    connection: LockConnection, table: VersionTable, revisions: Iterable[str]
) -> set[str]:
    """Which of ``revisions`` this database has been at (from our history table)."""
    wanted = list(revisions)
    if not wanted:
        return set()
    legacy = table.legacy(LEGACY_HISTORY)
    ours, old = existing(connection, HISTORY_TABLE, legacy)
    seen: set[str] = set()
    if ours:
        rows = connection.execute(
            f"SELECT revision FROM {HISTORY_TABLE} WHERE version_table = %s AND revision = ANY(%s)",
            (table.key, wanted),
        ).fetchall()
        seen.update(str(r[0]) for r in rows)
    if old:  # not moved yet: the next upgrade that migrates moves it
        rows = connection.execute(
            f"SELECT revision FROM {legacy} WHERE version_table = %s AND revision = ANY(%s)",
            (table.name, wanted),
        ).fetchall()
        seen.update(str(r[0]) for r in rows)
    return seen


def record_history(
    connection: LockConnection,
    table: VersionTable,
    revisions: Iterable[str],
    *,
    create: bool = True,
) -> None:
    """Remember that the database has been at (or past) each of ``revisions``.

    ``create=True`` (the first call of a migration): makes sure our schema and table
    exist and moves the tables an older release kept beside the version table into it
    (ConfigError, exit 78, when the role may not create the schema). ``create=False``:
    all that is known to be done (spares the catalog lookups).
    """
    if create:
        # One round trip says what exists: our schema, our tables, the legacy ones.
        history, legacy_history, seeds, legacy_seeds = ensure_own_schema(
            connection,
            HISTORY_TABLE,
            table.legacy(LEGACY_HISTORY),
            SEEDS_TABLE,
            table.legacy(LEGACY_SEEDS),
        )
        if not history:
            # Keyed by the qualified version table: two applications may share a database.
            create_if_missing(
                connection,
                f"CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} ("
                " version_table text NOT NULL,"
                " revision text NOT NULL,"
                " first_applied_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (version_table, revision))",
            )
        if legacy_history or legacy_seeds:
            move_legacy_tables(
                connection, table, present=((legacy_history, True), (legacy_seeds, seeds))
            )
    connection.execute(
        f"INSERT INTO {HISTORY_TABLE} (version_table, revision)"
        " SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING",
        (table.key, sorted(set(revisions))),
    )


def version_table_busy(connection: LockConnection, table: VersionTable) -> bool:
    """Whether another session holds the version table in ACCESS EXCLUSIVE mode (a revision
    that alters it, such as widening version_num, until its run commits). Reading the table
    would then wait for that whole run, holding this connection, unseen by the lock's
    timeout and reports: a waiter treats it as work in progress, ``status`` and ``current``
    say so (MigrationInProgress, exit 75)."""
    row = connection.execute(
        "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'relation' AND granted"
        " AND mode = 'AccessExclusiveLock' AND pid <> pg_backend_pid()"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND relation = to_regclass(%s))",
        (table.qualified,),
    ).fetchone()
    return bool(row and row[0])


def ensure_own_schema(connection: LockConnection, *tables: str) -> tuple[bool, ...]:
    """Create our schema if it is missing; ConfigError (exit 78, nothing done) if the role
    may not (it needs CREATE on the database, which a database's owner has). Returns
    which of the qualified ``tables`` exist, read in the same round trip."""
    exist = "".join(", to_regclass(%s) IS NOT NULL" for _ in tables)
    row = connection.execute(
        "SELECT s.oid IS NOT NULL,"
        " CASE WHEN s.oid IS NULL THEN has_database_privilege(current_database(), 'CREATE')"
        " ELSE has_schema_privilege(s.oid, 'USAGE') AND has_schema_privilege(s.oid, 'CREATE')"
        f" END, current_user, current_database(){exist}"
        " FROM (SELECT to_regnamespace(%s)::oid AS oid) AS s",
        (*tables, OWN_SCHEMA),
    ).fetchone()
    present, allowed, user, database = row[:4] if row else (False, False, "?", "?")
    found = tuple(bool(value) for value in row[4:]) if row else tuple(False for _ in tables)
    if present and allowed:
        return found
    if not allowed:
        what = (
            f"use and create tables in the schema {OWN_SCHEMA!r}"
            if present
            else f"create the schema {OWN_SCHEMA!r} (CREATE on database {database!r})"
        )
        raise ConfigError(
            f"role {user!r} may not {what}, where migrate-lock keeps its own tables "
            "(the environment marker, the history, the seed checksums); nothing was changed",
            hint=f'as the database owner: CREATE SCHEMA {OWN_SCHEMA} AUTHORIZATION "{user}" '
            f'(or GRANT USAGE, CREATE ON SCHEMA {OWN_SCHEMA} TO "{user}")',
        )
    create_if_missing(connection, f'CREATE SCHEMA IF NOT EXISTS "{OWN_SCHEMA}"')
    return found


def create_if_missing(connection: LockConnection, statement: str) -> None:
    """Run a ``CREATE ... IF NOT EXISTS`` of our own so that sessions racing to create the
    same object all succeed.

    IF NOT EXISTS is not serialized: of two sessions creating an object at once, the second
    waits for the first, then fails with a unique violation on the catalog (two
    applications, or two tenants of a fleet, starting on a new database). A PL/pgSQL block
    catches exactly that in a subtransaction, so the caller's transaction goes on.
    ``statement`` takes no parameters (our names are constants).
    """
    connection.execute(
        f"DO $create$ BEGIN {statement}; EXCEPTION WHEN unique_violation OR duplicate_schema"
        " OR duplicate_table OR duplicate_object THEN NULL; END $create$"
    )


def move_legacy_tables(
    connection: LockConnection,
    table: VersionTable,
    *,
    present: tuple[tuple[bool, bool], tuple[bool, bool]] | None = None,
) -> None:
    """Move the history and seed checksums an older release kept beside ``table`` into
    our schema (rows re-keyed by the qualified version table; never any lost).

    The environment marker moves with ``guard.move_legacy_marker``. Call under the lock,
    in the migrating transaction, after ``ensure_own_schema``. ``present``: whether the
    (legacy, ours) history and seeds tables exist, when the caller has just read it.
    """
    # Rows of the old tables carry the version table's bare name (each sat beside its
    # version table); ours are keyed by the qualified one.
    rekey = "'\"' || %s || '\".\"' || version_table || '\"'"
    for index, (legacy_name, ours, columns) in enumerate(
        (
            (LEGACY_HISTORY, HISTORY_TABLE, HISTORY_COLUMNS),
            (LEGACY_SEEDS, SEEDS_TABLE, SEEDS_COLUMNS),
        )
    ):
        legacy = table.legacy(legacy_name)
        old, new = present[index] if present else existing(connection, legacy, ours)
        if not old:
            continue
        if not new:
            bare = ours.split(".")[1].strip('"')
            connection.execute(f'ALTER TABLE {legacy} SET SCHEMA "{OWN_SCHEMA}"')
            connection.execute(f'ALTER TABLE "{OWN_SCHEMA}"."{legacy_name}" RENAME TO "{bare}"')
            connection.execute(f"UPDATE {ours} SET version_table = {rekey}", (table.schema,))
        else:
            connection.execute(
                f"INSERT INTO {ours} ({', '.join(columns)})"
                f" SELECT {rekey}, {', '.join(columns[1:])} FROM {legacy}"
                " ON CONFLICT DO NOTHING",
                (table.schema,),
            )
            connection.execute(f"DROP TABLE {legacy}")


def forget_application(connection: LockConnection, table: VersionTable) -> None:
    """Drop our history and seed checksums of ``table``'s application (``reset``: its
    schema was emptied, so it starts again from nothing; the marker stays)."""
    history, seeds = existing(connection, HISTORY_TABLE, SEEDS_TABLE)
    if history:
        connection.execute(f"DELETE FROM {HISTORY_TABLE} WHERE version_table = %s", (table.key,))
    if seeds:
        connection.execute(f"DELETE FROM {SEEDS_TABLE} WHERE version_table = %s", (table.key,))
