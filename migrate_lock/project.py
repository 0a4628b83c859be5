"""A project as migrate-lock sees it: settings, Alembic config, scripts, and the database.

Every verb starts here, so every verb validates the same way and in the same order:
settings first, then the project's files, then the network.
"""

from __future__ import annotations

import configparser
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import psycopg.errors
from alembic.util import CommandError

from migrate_lock import lock
from migrate_lock.connection import connect
from migrate_lock.dsn import DatabaseUrl
from migrate_lock.errors import ConfigError
from migrate_lock.guard import check_startup
from migrate_lock.lean.manifest import ScriptFiles, script_files
from migrate_lock.lock import DdlTimeouts, Hold, lock_key
from migrate_lock.logs import log
from migrate_lock.revisions import Scripts, load_scripts
from migrate_lock.runner import alembic_config, ini_error
from migrate_lock.scope import ScopeChoice, choose_scope
from migrate_lock.settings import Settings, load_settings
from migrate_lock.state import SchemaState, compare
from migrate_lock.version_table import (
    VersionTable,
    current_schema,
    database_revisions,
    seen_revisions,
    version_rows,
)

if TYPE_CHECKING:
    from alembic.config import Config


class Project:
    """The code side: Alembic config and scripts, loaded lazily and once."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        output: TextIO | None = None,
        connection: psycopg.Connection[Any] | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self._output = output
        #: A caller's open autocommit connection to the migration database, which
        #: ``session()`` uses (and leaves open) while it is not broken: a fleet worker's,
        #: reused across tenants.
        self._connection = connection
        log.configure(log_format=self.settings.log_format, level=self.settings.log_level)

    @cached_property
    def config(self) -> Config:
        url = self._url_if_set()
        config = alembic_config(
            self.settings.alembic_config,
            sqlalchemy_url=url.sqlalchemy if url else None,
            output=self._output,
        )
        if self.settings.migration_tenant is not None:
            config.attributes["tenant"] = self.settings.migration_tenant
        return config

    @cached_property
    def scripts(self) -> Scripts:
        """The scripts, loaded once per process: a later Project of the same alembic.ini
        reuses them while no revision file changed (size, modification time, name)."""
        key = _scripts_key(self.settings)
        cached = _LOADED.get(key) if key is not None else None
        if cached is not None:
            return cached
        config = self.config
        try:
            scripts = load_scripts(config, allow_none=self.settings.allow_no_revisions)
        except (configparser.Error, UnicodeDecodeError) as error:
            raise ini_error(self.settings.alembic_config, error) from None
        except CommandError as error:
            raise ConfigError(
                f"cannot load the migration scripts of {self.settings.alembic_config}: {error}",
                hint="check script_location in alembic.ini",
            ) from None
        if key is not None:
            _LOADED.clear()  # one project per process, as a rule: keep the latest only
            _LOADED[key] = scripts
        return scripts

    @cached_property
    def url(self) -> DatabaseUrl:
        return self.settings.migration_url()

    @contextmanager
    def session(
        self,
        *,
        application_name: str = "migrate-lock",
        on_retry: Callable[[], None] | None = None,
    ) -> Iterator[DatabaseSession]:
        """One autocommit connection to the migration database, closed on the way out
        (the caller's, given to the Project, is used as it is and left open)."""
        given = self._connection
        if given is not None and not (given.closed or given.broken):
            yield DatabaseSession(self, given)
            return
        connection = connect(
            self.url,
            timeout_seconds=self.settings.db_connect_timeout_seconds,
            application_name=application_name,
            on_retry=on_retry,
        )
        try:
            yield DatabaseSession(self, connection)
        finally:
            connection.close()

    def _url_if_set(self) -> DatabaseUrl | None:
        if self.settings.migration_database_url or self.settings.database_url:
            return self.url
        return None


#: Scripts already loaded in this process, by _scripts_key.
_LOADED: dict[tuple[object, ...], Scripts] = {}


#: Where alembic.ini says the revision files are, by _ini_key (parsing it costs ~2 ms).
_LOCATED: dict[tuple[object, ...], tuple[ScriptFiles | None]] = {}


def _ini_key(ini: Path) -> tuple[object, ...]:
    """alembic.ini's path, size and time, and the working directory (relative locations)."""
    about = ini.stat()
    return (str(ini.absolute()), about.st_size, about.st_mtime_ns, os.getcwd())


def located_script_files(alembic_ini: Path | str) -> ScriptFiles | None:
    """lean.manifest.script_files, read again only when alembic.ini changed."""
    ini = Path(alembic_ini)
    try:
        key = _ini_key(ini)
    except OSError:
        return None
    # .get(), never `in` then [key]: a readiness probe may call from several threads.
    known = _LOCATED.get(key)
    if known is not None:
        return known[0]
    found = script_files(ini)
    _LOCATED.clear()
    _LOCATED[key] = (found,)
    return found


def _scripts_key(settings: Settings) -> tuple[object, ...] | None:
    """What the loaded scripts depend on: alembic.ini (path, size, time), the working
    directory, and every revision file's name, size and modification time. None (no
    caching) when only Alembic knows where the files are (package:resource)."""
    ini = Path(settings.alembic_config)
    try:
        files = located_script_files(ini)
        if files is None:
            return None
        stats = files.stats()
        return (
            *_ini_key(ini),
            settings.allow_no_revisions,
            files.script_dir,
            files.version_dirs,
            tuple(tuple(entry) for entry in stats),
        )
    except OSError:
        return None  # let the load report it


#: What a connection's server told us that stays true for the connection's life (its
#: database's name, the lock scope for a MIGRATION_LOCK_SCOPE): a connection reused by
#: many sessions (a fleet worker's, one per tenant) asks once.
_KNOWN: weakref.WeakKeyDictionary[Any, dict[object, Any]] = weakref.WeakKeyDictionary()


def _known(connection: Any) -> dict[object, Any]:
    try:
        return _KNOWN.setdefault(connection, {})
    except TypeError:  # not weakly referenceable (a test's stand-in): nothing is kept
        return {}


@dataclass
class DatabaseSession:
    """The database side of a project, on one connection."""

    project: Project
    connection: psycopg.Connection[Any]

    @cached_property
    def version_table(self) -> VersionTable:
        settings = self.project.settings
        schema = settings.version_table_schema or current_schema(self.connection)
        return VersionTable(schema=schema, name=settings.version_table)

    @cached_property
    def database_name(self) -> str:
        known = _known(self.connection)
        if "database" not in known:
            row = self.connection.execute("SELECT current_database()").fetchone()
            known["database"] = str(row[0]) if row else self.project.url.database
        return str(known["database"])

    @property
    def marker_settled(self) -> bool:
        """Whether this connection already read a committed environment marker at or
        above ENVIRONMENT (``remember_environment`` returned True): nothing about the
        marker is left to do, so a fleet worker's later tenants of the database skip it."""
        return bool(_known(self.connection).get(self._settled_key))

    def settle_marker(self) -> None:
        _known(self.connection)[self._settled_key] = True

    @property
    def _settled_key(self) -> tuple[str, str | None]:
        return ("marker settled", self.project.settings.environment)

    @cached_property
    def lock_key(self) -> int:
        override = self.project.settings.migration_lock_key
        if override is not None:
            return override
        table = self.version_table
        return lock_key(self.database_name, table.schema, table.name)

    @cached_property
    def lock_scope(self) -> ScopeChoice:
        """Session or transaction lock (MIGRATION_LOCK_SCOPE; ``auto`` looks for a pooler).

        Judged by the host and port libpq actually connected to: with a multi-host URL
        that is one of several, as the lean path judges it too.
        """
        setting = self.project.settings.migration_lock_scope
        known = _known(self.connection)
        choice = known.get(("scope", setting))
        if choice is None:
            endpoint = self.connection.info
            choice = choose_scope(
                setting, host=endpoint.host, port=endpoint.port, connection=self.connection
            )
            known[("scope", setting)] = choice
        return choice

    def current(self) -> tuple[str, ...] | None:
        return database_revisions(self.connection, self.version_table)

    def state(self, target: tuple[str, ...], scripts: Scripts) -> SchemaState:
        """Where the database stands against ``target``, read now."""
        return self.compare(self.current(), target, scripts)

    def compare(
        self, current: tuple[str, ...] | None, target: tuple[str, ...], scripts: Scripts
    ) -> SchemaState:
        """Where revisions ``current`` (None: no version table) stand against ``target``
        (the history is read only for a revision the scripts do not know)."""

        def seen(revisions: Iterable[str]) -> set[str]:
            return seen_revisions(self.connection, self.version_table, revisions)

        return compare(scripts, current, target, seen)

    def written_revisions(self) -> tuple[str, ...] | None:
        """The version table right after Alembic wrote it, outside a transaction: read in
        one statement (were it missing after all, the server logs the error of that read)."""
        try:
            return version_rows(self.connection, self.version_table)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return None

    @contextmanager
    def migration_lock(
        self,
        *,
        work_is_done: Callable[[], bool] | None = None,
        waited_before: float = 0.0,
        needs_session_scope: str | None = None,
    ) -> Iterator[Hold]:
        """Hold the migration lock on this session's connection (lock.py's ``migration_lock``
        with this project's key, scope, lock wait and DDL timeouts).

        ``needs_session_scope`` names an operation that cannot run inside the lock's
        one transaction: in the transaction scope it is refused (exit 78), nothing run.
        """
        settings = self.project.settings
        scope = self.lock_scope
        if needs_session_scope is not None and scope.transaction:
            raise ConfigError(
                f"{needs_session_scope} needs a session-scoped migration lock, and the lock "
                f"scope is transaction ({scope.reason}); nothing was changed",
                hint="run it with MIGRATION_DATABASE_URL set to a direct connection to "
                "PostgreSQL, not through a pooler, and MIGRATION_LOCK_SCOPE=session",
            )
        with lock.migration_lock(
            self.connection,
            self.lock_key,
            scope=scope.scope,
            timeout_seconds=settings.migration_lock_timeout_seconds,
            timeouts=DdlTimeouts(
                lock_timeout=settings.ddl_lock_timeout,
                statement_timeout=settings.ddl_statement_timeout,
                idle_in_transaction_timeout=settings.ddl_idle_in_transaction_timeout,
                search_path=settings.migration_search_path,
            ),
            work_is_done=work_is_done,
            waited_before=waited_before,
        ) as hold:
            yield hold


@contextmanager
def migration_lock(
    settings: Settings | None = None, *, application_name: str = "migrate-lock application"
) -> Iterator[Hold]:
    """Run application code under the migration lock (``migrate_lock.migration_lock``).

    Opens a connection to the migration database, waits for the same lock every
    replica's ``upgrade`` takes (MIGRATION_LOCK_TIMEOUT_SECONDS, LockTimeout exit 75),
    and yields the hold: ``hold.connection`` is the psycopg connection that holds it
    (autocommit; in the transaction scope, inside the lock's transaction, committed
    when the block ends). Released (or rolled back, on an error) on the way out.
    """
    project = Project(settings)
    check_startup(project.settings)
    with (
        project.session(application_name=application_name) as session,
        session.migration_lock() as hold,
    ):
        yield hold
