"""Settings and URLs: validated up front, secrets never printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from migrate_lock.dsn import mask_url_text, parse_database_url
from migrate_lock.errors import ConfigError
from migrate_lock.logs import EventLog
from migrate_lock.settings import load_settings

from support import assert_no_secret, assert_one_line_failure, cli_env, leave_to_alembic, run_cli


@pytest.mark.parametrize(
    "scheme", ["postgresql", "postgres", "postgresql+psycopg", "postgresql+asyncpg"]
)
def test_postgresql_url_schemes_are_accepted_and_driven_by_psycopg_3(scheme: str) -> None:
    url = parse_database_url(f"{scheme}://app:s3cret@db:5432/app")
    assert url.libpq == "postgresql://app:s3cret@db:5432/app"
    assert url.sqlalchemy == "postgresql+psycopg://app:s3cret@db:5432/app"
    assert url.masked == f"{scheme}://app:***@db:5432/app"
    assert "s3cret" not in repr(url)


def test_masking_hides_passwords_in_urls_and_query_parameters() -> None:
    text = "tried postgresql://u:p%40ss@h/db and postgres://h/db?password=hunter22&x=1"
    assert mask_url_text(text) == (
        "tried postgresql://u:***@h/db and postgres://h/db?password=***&x=1"
    )


def test_event_log_scrubs_registered_secrets_from_every_line(tmp_path: Path) -> None:
    import io

    stream = io.StringIO()
    log = EventLog()
    log.stream = stream
    log.configure(log_format="json")
    log.add_secret("hunter22")
    log.info("db.retry", error="auth failed for hunter22")
    assert "hunter22" not in stream.getvalue()
    assert "***" in stream.getvalue()


def test_app_env_is_an_alias_of_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    monkeypatch.setenv("APP_ENV", "Staging")
    assert load_settings().environment == "staging"


def test_keyword_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT_SECONDS", "5")
    assert load_settings(migration_lock_timeout_seconds=9).migration_lock_timeout_seconds == 9
    assert load_settings(migration_lock_timeout_seconds=None).migration_lock_timeout_seconds == 5


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DDL_LOCK_TIMEOUT", raising=False)
    (tmp_path / ".env").write_text("DDL_LOCK_TIMEOUT=3s\nUNRELATED_APP_SETTING=1\n")
    assert load_settings().ddl_lock_timeout == "3s"


def test_migration_database_url_wins_for_migrations() -> None:
    settings = load_settings(
        database_url="postgresql://app:a@pooler:6432/app",
        migration_database_url="postgresql://app:a@primary:5432/app",
    )
    assert settings.migration_url().host == "primary"


def test_invalid_duration_names_the_variable_and_the_allowed_form() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(ddl_statement_timeout="forever")
    assert str(raised.value).startswith("DDL_STATEMENT_TIMEOUT is invalid")
    assert "500ms" in str(raised.value)


def test_a_well_known_password_does_not_garble_log_lines() -> None:
    """Why: with postgres:postgres on a laptop, every "postgres" would become ***."""
    import io

    stream = io.StringIO()
    log = EventLog()
    log.stream = stream
    log.configure(log_format="json")
    log.add_secret("postgres")
    log.info("db.retry", url="postgresql://postgres:***@localhost/postgres")
    assert '"postgresql://postgres:***@localhost/postgres"' in stream.getvalue()


def run_as_operator(
    args: list[str], *, cwd: Path, database_url: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    """``migrate-lock ARGS`` without the suite's ``ENVIRONMENT=test``: the test sets its own."""
    env = cli_env(database_url)
    del env["ENVIRONMENT"]
    env.update(extra)
    result = subprocess.run(
        [sys.executable, "-m", "migrate_lock", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert_no_secret(result.stdout, result.stderr)
    return result


@pytest.mark.parametrize("frozen", [False, True], ids=["without_manifest", "with_manifest"])
@pytest.mark.usefixtures("at_head")
def test_a_lowercase_environment_name_is_read_with_or_without_a_heads_manifest(
    project: Path, database_url: str, frozen: bool
) -> None:
    """Why: ``environment=production`` was ignored by the at-head path alone: a localhost URL
    was refused (exit 78) without a manifest and accepted (exit 0) with one."""
    if frozen:
        assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0
    else:
        leave_to_alembic(project)
    result = run_as_operator(
        ["upgrade"], cwd=project, database_url=database_url, environment="production"
    )
    line = assert_one_line_failure(result, 78)
    assert "production refuses" in line


@pytest.mark.parametrize("verb", [["upgrade"], ["run", "--", "true"]], ids=["upgrade", "run"])
@pytest.mark.usefixtures("at_head")
def test_a_path_in_entrypoint_passthrough_is_refused_at_head_with_a_manifest(
    project: Path, database_url: str, verb: list[str]
) -> None:
    """Why: the at-head path accepted ``/bin/sh`` that the settings model refuses."""
    assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0
    result = run_cli(verb, cwd=project, database_url=database_url, ENTRYPOINT_PASSTHROUGH="/bin/sh")
    line = assert_one_line_failure(result, 78)
    assert "ENTRYPOINT_PASSTHROUGH is invalid" in line


@pytest.mark.parametrize("frozen", [False, True], ids=["without_manifest", "with_manifest"])
@pytest.mark.usefixtures("at_head")
def test_a_malformed_database_url_is_refused_even_when_the_migration_url_is_used(
    project: Path, database_url: str, frozen: bool
) -> None:
    """Why: the at-head path parsed only the URL it connects with: beside a good
    MIGRATION_DATABASE_URL a malformed DATABASE_URL was exit 78 without a manifest and
    "at head" (exit 0) with one."""
    if frozen:
        assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0
    else:
        leave_to_alembic(project)
    result = run_cli(
        ["upgrade"],
        cwd=project,
        database_url="postgresql://app@db.internal:port/app",
        MIGRATION_DATABASE_URL=database_url,
    )
    line = assert_one_line_failure(result, 78)
    assert "error: DATABASE_URL is malformed" in line


@pytest.mark.parametrize("frozen", [False, True], ids=["without_manifest", "with_manifest"])
@pytest.mark.usefixtures("at_head")
def test_the_database_url_flag_beats_migration_database_url_on_both_paths(
    project: Path, database_url: str, frozen: bool
) -> None:
    """Why: ``--database-url`` names the one database to use; the settings table says so
    (cli.py no longer repeats it), so both the lean and the full path must honour it."""
    if frozen:
        assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0
    else:
        leave_to_alembic(project)
    result = run_cli(
        ["--database-url", database_url, "upgrade"],
        cwd=project,
        database_url=None,
        MIGRATION_DATABASE_URL="postgresql://app:elsewhere@127.0.0.1:9/nowhere",
        DB_CONNECT_TIMEOUT_SECONDS="0",
        LOG_FORMAT="json",
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    lean = any(event.get("heads_from") == "manifest" for event in events)
    assert lean == frozen, events  # the lean path answered exactly when it could


def test_a_settings_error_is_reported_in_a_lowercase_log_format(tmp_path: Path) -> None:
    """Why: before the settings are validated the CLI read ``LOG_FORMAT`` by hand, in upper
    case only: ``log_format=text`` was ignored and the error came out as JSON."""
    result = run_cli(
        ["status"],
        cwd=tmp_path,
        database_url=None,
        LOG_FORMAT="",
        log_format="text",
        DDL_LOCK_TIMEOUT="forever",
    )
    line = assert_one_line_failure(result, 78)
    assert "DDL_LOCK_TIMEOUT is invalid" in line


def test_the_log_format_flag_takes_the_settings_values_in_any_case(tmp_path: Path) -> None:
    """Why: the flags' choices are the settings table's, read in any case as the variable;
    ``--log-format TEXT`` was a usage error while ``LOG_FORMAT=TEXT`` was accepted."""
    result = run_cli(
        ["--log-format", "TEXT", "status"],
        cwd=tmp_path,
        database_url=None,
        LOG_FORMAT="json",
        DDL_LOCK_TIMEOUT="forever",
    )
    line = assert_one_line_failure(result, 78)
    assert "DDL_LOCK_TIMEOUT is invalid" in line
