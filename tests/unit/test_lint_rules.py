"""lint's own logic: autocommit boundaries, levels, tables new in a run, annotations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from migrate_lock.checks.lint import (
    Finding,
    LintReport,
    RevisionSql,
    autocommit_lines,
    classify,
    github_annotations,
    junit_cases,
    on_new_tables,
    source_line,
    squawk_binary,
    tables_of,
)
from migrate_lock.errors import ExitCode, SquawkMissing

pytestmark = pytest.mark.unit


def finding(revision: str, line: int, kind: str = "lock-heavy", rule: str = "r") -> Finding:
    return Finding(revision, rule, kind, line, "", "m")  # type: ignore[arg-type]


def test_a_commit_begin_pair_is_an_autocommit_block_a_lone_commit_is_not() -> None:
    """Alembic's boundaries are not the revision's; a COMMIT of its own still is."""
    sql = "ALTER TABLE a ADD b int;\n\nCOMMIT;\n\nCREATE INDEX CONCURRENTLY i ON a (b);\n\nBEGIN;\n"
    inside, boundaries = autocommit_lines(sql)
    assert boundaries == {2, 6}
    assert inside == {3, 4, 5}
    assert autocommit_lines("DELETE FROM a;\nCOMMIT;\nDELETE FROM b;\n") == (set(), set())


def test_every_prefer_rule_is_advice_and_robustness_matters_only_outside_transactions() -> None:
    assert classify("prefer-timestamp-tz") == "advice"
    assert classify("prefer-robust-stmts") == "advice"
    assert classify("prefer-robust-stmts", autocommit=True) == "retry-unsafe"
    assert classify("ban-drop-column") == "destructive"
    assert classify("some-future-rule") == "lock-heavy"  # unknown: assume the worst


def test_only_findings_at_or_above_fail_on_fail() -> None:
    findings = (finding("a", 1, "advice"), finding("a", 2, "retry-unsafe"))
    report = LintReport(revisions=("a",), findings=findings, excluded=())
    assert report.ok
    assert not LintReport(("a",), findings, (), fail_on="warning").ok
    assert len(LintReport(("a",), findings, (), fail_on="advice").failing) == 2


def test_statements_name_the_tables_they_work_on() -> None:
    index = 'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON ONLY s."T" (a)'
    assert tables_of(index) == {"s.T"}
    assert tables_of(
        "ALTER TABLE IF EXISTS Orders ADD CONSTRAINT f FOREIGN KEY (a) "
        "REFERENCES public.accounts (id)"
    ) == {"orders", "public.accounts"}
    assert tables_of("DROP TABLE a, b CASCADE;") == {"a", "b"}
    assert tables_of("ALTER TABLE new ATTACH PARTITION old FOR VALUES IN (1)") == {"new", "old"}
    assert tables_of("UPDATE a SET b = 1") == set()


def test_findings_on_tables_the_run_created_are_set_apart() -> None:
    """A new table holds no data; one created AS SELECT does, an existing one is locked."""
    first = RevisionSql("1", (), "CREATE TABLE t (a int);\nCREATE TABLE c AS SELECT 1 AS a;\n")
    second = RevisionSql(
        "2",
        ("1",),
        "CREATE INDEX i ON t (a);\n"
        "CREATE INDEX j ON c (a);\n"
        "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES old (a);\n"
        "ALTER TABLE t RENAME TO u;\n"
        "ALTER TABLE u DROP COLUMN a;\n",
    )
    found = [
        finding("2", 1),
        finding("2", 2),
        finding("2", 3),
        finding("2", 5, "destructive"),
        finding("2", 1, "advice", "prefer-x"),
    ]
    checked = on_new_tables([first, second], found)
    assert [(f.line, f.kind) for f in checked.on_new_tables] == [
        (1, "lock-heavy"),
        (5, "destructive"),
    ]
    assert [(f.line, f.kind) for f in checked.findings] == [
        (1, "advice"),
        (2, "lock-heavy"),
        (3, "lock-heavy"),
    ]


def test_annotations_escape_what_github_would_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    revision = tmp_path / "0002_x.py"
    revision.write_text('"""x"""\n\n\ndef upgrade() -> None:\n    pass\n')
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    found = Finding("0002", "r", "advice", 3, "a, b: 100%", "line one\nline two")
    report = LintReport(("0002",), (found,), (), files={"0002": str(revision)})
    assert github_annotations(report) == [
        "::notice file=0002_x.py,line=4,title=r (advice)::revision 0002, SQL line 3: "
        "line one%0Aline two%0Aa, b: 100%25"
    ]


def test_junit_has_one_case_per_revision(tmp_path: Path) -> None:
    report = LintReport(
        ("1", "2", "3"),
        (finding("2", 1, "destructive"), finding("3", 1, "advice")),
        (),
        needs_database={"1": "reads a query's result"},
    )
    cases = {case.name: case for case in junit_cases(report)}
    assert cases["1"].skipped and cases["2"].failure and not cases["3"].failure
    assert "advice" in cases["3"].details


def test_without_squawk_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SquawkMissing) as raised:
        squawk_binary()
    assert raised.value.exit_code == ExitCode.CONFIG
    assert "pip install 'migrate-lock[lint]'" in str(raised.value)


def test_an_annotation_points_at_the_operation_that_wrote_the_statement(tmp_path: Path) -> None:
    """A reviewer clicks the annotation: it should land on the op call, not on the file."""
    revision = tmp_path / "0002_x.py"
    revision.write_text(
        '"""accounts and orders"""\n'
        "def upgrade() -> None:\n"
        '    op.add_column("accounts", sa.Column("nickname", sa.Text()))\n'
        '    op.drop_column("accounts", "email")\n'
        '    op.create_index("orders_note", "orders", ["note"])\n'
        "def downgrade() -> None:\n"
        '    op.add_column("accounts", sa.Column("email", sa.Text()))\n'
    )
    assert source_line(str(revision), "ALTER TABLE accounts DROP COLUMN email;") == 4
    assert source_line(str(revision), "CREATE INDEX orders_note ON orders (note);") == 5
    assert source_line(str(revision), "UPDATE alembic_version SET x = 1;") == 2  # def upgrade
    assert source_line(str(tmp_path / "gone.py"), "x") == 1
