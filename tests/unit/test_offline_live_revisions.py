"""Revisions that read from the database, rendered offline (issue 18, item 8). In-process,
no database: ``lint`` and ``plan`` render past them, ``upgrade --sql`` stops naming them.
The CLI side is in tests/test_offline_live_revisions.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from live_revisions import LIVE, live_project

from migrate_lock.checks.lint import lint, render_revisions
from migrate_lock.errors import ExitCode, NeedsLiveDatabase
from migrate_lock.protocol import upgrade_sql
from migrate_lock.settings import Settings, load_settings

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    live_project(tmp_path / "project")
    return load_settings(alembic_config=tmp_path / "project" / "alembic.ini")


def test_upgrade_sql_names_the_first_revision_that_needs_a_live_database(
    settings: Settings,
) -> None:
    with pytest.raises(NeedsLiveDatabase) as raised:
        upgrade_sql(settings=settings, output=io.StringIO())

    assert raised.value.revision == "0003"
    assert raised.value.exit_code == ExitCode.CONFIG
    assert "revision 0003 needs a live database" in raised.value.message
    assert ".fetchall" in raised.value.message


def test_rendering_goes_past_every_live_revision_and_renders_the_others(
    settings: Settings,
) -> None:
    rendered = {r.revision: r for r in render_revisions(settings, "heads")}

    assert list(rendered) == ["0001", "0002", "0003", "0004", "0005", "0006"]
    for rev in LIVE:
        assert rendered[rev].needs_database, rev
        assert rendered[rev].sql == "", rev  # what it wrote before failing is not shown
    assert rendered["0004"].needs_database == (
        "inspects the database (sqlalchemy.inspect(op.get_bind()))"
    )
    assert rendered["0005"].needs_database == "reads a query's result (iterates over its rows)"
    assert "DROP COLUMN nickname" in rendered["0006"].sql
    assert rendered["0006"].needs_database is None


def test_lint_skips_live_revisions_with_a_notice_and_lints_the_rest(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    report = lint(settings=settings)

    assert sorted(report.needs_database) == list(LIVE)
    assert [(f.revision, f.rule) for f in report.findings] == [("0006", "ban-drop-column")]
    assert report.as_dict()["needs_database"]["0003"] == "reads a query's result (.fetchall)"
    notices = [line for line in capsys.readouterr().err.splitlines() if "lint.skipped" in line]
    assert len(notices) == 3, notices


def test_a_method_the_offline_bind_lacks_is_named() -> None:
    from migrate_lock.runner import needs_live_database

    error = needs_live_database(
        "0009", AttributeError("'MockConnection' object has no attribute 'scalar'")
    )

    assert "revision 0009 needs a live database: it calls op.get_bind().scalar()" in error.message
