"""Database URLs: validate them, hand them to psycopg, and print them without secrets."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, unquote_to_bytes

from migrate_lock.errors import ConfigError
from migrate_lock.lean.pq import LeanUnavailable, conninfo_error

#: Schemes we accept. Any ``postgresql+driver`` is accepted too, since applications
#: often share one DATABASE_URL between SQLAlchemy (asyncpg, psycopg2) and us.
_PLAIN_SCHEMES = ("postgresql", "postgres")
_MASK = "***"
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Any scheme: a mysql:// URL given by mistake must not leak its password either. The
# password runs to the LAST "@" before the path, the query or a space: a raw "@" in it
# must not leave its tail visible.
_URL_IN_TEXT = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^:/@\s]*):([^\s/?]*)@", re.IGNORECASE)
#: ``password=`` (or ``sslpassword=``, the client key's passphrase) in a URL's query or a
#: keyword/value conninfo, quoted ('…', with \' and \\ escapes, as libpq reads it) or not.
_PASSWORD_PARAMETER = re.compile(
    r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^&\s]+)", re.IGNORECASE | re.DOTALL
)
#: Placeholder text in our own hints, not a secret.
_PLACEHOLDER = "PASSWORD"
#: The shortest secret scrubbed as a literal string wherever it appears. One or two
#: characters are not: scrubbing "7" would turn "exit 75" into "exit ***5" and every
#: timestamp into stars, and where the stars fall would spell the password out. A URL's
#: password is masked by its place in the URL whatever its length.
MIN_SECRET_LENGTH = 3
#: Words that are no secret: scrubbing them would garble every line naming the scheme,
#: the default database or our own hints.
_NOT_SECRET = frozenset({"postgres", "password", "changeme", "postgresql"})
#: Variables whose value may carry a password, read when scrubbing: a message can quote
#: them before anything parsed them.
_SECRET_VARIABLES = ("DATABASE_URL", "MIGRATION_DATABASE_URL", "PGPASSWORD")
_registered: set[str] = set()
_from_environment: dict[tuple[str | None, ...], frozenset[str]] = {}


@dataclass(frozen=True)
class DatabaseUrl:
    """A validated PostgreSQL URL.

    ``libpq`` is what psycopg connects with; ``sqlalchemy`` names the psycopg 3
    driver explicitly; ``masked`` is the only form that may be printed. ``host`` is
    libpq's host list (``h1,h2`` for a failover URL) and ``port`` the port when the URL
    names one host (None for several: libpq picks, ``connection.info`` says which).
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


def migration_url_of(migration_database_url: str | None, database_url: str | None) -> DatabaseUrl:
    """The URL migrations run on: MIGRATION_DATABASE_URL if set, else DATABASE_URL, parsed
    (ConfigError, exit 78, naming the variable; or neither is set)."""
    if migration_database_url:
        return parse_database_url(migration_database_url, variable="MIGRATION_DATABASE_URL")
    if database_url:
        return parse_database_url(database_url, variable="DATABASE_URL")
    raise ConfigError(
        "DATABASE_URL is not set",
        hint="export DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DBNAME "
        "(or pass --database-url)",
    )


