"""``migrate-lock seed``: apply changed seed files (reference data) under the migration lock.

The machinery (finding seed files, merging CSV, running SQL files) is in ``seeds/``;
this is the verb. Revision files written before ``seeds/`` existed import
``run_sql_file`` from here, so it stays importable from this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from migrate_lock.errors import Refused
from migrate_lock.guard import check_startup, require_confirmation
from migrate_lock.project import DatabaseSession, Project
from migrate_lock.seeds.apply import SeedResult, apply_seeds
from migrate_lock.seeds.files import changed_seeds, discover, seeds_dir
from migrate_lock.seeds.sql_file import run_sql_file
from migrate_lock.state import require_known

if TYPE_CHECKING:
    from migrate_lock.settings import Settings

__all__ = ["SeedRun", "SeedsNotAtHeads", "run_sql_file", "seed"]


class SeedsNotAtHeads(Refused):
    """``seed`` refused: the database is not exactly at this code's heads (exit 3).

    Seed files describe the schema at the heads. Behind, they may not fit yet; ahead (a
    newer release migrated), they would revert that release's reference data.
    ``status`` is ``behind`` or ``ahead``; nothing was changed.
    """

    def __init__(self, message: str, *, hint: str, status: str) -> None:
        super().__init__(message, hint=hint)
        self.status = status


@dataclass(frozen=True)
class SeedRun:
    """The outcome of ``seed()``: one result per seed file, in the order applied."""

    results: list[SeedResult]
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "seeds": [asdict(result) for result in self.results]}


def seed(
    *,
    settings: Settings | None = None,
    force: bool = False,
    prune: bool = False,
    dry_run: bool = False,
) -> SeedRun:
    """``migrate-lock seed``: apply changed seed files under the migration lock.

    A dry run takes no lock and changes nothing. Refused (SeedsNotAtHeads, exit 3) unless
    the database is exactly at this code's heads, dry run included.
    """
    project = Project(settings)
    check_startup(project.settings)
    files = discover(seeds_dir(project.settings.seeds_dir, project.settings.alembic_config))
    with project.session(application_name="migrate-lock seed") as session:
        table = session.version_table
        _require_at_heads(session)
        if prune and not dry_run:
            # Pruning deletes rows: a destructive operation (guard.py), refused unless allowed.
            require_confirmation(session, "seed --prune")
        if dry_run:
            results = apply_seeds(
                session.connection, table, files, force=force, prune=prune, dry_run=True
            )
            return SeedRun(results, dry_run=True)
        # The same hold as upgrade: its DDL timeouts bound the seeds' statements too.
        with session.migration_lock(
            work_is_done=lambda: (
                not force and not prune and not changed_seeds(session.connection, table, files)
            )
        ) as hold:
            if not hold.acquired:
                return SeedRun([SeedResult(f.name, "skipped", f.checksum) for f in files], False)
            _require_at_heads(session)  # again: a newer release may have migrated meanwhile
            results = apply_seeds(session.connection, table, files, force=force, prune=prune)
        return SeedRun(results, dry_run=False)


def _require_at_heads(session: DatabaseSession) -> None:
    scripts = session.project.scripts
    state = session.state(scripts.heads(), scripts)
    require_known(state)
    if state.status == "at_head":
        return
    where = ", ".join(state.current) or "no revision"
    heads = ", ".join(state.heads)
    if state.status == "behind":
        raise SeedsNotAtHeads(
            f"seed refused: the database is at {where}, behind this code's heads ({heads}); "
            "seed files describe the schema at the heads; nothing was changed",
            hint="run migrate-lock upgrade (it applies changed seed files after migrating)",
            status="behind",
        )
    raise SeedsNotAtHeads(
        f"seed refused: the database is at {where}, ahead of this code's heads ({heads}): "
        "a newer release migrated it, and this code's seed files would revert its reference "
        "data; nothing was changed",
        hint="apply seeds from the release whose heads the database is at",
        status="ahead",
    )
