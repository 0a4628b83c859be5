"""Waiting for the lock: bounded, polite, and saying who is in the way."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from migrate_lock.lock import holder_application_name, lock_key

from support import assert_one_line_failure, cli_env, query, run_cli


def hold_lock(database_url: str) -> psycopg.Connection[tuple[object, ...]]:
    holder = psycopg.connect(database_url, autocommit=True)
    holder.execute("SELECT set_config('application_name', %s, false)", (holder_application_name(),))
    holder.execute(
        "SELECT pg_advisory_lock(%s)", (lock_key(holder.info.dbname, "public", "alembic_version"),)
    )
    return holder


def test_lock_timeout_exits_75_within_seconds_naming_the_holder(
    project: Path, database_url: str
) -> None:
    """Why: a replica must not hang forever behind a stuck migrator, and on-call needs
    to know which session to look at."""
    with hold_lock(database_url) as holder:
        started = time.monotonic()
        result = run_cli(
            ["upgrade"],
            cwd=project,
            database_url=database_url,
            MIGRATION_LOCK_TIMEOUT_SECONDS="2",
        )
        elapsed = time.monotonic() - started
        holder_pid = holder.info.backend_pid

    line = assert_one_line_failure(result, 75)
    assert elapsed < 10  # 2 s of waiting plus process start-up on a busy 2-core machine
    assert f"pid {holder_pid}" in line
    assert "migrate-lock: migrating since" in line
    assert "MIGRATION_LOCK_TIMEOUT_SECONDS" in line


def test_waiter_logs_the_holder_while_waiting(project: Path, database_url: str) -> None:
    """Why: "who holds the lock?" is the first question during a slow deploy."""
    with hold_lock(database_url) as holder:
        result = run_cli(
            ["upgrade"],
            cwd=project,
            database_url=database_url,
            MIGRATION_LOCK_TIMEOUT_SECONDS="1",
            LOG_FORMAT="json",
        )
        holder_pid = holder.info.backend_pid
    events = [json.loads(line) for line in result.stderr.splitlines()]
    waiting = [event for event in events if event["event"] == "lock.waiting"]
    assert waiting and waiting[0]["holder_pid"] == holder_pid
    assert waiting[0]["holder_application_name"].startswith("migrate-lock: migrating since")
    assert events[-1]["event"] == "command.failed" and events[-1]["exit_code"] == 75


def test_waiter_never_queues_inside_the_server(project: Path, database_url: str) -> None:
    """Why: a blocking pg_advisory_lock waiter can deadlock CREATE INDEX CONCURRENTLY;
    ours polls, so pg_locks never shows it as an ungranted waiter."""
    import subprocess
    import sys

    from support import cli_env

    with hold_lock(database_url):
        waiter = subprocess.Popen(
            [sys.executable, "-m", "migrate_lock", "upgrade"],
            cwd=project,
            env=cli_env(database_url, MIGRATION_LOCK_TIMEOUT_SECONDS="3"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ungranted = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            ungranted += query(
                database_url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            time.sleep(0.05)
        waiter.wait(timeout=30)
    assert ungranted == []
    assert waiter.returncode == 75


@pytest.mark.usefixtures("at_head")
def test_waiter_continues_without_the_lock_once_another_replica_reached_head(
    project: Path, database_url: str
) -> None:
    """Why: when the holder finishes, waiters must not each take the lock in turn."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0020'")
    with hold_lock(database_url):
        import subprocess
        import sys

        from support import cli_env

        waiter = subprocess.Popen(
            [sys.executable, "-m", "migrate_lock", "upgrade", "--json"],
            cwd=project,
            env=cli_env(database_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert waiter.stderr is not None
        seen = [waiter.stderr.readline()]
        while "lock.waiting" not in seen[-1] and seen[-1]:
            seen.append(waiter.stderr.readline())
        # Another replica "finishes" while we still hold the lock.
        with psycopg.connect(database_url, autocommit=True) as connection:
            connection.execute("UPDATE alembic_version SET version_num = '0021'")
        stdout, rest = waiter.communicate(timeout=30)
        stderr = "".join(seen) + rest
    assert waiter.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["role"] == "waited"
    assert result["applied"] == []


def test_lock_key_differs_per_database_schema_and_version_table() -> None:
    """Why: two apps sharing a cluster must not block each other."""
    keys = {
        lock_key("app", "public", "alembic_version"),
        lock_key("other", "public", "alembic_version"),
        lock_key("app", "billing", "alembic_version"),
        lock_key("app", "public", "billing_version"),
    }
    assert len(keys) == 4
    assert all(-(2**63) <= key < 2**63 for key in keys)


def test_lock_key_setting_overrides_the_derived_key(project: Path, database_url: str) -> None:
    """Why: teams migrating from a hand-rolled recipe must keep its constant key."""
    result = run_cli(
        ["status", "--json"], cwd=project, database_url=database_url, MIGRATION_LOCK_KEY="4242"
    )
    assert json.loads(result.stdout)["lock_key"] == 4242


@pytest.mark.parametrize("value", ["abc", "1e30", "9223372036854775808"])
def test_lock_key_setting_must_be_a_signed_64_bit_integer(
    project: Path, database_url: str, value: str
) -> None:
    result = run_cli(["upgrade"], cwd=project, database_url=database_url, MIGRATION_LOCK_KEY=value)
    line = assert_one_line_failure(result, 78)
    assert "MIGRATION_LOCK_KEY" in line


def test_application_code_under_migration_lock_holds_off_every_upgrade(
    project: Path, database_url: str
) -> None:
    """Why: bootstrap code (a first admin user, computed defaults) must not run beside a
    migration; migrate_lock.migration_lock() is the same lock every replica's upgrade takes."""
    program = (
        "import sys, migrate_lock\n"
        "with migrate_lock.migration_lock() as hold:\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", program],
        cwd=project,
        env=cli_env(database_url),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        waiting = run_cli(
            ["upgrade"], cwd=project, database_url=database_url, MIGRATION_LOCK_TIMEOUT_SECONDS="1"
        )
        line = assert_one_line_failure(waiting, 75)
        assert "migrating since" in line
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0, holder.stderr
    assert run_cli(["upgrade"], cwd=project, database_url=database_url).returncode == 0
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0021",)]
