"""The one lock-holding path, ``lock.migration_lock``, against a scripted connection.

The integration tier proves the lock against a real server; these pin down the
sequence every verb relies on: ownership checked, one ``lock.acquired``, one
``lock.released``, a checked unlock (or the lock's transaction ended) on every exit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from migrate_lock.errors import LockTimeout, MigrationFailed
from migrate_lock.lock import DdlTimeouts, migration_lock
from migrate_lock.logs import log

pytestmark = pytest.mark.unit

KEY = 42
TIMEOUTS = DdlTimeouts("1s", "0", "30s")


class Rows:
    def __init__(self, row: tuple[object, ...] | None) -> None:
        self.row = row

    def fetchone(self) -> tuple[object, ...] | None:
        return self.row

    def fetchall(self) -> list[tuple[object, ...]]:
        return [self.row] if self.row else []


class Endpoint:
    host = "db.internal"
    port = 5432


class ScriptedConnection:
    """Answers the lock's queries like a server on which the lock is free (or not)."""

    def __init__(self, *, owned: bool = True, free: bool = True) -> None:
        self.owned = owned
        self.free = free
        self.statements: list[str] = []
        self.closed = False
        self.broken = False
        self.info = Endpoint()

    def execute(self, query: Any, params: Any = None) -> Rows:
        text = " ".join(str(query).split())
        self.statements.append(text)
        if "pg_try_advisory" in text:
            return Rows((True,) if self.free else (False,))
        if text.startswith(("SELECT EXISTS", "SELECT CASE WHEN EXISTS")):
            return Rows((self.owned,))
        if "server_version_num" in text:
            return Rows((170000,))
        if "pg_advisory_unlock" in text:
            return Rows((True,))
        return Rows(None)

    def notifies(
        self, *, timeout: float | None = None, stop_after: int | None = None
    ) -> Iterator[Any]:
        return iter(())

    def ran(self, pattern: str) -> list[str]:
        return [statement for statement in self.statements if re.search(pattern, statement)]


def hold_and_run(connection: ScriptedConnection, scope: Any, *, fail: bool = False) -> None:
    with migration_lock(connection, KEY, scope=scope, timeout_seconds=5, timeouts=TIMEOUTS) as hold:
        assert hold.acquired
        connection.execute("SELECT 'the work'")
        if fail:
            raise RuntimeError("the work failed")


