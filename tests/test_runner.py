"""Alembic runs on the locked connection, commits for real, and on nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Server

from support import APP_ROLE, assert_one_line_failure, cli_env, query, run_cli

OWN_CONNECTION_ENV = """
from alembic import context
from sqlalchemy import create_engine
import os

url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
with create_engine(url).connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""


def test_ddl_is_committed_and_visible_from_a_second_connection(
    project: Path, database_url: str
) -> None:
    """Why: the classic env.py lock recipe autobegins a transaction, Alembic treats it as
    an outer one, and the DDL is silently rolled back while the command reports success."""
    result = run_cli(["upgrade", "--json"], cwd=project, database_url=database_url)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["role"] == "migrated"
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0021",)]
    assert query(database_url, "SELECT count(*) FROM leagues") == [(11,)]
    assert query(database_url, "SELECT to_regclass('ix_t_19_name') IS NOT NULL") == [(True,)]


def test_env_py_opening_its_own_connection_is_refused_before_any_revision_runs(
    project: Path, database_url: str
) -> None:
    """Why: a second connection would migrate outside the lock, racing other replicas."""
    (project / "migrations" / "env.py").write_text(OWN_CONNECTION_ENV)

    result = run_cli(["upgrade"], cwd=project, database_url=database_url)

    line = assert_one_line_failure(result, 78)
    assert "env.py opened its own database connection" in line
    assert query(database_url, "SELECT to_regclass('alembic_version'), to_regclass('leagues')") == [
        (None, None)
    ]


def test_plain_alembic_still_works_with_the_template(project: Path, database_url: str) -> None:
    """Why: adopting migrate-lock must not break a team's `alembic` habits."""
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=project,
        env=cli_env(database_url),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0021",)]


def test_sql_flag_renders_offline_sql_without_a_database(project: Path) -> None:
    result = run_cli(["upgrade", "--sql"], cwd=project, database_url=None)

    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE leagues" in result.stdout
    assert "UPDATE alembic_version SET version_num='0021'" in result.stdout


def test_version_table_setting_moves_the_version_table_and_the_lock_key(
    project: Path, database_url: str
) -> None:
    """Why: two apps in one database keep separate version tables and separate locks."""
    default = json.loads(
        run_cli(["status", "--json"], cwd=project, database_url=database_url).stdout
    )
    result = run_cli(
        ["upgrade", "--json"],
        cwd=project,
        database_url=database_url,
        VERSION_TABLE="billing_version",
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["lock_key"] != default["lock_key"]
    assert query(database_url, "SELECT version_num FROM billing_version") == [("0021",)]
    assert query(database_url, "SELECT to_regclass('alembic_version')") == [(None,)]


def test_database_url_flag_beats_the_environment(project: Path, database_url: str) -> None:
    result = run_cli(
        ["--database-url", database_url, "upgrade"],
        cwd=project,
        database_url="postgresql://nobody:x@127.0.0.1:1/nothing",
    )
    assert result.returncode == 0, result.stderr


def test_host_less_url_connects_through_a_unix_socket(
    project: Path, database_url: str, pg_server: Server
) -> None:
    """Why: sidecar and Cloud SQL proxy set-ups give `postgresql:///db?host=/socket/dir`."""
    if pg_server.embedded is None:
        pytest.skip("needs the embedded server's socket directory")
    database = database_url.rsplit("/", 1)[1]
    server = pg_server.embedded
    socket_url = (
        f"postgresql:///{database}?host={server.data_dir}&port={server.port}&user={APP_ROLE}"
    )

    result = run_cli(["upgrade"], cwd=project, database_url=socket_url)

    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0021",)]


def test_an_env_py_without_on_version_apply_still_has_every_revision_recorded(
    project: Path, database_url: str
) -> None:
    """Why: env.py files written for pytest-alembic or by hand do not pass on_version_apply;
    the history (what tells "ahead" from "unknown"), the result's applied list and smoke's
    concurrency check then saw no revision applied."""
    env_py = project / "migrations" / "env.py"
    hook = '        on_version_apply=config.attributes.get("on_version_apply"),\n'
    assert hook in env_py.read_text()
    env_py.write_text(env_py.read_text().replace(hook, ""))

    result = run_cli(["upgrade", "--json"], cwd=project, database_url=database_url)

    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["applied"]) == 21
    assert query(database_url, "SELECT count(*) FROM migrate_lock.history") == [(21,)]
