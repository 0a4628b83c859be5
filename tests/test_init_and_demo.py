"""`init` scaffolds a project that works; `demo` shows the whole thing on a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import assert_one_line_failure, cli_env, query, run_cli


def test_init_writes_a_project_that_upgrades(tmp_path: Path, database_url: str) -> None:
    result = run_cli(["init", "app"], cwd=tmp_path, database_url=None)

    assert result.returncode == 0, result.stderr
    for name in (
        "alembic.ini",
        "migrations/env.py",
        "migrations/script.py.mako",
        "migrations/versions/0001_baseline.py",
    ):
        assert (tmp_path / "app" / name).is_file()
    upgrade = run_cli(["upgrade"], cwd=tmp_path / "app", database_url=database_url)
    assert upgrade.returncode == 0, upgrade.stderr
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0001",)]


def test_init_refuses_to_overwrite_an_existing_project(tmp_path: Path) -> None:
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    result = run_cli(["init", "."], cwd=tmp_path, database_url=None)
    line = assert_one_line_failure(result, 2)
    assert "refusing to overwrite" in line
    assert (tmp_path / "alembic.ini").read_text() == "[alembic]\n"


def test_new_revisions_from_the_template_are_applied(tmp_path: Path, database_url: str) -> None:
    """Why: script.py.mako must render revisions that run."""
    run_cli(["init", "."], cwd=tmp_path, database_url=None)
    made = subprocess.run(
        [sys.executable, "-m", "alembic", "revision", "-m", "add plans", "--rev-id", "0002"],
        cwd=tmp_path,
        env=cli_env(None),
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    revision = next((tmp_path / "migrations" / "versions").glob("0002_*.py"))
    revision.write_text(
        revision.read_text().replace(
            "def upgrade() -> None:\n    pass",
            "def upgrade() -> None:\n"
            "    op.create_table('plans', sa.Column('id', sa.Integer, primary_key=True))",
        )
    )
    result = run_cli(["upgrade"], cwd=tmp_path, database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT to_regclass('plans') IS NOT NULL") == [(True,)]


@pytest.mark.slow
def test_demo_runs_replicas_on_an_embedded_server_and_verifies_exactly_once(
    tmp_path: Path,
) -> None:
    result = run_cli(["demo", "--replicas", "4"], cwd=tmp_path, database_url=None, timeout=240)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "exactly once: yes" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 4
    assert [row[3] for row in rows].count("migrated") == 1
