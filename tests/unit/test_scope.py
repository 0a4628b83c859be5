"""The lock's scope: a session lock on a direct connection, a transaction lock behind a pooler."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from migrate_lock.logs import log
from migrate_lock.scope import choose_scope, pooler_in_url, relayed

from .fakes import Cursor

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Info:
    host: str
    port: int


@dataclass
class FakeConnection:
    """Where the client connected (``info``), and the port the server reports for it."""

    info: Info
    server_port: int | None
    queries: list[str] = field(default_factory=list)

    def execute(self, query: str, params: object = None) -> Cursor:
        self.queries.append(query)
        return Cursor((self.server_port,))


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    monkeypatch.setattr(log, "stream", stream)
    monkeypatch.setattr(log, "format", "text")
    yield stream


def direct(port: int = 5432) -> FakeConnection:
    return FakeConnection(Info("db.internal", port), server_port=port)


@pytest.mark.parametrize("setting", ["session", "transaction"])
def test_an_explicit_scope_wins_without_probing(setting: str, logged: io.StringIO) -> None:
    """The operator's word overrides the guesses, even on a URL that looks like a pooler."""
    connection = direct(6543)

    choice = choose_scope(setting, host="pooler.supabase.com", port=6543, connection=connection)

    assert choice.scope == setting
    assert choice.reason == f"MIGRATION_LOCK_SCOPE={setting}"
    assert connection.queries == []


@pytest.mark.parametrize(
    ("port", "says"),
    [(6543, "Supabase/Supavisor"), (6432, "PgBouncer's default port")],
)
def test_auto_takes_the_transaction_scope_on_a_pooler_port(
    port: int, says: str, logged: io.StringIO
) -> None:
    """A session lock taken through a transaction pooler is orphaned and blocks every replica."""
    choice = choose_scope("auto", host="db.internal", port=port, connection=direct(port))

    assert choice.transaction
    assert says in choice.reason


@pytest.mark.parametrize(
    "host", ["ep-cool-1234-pooler.eu-central-1.aws.neon.tech", "aws-0-eu.pooler.supabase.com"]
)
def test_auto_takes_the_transaction_scope_on_a_pooler_host_name(
    host: str, logged: io.StringIO
) -> None:
    """Managed poolers (Neon, Supabase) listen on 5432 and say so only in their host name."""
    choice = choose_scope("auto", host=host, port=5432, connection=direct())

    assert choice.transaction
    assert "says 'pooler'" in choice.reason


def test_a_socket_directory_named_pgbouncer_is_not_a_host_name() -> None:
    """A Unix-socket path is local; its directory name says nothing about a pooler."""
    assert pooler_in_url("/var/run/pgbouncer", None) is None


def test_auto_takes_the_session_scope_on_a_direct_connection(logged: io.StringIO) -> None:
    """The session scope gives NOTIFY hand-offs and per-revision transactions: keep it when safe."""
    connection = direct()

    choice = choose_scope("auto", host="db.internal", port=5432, connection=connection)

    assert choice.scope == "session"
    assert choice.reason == "auto: a direct connection to PostgreSQL"
    assert connection.queries == ["SELECT inet_server_port()"]


def test_auto_takes_the_transaction_scope_when_the_server_sees_another_port(
    logged: io.StringIO,
) -> None:
    """A pooler on an ordinary port is found by the port the server accepted us on."""
    connection = FakeConnection(Info("db.internal", 5432), server_port=5433)

    choice = choose_scope("auto", host="db.internal", port=5432, connection=connection)

    assert choice.transaction
    assert "we connected to port 5432, but the server listens on 5433" in choice.reason


def test_the_choice_is_logged_once_with_its_reason(logged: io.StringIO) -> None:
    """Operators read ``lock.scope`` to learn why a replica used the lock it did."""
    choose_scope("auto", host="db.internal", port=6432, connection=direct(6432))

    lines = logged.getvalue().splitlines()
    assert len(lines) == 1
    assert "lock.scope scope=transaction" in lines[0]
    assert "PgBouncer" in lines[0]


@pytest.mark.parametrize(
    ("client", "server_port", "says"),
    [
        (Info("db", 5432), 5432, None),
        (Info("/run/postgresql", 5432), None, None),
        (Info("", 5432), None, None),
        (Info("db", 5432), 6000, "we connected to port 5432, but the server listens on 6000"),
        (Info("/run/pgbouncer", 6432), 5432, "through a Unix socket, but the server sees TCP"),
        (Info("db", 5432), None, "over TCP, but the server sees a Unix-socket connection"),
    ],
)
def test_relayed_compares_the_client_and_server_view(
    client: Info, server_port: int | None, says: str | None
) -> None:
    """Only a disagreement between both ends reveals a relay; agreement must not."""
    reason = relayed(client, server_port)

    if says is None:
        assert reason is None
    else:
        assert reason is not None and says in reason
