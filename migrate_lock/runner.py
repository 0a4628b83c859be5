"""Alembic, run on the connection that holds the lock, and on no other.

The connection goes to ``env.py`` as ``config.attributes["connection"]`` with no
transaction open, so Alembic owns (and commits) its transaction; handing over a
connection that had already autobegun would make Alembic treat it as an outer
transaction and the DDL would be silently rolled back when we close it. Should
``env.py`` open a connection of its own, we refuse before any revision runs.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import functools
import inspect
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, TextIO

import psycopg.errors
from alembic import command, op
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, RevisionStep
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from psycopg.pq import TransactionStatus
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from migrate_lock import concurrent_index
from migrate_lock.errors import (
    ConfigError,
    ConnectionLost,
    IdleInTransactionTimeout,
    MigrateLockError,
    MigrationFailed,
    NeedsLiveDatabase,
    OtherDialect,
    ProcessExited,
    ProjectFileError,
    TableLockTimeout,
    describe_sql_error,
    first_line,
    shown_path,
    sql_error_in,
    sqlstate_of,
)
from migrate_lock.interrupts import Terminated
from migrate_lock.logs import log
from migrate_lock.revisions import Scripts
from migrate_lock.version_table import VersionTable

if TYPE_CHECKING:
    import psycopg


def alembic_config(
    path: Path,
    *,
    sqlalchemy_url: str | None = None,
    version_table: VersionTable | None = None,
    output: TextIO | None = None,
) -> Config:
    """Load ``alembic.ini`` for running under migrate-lock (our logging, not fileConfig)."""
    if not path.is_file():
        raise ConfigError(
            f"Alembic config not found: {path}",
            hint="run from your project's directory, pass -c PATH or set ALEMBIC_CONFIG, "
            "or create one with `migrate-lock init`",
        )
    config = Config(str(path), stdout=output or sys.stdout)
    if output is not None:
        config.output_buffer = output
    try:
        script_location = config.get_main_option("script_location")
    except (configparser.Error, UnicodeDecodeError) as error:
        raise ini_error(path, error) from None
    except CommandError:  # Alembic's words for a file without an [alembic] section
        raise ProjectFileError(
            shown_path(path),
            "has no [alembic] section",
            hint="start alembic.ini with an [alembic] line and script_location = "
            + script_location_hint(path),
        ) from None
    if not script_location:
        raise ConfigError(
            f"{path} has no script_location in its [alembic] section",
            hint=f"add `script_location = {script_location_hint(path)}`"
            + (
                " and `prepend_sys_path = %(here)s/..` (Flask-Migrate's layout sets them "
                "in code; see docs/existing-projects.md#flask-migrate)"
                if _env_py_beside(path)
                else " (or where your env.py is)"
            ),
        )
    # env.py would otherwise call logging.config.fileConfig() and take over our stderr.
    config.attributes["configure_logger"] = False
    if sqlalchemy_url:
        # ConfigParser interpolates '%': a percent-encoded password must be escaped.
        config.set_main_option("sqlalchemy.url", sqlalchemy_url.replace("%", "%%"))
    if version_table is not None:
        config.attributes["version_table"] = version_table.name
        config.attributes["version_table_schema"] = version_table.schema
    return config


def script_location_hint(ini: Path) -> str:
    """The ``script_location`` to write in ``ini``: ``%(here)s`` when env.py sits beside
    it (Flask-Migrate's layout: ``migrations/alembic.ini``), else ``%(here)s/migrations``."""
    return "%(here)s" if _env_py_beside(ini) else "%(here)s/migrations"


def _env_py_beside(ini: Path) -> bool:
    return (ini.parent / "env.py").is_file()


def ini_error(path: Path | str, error: configparser.Error | UnicodeDecodeError) -> ProjectFileError:
    """An ``alembic.ini`` that does not parse, as one line naming the file and line.

    The option's value is never shown: it may hold a password (``sqlalchemy.url``).
    """
    line: int | None = getattr(error, "lineno", None)
    hint = "fix alembic.ini"
    if isinstance(error, UnicodeDecodeError):
        raw = Path(path).read_bytes() if Path(path).is_file() else b""
        line = raw.count(b"\n", 0, error.start) + 1 if error.object == raw else None
        problem = f"is not UTF-8 (byte 0x{error.object[error.start]:02x})"
        hint = "save alembic.ini as UTF-8"
    elif isinstance(error, configparser.MissingSectionHeaderError):
        problem = "has no section header before its first option"
        hint = "start alembic.ini with an [alembic] line"
    elif isinstance(error, configparser.DuplicateSectionError):
        problem = f"section [{error.section}] appears twice"
    elif isinstance(error, configparser.DuplicateOptionError):
        problem = f"option {error.option!r} appears twice in section [{error.section}]"
    elif isinstance(error, configparser.InterpolationError):
        problem = f"option {error.option!r} in section [{error.section}] has a bad %-reference"
        if isinstance(error, configparser.InterpolationMissingOptionError):
            problem += f": %({error.reference})s names no option"
        hint = "write a literal % as %% (a percent-encoded password too), or %(here)s"
        line = _option_line(Path(path), error.section, error.option)
    elif isinstance(error, configparser.ParsingError):
        line = error.errors[0][0] if error.errors else None
        problem = "has a line that is neither a [section] nor an option"
    else:
        problem = f"does not parse ({type(error).__name__})"
    return ProjectFileError(shown_path(path), problem, line=line, hint=hint)


def _option_line(path: Path, section: str, option: str) -> int | None:
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeError):
        return None
    current = None
    for number, text in enumerate(lines, start=1):
        stripped = text.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1].strip()
        elif current == section and stripped.split("=", 1)[0].split(":", 1)[0].strip() == option:
            return number
    return None


