"""Start-up checks, the environment marker and protect(metadata), against a real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import Column, Enum, Index, Integer, MetaData, Sequence, Table, create_engine
from sqlalchemy.engine import Engine

from migrate_lock.dsn import parse_database_url, with_database
from migrate_lock.errors import Refused
from migrate_lock.metadata_guard import protect

from support import assert_one_line_failure, catalog_snapshot, query, run_cli

LOCAL_OK = {"ALLOW_LOCALHOST_DATABASE": "true"}
DEVELOPMENT = {"ENVIRONMENT": "development"}


def env_show(project: Path, url: str, **env: str) -> dict[str, object]:
    result = run_cli(["env", "show", "--json"], cwd=project, database_url=url, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_production_refuses_a_database_url_on_localhost(project: Path, database_url: str) -> None:
    """Why: production pointed at localhost is a copied .env, not the production database."""
    result = run_cli(["upgrade"], cwd=project, database_url=database_url, ENVIRONMENT="production")

    line = assert_one_line_failure(result, 78)
    assert "ENVIRONMENT=production" in line and "DATABASE_URL points at localhost" in line
    assert query(database_url, "SELECT to_regclass('alembic_version')") == [(None,)]


def test_production_refuses_default_credentials_without_printing_them(project: Path) -> None:
    """Why: postgres/postgres in production is a leaked template; say so, never echo it."""
    result = run_cli(
        ["upgrade"],
        cwd=project,
        database_url="postgresql://postgres:postgres@db.internal:5432/shop",
        ENVIRONMENT="production",
    )

    line = assert_one_line_failure(result, 78)
    assert "DATABASE_URL uses a default or placeholder password" in line
    assert "postgres:postgres" not in result.stderr
    assert "postgres:***@db.internal" in line


def test_staging_refuses_an_empty_password_in_the_migration_url(project: Path) -> None:
    """Why: an empty password means a secret did not get mounted; fail before connecting."""
    result = run_cli(
        ["upgrade"],
        cwd=project,
        database_url="postgresql://app:Str0ng-and-long@db.internal/shop",
        MIGRATION_DATABASE_URL="postgresql://migrator:@db.internal/shop",
        ENVIRONMENT="staging",
    )

    line = assert_one_line_failure(result, 78)
    assert "MIGRATION_DATABASE_URL has an empty password" in line
    assert "DATABASE_URL points" not in line


def test_staging_url_checks_false_lets_a_local_staging_database_migrate(
    project: Path, database_url: str
) -> None:
    """Why: single-host staging setups run their database beside the app, on purpose."""
    result = run_cli(
        ["upgrade"],
        cwd=project,
        database_url=database_url,
        ENVIRONMENT="staging",
        STAGING_URL_CHECKS="false",
    )

    assert result.returncode == 0, result.stderr


@pytest.mark.usefixtures("at_head")
def test_production_start_up_checks_also_stop_the_at_head_fast_path(
    project: Path, database_url: str
) -> None:
    """Why: the lean at-head path must not wave through what the full path refuses."""
    assert run_cli(["freeze"], cwd=project, database_url=database_url).returncode == 0

    result = run_cli(["upgrade"], cwd=project, database_url=database_url, ENVIRONMENT="production")

    assert_one_line_failure(result, 78)


@pytest.mark.usefixtures("at_head")
def test_production_at_head_with_a_manifest_still_takes_the_lean_path(
    project: Path, database_url: str
) -> None:
    """Why: the start-up checks must not cost production replicas their cheap start."""
    assert run_cli(["freeze"], cwd=project, database_url=database_url).returncode == 0

    result = run_cli(
        ["upgrade"],
        cwd=project,
        database_url=database_url,
        ENVIRONMENT="production",
        LOG_FORMAT="json",
        **LOCAL_OK,
    )

    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert [e.get("heads_from") for e in events if e["event"] == "migrate.up_to_date"] == [
        "manifest"
    ]


def test_start_up_checks_load_no_database_driver() -> None:
    """Why: the lean path runs them and promises not to import psycopg, pydantic or Alembic."""
    code = (
        "import sys\n"
        "from migrate_lock.guard import check_database_urls\n"
        "check_database_urls('production', {'DATABASE_URL': 'postgresql://a:Xy7-long@db/shop'})\n"
        "heavy = ('psycopg', 'pydantic', 'alembic', 'sqlalchemy')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_upgrade_marks_the_database_with_its_environment(project: Path, database_url: str) -> None:
    """Why: the database must carry its environment for guards run from anywhere else."""
    run_cli(["upgrade"], cwd=project, database_url=database_url, ENVIRONMENT="staging", **LOCAL_OK)

    shown = env_show(project, database_url, ENVIRONMENT="development")

    assert shown["marker"] == "staging"
    assert shown["effective"] == "staging"
    assert shown["protected"] is True


def test_upgrade_from_development_never_lowers_a_production_marker(
    project: Path, database_url: str
) -> None:
    """Why: otherwise one upgrade from a laptop would unprotect production."""
    run_cli(
        ["upgrade", "0010"],
        cwd=project,
        database_url=database_url,
        ENVIRONMENT="production",
        **LOCAL_OK,
    )

    result = run_cli(["upgrade"], cwd=project, database_url=database_url, ENVIRONMENT="development")

    assert result.returncode == 0, result.stderr
    assert "guard.marker_kept" in result.stderr
    assert env_show(project, database_url)["marker"] == "production"


def test_upgrade_raises_a_development_marker_to_production(
    project: Path, database_url: str
) -> None:
    """Why: a database first migrated from a laptop and then promoted must end up protected."""
    run_cli(["upgrade", "0010"], cwd=project, database_url=database_url, ENVIRONMENT="development")

    run_cli(
        ["upgrade"], cwd=project, database_url=database_url, ENVIRONMENT="production", **LOCAL_OK
    )

    assert env_show(project, database_url)["marker"] == "production"


def test_upgrade_without_environment_writes_no_marker(project: Path, database_url: str) -> None:
    """Why: guessing an environment would be worse than admitting we do not know it."""
    result = run_cli(["upgrade"], cwd=project, database_url=database_url, ENVIRONMENT="")

    assert result.returncode == 0, result.stderr
    shown = env_show(project, database_url, ENVIRONMENT="")
    assert shown["marker"] is None
    assert shown["effective"] == "production"


def test_env_set_raises_protection_without_confirmation(
    project: Path, database_url: str, upgraded: Callable[..., None]
) -> None:
    upgraded(ENVIRONMENT="development")

    result = run_cli(["env", "set", "production"], cwd=project, database_url=database_url)

    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT environment FROM migrate_lock.environment") == [
        ("production",)
    ]


def test_env_set_lowers_production_only_when_confirmed(
    project: Path, database_url: str, upgraded: Callable[..., None]
) -> None:
    """Why: unmarking production is how its protection would be defeated; it needs a name."""
    upgraded(ENVIRONMENT="production", **LOCAL_OK)
    database = database_url.rsplit("/", 1)[1]

    refused = run_cli(["env", "set", "test"], cwd=project, database_url=database_url)
    confirmed = run_cli(
        ["env", "set", "test", "--confirm-destructive", database],
        cwd=project,
        database_url=database_url,
    )

    assert_one_line_failure(refused, 3)
    assert confirmed.returncode == 0, confirmed.stderr
    assert query(database_url, "SELECT environment FROM migrate_lock.environment") == [("test",)]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    yield engine
    engine.dispose()


def models() -> MetaData:
    metadata = MetaData()
    Table("customers", metadata, Column("id", Integer, primary_key=True))
    return metadata


def test_protect_makes_create_all_raise_in_production(engine: Engine, database_url: str) -> None:
    """Why: create_all() left in app start-up code must not shape a production schema."""
    metadata = models()
    protect(metadata, environment="production")

    with pytest.raises(Refused, match=r"migrate-lock upgrade"):
        metadata.create_all(engine)

    assert query(database_url, "SELECT to_regclass('customers')") == [(None,)]


def test_protect_lets_create_all_and_drop_all_run_in_development(
    engine: Engine, database_url: str
) -> None:
    """Why: tests and local set-ups rely on create_all; protect must not break them."""
    metadata = models()
    protect(metadata, environment="development")

    metadata.create_all(engine)
    assert query(database_url, "SELECT to_regclass('customers') IS NOT NULL") == [(True,)]
    metadata.drop_all(engine)
    assert query(database_url, "SELECT to_regclass('customers')") == [(None,)]


def test_protect_refuses_drop_all_on_a_production_marked_database_from_development(
    engine: Engine, database_url: str, upgraded: Callable[..., None]
) -> None:
    """Why: the database's marker wins over the process's ENVIRONMENT, for drop_all too."""
    upgraded(ENVIRONMENT="production", **LOCAL_OK)
    metadata = MetaData()
    Table("leagues", metadata, Column("id", Integer, primary_key=True))
    protect(metadata, environment="development")

    with pytest.raises(Refused, match=r"marked production"):
        metadata.drop_all(engine)

    assert query(database_url, "SELECT to_regclass('leagues') IS NOT NULL") == [(True,)]


def test_protect_reads_a_lowercase_environment_variable(
    engine: Engine,
    database_url: str,
    upgraded: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why: ``environment=production`` is ENVIRONMENT=production for every other check;
    protect() read only the upper-case name, so a database marked development took a
    production process's create_all()."""
    upgraded(ENVIRONMENT="development")
    for name in ("ENVIRONMENT", "APP_ENV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("environment", "production")
    metadata = models()
    protect(metadata)

    with pytest.raises(Refused, match=r"migrate-lock upgrade"):
        metadata.create_all(engine)

    assert query(database_url, "SELECT to_regclass('customers')") == [(None,)]


# --- issue 13: the marker is never lowered by an upgrade, and found wherever it is ------


def test_upgrade_of_an_unmarked_database_does_not_mark_it_lower(
    project: Path, database_url: str
) -> None:
    """Why: a laptop .env (ENVIRONMENT=development) pointed at a database migrated by plain
    alembic must not unprotect it by upgrading it; reset stays refused, nothing deleted."""
    plain = run_cli(["upgrade", "0020"], cwd=project, database_url=database_url, ENVIRONMENT="")
    assert plain.returncode == 0, plain.stderr
    query(database_url, "DROP SCHEMA IF EXISTS migrate_lock CASCADE")  # as plain alembic
    query(database_url, "DROP TABLE IF EXISTS migrate_lock_history, migrate_lock_environment")
    database = database_url.rsplit("/", 1)[1]

    upgraded = run_cli(["upgrade"], cwd=project, database_url=database_url, **DEVELOPMENT)
    before = catalog_snapshot(database_url)
    reset = run_cli(["reset"], cwd=project, database_url=database_url, **DEVELOPMENT)

    assert upgraded.returncode == 0, upgraded.stderr
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0021",)]
    assert "guard.marker_not_written" in upgraded.stderr
    assert f"migrate-lock env set development --confirm-destructive {database}" in upgraded.stderr
    assert env_show(project, database_url, **DEVELOPMENT)["marker"] is None
    assert_one_line_failure(reset, 3)
    assert catalog_snapshot(database_url) == before


def test_env_set_marks_an_existing_unmarked_database_only_by_name(
    project: Path, database_url: str
) -> None:
    """Why: an existing database without a marker counts as production: naming it is the
    confirmation that it is not."""
    query(database_url, "CREATE TABLE orders (id int)")  # tables, no version table
    database = database_url.rsplit("/", 1)[1]

    refused = run_cli(["env", "set", "development"], cwd=project, database_url=database_url)
    confirmed = run_cli(
        ["env", "set", "development", "--confirm-destructive", database],
        cwd=project,
        database_url=database_url,
    )

    assert "--confirm-destructive" in assert_one_line_failure(refused, 3)
    assert confirmed.returncode == 0, confirmed.stderr
    assert query(database_url, "SELECT environment FROM migrate_lock.environment") == [
        ("development",)
    ]


def test_a_production_marker_is_found_whatever_version_table_schema_says(
    project: Path, database_url: str
) -> None:
    """Why: the marker belongs to the database; pointing VERSION_TABLE_SCHEMA elsewhere
    must not make a production database look unprotected to reset or seed --prune, not
    even where an older release left a development marker."""
    upgraded = run_cli(
        ["upgrade"], cwd=project, database_url=database_url, ENVIRONMENT="production", **LOCAL_OK
    )
    assert upgraded.returncode == 0, upgraded.stderr
    query(database_url, "CREATE SCHEMA elsewhere")
    elsewhere = {"VERSION_TABLE_SCHEMA": "elsewhere", **DEVELOPMENT}
    before = catalog_snapshot(database_url)

    reset = run_cli(["reset"], cwd=project, database_url=database_url, **elsewhere)

    assert "production" in assert_one_line_failure(reset, 3)
    assert catalog_snapshot(database_url) == before

    # A version table at head there, and a development marker an older release left.
    query(database_url, "CREATE TABLE elsewhere.alembic_version AS TABLE public.alembic_version")
    query(
        database_url,
        "CREATE TABLE elsewhere.migrate_lock_environment AS TABLE migrate_lock.environment",
    )
    query(database_url, "UPDATE elsewhere.migrate_lock_environment SET environment = 'development'")
    before = catalog_snapshot(database_url)

    prune = run_cli(["seed", "--prune"], cwd=project, database_url=database_url, **elsewhere)

    assert "production" in assert_one_line_failure(prune, 3)
    assert catalog_snapshot(database_url) == before


def test_an_upgrade_moves_an_old_production_marker_without_lowering_it(
    project: Path, database_url: str
) -> None:
    """Why: existing installations keep their tables beside the version table; the move
    to migrate-lock's own schema must never lose or lower a production marker."""
    upgraded = run_cli(
        ["upgrade", "0020"],
        cwd=project,
        database_url=database_url,
        ENVIRONMENT="production",
        **LOCAL_OK,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    for new, old in (
        ("environment", "migrate_lock_environment"),
        ("history", "migrate_lock_history"),
    ):
        query(database_url, f"ALTER TABLE migrate_lock.{new} SET SCHEMA public")
        query(database_url, f"ALTER TABLE public.{new} RENAME TO {old}")
    query(database_url, "UPDATE migrate_lock_history SET version_table = 'alembic_version'")
    query(database_url, "DROP SCHEMA migrate_lock CASCADE")

    result = run_cli(["upgrade"], cwd=project, database_url=database_url, **DEVELOPMENT)

    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT environment FROM migrate_lock.environment") == [
        ("production",)
    ]
    assert query(
        database_url,
        "SELECT to_regclass('public.migrate_lock_environment'),"
        " to_regclass('public.migrate_lock_history')",
    ) == [(None, None)]
    history = query(database_url, "SELECT count(*) FROM migrate_lock.history")
    assert history == [(21,)]
    status = run_cli(["status"], cwd=project, database_url=database_url, **DEVELOPMENT)
    assert status.returncode == 0, status.stdout + status.stderr


def test_protect_stops_every_create_and_drop_entry_point_in_production(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why: Table.drop() or an Enum's drop() is as destructive as drop_all()."""
    monkeypatch.setenv("ENVIRONMENT", "production")
    metadata = MetaData()
    mood = Enum("happy", "sad", name="mood")
    orders = Table(
        "orders",
        metadata,
        Column("id", Integer, Sequence("orders_id"), primary_key=True),
        Column("mood", mood),
        Column("code", Integer),
    )
    code = Index("orders_code", orders.c.code)
    protect(metadata)
    late = Table("later", metadata, Column("id", Integer))  # added after protect()
    with engine.begin() as connection:  # exists already, so that drops reach the guard
        connection.exec_driver_sql("CREATE TYPE mood AS ENUM ('happy', 'sad')")
        connection.exec_driver_sql("CREATE SEQUENCE orders_id")
        connection.exec_driver_sql("CREATE TABLE orders (id int, mood mood, code int)")
        connection.exec_driver_sql("CREATE INDEX orders_code ON orders (code)")
    calls = {
        "metadata.create_all": lambda: metadata.create_all(engine),
        "metadata.drop_all": lambda: metadata.drop_all(engine),
        "Table.create": lambda: late.create(engine),
        "Table.drop": lambda: orders.drop(engine),
        "Index.create": lambda: code.create(engine),
        "Index.drop": lambda: code.drop(engine),
        "Sequence.create": lambda: Sequence("other_seq", metadata=metadata).create(engine),
        "Sequence.drop": lambda: Sequence("orders_id", metadata=metadata).drop(engine),
        "Enum.create": lambda: mood.create(engine, checkfirst=False),
        "Enum.drop": lambda: mood.drop(engine),
    }

    not_refused = []
    for name, call in calls.items():
        try:
            call()
        except Refused as error:
            assert "production" in error.message, name
        else:
            not_refused.append(name)

    assert not_refused == []

    assert query(
        str(engine.url.render_as_string(hide_password=False)).replace("+psycopg", ""),
        "SELECT to_regclass('orders') IS NOT NULL, to_regclass('orders_code') IS NOT NULL,"
        " to_regclass('orders_id') IS NOT NULL, to_regtype('mood') IS NOT NULL,"
        " to_regclass('later'), to_regclass('other_seq')",
    ) == [(True, True, True, True, None, None)]


def test_a_role_that_may_not_create_our_schema_is_refused_and_nothing_changes(
    project: Path, database_url: str, pg_server: Any
) -> None:
    """Why: migrate-lock keeps its tables in a schema of its own; a role without CREATE on
    the database gets a clear refusal (exit 78) naming the grant, not a half-done upgrade.
    Needs a superuser to create the role."""
    role = f"no_schema_{uuid.uuid4().hex[:8]}"
    database = database_url.rsplit("/", 1)[1]
    admin = with_database(parse_database_url(pg_server.admin_url), database).libpq
    query(admin, f"CREATE ROLE {role} LOGIN PASSWORD 'Str0ng-and-long'")
    query(admin, f"GRANT USAGE, CREATE ON SCHEMA public TO {role}")
    parts = urlsplit(database_url)
    url = urlunsplit(
        parts._replace(netloc=f"{role}:Str0ng-and-long@{parts.netloc.rpartition('@')[2]}")
    )
    try:
        before = catalog_snapshot(admin)
        refused = run_cli(["upgrade"], cwd=project, database_url=url, **DEVELOPMENT)

        line = assert_one_line_failure(refused, 78)
        assert f'CREATE SCHEMA migrate_lock AUTHORIZATION "{role}"' in line
        assert catalog_snapshot(admin) == before

        query(admin, f"CREATE SCHEMA migrate_lock AUTHORIZATION {role}")  # as the hint says
        upgraded = run_cli(["upgrade"], cwd=project, database_url=url, **DEVELOPMENT)
        assert upgraded.returncode == 0, upgraded.stderr
        assert query(admin, "SELECT environment FROM migrate_lock.environment") == [
            ("development",)
        ]
    finally:
        query(admin, f"DROP OWNED BY {role}")
        query(admin, f"DROP ROLE {role}")


PLANS_REVISION = '''"""plans"""

from alembic import op

revision = "0022"
down_revision = "0021"


def upgrade() -> None:
    op.execute("CREATE TABLE plans (code text PRIMARY KEY, name text NOT NULL)")


def downgrade() -> None:
    op.execute("DROP TABLE plans")
'''


def test_reset_applies_the_seeds_again(project: Path, database_url: str) -> None:
    """Why: reset empties the application's schema, not migrate-lock's own: the seed
    checksums and history of that application must go with its tables, or the seeds
    would count as applied to tables that no longer hold them."""
    (project / "migrations" / "versions" / "0022_plans.py").write_text(PLANS_REVISION)
    (project / "seeds").mkdir()
    (project / "seeds" / "plans.csv").write_text("code,name\nfree,Free\npro,Pro\n")
    upgraded = run_cli(["upgrade"], cwd=project, database_url=database_url, **DEVELOPMENT)
    assert upgraded.returncode == 0, upgraded.stderr

    reset = run_cli(["reset"], cwd=project, database_url=database_url, **DEVELOPMENT)

    assert reset.returncode == 0, reset.stderr
    assert query(database_url, "SELECT code FROM plans ORDER BY 1") == [("free",), ("pro",)]
    assert query(database_url, "SELECT environment FROM migrate_lock.environment") == [
        ("development",)
    ]
