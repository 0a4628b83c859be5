"""The failures an operator can see, each mapped to one documented exit code.

Every expected failure is one of these classes. The CLI prints ``str(error)`` as a
single line and exits with ``error.exit_code``; nothing else decides exit codes.
"""

from __future__ import annotations

import os
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from migrate_lock.lock import LockHolder


class ExitCode(IntEnum):
    """Exit codes of the ``migrate-lock`` command (see docs/exit-codes.md)."""

    OK = 0
    MIGRATION_FAILED = 1
    USAGE = 2
    REFUSED = 3
    PENDING = 4
    UNKNOWN_REVISION = 5
    TEMPORARY = 75
    CONFIG = 78
    INTERRUPTED = 130
    TERMINATED = 143


class MigrateLockError(Exception):
    """Base class: a failure with a one-line message and what to do next."""

    exit_code: ExitCode = ExitCode.MIGRATION_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = self.message if not self.hint else f"{self.message}; {self.hint}"
        # One line, always: SQL errors and holder queries may carry newlines.
        return " ".join(text.split())

    def with_message(self, message: str) -> MigrateLockError:
        """The same error (class, hint and fields) saying ``message`` instead."""
        # Not copy.copy: that calls __init__ again with ``args``, which fails for the
        # classes whose __init__ takes other arguments (TableLockTimeout, ProjectFileError).
        changed = type(self).__new__(type(self), message)
        changed.__dict__.update(self.__dict__)
        changed.message = message
        changed.args = (message,)
        return changed


class ConfigError(MigrateLockError):
    """A setting, URL, credential or project file is wrong; retrying will not help."""

    exit_code = ExitCode.CONFIG


class ProjectFileError(ConfigError):
    """A file of the project does not load: ``alembic.ini``, a revision, ``env.py`` (or the
    application code it imports), ``.env``. ``path`` is the file, ``line`` the line when
    known; the message names both and the first line of the underlying error."""

    def __init__(
        self, path: str, problem: str, *, line: int | None = None, hint: str | None = None
    ) -> None:
        where = f"{path}, line {line}" if line else path
        super().__init__(f"{where}: {problem}", hint=hint)
        self.path = path
        self.line = line


class DatabaseObjectsChanged(ConfigError):
    """The database refused one of migrate-lock's own statements for a reason of its
    catalog (SQLSTATE class 42: a column or table missing, a privilege lacking): its
    tables (the environment marker, the history, the version table) are not as
    migrate-lock made them, or the role may not use them."""


class NoRevisions(ConfigError):
    """The scripts directory has no revision at all (an image built without versions/)."""


class SquawkMissing(ConfigError):
    """``lint`` or ``plan`` found no ``squawk`` (the ``migrate-lock[lint]`` extra)."""


class OtherDialect(ConfigError):
    """``env.py`` configured Alembic for a database other than PostgreSQL (Flask-Migrate's
    env.py sets ``sqlalchemy.url`` from the application, which may fall back to SQLite):
    nothing was run and no SQL rendered. ``dialect`` names what it got."""

    def __init__(self, message: str, *, hint: str | None = None, dialect: str) -> None:
        super().__init__(message, hint=hint)
        self.dialect = dialect


class NeedsLiveDatabase(ConfigError):
    """A revision reads from the database (``op.get_bind().execute(...).fetchall()``, an
    inspector) and so cannot be rendered as offline SQL (``upgrade --sql``, ``lint``,
    ``plan``). ``revision`` names it."""

    def __init__(self, message: str, *, hint: str | None = None, revision: str) -> None:
        super().__init__(message, hint=hint)
        self.revision = revision


class UsageError(MigrateLockError):
    """The command's arguments are wrong (an unknown revision, a bad flag value)."""

    exit_code = ExitCode.USAGE


class TenantSourceError(UsageError):
    """``--tenants`` names no source migrate-lock knows, or its listing failed (exit 2)."""


class TemporaryError(MigrateLockError):
    """Worth retrying later: the lock was busy or the database unreachable."""

    exit_code = ExitCode.TEMPORARY


class DatabaseUnavailable(TemporaryError):
    """The database could not be reached within the connect budget."""


class ConnectionLost(TemporaryError):
    """The connection broke (a restart, a failover); the server rolled back what was open."""


class MigrationInProgress(TemporaryError):
    """A revision holds the version table (until its run commits): its revision cannot be
    read without waiting for that whole run."""


