"""Fleets without a database: sources, sharding, the plan's batching, the summary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from migrate_lock.errors import ExitCode, TenantSourceError, UsageError
from migrate_lock.fleet import plan as plan_module
from migrate_lock.fleet.plan import (
    FleetPlan,
    TenantState,
    classify,
    identifier_problem,
    schema_revisions,
)
from migrate_lock.fleet.report import FleetResult, Progress, TenantOutcome, summary_table
from migrate_lock.fleet.sources import (
    Shard,
    Tenant,
    TenantSource,
    classify_values,
    database_tenants,
    parse_shard,
    parse_source,
    read_database_file,
    shard_of,
)
from migrate_lock.fleet.worker import tenant_settings
from migrate_lock.settings import load_settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("schemas:tenant_%", TenantSource("schemas", "tenant_%")),
        ("  SCHEMAS: tenant_% ", TenantSource("schemas", "tenant_%")),
        ("query:SELECT name FROM tenants", TenantSource("query", "SELECT name FROM tenants")),
        ("query:SELECT 'a:b'", TenantSource("query", "SELECT 'a:b'")),
        ("databases:shop_%", TenantSource("databases", "shop_%")),
        ("databases:@tenants.txt", TenantSource("file", "tenants.txt")),
    ],
)
def test_sources_parse(text: str, expected: TenantSource) -> None:
    """Why: --tenants is the feature's front door; each documented form must parse."""
    assert parse_source(text) == expected
    assert parse_source(str(expected)) == expected


@pytest.mark.parametrize("text", ["tenant_%", "tables:x", "schemas:", "query: ", "databases:@"])
def test_a_source_that_does_not_parse_is_a_usage_error(text: str) -> None:
    with pytest.raises(TenantSourceError) as raised:
        parse_source(text)
    assert raised.value.exit_code == ExitCode.USAGE
    assert "\n" not in str(raised.value)


def test_database_tenants_from_names_urls_and_a_file(tmp_path: Path) -> None:
    """Why: a URL's tenant is its database (what the summary and the shard use), and a
    file may carry comments and blank lines."""
    listed = tmp_path / "tenants.txt"
    listed.write_text(
        "# one URL per line\n\npostgresql://u:secret@h1/shop_a\n"
        "postgresql://u@h2:5433/x?dbname=shop_b\nshop_c\nshop_c\n"
    )
    tenants = read_database_file(listed)
    assert [tenant.name for tenant in tenants] == ["shop_a", "shop_b", "shop_c"]
    assert tenants[0].url == "postgresql://u:secret@h1/shop_a"
    assert tenants[2] == Tenant("shop_c", "database")
    with pytest.raises(TenantSourceError, match="cannot read"):
        read_database_file(tmp_path / "missing.txt")
    with pytest.raises(TenantSourceError, match="names no database"):
        database_tenants(["postgresql://u@h/"])


def test_query_values_are_schemas_when_the_database_has_them() -> None:
    found = classify_values(["t1", "other_db", "postgresql://h/db9"], {"t1"})
    assert found == [
        Tenant("db9", "database", "postgresql://h/db9"),
        Tenant("other_db", "database"),
        Tenant("t1", "schema"),
    ]


def test_shards_are_stable_and_split_every_tenant_into_exactly_one() -> None:
    """Why: shards of one fleet run in different pods (and releases): a tenant must land in
    the same one everywhere, never in two, never in none. Python's hash() is salted."""
    assert [shard_of(f"tenant_{i:03d}", 4) for i in range(1, 9)] == [2, 3, 0, 2, 1, 1, 3, 3]
    names = [f"tenant_{i:04d}" for i in range(1000)]
    shards = [Shard(index, 4) for index in range(4)]
    taken = Counter(sum(shard.takes(name) for shard in shards) for name in names)
    assert taken == {1: 1000}
    sizes = [sum(shard.takes(name) for name in names) for shard in shards]
    assert min(sizes) > 200


def test_the_shard_index_defaults_to_job_completion_index() -> None:
    assert parse_shard(None) is None
    assert parse_shard("1/3", {}) == Shard(1, 3)
    assert parse_shard(" /3", {"JOB_COMPLETION_INDEX": "2"}) == Shard(2, 3)
    assert str(Shard(2, 3)) == "2/3"
    with pytest.raises(UsageError, match="JOB_COMPLETION_INDEX, which is not set"):
        parse_shard("/3", {})
    with pytest.raises(UsageError, match="from 0 to COUNT-1"):
        parse_shard("/3", {"JOB_COMPLETION_INDEX": "3"})
    with pytest.raises(UsageError, match="not INDEX/COUNT"):
        parse_shard("a/b", {})


