"""The heads manifest: the scripts' heads, known without loading Alembic.

``migrate-lock freeze`` (run it in the Dockerfile, after copying the migrations)
writes ``migrate-lock.heads.json`` into the script directory: the head revisions,
every revision id, and a fingerprint of every revision file. A replica that starts
reads the manifest and re-computes the fingerprint (a read of the revision files,
no imports); only when they match are the heads trusted. A missing or stale
manifest is never wrong, only slower: the caller falls back to Alembic.

Reading it is part of the at-head path (standard library only); writing it needs
Alembic's view of the scripts and is heads_manifest.py's.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from migrate_lock.lean.alembic_compat import (
    reads_recursive_version_locations,
    version_locations_separator,
)
from migrate_lock.logs import log

MANIFEST_NAME = "migrate-lock.heads.json"
#: The manifest's format version; a manifest of another format is ignored.
MANIFEST_FORMAT = 1
_SEPARATORS = {"os": os.pathsep, "space": " ", "newline": "\n", ":": ":", ";": ";", ",": ","}


@dataclass(frozen=True)
class Manifest:
    """What ``freeze`` wrote."""

    heads: tuple[str, ...]
    revisions: frozenset[str]
    fingerprint: str
    path: Path
    #: Where the heads came from, as the ``heads_from`` of ``migrate.up_to_date`` says.
    source: ClassVar[str] = "manifest"


@dataclass(frozen=True)
class ScriptFiles:
    """Where a project's revision files are, read from alembic.ini without Alembic."""

    script_dir: Path
    version_dirs: tuple[Path, ...]
    recursive: bool

    @property
    def manifest_path(self) -> Path:
        return self.script_dir / MANIFEST_NAME

    def fingerprint(self) -> str:
        """sha256 over every revision file's path and bytes, in a stable order."""
        digest = hashlib.sha256()
        for directory, names in self._files():
            # Relative to the script directory, so the project may move (image layers).
            digest.update(os.path.relpath(directory, self.script_dir).encode() + b"\0")
            for name in names:
                digest.update(name.encode() + b"\0")
                digest.update((directory / name).read_bytes() + b"\0")
        return "sha256:" + digest.hexdigest()

    def stats(self) -> list[list[object]]:
        """Each revision file's path, size and modification time: a cheap first check."""
        found: list[list[object]] = []
        for directory, names in self._files():
            for name in names:
                stat = os.stat(os.path.join(directory, name))
                found.append([name, stat.st_size, stat.st_mtime_ns])
        return found

    def _files(self) -> list[tuple[Path, list[str]]]:
        """Each version directory with its revision files' names (relative), sorted."""
        listed = []
        for directory in self.version_dirs:
            names: list[str] = []
            # os.walk/os.scandir rather than pathlib: this runs at every start.
            for root, dirs, files in os.walk(directory):
                dirs[:] = [d for d in dirs if d != "__pycache__"] if self.recursive else []
                prefix = os.path.relpath(root, directory)
                names += [
                    name if prefix == "." else os.path.join(prefix, name)
                    for name in files
                    if name.endswith(".py")
                ]
            listed.append((directory, sorted(names)))
        return listed


def script_files(alembic_ini: Path) -> ScriptFiles | None:
    """The revision directories named by ``alembic_ini``; None when only Alembic can
    tell (a ``package:resource`` script location, interpolation we do not support)."""
    parser = configparser.ConfigParser(defaults={"here": str(alembic_ini.parent.absolute())})
    try:
        if not parser.read(alembic_ini):
            return None
        section = parser["alembic"]
        location = section.get("script_location")
        versions = section.get("version_locations")
        separator = version_locations_separator(section) if versions else None
        recursive = section.getboolean("recursive_version_locations", fallback=False)
        recursive = recursive and reads_recursive_version_locations()  # Alembic 1.10+
    except (configparser.Error, KeyError, ValueError):
        return None
    if not location or (":" in location and not Path(location).is_absolute()):
        return None  # "package:resource": only Alembic knows where that is
    script_dir = Path(location)  # relative locations are relative to the working directory
    if versions:
        split = _SEPARATORS.get(separator or "")
        parts = versions.split(split) if split else versions.replace(",", " ").split()
        version_dirs = tuple(Path(part.strip()) for part in parts if part.strip())
    else:
        version_dirs = (script_dir / "versions",)
    return ScriptFiles(script_dir, version_dirs, recursive)


def read_manifest(files: ScriptFiles) -> Manifest | None:
    """The manifest if it exists and still matches the revision files, else None."""
    path = files.manifest_path
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.warning("heads.manifest_unreadable", path=str(path))
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    # Unchanged sizes and modification times mean unchanged files (a build image, a
    # checkout left alone); anything else is settled by the content fingerprint.
    if data.get("stats") != files.stats() and data.get("fingerprint") != files.fingerprint():
        log.warning(
            "heads.manifest_stale",
            path=str(path),
            detail="revision files changed since `migrate-lock freeze`; using Alembic",
        )
        return None
    return Manifest(
        heads=tuple(sorted(str(h) for h in data["heads"])),
        revisions=frozenset(str(r) for r in data["revisions"]),
        fingerprint=str(data["fingerprint"]),
        path=path,
    )
