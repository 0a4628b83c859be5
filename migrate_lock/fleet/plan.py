"""Where every tenant of a fleet stands, without Alembic: one batched read.

The heads come from the heads manifest or the revision files' text
(lean/static_revisions.py's ``known_heads``); the tenants' revisions from one query that
finds which tenant schemas have a version table and a ``UNION ALL`` over those tables,
``BATCH`` schemas a statement. So a fleet at head costs a few round trips and loads no
Alembic, SQLAlchemy, psycopg or pydantic. A database tenant is one connection (opened and
closed in turn, so the plan never holds more than one).

Anything this plan cannot settle (a database it cannot reach, a revision it does not
know, ahead or unknown) is left to the full path of that tenant's ``upgrade``, which
reports it properly: like the at-head path, the plan is never wrong, only sometimes not
the last word.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

from migrate_lock.fleet.sources import Tenant
from migrate_lock.lean.abc import LockConnection
from migrate_lock.lean.settings_schema import row
from migrate_lock.seeds.files import SeedFile, changed_seeds
from migrate_lock.version_table import VersionTable, current_schema, database_revisions

#: How many tenant schemas one ``UNION ALL`` statement reads.
BATCH = 1000

Status = Literal["at_head", "behind", "empty", "other", "invalid"]


@dataclass(frozen=True)
class TenantState:
    """One tenant as the plan found it.

    ``status``: ``at_head`` (nothing to do), ``behind`` (revisions this code knows are
    pending), ``empty`` (no version table, or an empty one: every revision is pending),
    ``other`` (ahead, unknown, changed seed files, unreachable: the tenant's ``upgrade``
    decides), ``invalid`` (a name migrate-lock will not use as a schema; ``detail`` says
    why).
    """

    tenant: Tenant
    status: Status
    current: tuple[str, ...] | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant.name,
            "kind": self.tenant.kind,
            "status": self.status,
            "current": list(self.current) if self.current is not None else None,
            **({"detail": self.detail} if self.detail else {}),
        }


@dataclass(frozen=True)
class FleetPlan:
    """Every tenant's state, and the heads they were compared with."""

    heads: tuple[str, ...]
    tenants: list[TenantState] = field(default_factory=list)
    #: Where the heads came from: ``manifest``, ``revision_files`` or ``alembic``.
    heads_from: str = "alembic"

    @property
    def pending(self) -> list[TenantState]:
        """The tenants a fleet upgrade sends to its workers."""
        return [state for state in self.tenants if state.status in ("behind", "empty", "other")]

    @property
    def at_head(self) -> list[TenantState]:
        return [state for state in self.tenants if state.status == "at_head"]

    def by_revision(self) -> dict[str, int]:
        """How many tenants are at each revision (``(none)`` without a version table or a
        revision; several heads are shown joined by ``+``), most common first."""
        counts = Counter(
            "+".join(state.current) if state.current else "(none)"
            for state in self.tenants
            if state.status != "invalid"
        )
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def as_dict(self) -> dict[str, Any]:
        return {
            "heads": list(self.heads),
            "heads_from": self.heads_from,
            "tenants": len(self.tenants),
            "at_head": len(self.at_head),
            "pending": len(self.pending),
            "by_revision": self.by_revision(),
            "states": [state.as_dict() for state in self.tenants],
        }


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def identifier_problem(name: str) -> str | None:
    """Why ``name`` cannot be a tenant schema (VERSION_TABLE_SCHEMA's rule), or None."""
    try:
        # The setting's own reading (read_field's, without looking for the variable's
        # other sources: a tenth of the time, for thousands of names).
        row("version_table_schema").parse(name)
    except ValueError as error:
        return f"schema name {name!r} {error}"
    return None


def schema_revisions(
    connection: LockConnection,
    schemas: Sequence[str],
    version_table: str,
    *,
    connect_more: Callable[[], LockConnection] | None = None,
    parallel: int = 1,
) -> dict[str, tuple[str, ...] | None]:
    """Each schema's revisions: ``()`` for an empty version table, None for none.

    One query finds the schemas that have a version table; ``UNION ALL`` statements of
    ``BATCH`` tables each read them. With ``connect_more`` and ``parallel`` > 1, up to
    ``parallel`` connections (``connection`` and new ones, closed on the way out) read the
    batches side by side: a new server session spends most of such a read loading each
    table's description, which several sessions do at once.
    """
    found: dict[str, tuple[str, ...] | None] = dict.fromkeys(schemas)
    if not schemas:
        return found
    rows = connection.execute(
        "SELECT n.nspname FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid"
        " WHERE n.nspname = ANY(%s) AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (list(schemas), version_table),
    ).fetchall()
    with_table = sorted(str(row[0]) for row in rows)
    batches = [
        " UNION ALL ".join(
            f"SELECT {quote_literal(schema)}::text, version_num::text"
            f" FROM {quote_identifier(schema)}.{quote_identifier(version_table)}"
            for schema in with_table[start : start + BATCH]
        )
        for start in range(0, len(with_table), BATCH)
    ]
    revisions: dict[str, list[str]] = {schema: [] for schema in with_table}
    for schema, revision in _read_batches(connection, batches, connect_more, parallel):
        revisions[str(schema)].append(str(revision))
    for schema, items in revisions.items():
        found[schema] = tuple(sorted(items))
    return found