def test_classify_compares_with_the_heads() -> None:
    known = frozenset({"1", "2", "3"})
    assert classify(None, ("3",), known) == "empty"
    assert classify((), ("3",), known) == "empty"
    assert classify(("3",), ("3",), known) == "at_head"
    assert classify(("2",), ("3",), known) == "behind"
    assert classify(("9",), ("3",), known) == "other"


def test_a_schema_name_migrate_lock_will_not_quote_is_invalid() -> None:
    assert identifier_problem("tenant_1") is None
    problem = identifier_problem('evil"; DROP TABLE x; --')
    assert problem is not None and "schema name" in problem


class FakeConnection:
    """Answers the plan's two kinds of query; records the statements."""

    def __init__(self, versions: dict[str, list[str]]) -> None:
        self.versions = versions
        self.statements: list[str] = []
        self.rows: list[tuple[object, ...]] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def execute(self, query: str, params: Any = None) -> FakeConnection:
        self.statements.append(query)
        if query.startswith("SELECT n.nspname"):
            self.rows = [(schema,) for schema in self.versions if schema in params[0]]
        else:
            self.rows = [
                (schema, revision)
                for schema, revisions in self.versions.items()
                if f'"{schema}"' in query
                for revision in revisions
            ]
        return self

    def fetchall(self) -> list[tuple[object, ...]]:
        return self.rows


