"""The public API: every name the package exports resolves, and stays what it is."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import migrate_lock

pytestmark = pytest.mark.unit


def test_all_lists_exactly_the_exported_names() -> None:
    """Why: ``from migrate_lock import *`` and the docs read ``__all__``; one list, kept equal."""
    exported = {"__version__", *migrate_lock._EXPORTS, *migrate_lock._MODULES}
    assert set(migrate_lock.__all__) == exported


def test_no_exported_function_shares_its_name_with_a_submodule() -> None:
    """Why: importing a submodule rebinds the package attribute of its name; an exported
    function of that name then turns into the module (migrate_lock.backup did)."""
    modules = {module.name for module in pkgutil.iter_modules(migrate_lock.__path__)}
    assert not modules & set(migrate_lock._EXPORTS)


@pytest.mark.parametrize(
    "statement",
    [
        "from migrate_lock.seed import run_sql_file",
        "from migrate_lock.sql_file import run_sql_file",
        "from migrate_lock import run_sql_file",
    ],
)
def test_revision_files_of_earlier_releases_still_import_run_sql_file(statement: str) -> None:
    """Why: revision files live for ever; moving a module must not break old ones."""
    done = subprocess.run(
        [sys.executable, "-c", f"{statement}; print(run_sql_file.__name__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout.strip() == "run_sql_file", done.stderr


def test_every_exported_name_resolves_after_the_full_path_has_loaded() -> None:
    """Why: the full upgrade path imports most modules; the facade must not change under it."""
    program = (
        "import migrate_lock, migrate_lock.protocol, migrate_lock.cli, migrate_lock.seed\n"
        "for name in migrate_lock.__all__:\n"
        "    value = getattr(migrate_lock, name)\n"
        "    kind = type(value).__name__\n"
        "    expected = 'module' if name in migrate_lock._MODULES else None\n"
        "    assert expected is None or kind == expected, (name, kind)\n"
        "    assert name in migrate_lock._MODULES or kind != 'module', (name, kind)\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr
