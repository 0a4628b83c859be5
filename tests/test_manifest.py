"""The heads manifest: trusted only while it matches the revision files."""

from __future__ import annotations

from pathlib import Path

from migrate_lock.lean.manifest import MANIFEST_NAME, read_manifest, script_files

from support import run_cli


def test_freeze_writes_the_heads_and_every_revision(project: Path) -> None:
    result = run_cli(["freeze"], cwd=project, database_url=None)

    assert result.returncode == 0, result.stderr
    files = script_files(project / "alembic.ini")
    assert files is not None
    manifest = read_manifest(files)
    assert manifest is not None
    assert manifest.heads == ("0021",)
    assert len(manifest.revisions) == 21
    assert (project / "migrations" / MANIFEST_NAME).is_file()


def test_missing_manifest_is_not_trusted(project: Path) -> None:
    files = script_files(project / "alembic.ini")
    assert files is not None and read_manifest(files) is None


def test_a_new_revision_after_freeze_makes_the_manifest_stale(project: Path) -> None:
    """Why: a wrong "at head" answer would skip a migration the code needs."""
    run_cli(["freeze"], cwd=project, database_url=None)
    versions = project / "migrations" / "versions"
    (versions / "0022_more.py").write_text(
        (versions / "0021_index.py")
        .read_text()
        .replace('"0021"', '"0022"')
        .replace('"0020"', '"0021"')
    )
    files = script_files(project / "alembic.ini")
    assert files is not None and read_manifest(files) is None


def test_an_edited_revision_with_the_same_size_makes_the_manifest_stale(project: Path) -> None:
    """Why: re-pointing down_revision keeps the file size but changes the heads."""
    run_cli(["freeze"], cwd=project, database_url=None)
    revision = project / "migrations" / "versions" / "0021_index.py"
    text = revision.read_text()
    edited = text.replace('down_revision = "0020"', 'down_revision = "0019"')
    assert len(edited) == len(text) and edited != text
    revision.write_text(edited)
    files = script_files(project / "alembic.ini")
    assert files is not None and read_manifest(files) is None


def test_package_resource_script_location_is_left_to_alembic(tmp_path: Path) -> None:
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = myapp:migrations\n")
    assert script_files(tmp_path / "alembic.ini") is None
