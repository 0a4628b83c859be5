"""Fleets (issue 17): ``upgrade --tenants`` on a real server, with real processes.

One database with 200 tenant schemas (made by one statement) carries the main story:
two tenants fail by design (a table of theirs is in the way), one is locked by another
session (skipped with ``--skip-locked``, waited for without it), the fleet is SIGKILLed
midway and rerun, connections never exceed ``--jobs`` + 1, and ``status --tenants``
counts the tenants per revision. The project is ``migrate-lock init``'s, its env.py
unmodified: the tenants' tables land in their schemas through the search_path, and
``config.attributes["tenant"]`` reaches the revisions.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import Server, fresh_database

from migrate_lock.dsn import parse_database_url
from migrate_lock.lock import lock_key
from migrate_lock.scaffold import init_project

from pgbouncer import pgbouncer
from support import query, run_cli, spawn

TENANTS = 200
#: Tenants whose schema already has the table revision 0003 creates: they fail by design.
CONFLICTING = ("tenant_013", "tenant_077")
#: A tenant whose migration lock another session holds.
LOCKED = "tenant_100"

_NOTES = '''"""notes: who migrated this schema"""

import os

from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    tenant = context.config.attributes.get("tenant", "?")
    op.execute("CREATE TABLE notes (tenant text NOT NULL, in_schema text NOT NULL)")
    op.execute(f"INSERT INTO notes VALUES ('{tenant}', current_schema())")
    if os.environ.get("FLEET_TEST_TEMP_TABLE"):
        # A worker reuses its connection: a temporary table left for the next tenant would
        # make its 0002 fail. (Not behind a transaction pooler, where the pooled server
        # connection keeps it for whichever client comes next, fleet or not.)
        op.execute("CREATE TEMP TABLE scratch (x int)")


def downgrade() -> None:
    op.execute("DROP TABLE notes")
'''

_ITEMS = '''"""items"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)")
    op.execute("CREATE INDEX items_name ON items (name)")


def downgrade() -> None:
    op.execute("DROP TABLE items")
