"""Which ``.env`` is read: ``--env-file``, ``ENV_FILE``, else the first one upward from the
current directory, not above the repository's root. Every reader of ``.env`` (the full
settings, the lean reader, the CLI's early logging, ``protect()``) uses ``dotenv_path``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine

from migrate_lock.errors import ConfigError, Refused
from migrate_lock.lean.settings_schema import (
    SettingError,
    dotenv_path,
    read_dotenv,
    read_settings,
)
from migrate_lock.metadata_guard import protect
from migrate_lock.settings import load_settings

pytestmark = pytest.mark.unit

URL = "postgresql://app:Xy7-long-one@db.internal:5432/app"


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    """A repository (``.git``) with ``backend/app`` inside, the current directory being
    ``backend``; an empty environment."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "backend" / "app").mkdir(parents=True)
    with mock.patch.dict(os.environ, clear=True):
        before = os.getcwd()
        os.chdir(root / "backend")
        try:
            yield root
        finally:
            os.chdir(before)


def test_a_dotenv_at_the_repository_root_is_found_from_a_subdirectory(repo: Path) -> None:
    """Why: from backend/ `alembic` worked while migrate-lock said DATABASE_URL is not set."""
    (repo / ".env").write_text(f"DATABASE_URL={URL}\nENVIRONMENT=local\n")

    assert dotenv_path(os.environ) == Path("..", ".env")  # named as from here
    settings = load_settings()
    lean = read_settings(os.environ, read_dotenv(dotenv_path(os.environ)), {})
    assert settings.database_url == lean.database_url == URL
    assert settings.environment == lean.environment == "development"


def test_the_nearest_dotenv_wins(repo: Path) -> None:
    (repo / ".env").write_text("LOG_LEVEL=ERROR\n")
    (repo / "backend" / ".env").write_text("LOG_LEVEL=DEBUG\n")
    assert dotenv_path(os.environ) == Path(".env")
    assert load_settings().log_level == "DEBUG"


def test_the_search_stops_at_the_repository_root(repo: Path) -> None:
    """Why: a .env above the repository belongs to something else."""
    (repo.parent / ".env").write_text("LOG_LEVEL=ERROR\n")
    assert dotenv_path(os.environ) is None
    assert load_settings().log_level == "INFO"


def test_env_file_names_the_file_and_beats_the_search(repo: Path) -> None:
    (repo / ".env").write_text("LOG_LEVEL=ERROR\n")
    (repo / "deploy.env").write_text("LOG_LEVEL=WARNING\n")
    os.environ["ENV_FILE"] = str(repo / "deploy.env")
    assert load_settings().log_level == "WARNING"
    # --env-file (an override) beats ENV_FILE; a relative path is from the current directory
    (repo / "backend" / "flag.env").write_text("LOG_LEVEL=DEBUG\n")
    assert dotenv_path(os.environ, {"env_file": Path("flag.env")}) == Path("flag.env")
    assert load_settings(env_file=Path("flag.env")).log_level == "DEBUG"


@pytest.mark.usefixtures("repo")
@pytest.mark.parametrize("given", ["ENV_FILE", "--env-file"])
def test_a_missing_named_env_file_is_a_configuration_error(given: str) -> None:
    """Why: a file named on purpose and not there is a deployment mistake, not "no .env"."""
    overrides = {"env_file": Path("missing.env")} if given == "--env-file" else {}
    if given == "ENV_FILE":
        os.environ["ENV_FILE"] = "missing.env"
    with pytest.raises(ConfigError, match=r"ENV_FILE names missing.env, a file that does not"):
        load_settings(**overrides)
    with pytest.raises(SettingError):  # the lean path defers on it (a ValueError)
        dotenv_path(os.environ, overrides)


def test_env_file_inside_a_dotenv_is_ignored(repo: Path) -> None:
    """Why: the variable that says which .env to read cannot come from a .env."""
    (repo / ".env").write_text("ENV_FILE=missing.env\nLOG_LEVEL=ERROR\n")
    settings = load_settings()
    assert settings.env_file is None and settings.log_level == "ERROR"


def test_protect_reads_environment_from_the_dotenv_it_finds(repo: Path) -> None:
    """Why: protect() read only the process environment, so a production .env let an
    application's create_all() through."""
    (repo / ".env").write_text("ENVIRONMENT=prod\n")
    metadata = MetaData()
    Table("customers", metadata, Column("id", Integer, primary_key=True))
    protect(metadata)
    engine = create_engine("sqlite://")
    try:
        with pytest.raises(Refused, match="production"):
            metadata.create_all(engine)
    finally:
        engine.dispose()
