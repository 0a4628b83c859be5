"""Which connection failures are permanent (exit 78 at once) and which are retried.

The texts are libpq's own (libpq 18's message catalogue, as psycopg wraps them): psycopg
gives no class or SQLSTATE for a failed connection attempt, so connection.py's one table
of message fragments is what decides.
"""

from __future__ import annotations

import pytest

from migrate_lock.connection import classify

pytestmark = pytest.mark.unit

_AT = 'connection failed: connection to server at "10.0.0.5", port 5432 failed: '


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (_AT + "server does not support SSL, but SSL was required", "does not support SSL"),
        (
            _AT + "channel binding required, but SSL not in use",
            "does not support SSL, but channel_binding=require",
        ),
        (
            _AT + 'root certificate file "/home/app/.postgresql/root.crt" does not exist\n'
            "Either provide the file, use the system's trusted roots with sslrootcert=system, "
            "or change sslmode to disable server certificate verification.",
            "root certificate to verify the server with is missing",
        ),
        (
            _AT + 'could not read root certificate file "/etc/ca.pem": no certificate or crl found',
            "root certificate to verify the server with is missing or unreadable",
        ),
        (
            _AT + "could not get home directory to locate root certificate file\nEither provide",
            "root certificate to verify the server with",
        ),
        (
            _AT + "SSL error: certificate verify failed: self-signed certificate",
            "certificate is not trusted by sslrootcert",
        ),
        (
            _AT + "SSL error: certificate verify failed: certificate has expired",
            "certificate is not trusted by sslrootcert",
        ),
        (
            _AT + 'server certificate for "db.internal" does not match host name "10.0.0.5"',
            "certificate does not name this host",
        ),
        (
            _AT + 'server certificate for "a" (and 2 other names) does not match host name "b"',
            "certificate does not name this host",
        ),
        (
            _AT + "host name must be specified for a verified SSL connection",
            "verify-full needs a host name",
        ),
        (
            _AT + 'certificate present, but not private key file "/home/app/.postgresql/k.key"',
            "client key (sslkey)",
        ),
        (
            _AT + 'private key file "/k.key" has group or world access; file must have '
            "permissions u=rw (0600) or less",
            "client key (sslkey)",
        ),
        (_AT + 'could not open certificate file "/c.crt": Permission denied', "sslcert"),
        (
            _AT + "server accepted connection without a valid SSL certificate",
            "sslcertmode=require",
        ),
        (_AT + 'FATAL:  password authentication failed for user "app"', "wrong password"),
        (_AT + 'FATAL:  database "shop" does not exist', "unknown role or database"),
    ],
)
def test_tls_and_credential_failures_are_permanent(message: str, says: str) -> None:
    """Retrying cannot give the server SSL or fix a certificate: exit 78 at once."""
    found = classify(RuntimeError(message))

    assert found is not None, message
    assert says in found[0]


@pytest.mark.parametrize(
    "message",
    [
        _AT + "Connection refused\n\tIs the server running on that host?",
        _AT + "FATAL:  the database system is starting up",
        _AT + "FATAL:  sorry, too many clients already",
        "connection failed: failed to resolve host 'db': [Errno -3] Temporary failure",
        _AT + "SSL SYSCALL error: EOF detected",
        _AT + "server closed the connection unexpectedly",
        _AT + "session is read-only",
    ],
)
def test_transient_failures_are_retried(message: str) -> None:
    """A server starting, full, restarting or failing over may be fine in a second."""
    assert classify(RuntimeError(message)) is None


def test_a_missing_root_certificate_is_not_an_unknown_database() -> None:
    """ "root certificate file … does not exist" must not be read as "database … does not
    exist": the TLS rows come first in the table."""
    found = classify(RuntimeError(_AT + 'root certificate file "/r.crt" does not exist'))

    assert found is not None
    assert "database" not in found[0]
    assert "sslrootcert" in found[1]
