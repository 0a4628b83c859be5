"""A cancelled ``CREATE INDEX CONCURRENTLY`` leaves no invalid index behind, so the retry
that the exit-75 message promises works (docs/reliability.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from migrate_lock.concurrent_index import Cleanup, InvalidIndex, noted
from migrate_lock.errors import TableLockTimeout

from support import assert_one_line_failure, query, run_cli


def concurrent_index(statement: str) -> str:
    """Revision 0022, after the example's head: ``statement`` in an autocommit block."""
    return (
        '"""an index built concurrently"""\n\nfrom alembic import op\n\n'
        'revision = "0022"\ndown_revision = "0021"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n"
        "    with op.get_context().autocommit_block():\n"
        f"        op.execute({statement!r})\n\n\n"
        "def downgrade() -> None:\n"
        '    op.execute("DROP INDEX leagues_name")\n'
    )


def indexes(url: str) -> list[tuple[object, ...]]:
    """Every index on leagues but its primary key: name and validity."""
    return query(
        url,
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = 'leagues'::regclass AND NOT i.indisprimary ORDER BY 1",
    )


@contextmanager
def open_transaction(
    url: str, *statements: str
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A second session with a transaction open after ``statements``; committed at the end."""
    with psycopg.connect(url) as writer:
        for statement in statements:
            writer.execute(statement)
        yield writer
        writer.commit()


@pytest.mark.parametrize(
    ("timeouts", "exit_code", "says"),
    [
        (
            {"DDL_LOCK_TIMEOUT": "1s"},
            75,
            "could not get a table lock within DDL_LOCK_TIMEOUT: [55P03]",
        ),
        (
            {"DDL_LOCK_TIMEOUT": "0", "DDL_STATEMENT_TIMEOUT": "1s"},
            1,
            "failed: [57014] canceling statement due to statement timeout",
        ),
    ],
    ids=["lock-timeout", "statement-timeout"],
)
def test_an_invalid_index_left_by_a_cancelled_build_is_removed_and_the_retry_works(
    project: Path, at_head: str, timeouts: dict[str, str], exit_code: int, says: str
) -> None:
    """Why: the cancelled build left an INVALID leagues_name and every retry failed with
    "relation already exists", although the exit-75 message said to retry."""
    (project / "migrations" / "versions" / "0022_concurrent.py").write_text(
        concurrent_index("CREATE INDEX CONCURRENTLY leagues_name ON leagues (name)")
    )
    # Someone else's invalid index, there before the run: never ours to drop.
    with psycopg.connect(at_head, autocommit=True) as other:
        other.execute("INSERT INTO leagues (name) VALUES ('Serie A')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            other.execute("CREATE UNIQUE INDEX CONCURRENTLY someone_elses ON leagues (name)")
    # A writer with an open snapshot (REPEATABLE READ, a row written in another table):
    # the build waits for it, and DDL_LOCK_TIMEOUT cancels the build in that wait.
    with open_transaction(
        at_head,
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
        "INSERT INTO migration_log (revision) VALUES ('a writer')",
    ):
        failed = run_cli(["upgrade"], cwd=project, database_url=at_head, **timeouts)

        line = assert_one_line_failure(failed, exit_code)
        print(line)
        assert f"revision 0022 (an index built concurrently) {says}" in line, line
        assert "; removed the invalid index public.leagues_name it left;" in line, line
        assert indexes(at_head) == [("someone_elses", False)]

    retried = run_cli(["upgrade"], cwd=project, database_url=at_head)

    assert retried.returncode == 0, retried.stderr
    assert indexes(at_head) == [("leagues_name", True), ("someone_elses", False)]


@pytest.mark.parametrize("if_not_exists", ["", "IF NOT EXISTS "])
def test_an_index_a_writer_on_its_table_keeps_from_dropping_goes_on_the_next_run(
    project: Path, at_head: str, if_not_exists: str
) -> None:
    """Why: a writer on the table blocks the drop as it blocked the build, and the
    retry failed ("already exists") or, with IF NOT EXISTS, exited 0 with the index
    still INVALID (unused by every query)."""
    (project / "migrations" / "versions" / "0022_concurrent.py").write_text(
        concurrent_index(f"CREATE INDEX CONCURRENTLY {if_not_exists}leagues_name ON leagues (name)")
    )
    with open_transaction(at_head, "INSERT INTO leagues (name) VALUES ('a writer')"):
        failed = run_cli(["upgrade"], cwd=project, database_url=at_head, DDL_LOCK_TIMEOUT="1s")

        line = assert_one_line_failure(failed, 75)
        print(line)
        assert "could not get a table lock within DDL_LOCK_TIMEOUT" in line
        assert (
            "the invalid index public.leagues_name it left could not be removed ([55P03]" in line
        ), line
        assert (
            "the next upgrade removes it before running the revision again, or run "
            '`DROP INDEX CONCURRENTLY IF EXISTS "public"."leagues_name"` before retrying' in line
        )
        assert indexes(at_head) == [("leagues_name", False)]

    retried = run_cli(["upgrade"], cwd=project, database_url=at_head)

    assert retried.returncode == 0, retried.stderr
    assert "migrate.invalid_index_removed" in retried.stderr
    assert indexes(at_head) == [("leagues_name", True)]


@pytest.mark.unit
def test_the_drop_to_run_by_hand_quotes_the_names() -> None:
    index = InvalidIndex(1, "Sales", 'ix "odd"')
    assert index.drop_statement == 'DROP INDEX CONCURRENTLY IF EXISTS "Sales"."ix ""odd"""'
    cleanup = Cleanup("0022", removed=[InvalidIndex(2, "public", "a")])
    cleanup.left.append((index, "[55P03] canceling statement due to lock timeout", False))
    assert cleanup.note() == (
        'removed the invalid index public.a it left; the invalid index Sales.ix "odd" it '
        "left could not be removed ([55P03] canceling statement due to lock timeout): run "
        '`DROP INDEX CONCURRENTLY IF EXISTS "Sales"."ix ""odd"""` before retrying'
    )
    error = TableLockTimeout("revision 0022", "[55P03] …")
    assert str(noted(error, [Cleanup("0022")])) == str(error)  # nothing left: as it was
