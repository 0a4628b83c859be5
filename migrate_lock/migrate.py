"""``upgrade``: the front door, the same for the CLI, ``run`` and library callers.

Most starts of most replicas find nothing to do. ``upgrade`` asks the at-head path
(lean/fastpath.py: standard library and libpq only) first; only when that path
cannot settle the start does it load the full path (protocol.py: Alembic,
SQLAlchemy, psycopg, pydantic), handing over the lock the lean path may hold.

This module is the one place where the lean path leads to the full one, so it
imports the full path only when it is needed (``_upgrade_in_full``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from migrate_lock.lean.fastpath import UNDECIDED, LeanStart, lean_upgrade
from migrate_lock.lean.settings_schema import (
    LeanSettings,
    dotenv_path,
    read_dotenv,
    read_settings,
)
from migrate_lock.logs import log
from migrate_lock.outcome import UpgradeResult

if TYPE_CHECKING:
    from migrate_lock.settings import Settings


def upgrade(
    target: str = "heads",
    *,
    settings: Settings | None = None,
    overrides: Mapping[str, Any] | None = None,
    then: Callable[[], object] | None = None,
) -> UpgradeResult:
    """Bring the database to ``target`` under the migration lock, exactly once.

    Safe to call from any number of processes at once. Raises a MigrateLockError
    subclass (each with its exit code) on failure; nothing is half-applied.
    ``settings`` are validated settings; without them the environment (and ``.env``)
    is read, with ``overrides`` (settings by field name; None means not given) on
    top. To the heads and without ``settings``, the at-head path answers first: at
    head it returns without loading Alembic, SQLAlchemy, psycopg or pydantic.

    ``then`` is the application's bootstrap step (it beats MIGRATE_THEN): called with no
    arguments after the revisions and seeds, while the lock is held, when this start
    migrated or seeded or the step changed (docs/bootstrap.md); its exception is ThenFailed
    (exit 1). A start given ``then`` takes the full path (the caller has loaded its
    application already).
    """
    if target != "heads" or settings is not None or then is not None:
        return _upgrade_in_full(target, settings, overrides, None, then)
    with lean_upgrade(overrides) as lean:
        if lean.result is not None:
            return lean.result
        # The lean connection still holds the lock (if it got it) until the full
        # path's connection is open: no other replica starts loading Alembic for it.
        return _upgrade_in_full(target, None, overrides, lean if lean.hold else None)


def _upgrade_in_full(
    target: str,
    settings: Settings | None,
    overrides: Mapping[str, Any] | None,
    handover: LeanStart | None,
    then: Callable[[], object] | None = None,
) -> UpgradeResult:
    # The package's one deliberate late import: the full path costs more CPU than the
    # whole at-head answer (docs/performance.md), so only a start that needs it pays.
    from migrate_lock import protocol  # noqa: PLC0415 - the lean-to-full step, see above

    return protocol.upgrade(
        target, settings=settings, overrides=overrides, handover=handover, then=then
    )


def start_settings(overrides: Mapping[str, Any] | None = None) -> LeanSettings | Settings:
    """The settings as the lean reader reads them when it is certain, else validated in
    full (ConfigError, exit 78, on a wrong value). Logging is configured from them."""
    try:
        dotenv = read_dotenv(dotenv_path(os.environ, overrides))
        lean = read_settings(os.environ, dotenv, overrides or {})
    except UNDECIDED:
        from migrate_lock.settings import load_settings  # noqa: PLC0415 - as protocol above

        full = load_settings(**(overrides or {}))
        log.configure(log_format=full.log_format, level=full.log_level)
        return full
    log.configure(log_format=lean.log_format, level=lean.log_level)
    return lean
