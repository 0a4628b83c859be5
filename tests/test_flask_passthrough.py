"""``flask`` is started as it is by default (issue 18, item 4).

``docker run IMAGE flask db current`` (Flask-Migrate) must answer about the database as it
is, not upgrade it to head first: ``flask`` is in the default ENTRYPOINT_PASSTHROUGH, for
the entrypoint script (which decides before Python starts) and for ``migrate-lock run``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from migrate_lock.lean.settings_schema import read_field

from support import query, run_cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [
    ROOT / "entrypoints" / "docker-entrypoint.sh",
    ROOT / "examples" / "docker-entrypoint.sh",
]


def stub_bin(directory: Path) -> Path:
    """``flask`` and ``migrate-lock`` stubs that print their name and arguments."""
    directory.mkdir()
    for name in ("flask", "migrate-lock"):
        stub = directory / name
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name} $*"\n')
        stub.chmod(0o755)
    return directory


@pytest.mark.unit
@pytest.mark.parametrize("script", SCRIPTS, ids=["entrypoints", "examples"])
def test_the_entrypoint_script_starts_flask_without_migrating(tmp_path: Path, script: Path) -> None:
    """Why: `docker run IMAGE flask db current` went through `migrate-lock run` (upgrade to
    head first) with the default ENTRYPOINT_PASSTHROUGH."""
    stubs = stub_bin(tmp_path / "bin")
    result = subprocess.run(
        [str(shutil.which("sh")), str(script), "flask", "db", "current"],
        cwd=tmp_path,
        env={"PATH": f"{stubs}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "flask db current\n"  # not "migrate-lock run -- flask db current"


@pytest.mark.unit
def test_flask_is_in_the_default_passthrough() -> None:
    assert "flask" in str(read_field("entrypoint_passthrough", {})).split()


def test_run_starts_flask_without_migrating(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    """Why: `migrate-lock run -- flask db current` upgraded to head before starting flask."""
    stubs = stub_bin(tmp_path / "bin")

    result = run_cli(
        ["run", "--", "flask", "db", "current"],
        cwd=project,
        database_url=database_url,
        PATH=f"{stubs}:/usr/bin:/bin",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "flask db current\n"
    assert "run.passthrough" in result.stderr
    assert query(database_url, "SELECT to_regclass('alembic_version') IS NULL") == [(True,)]
