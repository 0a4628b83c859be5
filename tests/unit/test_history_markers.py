"""``history`` prints what ``alembic history`` prints, markers included (issue 18, item 9):
``(branchpoint)``, ``(mergepoint)``, branch labels and ``(head)``. In-process, no database."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner

from migrate_lock.cli import main
from migrate_lock.scaffold import init_project

pytestmark = pytest.mark.unit

REVISION = '''"""{doc}"""
revision = "{rev}"
down_revision = {down!r}
branch_labels = {labels!r}
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
'''

#: 0001 -> 0002 (branchpoint) -> 0003a, 0003b (labelled "reports") -> 0004 (mergepoint),
#: and 0005 on the "reports" branch alone: two heads.
REVISIONS = [
    ("0002", "0001", None, "split"),
    ("0003a", "0002", None, "left"),
    ("0003b", "0002", ("reports",), "right"),
    ("0004", ("0003a", "0003b"), None, "merge"),
    ("0005", "0003b", None, "reports only"),
]


def branched_project(path: Path) -> Path:
    init_project(path)
    versions = path / "migrations" / "versions"
    for rev, down, labels, doc in REVISIONS:
        source = REVISION.format(doc=doc, rev=rev, down=down, labels=labels)
        (versions / f"{rev}.py").write_text(source)
    return path


def test_history_prints_alembics_markers_as_alembic_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = branched_project(tmp_path / "project")
    monkeypatch.chdir(project)
    monkeypatch.setenv("ENVIRONMENT", "test")
    printed = io.StringIO()
    command.history(Config(str(project / "alembic.ini"), stdout=printed))

    ours = CliRunner().invoke(main, ["history"], catch_exceptions=False)

    assert ours.exit_code == 0, ours.output
    assert ours.stdout.splitlines() == printed.getvalue().splitlines()
    for marker in ("(branchpoint)", "(mergepoint)", "(reports)", "(head)"):
        assert marker in ours.stdout, marker
