"""Transaction poolers: the lock scope (MIGRATION_LOCK_SCOPE) behind a real PgBouncer."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import Server

from migrate_lock.dsn import parse_database_url
from migrate_lock.lock import clear_lock_query, lock_key, release
from migrate_lock.logs import log
from migrate_lock.scope import pooler_in_url

from pgbouncer import pgbouncer
from support import assert_one_line_failure, catalog_snapshot, query, run_cli, spawn

POOL_SIZE = 4


def revision_file(doc: str, upgrade: str, downgrade: str = "pass", number: int = 22) -> str:
    """A revision after the example's head (0021): ``upgrade``/``downgrade`` are bodies."""
    return (
        f'"""{doc}"""\n\nfrom alembic import op\n\n'
        f'revision = "{number:04d}"\ndown_revision = "{number - 1:04d}"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade() -> None:\n{upgrade}\n\n\ndef downgrade() -> None:\n    {downgrade}\n"
    )


SEEDED_TABLE = revision_file(
    "plans, seeded",
    '    op.execute("CREATE TABLE plans (code text PRIMARY KEY, name text NOT NULL)")',
    'op.execute("DROP TABLE plans")',
)
CONCURRENT_INDEX = revision_file(
    "an index built concurrently",
    "    with op.get_context().{call}():\n"
    '        op.execute("CREATE INDEX CONCURRENTLY leagues_name ON leagues (name)")',
    'op.execute("DROP INDEX leagues_name")',
)
FAILING = revision_file("fails on purpose", '    op.execute("SELECT 1 / 0")')
DEFERRED_VIOLATION = revision_file(
    "a deferred foreign key, broken: only the commit notices",
    '    op.execute("CREATE TABLE fixtures (league_id integer REFERENCES leagues (id)'
    ' DEFERRABLE INITIALLY DEFERRED)")\n'
    '    op.execute("INSERT INTO fixtures VALUES (999)")',
    'op.execute("DROP TABLE fixtures")',
)
EARLY_COMMIT = revision_file(
    "commits on purpose, the old ALTER TYPE ... ADD VALUE trick", '    op.execute("COMMIT")'
)
AFTER_EARLY_COMMIT = revision_file(
    "must not run once the lock is gone",
    '    op.execute("CREATE TABLE unlocked (id integer)")',
    'op.execute("DROP TABLE unlocked")',
    number=23,
)
ISOLATION_PROBE = revision_file(
    "records the isolation level the revisions run in",
    '    op.execute("CREATE TABLE isolation AS'
    " SELECT current_setting('transaction_isolation') AS level\")",
    'op.execute("DROP TABLE isolation")',
)
MENTIONS_AUTOCOMMIT = revision_file(
    "mentions autocommit_block without using it on the way up",
    "    # Not op.get_context().autocommit_block(): plain CREATE INDEX is fine here.\n"
    '    op.execute("CREATE INDEX leagues_name ON leagues (name)")',
    "with op.get_context().autocommit_block():\n"
    '        op.execute("DROP INDEX CONCURRENTLY leagues_name")',
)


@pytest.fixture
def pooled_url(pg_server: Server, database_url: str) -> Iterator[str]:
    """``database_url``, but through PgBouncer with a transaction pool of POOL_SIZE."""
    direct = parse_database_url(database_url)
    with pgbouncer(pg_server.url("postgres"), pool_size=POOL_SIZE) as (port, _log):
        yield database_url.replace(f"@{direct.host}:{direct.port}/", f"@127.0.0.1:{port}/")


