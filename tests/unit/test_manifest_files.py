"""The heads manifest's file side: where the revision files are, and their fingerprint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from migrate_lock.lean.alembic_compat import (
    reads_path_separator,
    reads_recursive_version_locations,
)
from migrate_lock.lean.manifest import MANIFEST_NAME, ScriptFiles, script_files

pytestmark = pytest.mark.unit


def ini(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "alembic.ini"
    path.write_text("\n".join(["[alembic]", *lines]) + "\n")
    return path


def revisions(directory: Path, **files: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def located(alembic_ini: Path) -> ScriptFiles:
    files = script_files(alembic_ini)
    assert files is not None
    return files


def test_the_versions_directory_defaults_to_the_script_location(tmp_path: Path) -> None:
    """Most projects name only script_location; its versions/ holds the revisions."""
    files = located(ini(tmp_path, "script_location = %(here)s/migrations"))

    assert files.script_dir == tmp_path.absolute() / "migrations"
    assert files.version_dirs == (tmp_path.absolute() / "migrations" / "versions",)
    assert files.manifest_path == tmp_path.absolute() / "migrations" / MANIFEST_NAME
    assert not files.recursive


def test_a_relative_script_location_is_relative_to_the_working_directory(tmp_path: Path) -> None:
    """Alembic reads it so (not relative to alembic.ini); the manifest must look where it will."""
    files = located(ini(tmp_path, "script_location = migrations"))

    assert files.script_dir == Path("migrations")
    assert files.version_dirs == (Path("migrations/versions"),)


@pytest.mark.parametrize(
    ("separator", "joined"),
    [
        ("path_separator = os", "{a}" + os.pathsep + "{b}"),
        ("path_separator = space", "{a} {b}"),
        ("path_separator = ;", "{a};{b}"),
        ("version_path_separator = ,", "{a},{b}"),
        ("", "{a}, {b}"),
        ("", "{a} {b}"),
    ],
)
def test_version_locations_are_split_as_alembic_splits_them(
    tmp_path: Path, separator: str, joined: str
) -> None:
    """A revision directory missed here would leave a stale manifest trusted."""
    a, b = tmp_path / "core", tmp_path / "billing"
    files = located(
        ini(
            tmp_path,
            "script_location = migrations",
            f"version_locations = {joined.format(a=a, b=b)}",
            separator,
        )
    )

    if separator.startswith("path_separator ") and not reads_path_separator():
        # Alembic before 1.16 reads no path_separator: its legacy split, on blanks and commas.
        legacy = joined.format(a=a, b=b).replace(",", " ").split()
        assert files.version_dirs == tuple(Path(part) for part in legacy)
    else:
        assert files.version_dirs == (a, b)


@pytest.mark.parametrize(
    "text",
    [
        "[alembic]\nscript_location = myapp:migrations\n",
        "[alembic]\nscript_location = %(undefined)s/migrations\n",
        "[alembic]\nversion_locations = versions\n",
        "[loggers]\nkeys = root\n",
        "not an ini file at all\n",
    ],
)
def test_what_only_alembic_can_resolve_is_left_to_alembic(tmp_path: Path, text: str) -> None:
    """Guessing here could trust a wrong manifest; None makes the caller load Alembic instead."""
    (tmp_path / "alembic.ini").write_text(text)

    assert script_files(tmp_path / "alembic.ini") is None


def test_a_missing_alembic_ini_is_left_to_alembic(tmp_path: Path) -> None:
    """Alembic then reports the missing file with its own, familiar message."""
    assert script_files(tmp_path / "alembic.ini") is None


@pytest.fixture
def project(tmp_path: Path) -> ScriptFiles:
    versions = tmp_path / "project" / "migrations" / "versions"
    revisions(versions, **{"0001_base.py": "revision = '0001'\n", "0002_next.py": "x = 2\n"})
    return ScriptFiles(versions.parent, (versions,), recursive=False)


def test_the_fingerprint_is_stable(project: ScriptFiles) -> None:
    """Read twice, unchanged files must match, or every start would fall back to Alembic."""
    assert project.fingerprint() == project.fingerprint()
    assert project.fingerprint().startswith("sha256:")


def test_the_fingerprint_survives_moving_the_project(project: ScriptFiles, tmp_path: Path) -> None:
    """``freeze`` runs in a build stage; the image runs the project from another path."""
    moved = tmp_path / "elsewhere"
    shutil.copytree(project.script_dir, moved)

    copy = ScriptFiles(moved, (moved / "versions",), recursive=False)

    assert copy.fingerprint() == project.fingerprint()


def test_the_fingerprint_changes_with_a_revision_file(project: ScriptFiles) -> None:
    """Any edit to a revision (a re-pointed down_revision) can change the heads."""
    before = project.fingerprint()
    (project.version_dirs[0] / "0002_next.py").write_text("x = 3\n")

    assert project.fingerprint() != before


def test_the_fingerprint_changes_with_a_new_or_renamed_revision(project: ScriptFiles) -> None:
    """A new file is a new revision, and a possible new head."""
    before = project.fingerprint()
    versions = project.version_dirs[0]
    (versions / "0002_next.py").rename(versions / "0002_renamed.py")
    renamed = project.fingerprint()
    revisions(versions, **{"0003_more.py": "x = 4\n"})

    assert len({before, renamed, project.fingerprint()}) == 3


def test_the_fingerprint_ignores_caches_and_other_files(project: ScriptFiles) -> None:
    """Bytecode and notes appear after a first run; they must not make the manifest stale."""
    before = project.fingerprint()
    versions = project.version_dirs[0]
    revisions(versions / "__pycache__", **{"0001_base.cpython-312.py": "cached\n"})
    revisions(versions, **{"README.md": "notes\n", "0001_base.pyc": "bytecode\n"})

    assert project.fingerprint() == before


def test_subdirectories_count_only_with_recursive_version_locations(
    project: ScriptFiles,
) -> None:
    """Alembic loads nested revisions only when told to; so must the fingerprint."""
    versions = project.version_dirs[0]
    flat = project.fingerprint()
    revisions(versions / "2024", **{"0003_nested.py": "x = 5\n"})
    recursive = ScriptFiles(project.script_dir, project.version_dirs, recursive=True)

    assert project.fingerprint() == flat
    assert recursive.fingerprint() != flat


def test_recursive_version_locations_is_read_from_alembic_ini(tmp_path: Path) -> None:
    """The ini's flag decides recursion, as it does for Alembic."""
    files = located(
        ini(tmp_path, "script_location = migrations", "recursive_version_locations = true")
    )

    assert files.recursive == reads_recursive_version_locations()  # Alembic 1.10 and later
