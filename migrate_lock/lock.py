"""The migration lock: one context manager, ``migration_lock``, that every verb holds it with.

Waiters poll ``pg_try_advisory_lock`` in autocommit mode, so they hold no snapshot
and never queue inside the server (a blocking ``pg_advisory_lock`` waiter can
deadlock ``CREATE INDEX CONCURRENTLY``). While waiting they re-check whether the
work is already done, and report who holds the lock.

Behind a transaction pooler the same key is taken with ``pg_try_advisory_xact_lock``
inside the transaction that will do all the work (scope.py says when).

``migration_lock`` is the only caller of the wait functions: wait, check that this
session owns the lock, name the holder in ``application_name``, bound the work with
the DDL timeouts, log ``lock.acquired`` once, and on the way out wake the waiters,
release with a checked unlock (or commit/roll back the lock's transaction) and log
``lock.released`` once. It works on psycopg's connection and on the lean one alike.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from migrate_lock.errors import (
    ConnectionLost,
    LockTimeout,
    MigrateLockError,
    MigrationFailed,
    describe_sql_error,
)
from migrate_lock.logs import log
from migrate_lock.scope import LockScope

if TYPE_CHECKING:
    from migrate_lock.lean.abc import LockConnection

AnyConnection = TypeVar("AnyConnection", bound="LockConnection")

#: How often a waiter logs who holds the lock.
HOLDER_REPORT_INTERVAL_SECONDS = 5.0
#: Polling backoff: from the first to the longest pause between two attempts.
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 1.0
#: Without NOTIFY (the transaction scope) polling is the only wake-up: poll more often.
MAX_POLL_SECONDS_WITHOUT_NOTIFY = 0.25
#: How long a transaction-scope waiter that finds the lock newly free leaves it to a
#: hand-over in progress (measured gap: ~11 ms from release to the full path's try).
HANDOVER_GRACE_SECONDS = 0.1
#: A waiter that gave its connection back polls at most this often (jittered: half to all).
MAX_POLL_SECONDS_WITHOUT_CONNECTION = 1.0
#: The share of usable connection slots in use from which a waiter keeps none.
CROWDED_SHARE = 0.5

_APPLICATION_NAME_PREFIX = "migrate-lock: migrating since "
#: True when this backend holds the key (params: its two halves, see ``_split``).
_THIS_BACKEND_HOLDS = (
    "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s"
    " AND objsubid = 1)"
)

#: What pg_stat_activity shows as the query of another role's session to a role without
#: pg_read_all_stats (its state, client address and start time are then NULL).
_HIDDEN = "<insufficient privilege>"
#: The application_name of every migrate-lock connection starts so.
_OWN_NAME = "migrate-lock"
#: The statements this module runs to wait, take, check, name and release the lock (as
#: pg_stat_activity shows them, upper case). A migrate-lock holder whose last query is one
#: of them is between the lock's own steps: waiters report its migration ("migrating
#: since …"), not "idle" in UNLISTEN.
_OWN_STATEMENTS = (
    "LISTEN MIGRATE_LOCK_",
    "UNLISTEN MIGRATE_LOCK_",
    "NOTIFY MIGRATE_LOCK_",
    "SELECT PG_TRY_ADVISORY_LOCK(",
    "SELECT PG_ADVISORY_UNLOCK(",
    "SELECT EXISTS (SELECT 1 FROM PG_LOCKS",
    "SELECT NOT EXISTS (SELECT 1 FROM PG_LOCKS",
    "SELECT CASE WHEN EXISTS (SELECT 1 FROM PG_LOCKS",
    "SELECT SET_CONFIG(",
    "SELECT CURRENT_SETTING('SERVER_VERSION_NUM')",
    "SELECT A.PID, A.APPLICATION_NAME,",
    "SELECT (SELECT COUNT(*) FROM PG_STAT_ACTIVITY",
    "BEGIN ISOLATION LEVEL READ COMMITTED",
)


def lock_key(database: str, schema: str, version_table: str) -> int:
    """The signed 64-bit advisory lock key for one version table of one database.

    Two applications that share a cluster (or a database, with separate version
    tables or schemas) get different keys and never wait for each other.
    """
    digest = hashlib.sha256(
        f"migrate-lock\0{database}\0{schema}\0{version_table}".encode()
    ).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class LockHolder:
    """The session holding the migration lock, as ``pg_stat_activity`` shows it.

    ``user`` and ``application_name`` are visible to every role. A role without
    ``pg_read_all_stats`` sees nothing else of another role's session: ``hidden`` is then
    True and ``client_addr``, ``state`` and ``query`` are None (``since`` still comes from
    a migrate-lock holder's ``application_name``). ``state`` and ``query`` are also None
    while a migrate-lock holder runs the lock's own statements (LISTEN, UNLISTEN, the
    ownership check, set_config): its migration is what it is doing, and its
    ``application_name`` says since when.
    """

    pid: int
    application_name: str
    client_addr: str | None
    since: str | None
    state: str | None
    query: str | None
    user: str | None = None
    hidden: bool = False

    def describe(self) -> str:
        user = f" as {self.user}" if self.user else ""
        where = f" from {self.client_addr}" if self.client_addr else ""
        since = f" since {self.since}" if self.since else ""
        if self.hidden:
            doing = "; its state and query are hidden from this role (pg_read_all_stats shows them)"
        else:
            doing = f", state {self.state}" if self.state else ""
            doing += f"; its query: {_shorten(self.query, 120)}" if self.query else ""
        name = self.application_name or "no application_name"
        return f"pid {self.pid} ({name}){user}{where}{since}{doing}"

    def as_fields(self) -> dict[str, Any]:
        fields = {f"holder_{key}": value for key, value in asdict(self).items()}
        if not self.hidden:
            del fields["holder_hidden"]
        return fields


@dataclass(frozen=True)
class DdlTimeouts:
    """PostgreSQL timeouts for the statements run holding the lock (DDL_* settings), and
    their ``search_path`` (MIGRATION_SEARCH_PATH; None keeps the role's)."""

    lock_timeout: str
    statement_timeout: str
    idle_in_transaction_timeout: str
    search_path: str | None = None


class Hold:
    """The migration lock as ``migration_lock`` yields it.

    ``acquired`` is False when, while waiting, ``work_is_done()`` became true: another
    holder did the work, and nothing is held. ``connection`` is the one that holds the
    lock: run the work on it. In the transaction scope the work runs inside the lock's
    transaction; ``commit()`` ends it (and with it the lock) before the caller reports.
    """

    def __init__(
        self,
        connection: LockConnection,
        key: int,
        scope: LockScope,
        *,
        acquired: bool,
        waited_seconds: float,
        attempts: int,
    ) -> None:
        self.connection = connection
        self.key = key
        self.scope = scope
        self.acquired = acquired
        self.waited_seconds = waited_seconds
        self.attempts = attempts
        self._held = acquired

    @property
    def held(self) -> bool:
        """Whether this hold still has the lock (not yet committed or handed over)."""
        return self._held

    def commit(self) -> None:
        """Transaction scope: wake the waiters and commit the work; the lock ends with it.

        A failed COMMIT raises ConnectionLost (75) or MigrationFailed (1), in one line.
        """
        if not (self._held and self.scope == "transaction"):
            return
        self._held = False
        try:
            announce_done(self.connection, self.key)  # delivered at the commit
            self.connection.execute("COMMIT")
        except Exception as error:  # noqa: BLE001 - psycopg's or libpq's: same meaning
            raise commit_error(error, self.connection) from None

    def hand_over(self) -> None:
        """Let go of the lock now, without waking anyone: the caller takes it next on
        another connection (the at-head path hands its lock to the full path)."""
        if not self._held:
            return
        self._held = False
        _let_go(self.connection, self.key, self.scope)
        log.debug("lock.handed_over", lock_key=self.key)


@contextmanager
def migration_lock(
    connection: LockConnection,
    key: int,
    *,
    scope: LockScope,
    timeout_seconds: float,
    timeouts: DdlTimeouts | None = None,
    work_is_done: Callable[[], bool] | None = None,
    waited_before: float = 0.0,
    announce: bool = True,
) -> Iterator[Hold]:
    """Hold the migration lock on ``connection`` for the body; the one way to hold it.

    Waits by polling (never queueing in the server) until the lock is ours, until
    ``work_is_done()`` (asked between attempts, outside any transaction), or until
    ``timeout_seconds`` (LockTimeout, exit 75, naming the holder). Acquired, it checks
    that this session really owns the lock, names the holder in ``application_name``
    ("migrating since ..."), applies ``timeouts`` and TCP keepalives (for the
    transaction only, in the transaction scope, so nothing stays on a pooled
    connection) and logs ``lock.acquired`` once. On the way out it wakes the waiters
    and releases with a checked unlock (session scope) or commits the lock's
    transaction (transaction scope; on an error it rolls back), and logs
    ``lock.released`` once. ``waited_before`` adds an earlier wait to the reported one
    (a hand-over); ``announce=False`` holds it silently, for a hold that only keeps
    the lock until ``Hold.hand_over``.
    """
    hold = _wait(connection, key, scope, timeout_seconds, work_is_done or _never, waited_before)
    if not hold.acquired:
        yield hold
        return
    failed = True
    try:
        if not _claim(connection, key, timeouts, local=scope == "transaction", announce=announce):
            raise MigrationFailed(
                "the server granted the migration lock, but pg_locks shows no lock for "
                "this session",
                hint="a connection pooler may sit between us and the server: set "
                "MIGRATION_DATABASE_URL to a direct connection, or MIGRATION_LOCK_SCOPE="
                "transaction",
            )
        if announce:
            log.info(
                "lock.acquired",
                lock_key=key,
                scope=scope,
                wait_ms=round((waited_before + hold.waited_seconds) * 1000),
                attempts=hold.attempts,
            )
        yield hold
        failed = False
        if scope == "transaction":
            hold.commit()
    finally:
        if hold.held:
            hold._held = False
            _let_go(connection, key, scope, failed=failed, wake_waiters=announce)
        if announce:
            log.info("lock.released", lock_key=key, scope=scope)


def commit_error(error: BaseException, connection: LockConnection) -> MigrateLockError:
    """Why a COMMIT failed, in one line: the connection went, or the server refused it."""
    if connection.broken or connection.closed:
        return ConnectionLost(
            "lost the database connection while committing; if the commit did not reach the "
            "server, it rolled everything back",
            hint="retry when the database is back",
        )
    # A deferred constraint, say: every revision ran, and the server rolled it all back.
    return MigrationFailed(
        f"the commit failed: {describe_sql_error(error)}; rolled back",
        hint="fix the revision or seed file that breaks the constraint and run again",
    )


def _never() -> bool:
    return False


def _wait(
    connection: LockConnection,
    key: int,
    scope: LockScope,
    timeout_seconds: float,
    work_is_done: Callable[[], bool],
    waited_before: float,
) -> Hold:
    wait = _wait_in_transaction if scope == "transaction" else _wait_in_session
    acquired, waited, attempts = wait(
        connection, key, timeout_seconds, work_is_done, waited_before=waited_before
    )
    return Hold(connection, key, scope, acquired=acquired, waited_seconds=waited, attempts=attempts)


def _let_go(
    connection: LockConnection,
    key: int,
    scope: LockScope,
    *,
    failed: bool = False,
    wake_waiters: bool = False,
) -> None:
    # A dead (or deliberately closed) connection took the lock, and any open
    # transaction, with it: nothing left to release.
    if connection.closed or connection.broken:
        return
    try:
        if scope == "transaction":
            connection.execute("ROLLBACK")  # ends the lock's transaction, and the lock
            return
        release(connection, key, wake_waiters=wake_waiters and not failed)
    except Exception:
        # The connection died on the way out: the lock went with it.
        if not (failed or connection.closed or connection.broken):
            raise


def _claim(
    connection: LockConnection,
    key: int,
    timeouts: DdlTimeouts | None,
    *,
    local: bool,
    announce: bool,
) -> bool:
    """Whether this very session holds ``key`` (asked in a statement of its own: behind a
    pooler it may run on another server session than the attempt did); when it does
    and ``announce``, the same statement names the holder and bounds its work."""
    if not announce:
        return holds(connection, key)
    # Name ourselves so waiters and operators see who migrates since when, and bound
    # what a stuck holder can do: the server itself reaps a holder that vanished.
    options = {
        "application_name": holder_application_name(),
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
        # Unacknowledged data (a holder whose network vanished mid-reply) gives up here.
        "tcp_user_timeout": "30000",
    }
    if timeouts is not None:
        options |= {
            "lock_timeout": timeouts.lock_timeout,
            "statement_timeout": timeouts.statement_timeout,
            "idle_in_transaction_session_timeout": timeouts.idle_in_transaction_timeout,
        }
        if timeouts.search_path:
            options["search_path"] = timeouts.search_path
    # One round trip for the check and all of them; nothing is set on a session that
    # does not hold the lock (a pooler's: it would stay there for its other clients).
    # From PostgreSQL 14, also notice a client that died mid-statement without waiting
    # for the statement (an older server has no such setting: the CASE never names it).
    settings = ", ".join("set_config(%s, %s, %s)" for _ in options)
    params: list[object] = [item for pair in options.items() for item in (*pair, local)]
    row = connection.execute(
        f"SELECT CASE WHEN {_THIS_BACKEND_HOLDS} THEN concat({settings},"
        " CASE WHEN current_setting('server_version_num')::int >= 140000"
        " THEN set_config('client_connection_check_interval', '2s', %s) END) END IS NOT NULL",
        (*_split(key), *params, local),
    ).fetchone()
    return bool(row and row[0])


def _try_in_session(connection: LockConnection, key: int) -> bool:
    """One non-blocking attempt at the session lock."""
    row = connection.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


def _try_in_transaction(connection: LockConnection, key: int) -> bool:
    """One attempt at the transaction lock; on success its transaction stays open.

    The lock lives as long as that transaction: committing or rolling it back (or
    losing the connection) releases it, so no pooled backend can keep it.
    """
    classid, objid = _split(key)
    # READ COMMITTED whatever the default: the work after the lock must see what the
    # previous holder committed, and this statement's snapshot predates that commit.
    connection.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
    try:
        # Advisory locks are re-entrant per backend: on a pooled backend where some
        # client left a session lock, our attempt would "succeed". That lock is
        # someone else's (stuck, or a session-scoped tool's between transactions):
        # NULL. CASE evaluates the attempt only when the backend holds nothing.
        row = connection.execute(
            f"SELECT CASE WHEN {_THIS_BACKEND_HOLDS} THEN NULL"
            " ELSE pg_try_advisory_xact_lock(%s) END",
            (classid, objid, key),
        ).fetchone()
    except BaseException:
        if not connection.closed and not connection.broken:
            connection.execute("ROLLBACK")
        raise
    if row and row[0]:
        return True
    connection.execute("ROLLBACK")
    stuck = row is not None and row[0] is None
    if stuck:
        _report_stuck_once(key)
    return False


_reported_stuck: set[int] = set()


def _report_stuck_once(key: int) -> None:
    if key in _reported_stuck:
        return
    _reported_stuck.add(key)
    log.error(
        "lock.stuck_on_pooled_backend",
        lock_key=key,
        detail="a pooled server connection holds the migration lock as a session lock that "
        "no client of ours holds: a session-scoped locker behind this pooler, or one that "
        "left. Waiting for it; if nothing is migrating, clear it with the query in clear_with",
        clear_with=clear_lock_query(key),
    )


def release(connection: LockConnection, key: int, *, wake_waiters: bool = False) -> None:
    """Release the session lock; a lock we did not hold is reported loudly.

    ``wake_waiters``: in the same statement, notify the replicas waiting for it (the
    holder is done); the server delivers it when the statement commits, so they wake to
    a lock already free.
    """
    if wake_waiters:
        row = connection.execute(
            "SELECT pg_advisory_unlock(%s), pg_notify(%s, '')", (key, _channel(key))
        ).fetchone()
    else:
        row = connection.execute("SELECT pg_advisory_unlock(%s)", (key,)).fetchone()
    if not (row and row[0]):
        log.error(
            "lock.release_failed",
            lock_key=key,
            detail="pg_advisory_unlock returned false: this session did not hold the lock. "
            "If a connection pooler sits in between, the lock may be stuck on a pooled "
            "server connection and block every later replica: clear it with the query in "
            "clear_with, and set MIGRATION_LOCK_SCOPE=transaction (or auto)",
            clear_with=clear_lock_query(key),
        )


def clear_lock_query(key: int) -> str:
    """The SQL an operator runs to end the session that holds the lock (a stuck lock)."""
    classid, objid = _split(key)
    return (
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
        f" AND classid = {classid} AND objid = {objid} AND objsubid = 1"
    )


def holds(connection: LockConnection, key: int) -> bool:
    """Whether this very session holds the lock (the ownership check after acquiring)."""
    row = connection.execute(f"SELECT {_THIS_BACKEND_HOLDS}", _split(key)).fetchone()
    return bool(row and row[0])


def find_holder(connection: LockConnection, key: int) -> LockHolder | None:
    """Who holds the lock now, or None (also when we may not see other sessions)."""
    classid, objid = _split(key)
    row = connection.execute(
        """
        SELECT a.pid, a.application_name, host(a.client_addr),
               to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               a.state, a.query, a.usename
          FROM pg_locks l
          JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 1
         LIMIT 1
        """,
        (classid, objid),
    ).fetchone()
    if row is None:
        return None
    pid, application_name, client_addr, backend_start, state, query, user = row
    name = str(application_name or "")
    # Formatted by the server: the lean connection returns text, psycopg a datetime.
    since = (
        name.removeprefix(_APPLICATION_NAME_PREFIX)
        if name.startswith(_APPLICATION_NAME_PREFIX)
        else (str(backend_start) if backend_start else None)
    )
    hidden = query == _HIDDEN
    quiet = hidden or (name.startswith(_OWN_NAME) and _is_own_statement(str(query or "")))
    return LockHolder(
        pid=int(str(pid)),
        application_name=name,
        client_addr=str(client_addr) if client_addr else None,
        since=since,
        state=str(state) if state and not quiet else None,
        query=str(query) if query and not quiet else None,
        user=str(user) if user else None,
        hidden=hidden,
    )


def holder_application_name() -> str:
    """What a holder calls itself, so waiters and operators can tell since when it holds."""
    return _APPLICATION_NAME_PREFIX + _iso(datetime.now(timezone.utc))


def _wait_in_session(
    connection: LockConnection,
    key: int,
    timeout_seconds: float,
    work_is_done: Callable[[], bool],
    *,
    waited_before: float = 0.0,
) -> tuple[bool, float, int]:
    """Poll for the session lock until acquired, until ``work_is_done()``, or the timeout.

    Between attempts we LISTEN for the holder's notification (its ``release`` sends it),
    so the hand-off takes milliseconds. Returns (acquired, seconds waited, attempts).
    """
    # The usual case, a free lock, costs one statement: LISTEN only once it is taken.
    # The poll's first attempt follows the LISTEN at once: a release in between is seen.
    if _try_in_session(connection, key):
        return True, 0.0, 1
    channel = _channel(key)
    connection.execute(f"LISTEN {channel}")
    try:
        acquired, waited, attempts = _poll(
            connection,
            key,
            timeout_seconds,
            work_is_done,
            attempt=lambda: _try_in_session(connection, key),
            sleep=lambda seconds: _wait_for_notify(connection, seconds),
            waited_before=waited_before,
        )
        return acquired, waited, attempts + 1
    finally:
        if not connection.closed and not connection.broken:
            connection.execute(f"UNLISTEN {channel}")


def _wait_in_transaction(
    connection: LockConnection,
    key: int,
    timeout_seconds: float,
    work_is_done: Callable[[], bool],
    *,
    waited_before: float = 0.0,
) -> tuple[bool, float, int]:
    """``_wait_in_session`` for the transaction scope; acquired, the transaction stays open.

    No LISTEN: behind a pooler it would land on some pooled backend and stay there,
    so the hand-off relies on polling alone (at most MAX_POLL_SECONDS_WITHOUT_NOTIFY late).
    ``work_is_done`` runs in autocommit between attempts, outside any transaction.
    """
    tried = False

    def attempt() -> bool:
        nonlocal tried
        first, tried = not tried, True
        if not _try_in_transaction(connection, key):
            return False
        if first:
            return True
        # Free now, held before: perhaps mid hand-over (a replica's lean connection lets
        # go of it just before that replica's full path takes it). Step back once, or
        # every poller that lands in that gap loads Alembic for nothing.
        connection.execute("ROLLBACK")
        time.sleep(HANDOVER_GRACE_SECONDS)
        return _try_in_transaction(connection, key)

    return _poll(
        connection,
        key,
        timeout_seconds,
        work_is_done,
        attempt=attempt,
        sleep=time.sleep,
        longest_pause=MAX_POLL_SECONDS_WITHOUT_NOTIFY,
        waited_before=waited_before,
    )


def announce_done(connection: LockConnection, key: int) -> None:
    """Wake the replicas waiting for this lock: the holder is done. Delivered when the
    holder's transaction commits (the transaction scope's ``Hold.commit``; the session
    scope's ``release`` sends it in the unlock's own statement)."""
    connection.execute(f"NOTIFY {_channel(key)}")


def _poll(
    connection: LockConnection,
    key: int,
    timeout_seconds: float,
    work_is_done: Callable[[], bool],
    *,
    attempt: Callable[[], bool],
    sleep: Callable[[float], None],
    longest_pause: float = MAX_POLL_SECONDS,
    waited_before: float = 0.0,
) -> tuple[bool, float, int]:
    started = time.monotonic()
    deadline = started + timeout_seconds
    pause = FIRST_POLL_SECONDS
    attempts = 0
    next_report = started
    holder: LockHolder | None = None
    while True:
        attempts += 1
        # Woken by the holder's NOTIFY (or the poll), the lock is free *and* the work is
        # done: ask about the work first, or every waiter would take the lock in turn.
        if attempts > 1 and work_is_done():
            return False, time.monotonic() - started, attempts - 1
        if attempt():
            return True, time.monotonic() - started, attempts
        now = time.monotonic()
        if now >= next_report:
            holder = find_holder(connection, key)
            log.info(
                "lock.waiting",
                lock_key=key,
                waited_ms=round((now - started) * 1000),
                **(holder.as_fields() if holder else {"holder_pid": None}),
            )
            next_report = now + HOLDER_REPORT_INTERVAL_SECONDS
        if now >= deadline:
            raise gave_up(
                find_holder(connection, key) or holder,
                timeout_seconds=waited_before + timeout_seconds,
                waited_seconds=waited_before + now - started,
            )
        # Jitter (half to all of the pause) keeps many replicas from polling in lockstep.
        longest = min(pause, deadline - now)
        sleep(max(0.0, random.uniform(longest / 2, longest)))  # noqa: S311
        pause = min(pause * 1.6, longest_pause)


def gave_up(
    holder: LockHolder | None, *, timeout_seconds: float, waited_seconds: float
) -> LockTimeout:
    """The one LockTimeout a waiter raises at its deadline, naming the holder."""
    who = holder.describe() if holder else "a session this role cannot see"
    return LockTimeout(
        f"gave up waiting for the migration lock after {timeout_seconds:g}s; held by {who}",
        hint="retry later, raise MIGRATION_LOCK_TIMEOUT_SECONDS, or if that session "
        f"is stuck: SELECT pg_terminate_backend({holder.pid if holder else 'PID'})",
        holder=holder,
        waited_seconds=waited_seconds,
    )


def server_is_crowded(connection: LockConnection) -> bool:
    """Whether the connection slots this session competes for are nearly all taken
    (CROWDED_SHARE of them): the server's that an ordinary role may use, the role's
    CONNECTION LIMIT or the database's (a managed database's application role often has
    one); a waiter then gives its connection back at once. A superuser has neither limit."""
    # One pass over pg_stat_activity counts all three (client sessions have a database).
    row = connection.execute(
        "SELECT count(*),"
        " current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int"
        " - coalesce(current_setting('reserved_connections', true)::int, 0),"
        " count(*) FILTER (WHERE a.usesysid = r.oid), r.rolconnlimit,"
        " count(*) FILTER (WHERE a.datid = d.oid), d.datconnlimit, r.rolsuper"
        " FROM pg_roles r, pg_database d, pg_stat_activity a"
        " WHERE r.rolname = current_user AND d.datname = current_database()"
        " AND a.datid IS NOT NULL"
        " GROUP BY r.rolconnlimit, d.datconnlimit, r.rolsuper"
    ).fetchone()
    if row is None:
        return False
    in_use, usable, role_in_use, role_limit, database_in_use, database_limit = (
        int(str(value)) for value in row[:6]
    )
    limits = [(in_use, usable)]
    if str(row[6]).lower() not in ("true", "t"):  # a superuser: no role or database limit
        limits += [(role_in_use, role_limit), (database_in_use, database_limit)]
    return any(limit >= 0 and used >= CROWDED_SHARE * max(limit, 1) for used, limit in limits)


def lock_is_free(connection: LockConnection, key: int) -> bool:
    """Whether no session of this database holds the lock now (a glance, not an attempt)."""
    row = connection.execute(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1)",
        _split(key),
    ).fetchone()
    return bool(row and row[0])


