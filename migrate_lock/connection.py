"""Connecting to PostgreSQL with a bounded retry for what is transient, and only that.

Refused connections, a server starting up or shutting down, too many clients and
name-resolution failures are retried with exponential backoff and jitter until
``DB_CONNECT_TIMEOUT_SECONDS``; then exit 75. A wrong password, an unknown role or
database, or a pg_hba rejection is a configuration error: exit 78 at once.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import psycopg
from psycopg.conninfo import conninfo_to_dict
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from migrate_lock.dsn import DatabaseUrl, scrub_text
from migrate_lock.errors import ConfigError, DatabaseUnavailable
from migrate_lock.logs import log

#: Client-side TCP keepalives, so a vanished server (or a holder's vanished network)
#: is noticed in about 10 + 3 * 5 = 25 seconds instead of the kernel's two hours.
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}

# libpq reports no SQLSTATE for a failed connection attempt (psycopg's error has
# ``sqlstate is None`` and no class of its own for these), so libpq's and the server's
# text is all there is to classify: this table is the one place that matches it.
# Unknown failures count as transient: retrying a configuration error only costs
# time, while giving up on a transient one crash-loops a healthy deploy.
# Each row: a fragment of libpq's message (lower case), what is wrong, what to do.
_CHECK_CREDENTIALS = "check the URL's user, password and database name"
_SSL_ROOT = (
    "set sslrootcert= to the file of the CA that signed the server's certificate "
    "(sslrootcert=system for the system's roots), or use sslmode=require"
)
_SSL_KEY = "set sslcert= and sslkey= to a readable certificate and its key (key mode 0600)"
_PERMANENT_FAILURES: tuple[tuple[str, str, str], ...] = (
    # TLS first: "root certificate file ... does not exist" is no unknown database.
    (
        "server does not support ssl",
        "the server does not support SSL, but the URL's sslmode requires it",
        "enable SSL on the server, or use sslmode=prefer (or disable) if the network is trusted",
    ),
    (
        "ssl support is not compiled in",
        "this client's libpq was built without SSL support, and the URL's sslmode needs it",
        "use client tools built with SSL (PostgreSQL's own packages; PG_BIN_DIR for "
        "pg_dump/pg_restore), or sslmode=disable if the network is trusted",
    ),
    (
        "channel binding required, but ssl not in use",
        "the server does not support SSL, but channel_binding=require needs it",
        "enable SSL on the server, or drop channel_binding=require",
    ),
    (
        "root certificate file",
        "the root certificate to verify the server with is missing or unreadable",
        _SSL_ROOT,
    ),
    ("could not load system root certificate", "the system's root certificates", _SSL_ROOT),
    (
        "does not match host name",
        "the server's certificate does not name this host",
        "connect by a name the certificate lists, or use sslmode=verify-ca",
    ),
    (
        "host name must be specified for a verified ssl connection",
        "sslmode=verify-full needs a host name to verify",
        "name the host in the URL, or use sslmode=verify-ca",
    ),
    (
        "certificate verify failed",
        # {roots}: where libpq took the CA from (see _trusted_roots).
        "the server's certificate is not trusted by {roots}",
        "set sslrootcert= to the certificate of the CA that signed the server's (the "
        "provider's CA bundle), or sslrootcert=system if a public CA signed it; an "
        "expired or self-signed server certificate fails the same way",
    ),
    (
        "server accepted connection without a valid ssl certificate",
        "the server did not check our client certificate, but sslcertmode=require asks it to",
        "configure client certificates on the server, or drop sslcertmode=require",
    ),
    ("private key file", "the client key (sslkey) is missing, unreadable or too open", _SSL_KEY),
    ("certificate file", "the client certificate (sslcert) cannot be read", _SSL_KEY),
    ("does not match private key", "the client certificate does not match its key", _SSL_KEY),
    ("private ssl key", "the client key (sslkey) cannot be loaded", _SSL_KEY),
    ("certificate", "TLS certificate problem", _SSL_ROOT),
    ("password authentication failed", "wrong password or user", _CHECK_CREDENTIALS),
    ("authentication failed", "authentication failed", _CHECK_CREDENTIALS),
    ("no password supplied", "no password given", _CHECK_CREDENTIALS),
    (
        "no pg_hba.conf entry",
        "the server's pg_hba.conf rejects this client",
        "add a pg_hba.conf entry for this client, or use the sslmode it requires",
    ),
    ("does not exist", "unknown role or database", _CHECK_CREDENTIALS),
    ("permission denied for database", "no CONNECT permission on the database", _CHECK_CREDENTIALS),
    ("is not permitted to log in", "the role may not log in", _CHECK_CREDENTIALS),
    ("invalid sslmode", "invalid sslmode", "use sslmode=disable, prefer, require or verify-full"),
    ("invalid connection option", "invalid connection option", _CHECK_CREDENTIALS),
)


def connect(
    url: DatabaseUrl,
    *,
    timeout_seconds: float,
    application_name: str = "migrate-lock",
    autocommit: bool = True,
    on_retry: Callable[[], None] | None = None,
) -> psycopg.Connection[tuple[object, ...]]:
    """Open one connection, retrying transient failures for up to ``timeout_seconds``.

    ``on_retry`` runs before each retry: a caller that holds another connection it can
    give up (the fast path's, during the lock hand-over) frees its slot there.

    Raises ConfigError (78) for permanent failures and DatabaseUnavailable (75) when
    the budget is spent.
    """
    log.add_secret(url.password)
    deadline = time.monotonic() + timeout_seconds
    attempts = 0

    def attempt() -> psycopg.Connection[tuple[object, ...]]:
        nonlocal attempts
        attempts += 1
        remaining = max(1.0, deadline - time.monotonic())
        try:
            return psycopg.connect(
                url.libpq,
                autocommit=autocommit,
                application_name=application_name,
                connect_timeout=int(min(10.0, remaining)) or 1,
                # No server-side prepared statements: PgBouncer before 1.21 (transaction
                # mode) loses them between transactions, and we repeat few queries.
                prepare_threshold=None,
                **KEEPALIVES,  # type: ignore[arg-type]
            )
        except psycopg.OperationalError as error:
            permanent = classify(error, url)
            if permanent is not None:
                reason, hint = permanent
                raise ConfigError(
                    f"cannot connect to {url.masked}: {reason} ({_first_line(error)})",
                    hint=hint,
                ) from None
            raise _Transient(_first_line(error)) from None

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            on_retry()
        outcome = state.outcome
        error = outcome.exception() if outcome else None
        log.warning(
            "db.retry",
            attempt=state.attempt_number,
            url=url.masked,
            error=str(error),
            sleep_ms=round((state.next_action.sleep if state.next_action else 0) * 1000),
        )

    backoff = wait_random_exponential(multiplier=0.2, max=5)

    def wait_within_budget(state: RetryCallState) -> float:
        # Never sleep past the deadline: the budget is what the operator configured.
        return max(0.0, min(backoff(state), deadline - time.monotonic()))

    retrying = Retrying(
        retry=retry_if_exception_type(_Transient),
        stop=stop_after_delay(timeout_seconds),
        wait=wait_within_budget,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        connection = retrying(attempt)
    except _Transient as error:
        raise DatabaseUnavailable(
            f"database unreachable at {url.masked} after {attempts} attempts over "
            f"{timeout_seconds:g}s: {error}",
            hint="check that the server is up and the host is right, "
            "or raise DB_CONNECT_TIMEOUT_SECONDS",
        ) from None
    if attempts > 1:
        log.info("db.connected", attempts=attempts, url=url.masked)
    return connection


def permanent_reason(error: Exception) -> str | None:
    """Why a connection failure will not go away by retrying, or None if it might."""
    permanent = classify(error)
    return permanent[0] if permanent is not None else None


def classify(error: Exception, url: DatabaseUrl | None = None) -> tuple[str, str] | None:
    """(what is wrong, what to do) for a failure retrying will not mend, else None.

    ``url`` (the URL that failed) lets the reason name the CA file the server was checked
    against."""
    text = str(error).lower()
    for fragment, reason, hint in _PERMANENT_FAILURES:
        if fragment in text:
            return reason.replace("{roots}", _trusted_roots(url)), hint
    return None


def _trusted_roots(url: DatabaseUrl | None) -> str:
    """Where libpq took the CA certificates from: the URL's sslrootcert, else PGSSLROOTCERT,
    else its default file."""
    value = None
    if url is not None:
        with contextlib.suppress(psycopg.ProgrammingError):
            value = conninfo_to_dict(url.libpq).get("sslrootcert")
    if value == "system":
        return "sslrootcert=system (the system's trusted roots)"
    if value:
        return f"sslrootcert={value}"
    if os.environ.get("PGSSLROOTCERT"):
        return f"PGSSLROOTCERT={os.environ['PGSSLROOTCERT']}"
    return "sslrootcert (libpq's default file, ~/.postgresql/root.crt)"


class _Transient(Exception):
    """A connection failure worth another attempt."""


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # psycopg prefixes "connection failed: connection to server at ... failed:";
    # the FATAL part after it is what an operator needs.
    text = lines[0] if lines else type(error).__name__
    if "multiple connection attempts failed" in text.lower():
        # A failover URL: one "- host: …: why" line per host, all worth reading.
        text = "; ".join(line.lstrip("- ") for line in lines[1:]) or text
    elif "FATAL:" in text:
        text = "FATAL:" + text.split("FATAL:", 1)[1]
    return scrub_text(text)