def run_upgrade(
    config: Config,
    connection: psycopg.Connection[Any],
    target: str,
    *,
    each_applied: Callable[[str], None] | None = None,
    before_commit: Callable[[], None] | None = None,
    script: ScriptDirectory | None = None,
) -> list[str]:
    """Run ``alembic upgrade target`` on ``connection`` (a psycopg connection we lock on).

    ``before_commit()`` runs on ``connection`` just before each commit of the run (each
    revision's with ``transaction_per_migration``, an ``autocommit_block``'s, the last),
    inside the transaction that commits. ``script``: the revision files as this process
    already loaded them (``Scripts``), so Alembic does not read them again (a fleet
    worker would, for every tenant).

    ``each_applied(revision)`` runs on ``connection`` inside each revision's own
    transaction, after it: whatever it writes commits with that revision, or not at all.
    Returns the revisions applied, in order. Raises MigrationFailed (exit 1) naming
    the revision and the SQL error; everything uncommitted is rolled back.
    """
    return run_alembic(
        config,
        connection,
        "upgrade",
        target,
        each_applied=each_applied,
        before_commit=before_commit,
        script=script,
    )


def run_alembic(
    config: Config,
    connection: psycopg.Connection[Any],
    command: Literal["upgrade", "downgrade", "stamp"],
    target: str,
    *,
    before: Callable[[Connection], None] | None = None,
    each_applied: Callable[[str], None] | None = None,
    before_commit: Callable[[], None] | None = None,
    script: ScriptDirectory | None = None,
) -> list[str]:
    """Run ``alembic COMMAND target`` on ``connection``, in one transaction with ``before``.

    ``before(connection)`` runs first on the same SQLAlchemy connection and in the same
    transaction (init-db: ``create_all`` then ``stamp``), so both commit or neither does.
    Returns the revisions run (for a downgrade, the revisions it went down to). Raises
    MigrationFailed (exit 1); everything uncommitted is rolled back.
    """
    applied, on_version_apply = _recorder(each_applied)
    connection.autocommit = False
    cleanups: list[concurrent_index.Cleanup] = []
    try:
        with (
            sqlalchemy_connection(connection) as shared,
            concurrent_index.cleaning_up(connection, _block_revision) as cleanups,
            _before_each_commit(shared, before_commit),
        ):
            _run_on(
                config,
                shared,
                connection,
                command,
                target,
                on_version_apply,
                before,
                commit=True,
                script=script,
            )
    except MigrateLockError as error:
        # A failed autocommit_block: what was done about the invalid index it left.
        raise concurrent_index.noted(error, cleanups) from None
    finally:
        if not connection.closed:
            connection.autocommit = True
    return applied


#: A statement that commits the open transaction behind SQLAlchemy's back: a revision's
#: ``op.execute("COMMIT")`` (the old recipe for ``ALTER TYPE ... ADD VALUE``).
_COMMITS = re.compile(r"\s*(COMMIT|END)\s*(;\s*)?$", re.IGNORECASE)


