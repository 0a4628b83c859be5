"""The migration lock: a PostgreSQL advisory lock, waited for without blocking.

Waiters poll ``pg_try_advisory_lock`` in autocommit mode, so they hold no snapshot
and never queue inside the server (a blocking ``pg_advisory_lock`` waiter can
deadlock ``CREATE INDEX CONCURRENTLY``). While waiting they re-check whether the
database already reached the target, and report who holds the lock.

Behind a transaction pooler the same key is taken with ``pg_try_advisory_xact_lock``
inside the transaction that will do all the work (scope.py says when).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from migrate_lock.errors import LockTimeout
from migrate_lock.logs import log

if TYPE_CHECKING:
    import psycopg

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

_APPLICATION_NAME_PREFIX = "migrate-lock: migrating since "
#: True when this backend holds the key (params: its two halves, see ``_split``).
_THIS_BACKEND_HOLDS = (
    "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s"
    " AND objsubid = 1)"
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
    """The session holding the migration lock, as ``pg_stat_activity`` shows it."""

    pid: int
    application_name: str
    client_addr: str | None
    since: str | None
    state: str | None
    query: str | None

    def describe(self) -> str:
        where = f" from {self.client_addr}" if self.client_addr else ""
        since = f" since {self.since}" if self.since else ""
        query = f"; its query: {_shorten(self.query, 120)}" if self.query else ""
        return (
            f"pid {self.pid} ({self.application_name or 'no application_name'}){where}{since}, "
            f"state {self.state or 'unknown'}{query}"
        )

    def as_fields(self) -> dict[str, Any]:
        return {f"holder_{key}": value for key, value in asdict(self).items()}


def try_acquire(connection: psycopg.Connection[Any], key: int) -> bool:
    """One non-blocking attempt at the session lock."""
    row = connection.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


def try_acquire_in_transaction(connection: psycopg.Connection[Any], key: int) -> bool:
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


@contextmanager
def committed_under_transaction_lock(
    connection: psycopg.Connection[Any], key: int
) -> Iterator[None]:
    """Run the body in the transaction holding the lock; commit it, which frees the lock.

    On an error the transaction is rolled back instead, which frees the lock too.
    """
    try:
        yield
        announce_done(connection, key)  # delivered at the commit
        connection.commit()
    finally:
        if not connection.closed and not connection.broken:
            connection.rollback()  # nothing left to roll back after the commit


def release(connection: psycopg.Connection[Any], key: int) -> None:
    """Release the session lock; a lock we did not hold is reported loudly."""
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


def holds(connection: psycopg.Connection[Any], key: int) -> bool:
    """Whether this very session holds the lock (the ownership check after acquiring)."""
    row = connection.execute(f"SELECT {_THIS_BACKEND_HOLDS}", _split(key)).fetchone()
    return bool(row and row[0])


def find_holder(connection: psycopg.Connection[Any], key: int) -> LockHolder | None:
    """Who holds the lock now, or None (also when we may not see other sessions)."""
    classid, objid = _split(key)
    row = connection.execute(
        """
        SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start,
               a.state, a.query
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
    pid, application_name, client_addr, backend_start, state, query = row
    name = str(application_name or "")
    since = (
        name.removeprefix(_APPLICATION_NAME_PREFIX)
        if name.startswith(_APPLICATION_NAME_PREFIX)
        else (_iso(backend_start) if isinstance(backend_start, datetime) else None)
    )
    return LockHolder(
        pid=int(str(pid)),
        application_name=name,
        client_addr=str(client_addr) if client_addr else None,
        since=since,
        state=str(state) if state else None,
        query=str(query) if query else None,
    )


def holder_application_name() -> str:
    """What a holder calls itself, so waiters and operators can tell since when it holds."""
    return _APPLICATION_NAME_PREFIX + _iso(datetime.now(timezone.utc))


@dataclass(frozen=True)
class WaitOutcome:
    """How a wait ended: ``acquired`` the lock, or found the work ``done`` by another."""

    acquired: bool
    waited_seconds: float
    attempts: int