def wait_without_connection(
    connect: Callable[[], AbstractContextManager[AnyConnection]],
    key: int,
    *,
    timeout_seconds: float,
    waited_before: float,
    work_is_done: Callable[[AnyConnection], bool],
) -> bool:
    """Wait for the lock's holder while holding no connection slot.

    A waiter that has waited its first window on its own connection (with LISTEN, for
    the fast hand-off) gives that connection back and comes here: every ~second it opens
    a short connection and asks whether the work is done (True: nothing left to do) or
    the lock is free (False: take it on a connection of its own, the usual way). It still
    reports the holder every HOLDER_REPORT_INTERVAL_SECONDS and raises LockTimeout at
    ``timeout_seconds`` (counted with ``waited_before``). A poll that cannot connect
    (the server is full, restarting) is skipped: the next one tries again.
    """
    started = time.monotonic() - waited_before
    deadline = started + timeout_seconds
    next_report = time.monotonic()
    holder: LockHolder | None = None
    log.info("lock.waiting_without_connection", lock_key=key, waited_ms=round(waited_before * 1000))
    while True:
        now = time.monotonic()
        pause = min(MAX_POLL_SECONDS_WITHOUT_CONNECTION, max(0.0, deadline - now))
        time.sleep(random.uniform(pause / 2, pause))  # noqa: S311 - jitter, not secrecy
        now = time.monotonic()
        try:
            with connect() as connection:
                if work_is_done(connection):
                    return True
                if lock_is_free(connection, key):
                    return False
                if now >= next_report or now >= deadline:
                    holder = find_holder(connection, key) or holder
        except Exception as error:  # noqa: BLE001 - any failure to poll: poll again later
            log.debug("lock.poll_failed", lock_key=key, error=type(error).__name__)
        if now >= deadline:
            raise gave_up(holder, timeout_seconds=timeout_seconds, waited_seconds=now - started)
        if now >= next_report:
            log.info(
                "lock.waiting",
                lock_key=key,
                waited_ms=round((now - started) * 1000),
                connection="released",
                **(holder.as_fields() if holder else {"holder_pid": None}),
            )
            next_report = now + HOLDER_REPORT_INTERVAL_SECONDS


def _wait_for_notify(connection: LockConnection, seconds: float) -> None:
    # Returns at the first notification or after ``seconds``, whichever comes first.
    for _ in connection.notifies(timeout=seconds, stop_after=1):
        break


def _channel(key: int) -> str:
    return f"migrate_lock_{key & 0xFFFFFFFFFFFFFFFF:016x}"


def _split(key: int) -> tuple[int, int]:
    # pg_locks shows a bigint advisory key as two oids: high and low 32 bits.
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_own_statement(query: str) -> bool:
    """Whether ``query`` is one of the lock's own statements (see ``_OWN_STATEMENTS``)."""
    flat = " ".join(query.split()).upper()
    return flat.startswith(_OWN_STATEMENTS)


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