@pytest.mark.parametrize("scope", ["session", "transaction"])
def test_a_hold_logs_acquired_once_and_released_once(
    scope: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Why: operators count these two events to see who held the lock and for how long."""
    log.configure(log_format="json", level="INFO")
    hold_and_run(ScriptedConnection(), scope)
    names = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert names.count("lock.acquired") == 1
    assert names.count("lock.released") == 1


def test_the_holder_is_named_and_bounded_before_the_work_runs() -> None:
    """Why: waiters read "migrating since" from application_name, and the DDL timeouts
    keep a stuck statement from holding every replica's lock (the seed verb had none)."""
    connection = ScriptedConnection()
    hold_and_run(connection, "session")
    work = connection.statements.index("SELECT 'the work'")
    settings = [
        index for index, statement in enumerate(connection.statements) if "set_config" in statement
    ]
    assert settings and max(settings) < work


def test_the_holder_is_named_and_bounded_in_one_round_trip() -> None:
    """Why: a fleet worker takes a lock per tenant, and the ~11 set_config calls, one
    statement each, were a sixth of a tenant's statements. One statement sets them all
    (application_name, keepalives, the DDL timeouts, the server's own client check)."""
    connection = ScriptedConnection()
    hold_and_run(connection, "session")
    settings = connection.ran(r"set_config")
    assert len(settings) == 1
    assert "client_connection_check_interval" in settings[0]
    assert not connection.ran(r"^SELECT current_setting")


def test_the_ownership_check_and_the_settings_are_one_statement_that_sets_nothing_unowned() -> None:
    """Why: a statement of its own after the attempt (behind a pooler it may reach another
    server session); the settings ride on it, but only where the lock is held: set on a
    pooler's session they would stay there for its other clients."""
    connection = ScriptedConnection()
    hold_and_run(connection, "session")
    attempt = connection.ran(r"pg_try_advisory_lock")
    (claim,) = connection.ran(r"set_config")
    assert connection.statements.index(claim) == connection.statements.index(attempt[0]) + 1
    # The holder report treats it as one of the lock's own statements.
    assert claim.startswith("SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_locks")
    assert claim.index("pg_locks") < claim.index("THEN concat(set_config(")


def test_a_free_lock_is_taken_in_one_statement_without_listening() -> None:
    """Why: LISTEN and UNLISTEN only serve a waiter; most starts (and every fleet tenant)
    find the lock free."""
    connection = ScriptedConnection()
    hold_and_run(connection, "session")
    assert len(connection.ran(r"pg_try_advisory_lock")) == 1
    assert not connection.ran(r"LISTEN")


def test_a_taken_lock_is_listened_for_before_the_next_attempt() -> None:
    """Why: a holder that lets go between the first attempt and the LISTEN sends its
    NOTIFY before we listen: the attempt right after the LISTEN must find the lock."""
    connection = ScriptedConnection(free=False)
    with (
        pytest.raises(LockTimeout),
        migration_lock(connection, KEY, scope="session", timeout_seconds=0.05),
    ):
        pass
    first_attempts = [i for i, s in enumerate(connection.statements) if "pg_try_advisory" in s]
    listen = connection.statements.index(next(iter(connection.ran(r"^LISTEN"))))
    assert first_attempts[0] < listen < first_attempts[1] == listen + 1
    assert connection.ran(r"^UNLISTEN")


def test_the_session_lock_wakes_the_waiters_in_the_unlock_statement_after_the_work() -> None:
    """Why: one statement, and the NOTIFY is delivered when it commits, with the lock
    already free: a waiter never wakes to a lock still held."""
    connection = ScriptedConnection()
    hold_and_run(connection, "session")
    (unlock,) = connection.ran(r"pg_advisory_unlock")
    assert "pg_notify(" in unlock and not connection.ran(r"^NOTIFY")
    assert connection.statements.index(unlock) > connection.statements.index("SELECT 'the work'")


def test_a_failed_holder_unlocks_without_waking_the_waiters() -> None:
    """Why: after a failure the work is not done; waiters find out by polling."""
    connection = ScriptedConnection()
    with pytest.raises(RuntimeError):
        hold_and_run(connection, "session", fail=True)
    assert connection.ran(r"pg_advisory_unlock") and not connection.ran(r"pg_notify|NOTIFY")


def test_the_session_lock_is_released_when_the_work_fails() -> None:
    """Why: a failed revision must not leave the lock held for every later replica."""
    connection = ScriptedConnection()
    with pytest.raises(RuntimeError):
        hold_and_run(connection, "session", fail=True)
    assert connection.ran(r"pg_advisory_unlock")


def test_the_transaction_lock_commits_the_work_and_rolls_back_a_failure() -> None:
    """Why: in the transaction scope the lock ends with the transaction that did the work."""
    committed, failed = ScriptedConnection(), ScriptedConnection()
    hold_and_run(committed, "transaction")
    with pytest.raises(RuntimeError):
        hold_and_run(failed, "transaction", fail=True)
    assert committed.ran(r"^COMMIT$") and not committed.ran(r"^ROLLBACK$")
    assert failed.ran(r"^ROLLBACK$") and not failed.ran(r"^COMMIT$")


def test_a_granted_lock_that_pg_locks_does_not_show_stops_before_any_work() -> None:
    """Why: behind a pooler "granted" can mean granted to some other client's backend."""
    connection = ScriptedConnection(owned=False)
    with pytest.raises(MigrationFailed, match="pg_locks shows no lock for this session"):
        hold_and_run(connection, "session")
    assert "SELECT 'the work'" not in connection.statements


def test_a_hold_for_a_hand_over_is_silent_and_lets_go_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Why: the lean path only keeps the lock for the full path, which logs the hold."""
    log.configure(log_format="json", level="INFO")
    connection = ScriptedConnection()
    with migration_lock(
        connection, KEY, scope="session", timeout_seconds=5, announce=False
    ) as hold:
        hold.hand_over()
        hold.hand_over()
    names = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert "lock.acquired" not in names and "lock.released" not in names
    assert len(connection.ran(r"pg_advisory_unlock")) == 1
    assert not connection.ran(r"set_config")