def test_the_plan_reads_every_version_table_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: a fleet at head costs a few round trips, not one per tenant."""
    monkeypatch.setattr(plan_module, "BATCH", 2)
    connection = FakeConnection({"a": ["1"], "b": [], "c": ["2", "3"], "d": ["1"], "e": ["1"]})
    found = schema_revisions(connection, ["a", "b", "c", "d", "e", "f"], "alembic_version")  # type: ignore[arg-type]
    assert found == {"a": ("1",), "b": (), "c": ("2", "3"), "d": ("1",), "e": ("1",), "f": None}
    assert len(connection.statements) == 1 + 3  # which have a table, then 5 tables by 2
    assert "UNION ALL" in connection.statements[1]


def test_the_plan_counts_tenants_per_revision() -> None:
    plan = FleetPlan(
        ("2",),
        [
            TenantState(Tenant("a", "schema"), "at_head", ("2",)),
            TenantState(Tenant("b", "schema"), "at_head", ("2",)),
            TenantState(Tenant("c", "schema"), "behind", ("1",)),
            TenantState(Tenant("d", "schema"), "empty", None),
        ],
    )
    assert plan.by_revision() == {"2": 2, "(none)": 1, "1": 1}
    assert [state.tenant.name for state in plan.pending] == ["c", "d"]
    assert plan.as_dict()["pending"] == 2


def _result(*outcomes: TenantOutcome) -> FleetResult:
    return FleetResult("schemas:t%", ("2",), list(outcomes), jobs=4, seconds=1.5)


def test_the_exit_code_and_the_summary_name_the_failed_tenants() -> None:
    """Why: exit 0 only when all are at head, 1 when any failed (75 when the only ones
    left were locked), with each failed tenant and its error in the summary."""
    done = TenantOutcome("t1", "schema", "migrated", ("1",), ("2",), ("2",))
    head = TenantOutcome("t2", "schema", "at_head", ("2",), ("2",))
    failed = TenantOutcome("t3", "schema", "failed", error="revision 2 failed", exit_code=1)
    locked = TenantOutcome("t4", "schema", "locked", error="gave up waiting", exit_code=75)
    skipped = TenantOutcome("t5", "schema", "not_started", error="not started", exit_code=1)
    assert _result(done, head).exit_code == ExitCode.OK
    assert _result(done, locked).exit_code == ExitCode.TEMPORARY
    assert _result(done, failed, locked).exit_code == ExitCode.MIGRATION_FAILED
    assert _result(done, skipped).exit_code == ExitCode.MIGRATION_FAILED
    table = summary_table(_result(done, head, failed, locked))
    assert "migrated            1" in table
    assert "failed t3: revision 2 failed" in table
    assert "locked t4: gave up waiting" in table
    document = _result(done, failed).as_dict()
    assert document["counts"] == {"migrated": 1, "failed": 1}
    assert [item["tenant"] for item in document["failed"]] == ["t3"]
    assert document["exit_code"] == 1


def test_the_progress_line_shows_done_failed_waiting_remaining_and_eta() -> None:
    progress = Progress(live=False)
    progress.begin(4, 10)
    progress.waiting_on("t2")
    progress.done(TenantOutcome("t1", "schema", "migrated"))
    progress.done(TenantOutcome("t3", "schema", "failed", error="x"))
    line = progress.line()
    assert "2/4 done, 1 failed, 1 waiting on a lock, 2 remaining, ETA" in line


def test_a_schema_tenant_gets_its_schema_search_path_and_name(tmp_path: Path) -> None:
    """Why: the unmodified env.py migrates the tenant only through these settings."""
    base = load_settings(
        database_url="postgresql://app:pw-fleet-1@db/shop", alembic_config=tmp_path / "a.ini"
    )
    schema = tenant_settings(base, {"name": "t_1", "kind": "schema"}, {"skip_locked": True})
    assert schema.version_table_schema == "t_1"
    assert schema.migration_search_path == '"t_1", public'
    assert schema.migration_tenant == "t_1"
    assert schema.seed_on_upgrade is False
    assert schema.migration_lock_timeout_seconds == 0.0
    assert schema.migrate_then is None
    url = "postgresql://app:pw-fleet-1@db/shop_b"
    database = tenant_settings(base, {"name": "shop_b", "kind": "database", "url": url}, {})
    assert database.migration_url().database == "shop_b"
    assert database.version_table_schema is None
    assert database.migration_tenant == "shop_b"


def test_the_indexed_job_example_shards_by_its_completions() -> None:
    """Why: a shard count other than the Job's completions leaves tenants to no pod."""
    import yaml  # type: ignore[import-untyped]

    example = Path(__file__).resolve().parents[2] / "examples" / "kubernetes" / "fleet-job.yaml"
    job = yaml.safe_load(example.read_text())["spec"]
    assert job["completionMode"] == "Indexed"
    container = job["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:4] == ["migrate-lock", "upgrade", "--tenants", "schemas:tenant_%"]
    shard = command[command.index("--shard") + 1]
    assert shard == f"/{job['completions']}"
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    rules = {rule["action"]: rule for rule in job["podFailurePolicy"]["rules"]}
    assert 75 in rules["Count"]["onExitCodes"]["values"]
    assert 1 in rules["FailIndex"]["onExitCodes"]["values"]
    assert rules["Ignore"]["onPodConditions"] == [{"type": "DisruptionTarget"}]


def test_a_worker_relays_lock_waits_once_and_only_warnings() -> None:
    """Why: the progress line counts tenants waiting on a lock; a tenant's INFO events
    would bury the fleet's own lines, and the database's marker warning is one per worker."""
    import io

    from migrate_lock.fleet.worker import _Relay
    from migrate_lock.logs import EventLog

    sent: list[dict[str, Any]] = []
    stream = io.StringIO()
    forward = EventLog()
    forward.stream = stream
    forward.configure(log_format="json", level="INFO")
    relay = _Relay(sent.append, forward)
    for tenant in ("t1", "t2"):
        relay.reset(tenant)
        relay.emit("INFO", "lock.waiting", holder_pid=42)
        relay.emit("INFO", "lock.waiting", holder_pid=42)
        relay.emit("INFO", "migrate.done", applied=3)
        relay.emit("WARNING", "guard.marker_not_written", database="shop")
        relay.emit("ERROR", "db.connection_lost", error="gone")
    assert sent == [{"event": "waiting", "holder_pid": 42}] * 2
    events = [line for line in stream.getvalue().splitlines() if line]
    assert len(events) == 3  # the marker warning once, the error for each tenant
    assert '"tenant": "t2"' in events[-1] and "migrate.done" not in stream.getvalue()


def test_many_batches_are_read_on_several_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: a new server session loads each table's description on first read; for
    thousands of tenants several sessions do that side by side, and close after."""
    monkeypatch.setattr(plan_module, "BATCH", 2)
    versions = {f"s{i}": [str(i)] for i in range(7)}
    main = FakeConnection(versions)
    more: list[FakeConnection] = []

    def counting() -> FakeConnection:
        connection = FakeConnection(versions)
        more.append(connection)
        return connection

    found = schema_revisions(
        main,  # type: ignore[arg-type]
        sorted(versions),
        "alembic_version",
        connect_more=counting,  # type: ignore[arg-type]
        parallel=3,
    )
    assert found == {name: tuple(revisions) for name, revisions in versions.items()}
    assert len(more) == 2  # 4 batches, 3 connections
    assert len(main.statements) == 1 + 2 and all(len(c.statements) == 1 for c in more)
    assert not main.closed and all(connection.closed for connection in more)
