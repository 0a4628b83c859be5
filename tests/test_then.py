"""The bootstrap step under the lock: ``run --then CMD -- SERVER`` (issue 15, item 1).

Real PostgreSQL, real ``migrate-lock`` processes. The step (``create_admin.py``) proves
it ran under the lock itself: ``pg_try_advisory_lock`` on the migration lock's key fails
from its own connection, because the migrate-lock process that started it holds it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import migrate_lock
from migrate_lock.dsn import parse_database_url
from migrate_lock.errors import ThenFailed
from migrate_lock.lock import lock_key
from migrate_lock.scaffold import init_project

from support import TEST_PASSWORD, assert_one_line_failure, query, run_cli, spawn

#: The advisory locks held in the test's database (none once every replica is done).
ADVISORY_LOCKS = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
#: Replicas started at once on an empty database (the issue's number).
REPLICAS = 16

_ADMIN_REVISION = '''"""admins and the step's own log"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE admins (id serial PRIMARY KEY, email text NOT NULL UNIQUE)")
    op.execute(
        "CREATE TABLE step_log (release text NOT NULL, under_lock boolean NOT NULL,"
        " at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )


def downgrade() -> None:
    op.execute("DROP TABLE step_log")
    op.execute("DROP TABLE admins")
'''

#: The application's bootstrap code: check, then insert (the race a bare
#: ``sh -c 'python create_admin.py && exec server'`` loses with a UniqueViolation).
_CREATE_ADMIN = """
import os, sys
import psycopg

release = sys.argv[1] if len(sys.argv) > 1 else "1"
key = int(os.environ["TEST_LOCK_KEY"])
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as connection:
    free = connection.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
    if free:
        connection.execute("SELECT pg_advisory_unlock(%s)", (key,))
    connection.execute(
        "INSERT INTO step_log (release, under_lock) VALUES (%s, %s)", (release, not free)
    )
    admin = connection.execute("SELECT 1 FROM admins WHERE email = 'admin@example.com'")
    if admin.fetchone() is None:
        connection.execute("INSERT INTO admins (email) VALUES ('admin@example.com')")
print("admin ready", release)
"""

#: The server: it starts only once the admin exists (then exits 0, as a test server may).
_SERVER = """
import os
import psycopg

with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as connection:
    count = connection.execute("SELECT count(*) FROM admins").fetchone()[0]
print("serving with", count, "admin")
raise SystemExit(0 if count == 1 else 9)
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A ``migrate-lock init`` project with an ``admins`` table and its bootstrap code."""
    path = tmp_path / "app"
    init_project(path)
    (path / "migrations" / "versions" / "0002_admins.py").write_text(_ADMIN_REVISION)
    (path / "create_admin.py").write_text(_CREATE_ADMIN)
    (path / "server.py").write_text(_SERVER)
    return path


@pytest.fixture
def key(database_url: str) -> str:
    """The migration lock's key as migrate-lock derives it (no MIGRATION_LOCK_KEY set)."""
    name = parse_database_url(database_url).database
    return str(lock_key(name, "public", "alembic_version"))


def _start(app: Path, database_url: str, key: str, then: str, count: int) -> list[tuple[int, str]]:
    python = sys.executable
    processes = [
        spawn(
            ["run", "--then", then, "--", python, "server.py"],
            cwd=app,
            database_url=database_url,
            TEST_LOCK_KEY=key,
        )
        for _ in range(count)
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        results.append((process.returncode, stdout + stderr))
    return results


def _step_runs(database_url: str) -> list[tuple[object, ...]]:
    return query(database_url, "SELECT release, under_lock FROM step_log ORDER BY at")


@pytest.mark.slow
def test_sixteen_replicas_run_the_step_once_under_the_lock_and_all_serve(
    app: Path, database_url: str, key: str
) -> None:
    """Why: ``sh -c 'python initial_data.py && exec server'`` crashed 7 of 8 replicas with a
    UniqueViolation; under the lock the step runs once, before any replica serves, and a
    later release that changes the command runs it once more."""
    # As a Dockerfile does: the replicas that find the step done stay on the lean path.
    assert run_cli(["freeze"], cwd=app, database_url=None).returncode == 0
    python = sys.executable
    results = _start(app, database_url, key, f"{python} create_admin.py", REPLICAS)

    outputs = "\n".join(output for _, output in results)
    assert [code for code, _ in results] == [0] * REPLICAS, outputs
    assert all("serving with 1 admin" in output for _, output in results), outputs
    assert _step_runs(database_url) == [("1", True)]
    assert query(database_url, "SELECT email FROM admins") == [("admin@example.com",)]
    assert outputs.count("admin ready 1") == 1
    assert query(database_url, ADVISORY_LOCKS) == [(0,)]

    # A later release changes the command: it runs once more, whichever replica gets it.
    again = _start(app, database_url, key, f"{python} create_admin.py 2", 4)
    assert [code for code, _ in again] == [0] * 4, "\n".join(o for _, o in again)
    assert _step_runs(database_url) == [("1", True), ("2", True)]

    # The same release restarting: nothing to do, the step is not run again.
    same = _start(app, database_url, key, f"{python} create_admin.py 2", 2)
    assert [code for code, _ in same] == [0] * 2, "\n".join(o for _, o in same)
    assert len(_step_runs(database_url)) == 2


def test_a_failing_step_exits_1_with_its_stderr_and_the_next_start_runs_it_again(
    app: Path, database_url: str, key: str
) -> None:
    """Why: a failed bootstrap must fail the start like a failed revision (exit 1, the
    command's own words, no secret), and must not be recorded as done: a retry runs it."""
    failing = (
        "echo 'creating the admin' && echo \"cannot reach $DATABASE_URL\" >&2 && "
        "echo 'boom: ADMIN_PASSWORD is not set' >&2 && exit 3"
    )
    result = run_cli(
        ["run", "--then", failing, "--", sys.executable, "server.py"],
        cwd=app,
        database_url=database_url,
        TEST_LOCK_KEY=key,
    )

    line = assert_one_line_failure(result, 1)
    assert "failed with exit 3" in line
    assert "boom: ADMIN_PASSWORD is not set" in line
    assert "serving" not in result.stdout + result.stderr
    assert TEST_PASSWORD not in result.stdout + result.stderr
    # The revisions stay applied; the step's run is not recorded.
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0002",)]
    assert query(database_url, "SELECT to_regclass('migrate_lock.then_runs')") == [(None,)]

    # Nothing to migrate now, but the step never succeeded: the retry runs it.
    retry = run_cli(
        ["run", "--then", f"{sys.executable} create_admin.py", "--", sys.executable, "server.py"],
        cwd=app,
        database_url=database_url,
        TEST_LOCK_KEY=key,
    )
    assert retry.returncode == 0, retry.stderr
    assert "serving with 1 admin" in retry.stdout
    assert _step_runs(database_url) == [("1", True)]


def test_at_head_with_a_heads_manifest_a_new_step_is_not_skipped(
    app: Path, database_url: str, key: str
) -> None:
    """Why: the lean at-head path answers most starts without the lock; it must not answer
    "nothing to do" while the step is due, nor run it again once it is recorded."""
    assert run_cli(["upgrade"], cwd=app, database_url=database_url).returncode == 0
    frozen = run_cli(["freeze"], cwd=app, database_url=database_url)
    assert frozen.returncode == 0, frozen.stderr
    step = f"{sys.executable} create_admin.py"

    first = run_cli(
        ["upgrade", "--json"],
        cwd=app,
        database_url=database_url,
        TEST_LOCK_KEY=key,
        MIGRATE_THEN=step,
    )
    second = run_cli(
        ["upgrade", "--json"],
        cwd=app,
        database_url=database_url,
        TEST_LOCK_KEY=key,
        MIGRATE_THEN=step,
    )

    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["then"] == "never_ran"  # stdout: the document only
    assert "admin ready 1" in first.stderr
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["role"] == "fast_path"
    assert json.loads(second.stdout)["then"] is None
    assert _step_runs(database_url) == [("1", True)]


def test_a_declared_file_that_changes_runs_the_step_again_and_always_runs_it_each_time(
    app: Path, database_url: str, key: str
) -> None:
    """Why: the step's own script changing (MIGRATE_THEN_FILES) is a new release of it;
    MIGRATE_THEN_ALWAYS runs it on every start."""

    def upgrade(always: str = "false") -> None:
        result = run_cli(
            ["upgrade"],
            cwd=app,
            database_url=database_url,
            MIGRATE_THEN=f"{sys.executable} create_admin.py",
            MIGRATE_THEN_FILES="create_admin.py",
            MIGRATE_THEN_ALWAYS=always,
            TEST_LOCK_KEY=key,
        )
        assert result.returncode == 0, result.stderr

    upgrade()
    upgrade()
    assert len(_step_runs(database_url)) == 1
    with (app / "create_admin.py").open("a") as script:
        script.write("# a new release of the script\n")
    upgrade()
    assert len(_step_runs(database_url)) == 2
    upgrade(always="true")
    assert len(_step_runs(database_url)) == 3


def test_the_transaction_lock_scope_refuses_the_step(app: Path, database_url: str) -> None:
    """Why: in the transaction scope the step's own connection cannot see the schema
    before the commit that ends the lock: refused before anything runs (exit 78)."""
    result = run_cli(
        ["upgrade", "--then", "true"],
        cwd=app,
        database_url=database_url,
        MIGRATION_LOCK_SCOPE="transaction",
    )

    line = assert_one_line_failure(result, 78)
    assert "transaction lock scope" in line
    assert query(database_url, "SELECT to_regclass('public.alembic_version')") == [(None,)]


@pytest.fixture
def in_app(app: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(app)
    for variable in ("MIGRATION_DATABASE_URL", "MIGRATE_THEN", "ENVIRONMENT", "APP_ENV"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ENVIRONMENT", "test")
    yield app


def test_upgrade_then_calls_a_function_under_the_lock(
    in_app: Path, database_url: str, key: str
) -> None:
    """Why: Python callers have their bootstrap as a function; it runs holding the same
    lock, once per change, and its exception is the application's failure (exit 1)."""
    seen: list[bool] = []

    def create_admin() -> None:
        with psycopg.connect(database_url, autocommit=True) as connection:
            row = connection.execute("SELECT pg_try_advisory_lock(%s)", (int(key),)).fetchone()
            seen.append(not (row and row[0]))

    def broken() -> None:
        raise RuntimeError(f"no admin password for {database_url}")

    first = migrate_lock.upgrade(then=create_admin)
    second = migrate_lock.upgrade(then=create_admin)
    with pytest.raises(ThenFailed) as failed:
        migrate_lock.upgrade(then=broken)

    assert (first.role, first.then) == ("migrated", "migrated")
    assert second.then is None
    assert seen == [True]
    assert failed.value.exit_code == 1
    assert "broken() (run holding the migration lock) raised RuntimeError" in str(failed.value)
    assert TEST_PASSWORD not in str(failed.value)


def test_sigterm_during_the_step_stops_it_and_records_nothing(app: Path, database_url: str) -> None:
    """Why: a stopped container must not leave its bootstrap running without the lock
    (another replica would start it again beside it), nor count it as done."""
    step = "echo $$ > step.pid; exec sleep 60"
    replica = spawn(["upgrade", "--then", step], cwd=app, database_url=database_url)
    pid_file = app / "step.pid"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert replica.poll() is None and time.monotonic() < deadline, replica.communicate()
        time.sleep(0.05)
    step_pid = int(pid_file.read_text())

    replica.send_signal(signal.SIGTERM)
    _, stderr = replica.communicate(timeout=30)

    assert replica.returncode == 143, stderr
    with pytest.raises(ProcessLookupError):
        os.kill(step_pid, 0)
    assert query(database_url, "SELECT to_regclass('migrate_lock.then_runs')") == [(None,)]
    assert query(database_url, ADVISORY_LOCKS) == [(0,)]
