"""State comparison: at head, ahead, behind or unknown decides whether a replica may serve."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import pytest

from migrate_lock.state import compare

if TYPE_CHECKING:
    from migrate_lock.revisions import Scripts

pytestmark = pytest.mark.unit


class LinearScripts:
    """The two questions ``compare`` asks of the scripts, for a straight history."""

    def __init__(self, *history: str) -> None:
        self.history = history

    def knows(self, revision: str) -> bool:
        return revision in self.history

    def pending(self, current: tuple[str, ...], target: tuple[str, ...]) -> list[str]:
        done = max((self.history.index(rev) + 1 for rev in current), default=0)
        wanted = max((self.history.index(rev) + 1 for rev in target), default=0)
        return list(self.history[done:wanted])


class Seen:
    """The database's history table: which revisions it has been at (asked lazily)."""

    def __init__(self, *revisions: str) -> None:
        self.revisions = set(revisions)
        self.asked = 0

    def __call__(self, revisions: Iterable[str]) -> set[str]:
        self.asked += 1
        return self.revisions & set(revisions)


SCRIPTS = cast("Scripts", LinearScripts("a", "b", "c"))


def test_at_head_is_ready_without_reading_the_history() -> None:
    """The /readyz answer at head must cost no more than reading the version table."""
    seen = Seen()

    state = compare(SCRIPTS, ("c",), ("c",), seen)

    assert (state.status, state.ready, state.pending) == ("at_head", True, ())
    assert seen.asked == 0


def test_behind_lists_the_pending_revisions_oldest_first() -> None:
    """A replica that serves before these are applied runs new code on an old schema."""
    state = compare(SCRIPTS, ("a",), ("c",), Seen())

    assert (state.status, state.ready, state.pending) == ("behind", False, ("b", "c"))


def test_no_version_table_is_behind_by_every_revision() -> None:
    """A fresh database must be migrated from base, not reported as ready."""
    state = compare(SCRIPTS, None, ("c",), Seen())

    assert (state.status, state.current, state.pending) == ("behind", (), ("a", "b", "c"))


def test_past_the_target_within_the_known_scripts_is_ahead_and_ready() -> None:
    """Downgraded code on a database that already has its target keeps serving."""
    state = compare(SCRIPTS, ("c",), ("b",), Seen())

    assert (state.status, state.ready) == ("ahead", True)


def test_an_unknown_revision_past_our_target_is_ahead_and_ready() -> None:
    """A rolling deploy: the new release migrated first; old replicas must keep serving."""
    seen = Seen("a", "b", "c")

    state = compare(SCRIPTS, ("d",), ("c",), seen)

    assert (state.status, state.ready, state.unknown) == ("ahead", True, ("d",))
    assert seen.asked == 1


def test_an_unknown_revision_never_past_our_target_is_unknown_and_not_ready() -> None:
    """A database from another branch or project must not be served by this code."""
    state = compare(SCRIPTS, ("x",), ("c",), Seen("a"))

    assert (state.status, state.ready, state.unknown) == ("unknown", False, ("x",))


def test_as_dict_carries_ready_for_the_json_output() -> None:
    """``status --json`` and /readyz bodies rely on ``ready`` being in the dictionary."""
    state = compare(SCRIPTS, ("a",), ("c",), Seen())

    assert state.as_dict() == {
        "status": "behind",
        "current": ("a",),
        "heads": ("c",),
        "pending": ("b", "c"),
        "unknown": (),
        "ready": False,
    }
