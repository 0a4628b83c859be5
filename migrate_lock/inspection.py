"""Read-only verbs: ``status``, ``current``, ``heads``, ``history``, and ``schema_state``.

None of them takes the migration lock or writes anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from migrate_lock.errors import ExitCode
from migrate_lock.lock import LockHolder, find_holder
from migrate_lock.project import Project
from migrate_lock.settings import Settings, load_settings
from migrate_lock.state import SchemaState


@dataclass(frozen=True)
class Status:
    """The database against the code, plus who holds the migration lock right now."""

    state: SchemaState
    lock_key: int
    lock_holder: LockHolder | None

    @property
    def exit_code(self) -> ExitCode:
        """0 at head or ahead, 4 when revisions are pending, 5 for an unknown revision."""
        if self.state.status == "behind":
            return ExitCode.PENDING
        if self.state.status == "unknown":
            return ExitCode.UNKNOWN_REVISION
        return ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.state.as_dict(),
            "lock_key": self.lock_key,
            "lock_holder": asdict(self.lock_holder) if self.lock_holder else None,
        }


def status(*, settings: Settings | None = None) -> Status:
    """Where the database stands against the code's heads, and who holds the lock."""
    project = Project(settings)
    scripts = project.scripts
    with project.session(application_name="migrate-lock status") as session:
        return Status(
            state=session.state(scripts.heads(), scripts),
            lock_key=session.lock_key,
            lock_holder=find_holder(session.connection, session.lock_key),
        )


def schema_state(
    database_url: str | None = None, *, settings: Settings | None = None
) -> SchemaState:
    """Whether the database is ready for this code; for an application's ``/readyz``.

    ``SchemaState.ready`` is true at head and ahead (a rolling deploy), false when
    behind or at an unknown revision. ``database_url`` overrides DATABASE_URL.
    """
    if settings is None:
        settings = load_settings(database_url=database_url, migration_database_url=database_url)
    project = Project(settings)
    scripts = project.scripts
    with project.session(application_name="migrate-lock readiness") as session:
        return session.state(scripts.heads(), scripts)


def current(*, settings: Settings | None = None) -> tuple[str, ...]:
    """The revisions the database is at (empty before the first upgrade)."""
    project = Project(settings)
    with project.session(application_name="migrate-lock current") as session:
        return session.current() or ()


def heads(*, settings: Settings | None = None) -> tuple[str, ...]:
    """The head revisions of the code's migration scripts (no database needed)."""
    return Project(settings).scripts.heads()


@dataclass(frozen=True)
class RevisionInfo:
    """One revision of the scripts, newest first in ``history``."""

    revision: str
    down_revisions: tuple[str, ...]
    doc: str
    is_head: bool


def history(*, settings: Settings | None = None) -> list[RevisionInfo]:
    """Every revision of the scripts, newest first (no database needed)."""
    script = Project(settings).scripts.script
    found = []
    for revision in script.walk_revisions("base", "heads"):
        down = revision.down_revision
        downs = (down,) if isinstance(down, str) else tuple(down or ())
        found.append(
            RevisionInfo(
                revision=revision.revision,
                down_revisions=downs,
                doc=revision.doc or "",
                is_head=revision.is_head,
            )
        )
    return found
