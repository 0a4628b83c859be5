"""Who holds the migration lock, as a waiter reports it: useful to a limited role, and quiet.

Why: "who holds the lock, since when?" is the first question of a stuck deploy. On managed
PostgreSQL the application's role has no pg_read_all_stats: another role's session shows
its user and application_name but no state, start time or query ("<insufficient
privilege>"). And a migrate-lock holder between the lock's own statements (LISTEN,
UNLISTEN, the ownership check, set_config) is no news: its migration is.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import Server

from migrate_lock.dsn import parse_database_url
from migrate_lock.lock import LockHolder, find_holder, lock_key

from support import OTHER_ROLE, assert_one_line_failure, cli_env, run_cli

#: The holder: the public ``migrate_lock.migration_lock()``, as application code uses it.
HOLDER = (
    "import sys, migrate_lock\n"
    "with migrate_lock.migration_lock() as hold:\n"
    "    print(hold.connection.info.backend_pid, flush=True)\n"
    "    sys.stdin.readline()\n"
)


@contextmanager
def holding_the_lock(url: str, project: Path) -> Iterator[int]:
    """A process of its own holds the migration lock of ``url``'s database (logged in as
    ``url``'s role) until the block ends; yields its backend pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        cwd=project,
        env=cli_env(url),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        line = holder.stdout.readline()
        assert line.strip().isdigit(), line + holder.communicate(timeout=30)[1]
        yield int(line)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def wait_briefly(project: Path, url: str) -> tuple[str, str]:
    """``upgrade`` with a 1 s lock wait: its exit-75 line and its first ``lock.waiting``."""
    result = run_cli(["upgrade"], cwd=project, database_url=url, MIGRATION_LOCK_TIMEOUT_SECONDS="1")
    line = assert_one_line_failure(result, 75)
    waiting = next(line for line in result.stderr.splitlines() if "lock.waiting" in line)
    return line, waiting


def test_a_role_without_pg_read_all_stats_still_names_the_holder(
    pg_server: Server, project: Path, database_url: str
) -> None:
    """The holder is another role's session: its state and query are hidden from ours.
    The report still says pid, user, application and since, and no "<insufficient
    privilege>" or "state unknown" noise; on the full path and on the lean one."""
    database = parse_database_url(database_url).database
    with holding_the_lock(pg_server.url(database, OTHER_ROLE), project) as pid:
        reports = [wait_briefly(project, database_url)]
        assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0
        reports.append(wait_briefly(project, database_url))  # the lean path waits
    for line, waiting in reports:
        assert f"held by pid {pid} (migrate-lock: migrating since " in line, line
        assert f"as {OTHER_ROLE} since 20" in line, line
        assert "hidden from this role (pg_read_all_stats shows them)" in line, line
        assert "insufficient privilege" not in line and "state" not in line.split(";")[0]
        assert f"holder_pid={pid}" in waiting and f"holder_user={OTHER_ROLE}" in waiting
        assert "insufficient privilege" not in waiting, waiting


def test_a_holder_between_the_locks_own_statements_is_reported_by_its_migration(
    project: Path, database_url: str
) -> None:
    """Why: waiters reported a holder as "idle" running UNLISTEN or set_config, the
    lock's own housekeeping, when it was busy migrating: report "migrating since" alone."""
    with holding_the_lock(database_url, project) as pid:
        line, waiting = wait_briefly(project, database_url)
    assert f"held by pid {pid} (migrate-lock: migrating since " in line, line
    assert "state idle" not in line and "its query" not in line, line
    assert "set_config" not in waiting and "holder_state=idle" not in waiting, waiting


class Row:
    def __init__(self, row: tuple[object, ...]) -> None:
        self.row = row

    def execute(self, query: str, params: object = None) -> Row:
        return self

    def fetchone(self) -> tuple[object, ...]:
        return self.row


def holder_with(application_name: str, state: str | None, query: str | None) -> LockHolder:
    row = (42, application_name, "10.0.0.7", "2026-12-01T10:00:00Z", state, query, "app")
    found = find_holder(Row(row), lock_key("db", "public", "alembic_version"))  # type: ignore[arg-type]
    assert found is not None
    return found


@pytest.mark.unit
@pytest.mark.parametrize(
    "statement",
    [
        "UNLISTEN migrate_lock_8a7c55f2d11e0b34",
        "LISTEN migrate_lock_8a7c55f2d11e0b34",
        "SELECT pg_try_advisory_lock($1)",
        "SELECT set_config($1, $2, $3)",
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
        "pid = pg_backend_pid() AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1)",
        "BEGIN ISOLATION LEVEL READ COMMITTED",
    ],
)
def test_the_locks_own_statements_are_not_reported_as_what_a_holder_does(statement: str) -> None:
    holder = holder_with("migrate-lock: migrating since 2026-12-01T10:00:00Z", "idle", statement)
    assert (holder.state, holder.query) == (None, None)
    assert holder.describe() == (
        "pid 42 (migrate-lock: migrating since 2026-12-01T10:00:00Z) as app from 10.0.0.7"
        " since 2026-12-01T10:00:00Z"
    )


@pytest.mark.unit
def test_what_a_holder_runs_is_reported_and_so_is_a_foreign_holders_lock_call() -> None:
    """A revision's statement is news; so is another tool's own pg_advisory_lock call."""
    migrating = holder_with("migrate-lock: migrating since T", "active", "CREATE INDEX ix ON t (a)")
    assert migrating.describe().endswith("state active; its query: CREATE INDEX ix ON t (a)")
    foreign = holder_with("psql", "idle", "SELECT pg_try_advisory_lock(1)")
    assert foreign.query == "SELECT pg_try_advisory_lock(1)"


@pytest.mark.unit
def test_a_hidden_holder_says_so_once_and_keeps_pid_user_application_and_since() -> None:
    holder = holder_with("migrate-lock: migrating since T", None, "<insufficient privilege>")
    assert holder.hidden and holder.query is None
    assert holder.describe() == (
        "pid 42 (migrate-lock: migrating since T) as app from 10.0.0.7 since T;"
        " its state and query are hidden from this role (pg_read_all_stats shows them)"
    )
    assert holder.as_fields()["holder_hidden"] is True
    assert "holder_hidden" not in holder_with("x", "active", "SELECT 1").as_fields()
