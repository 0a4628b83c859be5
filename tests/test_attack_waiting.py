"""Waiting costs no connection slot, also while a revision holds the version table.

Found by attacking issue 16 item 2's waiting: a revision that alters the version table
(``ALTER TABLE alembic_version ALTER COLUMN version_num TYPE varchar(64)``, a common fix
for long revision ids) holds it in ACCESS EXCLUSIVE mode until the run commits. Every
replica starting meanwhile read the table before waiting for the lock, and queued behind
that lock with its connection for the whole run: no window, no polling, no holder report,
no MIGRATION_LOCK_TIMEOUT_SECONDS, and "role": "fast_path" at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest

from migrate_lock.lock import lock_key

from support import assert_one_line_failure, leave_to_alembic, query, run_cli, spawn


def queued_on_a_table_lock(database_url: str) -> int:
    rows = query(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE 'migrate-lock%%' AND wait_event_type = 'Lock'",
    )
    return int(str(rows[0][0]))


def test_waiters_do_not_queue_behind_a_revision_that_holds_the_version_table(
    project: Path, at_head: str
) -> None:
    run_cli(["freeze"], cwd=project, database_url=None)
    with psycopg.connect(at_head) as holder:
        # A migrating replica, inside a revision that altered the version table.
        key = lock_key(holder.info.dbname, "public", "alembic_version")
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        holder.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
        waiters = [
            spawn(
                ["upgrade", "--json"],
                cwd=project,
                database_url=at_head,
                LOG_FORMAT="json",
                MIGRATION_LOCK_WAIT_CONNECTION_SECONDS="0.3",
                MIGRATION_LOCK_TIMEOUT_SECONDS="60",
            )
            for _ in range(2)
        ]
        deadline = time.monotonic() + 3
        queued = 0
        while time.monotonic() < deadline:
            queued = max(queued, queued_on_a_table_lock(at_head))
            time.sleep(0.1)
        holder.commit()  # the run commits: the table lock goes, then the migration lock
        holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
        holder.commit()
    outputs = [waiter.communicate(timeout=60) for waiter in waiters]

    assert [w.returncode for w in waiters] == [0, 0], [err[-300:] for _, err in outputs]
    assert queued == 0, f"{queued} waiters queued behind the version table's lock"
    assert [json.loads(out)["role"] for out, _ in outputs] == ["waited", "waited"]
    assert all('"lock.waiting_without_connection"' in err for _, err in outputs)


@pytest.mark.parametrize("manifest", [True, False], ids=["lean", "full"])
@pytest.mark.parametrize("verb", [["status"], ["current"]], ids=["status", "current"])
def test_status_during_a_revision_that_holds_the_version_table_answers_at_once(
    project: Path, at_head: str, verb: list[str], manifest: bool
) -> None:
    """Why: status and current read the version table and queued behind that lock for the
    whole run (a readiness probe hung, holding a connection); now exit 75 at once, naming
    the migration in progress."""
    if manifest:
        run_cli(["freeze"], cwd=project, database_url=None)
    else:
        leave_to_alembic(project)
    with psycopg.connect(at_head) as holder:
        key = lock_key(holder.info.dbname, "public", "alembic_version")
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        holder.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
        try:
            result = run_cli(verb, cwd=project, database_url=at_head, timeout=20)
        finally:
            holder.rollback()

    line = assert_one_line_failure(result, 75)
    assert "a migration in progress" in line
