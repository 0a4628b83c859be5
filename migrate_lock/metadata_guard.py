"""``protect(metadata)``: an application's own ``create_all()``/``drop_all()`` refused
outside development and test, by SQLAlchemy DDL events.

The same rule as every guardrail (guard.py): the stricter of the database's marker and
ENVIRONMENT decides, and a migrated database without a marker counts as production.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Index, MetaData, Sequence, Table, event, text
from sqlalchemy.types import SchemaType

from migrate_lock.errors import ConfigError, Refused
from migrate_lock.guard import Protection, read_marker
from migrate_lock.lean.settings_schema import (
    SettingError,
    Undecided,
    collect,
    dotenv_path,
    read_dotenv,
    read_field,
    row,
)
from migrate_lock.version_table import VersionTable

if TYPE_CHECKING:
    from migrate_lock.lean.abc import LockConnection

# Set while migrate-lock itself runs create_all (init-db, after confirmation), so that an
# application module that called protect() on import does not refuse our own call.
_DDL_CONFIRMED: ContextVar[bool] = ContextVar("migrate_lock_ddl_confirmed", default=False)


def protect(metadata: Any, *, environment: str | None = None) -> None:
    """Make every SQLAlchemy create/drop of ``metadata``'s objects raise outside
    development and test.

    Covered: ``metadata.create_all()``/``drop_all()``, ``Table.create()``/``drop()``,
    ``Index.create()``/``drop()``, ``Sequence.create()``/``drop()`` and the schema types
    (``Enum``/PostgreSQL ``ENUM``/``DOMAIN``) ``.create()``/``.drop()``, for tables,
    indexes, sequences and types of ``metadata``, including those added after the call.

    ``environment`` defaults to ENVIRONMENT (or APP_ENV) at the time of the call to
    ``create_all``, read from the process environment by the settings' rule (names in any
    case, a blank value is unset; docs/configuration.md); on PostgreSQL the database's
    marker counts too, as for every guardrail (the stricter wins; a migrated database
    without a marker is production; the marker is found whatever VERSION_TABLE_SCHEMA
    says). The error (``migrate_lock.errors.Refused``) names the safe alternative:
    ``migrate-lock upgrade``. Uses SQLAlchemy's DDL events; calling it twice is harmless.
    """
    _install_listeners()
    _PROTECTED[metadata] = environment


# metadata -> the environment given to protect() (None: read ENVIRONMENT).
_PROTECTED: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()
_WHAT = {
    MetaData: "metadata.{verb}_all()",
    Table: "Table.{verb}()",
    Index: "Index.{verb}()",
    Sequence: "Sequence.{verb}()",
    SchemaType: "{type}.{verb}()",
}


def _install_listeners() -> None:
    if getattr(_install_listeners, "done", False):
        return
    for cls in _WHAT:
        event.listen(cls, "before_create", _before("create"))
        event.listen(cls, "before_drop", _before("drop"))
    _install_listeners.done = True  # type: ignore[attr-defined]


def _before(verb: str) -> Any:
    def listener(target: Any, connection: Any, **_: Any) -> None:
        found = _owner(target)
        if found is None:
            return
        _, environment = found
        kind = next(template for cls, template in _WHAT.items() if isinstance(target, cls))
        what = kind.format(verb=verb, type=type(target).__name__)
        name = getattr(target, "name", None)
        _refuse_ddl(
            what + (f" of {name!r}" if name and not isinstance(target, MetaData) else ""),
            connection,
            environment,
        )

    return listener


def _owner(target: Any) -> tuple[Any, str | None] | None:
    """The protected metadata ``target`` belongs to (and its environment), if any."""
    candidates: list[Any] = []
    if isinstance(target, MetaData):
        candidates.append(target)
    elif isinstance(target, Index):
        candidates.append(getattr(target.table, "metadata", None))
    else:
        candidates.append(getattr(target, "metadata", None))
        original = getattr(target, "_adapted_from", None)  # a dialect's copy of a type
        if original is not None:
            candidates.append(getattr(original, "metadata", None))
    for metadata in candidates:
        if metadata is not None and metadata in _PROTECTED:
            return metadata, _PROTECTED[metadata]
    if isinstance(target, (Sequence, SchemaType)):
        name = getattr(target, "name", None)
        for metadata, environment in list(_PROTECTED.items()):
            if name and _uses(metadata, target, name):
                return metadata, environment
    return None


def _uses(metadata: Any, target: Any, name: str) -> bool:
    """Whether ``metadata`` has a sequence or a column type named ``name`` like ``target``."""
    if isinstance(target, Sequence):
        return any(sequence.name == name for sequence in metadata._sequences.values())
    for table in metadata.tables.values():
        for column in table.columns:
            kind = column.type
            if isinstance(kind, SchemaType) and getattr(kind, "name", None) == name:
                return True
    return False


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
    """``field`` from the environment and ``.env`` (found as every verb finds it) by the
    settings' rule; ConfigError if it is wrong."""
    try:
        dotenv = _dotenv()
        return read_field(field, os.environ, dotenv)
    except SettingError as error:  # two spellings, two values; a missing ENV_FILE
        raise ConfigError(str(error)) from None
    except ValueError as error:  # name the spelling it came from (APP_ENV, ENVIRONMENT, …)
        origin = collect(os.environ, dotenv, {}, fields=(field,)).get(field)
        variable = origin[0] if origin else row(field).variable
        raise ConfigError(f"{variable} is invalid: {error}") from None


def _dotenv() -> dict[str, str | None]:
    path = dotenv_path(os.environ)
    try:
        return read_dotenv(path)
    except Undecided:  # a line only python-dotenv reads: read it as the verbs do
        from migrate_lock.settings import read_dotenv as read_in_full  # noqa: PLC0415 - pydantic

        return read_in_full(path)


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
    database, migrated = connection.execute(
        text("SELECT current_database(), to_regclass(:v) IS NOT NULL"), {"v": table.qualified}
    ).one()
    # The marker is found wherever it is (guard.read_marker), on this same connection.
    marker = read_marker(cast("LockConnection", _Rows(connection)))
    return Protection(database=str(database), marker=marker, local=local, migrated=bool(migrated))


class _Rows:
    """The SQLAlchemy connection as guard's light functions read it (``%s`` parameters)."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def execute(self, query: str, params: tuple[Any, ...] | list[Any] | None = None) -> Any:
        return self._connection.exec_driver_sql(query, tuple(params or ()))
