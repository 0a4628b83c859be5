"""Reference data: repeatable, checksummed, idempotent seeds applied under the lock."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import psycopg
import pytest

from migrate_lock.seeds.apply import apply_seeds
from migrate_lock.seeds.files import changed_seeds, discover, tracking_table
from migrate_lock.version_table import VersionTable, ensure_own_schema

from support import assert_one_line_failure, query, run_cli, spawn

SEED_SCHEMA = '''"""seeded tables"""

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE plans (code text PRIMARY KEY, name text NOT NULL,"
        " price_cents integer NOT NULL, active boolean NOT NULL DEFAULT true)"
    )
    op.execute(
        "CREATE TABLE teams (id serial PRIMARY KEY,"
        " league_id integer NOT NULL REFERENCES leagues (id), name text NOT NULL)"
    )
    op.execute("CREATE TABLE seed_log (file text NOT NULL)")
    op.execute("CREATE TABLE countries (code text, name text)")


def downgrade() -> None:
    op.execute("DROP TABLE countries, seed_log, teams, plans")
'''

PLANS = "code,name,price_cents\nfree,Free,0\npro,Pro,1900\nteam,Team,4900\n"
TEAMS = "id,league_id,name\n1,1,Arsenal\n2,1,Chelsea\n3,2,Real Madrid\n"
FLAGS = "-- a .sql seed: idempotent by design, logged to prove it ran once\n" + (
    "INSERT INTO seed_log (file) VALUES ('flags');\n"
)


@pytest.fixture
def seeded_project(project: Path) -> Path:
    (project / "migrations" / "versions" / "0022_seeded_tables.py").write_text(SEED_SCHEMA)
    seeds = project / "seeds"
    seeds.mkdir()
    (seeds / "10_plans.csv").write_text(PLANS)
    (seeds / "20_teams.csv").write_text(TEAMS)
    (seeds / "30_flags.sql").write_text(FLAGS)
    return project


def upgrade_json(project: Path, database_url: str) -> dict[str, object]:
    result = run_cli(["upgrade", "--json"], cwd=project, database_url=database_url)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def seed_json(project: Path, database_url: str, *flags: str) -> list[dict[str, object]]:
    result = run_cli(["seed", "--json", *flags], cwd=project, database_url=database_url)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["seeds"]  # type: ignore[no-any-return]


def test_upgrade_applies_seeds_after_the_migrations_and_records_their_checksums(
    seeded_project: Path, database_url: str
) -> None:
    result = upgrade_json(seeded_project, database_url)

    assert result["seeded"] == ["10_plans.csv", "20_teams.csv", "30_flags.sql"]
    assert query(database_url, "SELECT code, price_cents, active FROM plans ORDER BY code") == [
        ("free", 0, True),
        ("pro", 1900, True),
        ("team", 4900, True),
    ]
    seeds_table = tracking_table(VersionTable("public", "alembic_version"))
    tracked = query(database_url, f"SELECT name, checksum FROM {seeds_table} ORDER BY name")
    assert [name for name, _ in tracked] == ["10_plans.csv", "20_teams.csv", "30_flags.sql"]
    assert all(str(checksum).startswith("sha256:") for _, checksum in tracked)


def test_unchanged_seeds_are_skipped_and_the_lock_is_not_taken(
    seeded_project: Path, database_url: str
) -> None:
    """Why: every restart of every replica runs this; unchanged seeds must cost nothing."""
    upgrade_json(seeded_project, database_url)
    again = upgrade_json(seeded_project, database_url)

    assert again["role"] == "fast_path"
    assert again["seeded"] == []
    assert query(database_url, "SELECT count(*) FROM seed_log") == [(1,)]


def test_reapplying_unchanged_csv_writes_no_row(seeded_project: Path, database_url: str) -> None:
    """Why: rewriting identical rows bloats tables and fires triggers for nothing."""
    upgrade_json(seeded_project, database_url)
    before = query(database_url, "SELECT code, xmin::text FROM plans ORDER BY code")

    results = seed_json(seeded_project, database_url, "--force")

    plans = next(r for r in results if r["name"] == "10_plans.csv")
    assert (plans["inserted"], plans["updated"], plans["unchanged"]) == (0, 0, 3)
    assert query(database_url, "SELECT code, xmin::text FROM plans ORDER BY code") == before


def test_changed_csv_updates_only_the_changed_rows(seeded_project: Path, database_url: str) -> None:
    upgrade_json(seeded_project, database_url)
    before = dict(query(database_url, "SELECT code, xmin::text FROM plans"))
    (seeded_project / "seeds" / "10_plans.csv").write_text(
        PLANS.replace("pro,Pro,1900", "pro,Pro,2900") + "enterprise,Enterprise,9900\n"
    )

    result = upgrade_json(seeded_project, database_url)
    after = dict(query(database_url, "SELECT code, xmin::text FROM plans"))

    assert result["role"] == "migrated" and result["applied"] == []
    assert result["seeded"] == ["10_plans.csv"]
    assert [code for code in before if before[code] != after[code]] == ["pro"]
    assert query(database_url, "SELECT price_cents FROM plans WHERE code = 'pro'") == [(2900,)]
    assert "enterprise" in after


def test_seeded_explicit_ids_move_the_sequence_past_them(
    seeded_project: Path, database_url: str
) -> None:
    """Why: otherwise the application's next insert collides with a seeded id."""
    upgrade_json(seeded_project, database_url)
    rows = query(database_url, "INSERT INTO teams (league_id, name) VALUES (1, 'New') RETURNING id")
    assert rows == [(4,)]


