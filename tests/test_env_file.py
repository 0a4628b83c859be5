"""The application's .env and secrets, as a real process finds them (issue 15, items 3, 5).

An application keeps ``.env`` at its repository's root and runs its tools from
``backend/``; a container gets its database URL as a secret file. Unit tests
(tests/unit/test_settings_*.py) cover the rules; these run ``migrate-lock`` itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from migrate_lock.sandbox.example import write_example_project

from support import assert_one_line_failure, cli_env, query, run_cli


def test_status_from_backend_reads_the_dotenv_at_the_repository_root(
    tmp_path: Path, database_url: str
) -> None:
    """Why: from backend/ `alembic` worked while `migrate-lock status` said DATABASE_URL is
    not set; and the template's ENVIRONMENT=local made every verb exit 78."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    write_example_project(repo / "backend", 2)
    (repo / ".env").write_text(
        f"# the application's settings\nENVIRONMENT=local\nDATABASE_URL={database_url}\n"
    )

    result = run_cli(["status"], cwd=repo / "backend", database_url=None, ENVIRONMENT="")

    assert result.returncode == 4, result.stderr  # pending: it read the URL and connected
    assert "pending" in result.stdout, result.stdout


def test_upgrade_reads_the_url_from_a_docker_secret_file(tmp_path: Path, database_url: str) -> None:
    """Why: Docker and Kubernetes secrets are files; DATABASE_URL_FILE names one."""
    project = tmp_path / "project"
    write_example_project(project, 2)
    secret = tmp_path / "run" / "secrets" / "database_url"
    secret.parent.mkdir(parents=True)
    secret.write_text(database_url + "\n")

    result = run_cli(["upgrade"], cwd=project, database_url=None, DATABASE_URL_FILE=str(secret))

    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT count(*) FROM alembic_version") == [(1,)]
    # Plain alembic (ENTRYPOINT_PASSTHROUGH starts it as it is) reads it too: the template's
    # env.py follows the same convention.
    current = subprocess.run(
        [sys.executable, "-m", "alembic", "current"],
        cwd=project,
        env=cli_env(None, DATABASE_URL_FILE=str(secret)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert current.returncode == 0, current.stderr
    assert "(head)" in current.stdout, current.stdout + current.stderr


def test_a_missing_env_file_is_a_configuration_error(tmp_path: Path) -> None:
    """Why: a file named on purpose and not there is a deployment mistake, not "no .env"."""
    result = run_cli(
        ["--env-file", "deploy/.env.production", "status"], cwd=tmp_path, database_url=None
    )

    line = assert_one_line_failure(result, 78)
    assert "ENV_FILE names deploy/.env.production, a file that does not exist" in line
