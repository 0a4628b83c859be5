"""The failures an operator can see, each mapped to one documented exit code.

Every expected failure is one of these classes. The CLI prints ``str(error)`` as a
single line and exits with ``error.exit_code``; nothing else decides exit codes.
"""

from __future__ import annotations

from enum import IntEnum


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


class ConfigError(MigrateLockError):
    """A setting, URL, credential or project file is wrong; retrying will not help."""

    exit_code = ExitCode.CONFIG


class UsageError(MigrateLockError):
    """The command's arguments are wrong (an unknown revision, a bad flag value)."""

    exit_code = ExitCode.USAGE


class TemporaryError(MigrateLockError):
    """Worth retrying later: the lock was busy or the database unreachable."""

    exit_code = ExitCode.TEMPORARY


class DatabaseUnavailable(TemporaryError):
    """The database could not be reached within the connect budget."""


class ConnectionLost(TemporaryError):
    """The connection broke (a restart, a failover); the server rolled back what was open."""


class LockTimeout(TemporaryError):
    """Another session held the migration lock for longer than we may wait."""


class MigrationFailed(MigrateLockError):
    """A revision raised; its transaction was rolled back."""

    exit_code = ExitCode.MIGRATION_FAILED


class UnknownDatabaseRevision(MigrateLockError):
    """The database is at a revision this code has never seen applied there."""

    exit_code = ExitCode.UNKNOWN_REVISION


class Refused(MigrateLockError):
    """A guardrail refused a destructive operation; nothing was changed."""

    exit_code = ExitCode.REFUSED


class BackupFailed(MigrateLockError):
    """pg_dump or pg_restore failed, or a dump is unreadable or incomplete; nothing changed."""

    exit_code = ExitCode.MIGRATION_FAILED
