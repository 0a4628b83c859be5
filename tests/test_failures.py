"""When a migration fails or its process dies, nothing is half-applied."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrate_lock.sandbox.example import write_example_project

from support import (
    assert_one_line_failure,
    cli_env,
    query,
    run_cli,
    spawn,
    wait_for_a_sleeping_revision,
)

FAILING_REVISION = '''"""break on purpose"""

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE half_done (id int)")
    op.execute("SELECT * FROM no_such_table")


def downgrade() -> None:
    pass
'''


def test_failing_revision_exits_1_naming_revision_and_sql_error_and_rolls_back(
    project: Path, database_url: str
) -> None:
    """Why: on-call must see which revision broke and why, and find the database as it was."""
    (project / "migrations" / "versions" / "0022_broken.py").write_text(FAILING_REVISION)

    result = run_cli(["upgrade"], cwd=project, database_url=database_url)

    line = assert_one_line_failure(result, 1)
    assert "revision 0022 (break on purpose)" in line
    assert "42P01" in line and 'relation "no_such_table" does not exist' in line
    assert "rolled back" in line
    assert query(database_url, "SELECT to_regclass('half_done'), to_regclass('t_3')") == [
        (None, None)
    ]
    assert query(database_url, "SELECT to_regclass('alembic_version')") == [(None,)]


def test_sigkill_in_the_middle_of_a_revision_leaves_nothing_half_applied(
    tmp_path: Path, database_url: str
) -> None:
    """Why: a node can die at any moment; the lock and the transaction must die with it,
    and the next replica must finish the job."""
    project = tmp_path / "project"
    write_example_project(project, 21, slow_revision=12, slow_seconds=3)
    migrator = spawn(["upgrade"], cwd=project, database_url=database_url)
    assert migrator.stderr is not None
    for line in migrator.stderr:
        if "migrate.revision revision=0011" in line:
            break
    wait_for_a_sleeping_revision(database_url)  # inside revision 0012, after its CREATE TABLE
    migrator.send_signal(signal.SIGKILL)
    migrator.wait(timeout=10)

    assert query(database_url, "SELECT to_regclass('alembic_version'), to_regclass('t_11')") == [
        (None, None)
    ]
    result = run_cli(["upgrade"], cwd=project, database_url=database_url)
    assert result.returncode == 0, result.stderr
    counts = query(database_url, "SELECT revision, count(*) FROM migration_log GROUP BY 1")
    assert len(counts) == 20 and {count for _, count in counts} == {1}


KILLED_RIGHT_AFTER_ALEMBIC_COMMITS = """
import os, signal, sys
from migrate_lock import cli, runner

alembic_upgrade = runner.run_upgrade

def upgrade_then_die(*args, **kwargs):
    alembic_upgrade(*args, **kwargs)  # Alembic has committed when this returns
    os.kill(os.getpid(), signal.SIGKILL)

