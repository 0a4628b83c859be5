"""Reliability under real-world conditions: shared databases, connection limits."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from migrate_lock.embedded import EmbeddedPostgres
from migrate_lock.example import write_example_project
from migrate_lock.lock import lock_key

from support import TEST_PASSWORD, query, run_cli, spawn


def in_schema(database_url: str, schema: str) -> str:
    query(database_url, f"CREATE SCHEMA IF NOT EXISTS {schema}")
    return f"{database_url}?options={quote(f'-csearch_path={schema}')}"


def test_two_applications_in_one_database_do_not_wait_for_each_other(
    project: Path, database_url: str
) -> None:
    """Why: a constant lock key makes unrelated apps on one cluster block each other."""
    app_a = in_schema(database_url, "app_a")
    app_b = in_schema(database_url, "app_b")
    with psycopg.connect(database_url, autocommit=True) as holder:
        # App A is "migrating" (holds its lock) for the whole test.
        holder.execute(
            "SELECT pg_advisory_lock(%s)",
            (lock_key(holder.info.dbname, "app_a", "alembic_version"),),
        )
        result = run_cli(
            ["upgrade", "--json"],
            cwd=project,
            database_url=app_b,
            MIGRATION_LOCK_TIMEOUT_SECONDS="5",
        )
        blocked = run_cli(
            ["upgrade"], cwd=project, database_url=app_a, MIGRATION_LOCK_TIMEOUT_SECONDS="1"
        )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["role"] == "migrated"
    assert json.loads(result.stdout)["wait_ms"] < 1000
    assert query(database_url, "SELECT version_num FROM app_b.alembic_version") == [("0021",)]
    assert blocked.returncode == 75  # app A's own lock still applies to app A


@pytest.fixture(scope="module")
def small_server() -> Iterator[EmbeddedPostgres]:
    """A server that allows 20 connections (3 of them reserved for superusers)."""
    with EmbeddedPostgres(
        password=TEST_PASSWORD, server_options={"max_connections": "20"}
    ) as server:
        yield server


@pytest.mark.slow
def test_64_replicas_against_20_connections_all_succeed_exactly_once(
    project: Path, small_server: EmbeddedPostgres
) -> None:
    """Why: "too many clients" during a scale-up is transient; replicas must retry, not crash."""
    run_cli(["freeze"], cwd=project, database_url=None)
    processes = [
        spawn(
            ["upgrade"],
            cwd=project,
            database_url=small_server.url(),
            LOG_FORMAT="json",
            DB_CONNECT_TIMEOUT_SECONDS="180",
        )
        for _ in range(64)
    ]
    outputs = [process.communicate(timeout=400)[1] for process in processes]

    assert [p.returncode for p in processes] == [0] * 64, [o[-300:] for o in outputs if o]
    retries = sum(out.count('"db.retry"') for out in outputs)
    migrated = sum(out.count('"role": "migrated"') for out in outputs)
    counts = query(small_server.url(), "SELECT revision, count(*) FROM migration_log GROUP BY 1")
    assert migrated == 1
    assert len(counts) == 20 and {count for _, count in counts} == {1}
    print(f"64 replicas, max_connections=20: {retries} connection retries in all")
    assert retries > 0  # the limit was really hit


@pytest.fixture
def restartable_server() -> Iterator[EmbeddedPostgres]:
    """A server of this test's own: restarting the shared one would disturb other tests."""
    with EmbeddedPostgres(password=TEST_PASSWORD) as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [False, True], ids=["alembic-heads", "manifest"])
def test_a_database_restart_mid_migration_is_survived_exactly_once(
    tmp_path: Path, restartable_server: EmbeddedPostgres, frozen: bool
) -> None:
    """Why: a failover during a deploy must not crash-loop the replicas or half-apply."""
    project = tmp_path / "project"
    write_example_project(project, 21, slow_revision=12, slow_seconds=4)
    if frozen:
        run_cli(["freeze"], cwd=project, database_url=None)
    url = restartable_server.url()
    processes = [
        spawn(["upgrade"], cwd=project, database_url=url, LOG_FORMAT="json") for _ in range(4)
    ]
    time.sleep(3)  # the migrator is inside the slow revision, the others wait
    restartable_server.restart()
    outputs = [process.communicate(timeout=180)[1] for process in processes]

    assert [p.returncode for p in processes] == [0] * 4, [o[-400:] for o in outputs]
    assert any('"db.connection_lost"' in out for out in outputs)
    counts = query(url, "SELECT revision, count(*) FROM migration_log GROUP BY 1")
    assert len(counts) == 20 and {count for _, count in counts} == {1}
