"""Many replicas at once: the promise of the whole tool."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from migrate_lock.lock import lock_key
from migrate_lock.sandbox.example import applied_counts

from support import query, spawn

#: Replicas started at once: each is a real interpreter loading Alembic, and eight on two
#: cores already start together and race for the lock (sixteen doubled the cost, no more).
REPLICAS = 8


def start_replicas(
    project: Path, database_url: str, count: int = REPLICAS
) -> list[tuple[int, str]]:
    processes = [
        spawn(["upgrade", "--json"], cwd=project, database_url=database_url) for _ in range(count)
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=240)
        results.append((process.returncode, stdout + stderr))
    return results


@pytest.mark.slow
def test_eight_replicas_on_an_empty_database_apply_each_revision_exactly_once(
    project: Path, database_url: str
) -> None:
    """Why: the race every hand-rolled recipe loses — "relation already exists",
    duplicated reference rows — must not happen with any number of replicas."""
    results = start_replicas(project, database_url)

    assert [code for code, _ in results] == [0] * REPLICAS, "\n".join(o for _, o in results)
    with psycopg.connect(database_url, autocommit=True) as second_connection:
        counts = applied_counts(second_connection)
        leagues = second_connection.execute(
            "SELECT name, count(*) FROM leagues GROUP BY name HAVING count(*) > 1"
        ).fetchall()
        version = second_connection.execute("SELECT version_num FROM alembic_version").fetchall()
    assert len(counts) == 20
    assert set(counts.values()) == {1}
    assert leagues == []
    assert version == [("0021",)]
    roles = [output for _, output in results if '"role": "migrated"' in output]
    assert len(roles) == 1


@pytest.mark.slow
def test_eight_replicas_at_head_exit_zero_while_another_session_holds_the_lock(
    project: Path, database_url: str
) -> None:
    """Why: at head there is nothing to wait for; a stuck holder must not block restarts."""
    first = start_replicas(project, database_url, count=1)
    assert first[0][0] == 0, first[0][1]

    with psycopg.connect(database_url, autocommit=True) as holder:
        key = lock_key(holder.info.dbname, "public", "alembic_version")
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        results = start_replicas(project, database_url)
        still_held = query(
            database_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        )

    assert [code for code, _ in results] == [0] * REPLICAS
    assert all('"role": "fast_path"' in output for _, output in results)
    assert still_held == [(1,)]
