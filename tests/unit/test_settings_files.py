"""Secrets from files: ``DATABASE_URL_FILE`` and ``MIGRATION_DATABASE_URL_FILE`` (the
Docker and Kubernetes secrets convention), one rule in the settings table for both paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from migrate_lock.errors import ConfigError
from migrate_lock.lean.settings_schema import LeanSettings, Undecided, read_dotenv, read_settings
from migrate_lock.settings import load_settings

pytestmark = pytest.mark.unit

URL = "postgresql://app:Xy7-file-secret@db.internal:5432/app"
OTHER = "postgresql://migrator:Other-secret-9@db.internal:5432/app"


def secret(directory: Path, text: str, name: str = "db_url") -> str:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def lean() -> LeanSettings:
    return read_settings(os.environ, read_dotenv(Path(".env")), {})


def test_the_files_content_is_the_value(cwd: Path) -> None:
    """Why: Docker and Kubernetes mount secrets as files; the trailing newline is the file's."""
    os.environ["DATABASE_URL_FILE"] = secret(cwd, URL + "\n")
    os.environ["MIGRATION_DATABASE_URL_FILE"] = secret(cwd, OTHER + "\r\n", "migrate_url")
    full = load_settings()
    assert full.database_url == URL and full.migration_database_url == OTHER
    assert (lean().database_url, lean().migration_database_url) == (URL, OTHER)


def test_a_secret_file_named_in_dotenv_is_read_too(cwd: Path) -> None:
    (cwd / ".env").write_text(f"DATABASE_URL_FILE={secret(cwd, URL)}\n")
    assert load_settings().database_url == URL == lean().database_url


def test_the_variable_and_its_file_both_set_is_an_error(cwd: Path) -> None:
    os.environ.update(DATABASE_URL=URL, DATABASE_URL_FILE=secret(cwd, URL))
    with pytest.raises(ConfigError, match="DATABASE_URL and DATABASE_URL_FILE are both set"):
        load_settings()
    with pytest.raises(Undecided):
        lean()


def test_the_environment_beats_dotenv_across_the_two_forms(cwd: Path) -> None:
    """One setting, two spellings: the environment's beats .env's, as for every setting."""
    (cwd / ".env").write_text("DATABASE_URL=postgresql://dev:dev-pass-1@localhost/app\n")
    os.environ["DATABASE_URL_FILE"] = secret(cwd, URL)
    assert load_settings().database_url == URL == lean().database_url


def test_a_database_url_flag_beats_the_file(cwd: Path) -> None:
    os.environ["DATABASE_URL_FILE"] = secret(cwd, URL)
    assert load_settings(database_url=OTHER).database_url == OTHER


@pytest.mark.parametrize("problem", ["missing", "directory", "empty", "not utf-8"])
def test_an_unreadable_file_is_named_never_its_content(cwd: Path, problem: str) -> None:
    path = cwd / "secret"
    if problem == "directory":
        path.mkdir()
    elif problem == "empty":
        path.write_text("\n")
    elif problem == "not utf-8":
        path.write_bytes(b"postgresql://app:\xff-Xy7-file-secret@db/app")
    os.environ["MIGRATION_DATABASE_URL_FILE"] = str(path)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    with pytest.raises(Undecided):
        lean()
    message = str(raised.value)
    assert message.startswith(f"MIGRATION_DATABASE_URL_FILE names {path}, which ")
    assert "Xy7-file-secret" not in message
    assert ConfigError.exit_code == 78


def test_a_wrong_url_in_the_file_is_not_shown(cwd: Path) -> None:
    os.environ["DATABASE_URL_FILE"] = secret(cwd, "postgresql://u:hunter22@h:99999/db")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "hunter22" not in str(raised.value)
