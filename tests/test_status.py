"""Read-only verbs: status and its exit codes, current, heads, history, readiness."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from migrate_lock.lock import lock_key
from migrate_lock.sandbox.example import write_example_project
from migrate_lock.settings import load_settings

from support import query, run_cli


def status_json(project: Path, database_url: str) -> tuple[int, dict[str, object]]:
    result = run_cli(["status", "--json"], cwd=project, database_url=database_url)
    return result.returncode, json.loads(result.stdout)


def test_status_of_an_empty_database_is_pending_with_exit_4(
    project: Path, database_url: str
) -> None:
    code, data = status_json(project, database_url)
    assert code == 4
    assert data["status"] == "behind"
    assert data["current"] == []
    assert data["heads"] == ["0021"]
    assert len(data["pending"]) == 21  # type: ignore[arg-type]
    assert data["lock_holder"] is None
    with psycopg.connect(database_url) as connection:
        assert data["lock_key"] == lock_key(connection.info.dbname, "public", "alembic_version")


@pytest.mark.usefixtures("at_head")
def test_status_at_head_exits_0_and_names_the_lock_holder(project: Path, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(%s)",
            (lock_key(holder.info.dbname, "public", "alembic_version"),),
        )
        code, data = status_json(project, database_url)
        assert data["lock_holder"]["pid"] == holder.info.backend_pid  # type: ignore[index]
    assert code == 0
    assert data["status"] == "at_head"
    assert data["ready"] is True


def test_status_and_upgrade_exit_5_for_a_revision_the_code_never_saw(
    project: Path, database_url: str
) -> None:
    """Why: a database at a foreign revision is the wrong database or a botched stamp."""
    assert run_cli(["upgrade", "0005"], cwd=project, database_url=database_url).returncode == 0
    query(database_url, "UPDATE alembic_version SET version_num = 'f00ba4'")

    code, data = status_json(project, database_url)
    upgrade = run_cli(["upgrade"], cwd=project, database_url=database_url)

    assert code == 5 and data["status"] == "unknown" and data["unknown"] == ["f00ba4"]
    assert upgrade.returncode == 5
    assert "revision f00ba4" in upgrade.stderr


@pytest.mark.usefixtures("at_head")
def test_older_code_finds_a_newer_database_ahead_and_ready(
    tmp_path: Path, project: Path, database_url: str
) -> None:
    """Why: in a rolling deploy, old pods restart after new ones migrated; they must start."""
    older = tmp_path / "older"
    write_example_project(older, 15)

    code, data = status_json(older, database_url)
    upgrade = run_cli(["upgrade", "--json"], cwd=older, database_url=database_url)

    assert code == 0 and data["status"] == "ahead" and data["ready"] is True
    assert upgrade.returncode == 0 and json.loads(upgrade.stdout)["role"] == "fast_path"


def test_current_heads_and_history_print_revisions(project: Path, database_url: str) -> None:
    assert run_cli(["upgrade", "0003"], cwd=project, database_url=database_url).returncode == 0

    current = run_cli(["current"], cwd=project, database_url=database_url)
    heads = run_cli(["heads"], cwd=project, database_url=None)
    history = run_cli(["history"], cwd=project, database_url=None)

    assert current.stdout.strip() == "0003"
    assert heads.stdout.strip() == "0021"
    lines = history.stdout.splitlines()
    assert lines[0] == "0020 -> 0021 (head), index t_19"
    assert lines[-1] == "<base> -> 0001, baseline"


def test_schema_state_is_the_readiness_answer(
    project: Path, database_url: str, monkeypatch: object
) -> None:
    import migrate_lock

    settings = load_settings(database_url=database_url, alembic_config=project / "alembic.ini")
    before = migrate_lock.schema_state(settings=settings)
    migrate_lock.upgrade(settings=settings)
    after = migrate_lock.schema_state(settings=settings)

    assert (before.status, before.ready) == ("behind", False)
    assert (after.status, after.ready) == ("at_head", True)
