"""``migrate-lock plan``: what ``upgrade`` would do now, read from the database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_lint import write_revisions

from support import catalog_snapshot, run_cli

DROP_REVISION = '''"""drop the note of t_3"""

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE t_3 DROP COLUMN note")


def downgrade() -> None:
    op.execute("ALTER TABLE t_3 ADD COLUMN note text")
'''


def test_plan_lists_pending_revisions_in_order_with_sql_and_changes_nothing(
    project: Path, database_url: str
) -> None:
    """Operators read the plan before a deploy; reading it must not start the deploy."""
    assert run_cli(["upgrade", "0018"], cwd=project, database_url=database_url).returncode == 0
    before = catalog_snapshot(database_url)
    result = run_cli(["plan", "--json"], cwd=project, database_url=database_url)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert catalog_snapshot(database_url) == before
    assert plan["status"] == "behind"
    assert plan["current"] == ["0018"]
    assert [r["revision"] for r in plan["pending"]] == ["0019", "0020", "0021"]
    assert "INSERT INTO migration_log (revision) VALUES ('0019');" in plan["pending"][0]["sql"]
    assert "***" in plan["database"]


def test_plan_flags_a_destructive_revision_from_lint(project: Path, database_url: str) -> None:
    """A DROP COLUMN among the pending revisions must stand out before it runs."""
    (project / "migrations" / "versions" / "0022_drop.py").write_text(DROP_REVISION)
    assert run_cli(["upgrade", "0021"], cwd=project, database_url=database_url).returncode == 0
    result = run_cli(["plan", "--json"], cwd=project, database_url=database_url)
    pending = json.loads(result.stdout)["pending"]
    assert [(r["revision"], r["destructive"]) for r in pending] == [("0022", True)]
    assert [f["rule"] for f in pending[0]["findings"]] == ["ban-drop-column"]


def test_plan_shows_the_timeouts_the_migrating_session_will_get(
    project: Path, database_url: str
) -> None:
    """Whether a long ALTER will be cancelled depends on these; the plan must say them."""
    result = run_cli(
        ["plan"],
        cwd=project,
        database_url=database_url,
        DDL_LOCK_TIMEOUT="3s",
        MIGRATION_LOCK_TIMEOUT_SECONDS="90",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "timeouts: MIGRATION_LOCK_TIMEOUT_SECONDS=90s, DDL_LOCK_TIMEOUT=3s, "
        "DDL_STATEMENT_TIMEOUT=0, DDL_IDLE_IN_TRANSACTION_TIMEOUT=30s"
    ) in result.stdout
    assert "== 0001 baseline" in result.stdout


@pytest.mark.usefixtures("at_head")
def test_plan_at_head_says_nothing_to_do(project: Path, database_url: str) -> None:
    """A deploy that changes no schema is worth knowing as such."""
    result = run_cli(["plan"], cwd=project, database_url=database_url)
    assert result.returncode == 0
    assert "(at_head)" in result.stdout
    assert result.stdout.rstrip().endswith("nothing to do")


NEW_TABLE_HISTORY = [
    ("0002", "accounts", ["CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL)"]),
    (
        "0003",
        "orders and indexes",
        [
            "CREATE INDEX accounts_email ON accounts (email)",
            "ALTER TABLE accounts ADD COLUMN kind integer NOT NULL",
            "ALTER TABLE accounts ALTER COLUMN email TYPE varchar(320)",
            "CREATE TABLE orders (id bigint PRIMARY KEY, account_id bigint)",
        ],
    ),
    (
        "0004",
        "orders of accounts",
        [
            "ALTER TABLE orders ADD CONSTRAINT orders_account FOREIGN KEY (account_id) "
            "REFERENCES accounts (id)",
        ],
    ),
]


def test_plan_on_an_empty_database_flags_nothing_on_the_tables_it_creates(
    tmp_path: Path, database_url: str
) -> None:
    """A table created earlier in the same run holds no data and nobody waits on its lock:
    an index, a column or a foreign key on it is not LOCK-HEAVY. On a table that exists
    (the database already at 0002) the same statements are."""
    project = write_revisions(tmp_path / "p", NEW_TABLE_HISTORY)
    fresh = run_cli(["plan", "--json"], cwd=project, database_url=database_url)
    assert fresh.returncode == 0, fresh.stderr
    pending = {r["revision"]: r for r in json.loads(fresh.stdout)["pending"]}
    assert [(rev, r["lock_heavy"], r["destructive"]) for rev, r in pending.items()] == [
        ("0001", False, False),
        ("0002", False, False),
        ("0003", False, False),
        ("0004", False, False),
    ]
    assert {f["kind"] for f in pending["0003"]["findings"]} == {"advice"}  # prefer-text-field
    assert {f["rule"] for f in pending["0003"]["on_new_tables"]} >= {
        "require-concurrent-index-creation",
        "adding-required-field",
        "changing-column-type",
    }
    assert "adding-foreign-key-constraint" in {f["rule"] for f in pending["0004"]["on_new_tables"]}
    text = run_cli(["plan"], cwd=project, database_url=database_url)
    assert "LOCK-HEAVY" not in text.stdout and "DESTRUCTIVE" not in text.stdout, text.stdout

    assert run_cli(["upgrade", "0002"], cwd=project, database_url=database_url).returncode == 0
    existing = run_cli(["plan", "--json"], cwd=project, database_url=database_url)
    indexes, foreign_key = json.loads(existing.stdout)["pending"]
    assert (indexes["lock_heavy"], foreign_key["lock_heavy"]) == (True, True)
    rules = [f["rule"] for f in indexes["findings"] if f["kind"] == "lock-heavy"]
    assert "require-concurrent-index-creation" in rules
    # orders is new, accounts is not: validating the key locks accounts.
    assert "adding-foreign-key-constraint" in {f["rule"] for f in foreign_key["findings"]}
