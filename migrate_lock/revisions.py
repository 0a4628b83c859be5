"""The script side of revisions: what the code's migration scripts define (Alembic).

The database side (the version table, our history) is plain SQL in version_table.py.
"""

from __future__ import annotations

from typing import Any

from alembic.script import ScriptDirectory
from alembic.script.revision import MultipleHeads, ResolutionError, Revision
from alembic.util import CommandError

from migrate_lock.errors import UsageError


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
        order = [s.revision for s in self.script.walk_revisions("base", "heads")]
        return [rev for rev in reversed(order) if rev in wanted and rev not in done]


def load_scripts(config: Any) -> Scripts:
    """Load the project's scripts from an Alembic Config."""
    return Scripts(ScriptDirectory.from_config(config))
