"""Seed files as found on disk, and which of them changed since last applied.

Light on purpose (standard library only, the connection typed on ``lean.abc``): the at-head
path asks ``changed_seeds`` on its lean connection before it may say "nothing to do".
Applying them is seeds/apply.py's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from migrate_lock.version_table import LEGACY_SEEDS, existing
from migrate_lock.version_table import SEEDS_TABLE as OWN_SEEDS_TABLE

if TYPE_CHECKING:
    from migrate_lock.lean.abc import LockConnection
    from migrate_lock.version_table import VersionTable

#: Our record of applied seed files: in migrate-lock's own schema (version_table.py).
SEEDS_TABLE = OWN_SEEDS_TABLE


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
    connection: LockConnection, table: VersionTable, files: list[SeedFile]
) -> list[SeedFile]:
    """The files whose checksum differs from the one recorded when last applied."""
    if not files:
        return []
    applied = _recorded_checksums(connection, table)
    return [file for file in files if applied.get(file.name) != file.checksum]


def tracking_table(table: VersionTable) -> str:
    """The qualified name of our seeds table: one place per database (rows are keyed by
    ``table``'s qualified name, ``table.key``, as the history is)."""
    return SEEDS_TABLE


def _recorded_checksums(connection: LockConnection, table: VersionTable) -> dict[str, str]:
    # An older release kept the table beside the version table; until the next migration
    # or seed run moves it (version_table.move_legacy_tables), its checksums still count:
    # otherwise every seed file would run again once after migrate-lock is upgraded.
    ours, legacy = tracking_table(table), table.legacy(LEGACY_SEEDS)
    recorded: dict[str, str] = {}
    # The old table sat beside the version table, so its rows carry the bare name; ours
    # holds every application of the database, keyed by the qualified version table.
    places = ((legacy, table.name), (ours, table.key))
    for present, (where, key) in zip(existing(connection, legacy, ours), places, strict=True):
        if present:  # ours last: where both exist, its rows are the newer
            rows = connection.execute(
                f"SELECT name, checksum FROM {where} WHERE version_table = %s", (key,)
            ).fetchall()
            recorded.update({str(name): str(checksum) for name, checksum in rows})
    return recorded
