"""Where the database stands against the code: at head, ahead, behind, or unknown.

``schema_state`` is what a ``/readyz`` handler calls; ``migrate-lock status`` and the
upgrade's lock-free pre-check use the same comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from migrate_lock.errors import UnknownDatabaseRevision

if TYPE_CHECKING:
    from migrate_lock.revisions import Scripts

Status = Literal["at_head", "ahead", "behind", "unknown"]


@dataclass(frozen=True)
class ReadAhead:
    """The version table's revisions as a caller read them lock-free moments before (a
    fleet's plan reads every tenant's in one query): an upgrade's lock-free check uses them
    instead of reading again; its check under the lock still reads. None: no version table."""

    current: tuple[str, ...] | None


@dataclass(frozen=True)
class SchemaState:
    """The database's revisions compared with the code's target revisions.

    ``ready`` is true at head and ahead (a newer release already migrated: a rolling
    deploy), false when revisions are pending or the database is at a revision this
    code has never seen applied.
    """

    status: Status
    current: tuple[str, ...]
    heads: tuple[str, ...]
    pending: tuple[str, ...]
    unknown: tuple[str, ...]

    @property
    def ready(self) -> bool:
        return self.status in ("at_head", "ahead")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ready": self.ready}


def compare(
    scripts: Scripts,
    current: tuple[str, ...] | None,
    target: tuple[str, ...],
    seen: Callable[[Iterable[str]], set[str]],
) -> SchemaState:
    """Compare ``current`` (None: no version table) with ``target`` revisions.

    ``seen(revisions)`` says which revisions the database has been at; it is asked
    only when the database is at a revision the scripts do not know.
    """
    at = current or ()
    unknown = tuple(rev for rev in at if not scripts.knows(rev))
    if unknown:
        ahead = set(target) <= seen(target)
        return SchemaState("ahead" if ahead else "unknown", at, target, (), unknown)
    pending = tuple(scripts.pending(at, target))
    if pending:
        return SchemaState("behind", at, target, pending, ())
    return SchemaState("at_head" if set(at) == set(target) else "ahead", at, target, (), ())


def require_known(state: SchemaState) -> None:
    """Raise UnknownDatabaseRevision (exit 5) when the database is at a revision this code
    does not know (one wording for every verb)."""
    if state.status == "unknown":
        raise UnknownDatabaseRevision(
            f"the database is at revision {', '.join(state.unknown)}, which this code does not "
            "know and which was never at this code's heads",
            hint="deploy the code that has that revision, or check DATABASE_URL points at the "
            "right database",
        )
