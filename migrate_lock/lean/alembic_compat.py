"""What differs between the Alembic releases migrate-lock supports, in one place.

migrate-lock supports Alembic 1.9 and later (pyproject.toml; CI runs the unit tier and the
core tests on 1.9.0 as well as on the newest). Standard library only: the at-head path
reads ``alembic.ini`` with it, and must not import Alembic to learn its version.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from collections.abc import Mapping
from pathlib import Path

#: The oldest Alembic migrate-lock supports (keep equal to pyproject.toml's floor and the
#: version .ci/run pins in its second run).
OLDEST = (1, 9)

#: Alembic's functions that load a revision file, whose frames name the file that failed:
#: ``Script._from_path`` (1.13 and later), ``Script._from_filename`` (before), and the
#: loaders both call.
REVISION_LOADERS = ("_from_path", "_from_filename", "load_python_file", "load_module_py")

#: ``path_separator`` in alembic.ini is read from Alembic 1.16 on; before, only
#: ``version_path_separator`` (and the legacy split on blanks and commas without it).
_PATH_SEPARATOR_SINCE = (1, 16)
#: ``recursive_version_locations`` is read from Alembic 1.10 on (ignored before).
_RECURSIVE_SINCE = (1, 10)


@functools.cache
def installed_version() -> tuple[int, int] | None:
    """The installed Alembic's (major, minor), read without importing it (importing it, or
    importlib.metadata, costs the at-head path milliseconds); None when it cannot tell."""
    module = sys.modules.get("alembic")
    text = getattr(module, "__version__", None)
    if text is None:
        spec = importlib.util.find_spec("alembic")
        if spec is None or spec.origin is None:
            return None
        try:
            source = Path(spec.origin).read_text("utf-8")
        except (OSError, UnicodeError):
            return None
        found = re.search(r"""^__version__\s*=\s*["']([^"']+)""", source, re.M)
        text = found[1] if found else None
    parts = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(parts[1]), int(parts[2])) if parts else None


def _at_least(version: tuple[int, int]) -> bool:
    # An Alembic whose version cannot be read is taken for the newest.
    return (installed_version() or version) >= version


def version_locations_separator(section: Mapping[str, str]) -> str | None:
    """The separator of ``version_locations`` in ``section`` (alembic.ini's [alembic]) as the
    installed Alembic reads it: ``path_separator`` (1.16 and later), else
    ``version_path_separator``; None: Alembic's legacy split on blanks and commas."""
    separator = section.get("path_separator")
    if separator is not None and reads_path_separator():
        return separator
    return section.get("version_path_separator")


def reads_path_separator() -> bool:
    """Whether the installed Alembic reads ``path_separator`` (1.16 and later)."""
    return _at_least(_PATH_SEPARATOR_SINCE)


def reads_recursive_version_locations() -> bool:
    """Whether the installed Alembic reads ``recursive_version_locations`` (1.10 and
    later); an older one loads the revision files of the locations only, not below."""
    return _at_least(_RECURSIVE_SINCE)