def _read_batches(
    connection: LockConnection,
    batches: list[str],
    connect_more: Callable[[], LockConnection] | None,
    parallel: int,
) -> list[tuple[object, ...]]:
    def read(on: LockConnection, mine: list[str]) -> list[tuple[object, ...]]:
        rows: list[tuple[object, ...]] = []
        for statement in mine:
            rows += on.execute(statement).fetchall()
        return rows

    count = min(parallel, len(batches))
    if connect_more is None or count < 2:
        return read(connection, batches)
    with ExitStack() as stack:
        connections = [connection]
        for _ in range(count - 1):
            try:
                extra = connect_more()
            except Exception:  # noqa: BLE001 - fewer connections: slower, same answer
                break
            stack.callback(extra.close)  # type: ignore[attr-defined]
            connections.append(extra)
        shares = [batches[index :: len(connections)] for index in range(len(connections))]
        with ThreadPoolExecutor(len(connections)) as pool:
            parts = pool.map(read, connections, shares)
            return [row for part in parts for row in part]


def classify(
    current: tuple[str, ...] | None, heads: tuple[str, ...], known: frozenset[str]
) -> Status:
    if not current:
        return "empty"
    if set(current) == set(heads):
        return "at_head"
    if all(revision in known for revision in current):
        return "behind"
    return "other"  # ahead or unknown: the tenant's upgrade (with the history) decides


def plan_schemas(
    connection: LockConnection,
    tenants: Iterable[Tenant],
    *,
    heads: tuple[str, ...],
    known: frozenset[str],
    version_table: str,
    heads_from: str,
    connect_more: Callable[[], LockConnection] | None = None,
    parallel: int = 1,
) -> FleetPlan:
    """The plan of schema tenants, read on ``connection`` (the migration database), and
    on up to ``parallel`` - 1 more from ``connect_more`` for many tenants."""
    states: list[TenantState] = []
    valid: list[Tenant] = []
    for tenant in tenants:
        problem = identifier_problem(tenant.name)
        if problem is not None:
            states.append(TenantState(tenant, "invalid", detail=problem))
        else:
            valid.append(tenant)
    revisions = schema_revisions(
        connection,
        [tenant.name for tenant in valid],
        version_table,
        connect_more=connect_more,
        parallel=parallel,
    )
    for tenant in valid:
        current = revisions[tenant.name]
        states.append(TenantState(tenant, classify(current, heads, known), current))
    states.sort(key=lambda state: state.tenant.name)
    return FleetPlan(heads, states, heads_from)


def plan_database(
    connection: LockConnection,
    tenant: Tenant,
    *,
    heads: tuple[str, ...],
    known: frozenset[str],
    version_table: str,
    version_table_schema: str | None,
    seeds: list[SeedFile],
) -> TenantState:
    """One database tenant, read on its own ``connection``."""
    table = VersionTable(version_table_schema or current_schema(connection), version_table)
    current = database_revisions(connection, table)
    status = classify(current, heads, known)
    if status == "at_head" and changed_seeds(connection, table, seeds):
        return TenantState(tenant, "other", current, detail="changed seed files")
    return TenantState(tenant, status, current)


def plan_databases(
    tenants: Iterable[Tenant],
    connect: Callable[[Tenant], AbstractContextManager[LockConnection] | None],
    *,
    heads: tuple[str, ...],
    known: frozenset[str],
    version_table: str,
    version_table_schema: str | None,
    seeds: list[SeedFile],
    heads_from: str,
) -> FleetPlan:
    """The plan of database tenants, one connection at a time. ``connect`` returns None
    for a database it cannot reach: that tenant's upgrade reports why."""
    states = []
    for tenant in tenants:
        opened = connect(tenant)
        if opened is None:
            states.append(TenantState(tenant, "other", detail="not reached by the plan"))
            continue
        try:
            with opened as connection:
                state = plan_database(
                    connection,
                    tenant,
                    heads=heads,
                    known=known,
                    version_table=version_table,
                    version_table_schema=version_table_schema,
                    seeds=seeds,
                )
        except Exception:  # noqa: BLE001 - the tenant's own upgrade reports it properly
            state = TenantState(tenant, "other", detail="not read by the plan")
        states.append(state)
    return FleetPlan(heads, states, heads_from)
