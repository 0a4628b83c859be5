"""The invalid indexes a failed ``CREATE INDEX CONCURRENTLY`` leaves behind, removed.

A concurrent build commits its catalog entry before it waits for the table's writers
and for older snapshots. Cancelled in that wait (``DDL_LOCK_TIMEOUT``,
``DDL_STATEMENT_TIMEOUT``) it leaves an INVALID index (``pg_index.indisvalid = false``):
the retry then fails with "relation already exists", or, with ``IF NOT EXISTS``,
"succeeds" and keeps the invalid index, which no query uses. ``REINDEX CONCURRENTLY``
and ``DROP INDEX CONCURRENTLY`` leave invalid indexes the same way.

While a revision runs inside ``autocommit_block`` under migrate-lock (session scope), the
invalid indexes of the database are listed as the block starts. If the block fails, the
invalid indexes that appeared since (and that no other session is building) are the ones
the revision left: each is dropped with ``DROP INDEX CONCURRENTLY IF EXISTS`` on the locked
connection, with a bounded ``lock_timeout``, before the failure is reported. An invalid
index that existed before the block (someone else's build, an old leftover) is never
touched. When the drop cannot finish now (the writer that blocked the build still holds
the table, and a drop waits for it too), the index gets a comment that marks it as
migrate-lock's leftover, and the next ``autocommit_block`` under migrate-lock drops the
marked indexes before its revision runs again. See docs/reliability.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from alembic.runtime.migration import MigrationContext
from psycopg import sql
from psycopg.pq import TransactionStatus

from migrate_lock.errors import describe_sql_error
from migrate_lock.logs import log

if TYPE_CHECKING:
    from migrate_lock.errors import MigrateLockError

#: The longest a cleanup waits for a table lock (less when DDL_LOCK_TIMEOUT is shorter).
CLEANUP_LOCK_TIMEOUT = "5s"

#: How the comment on an index that could not be dropped at once begins.
LEFTOVER_MARK = "migrate-lock: invalid index left by a failed concurrent build"

#: Plain (not partitioned) invalid indexes, by OID.
_INVALID_INDEXES = """
SELECT i.indexrelid::int8, n.nspname, c.relname, obj_description(i.indexrelid, 'pg_class')
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND c.relkind = 'i'
"""
#: ... that no other session is building (PostgreSQL 12 and later say so).
#: pg_stat_progress_create_index hides the table of another role's build: any build of
#: another session whose table is not shown counts as one on every table.
_NOT_BEING_BUILT = """
  AND NOT EXISTS (
    SELECT FROM pg_stat_progress_create_index p
    WHERE p.pid <> pg_backend_pid()
      AND p.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND (p.relid IS NULL OR p.relid = i.indrelid OR p.index_relid = i.indexrelid))
"""


@dataclass(frozen=True)
class InvalidIndex:
    oid: int
    schema: str
    name: str
    comment: str | None = None

    @property
    def shown(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def drop_statement(self) -> str:
        """What to run by hand: ``DROP INDEX CONCURRENTLY IF EXISTS "schema"."name"``."""
        quoted = ".".join('"' + part.replace('"', '""') + '"' for part in (self.schema, self.name))
        return f"DROP INDEX CONCURRENTLY IF EXISTS {quoted}"


@dataclass
class Cleanup:
    """What happened to the invalid indexes one failed ``autocommit_block`` left."""

    revision: str | None
    removed: list[InvalidIndex] = field(default_factory=list)
    #: Not dropped, with why; ``marked``: for the next upgrade to drop.
    left: list[tuple[InvalidIndex, str, bool]] = field(default_factory=list)

    def note(self) -> str:
        """The words added to the failure's message (empty when nothing was left)."""
        parts = []
        if self.removed:
            names = ", ".join(index.shown for index in self.removed)
            plural = "es" if len(self.removed) > 1 else ""
            parts.append(f"removed the invalid index{plural} {names} it left")
        for index, why, marked in self.left:
            then = (
                "the next upgrade removes it before running the revision again, or run "
                if marked
                else "run "
            )
            parts.append(
                f"the invalid index {index.shown} it left could not be removed ({why}): "
                f"{then}`{index.drop_statement}` before retrying"
            )
        return "; ".join(parts)


def noted(error: MigrateLockError, cleanups: list[Cleanup]) -> MigrateLockError:
    """``error`` with what was done about the invalid indexes its revision left."""
    notes = [note for cleanup in cleanups if (note := cleanup.note())]
    if not notes:
        return error
    return error.with_message(f"{error.message}; {'; '.join(notes)}")


def invalid_indexes(
    connection: psycopg.Connection[Any], *, being_built: bool = False
) -> dict[int, InvalidIndex]:
    """The database's invalid plain indexes, without those another session is building
    unless ``being_built``."""
    query = _INVALID_INDEXES
    if not being_built and connection.info.server_version >= 120000:
        query += _NOT_BEING_BUILT
    rows = connection.execute(query).fetchall()
    return {
        int(oid): InvalidIndex(int(oid), schema, name, comment)
        for oid, schema, name, comment in rows
    }


