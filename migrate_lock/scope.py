"""The lock's scope: a session lock on a direct connection, a transaction lock behind a pooler.

A transaction pooler (PgBouncer ``pool_mode=transaction``, Supavisor on port 6543)
hands each transaction to whichever server connection is free. A session advisory
lock taken through it stays on that pooled backend after we leave, held by nobody,
and blocks every later replica. ``pg_try_advisory_xact_lock`` inside the one
transaction that does all the work cannot be orphaned: the commit or rollback ends it.

``MIGRATION_LOCK_SCOPE=auto`` (the default) looks for a pooler in two ways, and
picks the transaction scope if either finds one (docs/how-the-lock-works.md):

1. the URL: Supavisor's transaction port 6543, PgBouncer's default port 6432, or a
   host name that says ``pooler``/``pgbouncer`` (Neon's ``-pooler``, Supabase's ``pooler.``);
2. the connection: the server reports (``inet_server_port()``) a different port, or
   a different kind of connection (socket vs TCP), than the one we connected to, so
   something relays our connection.

Neither sees a pooler that listens on the server's own port number on another host;
set ``MIGRATION_LOCK_SCOPE=transaction`` there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from migrate_lock.logs import log

LockScope = Literal["session", "transaction"]

#: Ports that, in a URL, mean a pooler: the transaction scope is the safe guess.
_POOLER_PORTS = {
    6543: "port 6543 is Supabase/Supavisor's transaction-mode pooler",
    6432: "port 6432 is PgBouncer's default port",
}
_POOLER_HOST_WORDS = ("pooler", "pgbouncer", "pgcat", "odyssey", "supavisor")


@dataclass(frozen=True)
class ScopeChoice:
    """The scope the lock is taken in, and why (logged as ``lock.scope``)."""

    scope: LockScope
    reason: str

    @property
    def transaction(self) -> bool:
        return self.scope == "transaction"


class Connected(Protocol):
    """Where a connection went, as the client sees it (psycopg's ``info``, or ours)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


def pooler_in_url(host: str, port: int | None) -> str | None:
    """Why the URL itself says "pooler", or None."""
    if port in _POOLER_PORTS:
        return _POOLER_PORTS[port]
    name = host.lower()
    word = next((word for word in _POOLER_HOST_WORDS if word in name), None)
    if word and not name.startswith("/"):
        return f"the host name {host} says '{word}'"
    return None


def relayed(client: Connected, server_port: int | None) -> str | None:
    """Why the connection looks relayed (client and server disagree on it), or None."""
    over_socket = not client.host or client.host.startswith("/")
    if over_socket and server_port is not None:
        return f"we connected through a Unix socket, but the server sees TCP port {server_port}"
    if not over_socket and server_port is None:
        return "we connected over TCP, but the server sees a Unix-socket connection"
    if not over_socket and server_port != client.port:
        return f"we connected to port {client.port}, but the server listens on {server_port}"
    return None


def choose_scope(setting: str, *, host: str, port: int | None, connection: Any) -> ScopeChoice:
    """The scope for ``setting`` (session, transaction or auto), logged as ``lock.scope``.

    ``host``/``port`` are the URL's; ``connection`` (psycopg's, or the lean one: both
    have ``info.host``, ``info.port`` and ``execute``) is asked only for ``auto`` when
    the URL is silent.
    """
    choice = _choose(setting, host, port, connection)
    log.info("lock.scope", scope=choice.scope, reason=choice.reason)
    return choice


def _choose(setting: str, host: str, port: int | None, connection: Any) -> ScopeChoice:
    if setting == "session":
        return ScopeChoice("session", "MIGRATION_LOCK_SCOPE=session")
    if setting == "transaction":
        return ScopeChoice("transaction", "MIGRATION_LOCK_SCOPE=transaction")
    hint = pooler_in_url(host, port) or relayed(connection.info, server_port(connection))
    if hint is not None:
        return ScopeChoice("transaction", f"auto: a pooler may sit in between ({hint})")
    return ScopeChoice("session", "auto: a direct connection to PostgreSQL")


def server_port(connection: Any) -> int | None:
    """The port the server accepted us on (None over a Unix socket)."""
    row = connection.execute("SELECT inet_server_port()").fetchone()
    return int(row[0]) if row and row[0] is not None else None
