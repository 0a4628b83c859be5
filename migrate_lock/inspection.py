"""Read-only verbs: ``status``, ``current``, ``heads``, ``history``, and ``schema_state``.

None of them takes the migration lock or writes anything.

``status`` at head is answered as ``upgrade`` at head is, on the lean path
(lean/status.py: no Alembic, SQLAlchemy, psycopg or pydantic); so this module loads
the full path (project.py, settings.py) only inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from migrate_lock.errors import ExitCode, MigrationInProgress, TemporaryError
from migrate_lock.lean.manifest import Manifest, read_manifest
from migrate_lock.lean.static_revisions import StaticRevisions, read_revisions
from migrate_lock.lean.status import lean_status
from migrate_lock.lock import LockHolder, find_holder
from migrate_lock.state import SchemaState
from migrate_lock.version_table import version_table_busy

if TYPE_CHECKING:
    from migrate_lock.project import DatabaseSession, Project
    from migrate_lock.settings import Settings


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


def status(
    *, settings: Settings | None = None, overrides: Mapping[str, Any] | None = None
) -> Status:
    """Where the database stands against the code's heads, and who holds the lock.

    ``settings`` are validated settings; without them the environment (and ``.env``) is
    read, with ``overrides`` (settings by field name; None means not given) on top, and
    at head the answer comes without loading Alembic, psycopg or pydantic.
    """
    if settings is None:
        lean = lean_status(overrides)
        if lean is not None:
            return Status(state=lean.state, lock_key=lean.lock_key, lock_holder=lean.lock_holder)
        settings = _load_settings(**(overrides or {}))
    project = _project(settings)
    known = _known_heads(project)
    if known is None:
        project.scripts  # noqa: B018 - a revision that does not load fails before connecting
    with _files_first(project), project.session(application_name="migrate-lock status") as session:
        _not_being_migrated(session)
        return Status(
            state=_state(project, session, known),
            lock_key=session.lock_key,
            lock_holder=find_holder(session.connection, session.lock_key),
        )


def schema_state(
    database_url: str | None = None, *, settings: Settings | None = None
) -> SchemaState:
    """Whether the database is ready for this code; for an application's ``/readyz``.

    ``SchemaState.ready`` is true at head and ahead (a rolling deploy), false when
    behind or at an unknown revision. ``database_url`` overrides DATABASE_URL. While a
    revision holds the version table (until its run commits) it raises MigrationInProgress
    at once rather than wait: count that as not ready yet.
    """
    if settings is None:
        settings = _load_settings(database_url=database_url, migration_database_url=database_url)
    project = _project(settings)
    known = _known_heads(project)
    if known is None:
        project.scripts  # noqa: B018 - a revision that does not load fails before connecting
    with (
        _files_first(project),
        project.session(application_name="migrate-lock readiness") as session,
    ):
        _not_being_migrated(session)
        return _state(project, session, known)


def _not_being_migrated(session: DatabaseSession) -> None:
    """MigrationInProgress (exit 75) at once, rather than reading a version table that a
    revision holds: the read would wait for that whole run, holding this connection."""
    if version_table_busy(session.connection, session.version_table):
        holder = find_holder(session.connection, session.lock_key)
        raise MigrationInProgress(
            f"the version table {session.version_table.qualified} is locked by a migration "
            "in progress"
            + (f" ({holder.describe()})" if holder else "")
            + "; its revision is known once that run commits",
            hint="retry in a moment; a readiness check can count this as not ready yet",
        )


@contextmanager
def _files_first(project: Project) -> Iterator[None]:
    """A database that does not answer (exit 75) is reported only once the revision files
    are known to load: a file that does not is the operator's to fix (exit 78), and retrying
    would not mend it. (With known heads the files are not loaded when the database answers.)
    """
    try:
        yield
    except TemporaryError:
        project.scripts  # noqa: B018 - raises ProjectFileError for a file that does not load
        raise


def _known_heads(project: Project) -> Manifest | StaticRevisions | None:
    """The heads without loading a revision file: the heads manifest (``migrate-lock
    freeze``) while it matches the files, else the revision files' literal assignments
    when the static reader is certain (lean/static_revisions.py), else None."""
    from migrate_lock.project import located_script_files  # noqa: PLC0415 - see _project

    files = located_script_files(project.settings.alembic_config)
    manifest = read_manifest(files) if files is not None else None
    return manifest or read_revisions(project.settings.alembic_config)


def _state(
    project: Project, session: DatabaseSession, known: Manifest | StaticRevisions | None
) -> SchemaState:
    """The database against the heads: at head answered from the known heads with no
    revision file loaded; anything else from the scripts (loaded once per process)."""
    if known is not None:
        current = session.current()
        if current and set(current) == set(known.heads):
            return SchemaState("at_head", current, known.heads, (), ())
    scripts = project.scripts
    return session.state(scripts.heads(), scripts)


def _project(settings: Settings | None) -> Project:
    # The full path's late import, as in migrate.py: `status` at head never needs it.
    from migrate_lock.project import Project  # noqa: PLC0415 - the lean-to-full step

    return Project(settings)


def _load_settings(**values: Any) -> Settings:
    from migrate_lock.settings import load_settings  # noqa: PLC0415 - as _project

    return load_settings(**values)


def current(*, settings: Settings | None = None) -> tuple[str, ...]:
    """The revisions the database is at (empty before the first upgrade)."""
    project = _project(settings)
    with project.session(application_name="migrate-lock current") as session:
        _not_being_migrated(session)
        return session.current() or ()


def heads(*, settings: Settings | None = None) -> tuple[str, ...]:
    """The head revisions of the code's migration scripts (no database needed)."""
    return _project(settings).scripts.heads()


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
    script = _project(settings).scripts.script
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
