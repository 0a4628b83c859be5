"""Helpers the tests share: run ``migrate-lock`` as a real process, query a second connection."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psycopg
from alembic.config import Config
from alembic.script import ScriptDirectory

from migrate_lock.lean.static_revisions import StaticRevisions

#: The embedded server's password. Tests assert it never appears in any output.
TEST_PASSWORD = "Pw4Tests-e7Qk2"
#: The suite's application role: LOGIN CREATEDB, owner of its databases, not a superuser.
APP_ROLE = "migrate_lock_app"
#: A database owner that may not CREATE DATABASE (what restore refuses to run as).
OWNER_WITHOUT_CREATEDB = "migrate_lock_nocreatedb"
#: Another application's role: its sessions are not ours to close.
OTHER_ROLE = "migrate_lock_other"


def cli_env(database_url: str | None, **extra: str) -> dict[str, str]:
    """The environment a replica gets: ours, minus stray settings, plus these."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            "DATABASE_URL",
            "DATABASE_URL_FILE",
            "MIGRATION_DATABASE_URL",
            "ENVIRONMENT",
            "MIGRATE_LOCK_ENVIRONMENT",
            "APP_ENV",
            "ENV_FILE",
        }
        and not key.startswith(("MIGRATION_", "DDL_", "DB_", "LOG_"))
    }
    env.update({"ENVIRONMENT": "test", "LOG_FORMAT": "text", "PYTHONUNBUFFERED": "1"})
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


class Replica(subprocess.Popen[str]):
    """A ``migrate-lock`` process whose output is checked for the password when read."""

    def communicate(
        self, input: str | None = None, timeout: float | None = None
    ) -> tuple[str, str]:
        stdout, stderr = super().communicate(input, timeout)
        assert_no_secret(stdout or "", stderr or "")
        return stdout, stderr


def assert_no_secret(*outputs: str) -> None:
    """Every process output of the suite passes here: the password never appears."""
    for output in outputs:
        assert TEST_PASSWORD not in output, output


def spawn(
    args: list[str], *, cwd: Path, database_url: str | None, **extra: str
) -> subprocess.Popen[str]:
    """Start ``migrate-lock ARGS`` as a real process."""
    return Replica(
        [sys.executable, "-m", "migrate_lock", *args],
        cwd=cwd,
        env=cli_env(database_url, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(
    args: list[str], *, cwd: Path, database_url: str | None, timeout: float = 120, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run ``migrate-lock ARGS`` to completion."""
    result = subprocess.run(
        [sys.executable, "-m", "migrate_lock", *args],
        cwd=cwd,
        env=cli_env(database_url, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert_no_secret(result.stdout, result.stderr)
    return result


def assert_one_line_failure(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """An expected failure: its exit code, one error line, no traceback, no password."""
    output = result.stdout + result.stderr
    assert result.returncode == exit_code, output
    assert "Traceback" not in output, output
    assert TEST_PASSWORD not in output, output
    errors = [
        line for line in result.stderr.splitlines() if line.startswith("migrate-lock: error:")
    ]
    assert len(errors) == 1, output
    return errors[0]


def query(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run ``sql`` on a second, independent connection and return its rows (if any)."""
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def catalog_snapshot(url: str) -> dict[str, object]:
    """Schema and data of every user table, to prove that a refused command changed nothing."""
    system = "('pg_catalog', 'information_schema', 'pg_toast')"
    snapshot: dict[str, object] = {
        "relations": query(
            url,
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n"
            f" ON n.oid = c.relnamespace WHERE n.nspname NOT IN {system} ORDER BY 1, 2",
        ),
        "columns": query(
            url,
            "SELECT table_schema, table_name, column_name, data_type, is_nullable,"
            " column_default FROM information_schema.columns"
            f" WHERE table_schema NOT IN {system} ORDER BY 1, 2, 3",
        ),
        "indexes": query(
            url,
            f"SELECT schemaname, indexname, indexdef FROM pg_indexes"
            f" WHERE schemaname NOT IN {system} ORDER BY 1, 2",
        ),
    }
    tables = query(
        url, f"SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN {system}"
    )
    for schema, table in tables:
        snapshot[f"{schema}.{table}"] = query(
            url,
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
            f' FROM "{schema}"."{table}" t',
        )
    return snapshot


def wait_for_a_sleeping_revision(url: str, timeout: float = 60) -> None:
    """Wait until another session of ``url``'s database runs a revision's ``pg_sleep``
    (the example project's slow revision, after its CREATE TABLE): an event to wait for,
    not a guessed number of seconds."""
    deadline = time.monotonic() + timeout
    while not query(
        url,
        "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s"
        " AND pid <> pg_backend_pid() AND datname = current_database()",
        ("%pg_sleep%",),
    ):
        assert time.monotonic() < deadline, "the slow revision never started"
        time.sleep(0.02)


def leave_to_alembic(project: Path) -> None:
    """Make the at-head path defer, so that the command takes the full path (Alembic).

    Without a heads manifest the at-head path reads the revision files itself; it refuses
    a project whose alembic.ini sets ``revision_environment`` (harmless for upgrade)."""
    ini = project / "alembic.ini"
    text = ini.read_text()
    assert "[alembic]\n" in text and "revision_environment" not in text
    ini.write_text(text.replace("[alembic]\n", "[alembic]\nrevision_environment = true\n", 1))


#: A second revision (a table ``item``) and the models it matches, for autogenerate tests.
ITEM_REVISION = '''"""items

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "item",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("item")
'''

ITEM_MODELS = """import sqlalchemy as sa

metadata = sa.MetaData()
item = sa.Table(
    "item",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
)
"""


def alembic_view(ini: Path) -> StaticRevisions | None:
    """What Alembic says (None: it refuses the scripts or warns about them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            script = ScriptDirectory.from_config(Config(str(ini)))
            heads = tuple(sorted(script.get_heads()))
            revisions = frozenset(s.revision for s in script.walk_revisions("base", "heads"))
        except Exception:  # any refusal of Alembic's counts as one: the reader is free there
            return None
    return StaticRevisions(heads=heads, revisions=revisions)
