"""protect(metadata) reads ENVIRONMENT by the settings' rule (SQLite: no marker, no server)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine
from sqlalchemy.engine import Engine

from migrate_lock.errors import ConfigError, Refused
from migrate_lock.metadata_guard import protect

pytestmark = pytest.mark.unit


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    yield engine
    engine.dispose()


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ENVIRONMENT or APP_ENV in any spelling: each test sets its own."""
    for name in list(os.environ):
        if name.lower() in ("migrate_lock_environment", "environment", "app_env"):
            monkeypatch.delenv(name)
    return monkeypatch


def models() -> MetaData:
    metadata = MetaData()
    Table("customers", metadata, Column("id", Integer, primary_key=True))
    protect(metadata)
    return metadata


@pytest.mark.parametrize(
    ("variables", "refused"),
    [
        ({"environment": "development"}, False),
        ({"environment": "production", "APP_ENV": "development"}, True),
        ({"ENVIRONMENT": "  ", "APP_ENV": "development"}, False),
        ({"ENVIRONMENT": "Development"}, False),
        ({}, True),
    ],
    ids=["lowercase_name", "lowercase_name_beats_alias", "blank_is_unset", "value_case", "unset"],
)
def test_protect_reads_environment_as_the_settings_do(
    engine: Engine, environ: pytest.MonkeyPatch, variables: dict[str, str], refused: bool
) -> None:
    """Why: names in any case and blank-is-unset hold for every setting; protect() read
    ``os.environ["ENVIRONMENT"]`` by hand and decided differently from ``upgrade``."""
    for name, value in variables.items():
        environ.setenv(name, value)
    metadata = models()

    if refused:
        with pytest.raises(Refused):
            metadata.create_all(engine)
    else:
        metadata.create_all(engine)


def test_two_spellings_with_different_values_are_a_configuration_error(
    engine: Engine, environ: pytest.MonkeyPatch
) -> None:
    environ.setenv("ENVIRONMENT", "development")
    environ.setenv("environment", "production")

    with pytest.raises(ConfigError, match="ENVIRONMENT and environment are both set"):
        models().create_all(engine)


def test_a_wrong_environment_names_the_variable(
    engine: Engine, environ: pytest.MonkeyPatch
) -> None:
    environ.setenv("APP_ENV", "preview")

    with pytest.raises(ConfigError, match=r"^APP_ENV is invalid: must be one of"):
        models().create_all(engine)


def test_the_environment_argument_is_read_as_the_variable_is(engine: Engine) -> None:
    """``protect(metadata, environment="Development")`` means development, as the variable."""
    metadata = MetaData()
    Table("customers", metadata, Column("id", Integer, primary_key=True))
    protect(metadata, environment="Development")

    metadata.create_all(engine)