class LockTimeout(TemporaryError):
    """Another session held the migration lock for longer than we may wait.

    ``holder`` is that session as pg_stat_activity showed it (None when this role
    may not see it); ``waited_seconds`` how long we waited.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        holder: LockHolder | None = None,
        waited_seconds: float = 0.0,
    ) -> None:
        super().__init__(message, hint=hint)
        self.holder = holder
        self.waited_seconds = waited_seconds


class TableLockTimeout(TemporaryError):
    """A statement (a revision's, a seed's) waited longer than DDL_LOCK_TIMEOUT for a table
    lock that another session held; everything open was rolled back. Retry later."""

    def __init__(self, where: str, detail: str, *, outcome: str = "rolled back") -> None:
        super().__init__(
            f"{where} could not get a table lock within DDL_LOCK_TIMEOUT: {detail}; {outcome}",
            hint="retry when the tables are less busy, or raise DDL_LOCK_TIMEOUT",
        )


class MigrationFailed(MigrateLockError):
    """A revision raised; its transaction was rolled back.

    ``revision`` is the revision that failed (None: env.py, a seed or the commit);
    ``sqlstate`` the server's SQLSTATE when the server refused a statement.
    """

    exit_code = ExitCode.MIGRATION_FAILED

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        revision: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.revision = revision
        self.sqlstate = sqlstate


class IdleInTransactionTimeout(MigrationFailed):
    """The server ended the migrating session because a revision left its transaction idle
    for longer than DDL_IDLE_IN_TRANSACTION_TIMEOUT (SQLSTATE 25P03); rolled back. Not a
    lost connection: running it again would be killed the same way."""


class ProcessExited(MigrationFailed):
    """A revision or ``env.py`` raised SystemExit (``sys.exit()``); rolled back."""


class ThenFailed(MigrationFailed):
    """The bootstrap step (MIGRATE_THEN, ``upgrade(then=…)``) failed under the lock: exit 1.

    The revisions and seeds of the start stay applied; the step's run is not recorded, so
    the next start runs it again. ``exit_status`` is the command's exit status (negative:
    killed by that signal; None for a Python callable) and ``stderr_tail`` the end of
    what it wrote to stderr (scrubbed of secrets).
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        exit_status: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail


class UnknownDatabaseRevision(MigrateLockError):
    """The database is at a revision this code has never seen applied there."""

    exit_code = ExitCode.UNKNOWN_REVISION


class Refused(MigrateLockError):
    """A guardrail refused a destructive operation; nothing was changed."""

    exit_code = ExitCode.REFUSED


class BackupFailed(MigrateLockError):
    """pg_dump or pg_restore failed, or a dump is unreadable or incomplete; nothing changed."""

    exit_code = ExitCode.MIGRATION_FAILED


class RestoreNotPermitted(ConfigError):
    """``restore`` needs privileges the role lacks (CREATEDB, ownership); nothing changed."""


class ExtensionNotAvailable(ConfigError):
    """``smoke``: the server lacks a PostgreSQL extension a revision creates (the embedded
    server has no ``uuid-ossp``, for one). The environment's fault, not the revision's.
    ``extension`` names it, ``revision`` the revision when known."""

    def __init__(
        self, message: str, *, hint: str | None = None, extension: str, revision: str | None
    ) -> None:
        super().__init__(message, hint=hint)
        self.extension = extension
        self.revision = revision


class SessionsInTheWay(Refused):
    """``restore`` would have to close sessions of other roles it may not close; nothing
    changed. ``sessions`` describes each one: pid, user, application, client."""

    def __init__(self, message: str, *, sessions: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.sessions = sessions


def sql_error_in(error: BaseException) -> BaseException | None:
    """The server's error behind ``error`` (psycopg's, maybe wrapped by SQLAlchemy), if any."""
    seen: BaseException | None = error
    while seen is not None:
        original = getattr(seen, "orig", None)
        if original is not None and getattr(original, "sqlstate", None):
            return original  # type: ignore[no-any-return]
        if getattr(seen, "sqlstate", None):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE of the server's error behind ``error``, if any."""
    found = sql_error_in(error)
    return str(getattr(found, "sqlstate", "")) or None if found is not None else None


def describe_sql_error(error: BaseException) -> str:
    """``[SQLSTATE] primary message in: statement`` (or the exception) in one line."""
    sql = sql_error_in(error)
    if sql is None:
        return f"{type(error).__name__}: {text_of(error)}"
    diag = getattr(sql, "diag", None)
    primary = (
        getattr(diag, "message_primary", None)
        or next(iter(text_of(sql).strip().splitlines()), "")
        or type(sql).__name__
    )
    statement = getattr(error, "statement", None)
    text = f"[{getattr(sql, 'sqlstate', '?')}] {primary}"
    if statement:
        flat = " ".join(str(statement).split())
        text += f" in: {flat[:200]}"
    return text


def first_line(error: BaseException) -> str:
    """``Type: the first line of the message`` (pydantic and configparser write several)."""
    if isinstance(error, SyntaxError) and error.msg:
        return f"{type(error).__name__}: {error.msg}"  # the file and line are said apart
    lines = text_of(error).strip().splitlines()
    text = lines[0].strip() if lines else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def text_of(error: BaseException) -> str:
    """``str(error)``, or "" when the application's exception cannot say it (its
    ``__str__`` raised): the report of a failure must not fail itself."""
    try:
        return str(error)
    except Exception:  # noqa: BLE001 - any __str__ may raise anything
        return ""


def shown_path(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the current directory when it is below it (shorter lines)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def unclassified_server_error(error: BaseException) -> MigrateLockError | None:
    """What an error that reached the top unclassified is, when the server explains it.

    A statement of ours refused with SQLSTATE class 42 (undefined column or table,
    insufficient privilege) means the database's migrate-lock tables were changed, or the
    role lacks a privilege: a configuration problem (exit 78), not a bug.
    """
    sql = sql_error_in(error)
    sqlstate = str(getattr(sql, "sqlstate", "") or "")
    if sql is None or not sqlstate.startswith("42"):
        return None
    hint_text = getattr(getattr(sql, "diag", None), "message_hint", None)
    detail = describe_sql_error(error) + (f" ({hint_text})" if hint_text else "")
    return DatabaseObjectsChanged(
        f"the database refused a statement of migrate-lock's own: {detail}",
        hint="migrate-lock's tables (the migrate_lock schema, the version table, "
        "the environment marker) were changed by hand or the role lacks a privilege: "
        "restore them as migrate-lock made them, or grant it",
    )