def test_dry_run_reports_counts_and_changes_nothing(
    seeded_project: Path, database_url: str
) -> None:
    run_cli(["upgrade"], cwd=seeded_project, database_url=database_url, SEED_ON_UPGRADE="false")

    results = seed_json(seeded_project, database_url, "--dry-run")

    assert [(r["name"], r["action"], r["inserted"]) for r in results] == [
        ("10_plans.csv", "would_apply", 3),
        ("20_teams.csv", "would_apply", 3),
        ("30_flags.sql", "would_apply", 0),
    ]
    assert query(database_url, "SELECT count(*) FROM plans") == [(0,)]
    assert query(database_url, "SELECT count(*) FROM seed_log") == [(0,)]
    assert recorded_seeds(database_url) == []


def test_seed_on_upgrade_false_leaves_reference_data_alone(
    seeded_project: Path, database_url: str
) -> None:
    result = run_cli(
        ["upgrade"], cwd=seeded_project, database_url=database_url, SEED_ON_UPGRADE="false"
    )
    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT count(*) FROM plans") == [(0,)]


@pytest.mark.slow
def test_eight_replicas_with_seeds_apply_each_seed_once(
    seeded_project: Path, database_url: str
) -> None:
    """Why: seeds run under the same lock as revisions; a replica must never apply one twice.

    Eight real replicas on two cores start together and race (sixteen doubled the cost)."""
    processes = [
        spawn(["upgrade"], cwd=seeded_project, database_url=database_url, LOG_FORMAT="json")
        for _ in range(8)
    ]
    outputs = [process.communicate(timeout=240) for process in processes]

    assert [process.returncode for process in processes] == [0] * 8
    applied = [line for _, err in outputs for line in err.splitlines() if '"seed.applied"' in line]
    assert len(applied) == 3
    assert query(database_url, "SELECT count(*) FROM seed_log") == [(1,)]
    assert query(database_url, "SELECT count(*) FROM plans") == [(3,)]


BAD_SEEDS = [
    (
        "10_plans.csv",
        "code,name,price_cents,colour\nfree,Free,0,red\n",
        "10_plans.csv:1: column 4 'colour' is not a column of plans",
    ),
    (
        "10_plans.csv",
        "code,name,price_cents\nfree,Free,0\npro,Pro,lots\n",
        "10_plans.csv:3, column price_cents: [22P02] invalid input syntax for type integer",
    ),
    (
        "10_plans.csv",
        "code,name,price_cents\nfree,Free,0\npro,Pro,1\nfree,Gratis,0\n",
        "10_plans.csv: duplicate primary key (code) on lines 2, 4",
    ),
    (
        "10_plans.csv",
        "code,name,price_cents\nfree,,0\n",
        "10_plans.csv:2, column name: empty, but the column is NOT NULL",
    ),
    (
        "10_countries.csv",
        "code,name\nnl,Netherlands\n",
        "10_countries.csv: table countries has no primary key",
    ),
    ("10_leaguez.csv", "id,name\n1,x\n", "10_leaguez.csv: table leaguez does not exist"),
    (
        "10_plans.csv",
        b"code,name,price_cents\nfree,Fr\xe9e,0\n".decode("latin-1"),
        "10_plans.csv:2: not UTF-8",
    ),
    (
        "30_flags.sql",
        "INSERT INTO seed_log (file) VALUES ('a');\n\nSELECT nope FROM seed_log;\n",
        '30_flags.sql:3: [42703] column "nope" does not exist',
    ),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_SEEDS)
