"""``upgrade --tenants``: many tenants, each through the one locked upgrade path.

1. Plan (plan.py): list the tenants (sources.py), keep this shard's, read every tenant's
   revision in a few batched queries, and compare with the heads, without Alembic. At
   head: done, no worker started.
2. Run: ``jobs`` worker processes (worker.py), each loading Alembic once, take the
   pending tenants one at a time. Each tenant is ``protocol.upgrade`` with its own
   settings (its schema or database; its lock key follows from them), so a tenant
   migrates exactly as a single ``upgrade`` would: under its own migration lock, all of a
   revision or none of it. A tenant's failure is its own: the others go on (unless
   ``fail_fast``). The fleet holds no connection while the workers run: at most ``jobs``
   connections at once (plus one while it plans).
3. Report (report.py): progress as it goes, a ``FleetResult`` at the end.

Killed midway (a pod evicted), a tenant being migrated is rolled back by the server or
committed whole; a rerun finds the done tenants at head and skips them.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from migrate_lock.dsn import DatabaseUrl, migration_url_of, parse_database_url, with_database
from migrate_lock.errors import ConfigError, Refused, TenantSourceError, UsageError
from migrate_lock.fleet.plan import FleetPlan, TenantState, plan_databases, plan_schemas
from migrate_lock.fleet.report import DONE, FleetResult, Progress, TenantOutcome
from migrate_lock.fleet.sources import (
    Shard,
    Tenant,
    TenantSource,
    list_tenants,
    parse_shard,
    parse_source,
)
from migrate_lock.lean.abc import LockConnection
from migrate_lock.lean.pq import LeanConnection, LeanUnavailable
from migrate_lock.lean.static_revisions import known_heads
from migrate_lock.logs import log
from migrate_lock.seeds.files import discover, seeds_dir

if TYPE_CHECKING:
    from migrate_lock.lean.settings_schema import LeanSettings


@dataclass
class Fleet:
    """A fleet as one call sees it: the source, this shard, the settings."""

    source: TenantSource
    shard: Shard | None
    settings: LeanSettings
    overrides: dict[str, Any] = field(default_factory=dict)
    #: Connections the plan may read with at once (the run's --jobs; never more).
    parallel: int = 4


def fleet(
    tenants: str | TenantSource,
    *,
    shard: Shard | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    parallel: int = 4,
) -> Fleet:
    """Parse the source and the shard; read the settings (lean when certain)."""
    from migrate_lock.migrate import start_settings  # noqa: PLC0415 - the front door's reader

    source = parse_source(tenants) if isinstance(tenants, str) else tenants
    chosen = parse_shard(shard) if isinstance(shard, str) or shard is None else shard
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    return Fleet(source, chosen, start_settings(given), given, parallel)


# --- the plan ---------------------------------------------------------------------------


def read_plan(fleet: Fleet) -> FleetPlan:
    """Every tenant of this shard and where it stands (plan.py), without Alembic when
    the heads manifest or the revision files' text vouch for the heads."""
    settings = fleet.settings
    heads, known, heads_from = _heads(fleet)
    if fleet.source.kind == "file":
        return _plan(fleet, None, heads, known, heads_from)
    url = _migration_url(settings)
    timeout = int(min(10.0, max(1.0, settings.db_connect_timeout_seconds)))
    # The libpq binding reads %s as a parameter: a query of the user's with one goes to
    # psycopg, which runs a query without parameters as it is.
    if not (fleet.source.kind == "query" and "%s" in fleet.source.value):

        def connect_more() -> LockConnection:
            return LeanConnection.connect(url.libpq, timeout_seconds=timeout)

        try:
            with LeanConnection.connect(url.libpq, timeout_seconds=timeout) as connection:
                return _plan(fleet, connection, heads, known, heads_from, connect_more)
        except LeanUnavailable:
            pass  # psycopg says why, with the proper error
    return _plan_in_full(fleet, url, heads, known, heads_from)


def _plan_in_full(
    fleet: Fleet, url: DatabaseUrl, heads: tuple[str, ...], known: frozenset[str], source: str
) -> FleetPlan:
    import psycopg  # noqa: PLC0415 - only when the libpq binding could not answer

    from migrate_lock.connection import connect  # noqa: PLC0415 - as above
    from migrate_lock.errors import describe_sql_error  # noqa: PLC0415 - as above

    settings = fleet.settings
    with connect(url, timeout_seconds=settings.db_connect_timeout_seconds) as connection:
        try:
            return _plan(fleet, connection, heads, known, source)
        except psycopg.Error as error:
            raise TenantSourceError(
                f"--tenants {fleet.source}: {describe_sql_error(error)}",
                hint="check the pattern or query (docs/tenants.md)",
            ) from None


