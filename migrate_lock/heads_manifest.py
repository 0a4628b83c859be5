"""``migrate-lock freeze``: write the heads manifest (lean/manifest.py reads it).

Run it in the Dockerfile after copying the migrations: replicas that start at head
then know the heads without loading Alembic.
"""

from __future__ import annotations

import json

from migrate_lock.errors import ConfigError
from migrate_lock.lean.manifest import MANIFEST_FORMAT, Manifest, script_files
from migrate_lock.logs import log
from migrate_lock.project import Project
from migrate_lock.settings import Settings


def freeze(*, settings: Settings | None = None) -> Manifest:
    """Write the heads manifest for the project of ``settings`` (alembic.ini, scripts)."""
    project = Project(settings)
    # Alembic's load first: it names what is wrong with alembic.ini or a revision file.
    scripts = project.scripts
    files = script_files(project.settings.alembic_config)
    if files is None:
        raise ConfigError(
            f"cannot locate the revision files from {project.settings.alembic_config}",
            hint="freeze needs a filesystem script_location (not package:resource)",
        )
    revisions = sorted(s.revision for s in scripts.script.walk_revisions("base", "heads"))
    manifest = Manifest(
        heads=scripts.heads(),
        revisions=frozenset(revisions),
        fingerprint=files.fingerprint(),
        path=files.manifest_path,
    )
    payload = {
        "format": MANIFEST_FORMAT,
        "heads": list(manifest.heads),
        "revisions": revisions,
        "fingerprint": manifest.fingerprint,
        "stats": files.stats(),
    }
    temporary = manifest.path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=1) + "\n")
    temporary.replace(manifest.path)
    log.info(
        "heads.frozen",
        path=str(manifest.path),
        heads=list(manifest.heads),
        revisions=len(revisions),
    )
    return manifest
