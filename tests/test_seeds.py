"""Reference data: repeatable, checksummed, idempotent seeds applied under the lock."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest

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
    tracked = query(database_url, "SELECT name, checksum FROM migrate_lock_seeds ORDER BY name")
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
    assert query(database_url, "SELECT to_regclass('migrate_lock_seeds')") == [(None,)] or query(
        database_url, "SELECT count(*) FROM migrate_lock_seeds"
    ) == [(0,)]


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


def test_seed_verb_gives_up_on_a_busy_table_after_ddl_lock_timeout(
    seeded_project: Path, database_url: str
) -> None:
    """Why: `seed` holds the migration lock; stuck behind a table lock it would block
    every replica's upgrade for as long as the table stays busy (it waited 12 s with 1 s)."""
    upgrade_json(seeded_project, database_url)
    (seeded_project / "seeds" / "10_plans.csv").write_text(PLANS + "max,Max,9900\n")
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
    assert "DDL_LOCK_TIMEOUT" in line
    assert elapsed < 10, f"seed waited {elapsed:.1f}s on a 1s DDL_LOCK_TIMEOUT"
    assert query(database_url, "SELECT count(*) FROM plans WHERE code = 'max'") == [(0,)]
