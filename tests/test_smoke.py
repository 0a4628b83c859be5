"""``migrate-lock smoke``: the CI checks, each fault in a sample project detected by name."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import Server

from migrate_lock.sandbox.example import write_example_project

from support import (
    OWNER_WITHOUT_CREATEDB,
    assert_one_line_failure,
    catalog_snapshot,
    query,
    run_cli,
)

MODELS = """
from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, Table, Text

target_metadata = MetaData()
Table(
    "migration_log",
    target_metadata,
    Column("revision", Text, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)
Table(
    "leagues",
    target_metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False),
)
Table(
    "t_3",
    target_metadata,
    Column("id", BigInteger, primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("note", Text),
)
"""

IDEMPOTENT_SEED = (
    "INSERT INTO leagues (id, name) VALUES (100, 'Bundesliga') ON CONFLICT (id) DO NOTHING;\n"
)

REVISION = '''"""{doc}"""

from alembic import op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("{up}")


def downgrade() -> None:
    op.execute("{downgrade}")
'''


def clean_project(path: Path, *, models: str = MODELS, seed: str = IDEMPOTENT_SEED) -> Path:
    """Four revisions, models that match them, one idempotent seed file."""
    write_example_project(path, 4)
    env = path / "migrations" / "env.py"
    env.write_text(env.read_text().replace("target_metadata = None\n", models))
    (path / "seeds").mkdir()
    (path / "seeds" / "leagues.sql").write_text(seed)
    return path


def add_revision(project: Path, rev: str, down: str, up: str, downgrade: str) -> None:
    source = REVISION.format(doc=f"revision {rev}", rev=rev, down=down, up=up, downgrade=downgrade)
    (project / "migrations" / "versions" / f"{rev}_extra.py").write_text(source)


def smoke_json(
    project: Path, server: Server, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    # The subprocess checks are the clean project's; a fault's test runs the in-process ones.
    skip = ["--skip", "at_head", "--skip", "concurrency"]
    result = run_cli(
        ["smoke", "--json", *skip, "--database-url", server.url("postgres"), *args],
        cwd=project,
        database_url=None,
        **env,
    )
    return result, json.loads(result.stdout)


def check(report: dict[str, object], name: str) -> dict[str, object]:
    checks = report["checks"]
    assert isinstance(checks, list)
    return next(c for c in checks if c["name"] == name)


def test_clean_project_passes_every_check_and_leaves_the_named_database_untouched(
    tmp_path: Path, pg_server: Server, database_url: str
) -> None:
    """CI against a shared server must prove the history without touching the database named."""
    project = clean_project(tmp_path / "clean")
    query(database_url, "CREATE TABLE keep (id int PRIMARY KEY); INSERT INTO keep VALUES (1)")
    before = catalog_snapshot(database_url)
    result = run_cli(
        ["smoke", "--json", "--replicas", "3", "--database-url", database_url],
        cwd=project,
        database_url=None,
        LOG_FORMAT="json",
    )
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {c["name"]: c["outcome"] for c in report["checks"]} == {
        "heads": "passed",
        "upgrade": "passed",
        "models": "passed",
        "seeds": "passed",
        "at_head": "passed",
        "stairway": "passed",
        "concurrency": "passed",
    }
    assert catalog_snapshot(database_url) == before
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    created = {e["database"] for e in events if e["event"] == "smoke.scratch_created"}
    dropped = {e["database"] for e in events if e["event"] == "smoke.scratch_dropped"}
    assert len(created) == 3 and created == dropped
    left = query(
        database_url, "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (list(created),)
    )
    assert left == []


@pytest.mark.slow
def test_zero_config_smoke_runs_on_an_embedded_server_with_a_readable_report(
    tmp_path: Path,
) -> None:
    """A CI job with no database service at all must still get the whole smoke test."""
    project = clean_project(tmp_path / "clean")
    result = run_cli(["smoke"], cwd=project, database_url=None, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("smoke on embedded\n")
    assert "PASSED  concurrency: 8 replicas at once" in result.stdout
    assert result.stdout.rstrip().endswith("all checks passed")


def test_two_heads_fail_the_heads_check_naming_both(tmp_path: Path, pg_server: Server) -> None:
    """Two heads are an unresolved merge that breaks `upgrade head` at deploy time."""
    project = clean_project(tmp_path / "heads", models="target_metadata = None\n")
    add_revision(project, "0005", "0003", "CREATE TABLE other (id int)", "DROP TABLE other")
    result, report = smoke_json(project, pg_server)
    assert result.returncode == 1
    heads = check(report, "heads")
    assert heads["outcome"] == "failed"
    assert "2 heads (0004, 0005)" in str(heads["summary"])
    assert "alembic merge heads" in str(heads["summary"])
    assert report["failed"] == ["heads"]


def test_expected_heads_setting_accepts_a_deliberate_second_head(
    tmp_path: Path, pg_server: Server
) -> None:
    """A project that keeps two branches on purpose says so once and stays green."""
    project = clean_project(tmp_path / "heads", models="target_metadata = None\n")
    add_revision(project, "0005", "0003", "CREATE TABLE other (id int)", "DROP TABLE other")
    result, report = smoke_json(project, pg_server, SMOKE_EXPECTED_HEADS="0004,0005")
    assert check(report, "heads")["outcome"] == "passed", result.stderr
    assert result.returncode == 0, result.stdout


def test_a_failing_downgrade_fails_the_stairway_naming_the_revision(
    tmp_path: Path, pg_server: Server
) -> None:
    """A downgrade nobody ran is found broken in CI, not during an incident's rollback."""
    project = clean_project(tmp_path / "down", models="target_metadata = None\n")
    add_revision(project, "0005", "0004", "CREATE TABLE other (id int)", "DROP TABLE missing")
    result, report = smoke_json(project, pg_server)
    assert result.returncode == 1
    stairway = check(report, "stairway")
    assert stairway["outcome"] == "failed"
    summary = str(stairway["summary"])
    assert summary.startswith("revision 0005: downgrade failed:")
    assert 'table "missing" does not exist' in summary
    assert report["failed"] == ["stairway"]


def test_stairway_from_setting_exempts_older_revisions_from_downgrading(
    tmp_path: Path, pg_server: Server
) -> None:
    """History that was never meant to go down can be exempted without silencing new revisions."""
    project = clean_project(tmp_path / "down", models="target_metadata = None\n")
    add_revision(project, "0005", "0004", "CREATE TABLE other (id int)", "DROP TABLE missing")
    add_revision(project, "0006", "0005", "CREATE TABLE more (id int)", "DROP TABLE more")
    result, report = smoke_json(project, pg_server, SMOKE_STAIRWAY_FROM="0006")
    stairway = check(report, "stairway")
    assert stairway["outcome"] == "passed", stairway
    assert "6 revisions up; 1 of them down and up again" in str(stairway["summary"])
    assert result.returncode == 0


def test_models_that_drift_from_the_migrations_fail_naming_the_difference(
    tmp_path: Path, pg_server: Server
) -> None:
    """A model change without a revision reaches production as a missing column."""
    drifted = MODELS.replace(
        'Column("name", Text, nullable=False),\n)\nTable(\n    "t_3"',
        'Column("name", Text, nullable=False),\n    Column("country", Text),\n)\nTable(\n    "t_3"',
    )
    assert drifted != MODELS
    project = clean_project(tmp_path / "drift", models=drifted)
    result, report = smoke_json(project, pg_server)
    assert result.returncode == 1
    models = check(report, "models")
    assert models["outcome"] == "failed"
    assert models["context"] == ["column leagues.country: in the models, not in the database"]
    assert report["failed"] == ["models"]


def test_a_non_idempotent_seed_fails_naming_the_table_it_changes(
    tmp_path: Path, pg_server: Server
) -> None:
    """A seed that inserts again on every deploy duplicates reference data in production."""
    project = clean_project(
        tmp_path / "seed", seed="INSERT INTO leagues (name) VALUES ('Ligue 1');\n"
    )
    result, report = smoke_json(project, pg_server)
    assert result.returncode == 1
    seeds = check(report, "seeds")
    assert seeds["outcome"] == "failed"
    assert "changed public.leagues" in str(seeds["summary"])
    assert seeds["context"] == ["public.leagues: 4 rows before, 5 after"]
    assert report["failed"] == ["seeds"]


def test_a_failing_upgrade_skips_the_checks_that_need_a_migrated_database(
    tmp_path: Path, pg_server: Server
) -> None:
    """One broken revision must read as one failure, not as a cascade of confusing ones."""
    project = clean_project(tmp_path / "broken", models="target_metadata = None\n")
    add_revision(project, "0005", "0004", "ALTER TABLE nowhere ADD COLUMN x int", "SELECT 1")
    result, report = smoke_json(project, pg_server)
    assert result.returncode == 1
    upgrade = check(report, "upgrade")
    assert "revision 0005 (revision 0005) failed" in str(upgrade["summary"])
    assert [check(report, name)["outcome"] for name in ("models", "seeds", "at_head")] == [
        "skipped"
    ] * 3
    assert report["failed"] == ["upgrade", "stairway"]


def test_a_role_that_may_not_create_databases_is_a_configuration_error(
    tmp_path: Path, pg_server: Server, database_url: str
) -> None:
    """Smoke never falls back to the named database: without CREATEDB it stops and says why."""
    project = clean_project(tmp_path / "clean")
    url = pg_server.url(database_url.rsplit("/", 1)[1], OWNER_WITHOUT_CREATEDB)
    result = run_cli(["smoke", "--database-url", url], cwd=project, database_url=None)
    line = assert_one_line_failure(result, 78)
    assert "may not create the scratch database" in line
    assert "CREATEDB" in line


def test_an_unknown_check_to_skip_is_a_usage_error(tmp_path: Path) -> None:
    """A typo in --skip must not silently run (or leave out) the wrong checks."""
    project = clean_project(tmp_path / "clean")
    result = run_cli(["smoke", "--skip", "stairways"], cwd=project, database_url=None)
    line = assert_one_line_failure(result, 2)
    assert "unknown smoke check stairways" in line
    assert "concurrency" in line
