"""A real PgBouncer (Debian's ``pgbouncer`` package) in transaction mode, in front of a server.

``.ci/run`` installs the package; the tests start their own PgBouncer on a free port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

#: When we run as root, PgBouncer refuses to; it switches to this user instead.
_UNPRIVILEGED_USER = "nobody"


@contextmanager
def pgbouncer(server_url: str, *, pool_size: int) -> Iterator[tuple[int, Path]]:
    """Run PgBouncer (pool_mode=transaction, ``pool_size`` server connections per
    database) in front of ``server_url``'s server; yields its port and log file."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).is_file():
        raise RuntimeError(
            "PgBouncer is not installed: `apt-get install pgbouncer` (Debian; .ci/run does it)"
        )
    server = conninfo_to_dict(server_url)
    work = Path(tempfile.mkdtemp(prefix="migrate-lock-pgbouncer-"))
    port = _free_port()
    (work / "userlist.txt").write_text(f'"{server["user"]}" "{server["password"]}"\n')
    (work / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.get('host', '127.0.0.1')} port={server.get('port', 5432)}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = scram-sha-256\nauth_file = {work / 'userlist.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\n"
        f"max_db_connections = {pool_size}\nmax_client_conn = 500\n"
        f"logfile = {work / 'pgbouncer.log'}\npidfile = {work / 'pgbouncer.pid'}\n"
        + (f"user = {_UNPRIVILEGED_USER}\n" if os.geteuid() == 0 else "")
    )
    if os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam(_UNPRIVILEGED_USER)
        for path in (work, *work.iterdir()):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    process = subprocess.Popen(
        [binary, str(work / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_until_listening(port, process, work / "pgbouncer.log")
        yield port, work / "pgbouncer.log"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


def _wait_until_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"PgBouncer exited at start: {stderr} {text}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("PgBouncer did not start listening within 15 s")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
