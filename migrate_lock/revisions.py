"""The script side of revisions: what the code's migration scripts define (Alembic).

The database side (the version table, our history) is plain SQL in version_table.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from alembic.script import Script, ScriptDirectory
from alembic.script.revision import CycleDetected, MultipleHeads, ResolutionError, Revision
from alembic.util import CommandError

from migrate_lock.errors import NoRevisions, ProjectFileError, UsageError, first_line, shown_path
from migrate_lock.interrupts import Terminated
from migrate_lock.lean.alembic_compat import REVISION_LOADERS


class Scripts:
    """The migration scripts of one project (Alembic's ScriptDirectory, loaded once)."""

    def __init__(self, script: ScriptDirectory) -> None:
        self.script = script
        self._ancestors: dict[tuple[str, ...], frozenset[str]] = {}

    def heads(self) -> tuple[str, ...]:
        return tuple(sorted(self.script.get_heads()))

    def knows(self, revision: str) -> bool:
        try:
            return self.script.get_revision(revision) is not None
        except CommandError:
            return False

    def resolve(self, target: str) -> tuple[str, ...]:
        """The revisions ``target`` (``heads``, ``head``, a revision, a label) stands for."""
        if target == "heads":
            return self.heads()
        try:
            scripts = self.script.revision_map.get_revisions(target)
        except MultipleHeads:
            heads = ", ".join(self.heads())
            raise UsageError(
                f"'{target}' is ambiguous: the scripts have several heads ({heads})",
                hint="merge them with `alembic merge heads`, or upgrade to `heads`",
            ) from None
        except (ResolutionError, CommandError) as error:
            raise UsageError(
                f"unknown target revision '{target}' ({error})",
                hint="see `migrate-lock history` for the revisions this code has",
            ) from None
        revisions = tuple(sorted(s.revision for s in scripts if isinstance(s, Revision)))
        if not revisions:
            raise UsageError(
                f"target '{target}' names no revision", hint="upgrade to `heads` or a revision id"
            )
        return revisions

    def ancestry(self, revisions: tuple[str, ...]) -> frozenset[str]:
        """``revisions`` and everything they depend on."""
        key = tuple(sorted(revisions))
        if key not in self._ancestors:
            found = (
                frozenset(s.revision for s in self.script.iterate_revisions(key, "base"))
                if key
                else frozenset()
            )
            self._ancestors[key] = found
        return self._ancestors[key]

    def pending(self, current: tuple[str, ...], target: tuple[str, ...]) -> list[str]:
        """Revisions to apply to go from ``current`` to ``target``, oldest first."""
        done = self.ancestry(current)
        wanted = self.ancestry(target)
        if wanted <= done:
            return []  # at head (or ahead): no need to walk the whole graph
        order = [s.revision for s in self.script.walk_revisions("base", "heads")]
        return [rev for rev in reversed(order) if rev in wanted and rev not in done]


def load_scripts(config: Any, *, allow_none: bool = False) -> Scripts:
    """Load the project's scripts from an Alembic Config, every revision file at once.

    A revision that does not load (a syntax error, an ImportError, no ``down_revision``),
    a ``down_revision`` no file defines, a cycle or a revision id defined twice is a
    ProjectFileError (exit 78) naming the file (and line) and the first line of the
    error. No revision at all is NoRevisions (exit 78) unless ``allow_none``
    (ALLOW_NO_REVISIONS).
    """
    script = ScriptDirectory.from_config(config)
    loaded: list[Script] = []
    revision_map = script.revision_map
    # Alembic's own loader, wrapped to know which file defined which revision.
    generate = revision_map._generator

    def recording() -> Iterator[Revision]:
        for item in generate():
            loaded.append(cast("Script", item))  # a ScriptDirectory's map holds Scripts
            yield item

    revision_map._generator = recording
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            script.get_heads()
        except Exception as error:  # noqa: BLE001 - a revision file may raise anything
            raise _load_error(error, loaded, [str(w.message) for w in caught]) from None
        except (KeyboardInterrupt, Terminated):
            raise
        except BaseException as error:  # noqa: BLE001 - SystemExit, asyncio.CancelledError, …
            raise _load_error(error, loaded, []) from None
    _refuse_duplicates(loaded)
    if not loaded and not allow_none:
        where = ", ".join(shown_path(d) for d in script._version_locations)
        raise NoRevisions(
            f"no revisions found in {where}",
            hint="check that the image contains the revision files (versions/); for a "
            "project that has none yet, set ALLOW_NO_REVISIONS=true",
        )
    return Scripts(script)


_HINT = "fix that file: every verb loads every revision"


def _load_error(error: BaseException, loaded: list[Script], warned: list[str]) -> ProjectFileError:
    if isinstance(error, CycleDetected):
        paths = {item.revision: item.path for item in loaded}
        cyclic = [paths[rev] for rev in error.revisions if rev in paths]
        return ProjectFileError(
            shown_path(cyclic[0]) if cyclic else "the migration scripts",
            f"{first_line(error)}: each revision's down_revision leads back to itself",
            hint="fix the down_revision of one of them",
        )
    if isinstance(error, KeyError) and error.args:
        missing = str(error.args[0])
        for item in loaded:
            if missing in _down_revisions(item):
                return ProjectFileError(
                    shown_path(item.path),
                    f"revision {item.revision} has down_revision {missing!r}, which no "
                    "revision file defines",
                    hint="restore that revision's file, or fix the down_revision",
                )
        if warned:
            return ProjectFileError("the migration scripts", warned[-1], hint=_HINT)
    path, line = _failing_file(error)
    problem = first_line(error)
    if isinstance(error, AttributeError) and "down_revision" in str(error):
        problem = f"no down_revision ({problem})"
    if path is None:
        return ProjectFileError("the migration scripts", problem, hint=_HINT)
    return ProjectFileError(shown_path(path), problem, line=line, hint=_HINT)


def _failing_file(error: BaseException) -> tuple[str | None, int | None]:
    """The revision file that was loading when ``error`` was raised, and the line."""
    if isinstance(error, SyntaxError) and error.filename:
        return error.filename, error.lineno
    path: str | None = None
    trace = error.__traceback__
    frames = []
    while trace is not None:
        frames.append((trace.tb_frame, trace.tb_lineno))
        trace = trace.tb_next
    for frame, _ in frames:
        names = frame.f_locals
        if frame.f_code.co_name in REVISION_LOADERS:
            found = names.get("path")
            if found is None and "dir_" in names and "filename" in names:
                found = Path(names["dir_"]) / names["filename"]
            if found is not None:
                path = str(found)
    if path is None:
        return None, None
    line = None
    for frame, number in frames:
        if Path(frame.f_code.co_filename) == Path(path):
            line = number
    return path, line


def _down_revisions(item: Script) -> tuple[str, ...]:
    return _ids(item.down_revision) + _ids(item.dependencies)


def _ids(value: object) -> tuple[str, ...]:
    """A ``down_revision`` or ``depends_on`` as a tuple, whatever the file assigned (a
    number there must not fail the report of what is wrong)."""
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list | tuple | set | frozenset) else ()


def _refuse_duplicates(loaded: list[Script]) -> None:
    first: dict[str, str] = {}
    for item in loaded:
        if not isinstance(item.revision, str):
            raise ProjectFileError(
                shown_path(item.path),
                f"its revision id is a {type(item.revision).__name__}, not a string",
                hint=_HINT,
            )
        if item.revision in first:
            raise ProjectFileError(
                shown_path(item.path),
                f"revision id {item.revision!r} is also defined in "
                f"{shown_path(first[item.revision])}",
                hint="give one of them a new revision id (and fix the down_revision after it)",
            )
        first[item.revision] = item.path