def test_bad_seed_fails_naming_file_and_line_and_applies_nothing(
    seeded_project: Path, database_url: str, name: str, content: str, message: str
) -> None:
    assert (
        run_cli(
            ["upgrade"], cwd=seeded_project, database_url=database_url, SEED_ON_UPGRADE="false"
        ).returncode
        == 0
    )
    seeds = seeded_project / "seeds"
    for old in seeds.glob(name.split("_", maxsplit=1)[0] + "_*"):
        old.unlink()
    encoding = "latin-1" if "not UTF-8" in message else "utf-8"
    (seeds / name).write_text(content, encoding=encoding)

    result = run_cli(["seed"], cwd=seeded_project, database_url=database_url)

    line = assert_one_line_failure(result, 1)
    assert message in line
    assert query(database_url, "SELECT count(*) FROM teams") == [(0,)]  # the good file too
    assert query(database_url, "SELECT count(*) FROM seed_log") == [(0,)]


def test_baseline_revision_loads_seed_data_sql(tmp_path: Path, database_url: str) -> None:
    run_cli(["init", "."], cwd=tmp_path, database_url=None)
    (tmp_path / "migrations" / "versions" / "seed_data.sql").write_text(
        "CREATE TABLE leagues (id int PRIMARY KEY, name text);\n"
        "INSERT INTO leagues VALUES (1, 'Serie A; Italy'), (2, $$Ligue 1$$);\n"
    )
    result = run_cli(["upgrade"], cwd=tmp_path, database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT name FROM leagues ORDER BY id") == [
        ("Serie A; Italy",),
        ("Ligue 1",),
    ]


def test_baseline_seed_error_names_the_file_and_line(tmp_path: Path, database_url: str) -> None:
    run_cli(["init", "."], cwd=tmp_path, database_url=None)
    (tmp_path / "migrations" / "versions" / "seed_data.sql").write_text(
        "CREATE TABLE leagues (id int PRIMARY KEY);\n"
        "-- comment\n"
        "INSERT INTO leagues VALUES ('x');\n"
    )
    result = run_cli(["upgrade"], cwd=tmp_path, database_url=database_url)
    line = assert_one_line_failure(result, 1)
    assert "seed_data.sql:3: [22P02]" in line
    assert query(database_url, "SELECT to_regclass('leagues')") == [(None,)]


def test_prune_deletes_rows_missing_from_the_csv_in_development(
    seeded_project: Path, database_url: str
) -> None:
    upgrade_json(seeded_project, database_url)
    (seeded_project / "seeds" / "10_plans.csv").write_text(PLANS.replace("team,Team,4900\n", ""))

    results = seed_json(seeded_project, database_url, "--prune")

    plans = next(r for r in results if r["name"] == "10_plans.csv")
    assert plans["deleted"] == 1
    assert query(database_url, "SELECT code FROM plans ORDER BY code") == [("free",), ("pro",)]


def test_prune_is_refused_in_production_and_deletes_nothing(
    seeded_project: Path, database_url: str
) -> None:
    """Why: a CSV trimmed by mistake must not silently delete production rows."""
    upgrade_json(seeded_project, database_url)
    (seeded_project / "seeds" / "10_plans.csv").write_text("code,name,price_cents\n")

    result = run_cli(
        ["seed", "--prune"],
        cwd=seeded_project,
        database_url=database_url,
        ENVIRONMENT="production",
        ALLOW_LOCALHOST_DATABASE="true",  # the test server is on localhost
    )

    line = assert_one_line_failure(result, 3)
    assert "--prune" in line and "refused" in line
    assert query(database_url, "SELECT count(*) FROM plans") == [(3,)]


