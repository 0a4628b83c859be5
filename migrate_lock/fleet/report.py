"""What a fleet run did, as it goes and at the end.

On a terminal, a live progress line on stderr (done, failed, waiting on a lock,
remaining, ETA); otherwise one ``fleet.tenant`` event per tenant (JSON lines in a
container, as every migrate-lock event). At the end, a summary table (``summary_table``)
or the whole result as one JSON document (``FleetResult.as_dict``).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from migrate_lock.errors import ExitCode
from migrate_lock.logs import log

Outcome = Literal[
    "at_head", "migrated", "waited", "seeded", "failed", "locked", "not_started", "invalid"
]
#: The outcomes that leave a tenant where it should be.
DONE: tuple[Outcome, ...] = ("at_head", "migrated", "waited", "seeded")


@dataclass(frozen=True)
class TenantOutcome:
    """What the fleet did for one tenant.

    ``outcome``: ``at_head`` (nothing to do), ``migrated``, ``waited`` (someone else
    migrated it while we waited for its lock), ``seeded``, ``failed`` (``error`` says why,
    ``exit_code`` is what a single upgrade would have exited with), ``locked`` (its lock
    was held and ``--skip-locked`` said not to wait), ``not_started`` (``--fail-fast``
    stopped the fleet first), ``invalid`` (not a usable schema name).
    """

    tenant: str
    kind: str
    outcome: Outcome
    from_revisions: tuple[str, ...] = ()
    to_revisions: tuple[str, ...] = ()
    applied: tuple[str, ...] = ()
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "kind": self.kind,
            "outcome": self.outcome,
            "from_revisions": list(self.from_revisions),
            "to_revisions": list(self.to_revisions),
            "applied": list(self.applied),
            "seconds": self.seconds,
            "error": self.error,
            "exit_code": self.exit_code,
        }


@dataclass(frozen=True)
class FleetResult:
    """The result of ``upgrade_fleet`` (and ``seed_fleet``): one outcome per tenant."""

    source: str
    heads: tuple[str, ...]
    tenants: list[TenantOutcome]
    jobs: int
    seconds: float
    shard: str | None = None
    heads_from: str = "alembic"
    extra: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return dict(Counter(outcome.outcome for outcome in self.tenants))

    @property
    def failed(self) -> list[TenantOutcome]:
        return [item for item in self.tenants if item.outcome in ("failed", "invalid")]

    @property
    def locked(self) -> list[TenantOutcome]:
        return [item for item in self.tenants if item.outcome == "locked"]

    @property
    def ok(self) -> bool:
        return all(item.outcome in DONE for item in self.tenants)

    @property
    def exit_code(self) -> ExitCode:
        """0 when every tenant is where it should be; 1 when any failed (or was not
        started after a failure, --fail-fast); 75 when the only ones left were skipped
        because their lock was held (--skip-locked): retry later."""
        if self.ok:
            return ExitCode.OK
        if self.failed or any(item.outcome == "not_started" for item in self.tenants):
            return ExitCode.MIGRATION_FAILED
        return ExitCode.TEMPORARY

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "shard": self.shard,
            "heads": list(self.heads),
            "heads_from": self.heads_from,
            "jobs": self.jobs,
            "seconds": round(self.seconds, 3),
            "exit_code": int(self.exit_code),
            "counts": self.counts(),
            "failed": [item.as_dict() for item in self.failed],
            "tenants": [item.as_dict() for item in self.tenants],
            **self.extra,
        }


_ORDER: tuple[Outcome, ...] = (
    "migrated",
    "waited",
    "seeded",
    "at_head",
    "locked",
    "failed",
    "invalid",
    "not_started",
)


def summary_table(result: FleetResult, *, failed_shown: int = 20) -> str:
    """The summary: a count per outcome, then the failed (and skipped) tenants and why."""
    counts = result.counts()
    shard = f" (shard {result.shard})" if result.shard else ""
    lines = [
        f"tenants: {len(result.tenants)} from {result.source}{shard}, "
        f"heads {', '.join(result.heads) or '(none)'}, {result.seconds:.2f}s, jobs {result.jobs}",
        "",
        f"{'outcome':<12} {'tenants':>8}",
    ]
    for outcome in _ORDER:
        if counts.get(outcome):
            lines.append(f"{outcome:<12} {counts[outcome]:>8}")
    problems = result.failed + result.locked
    if problems:
        lines.append("")
        for item in problems[:failed_shown]:
            lines.append(f"{item.outcome} {item.tenant}: {item.error}")
        if len(problems) > failed_shown:
            lines.append(f"... and {len(problems) - failed_shown} more (--json lists them all)")
    return "\n".join(lines)


class Progress:
    """Reports a fleet run as it goes: a live line on a terminal, else one event per
    tenant (``fleet.tenant``)."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = _isatty(self.stream) if live is None else live
        self.total = 0
        self.finished = 0
        self.counts: Counter[str] = Counter()
        self.waiting: set[str] = set()
        self.started = time.monotonic()
        self._last_draw = 0.0

    def begin(self, pending: int, at_head: int) -> None:
        """``pending`` tenants to go (the bar counts those), ``at_head`` already there."""
        self.total = pending
        self.started = time.monotonic()
        log.info("fleet.start", tenants=pending + at_head, pending=pending, at_head=at_head)
        self._draw(force=True)

    def waiting_on(self, tenant: str) -> None:
        self.waiting.add(tenant)
        self._draw()

    def done(self, outcome: TenantOutcome) -> None:
        self.waiting.discard(outcome.tenant)
        self.finished += 1
        self.counts[outcome.outcome] += 1
        if self.live:
            self._draw()
            return
        level = "WARNING" if outcome.outcome in ("failed", "invalid", "locked") else "INFO"
        log.emit(
            level,
            "fleet.tenant",
            tenant=outcome.tenant,
            outcome=outcome.outcome,
            from_rev=list(outcome.from_revisions),
            to_rev=list(outcome.to_revisions),
            applied=len(outcome.applied),
            seconds=outcome.seconds,
            **({"error": outcome.error} if outcome.error else {}),
        )

    def end(self) -> None:
        if self.live:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()

    def line(self) -> str:
        """The live line: bar, done, failed, waiting, remaining, ETA."""
        total = max(self.total, 1)
        width = 24
        filled = int(width * self.finished / total)
        bar = "#" * filled + "." * (width - filled)
        failed = self.counts["failed"] + self.counts["invalid"]
        remaining = self.total - self.finished
        elapsed = time.monotonic() - self.started
        eta = "?"
        if remaining == 0:
            eta = "0s"
        elif self.finished > 0:
            eta = f"{remaining * elapsed / self.finished:.0f}s"
        return (
            f"[{bar}] {self.finished}/{self.total} done, {failed} failed, "
            f"{len(self.waiting)} waiting on a lock, {remaining} remaining, ETA {eta}"
        )

    def _draw(self, *, force: bool = False) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self.stream.write("\r" + self.line())
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
