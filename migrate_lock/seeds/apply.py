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
import psycopg.errors

from migrate_lock.errors import TableLockTimeout, describe_sql_error
from migrate_lock.logs import log
from migrate_lock.seeds.csv_merge import Counts, SeedError, upsert_csv
from migrate_lock.seeds.files import SeedFile, changed_seeds, tracking_table
from migrate_lock.seeds.sql_file import run_sql_file

if TYPE_CHECKING:
    from migrate_lock.version_table import VersionTable

__all__ = ["SeedError", "SeedFile", "SeedResult", "apply_seeds", "run_sql_file"]

_NOTHING_APPLIED = "nothing from this seed run was applied"

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
    except (SeedError, TableLockTimeout):
        raise
    except psycopg.errors.LockNotAvailable as error:
        raise TableLockTimeout(
            "the seeds", describe_sql_error(error), outcome=_NOTHING_APPLIED
        ) from None
    except psycopg.Error as error:
        raise SeedError(
            f"seeds failed: [{error.sqlstate}] {error.diag.message_primary or error}"
        ) from None
    for result in results:
        if result.action != "skipped":
            log.info(f"seed.{result.action}", **asdict(result))
    return results


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
    except psycopg.errors.LockNotAvailable as error:
        raise TableLockTimeout(
            file.name, describe_sql_error(error), outcome=_NOTHING_APPLIED
        ) from None
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
