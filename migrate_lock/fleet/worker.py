"""One worker process of a fleet: loads Alembic once, then migrates tenant after tenant.

Started by run.py as ``python -m migrate_lock.fleet.worker FD``. It reads JSON lines on
stdin (first the fleet's settings, then one job per tenant) and writes JSON lines to the
pipe FD (``ready``, ``waiting`` while a tenant's lock is held by someone else, ``done``
with the tenant's outcome). Each tenant goes through ``protocol.upgrade`` (or
``seed.seed``), the path a single upgrade takes, with that tenant's settings: for a
schema tenant VERSION_TABLE_SCHEMA and MIGRATION_SEARCH_PATH name the schema (then
``public``) and MIGRATION_TENANT names it for ``env.py``; a database tenant gets its URL.

``upgrade()`` is not thread-safe within one process, so a fleet's concurrency is worker
processes, never threads. When the fleet process goes away (even SIGKILL), stdin ends:
the worker finishes the tenant it is on (committed whole, or rolled back) and exits.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any, NoReturn

from migrate_lock.errors import ExitCode, LockTimeout, MigrateLockError, unclassified_server_error
from migrate_lock.interrupts import signals_raise
from migrate_lock.logs import LEVELS, EventLog, log


class _Relay:
    """Stands in for the event log's ``emit`` in a worker: tells the fleet when a tenant
    waits for its lock, and passes warnings and errors (everything, with LOG_LEVEL=DEBUG)
    on to stderr naming the tenant. The rest (a tenant's ``migrate.*`` and ``lock.*``
    events) the fleet's own ``fleet.tenant`` line sums up, and costs nothing here."""

    def __init__(self, send: Callable[[dict[str, Any]], None], forward: EventLog) -> None:
        self._send = send
        self._forward = forward
        self.tenant: str | None = None
        self._waiting_sent = False
        #: The database's own warnings (its environment marker): once per worker, not
        #: once per schema.
        self._said: set[str] = set()

    def reset(self, tenant: str) -> None:
        self.tenant = tenant
        self._waiting_sent = False

    def emit(self, level: str, event: str, **fields: Any) -> None:
        if event == "lock.waiting" and not self._waiting_sent:
            self._waiting_sent = True
            self._send({"event": "waiting", "holder_pid": fields.get("holder_pid")})
        if LEVELS[level] < max(self._forward.level, LEVELS["WARNING"]) and not (
            self._forward.level <= LEVELS["DEBUG"]
        ):
            return
        if event.startswith("guard."):
            if event in self._said:
                return
            self._said.add(event)
        self._forward.emit(level, event, tenant=self.tenant, **fields)


def tenant_settings(base: Any, job: dict[str, Any], setup: dict[str, Any]) -> Any:
    """``base`` (validated Settings) with the tenant's overrides."""
    update: dict[str, Any] = {
        "migration_tenant": job["name"],
        "migrate_then": None,  # the bootstrap step is the application's, not a tenant's
    }
    if job["kind"] == "schema":
        schema = job["name"]
        update |= {
            "version_table_schema": schema,
            "migration_search_path": '"' + schema.replace('"', '""') + '", public',
            # Seeds describe shared reference data: applied per database, not per schema.
            "seed_on_upgrade": False,
        }
    else:
        update |= {"migration_database_url": job["url"]}
    if setup.get("skip_locked"):
        update["migration_lock_timeout_seconds"] = 0.0
    return base.model_copy(update=update)


#: What a reused connection is put back to between two tenants (DISCARD ALL but the
#: prepared statements, which psycopg keeps track of, and their plans, which the server
#: plans again when a catalog they depend on or the search_path changes): nothing one
#: tenant set, held or created for its session (search_path, role, timeouts, locks,
#: LISTEN, temp tables) reaches the next.
_RESET = (
    "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *;"
    " SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
)


