"""Connecting to PostgreSQL with a bounded retry for what is transient, and only that.

Refused connections, a server starting up or shutting down, too many clients and
name-resolution failures are retried with exponential backoff and jitter until
``DB_CONNECT_TIMEOUT_SECONDS``; then exit 75. A wrong password, an unknown role or
database, or a pg_hba rejection is a configuration error: exit 78 at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from migrate_lock.dsn import DatabaseUrl, mask_url_text
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
# ``sqlstate is None``), so the server's FATAL text is all there is to classify.
# Unknown failures count as transient: retrying a configuration error only costs
# time, while giving up on a transient one crash-loops a healthy deploy.
_PERMANENT_FAILURES = (
    ("password authentication failed", "wrong password or user"),
    ("authentication failed", "authentication failed"),
    ("no password supplied", "no password given"),
    ("no pg_hba.conf entry", "the server's pg_hba.conf rejects this client"),
    ("does not exist", "unknown role or database"),
    ("permission denied for database", "no CONNECT permission on the database"),
    ("is not permitted to log in", "the role may not log in"),
    ("invalid sslmode", "invalid sslmode"),
    ("invalid connection option", "invalid connection option"),
    ("certificate", "TLS certificate problem"),
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
            reason = permanent_reason(error)
            if reason:
                raise ConfigError(
                    f"cannot connect to {url.masked}: {reason} ({_first_line(error)})",
                    hint="check the URL's user, password and database name",
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
    text = str(error).lower()
    for fragment, reason in _PERMANENT_FAILURES:
        if fragment in text:
            return reason
    return None


class _Transient(Exception):
    """A connection failure worth another attempt."""


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # psycopg prefixes "connection failed: connection to server at ... failed:";
    # the FATAL part after it is what an operator needs.
    text = lines[0] if lines else type(error).__name__
    if "FATAL:" in text:
        text = "FATAL:" + text.split("FATAL:", 1)[1]
    return mask_url_text(text)
