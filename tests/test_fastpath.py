"""The at-head fast path: cheap when it is sure, and it never says "at head" wrongly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from migrate_lock.lock import lock_key
from migrate_lock.sandbox.example import write_example_project

from support import assert_one_line_failure, cli_env, query, run_cli, spawn


def upgrade_events(project: Path, database_url: str, **env: str) -> tuple[int, list[dict]]:
    result = run_cli(["upgrade"], cwd=project, database_url=database_url, LOG_FORMAT="json", **env)
    return result.returncode, [json.loads(line) for line in result.stderr.splitlines()]


def finished(events: list[dict]) -> dict:
    return next(e for e in events if e["event"] in ("migrate.up_to_date", "migrate.done"))


@pytest.fixture
def frozen_at_head(project: Path, at_head: str) -> Path:
    assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0
    return project


def test_at_head_with_a_fresh_manifest_answers_from_the_manifest(
    frozen_at_head: Path, database_url: str
) -> None:
    code, events = upgrade_events(frozen_at_head, database_url)
    assert code == 0
    assert finished(events)["role"] == "fast_path"
    assert finished(events)["heads_from"] == "manifest"


@pytest.mark.usefixtures("at_head")
def test_without_a_manifest_the_revision_files_answer(project: Path, database_url: str) -> None:
    """No `freeze`: the static reader (lean/static_revisions.py) knows the heads."""
    code, events = upgrade_events(project, database_url)
    assert code == 0
    assert finished(events)["role"] == "fast_path"
    assert finished(events)["heads_from"] == "revision_files"


@pytest.mark.usefixtures("at_head")
def test_without_a_manifest_a_file_the_reader_cannot_vouch_for_leaves_it_to_alembic(
    project: Path, database_url: str
) -> None:
    index = project / "migrations" / "versions" / "0021_index.py"
    index.write_text(
        index.read_text().replace('down_revision = "0020"', 'down_revision = "00" + "20"')
    )
    code, events = upgrade_events(project, database_url)
    assert code == 0
    assert finished(events)["role"] == "fast_path"
    assert "heads_from" not in finished(events)  # Alembic's answer


def test_a_stale_manifest_never_hides_a_new_revision(
    frozen_at_head: Path, database_url: str
) -> None:
    """Why: the one unacceptable answer is "at head" when a revision is pending."""
    versions = frozen_at_head / "migrations" / "versions"
    (versions / "0022_more.py").write_text(
        (versions / "0021_index.py")
        .read_text()
        .replace('"0021"', '"0022"')
        .replace('"0020"', '"0021"')
        .replace("ix_t_19_name", "ix_t_19_name_again")
    )
    code, events = upgrade_events(frozen_at_head, database_url)
    assert code == 0
    assert any(e["event"] == "heads.manifest_stale" for e in events)
    assert finished(events)["role"] == "migrated"
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0022",)]


def test_database_behind_the_manifest_is_migrated(
    project: Path, database_url: str, upgraded: Callable[..., None]
) -> None:
    upgraded("0010")
    run_cli(["freeze"], cwd=project, database_url=None)
    code, events = upgrade_events(project, database_url)
    assert code == 0 and finished(events)["role"] == "migrated"


def test_database_ahead_of_an_older_frozen_release_is_ready(
    tmp_path: Path, frozen_at_head: Path, database_url: str
) -> None:
    older = tmp_path / "older"
    write_example_project(older, 15)
    run_cli(["freeze"], cwd=older, database_url=None)
    code, events = upgrade_events(older, database_url)
    assert code == 0
    assert finished(events)["status"] == "ahead"


def test_a_changed_seed_at_head_is_not_skipped(frozen_at_head: Path, database_url: str) -> None:
    seeds = frozen_at_head / "seeds"
    seeds.mkdir()
    (seeds / "leagues.sql").write_text("INSERT INTO leagues (name) VALUES ('Eredivisie');")
    code, events = upgrade_events(frozen_at_head, database_url)
    assert code == 0 and finished(events)["seeded"] == 1
    assert query(database_url, "SELECT count(*) FROM leagues WHERE name = 'Eredivisie'") == [(1,)]


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DDL_LOCK_TIMEOUT", "forever"), ("MIGRATION_LOCK_TIMEOUT_SECONDS", "soon")],
)
def test_an_invalid_setting_still_fails_fast_at_head(
    frozen_at_head: Path, database_url: str, variable: str, value: str
) -> None:
    """Why: the fast path must not turn a configuration error into a silent success."""
    result = run_cli(
        ["upgrade"], cwd=frozen_at_head, database_url=database_url, **{variable: value}
    )
    line = assert_one_line_failure(result, 78)
    assert variable in line


@pytest.mark.slow
def test_sixteen_frozen_replicas_on_an_empty_database_wait_lean_and_apply_once(
    project: Path, database_url: str
) -> None:
    """Why: waiters that do not load Alembic leave the CPU to the one that migrates."""
    run_cli(["freeze"], cwd=project, database_url=None)
    processes = [
        spawn(["upgrade"], cwd=project, database_url=database_url, LOG_FORMAT="json")
        for _ in range(16)
    ]
    outputs = [process.communicate(timeout=240)[1] for process in processes]

    assert [process.returncode for process in processes] == [0] * 16, outputs
    events = [finished([json.loads(line) for line in out.splitlines()]) for out in outputs]
    assert sorted(e["role"] for e in events).count("migrated") == 1
    assert sum(1 for e in events if e.get("heads_from") == "manifest") >= 1
    counts = query(database_url, "SELECT revision, count(*) FROM migration_log GROUP BY 1")
    assert len(counts) == 20 and {count for _, count in counts} == {1}


def test_lock_timeout_on_the_lean_path_exits_75_naming_the_holder(
    project: Path, database_url: str
) -> None:
    run_cli(["freeze"], cwd=project, database_url=None)
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(%s)",
            (lock_key(holder.info.dbname, "public", "alembic_version"),),
        )
        result = run_cli(
            ["upgrade"],
            cwd=project,
            database_url=database_url,
            MIGRATION_LOCK_TIMEOUT_SECONDS="2",
        )
        pid = holder.info.backend_pid
    line = assert_one_line_failure(result, 75)
    assert f"pid {pid}" in line


def test_the_migrating_replica_logs_one_lock_acquired_and_one_lock_released(
    project: Path, database_url: str, upgraded: Callable[..., None]
) -> None:
    """Why: operators count lock.acquired/lock.released to see who held the lock and how
    long; the lean path's hand-over to the full path logged lock.acquired twice."""
    upgraded("0010")
    assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0
    code, events = upgrade_events(project, database_url)
    assert code == 0 and finished(events)["role"] == "migrated"
    names = [event["event"] for event in events]
    assert names.count("lock.acquired") == 1, names
    assert names.count("lock.released") == 1, names
    assert names.index("lock.acquired") < names.index("migrate.done")


