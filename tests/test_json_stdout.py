"""``--json`` output is JSON even when revisions and env.py print (issue 18, item 7).

Real histories print at import and while they run (progress lines, leftover debugging):
that text landed on stdout ahead of the document, so ``lint --json`` and ``plan --json``
did not parse. stdout carries our document alone; what revisions and env.py print goes
to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migrate_lock.sandbox.example import write_example_project

from support import leave_to_alembic, run_cli

MARKERS = ("env.py loaded", "env.py running", "revision 0002 loaded", "revision 0002 upgrading")


@pytest.fixture
def chatty(tmp_path: Path) -> Path:
    """A small project whose env.py and one revision print at import and at run time."""
    project = tmp_path / "chatty"
    write_example_project(project, 3)
    env = project / "migrations" / "env.py"
    source = env.read_text()
    source = source.replace(
        "\nconfig = context.config\n", '\nprint("env.py loaded")\n\nconfig = context.config\n', 1
    )
    source = source.replace(
        "def run_on(connection) -> None:  # type: ignore[no-untyped-def]\n",
        "def run_on(connection) -> None:  # type: ignore[no-untyped-def]\n"
        '    print("env.py running")\n',
        1,
    )
    env.write_text(source)
    (revision,) = (project / "migrations" / "versions").glob("0002_*.py")
    source = revision.read_text()
    source += '\nprint("revision 0002 loaded")\n'
    source = source.replace(
        "def upgrade() -> None:\n",
        'def upgrade() -> None:\n    print("revision 0002 upgrading")\n',
        1,
    )
    revision.write_text(source)
    # At head, status would answer without loading a revision: take the full path.
    leave_to_alembic(project)
    return project


def test_json_stdout_holds_only_the_document(chatty: Path, database_url: str) -> None:
    """Why: `lint --json` and `plan --json` printed the revisions' lines ahead of the JSON."""
    stderr = {}
    for verb in ("lint", "plan", "upgrade", "status"):
        result = run_cli([verb, "--json"], cwd=chatty, database_url=database_url)

        assert result.returncode in (0, 1), (verb, result.stderr)  # lint: 1 with findings
        json.loads(result.stdout)  # the document, and nothing else
        stderr[verb] = result.stderr
        assert "revision 0002 loaded" in result.stderr, verb
    # What env.py and the revision print while they run goes to stderr too.
    assert "env.py running" in stderr["upgrade"]
    assert "revision 0002 upgrading" in stderr["upgrade"]
    assert "revision 0002 upgrading" in stderr["plan"]  # plan renders the SQL offline


def test_upgrade_sql_stdout_holds_only_the_sql(chatty: Path) -> None:
    """Why: the same lines would land in the SQL a CI job pipes to psql."""
    result = run_cli(["upgrade", "--sql"], cwd=chatty, database_url=None)

    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE" in result.stdout
    for marker in MARKERS:
        assert marker not in result.stdout
    assert "revision 0002 upgrading" in result.stderr