@contextmanager
def _before_each_commit(
    shared: Connection, before_commit: Callable[[], None] | None
) -> Iterator[None]:
    # SQLAlchemy's commit event fires before the DBAPI commit, inside the transaction; a
    # COMMIT statement of a revision's own is seen just before it runs.
    if before_commit is None:
        yield
        return

    def hook(_: Connection) -> None:
        try:
            before_commit()
        except MigrateLockError as error:
            raise _HookFailed(error) from None

    def before_statement(conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if _COMMITS.match(statement):
            hook(conn)

    event.listen(shared, "commit", hook)
    event.listen(shared, "before_cursor_execute", before_statement)
    try:
        yield
    finally:
        event.remove(shared, "commit", hook)
        event.remove(shared, "before_cursor_execute", before_statement)


def run_upgrade_in_transaction(
    config: Config,
    shared: Connection,
    connection: psycopg.Connection[Any],
    target: str,
    *,
    each_applied: Callable[[str], None] | None = None,
    script: ScriptDirectory | None = None,
) -> list[str]:
    """``alembic upgrade target`` inside the transaction open on ``connection``; no commit.

    The transaction scope (scope.py): that transaction holds the lock, so every
    revision, with or without ``transaction_per_migration``, goes into it; the caller
    commits. ``shared`` is ``sqlalchemy_connection(connection)``, made before the
    transaction began. A revision that needs an ``autocommit_block`` is refused
    (ConfigError, exit 78) and everything is rolled back.
    """
    applied, on_version_apply = _recorder(each_applied)
    if not shared.in_transaction():
        # Alembic treats a transaction that is already open as the caller's: it
        # neither commits it nor begins one per migration.
        shared.begin()
    try:
        with _no_autocommit_blocks():
            _run_on(
                config,
                shared,
                connection,
                "upgrade",
                target,
                on_version_apply,
                None,
                commit=False,
                script=script,
            )
    except _AutocommitBlock as refused:
        raise autocommit_refusal(refused.revision) from None
    return applied


def _block_revision() -> str | None:
    """The revision whose ``autocommit_block`` calls this (concurrent_index's cleanup)."""
    return _calling_revision(inspect.currentframe())[0]


def autocommit_revisions(scripts: Scripts, revisions: Iterable[str]) -> list[str]:
    """Which of ``revisions`` use ``autocommit_block`` outside ``downgrade()``.

    Read from the code (not comments or strings); a call the scan cannot see (made
    from another module) is refused while running instead.
    """
    found = []
    for revision in revisions:
        script = scripts.script.get_revision(revision)
        path = Path(script.path) if script is not None else None
        if path is not None and path.is_file() and _uses_autocommit_block(path.read_text("utf-8")):
            found.append(revision)
    return found


def _uses_autocommit_block(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False  # Alembic reports it, with the file and line
    downgrade = [
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "downgrade"
    ]
    skipped = {id(inner) for node in downgrade for inner in ast.walk(node)}
    return any(
        (isinstance(node, ast.Attribute) and node.attr == "autocommit_block")
        or (isinstance(node, ast.Name) and node.id == "autocommit_block")
        for node in ast.walk(tree)
        if id(node) not in skipped
    )


def autocommit_refusal(revision: str | None) -> ConfigError:
    """Why the transaction scope cannot run a revision that needs autocommit."""
    which = f"revision {revision}" if revision else "a revision"
    return ConfigError(
        f"{which} uses autocommit_block (e.g. CREATE INDEX CONCURRENTLY), which cannot run "
        "inside the single transaction the transaction-scoped lock needs; nothing was run",
        hint="set MIGRATION_DATABASE_URL to a direct connection to PostgreSQL, not through "
        "the pooler, and MIGRATION_LOCK_SCOPE=session; see docs/how-the-lock-works.md",
    )


def _recorder(
    each_applied: Callable[[str], None] | None,
) -> tuple[list[str], Callable[..., None]]:
    applied: list[str] = []
    started = time.monotonic()

    def on_version_apply(*, step: Any, **_: Any) -> None:
        nonlocal started
        # A downgrade step undoes its up_revision; a stamp moves without running anything.
        revision = str(step.up_revision_id or ", ".join(step.down_revision_ids) or "base")
        applied.append(revision)
        direction = "stamp" if step.is_stamp else ("up" if step.is_upgrade else "down")
        log.info(
            "migrate.revision",
            revision=revision,
            doc=step.up_revision.doc if step.up_revision and not step.is_stamp else None,
            duration_ms=round((time.monotonic() - started) * 1000),
            **({} if direction == "up" else {"direction": direction}),
        )
        if each_applied is not None and direction == "up":
            try:
                each_applied(revision)  # Alembic calls us inside the revision's transaction
            except MigrateLockError as error:
                raise _HookFailed(error) from None
        started = time.monotonic()

    return applied, on_version_apply


def _run_on(
    config: Config,
    shared: Connection,
    connection: psycopg.Connection[Any],
    name: str,
    target: str,
    on_version_apply: Any,
    before: Callable[[Connection], None] | None,
    *,
    commit: bool,
    script: ScriptDirectory | None = None,
) -> None:
    config.attributes["connection"] = shared
    config.attributes["on_version_apply"] = on_version_apply
    try:
        with _only_this_connection(), guarded_configure(config, offline=False):
            if before is not None:
                before(shared)
            if name == "upgrade" and script is not None:
                _upgrade_on(script, config, target)
            else:
                getattr(command, name)(config, target)
        if commit and shared.in_transaction():
            shared.commit()
    except _OtherDialectConfigured as refused:
        _rollback_quietly(shared)
        raise refused.error from None
    except _OwnConnectionOpened:
        _rollback_quietly(shared)
        raise ConfigError(
            "env.py opened its own database connection instead of using the one "
            "migrate-lock holds the lock on; nothing was run",
            hint="use config.attributes['connection'] in env.py when it is set "
            "(see docs/existing-projects.md)",
        ) from None
    except _AutocommitBlock:
        _rollback_quietly(shared)
        raise
    except _HookFailed as failed:
        _rollback_quietly(shared)
        raise failed.error from None
    except Terminated:
        raise  # our own SIGTERM (a SystemExit too): exit 143, rolled back by the caller
    except KeyboardInterrupt:
        raise  # SIGINT, not the revision's doing: exit 130
    except SystemExit as exiting:
        # sys.exit() in a revision or env.py: not a success, whatever its code.
        _rollback_quietly(shared)
        raise process_exited(exiting) from None
    # A revision may raise anything, BaseExceptions too (asyncio.CancelledError, the
    # application's own): all roll back and are classified.
    except BaseException as error:  # noqa: BLE001
        if killed_for_idling(error):
            # The server's verdict on the revision, not a failover: no reconnect.
            raise idle_timeout_error(error) from None
        if connection.broken or connection.closed:
            # A restart or failover, not the revision's fault: the server rolled it back.
            raise ConnectionLost(
                f"lost the database connection while migrating ({type(error).__name__});"
                " the server rolled the open transaction back"
            ) from None
        _rollback_quietly(shared)
        raise migration_error(error, config) from None
    finally:
        config.attributes.pop("connection", None)


def _upgrade_on(script: ScriptDirectory, config: Config, target: str) -> None:
    """``alembic.command.upgrade(config, target)`` (online) on revision files already
    loaded: the same EnvironmentContext and env.py run, without Alembic's reading every
    revision file again (~1.5 ms a run for five; a fleet runs once per tenant)."""
    if ":" in target:
        command.upgrade(config, target)  # Alembic's own refusal of a range online
        return

    def upgrade(revision: Any, context: Any) -> Any:
        return script._upgrade_revs(target, revision)  # as command.upgrade does

    with EnvironmentContext(config, script, fn=upgrade, destination_rev=target):
        script.run_env()


def run_offline(config: Config, target: str) -> None:
    """``alembic upgrade TARGET --sql`` (``upgrade --sql``, ``lint``, ``plan``): what
    ``env.py`` or a revision raises is classified as on the online path.

    A revision that reads from the database (``op.get_bind().execute(...).fetchall()``,
    an inspector) cannot be rendered: NeedsLiveDatabase (exit 78) names it. Inside
    ``skipping_live_revisions()`` such a revision is written as a
    ``NEEDS_DATABASE_MARK`` comment instead and the rendering goes on.
    """
    try:
        with _offline_results(), guarded_configure(config, offline=True):
            command.upgrade(config, target, sql=True)
    except _OtherDialectConfigured as refused:
        raise refused.error from None
    except Terminated:
        raise  # our own SIGTERM, not the revision's exit
    except KeyboardInterrupt:
        raise
    except SystemExit as exiting:
        raise process_exited(exiting) from None
    except (CommandError, MigrateLockError):
        raise
    except BaseException as error:  # noqa: BLE001 - env.py and the revisions may raise anything
        revision, _ = _failing_revision(error.__traceback__)
        if revision is not None and _reads_the_database(error):
            raise needs_live_database(revision, error) from None
        raise migration_error(error, config) from None


#: The comment ``run_offline`` writes, in ``skipping_live_revisions()``, in place of the
#: SQL of a revision that needs a live database (lint.split_revisions looks for it).
NEEDS_DATABASE_MARK = "-- migrate-lock: needs a live database, SQL not rendered:"

_skipping: list[list[str]] = []


@contextmanager
def skipping_live_revisions() -> Iterator[list[str]]:
    """Within the block, ``run_offline`` renders past the revisions that need a live
    database (``lint``, ``plan``); yields the list it appends their ids to."""
    skipped: list[str] = []
    _skipping.append(skipped)
    try:
        yield skipped
    finally:
        _skipping.remove(skipped)


def needs_live_database(revision: str, error: BaseException) -> NeedsLiveDatabase:
    return NeedsLiveDatabase(
        f"revision {revision} needs a live database: it {_what_it_reads(error)}, so its "
        "SQL cannot be rendered offline (upgrade --sql, lint, plan); nothing was run",
        hint="run `migrate-lock upgrade` against a database (or `upgrade START:END --sql` "
        "for the revisions around it)",
        revision=revision,
    )


class _NeedsDatabase(Exception):
    """A revision used the result of a statement while SQL was rendered offline."""


class _OfflineResult:
    """What ``op.get_bind().execute(...)`` returns while SQL is rendered offline: the
    statement was written out, and there are no rows. Reading it raises _NeedsDatabase
    (Alembic returns None there, and the revision fails on ``None.fetchall()``)."""

    def __getattr__(self, name: str) -> Any:
        raise _NeedsDatabase(f"reads a query's result (.{name})")

    def __iter__(self) -> Iterator[Any]:
        raise _NeedsDatabase("reads a query's result (iterates over its rows)")

    def __getitem__(self, key: Any) -> Any:
        raise _NeedsDatabase("reads a query's result")

    def __bool__(self) -> bool:
        return False  # as the None Alembic returns


@contextmanager
def _offline_results() -> Iterator[None]:
    """Offline, the bind's ``execute()`` returns an _OfflineResult; and, inside
    ``skipping_live_revisions()``, a revision that needs the database is skipped."""
    stdout_connection = MigrationContext._stdout_connection
    revision_step_init = RevisionStep.__init__
    skipped = _skipping[-1] if _skipping else None

    def offline_connection(self: MigrationContext, connection: Any) -> Any:
        mock = stdout_connection(self, connection)
        execute = mock._execute_impl

        def execute_then_mark(obj: Any, parameters: Any = None) -> _OfflineResult:
            execute(obj, parameters)
            return _OfflineResult()

        mock._execute_impl = execute_then_mark
        return mock

    def step_init(self: RevisionStep, *args: Any, **kwargs: Any) -> None:
        revision_step_init(self, *args, **kwargs)
        if skipped is not None and self.is_upgrade:
            self.migration_fn = _skipping_if_live(
                self.migration_fn, self.revision.revision, skipped
            )

    MigrationContext._stdout_connection = offline_connection  # type: ignore[method-assign]
    RevisionStep.__init__ = step_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        MigrationContext._stdout_connection = stdout_connection  # type: ignore[method-assign]
        RevisionStep.__init__ = revision_step_init  # type: ignore[method-assign]


def _skipping_if_live(
    upgrade: Callable[..., Any], revision: str, skipped: list[str]
) -> Callable[..., Any]:
    @functools.wraps(upgrade)
    def run(**kw: Any) -> None:
        try:
            upgrade(**kw)
        except Exception as error:
            if not _reads_the_database(error):
                raise
            skipped.append(revision)
            reason = " ".join(_what_it_reads(error).split())
            op.get_context().impl.static_output(f"{NEEDS_DATABASE_MARK} {reason}")

    return run


def _reads_the_database(error: BaseException) -> bool:
    """``error`` came from reading the database offline: our _OfflineResult, or
    SQLAlchemy's mock connection (``inspect(bind)``, ``bind.scalar()``, ...)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, _NeedsDatabase) or "MockConnection" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _what_it_reads(error: BaseException) -> str:
    if isinstance(error, _NeedsDatabase):
        return str(error)
    text = str(error)
    if "No inspection system" in text:
        return "inspects the database (sqlalchemy.inspect(op.get_bind()))"
    missing = re.search(r"'MockConnection' object has no attribute '(\w+)'", text)
    if missing:
        return f"calls op.get_bind().{missing[1]}(), which offline SQL does not have"
    return f"asks the database for something ({first_line(error)})"


def process_exited(exiting: SystemExit) -> ProcessExited:
    """A revision or env.py called ``sys.exit()``: exit 1 naming it, never its own code."""
    revision, _ = _failing_revision(exiting.__traceback__)
    env_py = _env_py_frame(exiting.__traceback__)
    where = f"revision {revision}" if revision else ("env.py" if env_py else "a revision")
    return ProcessExited(
        f"{where} exited the process (SystemExit({exiting.code!r})); rolled back",
        hint="a revision fails by raising an exception: remove the sys.exit() / exit() call",
        revision=revision,
    )


def killed_for_idling(error: BaseException) -> bool:
    """The server ended the session for idling in its transaction (SQLSTATE 25P03)."""
    if sqlstate_of(error) == "25P03":
        return True
    seen: BaseException | None = error
    while seen is not None:
        if "idle-in-transaction timeout" in str(getattr(seen, "orig", None) or seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def idle_timeout_error(error: BaseException) -> IdleInTransactionTimeout:
    revision, doc = _failing_revision(error.__traceback__)
    where = (
        f"revision {revision}" + (f" ({doc})" if doc else "")
        if revision
        else "a revision (or env.py)"
    )
    return IdleInTransactionTimeout(
        f"{where} was ended by the server: its transaction sat idle between two statements "
        "for longer than DDL_IDLE_IN_TRANSACTION_TIMEOUT (SQLSTATE 25P03); rolled back",
        hint="raise DDL_IDLE_IN_TRANSACTION_TIMEOUT if the revision does long work in Python "
        "between statements, or do that work in SQL",
        revision=revision,
        sqlstate="25P03",
    )


def migration_error(error: BaseException, config: Config | None = None) -> Exception:
    """Turn what a revision raised into one line: the revision, the SQL error, what next.

    What ``env.py`` (or the application code it imports: its settings, its models)
    raised, other than a database error, is a ProjectFileError (exit 78) naming env.py
    and its line: a configuration problem, not a failed revision nor a bug of ours.
    """
    revision, doc = _failing_revision(error.__traceback__)
    sql = sql_error_in(error)
    if revision is None and sql is None:
        if isinstance(error, SyntaxError) and error.filename:
            return ProjectFileError(
                shown_path(error.filename),
                first_line(error),
                line=error.lineno,
                hint="fix that file (env.py loads it)",
            )
        if isinstance(error, configparser.Error) and config is not None:
            ini = config.config_file_name or "alembic.ini"
            return ini_error(ini, error)
        env_py = _env_py_frame(error.__traceback__)
        if env_py is not None:
            path, line = env_py
            hint = (
                "fix env.py or what it loads (the application's settings: are its "
                "variables set here?)"
            )
            if "application context" in str(error):  # Flask's current_app, outside `flask`
                hint = (
                    "env.py uses Flask's current_app: push the application's context in "
                    "env.py when there is none (docs/existing-projects.md#flask-migrate)"
                )
            return ProjectFileError(
                shown_path(path), f"raised {first_line(error)}", line=line, hint=hint
            )
    # No revision frame: env.py itself, Alembic's version-table UPDATE after a revision
    # (a serialization failure), or the commit at the end (a deferred constraint).
    where = (
        f"revision {revision}" + (f" ({doc})" if doc else "")
        if revision
        else "env.py, Alembic's version table update or the commit"
    )
    # Our own helpers (run_sql_file) already said where: keep their words.
    detail = error.message if isinstance(error, MigrateLockError) else describe_sql_error(error)
    if isinstance(sql, psycopg.errors.LockNotAvailable):
        return TableLockTimeout(where, detail)
    hint = "fix the revision and run again"
    if isinstance(sql, psycopg.errors.QueryCanceled):
        hint = "raise DDL_STATEMENT_TIMEOUT if this statement needs longer"
    return MigrationFailed(
        f"{where} failed: {detail}; rolled back",
        hint=hint,
        revision=revision,
        sqlstate=sqlstate_of(error),
    )


class _OwnConnectionOpened(Exception):
    """env.py connected through an engine of its own."""


class _AutocommitBlock(BaseException):
    """A revision asked for autocommit inside the transaction scope's one transaction.

    A BaseException, so that a revision's own ``except Exception`` cannot swallow it
    and let the upgrade commit without what the block would have done.
    """

    def __init__(self, revision: str | None) -> None:
        super().__init__(revision)
        self.revision = revision


class _HookFailed(BaseException):
    """Our own ``each_applied`` refused to go on: its error is reported as it is."""

    def __init__(self, error: MigrateLockError) -> None:
        super().__init__(error)
        self.error = error


@contextmanager
def _no_autocommit_blocks() -> Iterator[None]:
    # Alembic would commit our transaction (and with it the lock) or fail on an
    # assertion; refuse by name instead. Patched for the duration of one run only.

    original = MigrationContext.autocommit_block

    def refuse(self: MigrationContext) -> Iterator[None]:
        revision, _ = _calling_revision(inspect.currentframe())
        raise _AutocommitBlock(revision)

    MigrationContext.autocommit_block = refuse  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        MigrationContext.autocommit_block = original  # type: ignore[method-assign]


class _OtherDialectConfigured(BaseException):
    """env.py configured a MigrationContext for another database than PostgreSQL.

    A BaseException, so that env.py's own ``except Exception`` cannot swallow it."""

    def __init__(self, error: OtherDialect) -> None:
        super().__init__(error)
        self.error = error


@contextmanager
def guarded_configure(config: Config, *, offline: bool) -> Iterator[None]:
    """Within the block, every ``context.configure()`` env.py calls is checked and completed.

    The one place every verb that runs env.py passes through (``run_offline``: upgrade
    --sql, lint, plan; ``_run_on``: upgrade, downgrade, stamp, init-db, smoke):
    - the context must be PostgreSQL's: an env.py that sets ``sqlalchemy.url`` by itself
      (Flask-Migrate's takes the application's SQLALCHEMY_DATABASE_URI, which falls back to
      SQLite where the application's database variable is not set, as in a CI job) would
      have SQL of another dialect rendered and linted: refused (OtherDialect, exit 78)
      before any SQL is written or run;
    - online, our ``on_version_apply`` (config.attributes) is called for each applied revision
      even when env.py does not pass it (env.py files written for pytest-alembic, by hand),
      after env.py's own callbacks: it records the history, the environment marker and the
      result's applied revisions.
    """
    descriptor = MigrationContext.__dict__["configure"]  # the classmethod itself
    ours = _main_option(config, "sqlalchemy.url")
    hook = None if offline else config.attributes.get("on_version_apply")

    def configure(cls: type[MigrationContext], *args: Any, **kwargs: Any) -> MigrationContext:
        opts = kwargs.get("opts")
        if hook is not None and isinstance(opts, dict):
            callbacks = tuple(opts.get("on_version_apply") or ())  # Alembic's: a tuple
            if hook not in callbacks:
                kwargs["opts"] = {**opts, "on_version_apply": (*callbacks, hook)}
        context: MigrationContext = descriptor.__get__(None, cls)(*args, **kwargs)
        if context.dialect.name != "postgresql":
            replaced = _main_option(config, "sqlalchemy.url") != ours
            raise _OtherDialectConfigured(
                other_dialect_error(context.dialect.name, url_replaced=replaced, offline=offline)
            )
        return context

    MigrationContext.configure = classmethod(configure)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        setattr(MigrationContext, "configure", descriptor)  # noqa: B010 - the descriptor


def other_dialect_error(dialect: str, *, url_replaced: bool, offline: bool) -> OtherDialect:
    """Which dialect env.py configured, and why that is likely (OtherDialect, exit 78)."""
    if url_replaced:
        why = "it replaced the sqlalchemy.url migrate-lock set"
        if "flask_migrate" in sys.modules:
            why += (
                " (Flask-Migrate's env.py sets it from the application's SQLALCHEMY_DATABASE_URI)"
            )
    else:
        why = "it passed context.configure() a URL or connection of its own"
    done = "no SQL was rendered" if offline else "nothing was run"
    return OtherDialect(
        f"env.py configured the {dialect} dialect, not PostgreSQL: {why}; migrate-lock "
        f"runs and renders PostgreSQL only, so {done}",
        hint="point the application at the same PostgreSQL database"
        + (
            " (a SQLite URL is often its fallback when its database variable is unset)"
            if dialect == "sqlite"
            else ""
        )
        + ", or let env.py keep the sqlalchemy.url migrate-lock sets "
        "(docs/existing-projects.md#flask-migrate)",
        dialect=dialect,
    )


def _main_option(config: Config, name: str) -> str | None:
    try:
        return config.get_main_option(name)
    except configparser.Error:
        return None


@contextmanager
def _only_this_connection() -> Iterator[None]:
    def refuse(connection: Any) -> None:
        raise _OwnConnectionOpened

    event.listen(Engine, "engine_connect", refuse)
    try:
        yield
    finally:
        event.remove(Engine, "engine_connect", refuse)


@contextmanager
def sqlalchemy_connection(raw: psycopg.Connection[Any]) -> Iterator[Connection]:
    """One SQLAlchemy connection over ``raw`` (StaticPool never opens another).

    Make it while ``raw`` has no transaction open: SQLAlchemy's first connect ends
    with a ROLLBACK. Disposing of the engine is never needed (we close ``raw``).
    """
    engine, target, reused = _engine_for(raw)
    target[0] = raw
    if reused:
        # The one thing the dialect learnt on its first connect that a session changes
        # (search_path): what reflection without a schema reads. Read outside any
        # transaction when none is open, so env.py still gets a connection without one.
        outside = not raw.autocommit and raw.info.transaction_status == TransactionStatus.IDLE
        raw.autocommit = raw.autocommit or outside
        try:
            row = raw.execute("SELECT current_schema()").fetchone()
        finally:
            if outside:
                raw.autocommit = False
        engine.dialect.default_schema_name = str(row[0]) if row else None
    connection = LockedConnection(engine)  # what engine.connect() does, as our subclass
    try:
        yield connection
    finally:
        _rollback_quietly(connection)
        # Close and forget deterministically: left to the garbage collector, SQLAlchemy
        # "resets" ``raw`` with a ROLLBACK from a finalizer, which can fire in the middle
        # of our next psycopg call on the same connection and deadlock it.
        with contextlib.suppress(Exception):
            connection.close()
        engine.dispose(close=False)
        target[0] = None
        # SQLAlchemy's connect added its notice logger to ``raw``: take it off, or a
        # connection that outlives this (a fleet worker's) gathers one per upgrade.
        with contextlib.suppress(ImportError, ValueError):
            from sqlalchemy.dialects.postgresql.psycopg import _log_notices  # noqa: PLC0415

            raw.remove_notice_handler(_log_notices)


#: Per thread, the engine of the last connection (a fleet worker's, reused by its
#: tenants): SQLAlchemy's first connect asks the server ~9 questions (version, isolation
#: level, hstore, whose adapter it registers on that connection) once per engine, not
#: per upgrade. A new connection gets a new engine.
_engines = threading.local()


def _engine_for(raw: psycopg.Connection[Any]) -> tuple[Engine, list[Any], bool]:
    cached = getattr(_engines, "last", None)
    if cached is not None and cached[0]() is raw:
        return cached[1], cached[2], True
    target: list[Any] = [None]
    engine = create_engine("postgresql+psycopg://", creator=lambda: target[0], poolclass=StaticPool)
    _engines.last = (weakref.ref(raw), engine, target)
    return engine, target, False


class LockedConnection(Connection):
    """The connection that holds the migration lock, as env.py gets it in
    ``config.attributes["connection"]``.

    It is a SQLAlchemy ``Connection``: pass it to ``context.configure(connection=...)``
    as it is. It also answers ``connect()`` as an Engine does, for an env.py written as
    pytest-alembic's docs say (``with connectable.connect() as connection:``, where
    pytest-alembic hands over an Engine): the block gets this same connection, and
    leaving it does not close it (the lock's session outlives env.py).
    """

    def connect(self) -> contextlib.nullcontext[LockedConnection]:
        return contextlib.nullcontext(self)


def _rollback_quietly(connection: Connection) -> None:
    try:
        if connection.in_transaction():
            connection.rollback()
    except Exception as error:  # noqa: BLE001 - the connection may be gone; the server rolls back
        log.debug("migrate.rollback_failed", error=type(error).__name__)


def _calling_revision(frame: FrameType | None) -> tuple[str | None, str | None]:
    # The innermost calling frame that belongs to a revision module names the revision.
    while frame is not None:
        found = _revision_of(frame)
        if found[0] is not None:
            return found
        frame = frame.f_back
    return None, None


def _failing_revision(trace: TracebackType | None) -> tuple[str | None, str | None]:
    # The innermost frame that belongs to a revision module names the revision.
    found: tuple[str | None, str | None] = (None, None)
    while trace is not None:
        here = _revision_of(trace.tb_frame)
        found = here if here[0] is not None else found
        trace = trace.tb_next
    return found


def _env_py_frame(trace: TracebackType | None) -> tuple[str, int] | None:
    """Where in env.py (Alembic loads it as the module ``env_py``) ``trace`` last was."""
    found = None
    while trace is not None:
        if trace.tb_frame.f_globals.get("__name__") == "env_py":
            found = (trace.tb_frame.f_code.co_filename, trace.tb_lineno)
        trace = trace.tb_next
    return found


def _revision_of(frame: FrameType) -> tuple[str | None, str | None]:
    module_globals = frame.f_globals
    revision = module_globals.get("revision")
    if isinstance(revision, str) and "down_revision" in module_globals:
        doc = (module_globals.get("__doc__") or "").strip().splitlines()
        return revision, doc[0] if doc else None
    return None, None
