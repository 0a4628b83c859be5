"""``protect(metadata)``: an application's own ``create_all()``/``drop_all()`` refused
outside development and test, by SQLAlchemy DDL events.

The same rule as every guardrail (guard.py): the stricter of the database's marker and
ENVIRONMENT decides, and a migrated database without a marker counts as production.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event, text

from migrate_lock.errors import ConfigError, Refused
from migrate_lock.guard import RANK, Marker, Protection, marker_table
from migrate_lock.lean.settings_schema import SettingError, read_field, row
from migrate_lock.version_table import VersionTable

# Set while migrate-lock itself runs create_all (init-db, after confirmation), so that an
# application module that called protect() on import does not refuse our own call.
_DDL_CONFIRMED: ContextVar[bool] = ContextVar("migrate_lock_ddl_confirmed", default=False)


def protect(metadata: Any, *, environment: str | None = None) -> None:
    """Make ``metadata.create_all()`` and ``drop_all()`` raise outside development and test.

    ``environment`` defaults to ENVIRONMENT (or APP_ENV) at the time of the call to
    ``create_all``, read from the process environment by the settings' rule (names in any
    case, a blank value is unset; docs/configuration.md), as are VERSION_TABLE and
    VERSION_TABLE_SCHEMA; on PostgreSQL the database's marker counts too, as for every
    guardrail (the stricter wins; a migrated database without a marker is production).
    The error (``migrate_lock.errors.Refused``) names the safe alternative:
    ``migrate-lock upgrade``. Uses SQLAlchemy's DDL events; calling it twice is harmless.
    """

    def refuse_create(target: Any, connection: Any, **_: Any) -> None:
        _refuse_ddl("metadata.create_all()", connection, environment)

    def refuse_drop(target: Any, connection: Any, **_: Any) -> None:
        _refuse_ddl("metadata.drop_all()", connection, environment)

    if getattr(metadata, "_migrate_lock_protected", False):
        return
    event.listen(metadata, "before_create", refuse_create)
    event.listen(metadata, "before_drop", refuse_drop)
    metadata._migrate_lock_protected = True


@contextmanager
def ddl_confirmed() -> Iterator[None]:
    """Let a protected metadata's create_all run (init-db, after its own confirmation)."""
    token = _DDL_CONFIRMED.set(True)
    try:
        yield
    finally:
        _DDL_CONFIRMED.reset(token)


def _refuse_ddl(what: str, connection: Any, environment: str | None) -> None:
    if _DDL_CONFIRMED.get():
        return
    local: str | None = (
        _setting("environment") if environment is None else _parse("environment", environment)
    )
    if connection.dialect.name == "postgresql":
        guard = _sqlalchemy_protection(connection, local)
    else:  # no marker to read: ENVIRONMENT alone decides
        name = str(connection.engine.url.database or connection.dialect.name)
        guard = Protection(database=name, marker=None, local=local, migrated=False)
    if not guard.protected:
        return
    raise Refused(
        f"{what} is refused: {guard.describe()} and its schema is managed by migrations",
        hint="run `migrate-lock upgrade` to create or change tables (or `migrate-lock init-db` "
        "for a brand-new database); create_all/drop_all run only with ENVIRONMENT=development "
        "or test",
    )


def _setting(field: str) -> Any:
    """``field`` from the environment by the settings' rule; ConfigError if it is wrong."""
    try:
        return read_field(field, os.environ)
    except SettingError as error:  # two spellings, two values: the message names both
        raise ConfigError(str(error)) from None
    except ValueError as error:
        raise ConfigError(f"{row(field).variable} is invalid: {error}") from None


def _parse(field: str, value: str) -> Any:
    """A value given in code, read as the variable's would be (any case; blank is unset)."""
    try:
        return row(field).parse(value)
    except ValueError as error:
        raise ConfigError(f"{field}={value!r} is invalid: {error}") from None


def _sqlalchemy_protection(connection: Any, local: str | None) -> Protection:
    schema = (
        _setting("version_table_schema")
        or connection.execute(text("SELECT current_schema()")).scalar_one_or_none()
    )
    table = VersionTable(str(schema or "public"), _setting("version_table"))
    database, migrated, has_marker = connection.execute(
        text("SELECT current_database(), to_regclass(:v) IS NOT NULL, to_regclass(:m) IS NOT NULL"),
        {"v": table.qualified, "m": marker_table(table)},
    ).one()
    marker = None
    if has_marker:
        found = connection.execute(
            text(f"SELECT environment, set_at::text, set_by FROM {marker_table(table)} LIMIT 1")
        ).first()
        if found is not None and found[0] in RANK:
            marker = Marker(str(found[0]), str(found[1]), str(found[2]))
    return Protection(database=str(database), marker=marker, local=local, migrated=bool(migrated))
