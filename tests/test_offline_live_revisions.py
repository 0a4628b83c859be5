"""Revisions that read from the database on the offline verbs, as real processes (issue 18,
item 8): before, each verb failed on ``None.fetchall()`` as if the revision were broken."""

from __future__ import annotations

import json
from pathlib import Path

from live_revisions import LIVE, live_project

from support import assert_one_line_failure, run_cli


def test_upgrade_sql_stops_naming_the_revision_that_needs_a_live_database(
    tmp_path: Path,
) -> None:
    project = live_project(tmp_path / "project")

    result = run_cli(["upgrade", "--sql"], cwd=project, database_url=None)

    line = assert_one_line_failure(result, 78)
    assert "revision 0003 needs a live database" in line, line
    assert "bug" not in line and "AttributeError" not in line, line


def test_plan_shows_live_revisions_unrendered_and_no_sql_renders_nothing(
    tmp_path: Path, database_url: str
) -> None:
    project = live_project(tmp_path / "project", refuse_offline=True)
    (project / "migrations" / "versions" / "0007_not_offline.py").rename(tmp_path / "0007.py")

    planned = run_cli(["plan", "--json"], cwd=project, database_url=database_url)
    assert planned.returncode == 0, planned.stderr
    pending = {item["revision"]: item for item in json.loads(planned.stdout)["pending"]}
    assert list(pending) == ["0001", "0002", "0003", "0004", "0005", "0006"]
    for rev in LIVE:
        assert pending[rev]["needs_database"], rev
        assert pending[rev]["sql"].startswith("-- needs a live database, SQL not rendered")
    # The rest is still linted: 0006 drops a column of a table this run creates, so the
    # finding is set apart (an empty new table loses nothing) rather than flagged.
    assert [f["rule"] for f in pending["0006"]["on_new_tables"]] == ["ban-drop-column"]

    # 0007 raises whenever it is rendered offline: --no-sql must not render anything.
    (tmp_path / "0007.py").rename(project / "migrations" / "versions" / "0007_not_offline.py")
    brief = run_cli(["plan", "--no-sql"], cwd=project, database_url=database_url)
    assert brief.returncode == 0, brief.stderr
    assert "== 0007 not offline" in brief.stdout
    assert "== 0003 backfill from live rows" in brief.stdout
    assert "rendered offline" not in brief.stdout + brief.stderr
