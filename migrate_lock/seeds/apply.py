"""Reference data: repeatable seed files, checksummed, applied once per change, under the lock.

A seeds folder (``SEEDS_DIR``, default ``seeds/`` beside ``alembic.ini``) holds
``*.sql`` files (idempotent SQL) and ``*.csv`` files (upserted by primary key, see
csv_merge.py), applied in name order in ONE transaction. A table of ours remembers
each file's checksum: unchanged files are skipped, changed ones applied again.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from migrate_lock.logs import log
from migrate_lock.seeds.csv_merge import Counts, SeedError, upsert_csv
from migrate_lock.seeds.sql_file import run_sql_file

if TYPE_CHECKING:
    import psycopg

    from migrate_lock.settings import Settings
    from migrate_lock.version_table import VersionTable

__all__ = ["SeedError", "SeedFile", "SeedResult", "SeedRun", "run_sql_file", "seed"]

#: Our record of applied seed files, in the version table's schema.
SEEDS_TABLE = "migrate_lock_seeds"

Action = Literal["applied", "skipped", "would_apply"]


@dataclass(frozen=True)
class SeedFile:
    """One seed file, read once: its bytes are what is checksummed and what is applied."""

    name: str
    path: Path
    data: bytes = field(repr=False)

    @cached_property
    def checksum(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    @property
    def kind(self) -> Literal["csv", "sql"]:
        return "csv" if self.name.endswith(".csv") else "sql"


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


def seeds_dir(configured: Path | None, alembic_config: Path) -> Path:
    """Where the seed files are: SEEDS_DIR, else ``seeds/`` beside alembic.ini."""
    return configured if configured is not None else alembic_config.parent / "seeds"


def discover(directory: Path) -> list[SeedFile]:
    """The seed files in ``directory``, in name order (none if it does not exist)."""
    if not directory.is_dir():
        return []
    paths = sorted(
        path
        for path in directory.iterdir()
        if path.is_file() and path.suffix in (".csv", ".sql") and not path.name.startswith(".")
    )
    return [SeedFile(path.name, path, path.read_bytes()) for path in paths]


def changed_seeds(
    connection: psycopg.Connection[Any], table: VersionTable, files: list[SeedFile]
) -> list[SeedFile]:
    """The files whose checksum differs from the one recorded when last applied."""
    if not files:
        return []
    applied = _recorded_checksums(connection, table)
    return [file for file in files if applied.get(file.name) != file.checksum]


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
    import psycopg

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
    from migrate_lock.guard import check_startup, require_confirmation
    from migrate_lock.lock import (
        announce_done,
        committed_under_transaction_lock,
        release,
        wait_for_lock,
        wait_for_transaction_lock,
    )
    from migrate_lock.project import Project

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
        in_transaction = session.lock_scope.transaction
        outcome = (wait_for_transaction_lock if in_transaction else wait_for_lock)(
            session.connection,
            session.lock_key,
            timeout_seconds=project.settings.migration_lock_timeout_seconds,
            work_is_done=lambda: (
                not force and not prune and not changed_seeds(session.connection, table, files)
            ),
        )
        if not outcome.acquired:
            return SeedRun([SeedResult(f.name, "skipped", f.checksum) for f in files], False)
        if in_transaction:
            try:
                with committed_under_transaction_lock(session.connection, session.lock_key):
                    results = apply_seeds(
                        session.connection, table, files, force=force, prune=prune
                    )
            except SeedError:
                raise
            except Exception as error:  # noqa: BLE001 - the COMMIT: a deferred constraint, say
                from migrate_lock.runner import commit_error

                raise commit_error(error, session.connection) from None
            return SeedRun(results, dry_run=False)
        try:
            results = apply_seeds(session.connection, table, files, force=force, prune=prune)
        finally:
            announce_done(session.connection, session.lock_key)
            release(session.connection, session.lock_key)
        return SeedRun(results, dry_run=False)


def _apply_one(
    connection: psycopg.Connection[Any],
    table: VersionTable,
    file: SeedFile,
    *,
    prune: bool,
    dry_run: bool,
) -> SeedResult:
    import psycopg

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


def _tracking(table: VersionTable) -> str:
    return f'"{table.schema}"."{SEEDS_TABLE}"'


def _recorded_checksums(connection: psycopg.Connection[Any], table: VersionTable) -> dict[str, str]:
    row = connection.execute("SELECT to_regclass(%s)", (_tracking(table),)).fetchone()
    if not row or row[0] is None:
        return {}
    rows = connection.execute(
        f"SELECT name, checksum FROM {_tracking(table)} WHERE version_table = %s", (table.name,)
    ).fetchall()
    return {str(name): str(checksum) for name, checksum in rows}


def _ensure_table(connection: psycopg.Connection[Any], table: VersionTable) -> None:
    connection.execute(
        f"CREATE TABLE IF NOT EXISTS {_tracking(table)} ("
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
        f"INSERT INTO {_tracking(table)}"
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
