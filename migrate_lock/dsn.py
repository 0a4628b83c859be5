"""Database URLs: validate them, hand them to psycopg, and print them without secrets."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from migrate_lock.errors import ConfigError
from migrate_lock.lean.pq import LeanUnavailable, conninfo_error

#: Schemes we accept. Any ``postgresql+driver`` is accepted too, since applications
#: often share one DATABASE_URL between SQLAlchemy (asyncpg, psycopg2) and us.
_PLAIN_SCHEMES = ("postgresql", "postgres")
_MASK = "***"
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Any scheme: a mysql:// URL given by mistake must not leak its password either.
_URL_IN_TEXT = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^:/@\s]*):([^@\s]*)@", re.IGNORECASE)
#: Placeholder text in our own hints, not a secret.
_PLACEHOLDER = "PASSWORD"


@dataclass(frozen=True)
class DatabaseUrl:
    """A validated PostgreSQL URL.

    ``libpq`` is what psycopg connects with; ``sqlalchemy`` names the psycopg 3
    driver explicitly; ``masked`` is the only form that may be printed.
    """

    libpq: str
    sqlalchemy: str
    masked: str
    password: str | None
    database: str
    host: str
    port: int | None = None

    def __repr__(self) -> str:
        return f"DatabaseUrl({self.masked!r})"


def parse_database_url(
    raw: str,
    *,
    variable: str = "DATABASE_URL",
    libpq_check: Callable[[str, str], None] | None = None,
) -> DatabaseUrl:
    """Validate ``raw`` and return its three forms; raise ConfigError naming ``variable``.

    ``libpq_check(conninfo, variable)`` validates with libpq; by default libpq's
    own parser (lean/pq.py), as psycopg would.
    """
    text = raw.strip()
    if "://" not in text:
        raise ConfigError(
            f"{variable} is not a URL",
            hint="use postgresql://USER:PASSWORD@HOST:5432/DBNAME",
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"{variable} is malformed ({mask_url_text(text)})",
            hint="use postgresql://USER:PASSWORD@HOST:5432/DBNAME; percent-encode special "
            "characters in the password",
        ) from None
    scheme = parts.scheme.lower()
    base_scheme, _, _driver = scheme.partition("+")
    if base_scheme not in _PLAIN_SCHEMES:
        raise ConfigError(
            f"{variable} must be a PostgreSQL URL, got scheme '{parts.scheme}'",
            hint="use postgresql://USER:PASSWORD@HOST:5432/DBNAME",
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    password = unquote(parts.password) if parts.password is not None else query.get("password")
    database = unquote(parts.path.lstrip("/")) or query.get("dbname", "")
    # libpq lets ?host= and ?port= override the authority part: so do we.
    host = query.get("host") or parts.hostname or ""
    rest = text.split("://", 1)[1]
    (libpq_check or _check_with_libpq)("postgresql://" + rest, variable)
    sslmode = query.get("sslmode")
    if sslmode is not None and sslmode not in _SSL_MODES:
        raise ConfigError(
            f"{variable} is malformed: sslmode={sslmode!r} is not one of {', '.join(_SSL_MODES)}"
        )

    # Rebuilt by hand: urlunsplit would turn a host-less "postgresql:///db?host=/run/pg"
    # into "postgresql:/db…".
    libpq = "postgresql://" + rest
    sqlalchemy = "postgresql+psycopg://" + rest
    if port is not None and port == 0:
        raise ConfigError(f"{variable} has port 0", hint="use the server's port, usually 5432")
    return DatabaseUrl(
        libpq=libpq,
        sqlalchemy=sqlalchemy,
        masked=mask_url_text(text),
        password=password,
        database=database,
        host=host,
        port=_int_or_none(query.get("port")) if "port" in query else port,
    )


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def mask_url_text(text: str) -> str:
    """Replace every password inside URLs found in ``text`` with ``***``."""

    def hide(match: re.Match[str]) -> str:
        if match.group(3) == _PLACEHOLDER:
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}:{_MASK}@"

    masked = _URL_IN_TEXT.sub(hide, text)
    return re.sub(r"(password=)[^&\s]+", rf"\g<1>{_MASK}", masked, flags=re.IGNORECASE)


def with_database(url: DatabaseUrl, database: str) -> DatabaseUrl:
    """The same server and credentials, another database (used for scratch databases)."""
    parts = urlsplit(url.libpq)
    query = f"?{parts.query}" if parts.query else ""
    return parse_database_url(f"postgresql://{parts.netloc}/{quote(database)}{query}")


def _check_with_libpq(text: str, variable: str) -> None:
    # libpq's own parser rejects what it would later fail on (bad options, bad escapes),
    # so the operator hears about it now, as a configuration error. Asked through
    # lean/pq.py, so that validating a URL never loads psycopg.
    try:
        error = conninfo_error(text)
    except LeanUnavailable:
        return  # no libpq to ask here: connecting will say what is wrong
    if error is not None:
        detail = mask_url_text((error.splitlines() or [""])[0])
        raise ConfigError(
            f"{variable} is malformed: {detail}",
            hint="use postgresql://USER:PASSWORD@HOST:5432/DBNAME",
        )