@pytest.mark.parametrize("kind", ["csv", "sql"])
def test_seed_verb_gives_up_on_a_busy_table_after_ddl_lock_timeout(
    seeded_project: Path, database_url: str, kind: str
) -> None:
    """Why: `seed` holds the migration lock; stuck behind a table lock it would block
    every replica's upgrade for as long as the table stays busy (it waited 12 s with 1 s).
    A SQL seed in that spot exited 1 ("fix the statement"), not 75 like a revision."""
    upgrade_json(seeded_project, database_url)
    if kind == "csv":
        (seeded_project / "seeds" / "10_plans.csv").write_text(PLANS + "max,Max,9900\n")
    else:
        (seeded_project / "seeds" / "30_flags.sql").write_text(
            "INSERT INTO plans VALUES ('max', 'Max', 9900);\n"
        )
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE plans IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = run_cli(
            ["seed"],
            cwd=seeded_project,
            database_url=database_url,
            timeout=20,
            DDL_LOCK_TIMEOUT="1s",
        )
        elapsed = time.monotonic() - started
        blocker.rollback()
    line = assert_one_line_failure(result, 75)
    where = "10_plans.csv" if kind == "csv" else "30_flags.sql:1"
    assert f"{where} could not get a table lock within DDL_LOCK_TIMEOUT" in line
    assert elapsed < 10, f"seed waited {elapsed:.1f}s on a 1s DDL_LOCK_TIMEOUT"
    assert query(database_url, "SELECT count(*) FROM plans WHERE code = 'max'") == [(0,)]


WRAPPED_FLAGS = "-- psql habit\nBEGIN;\nINSERT INTO seed_log (file) VALUES ('flags');\nCOMMIT;\n"


def test_a_wrapped_sql_seed_commits_nothing_in_a_dry_run_or_beside_a_failing_csv(
    seeded_project: Path, database_url: str
) -> None:
    """Why: the file's COMMIT committed its rows and checksum, so a later failure left half a
    seed run applied (never rerun), and `seed --dry-run` changed the database."""
    run_cli(["upgrade"], cwd=seeded_project, database_url=database_url, SEED_ON_UPGRADE="false")
    seeds = seeded_project / "seeds"
    (seeds / "30_flags.sql").unlink()
    (seeds / "05_flags.sql").write_text(WRAPPED_FLAGS)

    dry = run_cli(["seed", "--dry-run"], cwd=seeded_project, database_url=database_url)
    assert dry.returncode == 0, dry.stderr
    assert query(database_url, "SELECT count(*) FROM seed_log") == [(0,)]
    assert "sql_file.transaction_wrapper_ignored" in dry.stderr

    (seeds / "10_plans.csv").write_text(PLANS + "max,Max,lots\n")
    failed = run_cli(["seed"], cwd=seeded_project, database_url=database_url)

    assert "10_plans.csv:5, column price_cents" in assert_one_line_failure(failed, 1)
    assert query(database_url, "SELECT count(*) FROM seed_log") == [(0,)]
    assert recorded_seeds(database_url) == []


def recorded_seeds(database_url: str) -> list[object]:
    """The seed files with a recorded checksum, wherever migrate-lock keeps that table."""
    table = tracking_table(VersionTable("public", "alembic_version"))
    if query(database_url, "SELECT to_regclass(%s)", (table,)) == [(None,)]:
        return []
    return [row[0] for row in query(database_url, f"SELECT name FROM {table} ORDER BY name")]


