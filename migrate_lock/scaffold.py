"""``init``: scaffold a new project from the bundled Alembic template."""

from __future__ import annotations

import shutil
from pathlib import Path

from migrate_lock.errors import UsageError

TEMPLATE = Path(__file__).parent / "alembic_template"


def init_project(path: Path | str) -> list[Path]:
    """Write ``alembic.ini`` and ``migrations/`` (env.py, script.py.mako, a baseline
    revision) into ``path``, creating it if needed. Returns the files written.

    Refuses (UsageError, nothing written) if any of those files already exists.
    """
    target = Path(path)
    sources = sorted(
        p
        for p in TEMPLATE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    destinations = [target / p.relative_to(TEMPLATE) for p in sources]
    existing = [str(d) for d in destinations if d.exists()]
    if existing:
        raise UsageError(
            f"refusing to overwrite existing files: {', '.join(existing[:3])}"
            + (" …" if len(existing) > 3 else ""),
            hint="choose an empty directory",
        )
    for source, destination in zip(sources, destinations, strict=True):
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    return destinations