def wait_for_lock(
    connection: psycopg.Connection[Any],
    key: int,
    *,
    timeout_seconds: float,
    work_is_done: Callable[[], bool],
) -> WaitOutcome:
    """Poll for the lock until acquired, until ``work_is_done()``, or until the timeout.

    ``work_is_done`` runs lock-free between attempts: when another replica has
    finished, we continue without ever taking the lock. Between attempts we LISTEN
    for the holder's NOTIFY (``announce_done``), so the hand-off takes milliseconds;
    behind a transaction pooler, where LISTEN does not work, the polling remains.
    Raises LockTimeout (75) naming the holder.
    """
    channel = _channel(key)
    connection.execute(f"LISTEN {channel}")
    try:
        return _poll(
            connection,
            key,
            timeout_seconds,
            work_is_done,
            attempt=lambda: try_acquire(connection, key),
            sleep=lambda seconds: _wait_for_notify(connection, seconds),
        )
    finally:
        if not connection.closed and not connection.broken:
            connection.execute(f"UNLISTEN {channel}")


def wait_for_transaction_lock(
    connection: psycopg.Connection[Any],
    key: int,
    *,
    timeout_seconds: float,
    work_is_done: Callable[[], bool],
) -> WaitOutcome:
    """``wait_for_lock`` for the transaction scope; acquired, the transaction stays open.

    No LISTEN: behind a pooler it would land on some pooled backend and stay there,
    so the hand-off relies on polling alone (at most MAX_POLL_SECONDS_WITHOUT_NOTIFY late).
    ``work_is_done`` runs in autocommit between attempts, outside any transaction.
    """
    tried = False

    def attempt() -> bool:
        nonlocal tried
        first, tried = not tried, True
        if not try_acquire_in_transaction(connection, key):
            return False
        if first:
            return True
        # Free now, held before: perhaps mid hand-over (a replica's lean connection lets
        # go of it just before that replica's full path takes it). Step back once, or
        # every poller that lands in that gap loads Alembic for nothing.
        connection.execute("ROLLBACK")
        time.sleep(HANDOVER_GRACE_SECONDS)
        return try_acquire_in_transaction(connection, key)

    return _poll(
        connection,
        key,
        timeout_seconds,
        work_is_done,
        attempt=attempt,
        sleep=time.sleep,
        longest_pause=MAX_POLL_SECONDS_WITHOUT_NOTIFY,
    )


def announce_done(connection: psycopg.Connection[Any], key: int) -> None:
    """Wake the replicas waiting for this lock: the holder is done (sent before unlocking)."""
    connection.execute(f"NOTIFY {_channel(key)}")


def _poll(
    connection: psycopg.Connection[Any],
    key: int,
    timeout_seconds: float,
    work_is_done: Callable[[], bool],
    *,
    attempt: Callable[[], bool],
    sleep: Callable[[float], None],
    longest_pause: float = MAX_POLL_SECONDS,
) -> WaitOutcome:
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
            return WaitOutcome(False, time.monotonic() - started, attempts - 1)
        if attempt():
            return WaitOutcome(True, time.monotonic() - started, attempts)
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
            holder = find_holder(connection, key) or holder
            who = holder.describe() if holder else "a session this role cannot see"
            raise LockTimeout(
                f"gave up waiting for the migration lock after {timeout_seconds:g}s; held by {who}",
                hint="retry later, raise MIGRATION_LOCK_TIMEOUT_SECONDS, or if that session "
                f"is stuck: SELECT pg_terminate_backend({holder.pid if holder else 'PID'})",
            )
        # Jitter (half to all of the pause) keeps many replicas from polling in lockstep.
        longest = min(pause, deadline - now)
        sleep(max(0.0, random.uniform(longest / 2, longest)))  # noqa: S311
        pause = min(pause * 1.6, longest_pause)


def _wait_for_notify(connection: psycopg.Connection[Any], seconds: float) -> None:
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


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