def test_transaction_control_in_a_seed_keeps_the_transaction_scoped_lock(
    seeded_project: Path, database_url: str
) -> None:
    """Why: in the transaction lock scope (what `auto` picks behind PgBouncer) a seed's COMMIT
    committed the revisions and ended the lock mid-run. A COMMIT inside the file is refused,
    naming it, before any revision runs; a BEGIN/COMMIT around the whole file is dropped."""
    (seeded_project / "seeds" / "30_flags.sql").write_text(
        "INSERT INTO seed_log (file) VALUES ('a');\nCOMMIT;\nINSERT INTO seed_log VALUES ('b');\n"
    )

    refused = run_cli(
        ["upgrade"],
        cwd=seeded_project,
        database_url=database_url,
        MIGRATION_LOCK_SCOPE="transaction",
    )

    line = assert_one_line_failure(refused, 1)
    assert "30_flags.sql:2: COMMIT controls the transaction" in line
    assert query(database_url, "SELECT to_regclass('alembic_version')") == [(None,)]

    (seeded_project / "seeds" / "30_flags.sql").write_text(WRAPPED_FLAGS)
    result = run_cli(
        ["upgrade", "--json"],
        cwd=seeded_project,
        database_url=database_url,
        MIGRATION_LOCK_SCOPE="transaction",
        LOG_FORMAT="json",
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["seeded"] == ["10_plans.csv", "20_teams.csv", "30_flags.sql"]
    assert '"scope": "transaction"' in result.stderr or '"scope":"transaction"' in result.stderr
    assert query(database_url, "SELECT count(*) FROM seed_log") == [(1,)]
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0022",)]


@pytest.mark.parametrize("outer_transaction", [False, True], ids=["session", "transaction"])
def test_a_statement_that_ends_the_seed_transaction_stops_the_run(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outer_transaction: bool
) -> None:
    """Why: the splitter may miss what the server takes as a COMMIT; checked after every
    statement, the run stops there instead of going on outside the transaction (or lock)."""
    from migrate_lock.seeds import apply
    from migrate_lock.seeds.sql_file import Statement

    script = [
        Statement("INSERT INTO seed_log VALUES ('a')", 1),
        Statement("COMMIT", 2),
        Statement("INSERT INTO seed_log VALUES ('b')", 3),
    ]
    monkeypatch.setattr(apply, "read_statements", lambda *_: (script, False))
    monkeypatch.setattr(apply, "_ensure_table", lambda *_: None)  # tracking: not the point
    monkeypatch.setattr(apply, "_record", lambda *_: None)
    path = tmp_path / "30_flags.sql"
    path.write_text("-- replaced by the script above\n")
    file = apply.SeedFile(path.name, path, path.read_bytes())
    with psycopg.connect(database_url, autocommit=not outer_transaction) as connection:
        connection.execute("CREATE TABLE seed_log (file text)")
        connection.commit()
        with pytest.raises(apply.SeedError) as raised:
            apply.apply_seeds(connection, VersionTable("public", "alembic_version"), [file])
        assert str(raised.value).startswith("30_flags.sql:2 ended the transaction")
    assert query(database_url, "SELECT file FROM seed_log") == [("a",)]  # the server committed it


def test_a_csv_with_a_byte_order_mark_is_applied(seeded_project: Path, database_url: str) -> None:
    """Why: Excel's "CSV UTF-8" starts with a BOM; it made the first column unknown."""
    (seeded_project / "seeds" / "10_plans.csv").write_text("\ufeff" + PLANS, encoding="utf-8")

    result = upgrade_json(seeded_project, database_url)

    assert "10_plans.csv" in result["seeded"]  # type: ignore[operator]
    assert query(database_url, "SELECT count(*) FROM plans") == [(3,)]


# A newer release: one more revision, a NOT NULL column in a seeded table, a changed price.
V2_REVISION = '''"""tiers"""

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE plans ADD COLUMN tier text NOT NULL DEFAULT 'basic'")
    op.execute("ALTER TABLE plans ALTER COLUMN tier DROP DEFAULT")


def downgrade() -> None:
    op.execute("ALTER TABLE plans DROP COLUMN tier")
'''
V1_PLANS = "code,name,price_cents\nfree,Free,0\npro,Pro,1000\n"
V2_PLANS = "code,name,price_cents,tier\nfree,Free,0,basic\npro,Pro,1200,plus\n"


def test_rolling_deploy_old_replicas_never_revert_newer_seed_data(
    seeded_project: Path, database_url: str, tmp_path: Path
) -> None:
    """Why: during a rolling deploy a v1 restart applied its own changed seeds to a database
    v2 had migrated: the v2 price went back from 1200 to 1000 (and flipped again on the next
    v2 start), and with v2's NOT NULL column in the seeded table v1 replicas exited 1."""
    (seeded_project / "seeds" / "10_plans.csv").write_text(V1_PLANS)
    v2 = tmp_path / "v2"
    shutil.copytree(seeded_project, v2)
    (v2 / "migrations" / "versions" / "0023_tiers.py").write_text(V2_REVISION)
    (v2 / "seeds" / "10_plans.csv").write_text(V2_PLANS)
    price = "SELECT price_cents, tier FROM plans WHERE code = 'pro'"

    assert upgrade_json(seeded_project, database_url)["seeded"] != []  # v1 deployed
    early = run_cli(["seed"], cwd=v2, database_url=database_url)  # v2's seeds, v1's schema
    assert "behind this code's heads" in assert_one_line_failure(early, 3)
    assert upgrade_json(v2, database_url)["applied"] == ["0023"]  # v2 rolls out
    assert query(database_url, price) == [(1200, "plus")]

    v1_restart = run_cli(["upgrade"], cwd=seeded_project, database_url=database_url)

    assert v1_restart.returncode == 0, v1_restart.stderr
    assert "seed.skipped_not_at_heads" in v1_restart.stderr
    assert query(database_url, price) == [(1200, "plus")]
    v2_restart = upgrade_json(v2, database_url)
    assert (v2_restart["role"], v2_restart["seeded"]) == ("fast_path", [])
    refused = run_cli(["seed", "--force"], cwd=seeded_project, database_url=database_url)
    assert "ahead of this code's heads" in assert_one_line_failure(refused, 3)
    assert query(database_url, price) == [(1200, "plus")]


def test_seeds_recorded_by_an_older_release_are_not_applied_again(
    seeded_project: Path, database_url: str
) -> None:
    """Why: an older release kept the checksums beside the version table. At head, with one
    seed file changed, the first upgrade after moving to migrate-lock's own schema failed
    (schema "migrate_lock" does not exist) and counted every seed file as changed."""
    upgrade_json(seeded_project, database_url)
    with psycopg.connect(database_url, autocommit=True) as connection:  # the old layout
        connection.execute("ALTER TABLE migrate_lock.seeds SET SCHEMA public")
        connection.execute("ALTER TABLE public.seeds RENAME TO migrate_lock_seeds")
        # Its rows named the version table bare: it sat beside it.
        connection.execute("UPDATE public.migrate_lock_seeds SET version_table = 'alembic_version'")
        connection.execute("DROP SCHEMA migrate_lock CASCADE")
    (seeded_project / "seeds" / "10_plans.csv").write_text(PLANS.replace("1900", "2900"))

    result = upgrade_json(seeded_project, database_url)

    assert result["seeded"] == ["10_plans.csv"]
    assert query(database_url, "SELECT count(*) FROM seed_log") == [(1,)]  # not run again
    assert recorded_seeds(database_url) == ["10_plans.csv", "20_teams.csv", "30_flags.sql"]
    assert query(database_url, "SELECT to_regclass('public.migrate_lock_seeds')") == [(None,)]


def test_two_applications_in_one_database_keep_their_seed_checksums_apart(
    tmp_path: Path, database_url: str
) -> None:
    """Why: two applications with version tables in different schemas, each with a seed
    file of the same name, must not overwrite each other's checksum and re-apply forever."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, price in ((first, 1900), (second, 2900)):
        folder.mkdir()
        (folder / "10_plans.csv").write_text(f"code,name,price_cents\npro,Pro,{price}\n")
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            "CREATE SCHEMA app_a; CREATE SCHEMA app_b; CREATE TABLE plans"
            " (code text PRIMARY KEY, name text NOT NULL, price_cents integer NOT NULL)"
        )
        ensure_own_schema(connection)
        tables = VersionTable("app_a", "alembic_version"), VersionTable("app_b", "alembic_version")
        for table, folder in zip(tables, (first, second), strict=True):
            apply_seeds(connection, table, discover(folder))
        assert changed_seeds(connection, tables[0], discover(first)) == []
        assert changed_seeds(connection, tables[1], discover(second)) == []
