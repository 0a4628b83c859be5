"""The lock key and the waiters' polling: what every replica must agree on, and how it waits."""

from __future__ import annotations

import io
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrate_lock import lock
from migrate_lock.errors import ExitCode, LockTimeout
from migrate_lock.lock import (
    FIRST_POLL_SECONDS,
    MAX_POLL_SECONDS,
    MAX_POLL_SECONDS_WITHOUT_NOTIFY,
    clear_lock_query,
    lock_key,
)
from migrate_lock.logs import log

from .fakes import Cursor

pytestmark = pytest.mark.unit

identifiers = st.text(min_size=1, max_size=30)
keys = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def test_the_key_is_stable_across_releases() -> None:
    """Old and new replicas of a rolling deploy must wait on the same key, or both migrate."""
    assert lock_key("app", "public", "alembic_version") == -8226918976666879449


@given(database=identifiers, schema=identifiers, table=identifiers)
def test_the_key_is_a_signed_64_bit_integer(database: str, schema: str, table: str) -> None:
    """pg_try_advisory_lock(bigint) rejects anything outside the signed 64-bit range."""
    assert -(2**63) <= lock_key(database, schema, table) < 2**63


@pytest.mark.parametrize(
    "other",
    [
        ("other_app", "public", "alembic_version"),
        ("app", "tenant", "alembic_version"),
        ("app", "public", "alembic_version_billing"),
    ],
)
def test_the_key_differs_per_database_schema_and_version_table(
    other: tuple[str, str, str],
) -> None:
    """Applications sharing a cluster or a database must never wait for each other."""
    assert lock_key(*other) != lock_key("app", "public", "alembic_version")


def test_the_key_does_not_confuse_where_one_name_ends_and_the_next_begins() -> None:
    """Database "ab" with schema "c" is another application than "a" with schema "bc"."""
    assert lock_key("ab", "c", "t") != lock_key("a", "bc", "t")


@given(key=keys)
def test_the_split_halves_rebuild_the_key(key: int) -> None:
    """pg_locks shows the key as two 32-bit oids; the holder lookup must match them exactly."""
    high, low = lock._split(key)

    assert 0 <= high < 2**32 and 0 <= low < 2**32
    assert int.from_bytes(((high << 32) | low).to_bytes(8, "big"), "big", signed=True) == key


@given(key=keys)
def test_the_clear_query_names_the_split_halves(key: int) -> None:
    """The query an operator pastes to clear a stuck lock must target exactly this key."""
    high, low = lock._split(key)

    assert f"classid = {high} AND objid = {low} AND objsubid = 1" in clear_lock_query(key)


@given(key=keys)
def test_the_notify_channel_is_a_plain_identifier_per_key(key: int) -> None:
    """LISTEN/NOTIFY take an unquoted identifier of at most 63 bytes; keys must not share one."""
    channel = lock._channel(key)

    assert re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", channel)
    assert lock._channel(key ^ 1) != channel


# The polling loop, driven by a fake clock: sleeping advances it, each attempt costs a
# round trip, and the connection answers the holder lookup.


@dataclass
class Clock:
    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass
class HolderLookup:
    """A connection whose only query is the holder lookup (pg_locks joined to activity)."""

    holder: tuple[object, ...] | None = None
    lookups: int = 0

    def execute(self, query: str, params: object = None) -> Cursor:
        self.lookups += 1
        return Cursor(self.holder)


