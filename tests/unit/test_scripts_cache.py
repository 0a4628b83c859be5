"""The scripts are loaded once per process and again when a revision file changes (issue
18, item 6). In-process, no database."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from migrate_lock.project import Project
from migrate_lock.sandbox.example import write_example_project
from migrate_lock.settings import load_settings

pytestmark = pytest.mark.unit


def test_a_second_project_reuses_the_scripts_until_a_revision_file_changes(
    tmp_path: Path,
) -> None:
    write_example_project(tmp_path / "p", 5)
    settings = load_settings(alembic_config=tmp_path / "p" / "alembic.ini")
    first = Project(settings).scripts

    assert Project(settings).scripts is first

    changed = next((tmp_path / "p" / "migrations" / "versions").glob("0005_*.py"))
    changed.write_text(changed.read_text().replace('"""', '"""changed: ', 1))
    about = changed.stat()
    os.utime(changed, ns=(about.st_atime_ns, about.st_mtime_ns + 1_000_000))
    again = Project(settings).scripts

    assert again is not first
    assert again.script.get_revision("0005").doc.startswith("changed: ")


def test_two_projects_in_turn_from_threads_never_fail(tmp_path: Path) -> None:
    settings = []
    for name in ("a", "b"):
        write_example_project(tmp_path / name, 3)
        settings.append(load_settings(alembic_config=tmp_path / name / "alembic.ini"))
    failures: list[BaseException] = []

    def load(index: int) -> None:
        try:
            for _ in range(15):
                assert Project(settings[index % 2]).scripts.heads() == ("0003",)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not failures, failures
