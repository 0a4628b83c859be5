"""What an upgrade did: the result every path returns, the fast path's included."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Role = Literal["fast_path", "waited", "migrated"]


@dataclass(frozen=True)
class UpgradeResult:
    """What one ``upgrade`` did.

    ``role`` is ``fast_path`` (already there, seeds unchanged, the lock never touched), ``waited``
    (another replica did the work while we waited) or ``migrated`` (we applied the
    revisions in ``applied`` and the seed files in ``seeded``).
    """

    role: Role
    from_revisions: tuple[str, ...]
    to_revisions: tuple[str, ...]
    applied: tuple[str, ...]
    seeded: tuple[str, ...]
    lock_key: int
    wait_ms: int
    total_ms: int
    #: Why this start ran the bootstrap step (MIGRATE_THEN; then.py), None: it did not.
    then: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