def advisory_locks(database_url: str) -> list[tuple[object, ...]]:
    return query(
        database_url,
        "SELECT pid, classid, objid FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["auto", "transaction"])
def test_16_replicas_through_a_transaction_pool_of_4_migrate_exactly_once_and_leave_no_lock(
    project: Path, database_url: str, pooled_url: str, scope: str
) -> None:
    """Why: a session lock through a transaction pooler is orphaned on a pooled backend."""
    (project / "migrations" / "versions" / "0022_plans.py").write_text(SEEDED_TABLE)
    (project / "seeds").mkdir()
    (project / "seeds" / "plans.csv").write_text("code,name\nfree,Free\npro,Pro\n")
    run_cli(["freeze"], cwd=project, database_url=None)  # the lean path runs first, too
    started = time.monotonic()
    processes = [
        spawn(
            ["upgrade", "--json"],
            cwd=project,
            database_url=pooled_url,
            MIGRATION_LOCK_SCOPE=scope,
            LOG_FORMAT="json",
        )
        for _ in range(16)
    ]
    outputs = [process.communicate(timeout=240) for process in processes]
    elapsed = time.monotonic() - started

    assert [p.returncode for p in processes] == [0] * 16, [err[-500:] for _, err in outputs]
    roles = sorted(json.loads(out)["role"] for out, _ in outputs)
    assert roles.count("migrated") == 1, roles
    migrator_log = next(err for out, err in outputs if json.loads(out)["role"] == "migrated")
    assert '"scope": "transaction"' in migrator_log
    counts = query(database_url, "SELECT revision, count(*) FROM migration_log GROUP BY 1")
    assert len(counts) == 20 and {count for _, count in counts} == {1}
    assert query(database_url, "SELECT code FROM plans ORDER BY 1") == [("free",), ("pro",)]
    assert advisory_locks(database_url) == []
    print(f"16 replicas through a transaction pool of {POOL_SIZE} ({scope}): {elapsed:.1f} s")


def test_auto_scope_takes_a_session_lock_on_a_direct_connection(
    project: Path, database_url: str
) -> None:
    """Why: the session lock keeps LISTEN/NOTIFY hand-off and autocommit revisions."""
    result = run_cli(["upgrade"], cwd=project, database_url=database_url)

    assert result.returncode == 0, result.stderr
    assert "lock.scope scope=session" in result.stderr
    assert "a direct connection" in result.stderr


def test_auto_scope_detects_pgbouncer_by_the_port_the_server_sees(
    project: Path, pooled_url: str
) -> None:
    """Why: most pooler URLs look like any other; the server's own port gives it away."""
    result = run_cli(["upgrade"], cwd=project, database_url=pooled_url)

    assert result.returncode == 0, result.stderr
    assert "lock.scope scope=transaction" in result.stderr
    assert "the server listens on" in result.stderr


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://u:p@db.example.com:6543/app", "Supavisor"),
        ("postgresql://u:p@db.example.com:6432/app", "PgBouncer"),
        ("postgresql://u:p@ep-cool-1234-pooler.eu.aws.neon.tech/app", "pooler"),
        ("postgresql://u:p@aws-0-eu-west-1.pooler.supabase.com:5432/app", "pooler"),
        ("postgresql://u:p@db:5432/app?host=db.internal&port=6432", "PgBouncer"),
    ],
)
def test_auto_scope_reads_a_pooler_from_the_url(url: str, says: str) -> None:
    """Why: a pooler on the server's own port number cannot be told by the port check."""
    parsed = parse_database_url(url)

    hint = pooler_in_url(parsed.host, parsed.port)

    assert hint is not None and says in hint


def test_a_plain_url_does_not_look_like_a_pooler() -> None:
    """Why: a false "pooler" costs the hand-off speed and refuses autocommit revisions."""
    parsed = parse_database_url("postgresql://u:p@db.internal:5432/app?sslmode=require")

    assert pooler_in_url(parsed.host, parsed.port) is None


def test_transaction_scope_refuses_a_revision_with_an_autocommit_block(
    project: Path, database_url: str
) -> None:
    """Why: an autocommit block would commit (and so release) the lock mid-upgrade."""
    revision = CONCURRENT_INDEX.format(call="autocommit_block")
    (project / "migrations" / "versions" / "0022_index.py").write_text(revision)
    before = catalog_snapshot(database_url)

    result = run_cli(
        ["upgrade"], cwd=project, database_url=database_url, MIGRATION_LOCK_SCOPE="transaction"
    )

    line = assert_one_line_failure(result, 78)
    assert "revision 0022 uses autocommit_block" in line
    assert "MIGRATION_DATABASE_URL" in line
    assert catalog_snapshot(database_url) == before


