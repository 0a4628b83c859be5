"""The full path of ``upgrade``: the locked protocol from docs/how-the-lock-works.md.

1. lock-free pre-check: at (or ahead of) the target, return without the lock;
2. hold the migration lock (lock.py's ``migration_lock``: wait by polling, re-check
   lock-free, report the holder, verify ownership, name ourselves, set timeouts);
3. re-read the revision, run Alembic on that same connection, apply the seeds,
   commit, verify from the database;
4. release (checked) and close.

``migrate.upgrade`` (the front door) takes the at-head path first and comes here only
when that path cannot settle the start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, TextIO

import psycopg
from alembic.util import CommandError
from psycopg.pq import TransactionStatus

from migrate_lock.backups import backup_before_migrating
from migrate_lock.errors import (
    ConfigError,
    ConnectionLost,
    MigrateLockError,
    MigrationFailed,
    UsageError,
)
from migrate_lock.guard import check_startup, is_new_database, remember_environment
from migrate_lock.lean.fastpath import LeanStart
from migrate_lock.lock import Hold
from migrate_lock.logs import log
from migrate_lock.outcome import Role, UpgradeResult
from migrate_lock.project import DatabaseSession, Project
from migrate_lock.runner import (
    autocommit_refusal,
    autocommit_revisions,
    idle_timeout_error,
    killed_for_idling,
    run_offline,
    run_upgrade,
    run_upgrade_in_transaction,
    sqlalchemy_connection,
)
from migrate_lock.seeds.apply import apply_seeds, check_seed_files
from migrate_lock.seeds.csv_merge import SeedError
from migrate_lock.seeds.files import SeedFile, changed_seeds, discover, seeds_dir
from migrate_lock.settings import Settings, load_settings
from migrate_lock.state import ReadAhead, SchemaState, require_known
from migrate_lock.then import ThenStep, prepare, refuse_in_transaction_scope
from migrate_lock.version_table import record_history

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def upgrade(
    target: str = "heads",
    *,
    settings: Settings | None = None,
    overrides: Mapping[str, Any] | None = None,
    handover: LeanStart | None = None,
    then: Callable[[], object] | None = None,
    connection: psycopg.Connection[Any] | None = None,
    read_ahead: ReadAhead | None = None,
) -> UpgradeResult:
    """The full path of ``migrate_lock.upgrade`` (migrate.py): Alembic, SQLAlchemy, psycopg.

    ``settings`` (else the environment with ``overrides``) are validated first.
    ``handover`` is the lock the at-head path holds on its lean connection; it is
    handed over once this call's own connection is open, and this call takes it next.
    ``then`` is the bootstrap step as a Python function (it beats MIGRATE_THEN; then.py).
    ``connection`` is an open autocommit connection to the migration database to run on,
    left open (a fleet worker's, reused across tenants: fleet/worker.py resets it); a new
    one replaces it once it is broken. ``read_ahead``: the version table as the caller
    read it lock-free just before (a fleet's plan), for the lock-free check.

    A connection lost on the way (a server restart, a failover) is survived: the
    server rolled back whatever was open, so the protocol starts over on a new
    connection, up to ``RECONNECTS`` times; then ConnectionLost (exit 75).
    """
    started = time.monotonic()
    project = Project(settings or load_settings(**(overrides or {})), connection=connection)
    check_startup(project.settings)
    for attempt in range(RECONNECTS + 1):
        try:
            first = attempt == 0
            return _upgrade_once(
                project,
                target,
                started,
                handover if first else None,
                then,
                read_ahead if first else None,
            )
        except ConnectionLost as error:
            if attempt == RECONNECTS:
                raise
            log.warning("db.connection_lost", error=str(error), reconnect=attempt + 1)
    raise AssertionError("unreachable")


#: How often ``upgrade`` starts over after losing its connection.
RECONNECTS = 3


def _upgrade_once(
    project: Project,
    target: str,
    started: float,
    handover: LeanStart | None,
    then: Callable[[], object] | None,
    read_ahead: ReadAhead | None = None,
) -> UpgradeResult:
    scripts = project.scripts
    wanted = scripts.resolve(target)
    seeds = _seed_files(project.settings, wanted == scripts.heads())
    # The bootstrap step, as seeds: only an upgrade to the heads runs it.
    step = prepare(project.settings, wanted, seeds, then) if wanted == scripts.heads() else None
    # When the server is out of connection slots, the at-head path's connection (which
    # holds the lock for us) gives its slot up: otherwise every replica waits for one.
    hand_over = handover.hand_over if handover is not None else None
    with project.session(on_retry=hand_over) as session:
        if hand_over is not None:
            hand_over()
        try:
            return _protocol(
                session,
                target,
                wanted,
                seeds,
                started,
                handover.waited_seconds if handover else 0.0,
                step,
                read_ahead,
            )
        except psycopg.OperationalError as error:
            if not session.connection.broken:
                raise
            if killed_for_idling(error):
                raise idle_timeout_error(error) from None  # the server's verdict: no reconnect
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
    waited_before: float,
    step: ThenStep | None = None,
    read_ahead: ReadAhead | None = None,
) -> UpgradeResult:
    scripts = session.project.scripts
    state = (
        session.compare(read_ahead.current, wanted, scripts)
        if read_ahead is not None
        else session.state(wanted, scripts)
    )
    require_known(state)
    if _nothing_to_do(session, state, seeds, step):
        _skip_seeds_unless_at_heads(session, state, seeds)
        return _finish(session, "fast_path", state, state, (), 0.0, started)
    in_transaction = session.lock_scope.transaction
    if in_transaction:
        _refuse_in_one_transaction(session, state)
        if step is not None:
            raise refuse_in_transaction_scope(session.lock_scope.reason)
    # SQLAlchemy's first connect ends in a ROLLBACK: make its connection before the lock.
    with (
        sqlalchemy_connection(session.connection) if in_transaction else nullcontext() as shared,
        session.migration_lock(
            work_is_done=lambda: _nothing_to_do(
                session, session.state(wanted, scripts), seeds, step
            ),
            waited_before=waited_before,
        ) as hold,
    ):
        if not hold.acquired:
            after = session.state(wanted, scripts)
            _skip_seeds_unless_at_heads(session, after, seeds)
            return _finish(session, "waited", state, after, (), hold.waited_seconds, started)
        return _migrate_holding_lock(session, hold, target, wanted, seeds, started, shared, step)


def _refuse_in_one_transaction(session: DatabaseSession, state: SchemaState) -> None:
    """What the transaction scope (everything in the lock's one transaction) cannot run."""
    needing_autocommit = autocommit_revisions(session.project.scripts, state.pending)
    if needing_autocommit:
        raise autocommit_refusal(needing_autocommit[0])
    if session.project.settings.backup_before_upgrade:
        # pg_dump's session settings would stay on pooled server connections, and it
        # may need the very pooled connection our open transaction holds.
        raise ConfigError(
            "BACKUP_BEFORE_UPGRADE (--backup-first) cannot run in the transaction lock "
            f"scope ({session.lock_scope.reason}); nothing was run",
            hint="set MIGRATION_DATABASE_URL to a direct connection to PostgreSQL and "
            "MIGRATION_LOCK_SCOPE=session, or take the backup separately (migrate-lock backup)",
        )


def _refuse_early_commit(session: DatabaseSession, culprit: str) -> None:
    """Stop if the transaction that holds the transaction-scoped lock has already ended."""
    if session.connection.info.transaction_status != TransactionStatus.INTRANS:
        raise MigrationFailed(
            f"{culprit} ended the transaction that holds the migration lock (a COMMIT in a "
            "revision or in env.py), so the lock was released early; migrate-lock stopped",
            hint="in the transaction lock scope everything must run in one transaction: "
            "remove the COMMIT, or migrate over a direct connection (MIGRATION_DATABASE_URL) "
            "with MIGRATION_LOCK_SCOPE=session",
        )


def _nothing_to_do(
    session: DatabaseSession, state: SchemaState, seeds: list[SeedFile], step: ThenStep | None
) -> bool:
    # Seeds count too: at head with a changed seed file is still work to do. Ahead (a
    # newer release migrated) they are not ours to apply: see _skip_seeds_unless_at_heads.
    # So does a due bootstrap step (then.py), by the same rule.
    if not state.ready:
        return False
    return state.status != "at_head" or not (
        changed_seeds(session.connection, session.version_table, seeds)
        or (step is not None and step.due(session.connection, session.version_table))
    )


def _skip_seeds_unless_at_heads(
    session: DatabaseSession, state: SchemaState, seeds: list[SeedFile]
) -> bool:
    """True (and the ``seed.skipped_not_at_heads`` event when some differ) when the
    database is not exactly at this code's heads: seeds describe the heads' schema, and
    during a rolling deploy an old replica would revert the newer release's data (or fail
    on its columns). Only the release whose heads the database is at applies seeds."""
    if state.status == "at_head":
        return False
    differing = changed_seeds(session.connection, session.version_table, seeds)
    if differing:
        log.info(
            "seed.skipped_not_at_heads",
            status=state.status,
            current=list(state.current),
            heads=list(state.heads),
            changed=[file.name for file in differing],
        )
    return True


def upgrade_sql(
    target: str = "heads", *, settings: Settings | None = None, output: TextIO | None = None
) -> None:
    """Write the SQL that ``upgrade`` would run to ``output`` (offline: no lock, no database)."""
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
        run_offline(config, target)
    except CommandError as error:
        raise UsageError(f"cannot render SQL for '{target}': {error}") from None


def _migrate_holding_lock(
    session: DatabaseSession,
    hold: Hold,
    target: str,
    wanted: tuple[str, ...],
    seeds: list[SeedFile],
    started: float,
    shared: Connection | None,
    step: ThenStep | None = None,
) -> UpgradeResult:
    """Steps 3-4. With ``shared`` (the transaction scope), everything stays in the lock's
    transaction, which ``hold.commit()`` ends before the result is reported."""
    connection = session.connection
    waited = hold.waited_seconds
    before = session.state(wanted, session.project.scripts)
    require_known(before)
    if before.ready and _skip_seeds_unless_at_heads(session, before, seeds):
        seeds, step = [], None
    due = changed_seeds(connection, session.version_table, seeds)
    # A seed file that would end the transaction is refused before anything runs.
    check_seed_files(due)
    if before.ready and not due and not (step and step.due(connection, session.version_table)):
        hold.commit()
        return _finish(session, "waited", before, before, (), waited, started)
    if not before.ready:
        backup_before_migrating(session)
    after: SchemaState = before
    applied: tuple[str, ...] = ()
    if not before.ready:
        after, applied = _run_migrations(session, target, wanted, before, shared)
    if shared is not None:
        _refuse_early_commit(session, "env.py")
    try:
        # No seed file due: no seed transaction (nor its catalog checks) at all.
        seeded = tuple(
            result.name
            for result in (
                apply_seeds(connection, session.version_table, due, force=True) if due else ()
            )
            if result.action == "applied"
        )
    except SeedError as error:
        if shared is None or not applied:
            raise
        raise error.with_message(
            f"{error.message}; the revisions of this upgrade were rolled back with them "
            "(one transaction)"
        ) from None
    # The bootstrap step: after the revisions and seeds, still holding the lock.
    ran = (
        step.run(connection, session.version_table, migrated=bool(applied), seeded=bool(seeded))
        if step is not None
        else None
    )
    hold.commit()
    return _finish(session, "migrated", before, after, applied, waited, started, seeded, ran)


def _run_migrations(
    session: DatabaseSession,
    target: str,
    wanted: tuple[str, ...],
    before: SchemaState,
    shared: Connection | None,
) -> tuple[SchemaState, tuple[str, ...]]:
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
    # Before the first revision: only a brand-new database is marked lower than production.
    # One at a revision (its version table read under the lock just now) is not: no need to
    # ask; nor when the marker is settled (a fleet worker's later tenants of the database).
    settled = session.marker_settled
    fresh = not settled and not before.current and is_new_database(connection, table)
    unrecorded: list[str] = []

    def remember() -> None:
        if not settled and remember_environment(
            connection, table, project.settings, new_database=fresh
        ):
            session.settle_marker()

    def bookkeeping(revision: str) -> None:
        if shared is not None:
            _refuse_early_commit(session, f"revision {revision}")
        unrecorded.append(revision)

    def record() -> None:
        # Just before each commit, in the transaction that commits: a kill right after
        # Alembic's commit must not leave a migrated database without its history or
        # environment marker. One statement for all the revisions of that transaction.
        nonlocal marked
        if not unrecorded:
            return
        record_history(connection, table, unrecorded, create=not marked)
        unrecorded.clear()
        if not marked:
            remember()
            marked = True

    loaded = project.scripts.script
    try:
        if shared is None:
            applied = run_upgrade(
                config,
                connection,
                target,
                each_applied=bookkeeping,
                before_commit=record,
                script=loaded,
            )
        else:
            applied = run_upgrade_in_transaction(
                config, shared, connection, target, each_applied=bookkeeping, script=loaded
            )
    except MigrateLockError as error:
        raise _with_database_revision(error, session) from None
    # The transaction scope commits later (in the lock's transaction), and an env.py may
    # commit behind SQLAlchemy's back: what is left is recorded now.
    record()
    # In the session scope Alembic has committed: the table must be there, one statement.
    after = (
        session.compare(session.written_revisions(), wanted, project.scripts)
        if shared is None
        else session.state(wanted, project.scripts)
    )
    if not after.ready:
        raise MigrationFailed(
            f"Alembic finished but {session.version_table.qualified} is at "
            f"{list(after.current) or 'no revision'}, not {list(wanted)}",
            hint="env.py must pass version_table/version_table_schema from "
            "config.attributes to context.configure (see docs/existing-projects.md)",
        )
    # The ancestors too: those applied before migrate-lock was adopted (none when this
    # run applied them all: ``record`` wrote each). Our schema and history table exist
    # once ``record`` ran (committed with the revisions).
    ancestry = project.scripts.ancestry(after.current)
    if not (marked and ancestry <= set(applied)):
        record_history(connection, table, ancestry, create=not marked)
    if not marked:
        remember()
    return after, tuple(applied)


def _with_database_revision(error: MigrateLockError, session: DatabaseSession) -> MigrateLockError:
    # With transaction_per_migration, earlier revisions stay committed: say where we are.
    try:
        current = session.current()
    except Exception:  # noqa: BLE001 - the connection died with the migration: say so
        return error
    where = ", ".join(current or ()) or "no revision"
    return error.with_message(f"{error.message}; the database is at {where}")


def _seed_files(settings: Settings, to_heads: bool) -> list[SeedFile]:
    # Seeds describe the newest schema: only an upgrade to the heads applies them.
    if not (settings.seed_on_upgrade and to_heads):
        return []
    return discover(seeds_dir(settings.seeds_dir, settings.alembic_config))


def _finish(
    session: DatabaseSession,
    role: Role,
    before: SchemaState,
    after: SchemaState,
    applied: tuple[str, ...],
    waited: float,
    started: float,
    seeded: tuple[str, ...] = (),
    then: str | None = None,
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
        then=then,
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
