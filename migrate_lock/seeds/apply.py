"""Reference data: repeatable seed files, checksummed, applied once per change, under the lock.

A seeds folder (``SEEDS_DIR``, default ``seeds/`` beside ``alembic.ini``) holds
``*.sql`` files (idempotent SQL) and ``*.csv`` files (upserted by primary key, see
csv_merge.py), applied in name order in ONE transaction. A table of ours remembers
each file's checksum: unchanged files are skipped, changed ones applied again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from migrate_lock.guard import check_startup, require_confirmation
from migrate_lock.logs import log
from migrate_lock.project import Project
from migrate_lock.seeds.csv_merge import Counts, SeedError, upsert_csv
from migrate_lock.seeds.files import SeedFile, changed_seeds, discover, seeds_dir, tracking_table
from migrate_lock.seeds.sql_file import run_sql_file

if TYPE_CHECKING:
    from migrate_lock.settings import Settings
    from migrate_lock.version_table import VersionTable

__all__ = ["SeedError", "SeedFile", "SeedResult", "SeedRun", "run_sql_file", "seed"]

Action = Literal["applied", "skipped", "would_apply"]


@dataclass(frozen=True)
class SeedResult:
    """What happened to one seed file."""

    name: str
    action: Action
    checksum: str
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    duration_ms: int = 0


@dataclass(frozen=True)
class SeedRun:
    """The outcome of ``seed()``: one result per seed file, in the order applied."""

    results: list[SeedResult]
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "seeds": [asdict(result) for result in self.results]}


def apply_seeds(
    connection: psycopg.Connection[Any],
    table: VersionTable,
    files: list[SeedFile],
    *,
    force: bool = False,
    prune: bool = False,
    dry_run: bool = False,
) -> list[SeedResult]:
    """Apply changed (or, with ``force``, all) ``files`` in one transaction.

    A dry run computes the same counts and rolls everything back. Raises SeedError
    (exit 1) naming file, line and column; then nothing of this run is applied.
    """
    due = files if force else changed_seeds(connection, table, files)
    due_names = {file.name for file in due}
    results: list[SeedResult] = []
    try:
        with connection.transaction():
            _ensure_table(connection, table)
            for file in files:
                if file.name not in due_names:
                    results.append(SeedResult(file.name, "skipped", file.checksum))
                    continue
                results.append(_apply_one(connection, table, file, prune=prune, dry_run=dry_run))
            if dry_run:
                raise psycopg.Rollback
    except SeedError:
        raise
    except psycopg.Error as error:
        raise SeedError(
            f"seeds failed: [{error.sqlstate}] {error.diag.message_primary or error}"
        ) from None
    for result in results:
        if result.action != "skipped":
            log.info(f"seed.{result.action}", **asdict(result))
    return results


def seed(
    *,
    settings: Settings | None = None,
    force: bool = False,
    prune: bool = False,
    dry_run: bool = False,
) -> SeedRun:
    """``migrate-lock seed``: apply changed seed files under the migration lock.

    A dry run takes no lock and changes nothing.
    """
    project = Project(settings)
    check_startup(project.settings)
    files = discover(seeds_dir(project.settings.seeds_dir, project.settings.alembic_config))
    with project.session(application_name="migrate-lock seed") as session:
        table = session.version_table
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
            results = apply_seeds(session.connection, table, files, force=force, prune=prune)
        return SeedRun(results, dry_run=False)


def _apply_one(
    connection: psycopg.Connection[Any],
    table: VersionTable,
    file: SeedFile,
    *,
    prune: bool,
    dry_run: bool,
) -> SeedResult:
    started = time.monotonic()
    try:
        if file.kind == "csv":
            counts = upsert_csv(connection, file.name, file.data, prune=prune, dry_run=dry_run)
        else:
            run_sql_file(file.path, connection)
            counts = Counts()
    except psycopg.Error as error:
        raise SeedError(
            f"{file.name}: [{error.sqlstate}] {error.diag.message_primary or error}",
            hint="fix the seed file; nothing from this seed run was applied",
        ) from None
    result = SeedResult(
        name=file.name,
        action="would_apply" if dry_run else "applied",
        checksum=file.checksum,
        inserted=counts.inserted,
        updated=counts.updated,
        unchanged=counts.unchanged,
        deleted=counts.deleted,
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    if not dry_run:
        _record(connection, table, result)
    return result


def _ensure_table(connection: psycopg.Connection[Any], table: VersionTable) -> None:
    connection.execute(
        f"CREATE TABLE IF NOT EXISTS {tracking_table(table)} ("
        " version_table text NOT NULL,"
        " name text NOT NULL,"
        " checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now(),"
        " inserted bigint NOT NULL DEFAULT 0,"
        " updated bigint NOT NULL DEFAULT 0,"
        " unchanged bigint NOT NULL DEFAULT 0,"
        " deleted bigint NOT NULL DEFAULT 0,"
        " PRIMARY KEY (version_table, name))"
    )


def _record(connection: psycopg.Connection[Any], table: VersionTable, result: SeedResult) -> None:
    connection.execute(
        f"INSERT INTO {tracking_table(table)}"
        " (version_table, name, checksum, inserted, updated, unchanged, deleted)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (version_table, name) DO UPDATE SET checksum = EXCLUDED.checksum,"
        " applied_at = now(), inserted = EXCLUDED.inserted, updated = EXCLUDED.updated,"
        " unchanged = EXCLUDED.unchanged, deleted = EXCLUDED.deleted",
        (
            table.name,
            result.name,
            result.checksum,
            result.inserted,
            result.updated,
            result.unchanged,
            result.deleted,
        ),
    )