def test_an_autocommit_block_the_source_scan_misses_is_refused_and_rolled_back(
    project: Path, database_url: str
) -> None:
    """Why: a helper module may call autocommit_block; the run must still refuse it whole."""
    hidden = CONCURRENT_INDEX.format(call="__getattribute__('autocommit' + '_block')")
    (project / "migrations" / "versions" / "0022_index.py").write_text(hidden)
    before = catalog_snapshot(database_url)

    result = run_cli(
        ["upgrade"], cwd=project, database_url=database_url, MIGRATION_LOCK_SCOPE="transaction"
    )

    line = assert_one_line_failure(result, 78)
    assert "revision 0022 uses autocommit_block" in line
    assert catalog_snapshot(database_url) == before  # 0002-0021 rolled back with it


def test_a_commit_that_fails_in_transaction_scope_is_one_line_and_rolls_everything_back(
    project: Path, database_url: str
) -> None:
    """Why: a deferred constraint fails at COMMIT, after every revision ran without error."""
    (project / "migrations" / "versions" / "0022_fixtures.py").write_text(DEFERRED_VIOLATION)

    result = run_cli(
        ["upgrade"], cwd=project, database_url=database_url, MIGRATION_LOCK_SCOPE="transaction"
    )

    line = assert_one_line_failure(result, 1)
    assert "the commit failed: [23503]" in line
    assert query(database_url, "SELECT to_regclass('alembic_version')") == [(None,)]
    assert advisory_locks(database_url) == []


def test_transaction_scope_applies_transaction_per_migration_projects_all_or_nothing(
    project: Path, database_url: str
) -> None:
    """Why: a commit per revision would release the transaction lock after the first one."""
    env = project / "migrations" / "env.py"
    env.write_text(
        env.read_text().replace(
            "        connection=connection,\n",
            "        connection=connection,\n        transaction_per_migration=True,\n",
        )
    )
    assert "transaction_per_migration=True" in env.read_text()
    (project / "migrations" / "versions" / "0022_fails.py").write_text(FAILING)

    result = run_cli(
        ["upgrade"], cwd=project, database_url=database_url, MIGRATION_LOCK_SCOPE="transaction"
    )

    line = assert_one_line_failure(result, 1)
    assert "revision 0022" in line and "division by zero" in line
    assert query(database_url, "SELECT to_regclass('alembic_version')") == [(None,)]


def test_a_session_lock_left_on_a_pooled_backend_is_not_taken_over_but_named_with_its_cure(
    project: Path, database_url: str, pooled_url: str
) -> None:
    """Why: the incident this scope exists for: a session lock some client left in the pool.

    Advisory locks are re-entrant per backend, so a transaction lock attempt that lands
    on that very backend would "succeed"; it must count as held by someone else.
    """
    with psycopg.connect(pooled_url, autocommit=True, prepare_threshold=None) as other:
        key = lock_key(other.info.dbname, "public", "alembic_version")
        other.execute("SELECT pg_advisory_lock(%s)", (key,))
    # That client is gone; PgBouncer keeps its server connection, and the lock with it.
    assert len(advisory_locks(database_url)) == 1

    blocked = run_cli(
        ["upgrade"], cwd=project, database_url=pooled_url, MIGRATION_LOCK_TIMEOUT_SECONDS="2"
    )
    line = assert_one_line_failure(blocked, 75)
    assert query(database_url, "SELECT to_regclass('alembic_version')") == [(None,)]
    assert "lock.stuck_on_pooled_backend" in blocked.stderr, blocked.stderr
    assert "SELECT pg_terminate_backend(" in line
    pid = line.split("SELECT pg_terminate_backend(")[1].split(")")[0]
    query(database_url, f"SELECT pg_terminate_backend({int(pid)})")
    cleared = run_cli(["upgrade"], cwd=project, database_url=pooled_url)

    assert cleared.returncode == 0, cleared.stderr
    assert advisory_locks(database_url) == []


