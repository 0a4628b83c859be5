"""A fleet hands each tenant's ``upgrade`` the revisions its plan read (``ReadAhead``), so
the tenant's lock-free check costs no query. That read may be stale by the time the tenant
runs (another fleet, a shard, a replica migrated it since): the check under the lock reads
the database again, so a stale read can cost a lock, never a second application."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrate_lock import protocol
from migrate_lock.settings import load_settings
from migrate_lock.state import ReadAhead

from support import query


def test_a_stale_read_ahead_takes_the_lock_and_applies_nothing(
    project: Path, at_head: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    settings = load_settings(database_url=at_head, environment="test")
    history_before = query(at_head, "SELECT count(*) FROM migrate_lock.history")

    result = protocol.upgrade(settings=settings, read_ahead=ReadAhead(None))

    assert result.role == "waited"  # the lock taken, the database found at head under it
    assert result.applied == ()
    assert query(at_head, "SELECT version_num FROM alembic_version") == [("0021",)]
    assert query(at_head, "SELECT count(*) FROM migrate_lock.history") == history_before


def test_a_read_ahead_at_the_heads_returns_without_the_lock(
    project: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read is trusted for the lock-free check alone: at the heads, nothing is read."""
    monkeypatch.chdir(project)
    settings = load_settings(database_url=database_url, environment="test")

    result = protocol.upgrade(settings=settings, read_ahead=ReadAhead(("0021",)))

    assert result.role == "fast_path"
    assert query(database_url, "SELECT to_regclass('alembic_version')") == [(None,)]