runner.run_upgrade = upgrade_then_die
sys.argv = ["migrate-lock", "upgrade"]
cli.main()
"""


@pytest.mark.parametrize("per_migration", [False, True], ids=["one-transaction", "per-migration"])
def test_a_kill_just_after_the_commit_leaves_history_and_marker_with_the_revisions(
    project: Path, database_url: str, per_migration: bool
) -> None:
    """Why: a database at head without its environment marker counts as production, and
    the next start (at head, lock-free) would never write it."""
    if per_migration:
        env = project / "migrations" / "env.py"
        text = env.read_text().replace(
            "        connection=connection,\n",
            "        connection=connection,\n        transaction_per_migration=True,\n",
        )
        env.write_text(text)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RIGHT_AFTER_ALEMBIC_COMMITS],
        cwd=project,
        env=cli_env(database_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0021",)]
    history = query(database_url, "SELECT revision FROM migrate_lock.history ORDER BY 1")
    assert [revision for (revision,) in history] == [f"{n:04d}" for n in range(1, 22)]
    assert query(database_url, "SELECT environment FROM migrate_lock.environment") == [("test",)]


def test_unknown_target_revision_is_a_usage_error(project: Path, database_url: str) -> None:
    result = run_cli(["upgrade", "9999"], cwd=project, database_url=database_url)
    line = assert_one_line_failure(result, 2)
    assert "unknown target revision '9999'" in line


def test_several_heads_when_one_is_expected_is_a_usage_error(
    project: Path, database_url: str
) -> None:
    """Why: two heads are usually an unmerged branch; `head` must not guess."""
    branch = FAILING_REVISION.replace('"0022"', '"0022b"').replace('"0021"', '"0020"')
    (project / "migrations" / "versions" / "0022b_branch.py").write_text(branch)
    result = run_cli(["upgrade", "head"], cwd=project, database_url=database_url)
    line = assert_one_line_failure(result, 2)
    assert "several heads (0021, 0022b)" in line
    assert "alembic merge heads" in line


def test_missing_alembic_ini_is_a_configuration_error(tmp_path: Path, database_url: str) -> None:
    result = run_cli(["upgrade"], cwd=tmp_path, database_url=database_url)
    line = assert_one_line_failure(result, 78)
    assert "Alembic config not found: alembic.ini" in line
    assert "migrate-lock init" in line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:{pw}@db:notaport/app", "DATABASE_URL is malformed"),
        ("mysql://root:{pw}@localhost/app", "DATABASE_URL must be a PostgreSQL URL"),
        ("just-a-hostname", "DATABASE_URL is not a URL"),
        ("postgresql://app:{pw}@db/app?sslmode=sometimes", "DATABASE_URL is malformed"),
        ("postgresql://app:{pw}@db/app?notanoption=1", "DATABASE_URL is malformed"),
        ("postgresql://app:{pw}@db:99999/app", "DATABASE_URL is malformed"),
        ("POSTGRESQL://app:{pw}@db/app?notanoption=1", "DATABASE_URL is malformed"),
    ],
)
def test_bad_database_url_is_a_configuration_error_that_never_prints_the_password(
    project: Path, url: str, expected: str
) -> None:
    from support import TEST_PASSWORD

    result = run_cli(["upgrade"], cwd=project, database_url=url.format(pw=TEST_PASSWORD))
    line = assert_one_line_failure(result, 78)
    assert expected in line


def test_missing_database_url_is_a_configuration_error(project: Path) -> None:
    result = run_cli(["upgrade"], cwd=project, database_url=None)
    line = assert_one_line_failure(result, 78)
    assert "DATABASE_URL is not set" in line


def test_wrong_password_fails_at_once_as_a_configuration_error(
    project: Path, database_url: str
) -> None:
    """Why: retrying a wrong password only delays the page to on-call."""
    from support import TEST_PASSWORD

    wrong = database_url.replace(TEST_PASSWORD, "not-the-password")
    started = time.monotonic()
    result = run_cli(["upgrade"], cwd=project, database_url=wrong)
    line = assert_one_line_failure(result, 78)
    assert time.monotonic() - started < 10
    assert "password authentication failed" in line
    assert "not-the-password" not in result.stderr


def test_unknown_database_fails_at_once_as_a_configuration_error(
    project: Path, database_url: str
) -> None:
    result = run_cli(
        ["upgrade"], cwd=project, database_url=database_url.rsplit("/", 1)[0] + "/no_such_db"
    )
    line = assert_one_line_failure(result, 78)
    assert 'database "no_such_db" does not exist' in line


def test_unreachable_host_is_retried_then_exits_75(project: Path) -> None:
    """Why: a database that is still starting is normal in a deploy; retry, then say so."""
    from support import TEST_PASSWORD

    started = time.monotonic()
    result = run_cli(
        ["upgrade"],
        cwd=project,
        database_url=f"postgresql://app:{TEST_PASSWORD}@127.0.0.1:1/app",
        DB_CONNECT_TIMEOUT_SECONDS="2",
        LOG_FORMAT="text",
    )
    elapsed = time.monotonic() - started
    line = assert_one_line_failure(result, 75)
    assert 2 <= elapsed < 15
    assert "database unreachable at postgresql://app:***@127.0.0.1:1/app" in line
    assert "db.retry" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MIGRATION_LOCK_TIMEOUT_SECONDS", "soon"),
        ("MIGRATION_LOCK_TIMEOUT_SECONDS", "-1"),
        ("DB_CONNECT_TIMEOUT_SECONDS", "ten"),
        ("DDL_LOCK_TIMEOUT", "a while"),
        ("ENVIRONMENT", "preview"),  # prod is an alias of production
        ("LOG_LEVEL", "loud"),
        ("VERSION_TABLE", "bad name;"),
    ],
)
def test_invalid_setting_exits_78_naming_the_variable(
    project: Path, database_url: str, variable: str, value: str
) -> None:
    result = run_cli(["upgrade"], cwd=project, database_url=database_url, **{variable: value})
    line = assert_one_line_failure(result, 78)
    assert f"{variable} is invalid" in line
