"""Destructive verbs: ``downgrade``, ``stamp``, ``init-db`` and ``reset``.

Each one asks the guard first (guard.py: run on development and test databases,
elsewhere only when confirmed with the database's name; a refusal changes nothing),
then runs under the same migration lock as ``upgrade``, on the connection that holds
it, so no replica migrates while the schema is being taken apart.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import MetaData

from migrate_lock.errors import Refused, UsageError
from migrate_lock.guard import (
    Protection,
    check_startup,
    read_marker,
    remember_environment,
    require_confirmation,
    write_marker,
)
from migrate_lock.logs import log
from migrate_lock.metadata_guard import ddl_confirmed
from migrate_lock.migrate import upgrade
from migrate_lock.project import DatabaseSession, Project
from migrate_lock.runner import run_alembic
from migrate_lock.version_table import forget_application, record_history

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from migrate_lock.settings import Settings

Operation = Literal["downgrade", "stamp", "init-db", "reset"]


@dataclass(frozen=True)
class DestructiveResult:
    """What a destructive verb did.

    ``steps`` are the revisions run (undone, for a downgrade; moved past, for a stamp);
    ``created_tables`` counts what ``init-db`` created, ``dropped_objects`` what
    ``reset`` dropped before migrating again.
    """

    operation: Operation
    database: str
    environment: str
    confirmed: bool
    from_revisions: tuple[str, ...]
    to_revisions: tuple[str, ...]
    steps: tuple[str, ...]
    created_tables: int = 0
    dropped_objects: int = 0
    duration_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def downgrade(target: str, *, settings: Settings | None = None) -> DestructiveResult:
    """Downgrade to ``target`` (a revision, ``-N`` or ``base``) under the migration lock.

    Destructive: refused (Refused, exit 3) outside development and test unless
    confirmed. A failing revision is rolled back (MigrationFailed, exit 1).
    """

    def run(session: DatabaseSession) -> tuple[str, ...]:
        _require_version_table(session, "downgrade")
        return tuple(_alembic(session, "downgrade", target))

    return _guarded("downgrade", settings, run, target=target)


def stamp(target: str, *, settings: Settings | None = None) -> DestructiveResult:
    """Set the version table to ``target`` without running any revision, under the lock.

    Destructive (the database then claims a schema it may not have): refused outside
    development and test unless confirmed.
    """

    def run(session: DatabaseSession) -> tuple[str, ...]:
        steps = tuple(_alembic(session, "stamp", target))
        _remember(session, "stamp")
        return steps

    return _guarded("stamp", settings, run, target=target)


def init_db(metadata: str | MetaData, *, settings: Settings | None = None) -> DestructiveResult:
    """Create a brand-new database's tables with ``create_all``, then stamp the heads.

    ``metadata`` is a MetaData (or a declarative base) or its ``module:attribute``
    path. Both steps run in one transaction under the migration lock. Refused (exit
    3) when the database already has a revision or any of the tables, and, being
    destructive, outside development and test unless confirmed.
    """
    found = load_metadata(metadata) if isinstance(metadata, str) else _as_metadata(metadata)

    def run(session: DatabaseSession) -> tuple[str, ...]:
        _require_brand_new(session, found)

        def create(connection: Connection) -> None:
            with ddl_confirmed():
                found.create_all(connection)

        steps = tuple(_alembic(session, "stamp", "heads", before=create))
        _remember(session, "init-db")
        return steps

    return _guarded("init-db", settings, run, created_tables=len(found.tables))


def reset(*, settings: Settings | None = None) -> DestructiveResult:
    """Drop everything in the version table's schema, then upgrade to the heads again.

    For development and test databases only: refused (exit 3) elsewhere, confirmed or
    not. Tables, views, sequences, types and functions of that schema go (not those of
    extensions); so do migrate-lock's own tables, but the environment marker is kept.
    The drop is one transaction under the migration lock; the upgrade then takes the
    lock again like any replica would.
    """
    started = time.monotonic()
    project = Project(settings)
    check_startup(project.settings)
    with project.session(application_name="migrate-lock reset") as session:
        guard = require_confirmation(session, "reset", development_only=True)
        before = session.current() or ()
        with session.migration_lock(needs_session_scope="reset"):
            marker = read_marker(session.connection, session.version_table)
            dropped = _drop_schema_objects(session)
            forget_application(session.connection, session.version_table)
            if marker is not None:
                write_marker(
                    session.connection, session.version_table, marker.environment, how="reset"
                )
    result = upgrade(settings=project.settings)
    return _done(
        "reset",
        guard,
        before,
        result.to_revisions,
        result.applied,
        started,
        dropped_objects=dropped,
    )


def load_metadata(path: str) -> MetaData:
    """Import ``module:attribute`` (from the current directory too) and return its MetaData."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise UsageError(
            f"--metadata must be module:attribute, got {path!r}",
            hint="for example --metadata myapp.models:Base.metadata",
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(
            f"cannot import {module_name!r} for --metadata: {error}",
            hint="run from your project's directory, or check the module path",
        ) from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise UsageError(f"{module_name} has no attribute {attribute!r} (--metadata)")
        found = getattr(found, part)
    return _as_metadata(found)