@contextmanager
def cleaning_up(
    connection: psycopg.Connection[Any], which_revision: Callable[[], str | None]
) -> Iterator[list[Cleanup]]:
    """For one Alembic run on ``connection`` (the locked one), every ``autocommit_block``
    removes the marked leftovers of earlier runs as it starts and, when it fails, the
    invalid indexes it left. Yields the list of what was done on failures.

    ``which_revision()``, called from inside the block, names the revision running it.
    """
    original = MigrationContext.autocommit_block
    cleanups: list[Cleanup] = []

    @contextmanager
    def watched(self: MigrationContext) -> Iterator[None]:
        if self.as_sql:
            with original(self):
                yield
            return
        with original(self):
            before = None
            if _usable(connection):
                _drop_marked(connection)
                # Every invalid index there now, someone else's builds in progress too:
                # none of them is ever ours to drop.
                before = invalid_indexes(connection, being_built=True)
            try:
                yield
            except BaseException:
                if before is not None and _usable(connection):
                    try:
                        cleanups.append(_clean_up(connection, before, which_revision()))
                    except Exception as error:  # noqa: BLE001 - the revision's error wins
                        log.warning(
                            "migrate.invalid_index_check_failed", error=type(error).__name__
                        )
                raise

    MigrationContext.autocommit_block = watched  # type: ignore[method-assign]
    try:
        yield cleanups
    finally:
        MigrationContext.autocommit_block = original  # type: ignore[method-assign]


def _usable(connection: psycopg.Connection[Any]) -> bool:
    # Inside autocommit_block the connection is in autocommit mode, between statements.
    return (
        not connection.closed
        and not connection.broken
        and connection.autocommit
        and connection.info.transaction_status == TransactionStatus.IDLE
    )


def _drop_marked(connection: psycopg.Connection[Any]) -> None:
    """Drop the leftovers an earlier run marked; a failure fails the revision (the table is
    still busy: its own concurrent build would fail the same way)."""
    for index in invalid_indexes(connection).values():
        if (index.comment or "").startswith(LEFTOVER_MARK):
            with _bounded_lock_timeout(connection):
                connection.execute(index.drop_statement)
            log.info("migrate.invalid_index_removed", index=index.shown, left_by="an earlier run")


def _clean_up(
    connection: psycopg.Connection[Any], before: dict[int, InvalidIndex], revision: str | None
) -> Cleanup:
    cleanup = Cleanup(revision)
    try:
        left = [index for oid, index in invalid_indexes(connection).items() if oid not in before]
    except psycopg.Error as error:
        log.warning("migrate.invalid_index_check_failed", error=describe_sql_error(error))
        return cleanup
    for index in left:
        try:
            with _bounded_lock_timeout(connection):
                connection.execute(index.drop_statement)
        except psycopg.Error as error:
            why = describe_sql_error(error)
            marked = _mark(connection, index, revision)
            cleanup.left.append((index, why, marked))
            log.warning("migrate.invalid_index_left", index=index.shown, error=why, marked=marked)
        else:
            cleanup.removed.append(index)
            log.info("migrate.invalid_index_removed", index=index.shown, revision=revision)
    return cleanup


def _mark(connection: psycopg.Connection[Any], index: InvalidIndex, revision: str | None) -> bool:
    """Comment ``index`` as our leftover, for the next run to drop. False if refused."""
    by = f" in revision {revision}" if revision else ""
    text = f"{LEFTOVER_MARK}{by}; the next migrate-lock upgrade drops it"
    try:
        with _bounded_lock_timeout(connection):
            connection.execute(
                sql.SQL("COMMENT ON INDEX {} IS {}").format(
                    sql.Identifier(index.schema, index.name), sql.Literal(text)
                )
            )
    except psycopg.Error as error:
        log.warning(
            "migrate.invalid_index_unmarked", index=index.shown, error=describe_sql_error(error)
        )
        return False
    return True


@contextmanager
def _bounded_lock_timeout(connection: psycopg.Connection[Any]) -> Iterator[None]:
    """``lock_timeout`` at most CLEANUP_LOCK_TIMEOUT (0, waiting forever, included)."""
    row = connection.execute("SELECT current_setting('lock_timeout')").fetchone()
    previous = str(row[0]) if row else "0"
    connection.execute(
        "SELECT set_config('lock_timeout', CASE WHEN %s::interval = interval '0'"
        " OR %s::interval > %s::interval THEN %s ELSE %s END, false)",
        (previous, previous, CLEANUP_LOCK_TIMEOUT, CLEANUP_LOCK_TIMEOUT, previous),
    )
    try:
        yield
    finally:
        if _usable(connection):
            connection.execute("SELECT set_config('lock_timeout', %s, false)", (previous,))
