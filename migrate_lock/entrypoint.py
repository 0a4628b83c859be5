"""``run``: the container entrypoint. Migrate under the lock, then become the server.

``migrate-lock run -- gunicorn app:app`` validates the settings, upgrades under the lock
(unless ``MIGRATE_ON_START=false``), closes its connection, and then ``exec``s the
command: the command replaces this process, keeps its PID (PID 1 in a container),
receives the container's signals itself, and its exit code is the container's.

A failed, timed-out or interrupted upgrade never reaches the ``exec``: the process
exits with the documented code (1, 75, 143, …) so the restart policy applies.

Most starts find nothing to migrate. ``run_if_nothing_to_do`` settles those on the lean
path (fastpath.py: no pydantic, psycopg or Alembic) and execs at once; ``run`` is the full
path for everything else.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from migrate_lock.errors import MigrateLockError, UsageError
from migrate_lock.interrupts import signals_raise
from migrate_lock.logs import log

if TYPE_CHECKING:
    from migrate_lock.lean.fastpath import Handover
    from migrate_lock.settings import Settings

#: ENTRYPOINT_PASSTHROUGH's default; settings.py and docker-entrypoint.sh say the same.
DEFAULT_PASSTHROUGH = "migrate-lock alembic"

# Python ignores these; an ignored signal stays ignored across exec, so a server we
# started would never die of a closed pipe or an oversized file as it expects to.
_RESTORE_DEFAULT = ("SIGPIPE", "SIGXFSZ")


def run(
    command: Sequence[str], *, settings: Settings | None = None, handover: Handover | None = None
) -> NoReturn:
    """Upgrade under the lock (unless MIGRATE_ON_START=false), then exec ``command``.

    Never returns: either the process becomes ``command``, or a MigrateLockError
    (each with its exit code) or an interrupt (SIGTERM: ``Terminated``, SIGINT:
    ``KeyboardInterrupt``) is raised and ``command`` never starts. Commands named in
    ENTRYPOINT_PASSTHROUGH (``migrate-lock``, ``alembic``) are exec'd without migrating.
    ``handover`` is the lock ``run_if_nothing_to_do`` took; it is released in any case.
    """
    from migrate_lock.settings import load_settings

    argv = _command(command)
    with signals_raise():
        try:
            settings = settings or load_settings()
            log.configure(log_format=settings.log_format, level=settings.log_level)
            # Before migrating: a typo in the command must not cost a migration first.
            executable = _find(argv[0])
            _migrate_unless_told_not_to(argv[0], settings, handover)
        finally:
            if handover is not None:
                handover.release()  # idempotent; the command must inherit no connection
        _exec(executable, argv)


def run_if_nothing_to_do(
    command: Sequence[str], flags: Mapping[str, Any] | None = None
) -> Handover | None:
    """Exec ``command`` at once when the lean path is sure there is nothing to migrate.

    That is when ``command`` is in ENTRYPOINT_PASSTHROUGH, when MIGRATE_ON_START=false,
    or when the database is (or, after waiting for another replica, has become) at the
    heads of the manifest (``migrate-lock freeze``), and every setting is certainly valid.
    ``flags`` are the CLI's, by settings field name. Returns when it cannot be sure:
    None, or the lock the lean path took for a migration it cannot run itself. Pass
    either to ``run``, which validates everything and migrates.
    """
    argv = _command(command)
    with signals_raise():
        executable = _find(argv[0])
        outcome = _lean_outcome(argv[0], flags or {})
        if outcome is True:
            _exec(executable, argv)
        return outcome or None


def _migrate_unless_told_not_to(
    program: str, settings: Settings, handover: Handover | None
) -> None:
    name = os.path.basename(program)
    if name in settings.entrypoint_passthrough.split():
        log.info("run.passthrough", command=name)
    elif not settings.migrate_on_start:
        log.info("run.migrate_skipped", reason="MIGRATE_ON_START=false")
    else:
        from migrate_lock.migrate import upgrade

        # upgrade() closes its connection before it returns or raises.
        upgrade(settings=settings, handover=handover.release if handover else None)


def _lean_outcome(program: str, flags: Mapping[str, Any]) -> bool | Handover:
    # True: nothing to do; False: not sure; a Handover: not sure, and we hold the lock.
    from migrate_lock.lean import fastpath
    from migrate_lock.lean.pq import LeanUnavailable

    try:
        settings = fastpath.lean_settings(os.environ, fastpath.read_dotenv(Path(".env")), flags)
    except (LeanUnavailable, MigrateLockError, OSError, ValueError):
        return False
    log.configure(log_format=settings.log_format, level=settings.log_level)
    passthrough = str(settings.others.get("entrypoint_passthrough", DEFAULT_PASSTHROUGH))
    names = passthrough.replace(",", " ").split()
    if any("/" in name for name in names):
        return False  # invalid: the full path says so, with exit 78
    if os.path.basename(program) in names:
        log.info("run.passthrough", command=os.path.basename(program))
        return True
    if settings.others.get("migrate_on_start") is False:
        log.info("run.migrate_skipped", reason="MIGRATE_ON_START=false")
        return True
    outcome = fastpath.fast_upgrade(flags)
    if isinstance(outcome, fastpath.Handover):
        return outcome
    return outcome is not None


def _command(command: Sequence[str]) -> list[str]:
    argv = list(command)
    if not argv:
        raise UsageError(
            "run needs a command to start after migrating",
            hint="migrate-lock run -- gunicorn app:app",
        )
    return argv


def _find(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        where = "is not executable" if os.sep in program else "is not on PATH"
        raise UsageError(
            f"cannot start {program!r}: it {where}",
            hint="check the command after `migrate-lock run --` (and the image's PATH)",
        )
    return found


def _exec(executable: str, argv: list[str]) -> NoReturn:
    log.info("run.exec", command=os.path.basename(argv[0]), pid=os.getpid())
    sys.stdout.flush()
    sys.stderr.flush()
    for name in _RESTORE_DEFAULT:
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, signal.SIG_DFL)
    # SIGTERM and SIGINT keep our handlers up to the exec itself (which resets them to
    # the default): a signal before this line raises, and the command never starts.
    try:
        os.execv(executable, argv)  # noqa: S606 - exec'ing the given command is the point
    except OSError as error:
        raise UsageError(
            f"cannot start {argv[0]!r}: {error.strerror or error}",
            hint="check the command after `migrate-lock run --` (a script needs a #! line)",
        ) from None