def test_an_unlock_that_finds_no_lock_is_reported_loudly_with_the_sql_to_clear_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why: behind a pooler the unlock can land on another backend; the lock stays stuck."""
    stream = io.StringIO()
    monkeypatch.setattr(log, "stream", stream)
    log.configure(log_format="json", level="INFO")
    with psycopg.connect(database_url, autocommit=True) as connection:
        release(connection, 42)

    event = json.loads(stream.getvalue().splitlines()[-1])
    assert event["event"] == "lock.release_failed" and event["level"] == "error"
    assert event["clear_with"] == clear_lock_query(42)
    assert "MIGRATION_LOCK_SCOPE=transaction" in event["detail"]


def test_the_seed_verb_works_through_a_transaction_pooler(
    project: Path, database_url: str, pooled_url: str
) -> None:
    """Why: re-seeding after a hotfix must not leave a lock on the pool either."""
    (project / "migrations" / "versions" / "0022_plans.py").write_text(SEEDED_TABLE)
    assert run_cli(["upgrade"], cwd=project, database_url=pooled_url).returncode == 0
    (project / "seeds").mkdir()
    (project / "seeds" / "plans.csv").write_text("code,name\nfree,Free\n")

    result = run_cli(["seed"], cwd=project, database_url=pooled_url)

    assert result.returncode == 0, result.stderr
    assert "lock.scope scope=transaction" in result.stderr
    assert query(database_url, "SELECT code FROM plans") == [("free",)]
    assert advisory_locks(database_url) == []


def test_a_changed_seed_alone_is_applied_through_the_pooler_at_head(
    project: Path, database_url: str, pooled_url: str
) -> None:
    """Why: at head, a changed seed file is still work: it takes the lock, in one transaction."""
    (project / "migrations" / "versions" / "0022_plans.py").write_text(SEEDED_TABLE)
    (project / "seeds").mkdir()
    (project / "seeds" / "plans.csv").write_text("code,name\nfree,Free\n")
    assert run_cli(["upgrade"], cwd=project, database_url=pooled_url).returncode == 0
    (project / "seeds" / "plans.csv").write_text("code,name\nfree,Free\nteam,Team\n")

    result = run_cli(["upgrade", "--json"], cwd=project, database_url=pooled_url)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["seeded"] == ["plans.csv"]
    assert "lock.scope scope=transaction" in result.stderr
    assert query(database_url, "SELECT code FROM plans ORDER BY 1") == [("free",), ("team",)]
    assert advisory_locks(database_url) == []


@pytest.mark.usefixtures("at_head")
def test_a_downgrade_in_transaction_scope_is_refused_before_touching_anything(
    project: Path, database_url: str
) -> None:
    """Why: downgrade/stamp run Alembic's own transactions, which the lock cannot span."""
    before = catalog_snapshot(database_url)

    result = run_cli(
        ["downgrade", "0020"],
        cwd=project,
        database_url=database_url,
        MIGRATION_LOCK_SCOPE="transaction",
    )

    line = assert_one_line_failure(result, 78)
    assert "session-scoped migration lock" in line and "MIGRATION_DATABASE_URL" in line
    assert catalog_snapshot(database_url) == before


def test_a_revision_that_commits_stops_the_upgrade_before_the_next_revision(
    project: Path, database_url: str
) -> None:
    """Why: a COMMIT ends the transaction, and with it the lock; the rest would run unlocked."""
    versions = project / "migrations" / "versions"
    (versions / "0022_commits.py").write_text(EARLY_COMMIT)
    (versions / "0023_after.py").write_text(AFTER_EARLY_COMMIT)

    result = run_cli(
        ["upgrade"], cwd=project, database_url=database_url, MIGRATION_LOCK_SCOPE="transaction"
    )

    line = assert_one_line_failure(result, 1)
    assert "revision 0022 ended the transaction that holds the migration lock" in line
    assert query(database_url, "SELECT to_regclass('unlocked')") == [(None,)]
    assert advisory_locks(database_url) == []