def test_a_lean_lock_timeout_names_the_holder_and_since_when(
    project: Path, database_url: str, upgraded: Callable[..., None]
) -> None:
    """Why: "held by pid 123" is not enough to decide whether to wait or to terminate it;
    the full path said since when, the lean path did not."""
    upgraded("0010")
    assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0
    database = database_url.rsplit("/", 1)[1].split("?", maxsplit=1)[0]
    key = lock_key(database, "public", "alembic_version")
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        holder_pid = holder.info.backend_pid
        result = run_cli(
            ["upgrade"], cwd=project, database_url=database_url, MIGRATION_LOCK_TIMEOUT_SECONDS="1"
        )
    line = assert_one_line_failure(result, 75)
    assert f"pid {holder_pid}" in line
    assert re.search(r" since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line), line


def test_the_library_upgrade_at_head_takes_the_lean_path_and_loads_nothing_heavy(
    frozen_at_head: Path, database_url: str
) -> None:
    """Why: the quickstart promises `migrate_lock.upgrade()` is the CLI's upgrade; an app
    calling it on every start must not pay for Alembic, SQLAlchemy, psycopg or pydantic."""
    program = (
        "import sys, migrate_lock\n"
        "result = migrate_lock.upgrade()\n"
        "heavy = ('sqlalchemy', 'alembic', 'psycopg', 'pydantic')\n"
        "print(result.role, [name for name in heavy if name in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=frozen_at_head,
        env=cli_env(database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fast_path []", done.stdout + done.stderr
