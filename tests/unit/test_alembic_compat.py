"""The Alembic releases migrate-lock supports: what differs between them, in one place."""

from __future__ import annotations

import re
from pathlib import Path

import alembic
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from migrate_lock.lean import alembic_compat
from migrate_lock.lean.manifest import script_files
from migrate_lock.lean.static_revisions import read_revisions

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_version_is_read_without_importing_alembic() -> None:
    major, minor = (int(part) for part in alembic.__version__.split(".")[:2])
    alembic_compat.installed_version.cache_clear()
    assert alembic_compat.installed_version() == (major, minor)
    assert alembic_compat.installed_version() >= alembic_compat.OLDEST


def test_the_floor_is_one_number_in_pyproject_the_compat_module_and_ci() -> None:
    """Why: a floor lowered in one place only is a floor nobody tests."""
    oldest = ".".join(map(str, alembic_compat.OLDEST))
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"alembic>={oldest}"' in pyproject
    pinned = re.search(r"'alembic==([0-9.]+)'", (ROOT / ".ci" / "run").read_text())
    assert pinned is not None and pinned[1].startswith(f"{oldest}.")


@pytest.mark.parametrize(
    ("version", "several"),
    [((1, 20), True), ((1, 16), True), ((1, 15), False), ((1, 9), False)],
)
def test_version_locations_are_split_as_the_installed_alembic_splits_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: tuple[int, int], several: bool
) -> None:
    """Why: ``path_separator`` is read from Alembic 1.16 on; before, ``a:b`` with it (and
    no ``version_path_separator``) is one location, and the at-head path read two: heads
    Alembic does not see."""
    monkeypatch.setattr(alembic_compat, "installed_version", lambda: version)
    for name in ("migrations/versions", "more"):
        (tmp_path / name).mkdir(parents=True)
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        "[alembic]\nscript_location = %(here)s/migrations\npath_separator = :\n"
        "version_locations = %(here)s/migrations/versions:%(here)s/more\n"
    )

    files = script_files(ini)

    assert files is not None
    found = [str(path) for path in files.version_dirs]
    if several:
        assert found == [str(tmp_path / "migrations/versions"), str(tmp_path / "more")]
    else:
        assert found == [f"{tmp_path}/migrations/versions:{tmp_path}/more"]
        assert read_revisions(ini) is None  # not a directory: only Alembic can tell


def test_version_path_separator_is_read_by_every_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(alembic_compat, "installed_version", lambda: (1, 9))
    section = {"path_separator": "os", "version_path_separator": ";"}
    assert alembic_compat.version_locations_separator(section) == ";"
    monkeypatch.setattr(alembic_compat, "installed_version", lambda: (1, 16))
    assert alembic_compat.version_locations_separator(section) == "os"


def test_the_at_head_path_reads_version_locations_as_the_installed_alembic_does(
    tmp_path: Path,
) -> None:
    """Why: with Alembic before 1.16, a project whose alembic.ini separates its version
    locations with ``path_separator`` alone has none Alembic can read, while the at-head
    path read heads from both directories (so it answered "at head" for a database Alembic
    would call behind). Run in CI on the oldest Alembic and the newest."""
    for directory, revision, down in (("migrations/versions", "a1", None), ("more", "b2", "a1")):
        (tmp_path / directory).mkdir(parents=True)
        (tmp_path / directory / f"{revision}.py").write_text(
            f"revision = {revision!r}\ndown_revision = {down!r}\n"
            "branch_labels = None\ndepends_on = None\n"
        )
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        "[alembic]\nscript_location = %(here)s/migrations\npath_separator = :\n"
        "version_locations = %(here)s/migrations/versions:%(here)s/more\n"
    )
    try:
        script = ScriptDirectory.from_config(Config(str(ini)))
        alembic_heads: tuple[str, ...] | None = tuple(script.get_heads())
    except Exception:  # this Alembic refuses the locations: the at-head path must defer
        alembic_heads = None

    found = read_revisions(ini)

    if found is not None:  # None: the at-head path defers to Alembic, always allowed
        assert found.heads == alembic_heads


def test_the_at_head_path_walks_below_the_versions_only_where_alembic_does(
    tmp_path: Path,
) -> None:
    """Why: Alembic before 1.10 reads no ``recursive_version_locations``: it never loads
    versions/nested/b2.py, while the at-head path took b2 for the head."""
    versions = tmp_path / "migrations" / "versions"
    (versions / "nested").mkdir(parents=True)
    for path, revision, down in ((versions, "a1", None), (versions / "nested", "b2", "a1")):
        (path / f"{revision}.py").write_text(
            f"revision = {revision!r}\ndown_revision = {down!r}\n"
            "branch_labels = None\ndepends_on = None\n"
        )
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        "[alembic]\nscript_location = %(here)s/migrations\nrecursive_version_locations = true\n"
    )
    alembic_heads = tuple(ScriptDirectory.from_config(Config(str(ini))).get_heads())

    found = read_revisions(ini)
    files = script_files(ini)

    assert found is None or found.heads == alembic_heads
    assert files is not None and files.recursive == (alembic_heads == ("b2",))
