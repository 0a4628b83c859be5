"""The application's own ENVIRONMENT: migrate-lock's variable wins, common names are aliases.

Applications already use ENVIRONMENT (and APP_ENV) with values of their own (``local``,
``dev``, ``prod``, ``preview``…). Both readers of the settings table (``load_settings``
and the lean ``read_settings``) must read them alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from migrate_lock.errors import ConfigError
from migrate_lock.guard import PLACEHOLDER_PASSWORDS, check_database_urls
from migrate_lock.lean.settings_schema import Undecided, read_dotenv, read_settings
from migrate_lock.settings import load_settings

pytestmark = pytest.mark.unit


def both(**environ: str) -> tuple[str | None, str | None]:
    """``environment`` as the full path and the lean path read it (the lean one must not
    defer here)."""
    os.environ.update(environ)
    lean = read_settings(os.environ, read_dotenv(Path(".env")), {})
    return load_settings().environment, lean.environment


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("local", "development"),
        ("dev", "development"),
        ("DEV", "development"),
        ("prod", "production"),
        ("Prod", "production"),
        ("stage", "staging"),
        ("ci", "test"),
        ("QA", "test"),
        ("development", "development"),
        ("Production", "production"),
    ],
)
@pytest.mark.usefixtures("cwd")
def test_common_application_names_are_aliases(value: str, expected: str) -> None:
    """Why: ENVIRONMENT=local (full-stack-fastapi-template) made every verb exit 78."""
    assert both(ENVIRONMENT=value) == (expected, expected)


@pytest.mark.usefixtures("cwd")
def test_migrate_lock_environment_beats_the_applications_unknown_value() -> None:
    """Why: an application value we do not know must not fail once ours is set."""
    assert both(ENVIRONMENT="preview-42", MIGRATE_LOCK_ENVIRONMENT="staging") == (
        "staging",
        "staging",
    )
    assert both(APP_ENV="sandbox", MIGRATE_LOCK_ENVIRONMENT="prod") == (
        "production",
        "production",
    )


def test_migrate_lock_environment_in_dotenv_beats_environment_in_the_environment(
    cwd: Path,
) -> None:
    """Why: ours is migrate-lock's own name: it wins wherever it is set."""
    (cwd / ".env").write_text("MIGRATE_LOCK_ENVIRONMENT=development\n")
    assert both(ENVIRONMENT="preview") == ("development", "development")


@pytest.mark.usefixtures("cwd")
def test_an_unknown_value_lists_what_is_accepted_and_how_to_map_it() -> None:
    os.environ["ENVIRONMENT"] = "preview"
    with pytest.raises(ConfigError) as raised:
        load_settings()
    with pytest.raises(Undecided):
        read_settings(os.environ, {}, {})
    message = str(raised.value)
    assert message.startswith("ENVIRONMENT is invalid (got 'preview'): must be one of")
    for accepted in ("development, test, staging, production", "local, dev → development"):
        assert accepted in message
    assert "prod → production" in message and "ci, qa → test" in message
    assert "set MIGRATE_LOCK_ENVIRONMENT" in message
    assert ConfigError.exit_code == 78


@pytest.mark.usefixtures("cwd")
def test_an_unknown_value_of_our_own_variable_is_refused_too() -> None:
    os.environ.update(MIGRATE_LOCK_ENVIRONMENT="live", ENVIRONMENT="production")
    with pytest.raises(ConfigError, match="MIGRATE_LOCK_ENVIRONMENT is invalid"):
        load_settings()


@pytest.mark.parametrize(
    "password", ["changethis", "ChangeThis", "change_this", "your-password", "supersecret"]
)
def test_production_refuses_template_placeholder_passwords(password: str) -> None:
    """Why: full-stack-fastapi-template's .env ships POSTGRES_PASSWORD=changethis."""
    url = f"postgresql://app:{password}@db.internal:5432/app"
    with pytest.raises(ConfigError, match="default or placeholder password") as raised:
        check_database_urls("production", {"DATABASE_URL": url})
    assert password not in str(raised.value)


def test_placeholders_include_the_common_templates() -> None:
    expected = {"changethis", "changeme", "change_this", "your-password", "example", "secret"}
    assert expected <= PLACEHOLDER_PASSWORDS
    assert all(word == word.lower() for word in PLACEHOLDER_PASSWORDS)  # compared lowered
