"""``migrate-lock smoke``: the CI checks, each fault in a sample project detected by name."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import alembic
import pytest
from conftest import Server

from migrate_lock.checks.smoke import CHECKS
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


# --- the environment, not the revision: an extension the server lacks (issue 15, item 4) ----

#: Extensions applications create that a PostgreSQL build may not ship (the embedded
#: wheel has neither uuid-ossp nor pgcrypto: no libossp-uuid, no OpenSSL).
EXTENSIONS_OFTEN_MISSING = ("uuid-ossp", "pgcrypto", "postgis", "sslinfo", "xml2")


def an_extension_the_server_lacks(server: Server) -> str:
    available = {
        str(row[0])
        for row in query(server.admin("postgres"), "SELECT name FROM pg_available_extensions")
    }
    return next(name for name in EXTENSIONS_OFTEN_MISSING if name not in available)


def test_an_extension_the_embedded_server_lacks_is_the_environments_fault_exit_78(
    tmp_path: Path, pg_server: Server
) -> None:
    """Why: zero-config smoke on an application that runs CREATE EXTENSION "uuid-ossp" failed
    every check with "fix the revision" and SMOKE_STAIRWAY_FROM hints; the revision is fine,
    the embedded server lacks the extension, and the fix is a full PostgreSQL."""
    extension = an_extension_the_server_lacks(pg_server)  # the suite's server: the same wheel
    project = clean_project(tmp_path / "ext", models="target_metadata = None\n")
    add_revision(
        project,
        "0005",
        "0004",
        f'CREATE EXTENSION IF NOT EXISTS \\"{extension}\\"',
        "SELECT 1",
    )
    junit = tmp_path / "reports" / "smoke.xml"
    result = run_cli(
        ["smoke", "--skip", "concurrency", "--junit", str(junit)], cwd=project, database_url=None
    )
    line = assert_one_line_failure(result, 78)
    assert f'the embedded PostgreSQL has no extension "{extension}" (revision 0005 creates it)' in (
        line
    )
    assert "the environment lacks it, the revision is not at fault" in line
    assert "--database-url" in line and "service container" in line
    assert "SMOKE_STAIRWAY_FROM" not in result.stdout + result.stderr
    assert "fix the revision" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "smoke on embedded"
    assert lines[2].startswith(
        f'FAILED  upgrade: the embedded PostgreSQL has no extension "{extension}"'
    )
    not_run = f'not run: the server lacks extension "{extension}" (above)'
    assert lines[3:8] == [
        f"SKIPPED {name}: {not_run}" for name in ("models", "seeds", "at_head", "stairway")
    ] + ["SKIPPED concurrency: skipped (--skip)"]
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    assert list(cases) == list(CHECKS)
    failure = cases["upgrade"].find("failure")
    assert failure is not None and extension in failure.get("message", "")
    assert cases["stairway"].find("skipped") is not None
    assert cases["heads"].find("failure") is None and cases["heads"].find("skipped") is None


# --- the stairway sees leftovers (issue 18, item 12) ------------------------------------------


def test_the_stairway_finds_a_leftover_enum_type_and_a_data_revision_that_inserts_again(
    tmp_path: Path, pg_server: Server
) -> None:
    """Why: the stairway passed a downgrade that drops the column but not its enum type (the
    guarded upgrade runs again fine, and the type stays on every database rolled back), and a
    data revision without a guard that duplicates its rows on every rerun. A data revision
    whose downgrade deletes what it inserted is fine, though its serial ids and the values
    it computes change; so are the example history's table and column revisions (no other
    finding)."""
    project = clean_project(tmp_path / "leftovers", models="target_metadata = None\n")
    create_type = (
        "DO $$ BEGIN CREATE TYPE mood AS ENUM ('happy', 'sad');"
        " EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
        " ALTER TABLE leagues ADD COLUMN mood mood"
    )
    add_revision(project, "0005", "0004", create_type, "ALTER TABLE leagues DROP COLUMN mood")
    add_revision(
        project,
        "0006",
        "0005",
        "INSERT INTO leagues (name) VALUES ('Eredivisie ' || gen_random_uuid())",
        "DELETE FROM leagues WHERE name LIKE 'Eredivisie %'",
    )
    add_revision(project, "0007", "0006", "INSERT INTO leagues (name) VALUES ('Ligue 1')", "")
    junit = tmp_path / "smoke.xml"
    result, report = smoke_json(project, pg_server, "--junit", str(junit))
    assert result.returncode == 1, result.stdout + result.stderr
    stairway = check(report, "stairway")
    assert stairway["outcome"] == "failed"
    assert stairway["context"] == [
        "downgrade of 0005 left type public.mood behind",
        "upgrade of 0007 run again after its downgrade left 6 rows in public.leagues, "
        "the first run 5",
    ]
    assert "2 differences in 0005, 0007" in str(stairway["summary"])
    assert report["failed"] == ["stairway"]
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    assert list(cases) == list(CHECKS)
    failure = cases["stairway"].find("failure")
    assert failure is not None and "left type public.mood behind" in (failure.text or "")
    assert cases["upgrade"].find("failure") is None
    assert cases["concurrency"].find("skipped") is not None


# --- models: the env.py forms people write (issue 18, item 1, for smoke) ----------------------


def pytest_alembic_style_env_py(models: str) -> str:
    """Alembic's ``generic`` env.py as pytest-alembic's setup page says to change it: it takes
    ``config.attributes["connection"]`` for an Engine and calls ``connect()`` on it."""
    source = (Path(alembic.__file__).parent / "templates" / "generic" / "env.py").read_text()
    changed = source.replace(
        "    connectable = engine_from_config(\n",
        '    connectable = context.config.attributes.get("connection", None)\n\n'
        "    if connectable is None:\n"
        "        connectable = engine_from_config(\n",
        1,
    ).replace("target_metadata = None\n", models, 1)
    assert changed.count("connectable = ") == 2 and "Column(" in changed
    return changed


def test_the_models_check_runs_a_pytest_alembic_style_env_py(
    tmp_path: Path, pg_server: Server
) -> None:
    """Why: the models check handed env.py a plain Connection, and an env.py written as
    pytest-alembic's docs say calls connect() on it: "'Connection' object has no attribute
    'connect'", reported as a models failure."""
    project = clean_project(tmp_path / "pa")
    (project / "migrations" / "env.py").write_text(pytest_alembic_style_env_py(MODELS))
    result, report = smoke_json(project, pg_server, "--skip", "stairway")
    assert check(report, "models")["outcome"] == "passed", report
    assert result.returncode == 0, result.stdout + result.stderr
