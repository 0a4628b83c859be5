"""``upgrade``: the locked protocol from docs/how-the-lock-works.md, end to end.

1. lock-free pre-check: at (or ahead of) the target, return without the lock;
2. wait for the lock by polling, re-checking lock-free, reporting the holder;
3. holding it: verify ownership, re-read the revision, name ourselves, set timeouts;
4. run Alembic on this same connection, commit, verify from the database;
5. unlock (checked) and close.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from migrate_lock.errors import (
    ConfigError,
    ConnectionLost,
    MigrateLockError,
    MigrationFailed,
    UnknownDatabaseRevision,
    UsageError,
)
from migrate_lock.guard import check_startup, remember_environment
from migrate_lock.lock import (
    announce_done,
    holder_application_name,
    holds,
    release,
    wait_for_lock,
    wait_for_transaction_lock,
)
from migrate_lock.logs import log
from migrate_lock.outcome import Role, UpgradeResult
from migrate_lock.project import DatabaseSession, Project
from migrate_lock.seeds.apply import apply_seeds
from migrate_lock.seeds.csv_merge import SeedError
from migrate_lock.seeds.files import SeedFile, changed_seeds, discover, seeds_dir
from migrate_lock.settings import Settings
from migrate_lock.state import SchemaState
from migrate_lock.version_table import record_history

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def upgrade(
    target: str = "heads",
    *,
    settings: Settings | None = None,
    handover: Callable[[], None] | None = None,
) -> UpgradeResult:
    """Bring the database to ``target`` under the migration lock, exactly once.

    Safe to call from any number of processes at once. Raises a MigrateLockError
    subclass (each with its exit code) on failure; nothing is half-applied.
    ``handover`` is called once this call's own connection is open: the fast path
    uses it to release the lock it took on its lean connection, so we take it next.

    A connection lost on the way (a server restart, a failover) is survived: the
    server rolled back whatever was open, so the protocol starts over on a new
    connection, up to ``RECONNECTS`` times; then ConnectionLost (exit 75).
    """
    started = time.monotonic()
    project = Project(settings)
    check_startup(project.settings)
    for attempt in range(RECONNECTS + 1):
        try:
            return _upgrade_once(project, target, started, handover if attempt == 0 else None)
        except ConnectionLost as error:
            if attempt == RECONNECTS:
                raise
            log.warning("db.connection_lost", error=str(error), reconnect=attempt + 1)
    raise AssertionError("unreachable")


#: How often ``upgrade`` starts over after losing its connection.
RECONNECTS = 3


def _upgrade_once(
    project: Project, target: str, started: float, handover: Callable[[], None] | None
) -> UpgradeResult:
    import psycopg

    scripts = project.scripts
    wanted = scripts.resolve(target)
    seeds = _seed_files(project.settings, wanted == scripts.heads())
    # When the server is out of connection slots, the fast path's connection (which
    # holds the lock for us) gives its slot up: otherwise every replica waits for one.
    with project.session(on_retry=handover) as session:
        try:
            return _protocol(session, target, wanted, seeds, started, handover)
        except psycopg.OperationalError as error:
            if not session.connection.broken:
                raise
            raise ConnectionLost(
                f"lost the database connection ({str(error).splitlines()[0]})",
                hint="retry when the database is back",
            ) from None


def _protocol(
    session: DatabaseSession,
    target: str,
    wanted: tuple[str, ...],
    seeds: list[SeedFile],
    started: float,
    handover: Callable[[], None] | None,
) -> UpgradeResult:
    project = session.project
    scripts = project.scripts
    if handover is not None:
        handover()

    state = session.state(wanted, scripts)
    _refuse_unknown(state)
    if _nothing_to_do(session, state, seeds):
        return _finish(session, "fast_path", state, state, (), 0.0, started)
    if session.lock_scope.transaction:
        return _protocol_in_one_transaction(session, target, wanted, seeds, state, started)
    outcome = wait_for_lock(
        session.connection,
        session.lock_key,
        timeout_seconds=project.settings.migration_lock_timeout_seconds,
        work_is_done=lambda: _nothing_to_do(session, session.state(wanted, scripts), seeds),
    )
    if not outcome.acquired:
        after = session.state(wanted, scripts)
        return _finish(session, "waited", state, after, (), outcome.waited_seconds, started)
    try:
        log.info(
            "lock.acquired",
            lock_key=session.lock_key,
            wait_ms=round(outcome.waited_seconds * 1000),
            attempts=outcome.attempts,
        )
        return _migrate_holding_lock(
            session, target, wanted, seeds, outcome.waited_seconds, started
        )
    finally:
        if not session.connection.closed and not session.connection.broken:
            announce_done(session.connection, session.lock_key)
            release(session.connection, session.lock_key)
            log.info("lock.released", lock_key=session.lock_key)


def _protocol_in_one_transaction(
    session: DatabaseSession,
    target: str,
    wanted: tuple[str, ...],
    seeds: list[SeedFile],
    state: SchemaState,
    started: float,
) -> UpgradeResult:
    """Steps 2-5 with ``pg_try_advisory_xact_lock``: lock, revisions and seeds commit as one."""
    from migrate_lock.runner import (
        autocommit_refusal,
        autocommit_revisions,
        commit_error,
        sqlalchemy_connection,
    )

    project = session.project
    scripts = project.scripts
    needing_autocommit = autocommit_revisions(scripts, state.pending)
    if needing_autocommit:
        raise autocommit_refusal(needing_autocommit[0])
    if project.settings.backup_before_upgrade:
        # pg_dump's session settings would stay on pooled server connections, and it
        # may need the very pooled connection our open transaction holds.
        raise ConfigError(
            "BACKUP_BEFORE_UPGRADE (--backup-first) cannot run in the transaction lock "
            f"scope ({session.lock_scope.reason}); nothing was run",
            hint="set MIGRATION_DATABASE_URL to a direct connection to PostgreSQL and "
            "MIGRATION_LOCK_SCOPE=session, or take the backup separately (migrate-lock backup)",
        )
    connection = session.connection
    # SQLAlchemy's first connect ends in a ROLLBACK: make its connection before the lock.
    with sqlalchemy_connection(connection) as shared:
        outcome = wait_for_transaction_lock(
            connection,
            session.lock_key,
            timeout_seconds=project.settings.migration_lock_timeout_seconds,
            work_is_done=lambda: _nothing_to_do(session, session.state(wanted, scripts), seeds),
        )
        if not outcome.acquired:
            after = session.state(wanted, scripts)
            return _finish(session, "waited", state, after, (), outcome.waited_seconds, started)

        def commit() -> None:
            announce_done(connection, session.lock_key)  # delivered at commit
            try:
                if shared.in_transaction():
                    shared.commit()
                connection.commit()  # ends the transaction and with it the lock
            except Exception as error:  # noqa: BLE001 - SQLAlchemy's or psycopg's, same meaning
                raise commit_error(error, connection) from None

        try:
            log.info(
                "lock.acquired",
                lock_key=session.lock_key,
                scope="transaction",
                wait_ms=round(outcome.waited_seconds * 1000),
                attempts=outcome.attempts,
            )
            return _migrate_holding_lock(
                session,
                target,
                wanted,
                seeds,
                outcome.waited_seconds,
                started,
                shared=shared,
                commit=commit,
            )
        finally:
            if not connection.closed and not connection.broken:
                connection.rollback()  # a no-op after the commit
                log.info("lock.released", lock_key=session.lock_key, scope="transaction")


def _refuse_early_commit(session: DatabaseSession, culprit: str) -> None:
    """Stop if the transaction that holds the transaction-scoped lock has already ended."""
    from psycopg.pq import TransactionStatus

    if session.connection.info.transaction_status != TransactionStatus.INTRANS:
        raise MigrationFailed(
            f"{culprit} ended the transaction that holds the migration lock (a COMMIT in a "
            "revision or in env.py), so the lock was released early; migrate-lock stopped",
            hint="in the transaction lock scope everything must run in one transaction: "
            "remove the COMMIT, or migrate over a direct connection (MIGRATION_DATABASE_URL) "
            "with MIGRATION_LOCK_SCOPE=session",
        )


def _nothing_to_do(session: DatabaseSession, state: SchemaState, seeds: list[SeedFile]) -> bool:
    # Seeds count too: at head with a changed seed file is still work to do.
    return state.ready and not changed_seeds(session.connection, session.version_table, seeds)


def upgrade_sql(
    target: str = "heads", *, settings: Settings | None = None, output: TextIO | None = None
) -> None:
    """Write the SQL that ``upgrade`` would run to ``output`` (offline: no lock, no database)."""
    from alembic import command
    from alembic.util import CommandError

    project = Project(settings, output=output)
    if ":" not in target:  # a start:end range is Alembic's to check
        project.scripts.resolve(target)
    config = project.config
    if not config.get_main_option("sqlalchemy.url"):
        config.set_main_option("sqlalchemy.url", "postgresql+psycopg://")
    config.attributes["version_table"] = project.settings.version_table
    if project.settings.version_table_schema:
        config.attributes["version_table_schema"] = project.settings.version_table_schema
    try:
        command.upgrade(config, target, sql=True)
    except CommandError as error:
        raise UsageError(f"cannot render SQL for '{target}': {error}") from None


def _migrate_holding_lock(
    session: DatabaseSession,
    target: str,
    wanted: tuple[str, ...],
    seeds: list[SeedFile],
    waited: float,
    started: float,
    *,
    shared: Connection | None = None,
    commit: Callable[[], None] | None = None,
) -> UpgradeResult:
    """Steps 3-4. With ``shared`` (the transaction scope), everything stays in the open
    transaction and ``commit`` ends it, before the result is reported."""
    from migrate_lock.backup import backup_before_migrating

    project = session.project
    connection = session.connection
    if not holds(connection, session.lock_key):
        raise MigrationFailed(
            "pg_try_advisory_lock said yes but pg_locks shows no lock for this session",
            hint="a connection pooler may sit between us and the server: "
            "set MIGRATION_LOCK_SCOPE=transaction, or MIGRATION_DATABASE_URL to a direct "
            "connection",
        )
    before = session.state(wanted, project.scripts)
    _refuse_unknown(before)
    due = changed_seeds(connection, session.version_table, seeds)
    if before.ready and not due:
        if commit is not None:
            commit()
        return _finish(session, "waited", before, before, (), waited, started)
    if not before.ready:
        # Before the session's timeouts: pg_dump may take longer than the idle timeout.
        backup_before_migrating(session)
    prepare_session(session, local=shared is not None)
    after: SchemaState = before
    applied: tuple[str, ...] = ()
    if not before.ready:
        after, applied = _run_migrations(session, target, wanted, before, shared)
    if shared is not None:
        _refuse_early_commit(session, "env.py")
    try:
        seeded = tuple(
            result.name
            for result in apply_seeds(connection, session.version_table, due, force=True)
            if result.action == "applied"
        )
    except SeedError as error:
        if shared is None or not applied:
            raise
        raise SeedError(
            f"{error.message}; the revisions of this upgrade were rolled back with them "
            "(one transaction)",
            hint=error.hint,
        ) from None
    if commit is not None:
        commit()
    return _finish(session, "migrated", before, after, applied, waited, started, seeded)


def _run_migrations(
    session: DatabaseSession,
    target: str,
    wanted: tuple[str, ...],
    before: SchemaState,
    shared: Connection | None,
) -> tuple[SchemaState, tuple[str, ...]]:
    from migrate_lock.runner import run_upgrade, run_upgrade_in_transaction

    project = session.project
    connection = session.connection
    config = project.config
    config.attributes["version_table"] = session.version_table.name
    config.attributes["version_table_schema"] = session.version_table.schema
    log.info(
        "migrate.start",
        from_rev=list(before.current),
        to_rev=list(wanted),
        pending=len(before.pending),
    )
    table = session.version_table
    marked = False

    def bookkeeping(revision: str) -> None:
        # In that revision's own transaction: a kill right after Alembic's commit must
        # not leave a migrated database without its history or environment marker.
        nonlocal marked
        if shared is not None:
            _refuse_early_commit(session, f"revision {revision}")
        record_history(connection, table, (revision,), create=not marked)
        if not marked:
            remember_environment(connection, table, project.settings)
            marked = True

    try:
        if shared is None:
            applied = run_upgrade(config, connection, target, each_applied=bookkeeping)
        else:
            applied = run_upgrade_in_transaction(
                config, shared, connection, target, each_applied=bookkeeping
            )
    except MigrateLockError as error:
        raise _with_database_revision(error, session) from None
    after = session.state(wanted, project.scripts)
    if not after.ready:
        raise MigrationFailed(
            f"Alembic finished but {session.version_table.qualified} is at "
            f"{list(after.current) or 'no revision'}, not {list(wanted)}",
            hint="env.py must pass version_table/version_table_schema from "
            "config.attributes to context.configure (see docs/existing-projects.md)",
        )
    # The ancestors too: those applied before migrate-lock was adopted.
    record_history(connection, table, project.scripts.ancestry(after.current))
    if not marked:
        remember_environment(connection, table, project.settings)
    return after, tuple(applied)


def _with_database_revision(error: MigrateLockError, session: DatabaseSession) -> MigrateLockError:
    # With transaction_per_migration, earlier revisions stay committed: say where we are.
    try:
        current = session.current()
    except Exception:  # noqa: BLE001 - the connection died with the migration: say so
        return error
    where = ", ".join(current or ()) or "no revision"
    copy = type(error)(f"{error.message}; the database is at {where}", hint=error.hint)
    return copy


def prepare_session(session: DatabaseSession, *, local: bool = False) -> None:
    """Set the migrating session's name, timeouts and keepalives (holding the lock).

    ``local``: for this transaction only (SET LOCAL), as behind a pooler anything
    set for the session would stay on a pooled server connection others get next.
    """
    # Name ourselves so waiters and operators see who migrates since when, and bound
    # what a stuck migration can do: the server itself reaps a holder that vanished.
    settings = session.project.settings
    connection = session.connection
    options = {
        "application_name": holder_application_name(),
        "lock_timeout": settings.ddl_lock_timeout,
        "statement_timeout": settings.ddl_statement_timeout,
        "idle_in_transaction_session_timeout": settings.ddl_idle_in_transaction_timeout,
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
        # Unacknowledged data (a holder whose network vanished mid-reply) gives up here.
        "tcp_user_timeout": "30000",
    }
    if connection.info.server_version >= 140000:
        # Notice a client that died mid-statement without waiting for the statement.
        options["client_connection_check_interval"] = "2s"
    for name, value in options.items():
        connection.execute("SELECT set_config(%s, %s, %s)", (name, value, local))


def _seed_files(settings: Settings, to_heads: bool) -> list[SeedFile]:
    # Seeds describe the newest schema: only an upgrade to the heads applies them.
    if not (settings.seed_on_upgrade and to_heads):
        return []
    return discover(seeds_dir(settings.seeds_dir, settings.alembic_config))


def _refuse_unknown(state: SchemaState) -> None:
    if state.status == "unknown":
        raise UnknownDatabaseRevision(
            f"the database is at revision {', '.join(state.unknown)}, which this code does not "
            "know and which was never at this code's heads",
            hint="deploy the code that has that revision, or check DATABASE_URL points at the "
            "right database",
        )


def _finish(
    session: DatabaseSession,
    role: Role,
    before: SchemaState,
    after: SchemaState,
    applied: tuple[str, ...],
    waited: float,
    started: float,
    seeded: tuple[str, ...] = (),
) -> UpgradeResult:
    result = UpgradeResult(
        role=role,
        from_revisions=before.current,
        to_revisions=after.current,
        applied=applied,
        seeded=seeded,
        lock_key=session.lock_key,
        wait_ms=round(waited * 1000),
        total_ms=round((time.monotonic() - started) * 1000),
    )
    event = "migrate.done" if role == "migrated" else "migrate.up_to_date"
    log.info(
        event,
        role=role,
        from_rev=list(result.from_revisions),
        to_rev=list(result.to_revisions),
        applied=len(applied),
        seeded=len(seeded),
        status=after.status,
        wait_ms=result.wait_ms,
        duration_ms=result.total_ms,
    )
    return result