class _Connection:
    """The worker's connection to the migration database, reused by its schema tenants
    (a new server session per tenant costs more than the tenant's own statements)."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.connection: Any = None
        #: Behind a pooler (the transaction lock scope) the server sessions are the
        #: pooler's: nothing of ours stays on them, and a reset could undo another
        #: client's (its session locks, its LISTEN), so none is run.
        self.pooled = False

    def get(self) -> Any:
        if self.connection is None or self.connection.closed or self.connection.broken:
            from migrate_lock.connection import connect  # noqa: PLC0415 - with protocol
            from migrate_lock.scope import choose_scope  # noqa: PLC0415 - as above

            try:
                self.connection = connect(
                    self.base.migration_url(),
                    timeout_seconds=self.base.db_connect_timeout_seconds,
                )
                endpoint = self.connection.info
                self.pooled = choose_scope(
                    self.base.migration_lock_scope,
                    host=endpoint.host,
                    port=endpoint.port,
                    connection=self.connection,
                ).transaction
            except MigrateLockError:
                self.connection = None  # the tenant's upgrade connects itself, and says why
        return self.connection

    def reset(self) -> None:
        connection = self.connection
        if connection is None or connection.closed or connection.broken:
            self.connection = None
            return
        try:
            connection.rollback()
            connection.autocommit = True
            if not self.pooled:
                connection.execute(_RESET)
        except Exception:  # noqa: BLE001 - a connection that will not reset is not reused
            connection.close()
            self.connection = None


def run_one(
    base: Any, job: dict[str, Any], setup: dict[str, Any], connection: Any = None
) -> dict[str, Any]:
    """One tenant: its outcome as the ``done`` message. ``connection``: the worker's
    connection to the migration database, for a schema tenant."""
    return _run_one(base, job, setup, connection)


def _run_one(
    base: Any, job: dict[str, Any], setup: dict[str, Any], connection: Any = None
) -> dict[str, Any]:
    from migrate_lock import protocol  # noqa: PLC0415 - loaded once, after the settings
    from migrate_lock.seed import seed  # noqa: PLC0415 - as above

    started = time.monotonic()
    settings = tenant_settings(base, job, setup)
    message: dict[str, Any] = {"event": "done", "tenant": job["name"]}
    try:
        if setup.get("verb") == "seed":
            run = seed(settings=settings, **setup.get("seed", {}))
            applied = [result.name for result in run.results if result.action == "applied"]
            message |= {"outcome": "seeded" if applied else "at_head", "seeded": applied}
        else:
            result = protocol.upgrade(
                setup.get("target", "heads"),
                settings=settings,
                connection=connection,
                read_ahead=_read_ahead(job),
            )
            outcome = {"fast_path": "at_head", "waited": "waited", "migrated": "migrated"}
            message |= {
                "outcome": outcome[result.role],
                "from_revisions": list(result.from_revisions),
                "to_revisions": list(result.to_revisions),
                "applied": list(result.applied),
                "wait_ms": result.wait_ms,
            }
    except LockTimeout as error:
        message |= {
            "outcome": "locked" if setup.get("skip_locked") else "failed",
            "error": str(error),
            "exit_code": int(error.exit_code),
        }
    except MigrateLockError as error:
        message |= {"outcome": "failed", "error": str(error), "exit_code": int(error.exit_code)}
    except Exception as error:  # noqa: BLE001 - one tenant's surprise is not the fleet's
        explained = unclassified_server_error(error)
        text = (
            str(explained)
            if explained is not None
            else f"unexpected {type(error).__name__}: {error}; this is a bug in migrate-lock"
        )
        code = explained.exit_code if explained is not None else ExitCode.MIGRATION_FAILED
        message |= {"outcome": "failed", "error": log.scrub(text), "exit_code": int(code)}
    message["seconds"] = round(time.monotonic() - started, 3)
    return message


def _read_ahead(job: dict[str, Any]) -> Any:
    """The tenant's revisions as the fleet's plan read them (a ``planned`` job), if any."""
    if "planned" not in job:
        return None
    from migrate_lock.state import ReadAhead  # noqa: PLC0415 - with protocol

    planned = job["planned"]
    return ReadAhead(tuple(planned) if planned is not None else None)


def main(argv: list[str]) -> NoReturn:
    out: IO[str] = os.fdopen(int(argv[1]), "w", buffering=1, encoding="utf-8")

    def send(message: dict[str, Any]) -> None:
        out.write(json.dumps(message, default=str) + "\n")

    with signals_raise():
        setup = json.loads(sys.stdin.readline() or "{}")
        from migrate_lock.settings import load_settings  # noqa: PLC0415 - after the setup

        try:
            base = load_settings(**setup.get("overrides", {}))
        except MigrateLockError as error:
            send({"event": "fatal", "error": str(error), "exit_code": int(error.exit_code)})
            out.flush()
            os._exit(int(error.exit_code))
        forward = EventLog()
        forward.configure(log_format=base.log_format, level=base.log_level)
        relay = _Relay(send, forward)
        # This process is the fleet's: its events go through the relay (an instance
        # attribute shadows the method for every ``log.info(...)`` of the package).
        setattr(log, "emit", relay.emit)  # noqa: B010 - a method, replaced on purpose
        from migrate_lock import protocol  # noqa: F401, PLC0415 - Alembic, once per worker

        shared = _Connection(base)
        verb = setup.get("verb", "upgrade")
        send({"event": "ready", "pid": os.getpid()})
        for line in sys.stdin:
            if not line.strip():
                continue
            job = json.loads(line)
            relay.reset(job["name"])
            reused = shared.get() if job["kind"] == "schema" and verb == "upgrade" else None
            send(run_one(base, job, setup, reused))
            if reused is not None:
                shared.reset()
    out.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown of Alembic and SQLAlchemy: every connection is closed.
    os._exit(0)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except (BrokenPipeError, KeyboardInterrupt):
        sys.exit(ExitCode.INTERRUPTED)
