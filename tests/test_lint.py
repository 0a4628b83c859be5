"""``migrate-lock lint``: each revision's offline SQL through Squawk, with exclusions."""

from __future__ import annotations

import json
from pathlib import Path

from migrate_lock.checks.lint import split_revisions
from migrate_lock.scaffold import init_project

from support import assert_one_line_failure, run_cli

REVISION = '''"""{doc}"""
{comment}
from alembic import op

revision = "{rev}"
down_revision = {down}
branch_labels = None
depends_on = None


def upgrade() -> None:
{up}


def downgrade() -> None:
    pass
'''


def lint_project(path: Path, *, drop_comment: str = "") -> Path:
    """Baseline, a table (clean SQL), then a revision that drops a column."""
    init_project(path)
    versions = path / "migrations" / "versions"
    revisions = [
        (
            "0002",
            '"0001"',
            "create accounts",
            "",
            [
                "CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " email text NOT NULL, nickname text)",
            ],
        ),
        (
            "0003",
            '"0002"',
            "drop nickname",
            drop_comment,
            [
                "ALTER TABLE accounts DROP COLUMN nickname",
            ],
        ),
    ]
    for rev, down, doc, comment, statements in revisions:
        up = "\n".join(f"    op.execute({sql!r})" for sql in statements)
        source = REVISION.format(doc=doc, comment=comment, rev=rev, down=down, up=up)
        (versions / f"{rev}_{doc.replace(' ', '_')}.py").write_text(source)
    return path


def test_dropping_a_column_is_reported_for_its_revision_with_rule_and_line(tmp_path: Path) -> None:
    """A dropped column breaks the replicas still running the previous release."""
    project = lint_project(tmp_path / "p")
    result = run_cli(["lint", "--json"], cwd=project, database_url=None)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["revisions"] == ["0001", "0002", "0003"]
    assert [
        (f["revision"], f["rule"], f["kind"], f["line"], f["statement"]) for f in report["findings"]
    ] == [
        ("0003", "ban-drop-column", "destructive", 1, "ALTER TABLE accounts DROP COLUMN nickname;")
    ]


def test_readable_report_names_revision_line_rule_and_statement(tmp_path: Path) -> None:
    """Without --json the finding must still say where to look and what is wrong."""
    project = lint_project(tmp_path / "p")
    result = run_cli(["lint"], cwd=project, database_url=None)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "0003 line 1: ban-drop-column (destructive): Dropping a column may break existing "
        "clients. [ALTER TABLE accounts DROP COLUMN nickname;]"
    )
    assert "3 revisions, 1 findings" in result.stdout


def test_timeout_rules_are_excluded_because_migrate_lock_sets_the_timeouts(
    tmp_path: Path,
) -> None:
    """Squawk asks for lock_timeout in the SQL; migrate-lock sets it on the session instead."""
    project = lint_project(tmp_path / "p")
    result = run_cli(["lint", "--json"], cwd=project, database_url=None)
    report = json.loads(result.stdout)
    assert {"require-lock-timeout", "require-statement-timeout"} <= set(report["excluded_rules"])
    included = run_cli(
        ["lint", "--json"],
        cwd=project,
        database_url=None,
        LINT_INCLUDE_RULES="require-lock-timeout",
    )
    rules = {f["rule"] for f in json.loads(included.stdout)["findings"]}
    assert "require-lock-timeout" in rules


def test_a_global_exclusion_silences_a_rule_everywhere(tmp_path: Path) -> None:
    """A team that accepts a rule's risk says so once, in the environment."""
    project = lint_project(tmp_path / "p")
    result = run_cli(["lint"], cwd=project, database_url=None, LINT_EXCLUDE_RULES="ban-drop-column")
    assert result.returncode == 0, result.stdout
    assert "3 revisions, 0 findings" in result.stdout


def test_a_revision_comment_ignores_a_rule_for_that_revision_only(tmp_path: Path) -> None:
    """The reviewed, deliberate drop is accepted where it is written, and nowhere else."""
    project = lint_project(
        tmp_path / "p", drop_comment="# migrate-lock: lint-ignore ban-drop-column\n"
    )
    result = run_cli(["lint", "--json"], cwd=project, database_url=None)
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["ignored_per_revision"] == {"0003": ["ban-drop-column"]}


def test_a_range_lints_only_the_revisions_after_its_start(tmp_path: Path) -> None:
    """CI lints the revisions a branch adds, not the whole reviewed history."""
    project = lint_project(tmp_path / "p")
    result = run_cli(["lint", "--json", "0001:0002"], cwd=project, database_url=None)
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["revisions"] == ["0002"]


def test_an_unknown_revision_in_the_range_is_a_usage_error(tmp_path: Path) -> None:
    """A typo in the range must fail loudly, not lint nothing and pass."""
    project = lint_project(tmp_path / "p")
    result = run_cli(["lint", "0001:9999"], cwd=project, database_url=None)
    line = assert_one_line_failure(result, 2)
    assert "9999" in line


def test_offline_sql_is_cut_per_revision_without_the_version_table_preamble() -> None:
    """Findings are attributed to the revision whose SQL it is, never to Alembic's own DDL."""
    sql = (
        "BEGIN;\n\nCREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL);\n\n"
        "-- Running upgrade  -> 0001\n\nINSERT INTO alembic_version VALUES ('0001');\n\n"
        "-- Running upgrade 0001 -> 0002\n\nDROP TABLE x;\n\nUPDATE alembic_version;\n\n"
        "COMMIT;\n"
    )
    revisions = split_revisions(sql)
    assert [(r.revision, r.down_revisions) for r in revisions] == [
        ("0001", ()),
        ("0002", ("0001",)),
    ]
    assert revisions[1].sql == "DROP TABLE x;\n\nUPDATE alembic_version;\n"
