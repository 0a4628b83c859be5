"""Waiting costs no connection slot: waiters give their connection back after a first window.

During a long migration the new replicas' waiters would otherwise hold connections the
serving replicas need (issue 16, item 2).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg

from migrate_lock.lock import lock_key

from support import query, run_cli, spawn

WAITERS = 6


def lean_connections(database_url: str) -> int:
    """The migrate-lock connections to this database other than ours (lean ones are named)."""
    rows = query(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE 'migrate-lock%%' AND pid <> pg_backend_pid()",
    )
    return int(str(rows[0][0]))


def test_waiters_give_their_connections_back_after_the_first_window(
    project: Path, database_url: str
) -> None:
    run_cli(["freeze"], cwd=project, database_url=None)
    with psycopg.connect(database_url, autocommit=True) as holder:
        # Someone else "migrates" (holds the lock) while the waiters start.
        holder.execute(
            "SELECT pg_advisory_lock(%s)",
            (lock_key(holder.info.dbname, "public", "alembic_version"),),
        )
        waiters = [
            spawn(
                ["upgrade", "--json"],
                cwd=project,
                database_url=database_url,
                LOG_FORMAT="json",
                MIGRATION_LOCK_WAIT_CONNECTION_SECONDS="0.5",
                MIGRATION_LOCK_TIMEOUT_SECONDS="120",
            )
            for _ in range(WAITERS)
        ]
        # Past every waiter's first window (0.5 s after it connects): sample for a second.
        time.sleep(4)
        held_later = max(lean_connections(database_url) for _ in range(20))
    outputs = [waiter.communicate(timeout=120) for waiter in waiters]

    assert [w.returncode for w in waiters] == [0] * WAITERS, [err[-300:] for _, err in outputs]
    # Short polls (a few ms each, about once a second each) may overlap, rarely.
    assert held_later <= 2, f"{held_later} of {WAITERS} waiters still hold a connection"
    roles = [json.loads(out)["role"] for out, _ in outputs]
    assert roles.count("migrated") == 1 and roles.count("waited") == WAITERS - 1
    assert all('"lock.waiting_without_connection"' in err for _, err in outputs if err)
    counts = query(database_url, "SELECT revision, count(*) FROM migration_log GROUP BY 1")
    assert len(counts) == 20 and {count for _, count in counts} == {1}