def _plan(
    fleet: Fleet,
    connection: LockConnection | None,
    heads: tuple[str, ...],
    known: frozenset[str],
    heads_from: str,
    connect_more: Callable[[], LockConnection] | None = None,
) -> FleetPlan:
    settings = fleet.settings
    tenants = list_tenants(fleet.source, connection)
    if fleet.shard is not None:
        tenants = [tenant for tenant in tenants if fleet.shard.takes(tenant.name)]
    schemas = [tenant for tenant in tenants if tenant.kind == "schema"]
    databases = [tenant for tenant in tenants if tenant.kind == "database"]
    states: list[TenantState] = []
    if schemas and connection is not None:
        states += plan_schemas(
            connection,
            schemas,
            heads=heads,
            known=known,
            version_table=settings.version_table,
            heads_from=heads_from,
            connect_more=connect_more,
            parallel=fleet.parallel,
        ).tenants
    if databases:
        seeds = (
            discover(seeds_dir(settings.seeds_dir, settings.alembic_config))
            if settings.seed_on_upgrade
            else []
        )
        timeout = int(min(10.0, max(1.0, settings.db_connect_timeout_seconds)))

        def connect(tenant: Tenant) -> AbstractContextManager[LockConnection] | None:
            try:
                url = tenant_url(fleet, tenant)
                return LeanConnection.connect(url.libpq, timeout_seconds=timeout)
            except (LeanUnavailable, ConfigError):
                return None

        states += plan_databases(
            databases,
            connect,
            heads=heads,
            known=known,
            version_table=settings.version_table,
            version_table_schema=settings.version_table_schema,
            seeds=seeds,
            heads_from=heads_from,
        ).tenants
    states.sort(key=lambda state: state.tenant.name)
    return FleetPlan(heads, states, heads_from)


def _heads(fleet: Fleet) -> tuple[tuple[str, ...], frozenset[str], str]:
    known = known_heads(fleet.settings.alembic_config)
    if known is not None:
        return known.heads, known.revisions, known.source
    # Neither a fresh manifest nor the files' text vouch for them: Alembic says.
    from migrate_lock.project import Project  # noqa: PLC0415 - the full path, when needed
    from migrate_lock.settings import load_settings  # noqa: PLC0415 - as above

    scripts = Project(load_settings(**fleet.overrides)).scripts
    revisions = frozenset(script.revision for script in scripts.script.walk_revisions())
    return scripts.heads(), revisions, "alembic"


def _migration_url(settings: LeanSettings) -> DatabaseUrl:
    return migration_url_of(settings.migration_database_url, settings.database_url)


def tenant_url(fleet: Fleet, tenant: Tenant) -> DatabaseUrl:
    """A database tenant's URL: its own, or the migration URL with its database."""
    if tenant.url is not None:
        return parse_database_url(tenant.url, variable="a --tenants URL")
    return with_database(_migration_url(fleet.settings), tenant.name)


