"""Reference data: repeatable seed files, checksummed, applied once per change, under the lock.

A seeds folder (``SEEDS_DIR``, default ``seeds/`` beside ``alembic.ini``) holds
``*.sql`` files (idempotent SQL) and ``*.csv`` files (upserted by primary key, see
csv_merge.py), applied in name order in ONE transaction. A table of ours remembers
each file's checksum: unchanged files are skipped, changed ones applied again.

That one transaction is never ended by a seed: SQL files are checked for transaction
control before anything runs (sql_file.py: a whole-file ``BEGIN … COMMIT`` is dropped,
anything else refused), and the transaction status is checked after every statement.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus

from migrate_lock.errors import TableLockTimeout, describe_sql_error
from migrate_lock.logs import log
from migrate_lock.seeds.csv_merge import Counts, SeedError, upsert_csv
from migrate_lock.seeds.files import SeedFile, changed_seeds, tracking_table
from migrate_lock.seeds.sql_file import (
    Statement,
    TransactionControlError,
    read_statements,
    run_sql_file,
)
from migrate_lock.version_table import create_if_missing, ensure_own_schema, move_legacy_tables

if TYPE_CHECKING:
    from migrate_lock.version_table import VersionTable

__all__ = [
    "SeedError",
    "SeedFile",
    "SeedResult",
    "apply_seeds",
    "check_seed_files",
    "run_sql_file",
]

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
    # Every SQL file is read and checked before anything runs (a refusal changes nothing).
    scripts = {
        file.name: _sql_statements(file, announce=True) for file in due if file.kind == "sql"
    }
    results: list[SeedResult] = []
    try:
        with connection.transaction():
            _ensure_table(connection, table)
            for file in files:
                if file.name not in due_names:
                    results.append(SeedResult(file.name, "skipped", file.checksum))
                    continue
                results.append(
                    _apply_one(
                        connection,
                        table,
                        file,
                        scripts.get(file.name, []),
                        prune=prune,
                        dry_run=dry_run,
                    )
                )
            if dry_run:
                raise psycopg.Rollback
    except (SeedError, TableLockTimeout):
        raise
    except psycopg.errors.LockNotAvailable as error:
        raise TableLockTimeout(
            "the seeds", describe_sql_error(error), outcome=_NOTHING_APPLIED
        ) from None
    except psycopg.Error as error:
        if isinstance(error.__context__, SeedError):
            # A seed ended the transaction: rolling back to the savepoint failed after it.
            raise error.__context__ from None
        raise SeedError(
            f"seeds failed: [{error.sqlstate}] {error.diag.message_primary or error}"
        ) from None
    for result in results:
        if result.action != "skipped":
            log.info(f"seed.{result.action}", **asdict(result))
    return results


def check_seed_files(files: list[SeedFile]) -> None:
    """Raise SeedError (exit 1) for a SQL seed file that is not UTF-8 or that controls
    transactions, before anything runs (``upgrade`` checks its due seeds before migrating)."""
    for file in files:
        if file.kind == "sql":
            _sql_statements(file, announce=False)


def _sql_statements(file: SeedFile, *, announce: bool) -> list[Statement]:
    try:
        text = file.data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = file.data.count(b"\n", 0, error.start) + 1
        raise SeedError(
            f"{file.name}:{line}: not UTF-8 (byte {error.start})",
            hint="save the file as UTF-8; nothing from this seed run was applied",
        ) from None
    try:
        statements, wrapped = read_statements(file.path, text)
    except TransactionControlError as error:
        raise SeedError(error.describe(file.name), hint=error.hint) from None
    if wrapped and announce:
        log.warning("sql_file.transaction_wrapper_ignored", file=file.name)
    return statements


def _apply_one(
    connection: psycopg.Connection[Any],
    table: VersionTable,
    file: SeedFile,
    statements: list[Statement],
    *,
    prune: bool,
    dry_run: bool,
) -> SeedResult:
    started = time.monotonic()
    where = file.name
    try:
        if file.kind == "csv":
            counts = upsert_csv(connection, file.name, file.data, prune=prune, dry_run=dry_run)
        else:
            for statement in statements:
                where = f"{file.name}:{statement.line}"
                connection.execute(statement.sql)
                _refuse_ended_transaction(connection, where)
            counts = Counts()
        where = file.name
        _refuse_ended_transaction(connection, where)
    except psycopg.errors.LockNotAvailable as error:
        raise TableLockTimeout(where, describe_sql_error(error), outcome=_NOTHING_APPLIED) from None
    except psycopg.Error as error:
        raise SeedError(
            f"{where}: [{error.sqlstate}] {error.diag.message_primary or error}",
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


def _refuse_ended_transaction(connection: psycopg.Connection[Any], where: str) -> None:
    """Stop if a seed ended the seed run's transaction (or the one holding the lock)."""
    if connection.info.transaction_status != TransactionStatus.INTRANS:
        raise SeedError(
            f"{where} ended the transaction the seeds run in (and, in the transaction lock "
            "scope, the one holding the migration lock); migrate-lock stopped, and what ran "
            "before it in that transaction may be committed",
            hint="seed files may not commit or roll back: remove the statement that ends "
            "the transaction",
        )


def _ensure_table(connection: psycopg.Connection[Any], table: VersionTable) -> None:
    # Our schema may not exist yet (a database migrated by an older release, its tables
    # beside the version table): create it (ConfigError, exit 78, when the role may not)
    # and move those tables in, inside this transaction.
    ensure_own_schema(connection)
    move_legacy_tables(connection, table)
    create_if_missing(
        connection,
        f"CREATE TABLE IF NOT EXISTS {tracking_table(table)} ("
        " version_table text NOT NULL,"
        " name text NOT NULL,"
        " checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now(),"
        " inserted bigint NOT NULL DEFAULT 0,"
        " updated bigint NOT NULL DEFAULT 0,"
        " unchanged bigint NOT NULL DEFAULT 0,"
        " deleted bigint NOT NULL DEFAULT 0,"
        " PRIMARY KEY (version_table, name))",
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
            table.key,
            result.name,
            result.checksum,
            result.inserted,
            result.updated,
            result.unchanged,
            result.deleted,
        ),
    )
