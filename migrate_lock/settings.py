"""Settings from the environment (and an optional ``.env``), validated up front.

A wrong value fails fast with exit 78 and one line naming the variable and what is
allowed. Keyword arguments (the CLI's flags) beat the environment.

The settings table is ``migrate_lock.lean.settings_schema`` (standard library only, so
the at-head fast path reads it without pydantic). This model is derived from it, so no
rule is written twice:

- **fields**: made from the table by ``pydantic.create_model``: each row's type (from
  the table's annotations), default and variables (as validation aliases);
- **validation**: each field's before-validator calls the row's own ``parse``, the same
  function the lean reader calls (no second regex, list of choices or range here);
- **which value counts**: one pydantic-settings source calls the table's ``collect``
  (names in any case, blank means unset, flags beat the environment beats ``.env``, two
  spellings with different values are an error, ``DATABASE_URL_FILE`` for a secret in a
  file), on ``os.environ`` and on the ``.env`` the table's ``dotenv_path`` finds, as
  python-dotenv reads it;
- **types for mypy**: under TYPE_CHECKING the table's own typed class, ``LeanSettings``,
  is a base class of ``Settings``, so ``settings.migration_lock_timeout_seconds`` is a
  ``float`` to mypy without a second list of fields.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from pydantic import AliasChoices, BeforeValidator, Field, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from migrate_lock.dsn import DatabaseUrl, migration_url_of, parse_database_url
from migrate_lock.errors import ConfigError, ProjectFileError
from migrate_lock.lean import settings_schema as schema


def _validator(row: schema.Setting, value: Any) -> Any:
    # Whatever arrives (text from the environment, a typed keyword argument, the
    # default) is read by the table's parser, as the lean reader reads it.
    if value is None or value is row.default:
        return value
    return row.parse(value if isinstance(value, str) else str(value))


def _fields() -> dict[str, Any]:
    hints = get_type_hints(schema.LeanSettings)
    return {
        row.field: (
            Annotated[hints[row.field], BeforeValidator(partial(_validator, row))],
            Field(
                default=row.default,
                validation_alias=AliasChoices(row.field, *row.variables),
                description=row.doc,
            ),
        )
        for row in schema.SCHEMA
    }


if TYPE_CHECKING:

    class _Fields(BaseSettings, schema.LeanSettings):
        """mypy's view of the fields: the table's typed attributes."""

else:
    _Fields = create_model("_Fields", __base__=BaseSettings, **_fields())


class Settings(_Fields):
    """Every setting migrate-lock reads. See docs/configuration.md for each one."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """One source: the table's rule over keyword arguments, the environment and .env."""
        given = getattr(init_settings, "init_kwargs", {})
        return (_SchemaSource(settings_cls, given),)

    def migration_url(self) -> DatabaseUrl:
        """The URL migrations run on: MIGRATION_DATABASE_URL if set, else DATABASE_URL."""
        return migration_url_of(self.migration_database_url, self.database_url)


class _SchemaSource(PydanticBaseSettingsSource):
    """The raw text that counts for each field, chosen by the table's ``collect``."""

    def __init__(self, settings_cls: type[BaseSettings], overrides: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.overrides = overrides

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        raw = schema.collect(os.environ, dotenv_for(self.overrides), self.overrides)
        return {field: text for field, (_, text) in raw.items()}


def dotenv_for(overrides: Mapping[str, Any] | None = None) -> dict[str, str | None]:
    """The ``.env`` that ``overrides`` (``env_file``) and the environment point at, or the
    one found upward from the current directory (``schema.dotenv_path``), read in full.
    SettingError when a named file does not exist."""
    return read_dotenv(schema.dotenv_path(os.environ, overrides))


def read_dotenv(path: Path | None) -> dict[str, str | None]:
    """A ``.env`` file as python-dotenv reads it (empty for None or a missing file).

    A file that is not UTF-8, or has a line python-dotenv cannot parse (an unterminated
    quote: it would drop the line with a warning, and with it perhaps ENVIRONMENT), is a
    ProjectFileError (exit 78) naming the line.
    """
    if path is None or not path.is_file():
        return {}
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProjectFileError(
            str(path),
            f"is not UTF-8 (byte 0x{raw[error.start]:02x})",
            line=raw.count(b"\n", 0, error.start) + 1,
            hint="save .env as UTF-8",
        ) from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ProjectFileError(
                str(path),
                "cannot be parsed (an unterminated quote?), and would be skipped",
                line=binding.original.line,
                hint="close the quote, or quote a value that holds # or spaces",
            )
    return dotenv_values(stream=io.StringIO(text))


def load_settings(**overrides: Any) -> Settings:
    """Read the environment, apply ``overrides`` (None means "not given"), and validate.

    Raises ConfigError (exit 78) naming the first wrong variable.
    """
    try:
        settings = Settings(**overrides)
    except schema.SettingError as error:
        raise ConfigError(str(error)) from None
    except ValidationError as error:
        raise _config_error(error, overrides) from None
    # Validate URLs now, so a malformed one fails before anything else happens.
    for field in ("database_url", "migration_database_url"):
        value = getattr(settings, field)
        if value:
            parse_database_url(value, variable=_url_origin(field, overrides))
    return settings


def _url_origin(field: str, overrides: dict[str, Any]) -> str:
    """How a URL's messages name it: ``DATABASE_URL``, or ``DATABASE_URL (from
    DATABASE_URL_FILE)`` when a secret file holds it (the file is where to look)."""
    variable = variable_name(field)
    origin = schema.collect(os.environ, dotenv_for(overrides), overrides, fields=(field,))
    spelling = origin[field][0] if field in origin else variable
    return f"{variable} (from {spelling})" if spelling.upper().endswith("_FILE") else variable


def variable_name(field: str) -> str:
    """The environment variable behind a settings field."""
    return schema.row(field).variable


def _config_error(error: ValidationError, overrides: dict[str, Any]) -> ConfigError:
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "settings"
    try:
        row = schema.row(field)
    except KeyError:
        return ConfigError(f"{field.upper()} is invalid: {first['msg']}")
    # Name the spelling the value came from (APP_ENV, environment, …).
    origin = schema.collect(os.environ, dotenv_for(overrides), overrides).get(field)
    variable = origin[0] if origin else row.variable
    given = first.get("input")
    shown = "" if given is None or row.secret else f" (got {str(given)[:60]!r})"
    message = first["msg"].removeprefix("Value error, ")
    return ConfigError(f"{variable} is invalid{shown}: {message}")