def fleet_plan(
    tenants: str | TenantSource,
    *,
    shard: Shard | str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> FleetPlan:
    """Where every tenant stands (``status``, ``current`` and ``plan --tenants``): a few
    batched queries, without Alembic when the heads manifest or the revision files vouch
    for the heads."""
    return read_plan(fleet(tenants, shard=shard, overrides=overrides))


# --- the run ----------------------------------------------------------------------------


def upgrade_fleet(
    tenants: str | TenantSource,
    *,
    jobs: int = 4,
    fail_fast: bool = False,
    skip_locked: bool = False,
    shard: Shard | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> FleetResult:
    """Bring every tenant of ``tenants`` (``schemas:tenant_%``, ``query:SQL``,
    ``databases:PATTERN``, ``databases:@FILE``) to the heads, ``jobs`` at a time.

    Each tenant is upgraded as a single ``upgrade`` would be, under its own lock, in one
    of ``jobs`` worker processes (at most ``jobs`` connections at once). A failed tenant
    is reported and the others go on (``fail_fast``: no new tenant starts after it).
    A tenant whose lock another session holds is waited for (MIGRATION_LOCK_TIMEOUT_SECONDS,
    ``--lock-timeout``), or reported ``locked`` at once with ``skip_locked``. ``shard``
    (``INDEX/COUNT``) takes one share of the tenants by a stable hash of their names.
    ``overrides`` are settings by field name, as for ``upgrade``. Raises only for what
    stops the whole fleet (a bad source, no database): tenants' failures are in the
    result (``FleetResult.exit_code``).
    """
    return _run_fleet(
        "upgrade",
        tenants,
        jobs=jobs,
        fail_fast=fail_fast,
        skip_locked=skip_locked,
        shard=shard,
        overrides=overrides,
        progress=progress,
    )


def seed_fleet(
    tenants: str | TenantSource,
    *,
    jobs: int = 4,
    fail_fast: bool = False,
    skip_locked: bool = False,
    shard: Shard | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    force: bool = False,
    prune: bool = False,
) -> FleetResult:
    """``seed`` for every database tenant (seeds apply per database, docs/tenants.md).

    ``prune`` deletes rows: each database's guardrail applies (``--confirm-destructive``
    with its name, or ``true`` outside production), as for a single ``seed --prune``.
    """
    return _run_fleet(
        "seed",
        tenants,
        jobs=jobs,
        fail_fast=fail_fast,
        skip_locked=skip_locked,
        shard=shard,
        overrides=overrides,
        progress=progress,
        seed={"force": force, "prune": prune},
    )


def _run_fleet(
    verb: str,
    tenants: str | TenantSource,
    *,
    jobs: int,
    fail_fast: bool,
    skip_locked: bool,
    shard: Shard | str | None,
    overrides: Mapping[str, Any] | None,
    progress: Progress | None,
    seed: dict[str, Any] | None = None,
) -> FleetResult:
    started = time.monotonic()
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: must be at least 1", hint="e.g. --jobs 4")
    chosen = fleet(tenants, shard=shard, overrides=overrides, parallel=jobs)
    if seed and seed.get("prune") and not (chosen.settings.confirm_destructive or "").strip():
        # The guardrail's own words, before any tenant: each database's guard decides next.
        raise Refused(
            f"seed --prune --tenants {chosen.source} refused: it deletes rows in every "
            "tenant; nothing was changed",
            hint="confirm with --confirm-destructive DBNAME (or `true`, which a database "
            "marked production refuses), see docs/guardrails.md",
        )
    plan = read_plan(chosen)
    if verb == "seed":
        if any(state.tenant.kind == "schema" for state in plan.tenants):
            raise UsageError(
                f"seed --tenants {chosen.source}: seeds apply once per database, not per schema",
                hint="run `migrate-lock seed` without --tenants for the database "
                "(see docs/tenants.md)",
            )
        todo = [state for state in plan.tenants if state.status != "invalid"]
    else:
        todo = plan.pending
    sent = {state.tenant.name for state in todo}
    done: dict[str, TenantOutcome] = {
        state.tenant.name: _planned_outcome(state)
        for state in plan.tenants
        if state.tenant.name not in sent
    }
    progress = progress or Progress()
    progress.begin(len(todo), len(plan.tenants) - len(todo))
    setup = {
        "overrides": chosen.overrides,
        "skip_locked": skip_locked,
        "verb": verb,
        "seed": seed or {},
    }
    try:
        for outcome in _Pool(chosen, setup, jobs, fail_fast, progress).run(todo):
            done[outcome.tenant] = outcome
    finally:
        progress.end()
    ordered = [done[state.tenant.name] for state in plan.tenants]
    result = FleetResult(
        source=str(chosen.source),
        heads=plan.heads,
        tenants=ordered,
        jobs=jobs,
        seconds=time.monotonic() - started,
        shard=str(chosen.shard) if chosen.shard else None,
        heads_from=plan.heads_from,
    )
    log.info(
        "fleet.done",
        tenants=len(ordered),
        exit_code=int(result.exit_code),
        duration_ms=round(result.seconds * 1000),
        **result.counts(),
    )
    return result


def _planned_outcome(state: TenantState) -> TenantOutcome:
    if state.status == "invalid":
        return TenantOutcome(
            state.tenant.name,
            state.tenant.kind,
            "invalid",
            error=state.detail,
            exit_code=2,
        )
    current = state.current or ()
    return TenantOutcome(state.tenant.name, state.tenant.kind, "at_head", current, current)


# --- the workers ------------------------------------------------------------------------


class _Worker:
    """One ``python -m migrate_lock.fleet.worker`` child and its result pipe."""

    def __init__(self, setup: dict[str, Any]) -> None:
        read_end, write_end = os.pipe()
        environment = dict(os.environ)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "migrate_lock.fleet.worker", str(write_end)],
            stdin=subprocess.PIPE,
            stdout=2,  # Alembic's and env.py's prints: never on the fleet's stdout
            pass_fds=(write_end,),
            env=environment,
            close_fds=True,
        )
        os.close(write_end)
        self.reader = read_end
        self.buffer = b""
        self.tenant: Tenant | None = None
        self.ready = False
        self.stdin: IO[bytes] = self.process.stdin  # type: ignore[assignment]
        self.send(setup)

    def send(self, message: dict[str, Any]) -> None:
        self.stdin.write(json.dumps(message, default=str).encode() + b"\n")
        self.stdin.flush()

    def assign(self, state: TenantState, url: str | None) -> None:
        tenant = self.tenant = state.tenant
        job: dict[str, Any] = {"name": tenant.name, "kind": tenant.kind, "url": url}
        if state.status in ("behind", "empty"):
            # What the plan read: the tenant's lock-free check needs no query of its own.
            job["planned"] = list(state.current) if state.current is not None else None
        self.send(job)

    def messages(self, data: bytes) -> Iterator[dict[str, Any]]:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)

    def close(self, *, terminate: bool = False) -> None:
        """No more tenants (it exits after the one it is on); ``terminate``: now (SIGTERM:
        its tenant is rolled back)."""
        try:
            if terminate and self.process.poll() is None:
                self.process.terminate()
            self.stdin.close()
        except OSError:
            pass

    def finish(self) -> None:
        self.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.reader)


