"""Measure migrate-lock as it runs when installed: from compiled ``.pyc`` files.

``pip install`` compiles every module of a package; an editable install (a checkout) does
not, and with PYTHONDONTWRITEBYTECODE=1 (set on some CI machines) every process would
compile migrate-lock's modules again (~40 ms of CPU) while Alembic's and the other
libraries' come compiled from site-packages: an unfair comparison.
"""

from __future__ import annotations

import compileall
import os
from pathlib import Path

import migrate_lock


def as_installed() -> None:
    """Compile migrate-lock's modules, and let the benchmark's children write the ``.pyc``
    of the revision files they import, as a long-lived container does."""
    compileall.compile_dir(Path(migrate_lock.__file__).parent, quiet=1)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