def _guarded(
    operation: Operation,
    settings: Settings | None,
    run: Callable[[DatabaseSession], tuple[str, ...]],
    *,
    target: str | None = None,
    created_tables: int = 0,
) -> DestructiveResult:
    started = time.monotonic()
    project = Project(settings)
    check_startup(project.settings)
    if target is not None:
        _check_target(project, operation, target)
    with project.session(application_name=f"migrate-lock {operation}") as session:
        guard = require_confirmation(session, operation)
        with session.migration_lock(needs_session_scope=operation):
            before = session.current() or ()
            steps = run(session)
            after = session.current() or ()
    return _done(operation, guard, before, after, steps, started, created_tables=created_tables)


def _done(
    operation: Operation,
    guard: Protection,
    before: tuple[str, ...],
    after: tuple[str, ...],
    steps: tuple[str, ...],
    started: float,
    *,
    created_tables: int = 0,
    dropped_objects: int = 0,
) -> DestructiveResult:
    result = DestructiveResult(
        operation=operation,
        database=guard.database,
        environment=guard.effective,
        confirmed=guard.protected,
        from_revisions=before,
        to_revisions=after,
        steps=steps,
        created_tables=created_tables,
        dropped_objects=dropped_objects,
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    log.info(
        "destructive.done",
        operation=operation,
        database=result.database,
        environment=result.environment,
        confirmed=result.confirmed,
        from_rev=list(before),
        to_rev=list(after),
        steps=len(steps),
        duration_ms=result.duration_ms,
    )
    return result


def _check_target(project: Project, operation: str, target: str) -> None:
    # Relative (-1, +2) and branch (@) targets are Alembic's to resolve; a plain revision
    # we check now, so a typo is a usage error before anything is locked.
    if target == "base" or target.startswith(("-", "+")) or "@" in target:
        if operation == "stamp" and target.startswith(("-", "+")):
            raise UsageError("stamp needs an absolute revision, `heads` or `base`")
        return
    project.scripts.resolve(target)


def _alembic(
    session: DatabaseSession,
    command: Literal["downgrade", "stamp"],
    target: str,
    *,
    before: Callable[[Connection], None] | None = None,
) -> list[str]:
    config = session.project.config
    config.attributes["version_table"] = session.version_table.name
    config.attributes["version_table_schema"] = session.version_table.schema
    return run_alembic(config, session.connection, command, target, before=before)


def _remember(session: DatabaseSession, how: str) -> None:
    # Like an upgrade: the database now has a revision, so record it and the environment.
    project = session.project
    current = session.current() or ()
    record_history(session.connection, session.version_table, project.scripts.ancestry(current))
    remember_environment(session.connection, session.version_table, project.settings, how=how)


def _require_version_table(session: DatabaseSession, operation: str) -> None:
    if not session.current():
        raise UsageError(
            f"nothing to {operation}: {session.version_table.qualified} has no revision",
            hint="check DATABASE_URL points at the right database",
        )


def _require_brand_new(session: DatabaseSession, metadata: MetaData) -> None:
    current = session.current()
    if current:
        raise Refused(
            f"init-db is for a brand-new database, and {session.database_name!r} is at "
            f"revision {', '.join(current)}; nothing was changed",
            hint="run `migrate-lock upgrade` to bring it to the heads",
        )
    names = [
        f'"{table.schema or session.version_table.schema}"."{table.name}"'
        for table in metadata.sorted_tables
    ]
    row = session.connection.execute(
        "SELECT array_agg(name) FROM unnest(%s::text[]) AS name"
        " WHERE to_regclass(name) IS NOT NULL",
        (names,),
    ).fetchone()
    existing = list(row[0]) if row and row[0] else []
    if existing:
        raise Refused(
            f"init-db is for a brand-new database, and {session.database_name!r} already has "
            f"{', '.join(existing[:5])}; nothing was changed",
            hint="run `migrate-lock upgrade`, or `migrate-lock stamp REVISION` if the schema "
            "already matches a revision",
        )


def _as_metadata(found: Any) -> MetaData:
    candidate = getattr(found, "metadata", found)
    if not isinstance(candidate, MetaData):
        raise UsageError(
            f"--metadata must name a SQLAlchemy MetaData or declarative base, "
            f"got {type(found).__name__}",
            hint="for example --metadata myapp.models:Base.metadata",
        )
    return candidate


# Relations, then types, then routines of one schema, minus what belongs to an extension
# and sequences that belong to a column (serial, identity): they go with their table.
_OBJECTS = """
SELECT 1, CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                      WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
       format('%%I.%%I', n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND NOT c.relispartition
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                   AND d.objid = c.oid AND d.deptype = 'e')
   AND NOT (c.relkind = 'S' AND EXISTS (
            SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
               AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
               AND d.deptype IN ('a', 'i')))
UNION ALL
SELECT 2, CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
       format('%%I.%%I', n.nspname, t.typname)
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname = %(schema)s AND t.typtype IN ('e', 'd', 'r', 'c')
   AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                   AND d.objid = t.oid AND d.deptype = 'e')
UNION ALL
SELECT 3, CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
       format('%%I.%%I(%%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = %(schema)s
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                   AND d.objid = p.oid AND d.deptype = 'e')
 ORDER BY 1, 3
"""


def _drop_schema_objects(session: DatabaseSession) -> int:
    connection = session.connection
    schema = session.version_table.schema
    with connection.transaction():
        objects = connection.execute(_OBJECTS, {"schema": schema}).fetchall()
        for _, kind, name in objects:
            # CASCADE: one drop may take others with it (a serial's sequence, a view);
            # IF EXISTS: those are then skipped.
            connection.execute(f"DROP {kind} IF EXISTS {name} CASCADE")
    log.info("reset.dropped", schema=schema, objects=len(objects))
    return len(objects)