ROUND_TRIP = 0.005


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(lock, "time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep))
    monkeypatch.setattr(log, "stream", io.StringIO())
    monkeypatch.setattr(log, "format", "text")
    yield fake


def poll(
    clock: Clock,
    connection: HolderLookup,
    *,
    timeout: float = 60.0,
    free_at_attempt: int = 0,
    done_at_attempt: int = 0,
    longest_pause: float = MAX_POLL_SECONDS,
) -> tuple[bool, float, int]:
    """Run the waiters' loop: the lock frees up at one attempt, or the work is done at one."""
    attempts = 0

    def attempt() -> bool:
        nonlocal attempts
        attempts += 1
        clock.now += ROUND_TRIP
        return attempts == free_at_attempt

    def work_is_done() -> bool:
        return attempts + 1 == done_at_attempt

    acquired, waited, tried = lock._poll(
        connection,  # type: ignore[arg-type]
        key=42,
        timeout_seconds=timeout,
        work_is_done=work_is_done,
        attempt=attempt,
        sleep=clock.sleep,
        longest_pause=longest_pause,
    )
    return acquired, waited, tried


def backoff(longest: float, count: int) -> list[float]:
    pauses, pause = [], FIRST_POLL_SECONDS
    for _ in range(count):
        pauses.append(pause)
        pause = min(pause * 1.6, longest)
    return pauses


@pytest.mark.parametrize("longest", [MAX_POLL_SECONDS, MAX_POLL_SECONDS_WITHOUT_NOTIFY])
def test_the_pause_grows_by_1_6_up_to_the_cap(
    clock: Clock, monkeypatch: pytest.MonkeyPatch, longest: float
) -> None:
    """Fast hand-offs at first, then no more than one query per second (or 4 without NOTIFY)."""
    monkeypatch.setattr(lock, "random", SimpleNamespace(uniform=lambda _low, high: high))

    poll(clock, HolderLookup(), free_at_attempt=15, longest_pause=longest)

    assert clock.slept == pytest.approx(backoff(longest, 14))
    assert clock.slept[-1] == longest


@given(jitter=st.randoms(use_true_random=False))
def test_each_pause_is_jittered_between_half_and_all_of_the_backoff(
    jitter: random.Random,
) -> None:
    """Replicas started together must not poll in lockstep, nor wait longer than the backoff."""
    fake = Clock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lock, "time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep))
        patch.setattr(lock, "random", jitter)
        patch.setattr(log, "stream", io.StringIO())
        poll(fake, HolderLookup(), free_at_attempt=12)

    for slept, pause in zip(fake.slept, backoff(MAX_POLL_SECONDS, 11), strict=True):
        assert pause / 2 <= slept <= pause


def test_the_lock_is_reported_acquired_on_the_attempt_that_got_it(clock: Clock) -> None:
    """``lock.acquired`` reports attempts and wait; operators size timeouts from them."""
    started = clock.now

    acquired, waited, attempts = poll(clock, HolderLookup(), free_at_attempt=4)

    assert (acquired, attempts) == (True, 4)
    assert waited == pytest.approx(clock.now - started)


def test_work_done_elsewhere_ends_the_wait_without_the_lock(clock: Clock) -> None:
    """When another replica migrated, waiters carry on at once, not take the lock in turn."""
    acquired, _, attempts = poll(clock, HolderLookup(), done_at_attempt=3)

    assert (acquired, attempts) == (False, 2)


def test_the_wait_gives_up_at_the_deadline_with_lock_timeout(clock: Clock) -> None:
    """A stuck holder must end in exit 75 on time, not after one more long pause."""
    started = clock.now

    with pytest.raises(LockTimeout) as raised:
        poll(clock, HolderLookup(), timeout=3.0)

    assert raised.value.exit_code == ExitCode.TEMPORARY
    assert 3.0 <= clock.now - started <= 3.0 + ROUND_TRIP
    assert str(raised.value).startswith(
        "gave up waiting for the migration lock after 3s; held by a session this role cannot see"
    )
    assert "pg_terminate_backend(PID)" in str(raised.value)


def test_the_timeout_names_the_holder_and_since_when(clock: Clock) -> None:
    """The operator needs who to look at (pid, host, since) and the exact query to end it."""
    holder = HolderLookup(
        holder=(
            4242,
            "migrate-lock: migrating since 2026-12-01T10:00:00Z",
            "10.0.0.7",
            None,
            "active",
            "ALTER TABLE big ADD COLUMN x int",
            "app",
        )
    )

    with pytest.raises(LockTimeout) as raised:
        poll(clock, holder, timeout=2.0)

    message = str(raised.value)
    assert "held by pid 4242 (migrate-lock: migrating since 2026-12-01T10:00:00Z)" in message
    assert "from 10.0.0.7 since 2026-12-01T10:00:00Z, state active" in message
    assert "its query: ALTER TABLE big ADD COLUMN x int" in message
    assert "SELECT pg_terminate_backend(4242)" in message


def test_the_holder_is_reported_every_five_seconds_while_waiting(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lock.waiting`` lines show progress without flooding the log (one per 5 s)."""
    stream = io.StringIO()
    monkeypatch.setattr(log, "stream", stream)

    with pytest.raises(LockTimeout):
        poll(clock, HolderLookup(), timeout=12.0)

    waiting = [line for line in stream.getvalue().splitlines() if "lock.waiting" in line]
    assert len(waiting) == 3
    assert f"waited_ms={round(ROUND_TRIP * 1000)} " in waiting[0]  # after the first attempt
