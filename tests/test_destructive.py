"""Destructive verbs against a real PostgreSQL: refused unless allowed, and then nothing changes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from conftest import Server

from migrate_lock.lock import lock_key
from migrate_lock.sandbox.example import write_example_project

from support import assert_one_line_failure, catalog_snapshot, query, run_cli

#: The test server listens on 127.0.0.1, which production would refuse at start-up.
LOCAL_OK = {"ALLOW_LOCALHOST_DATABASE": "true"}
PRODUCTION = {"ENVIRONMENT": "production", **LOCAL_OK}
STAGING = {"ENVIRONMENT": "staging", **LOCAL_OK}

MODELS = """
from sqlalchemy import Column, Integer, MetaData, Table, Text

metadata = MetaData()
Table("customers", metadata, Column("id", Integer, primary_key=True), Column("name", Text))
Table("orders", metadata, Column("id", Integer, primary_key=True), Column("note", Text))
"""

#: Every destructive verb, as the command line an operator would type.
VERBS = {
    "downgrade": ["downgrade", "-1"],
    "stamp": ["stamp", "0010"],
    "init-db": ["init-db", "--metadata", "models:metadata"],
    "reset": ["reset"],
    "restore": ["restore", "backups/snapshot.dump"],
    "seed --prune": ["seed", "--prune"],
    "env set": ["env", "set", "development"],
}

#: A setup step: ``step(**env)``.
Setup = Callable[..., None]


@pytest.fixture(scope="module")
def template_backups(
    pg_server: Server,
    migrated_templates: Callable[..., str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., Path]:
    """``backup(**env)``: a ``migrate-lock backup`` file of ``migrated_templates(**env)``,
    taken once per worker and environment."""
    made: dict[tuple[tuple[str, str], ...], Path] = {}

    def backup(**env: str) -> Path:
        key = tuple(sorted(env.items()))
        if key not in made:
            project = tmp_path_factory.mktemp("backup") / "project"
            write_example_project(project, 21)
            url = pg_server.url(migrated_templates(**env))
            result = run_cli(["backup", "--json"], cwd=project, database_url=url, **env)
            assert result.returncode == 0, result.stderr
            made[key] = Path(json.loads(result.stdout)["path"])
        return made[key]

    return backup


@pytest.fixture
def prepared(project: Path, upgraded: Setup, template_backups: Callable[..., Path]) -> Setup:
    """``prepared(**env)``: upgraded (marking the database with ENVIRONMENT), models.py
    written, and a backup file of such a database at backups/snapshot.dump."""

    def prepare(**env: str) -> None:
        upgraded(**env)
        (project / "models.py").write_text(MODELS)
        (project / "backups").mkdir(exist_ok=True)
        (project / "backups" / "snapshot.dump").symlink_to(template_backups(**env))

    return prepare


@pytest.mark.parametrize("environment", [STAGING, PRODUCTION], ids=["staging", "production"])
@pytest.mark.parametrize("verb", list(VERBS))
def test_destructive_verb_is_refused_without_confirmation_and_changes_nothing(
    project: Path, database_url: str, prepared: Setup, verb: str, environment: dict[str, str]
) -> None:
    """Why: a typo or a wrong .env must not wreck a staging or production database."""
    prepared(**environment)
    before = catalog_snapshot(database_url)

    result = run_cli(VERBS[verb], cwd=project, database_url=database_url, **environment)

    line = assert_one_line_failure(result, 3)
    database = database_url.rsplit("/", 1)[1]
    assert "refused" in line and "nothing was changed" in line
    if verb != "reset":  # reset cannot be confirmed, so it does not offer to
        assert f"--confirm-destructive {database}" in line
    assert catalog_snapshot(database_url) == before


@pytest.mark.parametrize("verb", [v for v in VERBS if v != "reset"])
def test_destructive_verb_runs_in_production_when_confirmed_with_the_database_name(
    project: Path, database_url: str, prepared: Setup, verb: str
) -> None:
    """Why: an operator who names the database on purpose must be able to do the job."""
    prepared(**PRODUCTION)
    database = database_url.rsplit("/", 1)[1]
    if verb == "init-db":  # init-db is for a brand-new database
        query(database_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    before = catalog_snapshot(database_url)

    result = run_cli(
        [*VERBS[verb], "--confirm-destructive", database],
        cwd=project,
        database_url=database_url,
        **PRODUCTION,
    )

    assert result.returncode == 0, result.stderr
    assert "guard.confirmed" in result.stderr
    if verb in ("downgrade", "stamp", "init-db"):
        assert catalog_snapshot(database_url) != before


def test_confirmation_naming_another_database_is_refused(
    project: Path, database_url: str, prepared: Setup
) -> None:
    """Why: a name that is not the connected database means the command points elsewhere."""
    prepared(**PRODUCTION)
    before = catalog_snapshot(database_url)

    result = run_cli(
        ["downgrade", "-1"],
        cwd=project,
        database_url=database_url,
        CONFIRM_DESTRUCTIVE="shop_production",
        **PRODUCTION,
    )

    line = assert_one_line_failure(result, 3)
    assert "'shop_production'" in line
    assert catalog_snapshot(database_url) == before


def test_confirm_destructive_true_is_refused_on_a_production_marked_database(
    project: Path, database_url: str, upgraded: Setup
) -> None:
    """Why: CONFIRM_DESTRUCTIVE=true left in a runbook must not be enough for production."""
    upgraded(**PRODUCTION)
    before = catalog_snapshot(database_url)

    result = run_cli(
        ["downgrade", "-1"],
        cwd=project,
        database_url=database_url,
        CONFIRM_DESTRUCTIVE="true",
        **STAGING,
    )

    line = assert_one_line_failure(result, 3)
    assert "CONFIRM_DESTRUCTIVE=true is not accepted" in line and "marked production" in line
    assert catalog_snapshot(database_url) == before


def test_confirm_destructive_true_is_accepted_on_a_staging_database(
    project: Path, database_url: str, upgraded: Setup
) -> None:
    """Why: existing staging runbooks say CONFIRM_DESTRUCTIVE=true; staging keeps that habit."""
    upgraded(**STAGING)

    result = run_cli(
        ["downgrade", "-1"],
        cwd=project,
        database_url=database_url,
        CONFIRM_DESTRUCTIVE="true",
        **STAGING,
    )

    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0020",)]


def test_production_marked_database_refuses_downgrade_from_a_development_process(
    project: Path, database_url: str, upgraded: Setup
) -> None:
    """Why: a laptop whose .env says development must not be able to downgrade production."""
    upgraded(**PRODUCTION)
    before = catalog_snapshot(database_url)

    result = run_cli(
        ["downgrade", "base"], cwd=project, database_url=database_url, ENVIRONMENT="development"
    )

    line = assert_one_line_failure(result, 3)
    assert "marked production" in line
    assert catalog_snapshot(database_url) == before


def test_migrated_database_without_a_marker_is_protected_and_says_how_to_mark_it(
    project: Path, database_url: str, upgraded: Setup
) -> None:
    """Why: a database migrated before the marker existed must fail closed, with a way out."""
    upgraded(ENVIRONMENT="development")
    query(database_url, "DROP TABLE migrate_lock.environment")
    database = database_url.rsplit("/", 1)[1]

    result = run_cli(
        ["downgrade", "-1"], cwd=project, database_url=database_url, ENVIRONMENT="development"
    )

    line = assert_one_line_failure(result, 3)
    assert "no environment marker" in line
    assert f"migrate-lock env set development --confirm-destructive {database}" in line


def test_downgrade_runs_freely_on_a_test_database(
    project: Path, database_url: str, upgraded: Setup
) -> None:
    """Why: guardrails must not get in the way where destruction is the point."""
    upgraded()

    result = run_cli(["downgrade", "0018", "--json"], cwd=project, database_url=database_url)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["steps"] == ["0021", "0020", "0019"]
    assert report["confirmed"] is False
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0018",)]
    assert query(database_url, "SELECT to_regclass('t_19')") == [(None,)]


def test_downgrade_waits_for_the_migration_lock_and_gives_up_without_changing_anything(
    project: Path, database_url: str, upgraded: Setup
) -> None:
    """Why: a downgrade racing a replica's upgrade would leave the schema half-done."""
    upgraded()
    database = database_url.rsplit("/", 1)[1]
    before = catalog_snapshot(database_url)
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(%s)", (lock_key(database, "public", "alembic_version"),)
        )

        result = run_cli(
            ["downgrade", "-1"],
            cwd=project,
            database_url=database_url,
            MIGRATION_LOCK_TIMEOUT_SECONDS="1",
        )

    line = assert_one_line_failure(result, 75)
    assert "gave up waiting for the migration lock" in line
    assert catalog_snapshot(database_url) == before


