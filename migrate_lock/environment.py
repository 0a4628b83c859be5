"""``migrate-lock env show`` and ``env set``: the database's environment marker, as verbs.

The marker itself, and what it protects, is guard.py's.
"""

from __future__ import annotations

from migrate_lock.errors import UsageError
from migrate_lock.guard import (
    RANK,
    Protection,
    check_startup,
    is_new_database,
    protection,
    require_confirmation,
    require_database_name,
    write_marker,
)
from migrate_lock.lean.settings_schema import ENVIRONMENTS
from migrate_lock.logs import log
from migrate_lock.project import Project
from migrate_lock.settings import Settings


def show_environment(*, settings: Settings | None = None) -> Protection:
    """``migrate-lock env show``: the marker, the local ENVIRONMENT, and the verdict."""
    project = Project(settings)
    with project.session(application_name="migrate-lock env") as session:
        return protection(session)


def set_environment(name: str, *, settings: Settings | None = None) -> Protection:
    """``migrate-lock env set NAME``: mark the database as ``name``.

    Raising protection is always allowed, and so is any marker on a brand-new database
    (no version table, no table of the application). Lowering a marker is a
    destructive operation and needs the same confirmation as a downgrade; marking an
    existing database that has no marker (it counts as production) as anything but
    production needs the database's name: ``--confirm-destructive DBNAME``.
    """
    wanted = name.strip().lower()
    if wanted not in RANK:
        raise UsageError(
            f"unknown environment {name!r}", hint=f"use one of {', '.join(ENVIRONMENTS)}"
        )
    project = Project(settings)
    check_startup(project.settings)
    with project.session(application_name="migrate-lock env") as session:
        before = protection(session)
        operation = f"env set {wanted}"
        if (
            before.marker is None
            and wanted != "production"
            and not is_new_database(session.connection, session.version_table)
        ):
            require_database_name(
                session,
                operation,
                f'"{before.database}" already has tables but no environment marker, so it '
                "counts as production",
            )
        elif before.marker is not None and RANK[wanted] < RANK[before.effective]:
            require_confirmation(session, f"{operation} (lowering the protection)")
        # Under the lock: an upgrade writes the marker too, and must not race with this.
        with session.migration_lock():
            write_marker(session.connection, session.version_table, wanted, how="env set")
        log.info(
            "guard.marked",
            environment=wanted,
            previous=before.marker.environment if before.marker else None,
            how="env set",
        )
        return protection(session)
