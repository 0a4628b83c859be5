"""The at-head fast path: "already at head" without Alembic, SQLAlchemy, psycopg or pydantic.

Almost every start of almost every replica finds nothing to do. This path answers
that case with the standard library, libpq through ctypes (pq.py), and the heads
manifest (manifest.py) or, without one, the revision files' literal assignments
(static_revisions.py), in a fraction of the CPU time of loading Alembic.

It only ever says "nothing to do". Whenever it cannot be sure (heads neither a fresh
manifest nor the revision files' text vouch for, a setting it does not recognise as
certainly valid, a connection or query problem, the database not exactly at the
heads, a changed seed file), it yields no result and the caller (migrate.py) runs the
full protocol, which validates everything again and produces the proper errors. So it
can be slower, never wrong.

When the database is behind, this path waits for the migration lock itself (most
replicas then find the work done and never load Alembic); the one that gets it keeps
it on the lean connection until the full path, in the same block, takes it over.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from migrate_lock.dsn import DatabaseUrl, parse_database_url
from migrate_lock.errors import LockTimeout, MigrateLockError
from migrate_lock.guard import check_startup
from migrate_lock.lean.manifest import Manifest
from migrate_lock.lean.pq import LeanConnection, LeanUnavailable, conninfo_is_valid
from migrate_lock.lean.settings_schema import (
    LeanSettings,
    dotenv_path,
    read_dotenv,
    read_settings,
)
from migrate_lock.lean.static_revisions import StaticRevisions, known_heads
from migrate_lock.lock import (
    Hold,
    lock_key,
    migration_lock,
    server_is_crowded,
    wait_without_connection,
)
from migrate_lock.logs import log
from migrate_lock.outcome import Role, UpgradeResult
from migrate_lock.scope import choose_scope
from migrate_lock.seeds.files import changed_seeds, discover, seeds_dir
from migrate_lock.then import prepare
from migrate_lock.version_table import (
    VersionTable,
    current_schema,
    database_revisions,
    version_table_busy,
)

#: What makes the lean path leave a decision to the full path (which then reports it
#: properly, or finds it fine): a setting or URL it cannot vouch for, libpq trouble.
UNDECIDED = (LeanUnavailable, MigrateLockError, OSError, ValueError)


@dataclass
class LeanStart:
    """How far the at-head path got: a ``result`` (nothing more to do), or not.

    With no result, ``hold`` is the migration lock this path holds on its lean
    connection (it waited for it and the database is still not at the heads): the
    full path calls ``hand_over()`` once its own connection is open, and takes the
    lock next. Neither: only the full path can tell (the lean connection is closed).
    """

    result: UpgradeResult | None = None
    hold: Hold | None = None
    connection: LeanConnection | None = None
    #: How long it waited before ``hold``'s wait, without a connection (lock.py).
    waited_before: float = 0.0

    @property
    def waited_seconds(self) -> float:
        return self.waited_before + (self.hold.waited_seconds if self.hold is not None else 0.0)

    def hand_over(self) -> None:
        """Let go of the lock and give the lean connection's slot back: with the server
        out of connection slots, the full path may need exactly that one."""
        if self.hold is not None:
            self.hold.hand_over()
        if self.connection is not None:
            self.connection.close()


@contextmanager
def lean_upgrade(overrides: Mapping[str, Any] | None = None) -> Iterator[LeanStart]:
    """``upgrade`` to the heads, as far as it can be done without Alembic.

    The lean connection (and any lock it holds) lives until the block ends; the
    caller runs the full path inside the block when there is no result, handing the
    lock over (``LeanStart.hand_over()``) once its own connection is open. ``overrides``
    are settings by field name (None = not given). A lock timeout is raised
    (LockTimeout, exit 75); anything else uncertain yields an empty LeanStart.
    """
    with ExitStack() as stack:
        start = _start(stack, overrides or {}, time.monotonic())
        if start.hold is None:
            stack.close()  # nothing to hand over: give the connection slot back at once
        yield start


def _start(stack: ExitStack, overrides: Mapping[str, Any], started: float) -> LeanStart:
    try:
        settings = lean_settings(overrides)
        # A fresh manifest (`freeze`), else the revision files' own text, when certain.
        known = known_heads(settings.alembic_config)
        if known is None:
            return LeanStart()
        url = migration_url(settings)
        check_startup(settings)
        connect = connector(settings, url)
        connection = stack.enter_context(connect())
        # The host libpq connected to (a failover URL lists several), for the pooler check.
        url = replace(url, host=connection.info.host, port=connection.info.port)
        return _check_or_wait(stack, connection, settings, known, started, url, connect)
    except LockTimeout:
        raise
    except UNDECIDED:
        return LeanStart()


def _check_or_wait(
    stack: ExitStack,
    connection: LeanConnection,
    settings: LeanSettings,
    manifest: Manifest | StaticRevisions,
    started: float,
    url: DatabaseUrl,
    connect: Callable[[], LeanConnection],
) -> LeanStart:
    table, key = version_table_and_key(connection, settings, url)
    seeds = (
        discover(seeds_dir(settings.seeds_dir, settings.alembic_config))
        if settings.seed_on_upgrade
        else []
    )
    heads, heads_from = manifest.heads, manifest.source
    # A due bootstrap step (MIGRATE_THEN) is work to do, as a changed seed file is.
    step = prepare(settings, heads, seeds)

    def at_heads(connection: LeanConnection, current: tuple[str, ...] | None) -> bool:
        return (
            current is not None
            and set(current) == set(heads)
            and not changed_seeds(connection, table, seeds)
            and not (step is not None and step.due(connection, table))
        )

    def at_heads_on(connection: LeanConnection) -> bool:
        if version_table_busy(connection, table):
            return False  # being migrated: not done, and reading it would wait
        return at_heads(connection, database_revisions(connection, table))

    busy = version_table_busy(connection, table)
    current = None if busy else database_revisions(connection, table)
    if not busy and at_heads(connection, current):
        return LeanStart(result=_done("fast_path", heads, key, 0.0, started, heads_from))
    if any(revision not in manifest.revisions for revision in current or ()):
        return LeanStart()  # ahead or unknown: the full path knows the history and the graph
    scope = choose_scope(
        settings.migration_lock_scope, host=url.host, port=url.port, connection=connection
    )
    # Waiting here, not in the full path: most replicas never need Alembic at all. The
    # lock is only kept for the full path (announce=False): it logs lock.acquired.
    # A waiter keeps its connection for a first window only (none on a crowded server),
    # then waits without one (lock.wait_without_connection) and reconnects to take the
    # lock once it is free.
    timeout = settings.migration_lock_timeout_seconds
    waiting_since = time.monotonic()
    while True:
        waited = time.monotonic() - waiting_since
        window = (
            0.0
            if server_is_crowded(connection)
            else settings.migration_lock_wait_connection_seconds
        )
        last_round = waited + window >= timeout
        try:
            hold = stack.enter_context(
                migration_lock(
                    connection,
                    key,
                    scope=scope.scope,
                    timeout_seconds=timeout - waited if last_round else window,
                    work_is_done=partial(at_heads_on, connection),
                    waited_before=waited,
                    announce=False,
                )
            )
        except LockTimeout:
            if last_round:
                raise
            connection.close()
            done = wait_without_connection(
                connect,
                key,
                timeout_seconds=timeout,
                waited_before=time.monotonic() - waiting_since,
                work_is_done=at_heads_on,
            )
            if done:
                waited = time.monotonic() - waiting_since
                return LeanStart(result=_done("waited", heads, key, waited, started, heads_from))
            connection = stack.enter_context(connect())
            continue
        if hold.acquired:
            return LeanStart(hold=hold, connection=connection, waited_before=waited)
        waited += hold.waited_seconds
        return LeanStart(result=_done("waited", heads, key, waited, started, heads_from))


def _done(
    role: Role, current: tuple[str, ...], key: int, waited: float, started: float, source: str
) -> UpgradeResult:
    result = UpgradeResult(
        role=role,
        from_revisions=current,
        to_revisions=current,
        applied=(),
        seeded=(),
        lock_key=key,
        wait_ms=round(waited * 1000),
        total_ms=round((time.monotonic() - started) * 1000),
    )
    log.info(
        "migrate.up_to_date",
        role=role,
        from_rev=list(current),
        to_rev=list(current),
        applied=0,
        seeded=0,
        status="at_head",
        wait_ms=result.wait_ms,
        duration_ms=result.total_ms,
        heads_from=source,
    )
    return result


def lean_settings(overrides: Mapping[str, Any]) -> LeanSettings:
    """The settings as the lean reader reads them (ValueError, LeanUnavailable when it is
    not certain), with logging configured from them."""
    dotenv = read_dotenv(dotenv_path(os.environ, overrides))
    settings = read_settings(os.environ, dotenv, overrides)
    log.configure(log_format=settings.log_format, level=settings.log_level)
    return settings


def connector(settings: LeanSettings, url: DatabaseUrl) -> Callable[[], LeanConnection]:
    """How the lean paths open a connection to ``url`` (its password kept out of logs)."""
    log.add_secret(url.password)
    timeout = int(min(10.0, max(1.0, settings.db_connect_timeout_seconds)))

    def connect() -> LeanConnection:
        return LeanConnection.connect(url.libpq, timeout_seconds=timeout)

    return connect


def version_table_and_key(
    connection: LeanConnection, settings: LeanSettings, url: DatabaseUrl
) -> tuple[VersionTable, int]:
    """The version table this connection's settings name, and its migration lock's key."""
    schema = settings.version_table_schema or current_schema(connection)
    table = VersionTable(schema, settings.version_table)
    key = settings.migration_lock_key
    if key is None:
        row = connection.execute("SELECT current_database()").fetchone()
        database = str(row[0]) if row and row[0] else url.database
        key = lock_key(database, schema, table.name)
    return table, key


def migration_url(settings: LeanSettings) -> DatabaseUrl:
    """The URL to migrate on; both URLs are parsed, as ``load_settings`` parses both: a
    malformed DATABASE_URL is exit 78 on the full path even when MIGRATION_DATABASE_URL
    is the one used, so here it defers (ConfigError, LeanUnavailable)."""
    urls = [
        parse_database_url(raw, libpq_check=_libpq_accepts)
        for raw in (settings.migration_database_url, settings.database_url)
        if raw
    ]
    if not urls:
        raise LeanUnavailable("no database URL")
    return urls[0]


def _libpq_accepts(conninfo: str, variable: str) -> None:
    if not conninfo_is_valid(conninfo):
        raise LeanUnavailable("libpq rejects the URL")