def parse_database_url(
    raw: str,
    *,
    variable: str = "DATABASE_URL",
    libpq_check: Callable[[str, str], None] | None = None,
) -> DatabaseUrl:
    """Validate ``raw`` and return its three forms; raise ConfigError naming ``variable``.

    Every candidate password in ``raw`` is registered for scrubbing first (see
    ``register_secrets``), so no message about ``raw`` can print one.
    ``libpq_check(conninfo, variable)`` validates with libpq; by default libpq's
    own parser (lean/pq.py), as psycopg would.
    """
    secrets = register_secrets(raw)
    text = raw.strip()

    def hide(message: str) -> str:
        return scrub_text(message, secrets)

    if "\x00" in text or not _encodes(text):
        raise ConfigError(
            f"{variable} holds a NUL byte or bytes that are not UTF-8",
            hint="set it to a postgresql://USER:PASSWORD@HOST:5432/DBNAME URL in UTF-8, "
            "special characters percent-encoded",
        )
    if "://" not in text:
        raise ConfigError(
            f"{variable} is not a URL",
            hint="use postgresql://USER:PASSWORD@HOST:5432/DBNAME",
        )
    if not _decodes(text):
        # libpq takes them, psycopg does not: it reads every value of the URL as UTF-8.
        raise ConfigError(
            f"{variable} has percent-encoded bytes that are not UTF-8",
            hint="percent-encode the UTF-8 bytes of each character (é is %C3%A9)",
        )
    scheme_text, _, rest = text.partition("://")
    base_scheme = scheme_text.lower().partition("+")[0]
    if base_scheme not in _PLAIN_SCHEMES:
        raise ConfigError(
            f"{variable} must be a PostgreSQL URL, got scheme '{hide(scheme_text)}'",
            hint="use postgresql://USER:PASSWORD@HOST:5432/DBNAME",
        )
    authority, tail = _split_authority(rest)
    userinfo, at, hostlist = authority.rpartition("@")
    if "@" in userinfo or (at and "@" in tail.partition("?")[0]):
        # libpq ends the password at the first "@" and would try the rest as a host name
        # (Python ends it at the last one), and a raw "/" before another "@" ends the host
        # part early: refuse rather than connect somewhere else.
        raise ConfigError(
            f"{variable} has a raw '@' in its user name or password ({hide(text)})",
            hint="percent-encode the password: '@' is %40, ':' %3A, '/' %2F, '%' %25",
        )
    malformed = ConfigError(
        f"{variable} is malformed ({hide(text)})",
        hint="use postgresql://USER:PASSWORD@HOST:5432/DBNAME; percent-encode special "
        "characters in the password",
    )
    try:
        hosts = [_host_and_port(item) for item in hostlist.split(",")] if at or hostlist else []
    except ValueError:
        raise malformed from None
    # Read as libpq reads it: "#" is no fragment marker there, so a raw "#" in the password
    # or the database name is just a character.
    path, _, query_text = tail.partition("?")
    query = dict(parse_qsl(query_text, keep_blank_values=True))
    password = unquote(userinfo.partition(":")[2]) if ":" in userinfo else query.get("password")
    database = unquote(path.lstrip("/")) or query.get("dbname", "")
    (libpq_check or _check_with_libpq)("postgresql://" + rest, variable)
    sslmode = query.get("sslmode")
    if sslmode is not None and sslmode not in _SSL_MODES:
        raise ConfigError(
            f"{variable} is malformed: sslmode={hide(repr(sslmode))} is not one of "
            f"{', '.join(_SSL_MODES)}"
        )
    if any(port == 0 for _, port in hosts):
        raise ConfigError(f"{variable} has port 0", hint="use the server's port, usually 5432")
    # libpq lets ?host= and ?port= override the authority part: so do we.
    host = query.get("host") or ",".join(name for name, _ in hosts).strip(",")
    port = hosts[0][1] if len(hosts) == 1 else None
    # Rebuilt by hand: urlunsplit would turn a host-less "postgresql:///db?host=/run/pg"
    # into "postgresql:/db…".
    return DatabaseUrl(
        libpq="postgresql://" + rest,
        sqlalchemy="postgresql+psycopg://" + rest,
        masked=hide(text),
        password=password,
        database=database,
        host=host,
        port=_int_or_none(query.get("port")) if "port" in query else port,
    )


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a surrogate: bytes the environment could not decode
        return False
    return True


def _decodes(text: str) -> bool:
    """Whether ``text`` percent-decodes to UTF-8 (``%D9`` alone does not)."""
    try:
        unquote_to_bytes(text).decode()
    except UnicodeDecodeError:
        return False
    return True


def _split_authority(rest: str) -> tuple[str, str]:
    """``user:password@hosts`` and the rest (path, query), split where libpq splits."""
    ends = [index for index in (rest.find("/"), rest.find("?")) if index >= 0]
    end = min(ends) if ends else len(rest)
    return rest[:end], rest[end:]