class _Pool:
    def __init__(
        self, fleet: Fleet, setup: dict[str, Any], jobs: int, fail_fast: bool, progress: Progress
    ) -> None:
        self.fleet = fleet
        self.setup = setup
        self.jobs = jobs
        self.fail_fast = fail_fast
        self.progress = progress

    def run(self, todo: list[TenantState]) -> Iterator[TenantOutcome]:
        queue = deque(todo)
        if not queue:
            return
        selector = selectors.DefaultSelector()
        workers: list[_Worker] = []
        stopping = False
        clean = False
        try:
            for _ in range(min(self.jobs, len(queue))):
                worker = _Worker(self.setup)
                workers.append(worker)
                selector.register(worker.reader, selectors.EVENT_READ, worker)
            idle = list(workers)
            # One tenant at a time until one has migrated: the first creates migrate-lock's
            # own schema and tables and the environment marker (per database) alone, rather
            # than every worker waiting on the others' creations
            # (version_table.create_if_missing makes such a race safe, not free).
            warm = self.setup.get("verb") != "upgrade"
            while True:
                while idle and queue and not stopping and (warm or not self._busy(workers)):
                    worker = idle.pop()
                    state = queue.popleft()
                    tenant = state.tenant
                    url = (
                        tenant_url(self.fleet, tenant).libpq if tenant.kind == "database" else None
                    )
                    worker.assign(state, url)
                if not self._busy(workers):
                    break
                for key, _ in selector.select(timeout=5.0):
                    worker = key.data
                    data = os.read(worker.reader, 1 << 16)
                    if not data:
                        selector.unregister(worker.reader)
                        workers.remove(worker)
                        lost = self._worker_died(worker)
                        if lost is not None:
                            stopping = stopping or self.fail_fast
                            yield lost
                        if queue and not stopping:
                            replacement = _Worker(self.setup)
                            workers.append(replacement)
                            selector.register(replacement.reader, selectors.EVENT_READ, replacement)
                            idle.append(replacement)
                        continue
                    for message in worker.messages(data):
                        outcome = self._handle(worker, message)
                        if outcome is None:
                            continue
                        worker.tenant = None
                        idle.append(worker)
                        warm = warm or outcome.outcome in DONE
                        if outcome.outcome == "failed" and self.fail_fast:
                            stopping = True
                        yield outcome
            for left in queue:
                yield TenantOutcome(
                    left.tenant.name,
                    left.tenant.kind,
                    "not_started",
                    error="not started: --fail-fast stopped the fleet after a failure",
                    exit_code=1,
                )
            clean = True
        finally:
            for worker in workers:
                worker.close(terminate=not clean)
            for worker in workers:
                worker.finish()
            selector.close()

    @staticmethod
    def _busy(workers: list[_Worker]) -> bool:
        return any(worker.tenant is not None for worker in workers)

    def _handle(self, worker: _Worker, message: dict[str, Any]) -> TenantOutcome | None:
        event = message.get("event")
        if event == "ready":
            worker.ready = True
            return None
        if event == "fatal":
            # What every worker would fail on (its settings): the fleet stops, nothing run.
            raise ConfigError(str(message.get("error")))
        if event == "waiting":
            if worker.tenant is not None:
                self.progress.waiting_on(worker.tenant.name)
            return None
        if event != "done" or worker.tenant is None:
            return None
        tenant = worker.tenant
        outcome = TenantOutcome(
            tenant.name,
            tenant.kind,
            message["outcome"],
            tuple(message.get("from_revisions", ())),
            tuple(message.get("to_revisions", ())),
            tuple(message.get("applied", message.get("seeded", ()))),
            float(message.get("seconds", 0.0)),
            log.scrub(message["error"]) if message.get("error") else None,
            int(message.get("exit_code", 0)),
        )
        self.progress.done(outcome)
        return outcome

    def _worker_died(self, worker: _Worker) -> TenantOutcome | None:
        tenant = worker.tenant
        worker.finish()
        if tenant is None:
            return None
        outcome = TenantOutcome(
            tenant.name,
            tenant.kind,
            "failed",
            error=f"its worker process exited (status {worker.process.returncode}); anything "
            "open was rolled back by the server",
            exit_code=1,
        )
        self.progress.done(outcome)
        return outcome
