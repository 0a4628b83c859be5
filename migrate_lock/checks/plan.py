"""``plan``: what ``upgrade`` would do now against the configured database. Changes nothing.

The pending revisions in the order they would run, each with its SQL (rendered offline,
as ``upgrade --sql``) and its lint findings (lint.py: destructive, lock-heavy,
retry-unsafe, advice; none on a table an earlier pending revision or statement creates),
the seed files that would be applied, and the timeouts the migrating session would get.
The database is only read: no lock, no version table created, nothing written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from migrate_lock.checks.lint import Finding, check_revisions, render_revisions
from migrate_lock.logs import log
from migrate_lock.project import Project
from migrate_lock.seeds.files import changed_seeds, discover, seeds_dir
from migrate_lock.settings import Settings
from migrate_lock.state import require_known


@dataclass(frozen=True)
class PlannedRevision:
    """One pending revision: its SQL and what lint says about it."""

    revision: str
    doc: str
    sql: str
    findings: tuple[Finding, ...]
    #: Why its SQL was not rendered (it reads from the database), else None.
    needs_database: str | None = None
    #: Destructive or lock-heavy findings on tables created earlier in this run: they
    #: hold no data and no one waits on their locks, so they flag nothing.
    on_new_tables: tuple[Finding, ...] = ()

    @property
    def destructive(self) -> bool:
        return any(f.kind == "destructive" for f in self.findings)

    @property
    def lock_heavy(self) -> bool:
        return any(f.kind == "lock-heavy" for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "doc": self.doc,
            "destructive": self.destructive,
            "lock_heavy": self.lock_heavy,
            "findings": [f.as_dict() for f in self.findings],
            "on_new_tables": [f.as_dict() for f in self.on_new_tables],
            "sql": self.sql,
            "needs_database": self.needs_database,
        }


@dataclass(frozen=True)
class Plan:
    """What ``upgrade`` would do: nothing when ``pending`` and ``seeds`` are empty."""

    database: str
    status: str
    current: tuple[str, ...]
    heads: tuple[str, ...]
    pending: tuple[PlannedRevision, ...]
    seeds: tuple[str, ...]
    timeouts: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "status": self.status,
            "current": list(self.current),
            "heads": list(self.heads),
            "pending": [revision.as_dict() for revision in self.pending],
            "seeds": list(self.seeds),
            "timeouts": self.timeouts,
        }


def plan(*, settings: Settings | None = None, sql: bool = True) -> Plan:
    """Read where the database is and describe the upgrade to the heads. Changes nothing.

    ``sql=False`` (``plan --no-sql``) renders no SQL at all, so there are no lint
    findings either. A revision that reads from the database is shown as needing a live
    database, its SQL not rendered; the others are rendered and linted.

    Raises UnknownDatabaseRevision (exit 5) when the database is at a revision this code
    does not know, and the usual connection and configuration errors.
    """
    project = Project(settings)
    settings = project.settings
    scripts = project.scripts
    heads = scripts.heads()
    with project.session(application_name="migrate-lock plan") as session:
        state = session.state(heads, scripts)
        require_known(state)
        seeds: list[str] = []
        if settings.seed_on_upgrade:
            files = discover(seeds_dir(settings.seeds_dir, settings.alembic_config))
            due = changed_seeds(session.connection, session.version_table, files)
            seeds = [file.name for file in due]
    pending = _planned(project, list(state.pending), sql=sql)
    result = Plan(
        database=project.url.masked,
        status=state.status,
        current=state.current,
        heads=heads,
        pending=tuple(pending),
        seeds=tuple(seeds),
        timeouts={
            "MIGRATION_LOCK_TIMEOUT_SECONDS": f"{settings.migration_lock_timeout_seconds:g}s",
            "DDL_LOCK_TIMEOUT": settings.ddl_lock_timeout,
            "DDL_STATEMENT_TIMEOUT": settings.ddl_statement_timeout,
            "DDL_IDLE_IN_TRANSACTION_TIMEOUT": settings.ddl_idle_in_transaction_timeout,
        },
    )
    log.info(
        "plan.done",
        status=state.status,
        pending=len(pending),
        destructive=[r.revision for r in pending if r.destructive],
        lock_heavy=[r.revision for r in pending if r.lock_heavy],
        seeds=len(seeds),
    )
    return result


def _planned(project: Project, pending: list[str], *, sql: bool) -> list[PlannedRevision]:
    if not pending:
        return []
    if not sql:
        return [PlannedRevision(rev, _doc(project, rev), "", ()) for rev in pending]
    # Rendered from base (offline, so cheap): works whatever the database's revisions are.
    rendered = {r.revision: r for r in render_revisions(project.settings, "heads")}
    chosen = [rendered[rev] for rev in pending if rev in rendered]
    # Linted as one run: a table an earlier pending revision creates is new here.
    checked = check_revisions(project, [r for r in chosen if r.needs_database is None])
    planned = []
    for revision in chosen:
        mine = tuple(f for f in checked.findings if f.revision == revision.revision)
        apart = tuple(f for f in checked.on_new_tables if f.revision == revision.revision)
        text = revision.sql
        if revision.needs_database is not None:
            text = f"-- needs a live database, SQL not rendered: it {revision.needs_database}\n"
        planned.append(
            PlannedRevision(
                revision.revision,
                _doc(project, revision.revision),
                text,
                mine,
                needs_database=revision.needs_database,
                on_new_tables=apart,
            )
        )
    return planned


def _doc(project: Project, revision: str) -> str:
    script = project.scripts.script.get_revision(revision)
    return (script.doc or "").strip() if script is not None else ""
