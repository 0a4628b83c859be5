"""Two sessions creating migrate-lock's own schema and tables at the same instant both succeed.

``CREATE ... IF NOT EXISTS`` is not serialized: when two sessions create the same object at
once, the second waits for the first and then fails with a unique violation on the catalog
(two applications, or two tenants of a fleet, starting on a new database).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg

from migrate_lock.version_table import VersionTable, ensure_own_schema, record_history

from support import query


def race(database_url: str, first_ddl: str, second: Callable[[psycopg.Connection], None]) -> None:
    """``first_ddl`` runs in an open transaction; ``second`` starts (and waits behind it) on
    another connection; then the first commits. Raises what ``second`` raised."""
    failures: list[BaseException] = []
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as other:
        first.execute(first_ddl)

        def run() -> None:
            try:
                with other.transaction():
                    second(other)
            except BaseException as error:  # reported by the test
                failures.append(error)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 30
        while not query(
            database_url,
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid = %s",
            (other.info.backend_pid,),
        ):
            assert thread.is_alive() and time.monotonic() < deadline, "never waited"
            time.sleep(0.02)
        first.commit()
        thread.join(30)
    if failures:
        raise failures[0]


def test_two_sessions_creating_our_schema_at_once_both_succeed(database_url: str) -> None:
    race(database_url, 'CREATE SCHEMA "migrate_lock"', ensure_own_schema)

    assert query(database_url, "SELECT to_regnamespace('migrate_lock') IS NOT NULL") == [(True,)]


def test_two_sessions_creating_our_history_table_at_once_both_succeed(database_url: str) -> None:
    query(database_url, 'CREATE SCHEMA "migrate_lock"')
    race(
        database_url,
        "CREATE TABLE migrate_lock.history (version_table text NOT NULL, revision text NOT NULL,"
        " first_applied_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (version_table, revision))",
        lambda connection: record_history(
            connection, VersionTable("public", "alembic_version"), ["0001"]
        ),
    )

    assert query(database_url, "SELECT revision FROM migrate_lock.history") == [("0001",)]