def test_unknown_downgrade_target_is_a_usage_error(
    project: Path, database_url: str, upgraded: Setup
) -> None:
    upgraded()

    result = run_cli(["downgrade", "9999"], cwd=project, database_url=database_url)

    line = assert_one_line_failure(result, 2)
    assert "9999" in line


def test_reset_is_refused_in_production_even_when_confirmed(
    project: Path, database_url: str, upgraded: Setup
) -> None:
    """Why: dropping every table is never the way to fix production; restore is."""
    upgraded(**PRODUCTION)
    database = database_url.rsplit("/", 1)[1]
    before = catalog_snapshot(database_url)

    result = run_cli(
        ["reset"],
        cwd=project,
        database_url=database_url,
        CONFIRM_DESTRUCTIVE=database,
        **PRODUCTION,
    )

    line = assert_one_line_failure(result, 3)
    assert "only for development and test" in line
    assert catalog_snapshot(database_url) == before


def test_reset_drops_everything_and_migrates_again_keeping_the_marker(
    project: Path, database_url: str, upgraded: Setup
) -> None:
    """Why: a developer's broken local schema must be one command away from fresh."""
    upgraded(ENVIRONMENT="development")
    query(
        database_url, "CREATE TABLE scratch_notes (id int); INSERT INTO leagues (name) VALUES ('x')"
    )
    query(database_url, "CREATE TYPE mood AS ENUM ('ok'); CREATE VIEW v AS SELECT 1 AS one")
    query(database_url, "CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY, m mood)")
    query(database_url, "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'")

    result = run_cli(
        ["reset", "--json"], cwd=project, database_url=database_url, ENVIRONMENT="test"
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["to_revisions"] == ["0021"]
    assert query(
        database_url,
        "SELECT to_regclass('scratch_notes'), to_regclass('v'), to_regclass('ident'),"
        " to_regtype('mood'), to_regprocedure('f()')",
    ) == [(None, None, None, None, None)]
    assert query(database_url, "SELECT count(*) FROM leagues WHERE name = 'x'") == [(0,)]
    assert query(database_url, "SELECT count(*) FROM migration_log") == [(20,)]
    assert query(database_url, "SELECT environment FROM migrate_lock.environment") == [
        ("development",)
    ]


def test_init_db_creates_the_models_and_stamps_the_heads(project: Path, database_url: str) -> None:
    """Why: a brand-new database can start from the models, then follow the migrations."""
    (project / "models.py").write_text(MODELS)

    result = run_cli(
        ["init-db", "--metadata", "models:metadata"], cwd=project, database_url=database_url
    )

    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0021",)]
    assert query(database_url, "SELECT to_regclass('customers') IS NOT NULL") == [(True,)]
    status = run_cli(["status"], cwd=project, database_url=database_url)
    assert status.returncode == 0, status.stdout


def test_init_db_refuses_a_database_that_already_has_one_of_the_tables(
    project: Path, database_url: str
) -> None:
    """Why: create_all skips existing tables, then stamping would claim a schema we lack."""
    (project / "models.py").write_text(MODELS)
    query(database_url, "CREATE TABLE orders (id int)")
    before = catalog_snapshot(database_url)

    result = run_cli(
        ["init-db", "--metadata", "models:metadata"], cwd=project, database_url=database_url
    )

    line = assert_one_line_failure(result, 3)
    assert '"public"."orders"' in line
    assert catalog_snapshot(database_url) == before


def test_stamp_heads_then_status_is_at_head(project: Path, database_url: str) -> None:
    result = run_cli(["stamp", "heads"], cwd=project, database_url=database_url)

    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0021",)]
    assert query(database_url, "SELECT environment FROM migrate_lock.environment") == [("test",)]
