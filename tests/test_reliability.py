"""Reliability under real-world conditions: shared databases, connection limits."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from conftest import Server, fresh_database

from migrate_lock.lock import lock_key
from migrate_lock.sandbox.embedded import EmbeddedPostgres
from migrate_lock.sandbox.example import write_example_project

from support import TEST_PASSWORD, leave_to_alembic, query, run_cli, spawn


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


REPLICAS_AT_A_FULL_SERVER = 24


@pytest.fixture(scope="module")
def small_server() -> Iterator[EmbeddedPostgres]:
    """A server that allows 20 connections (3 of them reserved for superusers)."""
    with EmbeddedPostgres(
        password=TEST_PASSWORD, server_options={"max_connections": "20"}
    ) as server:
        yield server


@pytest.mark.slow
def test_replicas_meeting_a_full_server_retry_and_all_succeed_exactly_once(
    project: Path, small_server: EmbeddedPostgres
) -> None:
    """Why: "too many clients" during a scale-up is transient; replicas must retry, not crash.

    Waiting replicas give their connections back (MIGRATION_LOCK_WAIT_CONNECTION_SECONDS),
    so replicas alone no longer fill the server's 20 slots: other clients hold all of them
    while the replicas start, until they have been turned away, as serving replicas would."""
    run_cli(["freeze"], cwd=project, database_url=None)
    fillers = [psycopg.connect(small_server.url(), autocommit=True) for _ in range(20)]
    processes = [
        spawn(
            ["upgrade"],
            cwd=project,
            database_url=small_server.url(),
            LOG_FORMAT="json",
            DB_CONNECT_TIMEOUT_SECONDS="180",
        )
        for _ in range(REPLICAS_AT_A_FULL_SERVER)
    ]
    # Until the replicas have been turned away more often than there are replicas (the server
    # logs each): then some were turned away on their second attempt, and retried.
    log = small_server.data_dir / "server.log"
    turned_away = log.read_text(errors="replace").count("too many clients")
    deadline = time.monotonic() + 120
    while log.read_text(errors="replace").count("too many clients") < turned_away + 30:
        assert time.monotonic() < deadline, "the replicas never met the connection limit"
        time.sleep(0.1)
    for filler in fillers:
        filler.close()
    outputs = [process.communicate(timeout=400)[1] for process in processes]

    assert [p.returncode for p in processes] == [0] * len(processes), [o[-300:] for o in outputs]
    retries = sum(out.count('"db.retry"') for out in outputs)
    migrated = sum(out.count('"role": "migrated"') for out in outputs)
    counts = query(small_server.url(), "SELECT revision, count(*) FROM migration_log GROUP BY 1")
    assert migrated == 1
    assert len(counts) == 20 and {count for _, count in counts} == {1}
    print(f"{len(processes)} replicas, a full server: {retries} connection retries in all")
    assert retries > 0  # the limit was really hit


@pytest.fixture(scope="module")
def restartable_server() -> Iterator[EmbeddedPostgres]:
    """A server of this module's own: restarting the shared one would disturb other tests.
    Started once for the restart tests; each of them migrates a database of its own."""
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
    else:
        leave_to_alembic(project)
    database = f"restart_{uuid.uuid4().hex[:12]}"
    query(restartable_server.url(), f'CREATE DATABASE "{database}"')
    url = restartable_server.url(database)
    processes = [
        spawn(["upgrade"], cwd=project, database_url=url, LOG_FORMAT="json") for _ in range(4)
    ]
    # Restart only once the migrator is inside the slow revision (others wait by then).
    deadline = time.monotonic() + 60
    while not query(
        url,
        "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s"
        " AND pid <> pg_backend_pid()",
        ("%pg_sleep%",),
    ):
        assert time.monotonic() < deadline, "the slow revision never started"
        time.sleep(0.1)
    restartable_server.restart()
    outputs = [process.communicate(timeout=180)[1] for process in processes]

    assert [p.returncode for p in processes] == [0] * 4, [o[-400:] for o in outputs]
    assert any('"db.connection_lost"' in out for out in outputs)
    counts = query(url, "SELECT revision, count(*) FROM migration_log GROUP BY 1")
    assert len(counts) == 20 and {count for _, count in counts} == {1}


class FreezableProxy:
    """A TCP forwarder on loopback that can stop forwarding without closing anything:
    what a network partition or a frozen VM looks like from the server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.frozen.is_set():
                self.frozen.wait()  # swallow: never forward, never close
                continue
            with contextlib.suppress(OSError):
                sink.sendall(data)


@pytest.mark.slow
def test_a_holder_whose_network_vanishes_is_reaped_and_a_waiter_takes_over(
    tmp_path: Path, pg_server: Server
) -> None:
    """Why: a partitioned or frozen migrator must not hold the lock forever.

    Both lock scopes, each on its own database, at the same time: the test's cost is the
    wait for the server to reap the holder (about 30 s with the default settings), paid once.
    """
    if pg_server.embedded is None:
        pytest.skip("needs the embedded server's port for the proxy")
    project = tmp_path / "project"
    write_example_project(project, 21, slow_revision=12, slow_seconds=2)
    scopes = ("session", "transaction")
    with (
        fresh_database(pg_server) as session_url,
        fresh_database(pg_server) as transaction_url,
        ThreadPoolExecutor(len(scopes)) as pool,
    ):
        urls = (session_url, transaction_url)
        runs = [
            pool.submit(_partition_the_holder, project, pg_server.embedded.port, url, scope)
            for scope, url in zip(scopes, urls, strict=True)
        ]
        results = [run.result() for run in runs]

        for scope, url, (waiter, recovered_after) in zip(scopes, urls, results, strict=True):
            assert waiter.returncode == 0, f"{scope}: {waiter.stderr}"
            assert json.loads(waiter.stdout)["role"] == "migrated", scope
            counts = query(url, "SELECT revision, count(*) FROM migration_log GROUP BY 1")
            assert len(counts) == 20 and {count for _, count in counts} == {1}, scope
            print(
                f"vanished {scope} holder: a waiter finished {recovered_after:.1f} s"
                " after the partition"
            )
            assert recovered_after < 60, scope  # the documented bound with default settings


def _partition_the_holder(
    project: Path, server_port: int, database_url: str, scope: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Freeze the holder's network mid-revision; a waiter's run, and when it finished."""
    proxy = FreezableProxy(server_port)
    behind_proxy = database_url.replace(f":{server_port}/", f":{proxy.port}/")
    holder = spawn(["upgrade"], cwd=project, database_url=behind_proxy, MIGRATION_LOCK_SCOPE=scope)
    try:
        assert holder.stderr is not None
        for line in holder.stderr:
            if "migrate.revision revision=0011" in line:
                break
        proxy.freeze()  # mid-revision 0012: its pg_sleep ends, the reply goes nowhere
        frozen_at = time.monotonic()
        waiter = run_cli(["upgrade", "--json"], cwd=project, database_url=database_url, timeout=120)
        return waiter, time.monotonic() - frozen_at
    finally:
        holder.kill()
        holder.wait()
        proxy.close()