def test_the_locked_transaction_reads_committed_whatever_the_database_default(
    project: Path, database_url: str
) -> None:
    """Why: a repeatable-read snapshot from before the lock would miss the last holder's work."""
    name = database_url.rsplit("/", 1)[1]
    query(
        database_url,
        f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'serializable'",
    )
    (project / "migrations" / "versions" / "0022_isolation.py").write_text(ISOLATION_PROBE)

    result = run_cli(
        ["upgrade"], cwd=project, database_url=database_url, MIGRATION_LOCK_SCOPE="transaction"
    )

    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT level FROM isolation") == [("read committed",)]


def test_a_revision_that_only_mentions_autocommit_block_is_not_refused(
    project: Path, database_url: str
) -> None:
    """Why: a comment, or a downgrade that needs autocommit, must not block the upgrade."""
    (project / "migrations" / "versions" / "0022_index.py").write_text(MENTIONS_AUTOCOMMIT)

    result = run_cli(
        ["upgrade"], cwd=project, database_url=database_url, MIGRATION_LOCK_SCOPE="transaction"
    )

    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT to_regclass('leagues_name')") == [("leagues_name",)]


def test_a_backup_before_upgrade_is_refused_in_transaction_scope(
    project: Path, database_url: str
) -> None:
    """Why: pg_dump's session settings would stay on pooled server connections."""
    before = catalog_snapshot(database_url)

    result = run_cli(
        ["upgrade"],
        cwd=project,
        database_url=database_url,
        MIGRATION_LOCK_SCOPE="transaction",
        BACKUP_BEFORE_UPGRADE="true",
    )

    line = assert_one_line_failure(result, 78)
    assert "BACKUP_BEFORE_UPGRADE" in line and "MIGRATION_DATABASE_URL" in line
    assert catalog_snapshot(database_url) == before


def test_a_lean_holder_whose_connection_dies_during_the_hand_over_does_not_fail_the_run(
    project: Path, database_url: str
) -> None:
    """Why: the lock went with that connection; the full path simply takes it again."""
    name = database_url.rsplit("/", 1)[1]
    query(
        database_url,
        f"ALTER DATABASE \"{name}\" SET idle_in_transaction_session_timeout = '100ms'",
    )
    run_cli(["freeze"], cwd=project, database_url=None)

    result = run_cli(
        ["upgrade"], cwd=project, database_url=database_url, MIGRATION_LOCK_SCOPE="transaction"
    )

    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0021",)]


def test_a_seed_run_whose_commit_fails_in_transaction_scope_is_one_line(
    project: Path, database_url: str
) -> None:
    """Why: a deferred constraint that a seed row breaks fails at COMMIT, not at the row."""
    fixtures = revision_file(
        "a deferred foreign key",
        '    op.execute("CREATE TABLE fixtures (id integer PRIMARY KEY, league_id integer'
        ' REFERENCES leagues (id) DEFERRABLE INITIALLY DEFERRED)")',
    )
    (project / "migrations" / "versions" / "0022_fixtures.py").write_text(fixtures)
    upgraded = run_cli(["upgrade"], cwd=project, database_url=database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    (project / "seeds").mkdir()
    (project / "seeds" / "fixtures.csv").write_text("id,league_id\n1,999\n")

    result = run_cli(
        ["seed"], cwd=project, database_url=database_url, MIGRATION_LOCK_SCOPE="transaction"
    )

    line = assert_one_line_failure(result, 1)
    assert "the commit failed: [23503]" in line
    assert query(database_url, "SELECT count(*) FROM fixtures") == [(0,)]
    assert advisory_locks(database_url) == []