'''

#: One statement makes the tenants: tenant_001 ... tenant_200.
MAKE_SCHEMAS = (
    "DO $$ BEGIN FOR i IN 1..{count} LOOP EXECUTE format('CREATE SCHEMA tenant_%s',"
    " lpad(i::text, 3, '0')); END LOOP; END $$"
)

#: Each tenant's revision and tables, read in one query.
TENANT_TABLES = (
    "SELECT n.nspname, (SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_class c"
    " WHERE c.relnamespace = n.oid AND c.relkind = 'r') FROM pg_namespace n"
    " WHERE n.nspname ~ '^tenant_[0-9]+$' ORDER BY 1"
)


def tenant_project(path: Path) -> Path:
    """``migrate-lock init``'s project (env.py untouched) with two revisions of tables."""
    init_project(path)
    versions = path / "migrations" / "versions"
    (versions / "0002_notes.py").write_text(_NOTES)
    (versions / "0003_items.py").write_text(_ITEMS)
    return path


@pytest.fixture(scope="module")
def fleet_database(pg_server: Server) -> Iterator[str]:
    with fresh_database(pg_server) as url:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(MAKE_SCHEMAS.format(count=TENANTS))
            for schema in CONFLICTING:
                connection.execute(f"CREATE TABLE {schema}.items (legacy int)")
        yield url


def revisions_and_tables(url: str) -> dict[str, tuple[str | None, str]]:
    """Each tenant's revision (None: no version table or row) and its other tables."""
    tables = {str(name): str(found or "") for name, found in query(url, TENANT_TABLES)}
    result: dict[str, tuple[str | None, str]] = {}
    for schema, found in tables.items():
        revision = None
        if "alembic_version" in found.split(","):
            rows = query(url, f"SELECT version_num FROM {schema}.alembic_version")
            revision = str(rows[0][0]) if rows else None
        rest = ",".join(name for name in found.split(",") if name and name != "alembic_version")
        result[schema] = (revision, rest)
    return result


def assert_nothing_half_applied(url: str) -> dict[str, str | None]:
    """Every tenant's tables are exactly its revision's (rolled back whole, or committed)."""
    expected = {None: "", "0001": "", "0002": "notes", "0003": "items,notes"}
    found = revisions_and_tables(url)
    for schema, (revision, tables) in found.items():
        want = expected[revision]
        if schema in CONFLICTING:
            want = ",".join(sorted({*filter(None, want.split(",")), "items"}))
        assert tables == want, (schema, revision, tables)
    return {schema: revision for schema, (revision, _) in found.items()}


class ConnectionSampler:
    """Samples the database's sessions (but ours and the lock holder's) every 20 ms."""

    def __init__(self, url: str, *, excluded: set[int]) -> None:
        self.url = url
        self.excluded = excluded
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        database = parse_database_url(self.url).database
        with psycopg.connect(self.url, autocommit=True) as connection:
            while not self._stop.is_set():
                row = connection.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                    " AND pid <> pg_backend_pid() AND NOT pid = ANY(%s)",
                    (database, list(self.excluded)),
                ).fetchone()
                self.most = max(self.most, int(row[0]) if row else 0)
                time.sleep(0.02)


def wait_for_no_migrate_lock_session(url: str, timeout: float = 60) -> None:
    """Until the workers of a killed fleet have finished their tenant and exited."""
    deadline = time.monotonic() + timeout
    while query(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE 'migrate-lock%%'",
    )[0][0]:
        assert time.monotonic() < deadline, "the killed fleet's workers did not exit"
        time.sleep(0.1)


def fleet_json(result_stdout: str) -> dict[str, object]:
    document = json.loads(result_stdout)
    assert isinstance(document, dict)
    return document


def outcomes(document: dict[str, object]) -> dict[str, str]:
    tenants = document["tenants"]
    assert isinstance(tenants, list)
    return {item["tenant"]: item["outcome"] for item in tenants}


def test_a_fleet_of_200_schemas_failures_a_lock_a_kill_and_reruns(
    fleet_database: str, tmp_path: Path
) -> None:
    """Why (issue 17, Done when): a fleet is only useful if one tenant's failure, lock or
    a killed run never costs the others, and a rerun finishes the job."""
    url = fleet_database
    project = tenant_project(tmp_path / "project")
    source = "schemas:tenant_%"

    # 1. Killed midway: SIGKILL the fleet once 20 tenants are at head.
    fleet = spawn(
        ["upgrade", "--tenants", source, "--jobs", "2"],
        cwd=project,
        database_url=url,
        FLEET_TEST_TEMP_TABLE="1",
    )
    deadline = time.monotonic() + 60
    while True:
        done = query(
            url,
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname ~ '^tenant_[0-9]+$' AND c.relname = 'items' AND c.relkind = 'r'",
        )[0][0]
        if int(str(done)) >= 20 + len(CONFLICTING) or fleet.poll() is not None:
            break
        assert time.monotonic() < deadline, "the fleet made no progress"
        time.sleep(0.05)
    assert fleet.poll() is None, "the fleet finished before it could be killed"
    os.kill(fleet.pid, signal.SIGKILL)
    fleet.communicate()
    wait_for_no_migrate_lock_session(url)
    before = assert_nothing_half_applied(url)
    done_before = {schema for schema, revision in before.items() if revision == "0003"}
    assert len(done_before) >= 20
    assert len(done_before) < TENANTS - len(CONFLICTING)

    # 2. Rerun with one tenant locked by another session: --skip-locked reports it.
    database = parse_database_url(url).database
    with psycopg.connect(url, autocommit=True) as holder:
        holder_pid = holder.info.backend_pid
        holder.execute(
            "SELECT pg_advisory_lock(%s)", (lock_key(database, LOCKED, "alembic_version"),)
        )
        with ConnectionSampler(url, excluded={holder_pid}) as sampler:
            result = run_cli(
                ["upgrade", "--tenants", source, "--jobs", "3", "--skip-locked", "--json"],
                cwd=project,
                database_url=url,
                FLEET_TEST_TEMP_TABLE="1",
            )
    assert sampler.most <= 3 + 1, sampler.most
    assert result.returncode == 1, result.stderr
    document = fleet_json(result.stdout)
    found = outcomes(document)
    assert {tenant for tenant, outcome in found.items() if outcome == "failed"} == set(CONFLICTING)
    assert [tenant for tenant, outcome in found.items() if outcome == "locked"] == [LOCKED]
    assert {tenant for tenant, outcome in found.items() if outcome == "at_head"} == done_before
    migrated = {tenant for tenant, outcome in found.items() if outcome == "migrated"}
    assert migrated == set(found) - done_before - set(CONFLICTING) - {LOCKED}
    failed = document["failed"]
    assert isinstance(failed, list)
    assert all('relation "items" already exists' in item["error"] for item in failed[:2])
    assert "tenant_013" in result.stderr and "migrate-lock: error: 2 of 200" in result.stderr

    # 3. Without --skip-locked, the locked tenant is waited for (released after a second).
    holder = psycopg.connect(url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(database, LOCKED, "alembic_version"),))
    release = threading.Timer(1.0, holder.close)
    release.start()
    result = run_cli(
        ["upgrade", "--tenants", source, "--jobs", "2", "--lock-timeout", "60", "--json"],
        cwd=project,
        database_url=url,
        FLEET_TEST_TEMP_TABLE="1",
    )
    release.join()
    assert result.returncode == 1, result.stderr
    found = outcomes(fleet_json(result.stdout))
    assert found[LOCKED] == "migrated"
    assert {tenant for tenant, outcome in found.items() if outcome == "failed"} == set(CONFLICTING)

    # 4. status --tenants: counts per revision, the tenants behind, exit 4.
    result = run_cli(["status", "--tenants", source], cwd=project, database_url=url)
    assert result.returncode == 4, result.stdout + result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert f"0003 {TENANTS - len(CONFLICTING)}" in lines
    assert f"(none) {len(CONFLICTING)}" in lines
    assert "tenant_013: empty at (none)" in lines

    # 5. Fixed, the last run migrates the two and exits 0; every tenant is in its schema.
    with psycopg.connect(url, autocommit=True) as connection:
        for schema in CONFLICTING:
            connection.execute(f"DROP TABLE {schema}.items")
    result = run_cli(
        ["upgrade", "--tenants", source, "--json"],
        cwd=project,
        database_url=url,
        FLEET_TEST_TEMP_TABLE="1",
    )
    assert result.returncode == 0, result.stderr
    document = fleet_json(result.stdout)
    assert document["counts"] == {"at_head": TENANTS - 2, "migrated": 2}
    final = assert_nothing_half_applied(url)
    assert set(final.values()) == {"0003"}
    every_note = " UNION ALL ".join(
        f"SELECT '{schema}', tenant, in_schema FROM {schema}.notes" for schema in sorted(final)
    )
    notes = query(url, every_note)
    assert notes == [(f"tenant_{i:03d}",) * 3 for i in range(1, TENANTS + 1)]
    # Nothing in public: the search_path put every table in its tenant's schema.
    assert query(url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_two_shards_at_once_never_touch_the_same_tenant_and_cover_all(
    pg_server: Server, database_url: str, tmp_path: Path
) -> None:
    """Why (issue 17, item 5): a Kubernetes Indexed Job runs its shards side by side; one
    of them here goes through PgBouncer in transaction mode (the transaction lock scope,
    search_path by SET LOCAL), and no pooled connection keeps the tenant's search_path."""
    project = tenant_project(tmp_path / "project")
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(MAKE_SCHEMAS.format(count=40))
    direct = parse_database_url(database_url)
    with pgbouncer(pg_server.url("postgres"), pool_size=4) as (port, _log):
        pooled = database_url.replace(f"@{direct.host}:{direct.port}/", f"@127.0.0.1:{port}/")
        shards = [
            spawn(
                ["upgrade", "--tenants", "schemas:tenant_%", "--shard", "/2", "--json"],
                cwd=project,
                database_url=url,
                JOB_COMPLETION_INDEX=str(index),
            )
            for index, url in enumerate((database_url, pooled))
        ]
        documents = []
        for shard in shards:
            stdout, stderr = shard.communicate(timeout=120)
            assert shard.returncode == 0, stderr
            documents.append(fleet_json(stdout))
        paths = {str(row[0]) for _ in range(6) for row in query(pooled, "SHOW search_path")}
    assert paths == {'"$user", public'}
    first, second = (set(outcomes(document)) for document in documents)
    assert first and second
    assert not first & second
    assert first | second == {f"tenant_{i:03d}" for i in range(1, 41)}
    assert all(set(outcomes(document).values()) == {"migrated"} for document in documents)
    assert set(assert_nothing_half_applied(database_url).values()) == {"0003"}
