"""Read-only verbs: ``status``, ``current``, ``heads``, ``history``, and ``schema_state``.

None of them takes the migration lock or writes anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from migrate_lock.errors import ExitCode
from migrate_lock.lean.manifest import Manifest, read_manifest
from migrate_lock.lock import LockHolder, find_holder
from migrate_lock.project import DatabaseSession, Project, located_script_files
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
    manifest = _fresh_manifest(project)
    if manifest is None:
        project.scripts  # noqa: B018 - a revision that does not load fails before connecting
    with project.session(application_name="migrate-lock status") as session:
        return Status(
            state=_state(project, session, manifest),
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
    manifest = _fresh_manifest(project)
    if manifest is None:
        project.scripts  # noqa: B018 - a revision that does not load fails before connecting
    with project.session(application_name="migrate-lock readiness") as session:
        return _state(project, session, manifest)


def _fresh_manifest(project: Project) -> Manifest | None:
    """The heads manifest (``migrate-lock freeze``) when it still matches the files."""
    files = located_script_files(project.settings.alembic_config)
    return read_manifest(files) if files is not None else None


def _state(project: Project, session: DatabaseSession, manifest: Manifest | None) -> SchemaState:
    """The database against the heads: at head answered from a fresh manifest with no
    revision file loaded; anything else from the scripts (loaded once per process)."""
    if manifest is not None:
        current = session.current()
        if current and set(current) == set(manifest.heads):
            return SchemaState("at_head", current, manifest.heads, (), ())
    scripts = project.scripts
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
    """One revision of the scripts, newest first in ``history``.

    ``line`` is the revision as ``alembic history`` prints it: parents, branch labels and
    the ``(head)``, ``(branchpoint)`` and ``(mergepoint)`` markers, then the message.
    """

    revision: str
    down_revisions: tuple[str, ...]
    doc: str
    is_head: bool
    branch_labels: tuple[str, ...] = ()
    is_branch_point: bool = False
    is_merge_point: bool = False
    line: str = ""


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
                branch_labels=tuple(sorted(revision.branch_labels)),
                is_branch_point=revision.is_branch_point,
                is_merge_point=revision.is_merge_point,
                # Alembic's own words, so both tools print one history the same way.
                line=revision.cmd_format(
                    verbose=False, include_branches=True, include_doc=True, include_parents=True
                ),
            )
        )
    return found
