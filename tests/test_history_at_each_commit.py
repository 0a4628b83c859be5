"""Our history and the environment marker are written just before each commit of a
migration, in the transaction that commits (one statement for all its revisions, not one
per revision): whatever commits carries its history, whatever rolls back leaves none.

A database whose history lacks a committed revision misleads an older replica (it reads
the history to tell "ahead of me" from "an unknown revision"); one at a revision without
its marker counts as production but is never marked again by the lock-free start at head.
"""

from __future__ import annotations

import signal
from pathlib import Path

from support import query, run_cli, spawn, wait_for_a_sleeping_revision

EVERY_REVISION = [f"{n:04d}" for n in range(1, 22)]


def history(url: str) -> list[str]:
    rows = query(url, "SELECT revision FROM migrate_lock.history ORDER BY 1")
    return [str(revision) for (revision,) in rows]


def add_revision_0022(project: Path, body: str) -> None:
    (project / "migrations" / "versions" / "0022_last.py").write_text(
        '"""the last revision"""\n\nfrom alembic import op\n\n'
        'revision = "0022"\ndown_revision = "0021"\nbranch_labels = None\ndepends_on = None\n\n\n'
        f"def upgrade() -> None:\n{body}\n\n\ndef downgrade() -> None:\n    pass\n"
    )


def migrate_per_revision(project: Path) -> None:
    env = project / "migrations" / "env.py"
    text = env.read_text()
    assert "        connection=connection,\n" in text
    env.write_text(
        text.replace(
            "        connection=connection,\n",
            "        connection=connection,\n        transaction_per_migration=True,\n",
        )
    )


def kill_while_it_sleeps(project: Path, database_url: str) -> None:
    """Start ``upgrade`` and SIGKILL it inside revision 0022's ``pg_sleep``."""
    replica = spawn(["upgrade"], cwd=project, database_url=database_url)
    try:
        wait_for_a_sleeping_revision(database_url)
        replica.send_signal(signal.SIGKILL)
        replica.wait(timeout=30)
    finally:
        replica.kill()


def assert_revisions_1_to_21_recorded(database_url: str) -> None:
    """At 0021, with the history of every revision up to it and the marker."""
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0021",)]
    assert history(database_url) == EVERY_REVISION
    assert query(database_url, "SELECT environment FROM migrate_lock.environment") == [("test",)]


def test_one_transaction_that_fails_leaves_no_history(project: Path, database_url: str) -> None:
    add_revision_0022(project, '    op.execute("SELECT 1/0")')
    result = run_cli(["upgrade"], cwd=project, database_url=database_url)
    assert result.returncode == 1, result.stderr
    assert query(database_url, "SELECT to_regclass('alembic_version')") == [(None,)]
    assert query(database_url, "SELECT to_regclass('migrate_lock.history')") == [(None,)]


def test_each_committed_revision_has_its_history_when_a_later_one_fails(
    project: Path, database_url: str
) -> None:
    """transaction_per_migration: revisions 1 to 21 commit one by one, 22 fails."""
    migrate_per_revision(project)
    add_revision_0022(project, '    op.execute("SELECT 1/0")')
    result = run_cli(["upgrade"], cwd=project, database_url=database_url)
    assert result.returncode == 1, result.stderr
    assert_revisions_1_to_21_recorded(database_url)


def test_a_kill_inside_an_autocommit_block_leaves_the_history_of_what_it_committed(
    project: Path, database_url: str
) -> None:
    """One transaction for revisions 1 to 21, which the autocommit block of 22 commits
    (Alembic's doing) before it sleeps; the process is killed there."""
    add_revision_0022(
        project,
        '    with op.get_context().autocommit_block():\n        op.execute("SELECT pg_sleep(60)")',
    )
    kill_while_it_sleeps(project, database_url)
    assert_revisions_1_to_21_recorded(database_url)


def test_a_kill_after_a_revisions_own_commit_leaves_the_history_of_what_it_committed(
    project: Path, database_url: str
) -> None:
    """A revision that commits by SQL (``op.execute("COMMIT")``, the old recipe for
    ``ALTER TYPE ... ADD VALUE``) commits revisions 1 to 21 behind SQLAlchemy's back: their
    history and the marker must be in that commit, not wait for SQLAlchemy's."""
    add_revision_0022(project, '    op.execute("COMMIT")\n    op.execute("SELECT pg_sleep(60)")')
    kill_while_it_sleeps(project, database_url)
    assert_revisions_1_to_21_recorded(database_url)
