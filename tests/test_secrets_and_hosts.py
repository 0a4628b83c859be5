"""Issue 14, items 1, 6 and 8 end to end: no password in any output whatever the URL,
TLS failures classified at once, and libpq's failover URLs on both paths."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from support import assert_one_line_failure, cli_env, run_cli

ENTRYPOINTS = Path(__file__).resolve().parent.parent / "entrypoints"

#: Issue 14's passwords, each with the pieces of it that must never be printed.
BAD_PASSWORD_URLS = {
    "unencoded %": ("postgresql://app:Kx9%qT!zPw@127.0.0.1:1/shop", ["Kx9%qT!zPw"]),
    "spaces": ("postgresql://app:correct horse battery@127.0.0.1:1/shop", ["correct horse"]),
    "raw @": ("postgresql://app:ret99@Tail@127.0.0.1:1/shop", ["ret99", "Tail"]),
}


def assert_never_printed(pieces: list[str], *outputs: str) -> None:
    for output in outputs:
        for piece in pieces:
            assert piece not in output, output


@pytest.mark.parametrize(
    ("case", "verb", "log_format"),
    [
        ("unencoded %", "upgrade", "text"),
        ("unencoded %", "status", "json"),
        ("spaces", "seed", "text"),
        ("spaces", "upgrade", "json"),
        ("raw @", "status", "text"),
        ("raw @", "seed", "json"),
    ],
)
def test_a_password_libpq_cannot_parse_is_never_printed(
    project: Path, case: str, verb: str, log_format: str
) -> None:
    """Why: libpq's parse error quotes the token it choked on, and Python and libpq end the
    password at different "@"s: the password was printed, or tried as a host for 30 s."""
    raw, pieces = BAD_PASSWORD_URLS[case]
    result = run_cli(
        [verb], cwd=project, database_url=raw, LOG_FORMAT=log_format, DB_CONNECT_TIMEOUT_SECONDS="3"
    )

    assert_never_printed(pieces, result.stdout, result.stderr)
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr
    assert "db.retry" not in result.stderr, "refused at once, not retried"
    if case == "raw @":
        assert "percent-encode the password" in result.stderr
    if log_format == "json":
        events = [json.loads(line) for line in result.stderr.splitlines()]
        assert events[-1]["event"] == "command.failed"


@pytest.mark.parametrize("case", BAD_PASSWORD_URLS)
def test_smoke_migrate_never_prints_the_password(project: Path, case: str) -> None:
    """Why: the runbook script prints its own error line; it is scrubbed the same way."""
    raw, pieces = BAD_PASSWORD_URLS[case]
    result = subprocess.run(
        [sys.executable, str(ENTRYPOINTS / "smoke_migrate.py")],
        cwd=project,
        env=cli_env(raw, DB_CONNECT_TIMEOUT_SECONDS="3"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert_never_printed(pieces, result.stdout, result.stderr)
    assert result.returncode == 78, result.stderr
    assert result.stderr.startswith("smoke_migrate: error:")


def with_parameter(url: str, parameter: str) -> str:
    return url + ("&" if "?" in url else "?") + parameter


@pytest.mark.parametrize("sslmode", ["require", "verify-full"])
def test_sslmode_require_against_a_server_without_ssl_exits_78_at_once(
    project: Path, database_url: str, sslmode: str
) -> None:
    """Why: retrying cannot give the server SSL; 30 s of retries then exit 75 made an
    orchestrator retry a configuration error forever."""
    result = run_cli(
        ["upgrade"],
        cwd=project,
        database_url=with_parameter(database_url, f"sslmode={sslmode}"),
        DB_CONNECT_TIMEOUT_SECONDS="20",
    )

    line = assert_one_line_failure(result, 78)
    assert "the server does not support SSL" in line
    assert "sslmode" in line
    assert "db.retry" not in result.stderr, "refused at once, not retried"


def closed_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on: Supavisor's 6543 when it is free."""
    for candidate in (6543, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise AssertionError("no free port")


def failover_url(database_url: str, dead_port: int) -> str:
    """``database_url`` with an unreachable host listed first, in libpq's failover form."""
    parts = urlsplit(database_url)
    credentials, _, live = parts.netloc.rpartition("@")
    query = f"?{parts.query}&" if parts.query else "?"
    return (
        f"postgresql://{credentials}@127.0.0.1:{dead_port},{live}{parts.path}"
        f"{query}target_session_attrs=read-write"
    )


def test_a_failover_url_migrates_and_answers_at_head_through_the_live_host(
    project: Path, database_url: str
) -> None:
    """Why: libpq's multi-host URL was rejected as malformed. The lock and the pooler check
    follow the host libpq connected to, not the first one listed (here a dead port 6543,
    which would read as a transaction pooler)."""
    dead = closed_port()
    url = failover_url(database_url, dead)
    assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0

    migrated = run_cli(["upgrade"], cwd=project, database_url=url, LOG_FORMAT="json")
    at_head = run_cli(["upgrade"], cwd=project, database_url=url, LOG_FORMAT="json")
    status = run_cli(["status", "--json"], cwd=project, database_url=url)

    assert migrated.returncode == 0, migrated.stderr
    events = [json.loads(line) for line in migrated.stderr.splitlines()]
    scope = next(event for event in events if event["event"] == "lock.scope")
    assert scope["scope"] == "session", scope
    assert "direct connection" in scope["reason"]
    assert any(event["event"] == "lock.acquired" for event in events)
    assert at_head.returncode == 0, at_head.stderr
    done = [json.loads(line) for line in at_head.stderr.splitlines()][-1]
    assert (done["role"], done.get("heads_from")) == ("fast_path", "manifest"), done
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "at_head"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path]]:
    """A TCP server that answers PostgreSQL's SSLRequest with "S" and a self-signed
    certificate for the name ``not-this-host``: libpq's real certificate checks fail against
    it. Yields (port, that certificate, another CA's certificate)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl on this machine to make a certificate with")
    folder = tmp_path_factory.mktemp("tls")
    for name in ("server", "other"):
        subprocess.run(
            [
                *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.crt")),
                *("-subj", "/CN=not-this-host"),
            ],
            check=True,
            capture_output=True,
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.crt", folder / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def answer(client: socket.socket) -> None:
        with client:
            client.settimeout(10)
            while True:
                request = client.recv(8)
                code = int.from_bytes(request[4:8], "big") if len(request) == 8 else None
                if code == 80877104:  # GSSENCRequest: no
                    client.sendall(b"N")
                    continue
                if code != 80877103:  # anything but SSLRequest
                    return
                client.sendall(b"S")
                # The client gives up on our certificate: that is the point.
                with contextlib.suppress(OSError, ssl.SSLError):
                    context.wrap_socket(client, server_side=True).close()
                return

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=answer, args=(client,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), folder / "server.crt", folder / "other.crt"
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.mark.parametrize(
    ("root", "says"),
    [
        ("other", "the server's certificate is not trusted by sslrootcert="),
        ("server", "the server's certificate does not name this host"),
    ],
)
def test_a_certificate_that_fails_verification_exits_78_at_once_naming_what_it_lacks(
    project: Path, tls_server: tuple[int, Path, Path], root: str, says: str
) -> None:
    """Why: a certificate does not fix itself; the line must say what is wrong with it."""
    port, server_certificate, other_certificate = tls_server
    rootcert = server_certificate if root == "server" else other_certificate
    url = (
        f"postgresql://app:Kx9-tls-secret@127.0.0.1:{port}/shop"
        f"?sslmode=verify-full&sslrootcert={rootcert}"
    )
    result = run_cli(["upgrade"], cwd=project, database_url=url, DB_CONNECT_TIMEOUT_SECONDS="20")

    line = assert_one_line_failure(result, 78)
    assert says in line
    assert "sslrootcert" in line or "verify-ca" in line
    assert "db.retry" not in result.stderr, "refused at once, not retried"
    assert "Kx9-tls-secret" not in result.stderr
