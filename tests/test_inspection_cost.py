"""Readiness and ``status`` on a long history: the scripts load once per process (issue 18,
item 6). Before, every ``schema_state()`` call re-imported every revision file."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory

import migrate_lock
from migrate_lock import project
from migrate_lock.scaffold import init_project
from migrate_lock.settings import Settings, load_settings

#: Long enough that loading the scripts dominates a call (real projects: 124, 344).
REVISIONS = 150

REVISION = '''"""step {number}"""
from alembic import op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SELECT {number}")


def downgrade() -> None:
    pass
'''


def long_history(path: Path, count: int) -> str:
    """A chain of ``count`` trivial revisions after the baseline; returns the head."""
    init_project(path)
    versions = path / "migrations" / "versions"
    down = "0001"
    for number in range(2, count + 2):
        rev = f"{number:04d}"
        source = REVISION.format(number=number, rev=rev, down=down)
        (versions / f"{rev}_step.py").write_text(source)
        down = rev
    return down


def stamp(database_url: str, revision: str) -> None:
    """The database at ``revision`` as Alembic leaves it (no need to run 150 revisions)."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)"
        )
        connection.execute("INSERT INTO alembic_version VALUES (%s)", (revision,))


def cpu_of(call: object, settings: Settings, times: int = 1) -> float:
    assert callable(call)
    started = time.process_time()
    for _ in range(times):
        call(settings=settings)
    return (time.process_time() - started) / times


@pytest.fixture
def long_project(tmp_path: Path, database_url: str) -> tuple[Settings, str]:
    head = long_history(tmp_path / "project", REVISIONS)
    stamp(database_url, head)
    settings = load_settings(
        database_url=database_url, alembic_config=tmp_path / "project" / "alembic.ini"
    )
    return settings, head


def test_readiness_after_the_first_call_does_not_reload_the_scripts(
    long_project: tuple[Settings, str],
) -> None:
    settings, head = long_project
    # A computed down_revision: the static reader defers, so the scripts must be loaded
    # (once); without it, every call answers from the revision files' text.
    step = Path(settings.alembic_config).parent / "migrations" / "versions" / "0002_step.py"
    step.write_text(
        step.read_text().replace('down_revision = "0001"', 'down_revision = "000" + "1"')
    )
    first = cpu_of(migrate_lock.schema_state, settings)
    state = migrate_lock.schema_state(settings=settings)
    later = cpu_of(migrate_lock.schema_state, settings, times=20)

    print(f"schema_state CPU: first {first * 1000:.1f} ms, then {later * 1000:.2f} ms a call")
    assert (state.status, state.ready, state.heads) == ("at_head", True, (head,))
    # Generous bounds (2 shared cores): the target is <= 5 ms; before, each call
    # re-imported 150 revision files, as costly as the first.
    assert later <= 0.020, f"{later * 1000:.1f} ms a call (first {first * 1000:.1f} ms)"
    assert later <= first / 3, f"{later * 1000:.1f} ms a call, first {first * 1000:.1f} ms"


def test_status_and_readiness_notice_a_new_revision_file(
    long_project: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, head = long_project
    assert migrate_lock.status(settings=settings).state.status == "at_head"

    rev = f"{REVISIONS + 2:04d}"
    source = REVISION.format(number=REVISIONS + 2, rev=rev, down=head)
    (tmp_path / "project" / "migrations" / "versions" / f"{rev}_step.py").write_text(source)
    state = migrate_lock.schema_state(settings=settings)

    assert (state.status, state.pending, state.heads) == ("behind", (rev,), (rev,))
    assert migrate_lock.status(settings=settings).state.status == "behind"


def test_status_at_head_with_a_fresh_manifest_loads_no_revision_file(
    long_project: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, head = long_project
    migrate_lock.freeze(settings=settings)

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the scripts were loaded although the manifest is fresh")

    monkeypatch.setattr(ScriptDirectory, "from_config", refuse)
    monkeypatch.setattr(project, "_LOADED", {})
    assert migrate_lock.status(settings=settings).state.status == "at_head"
    assert migrate_lock.schema_state(settings=settings).heads == (head,)
