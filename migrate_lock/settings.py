"""Settings from the environment (and an optional ``.env``), validated up front.

A wrong value fails fast with exit 78 and one line naming the variable and what is
allowed. Keyword arguments (the CLI's flags) beat the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from migrate_lock.dsn import DatabaseUrl, parse_database_url
from migrate_lock.errors import ConfigError
from migrate_lock.rules import DURATION, IDENTIFIER, INT64

Environment = Literal["development", "test", "staging", "production"]

_DURATION = DURATION
_IDENTIFIER = IDENTIFIER
_INT64 = INT64


class Settings(BaseSettings):
    """Every setting migrate-lock reads. See docs/configuration.md for each one."""

    model_config = SettingsConfigDict(
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    migration_database_url: str | None = Field(
        default=None, validation_alias="MIGRATION_DATABASE_URL"
    )
    environment: Environment | None = Field(
        default=None, validation_alias=AliasChoices("ENVIRONMENT", "APP_ENV")
    )
    migration_lock_timeout_seconds: float = Field(
        default=600.0, ge=0, validation_alias="MIGRATION_LOCK_TIMEOUT_SECONDS"
    )
    migration_lock_key: int | None = Field(
        default=None, ge=_INT64[0], le=_INT64[1], validation_alias="MIGRATION_LOCK_KEY"
    )
    migration_lock_scope: Literal["auto", "session", "transaction"] = Field(
        default="auto", validation_alias="MIGRATION_LOCK_SCOPE"
    )
    ddl_lock_timeout: str = Field(default="10s", validation_alias="DDL_LOCK_TIMEOUT")
    ddl_statement_timeout: str = Field(default="0", validation_alias="DDL_STATEMENT_TIMEOUT")
    ddl_idle_in_transaction_timeout: str = Field(
        default="30s", validation_alias="DDL_IDLE_IN_TRANSACTION_TIMEOUT"
    )
    db_connect_timeout_seconds: float = Field(
        default=30.0, ge=0, validation_alias="DB_CONNECT_TIMEOUT_SECONDS"
    )
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", validation_alias="LOG_FORMAT"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", validation_alias="LOG_LEVEL"
    )
    alembic_config: Path = Field(default=Path("alembic.ini"), validation_alias="ALEMBIC_CONFIG")
    version_table: str = Field(default="alembic_version", validation_alias="VERSION_TABLE")
    version_table_schema: str | None = Field(default=None, validation_alias="VERSION_TABLE_SCHEMA")
    seeds_dir: Path | None = Field(default=None, validation_alias="SEEDS_DIR")
    seed_on_upgrade: bool = Field(default=True, validation_alias="SEED_ON_UPGRADE")
    migrate_on_start: bool = Field(default=True, validation_alias="MIGRATE_ON_START")
    entrypoint_passthrough: str = Field(
        default="migrate-lock alembic", validation_alias="ENTRYPOINT_PASSTHROUGH"
    )
    confirm_destructive: str | None = Field(default=None, validation_alias="CONFIRM_DESTRUCTIVE")
    staging_url_checks: bool = Field(default=True, validation_alias="STAGING_URL_CHECKS")
    allow_localhost_database: bool = Field(
        default=False, validation_alias="ALLOW_LOCALHOST_DATABASE"
    )
    backup_dir: Path = Field(default=Path("backups"), validation_alias="BACKUP_DIR")
    backup_keep_days: float = Field(default=7.0, ge=0, validation_alias="BACKUP_KEEP_DAYS")
    backup_keep_last: int = Field(default=3, ge=1, validation_alias="BACKUP_KEEP_LAST")
    backup_before_upgrade: bool = Field(default=False, validation_alias="BACKUP_BEFORE_UPGRADE")
    pg_bin_dir: Path | None = Field(default=None, validation_alias="PG_BIN_DIR")
    smoke_expected_heads: str | None = Field(default=None, validation_alias="SMOKE_EXPECTED_HEADS")
    smoke_stairway_from: str | None = Field(default=None, validation_alias="SMOKE_STAIRWAY_FROM")
    lint_exclude_rules: str = Field(default="", validation_alias="LINT_EXCLUDE_RULES")
    lint_include_rules: str = Field(default="", validation_alias="LINT_INCLUDE_RULES")

    @field_validator("entrypoint_passthrough")
    @classmethod
    def _command_names(cls, value: str) -> str:
        names = value.replace(",", " ").split()
        if any("/" in name for name in names):
            raise ValueError("must be command names, not paths, separated by spaces or commas")
        return " ".join(names)

    @field_validator(
        "log_format", "log_level", "environment", "migration_lock_scope", mode="before"
    )
    @classmethod
    def _case_insensitive(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return (
                value.upper()
                if value.lower() in ("debug", "info", "warning", "error")
                else (value.lower() or None)
            )
        return value

    @field_validator("ddl_lock_timeout", "ddl_statement_timeout", "ddl_idle_in_transaction_timeout")
    @classmethod
    def _postgres_duration(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError("must be a PostgreSQL duration such as 0, 500ms, 10s, 5min or 1h")
        return "".join(value.split())

    @field_validator("version_table", "version_table_schema")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and not _IDENTIFIER.match(value):
            raise ValueError("must be a plain SQL identifier (letters, digits, _)")
        return value

    @field_validator(
        "database_url",
        "migration_database_url",
        "confirm_destructive",
        "smoke_expected_heads",
        "smoke_stairway_from",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    def migration_url(self) -> DatabaseUrl:
        """The URL migrations run on: MIGRATION_DATABASE_URL if set, else DATABASE_URL."""
        if self.migration_database_url:
            return parse_database_url(
                self.migration_database_url, variable="MIGRATION_DATABASE_URL"
            )
        if self.database_url:
            return parse_database_url(self.database_url, variable="DATABASE_URL")
        raise ConfigError(
            "DATABASE_URL is not set",
            hint="export DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DBNAME "
            "(or pass --database-url)",
        )


def load_settings(**overrides: Any) -> Settings:
    """Read the environment, apply ``overrides`` (None means "not given"), and validate.

    Raises ConfigError (exit 78) naming the first wrong variable.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        settings = Settings(**given)
    except ValidationError as error:
        raise _config_error(error) from None
    # Validate URLs now, so a malformed one fails before anything else happens.
    for field, variable in (
        ("database_url", "DATABASE_URL"),
        ("migration_database_url", "MIGRATION_DATABASE_URL"),
    ):
        value = getattr(settings, field)
        if value:
            parse_database_url(value, variable=variable)
    return settings


def variable_name(field: str) -> str:
    """The environment variable behind a settings field."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return field.upper()


def _config_error(error: ValidationError) -> ConfigError:
    first = error.errors()[0]
    location = first["loc"][0] if first["loc"] else "settings"
    field = str(location)
    try:
        variable = variable_name(field)
    except KeyError:
        variable = field.upper()
    given = first.get("input")
    shown = "" if given is None or "URL" in variable else f" (got {str(given)[:60]!r})"
    message = first["msg"].removeprefix("Value error, ")
    return ConfigError(f"{variable} is invalid{shown}: {message}")