def _host_and_port(item: str) -> tuple[str, int | None]:
    """One entry of libpq's host list: ``host``, ``host:port``, ``[v6]:port`` or ``:port``."""
    if item.startswith("["):
        address, bracket, after = item[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(item)
        name, port_text = address, after[1:]
    else:
        name, _, port_text = item.partition(":")
    if port_text and not (port_text.isdigit() and int(port_text) <= 65535):
        raise ValueError(item)
    name = unquote(name)
    return (name if name.startswith("/") else name.lower()), (int(port_text) if port_text else None)


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def secret_candidates(raw: str) -> set[str]:
    """Everything in ``raw`` (a URL or a keyword/value conninfo) that may be a password,
    read before any parser had its say: the text between ``://`` and the last ``@``,
    the password after the first ``:`` as libpq and as Python split it, each piece
    around a raw ``@``, every ``password=`` value, each raw and percent-decoded."""
    found: set[str] = set()
    text = raw.strip()
    _, sep, rest = text.partition("://")
    if sep:
        authority = _split_authority(rest)[0]
        # Python's split (the last "@"), libpq's (the first "@"), each piece around a raw
        # "@"; and everything up to the last "@" of all, where a raw "/" or "?" in the
        # password hides its "@" from both parsers.
        for userinfo in {authority.rpartition("@")[0], authority.partition("@")[0]}:
            if ":" in userinfo:  # a user name alone is no secret
                password = userinfo.partition(":")[2]
                found.update((userinfo, password, *password.split("@")))
        everything = rest.rpartition("@")[0]
        if ":" in everything:
            found.update((everything, everything.partition(":")[2]))
        # In a query a value runs to the next "&", spaces and all (libpq then refuses it).
        for parameter in rest.partition("?")[2].split("&"):
            key, equals, value = parameter.partition("=")
            if equals and key.strip().lower() in ("password", "sslpassword"):
                found.add(value)
    for match in _PASSWORD_PARAMETER.finditer(text):
        value = match.group(2)
        found.add(value)
        if value.startswith("'"):
            found.add(re.sub(r"\\(.)", r"\1", value[1:].removesuffix("'")))
    found.update([unquote(item) for item in found])
    return {variant for item in found for variant in spellings(item) if is_secret(variant)}


def spellings(secret: str) -> set[str]:
    """``secret`` and the form it takes in a one-line message (every run of whitespace one
    space, as MigrateLockError and the text log format print it)."""
    return {secret, " ".join(secret.split())}


def is_secret(text: str) -> bool:
    """Whether ``text`` is scrubbed as a literal string (long enough, not a common word)."""
    return len(text) >= MIN_SECRET_LENGTH and text.lower() not in _NOT_SECRET


def register_secrets(raw: str | None) -> frozenset[str]:
    """Remember every candidate password in ``raw``: ``scrub_text`` hides them from then
    on, in every message of this process. Returns them."""
    found = frozenset(secret_candidates(raw)) if raw else frozenset()
    _registered.update(found)
    return found


def scrub_text(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` without secrets: URL passwords and ``password=`` values masked, then every
    registered secret, ``extra``, and the candidates in DATABASE_URL,
    MIGRATION_DATABASE_URL and PGPASSWORD replaced by ``***``, longest first."""
    secrets = sorted(_registered.union(extra, _environment_secrets()), key=len, reverse=True)
    # A secret with a blank in it goes first: the masking ends a ``password=`` value at its
    # first blank, and the rest of the password would no longer match the whole secret.
    for secret in [secret for secret in secrets if secret != "".join(secret.split())]:
        text = text.replace(secret, _MASK)
    text = mask_url_text(text)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


def _environment_secrets() -> frozenset[str]:
    values = tuple(os.environ.get(name) for name in _SECRET_VARIABLES)
    cached = _from_environment.get(values)
    if cached is None:
        url_values = [value for value in values[:2] if value]
        found = set().union(*(secret_candidates(value) for value in url_values))
        password = values[2]
        if password:
            found.update(variant for variant in spellings(password) if is_secret(variant))
        cached = _from_environment[values] = frozenset(found)
    return cached


def mask_url_text(text: str) -> str:
    """Replace every password inside URLs found in ``text`` with ``***``."""

    def hide(match: re.Match[str]) -> str:
        if match.group(3) == _PLACEHOLDER:
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}:{_MASK}@"

    masked = _URL_IN_TEXT.sub(hide, text)
    return _PASSWORD_PARAMETER.sub(rf"\g<1>{_MASK}", masked)


def with_database(url: DatabaseUrl, database: str) -> DatabaseUrl:
    """The same server and credentials, another database (used for scratch databases).

    A ``dbname`` in the query would beat the path for libpq, and a scratch URL would
    then name the very database it must never touch: it goes.
    """
    authority, tail = _split_authority(url.libpq.partition("://")[2])
    query = "&".join(
        item
        for item in tail.partition("?")[2].split("&")
        if item and unquote(item.partition("=")[0]).strip() != "dbname"
    )
    return parse_database_url(
        f"postgresql://{authority}/{quote(database)}" + (f"?{query}" if query else "")
    )


def _check_with_libpq(text: str, variable: str) -> None:
    # libpq's own parser rejects what it would later fail on (bad options, bad escapes),
    # so the operator hears about it now, as a configuration error. Asked through
    # lean/pq.py, so that validating a URL never loads psycopg.
    try:
        error = conninfo_error(text)
    except LeanUnavailable:
        return  # no libpq to ask here: connecting will say what is wrong
    if error is not None:
        detail = scrub_text((error.splitlines() or [""])[0], secret_candidates(text))
        raise ConfigError(
            f"{variable} is malformed: {detail}",
            hint="use postgresql://USER:PASSWORD@HOST:5432/DBNAME",
        )
