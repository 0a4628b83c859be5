"""Tables new in the run (lint, plan): set a finding apart only when the table is surely new.

Found by linting a run that names tables the way real revisions do: each case hid an
error-level finding on a table that holds data (lint exited 0, plan said nothing).
"""

from __future__ import annotations

import pytest

from migrate_lock.checks.lint import Finding, RevisionSql, on_new_tables

pytestmark = pytest.mark.unit


def lock_heavy(line: int) -> Finding:
    return Finding(
        revision="2",
        line=line,
        rule="adding-required-field",
        kind="lock-heavy",
        message="Adding a NOT NULL column without a default",
        statement="",
    )


@pytest.mark.parametrize(
    ("created", "altered"),
    [
        # The table may be there already, with data: IF NOT EXISTS creates nothing then.
        ("CREATE TABLE IF NOT EXISTS t (id bigint)", "ALTER TABLE t ADD COLUMN y int NOT NULL"),
        # Another schema's table of the same name.
        ("CREATE TABLE audit (id bigint)", "ALTER TABLE other.audit ADD COLUMN z int NOT NULL"),
        ("CREATE TABLE a.audit (id bigint)", "ALTER TABLE b.audit ADD COLUMN z int NOT NULL"),
        # Renamed within its schema: the old name in another schema is not it.
        (
            "CREATE TABLE s.n (id bigint);\nALTER TABLE s.n RENAME TO m",
            "ALTER TABLE other.m ADD COLUMN z int NOT NULL",
        ),
    ],
)
def test_a_table_that_may_hold_data_keeps_its_findings(created: str, altered: str) -> None:
    first = RevisionSql("1", (), created + ";\n")
    second = RevisionSql("2", ("1",), altered + ";\n")
    checked = on_new_tables([first, second], [lock_heavy(1)])
    assert [f.line for f in checked.findings] == [1]
    assert checked.on_new_tables == ()


@pytest.mark.parametrize(
    ("created", "altered"),
    [
        ("CREATE TABLE t (id bigint)", "ALTER TABLE T ADD COLUMN y int NOT NULL"),
        ("CREATE TABLE s.t (id bigint)", 'ALTER TABLE "s"."t" ADD COLUMN y int NOT NULL'),
        (
            "CREATE TABLE s.n (id bigint);\nALTER TABLE s.n RENAME TO m",
            "ALTER TABLE s.m ADD COLUMN z int NOT NULL",
        ),
    ],
)
def test_a_table_the_run_created_is_still_set_apart(created: str, altered: str) -> None:
    first = RevisionSql("1", (), created + ";\n")
    second = RevisionSql("2", ("1",), altered + ";\n")
    checked = on_new_tables([first, second], [lock_heavy(1)])
    assert [f.line for f in checked.on_new_tables] == [1]
