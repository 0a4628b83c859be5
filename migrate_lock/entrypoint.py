"""``run``: the container entrypoint. Migrate under the lock, then become the server.

``migrate-lock run -- gunicorn app:app`` validates the settings, upgrades under the lock
(unless ``MIGRATE_ON_START=false``), closes its connection, and then ``exec``s the
command: the command replaces this process, keeps its PID (PID 1 in a container),
receives the container's signals itself, and its exit code is the container's.

A failed, timed-out or interrupted upgrade never reaches the ``exec``: the process
exits with the documented code (1, 75, 143, …) so the restart policy applies.

Most starts find nothing to migrate: ``migrate.upgrade`` settles those on the lean path
(lean/fastpath.py: no pydantic, psycopg or Alembic), so the command is exec'd at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from migrate_lock.errors import UsageError
from migrate_lock.interrupts import signals_raise
from migrate_lock.logs import log
from migrate_lock.migrate import start_settings, upgrade

# Python ignores these; an ignored signal stays ignored across exec, so a server we
# started would never die of a closed pipe or an oversized file as it expects to.
_RESTORE_DEFAULT = ("SIGPIPE", "SIGXFSZ")


def run(command: Sequence[str], *, overrides: Mapping[str, Any] | None = None) -> NoReturn:
    """Upgrade under the lock (unless MIGRATE_ON_START=false), then exec ``command``.

    Never returns: either the process becomes ``command``, or a MigrateLockError
    (each with its exit code) or an interrupt (SIGTERM: ``Terminated``, SIGINT:
    ``KeyboardInterrupt``) is raised and ``command`` never starts. Commands named in
    ENTRYPOINT_PASSTHROUGH (``migrate-lock``, ``alembic``) are exec'd without migrating.
    ``overrides`` are settings by field name (the CLI's flags). The upgrade is
    ``migrate.upgrade``: a start with nothing to migrate loads nothing heavy, and
    every connection is closed before the exec.
    """
    argv = _command(command)
    with signals_raise():
        # Before migrating: a typo in the command must not cost a migration first.
        executable = _find(argv[0])
        settings = start_settings(overrides)
        name = os.path.basename(argv[0])
        if name in settings.entrypoint_passthrough.split():  # normalised by the schema
            log.info("run.passthrough", command=name)
        elif not settings.migrate_on_start:
            log.info("run.migrate_skipped", reason="MIGRATE_ON_START=false")
        else:
            upgrade(overrides=overrides)
    _exec(executable, argv)


def _command(command: Sequence[str]) -> list[str]:
    argv = list(command)
    if not argv:
        raise UsageError(
            "run needs a command to start after migrating",
            hint="migrate-lock run -- gunicorn app:app",
        )
    if argv[0].startswith("-"):
        # An option run does not have: click passed it on as the command.
        option = argv[0].split("=", 1)[0]
        raise UsageError(
            f"run has no option {option}",
            hint="a fleet of tenants is migrated by `migrate-lock upgrade --tenants SOURCE` "
            "(a Job; see docs/tenants.md), before the application starts"
            if option == "--tenants"
            else "migrate-lock run [--then CMD] [--then-always] -- COMMAND",
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
