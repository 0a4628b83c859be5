"""``migrate-lock plan``: what ``upgrade`` would do now, read from the database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
