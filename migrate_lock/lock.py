"""The migration lock: a PostgreSQL session advisory lock, waited for without blocking.

Waiters poll ``pg_try_advisory_lock`` in autocommit mode, so they hold no snapshot
and never queue inside the server (a blocking ``pg_advisory_lock`` waiter can
deadlock ``CREATE INDEX CONCURRENTLY``). While waiting they re-check whether the
database already reached the target, and report who holds the lock.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
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

_APPLICATION_NAME_PREFIX = "migrate-lock: migrating since "


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


def release(connection: psycopg.Connection[Any], key: int) -> None:
    """Release the session lock; a lock we did not hold is reported loudly."""
    row = connection.execute("SELECT pg_advisory_unlock(%s)", (key,)).fetchone()
    if not (row and row[0]):
        log.error(
            "lock.release_failed",
            lock_key=key,
            detail="pg_advisory_unlock returned false: this session did not hold the lock",
            clear_with=f"SELECT pg_terminate_backend(pid) FROM pg_locks WHERE "
            f"locktype = 'advisory' AND classid = {_split(key)[0]} AND objid = {_split(key)[1]}",
        )


def holds(connection: psycopg.Connection[Any], key: int) -> bool:
    """Whether this very session holds the lock (the ownership check after acquiring)."""
    classid, objid = _split(key)
    row = connection.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s"
        " AND objsubid = 1",
        (classid, objid),
    ).fetchone()
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
        return _poll(connection, key, timeout_seconds, work_is_done)
    finally:
        if not connection.closed and not connection.broken:
            connection.execute(f"UNLISTEN {channel}")


def announce_done(connection: psycopg.Connection[Any], key: int) -> None:
    """Wake the replicas waiting for this lock: the holder is done (sent before unlocking)."""
    connection.execute(f"NOTIFY {_channel(key)}")


def _poll(
    connection: psycopg.Connection[Any],
    key: int,
    timeout_seconds: float,
    work_is_done: Callable[[], bool],
) -> WaitOutcome:
    started = time.monotonic()
    deadline = started + timeout_seconds
    pause = FIRST_POLL_SECONDS
    attempts = 0
    next_report = started
    holder: LockHolder | None = None
    while True:
        attempts += 1
        if try_acquire(connection, key):
            return WaitOutcome(True, time.monotonic() - started, attempts)
        if attempts > 1 and work_is_done():
            return WaitOutcome(False, time.monotonic() - started, attempts)
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
        sleep = min(pause, deadline - now)
        _wait_for_notify(connection, max(0.0, random.uniform(sleep / 2, sleep)))  # noqa: S311
        pause = min(pause * 1.6, MAX_POLL_SECONDS)


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
