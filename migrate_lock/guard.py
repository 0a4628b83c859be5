"""Guardrails: which environment a database is in, and what may be done to it.

Three things live here, all about not wrecking a database by mistake:

- **start-up checks**: with ``ENVIRONMENT=production`` (and ``staging``, unless
  ``STAGING_URL_CHECKS=false``), a database URL on localhost, with a default or
  placeholder password, or with an empty password is a configuration error (exit 78);
- **the environment marker**: a one-row table of ours, ``migrate_lock.environment``
  (one place per database, whatever VERSION_TABLE_SCHEMA says), written on upgrade and
  by ``env set``. The stricter of the marker and the local ``ENVIRONMENT`` decides; a
  database that has been migrated but carries no marker counts as production (fail
  closed), and an upgrade marks it lower only if it was brand-new;
- **confirmation** of destructive operations (downgrade, stamp, init-db, reset,
  restore, seed pruning, moving the marker down): they run on development and test
  databases; anywhere else they are refused (exit 3, nothing changed) unless the
  operator names the database: ``--confirm-destructive DBNAME`` or
  ``CONFIRM_DESTRUCTIVE=DBNAME``. ``CONFIRM_DESTRUCTIVE=true`` is accepted only for a
  database that is not (and is not treated as) production.

The verbs that show and move the marker are in environment.py; ``protect(metadata)``,
which makes an application's own SQLAlchemy creates and drops raise outside
development and test, is in metadata_guard.py (it needs SQLAlchemy).

Light on purpose (no psycopg, pydantic, SQLAlchemy or Alembic import): the at-head
path runs the start-up checks too.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from migrate_lock.dsn import parse_database_url
from migrate_lock.errors import ConfigError, Refused
from migrate_lock.lean.settings_schema import ENVIRONMENTS, LeanSettings
from migrate_lock.logs import log
from migrate_lock.version_table import (
    LEGACY_HISTORY,
    LEGACY_SEEDS,
    OWN_SCHEMA,
    VersionTable,
    create_if_missing,
    database_revisions,
    ensure_own_schema,
)

if TYPE_CHECKING:
    import psycopg

    from migrate_lock.lean.abc import LockConnection
    from migrate_lock.project import DatabaseSession
    from migrate_lock.settings import Settings

#: Our marker table (one row): in our own schema, the same place in every database.
_MARKER_NAME = "environment"
MARKER_TABLE = f'"{OWN_SCHEMA}"."{_MARKER_NAME}"'
#: Where releases before the own schema kept the marker: beside the version table.
LEGACY_MARKER_TABLE = "migrate_lock_environment"
_LEGACY_TABLES = (LEGACY_MARKER_TABLE, LEGACY_HISTORY, LEGACY_SEEDS)

#: How protected each environment is: moving to a lower rank is destructive.
RANK = {"development": 0, "test": 0, "staging": 1, "production": 2}
#: Where destructive operations run without confirmation.
UNPROTECTED = ("development", "test")
#: Passwords that mean "nobody chose one" (compared case-insensitively): defaults, and the
#: placeholders of common templates and docs (full-stack-fastapi-template's `changethis`,
#: the postgres image's `mysecretpassword`, `.env.example` files); a password equal to the
#: user name counts too (postgres/postgres, app/app).
PLACEHOLDER_PASSWORDS = frozenset(
    {
        "postgres",
        "password",
        "passw0rd",
        "password1",
        "pass",
        "changeme",
        "change-me",
        "change_me",
        "changethis",
        "change-this",
        "change_this",
        "changeit",
        "replaceme",
        "replace-me",
        "replace_me",
        "your-password",
        "your_password",
        "yourpassword",
        "mysecretpassword",
        "example",
        "secret",
        "supersecret",
        "super-secret",
        "admin",
        "root",
        "123456",
        "12345678",
    }
)
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_CONFIRM_YES = "true"


# --- start-up checks --------------------------------------------------------------------


def check_startup(settings: LeanSettings) -> None:
    """Refuse unsafe database URLs for production (and staging): ConfigError, exit 78.

    Takes the lean settings or the full ones (``Settings`` has every field of
    ``LeanSettings``), so the at-head path checks exactly what the full path does."""
    check_database_urls(
        settings.environment,
        {
            "DATABASE_URL": settings.database_url,
            "MIGRATION_DATABASE_URL": settings.migration_database_url,
        },
        staging_checks=settings.staging_url_checks,
        allow_localhost=settings.allow_localhost_database,
    )


def check_database_urls(
    environment: str | None,
    urls: dict[str, str | None],
    *,
    staging_checks: bool = True,
    allow_localhost: bool = False,
) -> None:
    """The start-up checks on plain values (``check_startup`` passes the settings' URLs).

    ``urls`` maps variable names to raw URLs (None: not set). Raises ConfigError
    listing every problem, each naming its variable; passwords are never printed.
    """
    if environment != "production" and not (environment == "staging" and staging_checks):
        return
    problems = [
        problem
        for variable, raw in urls.items()
        if raw
        for problem in _url_problems(variable, raw, allow_localhost=allow_localhost)
    ]
    if problems:
        relax = (
            "STAGING_URL_CHECKS=false lifts these checks in staging"
            if environment == "staging"
            else "a sidecar proxy on localhost needs ALLOW_LOCALHOST_DATABASE=true"
        )
        raise ConfigError(
            f"ENVIRONMENT={environment} refuses unsafe database settings: " + "; ".join(problems),
            hint=f"point the URL at the {environment} server with its real credentials ({relax})",
        )


def _url_problems(variable: str, raw: str, *, allow_localhost: bool) -> list[str]:
    # Host and password are all we look at; libpq's own validation of the URL happens
    # where settings are validated, and must not load psycopg on the at-head fast path.
    url = parse_database_url(raw, variable=variable, libpq_check=_not_here)
    problems = []
    hosts = url.host.split(",") if url.host else [""]
    # hostaddr (in the URL, else PGHOSTADDR) is where libpq really connects: host is then
    # only the name TLS and Kerberos check.
    query = dict(parse_qsl(urlsplit(url.libpq).query, keep_blank_values=True))
    addresses = query.get("hostaddr") or os.environ.get("PGHOSTADDR") or ""
    if not allow_localhost:
        local_addresses = [a for a in addresses.split(",") if a.strip() and _is_local(a)]
        if local_addresses:
            problems.append(
                f"{variable} points at localhost (hostaddr={local_addresses[0].strip()}; "
                f"{url.masked})"
            )
        elif not addresses.strip() and any(_is_local(host) for host in hosts):
            where = "the local socket" if hosts == [""] else "localhost"
            problems.append(f"{variable} points at {where} ({url.masked})")
    if url.password is not None:
        # The user may be in the query too (?user=app&password=app), as the password may.
        user = query.get("user") or unquote(urlsplit(url.libpq).username or "")
        if url.password == "":
            problems.append(f"{variable} has an empty password ({url.masked})")
        elif url.password.lower() in PLACEHOLDER_PASSWORDS or url.password == user:
            problems.append(f"{variable} uses a default or placeholder password ({url.masked})")
    return problems


def _not_here(conninfo: str, variable: str) -> None:
    """No libpq check (see _url_problems)."""


def _is_local(host: str) -> bool:
    """Whether libpq, given ``host`` (or hostaddr), would connect to this machine.

    An empty host is libpq's default: the server's socket on this machine. An explicit
    socket directory (/cloudsql/…) is a deliberate choice and not refused. Addresses
    are compared as addresses, in every spelling the system's resolver accepts
    (127.1, 0x7f.1, 2130706433, ::1, [::ffff:127.0.0.1], 0.0.0.0, ::).
    """
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    name = name.strip().lower().rstrip(".")
    if not name:
        return not host.strip().startswith("/")
    if name in _LOCAL_NAMES or name.endswith(".localhost"):
        return True
    address = _address(name)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``name`` as an IP address, or None for a host name."""
    try:
        return ipaddress.ip_address(name.partition("%")[0])  # "%eth0": an IPv6 zone
    except ValueError:
        pass
    if not name or not (name[0].isdigit()):
        return None
    try:  # the classic forms getaddrinfo accepts too: 127.1, 0x7f.1, 017700000001
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        return None


# --- the environment marker -------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    """The row of ``migrate_lock.environment``: the environment a database is in."""

    environment: str
    set_at: str
    set_by: str


@dataclass(frozen=True)
class Protection:
    """How a database is guarded, and why.

    ``effective`` is the stricter of the marker and the local ENVIRONMENT. A database
    that has a version table but no marker is treated as production (``assumed``); so
    is a new database when ENVIRONMENT is not set either.
    """

    database: str
    marker: Marker | None
    local: str | None
    migrated: bool

    @property
    def assumed(self) -> bool:
        """True when no marker (and, for a new database, no ENVIRONMENT) says anything."""
        return self.marker is None and (self.migrated or self.local is None)

    @property
    def effective(self) -> str:
        if self.assumed:
            return "production"
        candidates = [self.marker.environment] if self.marker else []
        if self.local is not None:
            candidates.append(self.local)
        # Ties keep the marker: development and test rank the same.
        return max(candidates, key=lambda name: RANK[name])

    @property
    def protected(self) -> bool:
        return self.effective not in UNPROTECTED

    def describe(self) -> str:
        """Why the database counts as what it counts as, in words for an error line."""
        name = f'"{self.database}"'
        if self.marker is None and self.migrated:
            return f"{name} has no environment marker, so it is treated as production"
        if self.marker is None:
            if self.local is None:
                return f"{name} has no environment marker and ENVIRONMENT is not set"
            return f"{name} is {self.local} (ENVIRONMENT; no marker yet)"
        if self.local is not None and RANK[self.local] > RANK[self.marker.environment]:
            return (
                f"{name} is {self.local} (ENVIRONMENT; the marker says {self.marker.environment})"
            )
        return f"{name} is marked {self.marker.environment}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "marker": self.marker.environment if self.marker else None,
            "marker_set_at": self.marker.set_at if self.marker else None,
            "marker_set_by": self.marker.set_by if self.marker else None,
            "local": self.local,
            "effective": self.effective,
            "protected": self.protected,
        }


def marker_table(table: VersionTable | None = None) -> str:
    """The qualified name of the marker table: one fixed place per database."""
    return MARKER_TABLE


# Every table that holds a marker: ours, and those older releases kept beside the
# version table, in whichever schema VERSION_TABLE_SCHEMA named then. Ours sorts first.
_MARKER_TABLES = (
    "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), n.nspname = %s"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p')"
    " AND ((n.nspname = %s AND c.relname = %s) OR c.relname = %s)"
    " ORDER BY 2 DESC, 1"
)


def _markers(connection: LockConnection) -> list[tuple[str, bool, Marker | None]]:
    """(qualified table, is ours, its marker) for every marker table in the database."""
    tables = connection.execute(
        _MARKER_TABLES, (OWN_SCHEMA, OWN_SCHEMA, _MARKER_NAME, LEGACY_MARKER_TABLE)
    ).fetchall()
    found: list[tuple[str, bool, Marker | None]] = []
    for qualified, ours in tables:
        row = connection.execute(
            "SELECT environment, to_char(set_at AT TIME ZONE 'UTC',"
            ' \'YYYY-MM-DD"T"HH24:MI:SS"Z"\'), set_by'
            f" FROM {qualified} LIMIT 1"
        ).fetchone()
        marker = Marker(str(row[0]), str(row[1]), str(row[2])) if row and row[0] in RANK else None
        found.append((str(qualified), bool(ours), marker))
    return found


def _strictest(markers: list[Marker | None]) -> Marker | None:
    present = [marker for marker in markers if marker is not None]
    # max keeps the first of equals: ours, which sorts first.
    return max(present, key=lambda marker: RANK[marker.environment]) if present else None


def read_marker(connection: LockConnection, table: VersionTable | None = None) -> Marker | None:
    """The database's marker, or None when there is none.

    Found whatever VERSION_TABLE_SCHEMA says (``table`` is not used): ours in the
    ``migrate_lock`` schema, and any an older release left beside a version table that
    has not moved yet; the strictest of them counts.
    """
    return _strictest([marker for _, _, marker in _markers(connection)])


def write_marker(
    connection: psycopg.Connection[Any],
    table: VersionTable | None,
    environment: str,
    *,
    how: str,
) -> None:
    """Record ``environment`` as the database's (creating our schema and table if needed).

    Markers an older release left elsewhere go: this one is now the database's.
    The caller has decided that the change is allowed (confirmation is not checked here).
    """
    with connection.transaction():
        _store_marker(connection, environment, moved=None, how=how)


def _store_marker(
    connection: LockConnection,
    environment: str,
    *,
    moved: Marker | None,
    how: str,
) -> None:
    ensure_own_schema(connection)
    allowed = ", ".join(f"'{name}'" for name in ENVIRONMENTS)
    create_if_missing(
        connection,
        f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} ("
        " singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
        f" environment text NOT NULL CHECK (environment IN ({allowed})),"
        " set_at timestamptz NOT NULL DEFAULT now(),"
        " set_by text NOT NULL)",
    )
    if moved is None:
        values = "%s, now(), %s || ' by ' || current_user || ' on ' || %s"
        params: tuple[str, ...] = (environment, how, socket.gethostname())
    else:  # a moved marker keeps when and by whom it was set
        values = "%s, %s::timestamptz, %s"
        params = (environment, moved.set_at, moved.set_by)
    connection.execute(
        f"INSERT INTO {MARKER_TABLE} (environment, set_at, set_by) VALUES ({values})"
        " ON CONFLICT (singleton) DO UPDATE SET environment = EXCLUDED.environment,"
        " set_at = EXCLUDED.set_at, set_by = EXCLUDED.set_by",
        params,
    )
    for qualified, ours, _ in _markers(connection):
        if not ours:
            connection.execute(f"DROP TABLE {qualified}")


def move_legacy_marker(connection: LockConnection) -> None:
    """Move a marker an older release kept beside a version table into our schema.

    The strictest of all the markers found is kept (with when and by whom it was set):
    the move never lowers or loses a marker. Call under the lock, in the migrating
    transaction.
    """
    _move_legacy_marker(connection)


def _move_legacy_marker(connection: LockConnection) -> Marker | None:
    """``move_legacy_marker``, returning the database's marker after the move (what
    ``read_marker`` would read then, without reading it again)."""
    markers = _markers(connection)
    strictest = _strictest([marker for _, _, marker in markers])
    if all(ours for _, ours, _ in markers):
        return strictest
    if strictest is None:  # empty or unreadable leftovers: nothing to keep
        for qualified, ours, _ in markers:
            if not ours:
                connection.execute(f"DROP TABLE {qualified}")
        return None
    _store_marker(connection, strictest.environment, moved=strictest, how="move")
    log.info("guard.marker_moved", environment=strictest.environment, to=MARKER_TABLE)
    return strictest


def delete_marker(connection: LockConnection, table: VersionTable | None = None) -> None:
    """Remove the marker (restore: the restored database keeps the target's absence)."""
    for qualified, ours, _ in _markers(connection):
        if ours:
            connection.execute(f"DELETE FROM {qualified}")
        else:
            connection.execute(f"DROP TABLE {qualified}")


def is_new_database(connection: LockConnection, table: VersionTable) -> bool:
    """True for a brand-new database: no version table and no table of the application.

    Our own tables and those of extensions (PostGIS's spatial_ref_sys) do not count.
    """
    row = connection.execute(
        "SELECT to_regclass(%s) IS NULL AND NOT EXISTS ("
        " SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')"
        " AND n.nspname NOT IN ('pg_catalog', 'information_schema', %s)"
        " AND n.nspname !~ '^pg_'"
        " AND c.relname <> ALL(%s)"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass"
        " AND d.objid = c.oid AND d.deptype = 'e'))",
        (table.qualified, OWN_SCHEMA, list(_LEGACY_TABLES)),
    ).fetchone()
    return bool(row and row[0])


def protection(session: DatabaseSession) -> Protection:
    """How the session's database is guarded (reads the marker; changes nothing)."""
    table = session.version_table
    return Protection(
        database=session.database_name,
        marker=read_marker(session.connection),
        local=session.project.settings.environment,
        migrated=database_revisions(session.connection, table) is not None,
    )


def remember_environment(
    connection: psycopg.Connection[Any],
    table: VersionTable,
    settings: Settings,
    *,
    how: str = "upgrade",
    new_database: bool | None = None,
) -> bool:
    """On upgrade: mark the database with ENVIRONMENT, or raise its marker to it.

    True when there is nothing to do, now or later: no ENVIRONMENT, or a committed marker
    at or above it (only ``env set`` lowers one, confirmed by name).

    A marker is never lowered here (that is ``env set``, a destructive operation):
    a laptop that says ``development`` cannot unprotect a production database by
    upgrading it. Without a marker, ENVIRONMENT is written only when it is
    ``production`` or the database was brand-new before this upgrade
    (``new_database``, see ``is_new_database``); an existing database without a
    marker counts as production, so marking it lower is for ``env set`` with a
    confirmation, and the upgrade says so (``guard.marker_not_written``).
    ``new_database=None``: the caller's own guard allowed the operation (stamp,
    init-db). Without ENVIRONMENT nothing is written. A marker an older release kept
    beside the version table moves to our schema either way.
    """
    marker = _move_legacy_marker(connection)
    local = settings.environment
    if local is None:
        return True
    if marker is not None and RANK[local] <= RANK[marker.environment]:
        if marker.environment != local:
            log.warning(
                "guard.marker_kept",
                marker=marker.environment,
                local=local,
                detail="the database stays marked as it was; `migrate-lock env set` changes it",
            )
        return True
    if marker is None and local != "production" and new_database is False:
        row = connection.execute("SELECT current_database()").fetchone()
        database = str(row[0]) if row else "DBNAME"
        command = f"migrate-lock env set {local} --confirm-destructive {database}"
        log.warning(
            "guard.marker_not_written",
            local=local,
            database=database,
            command=command,
            detail=f"the database existed without an environment marker, so it stays treated "
            f"as production; if it really is a {local} database, mark it: {command}",
        )
        return False
    with connection.transaction():
        _store_marker(connection, local, moved=None, how=how)
    log.info(
        "guard.marked",
        environment=local,
        previous=marker.environment if marker else None,
        how=how,
    )
    return False  # written, not yet committed


# --- confirmation -----------------------------------------------------------------------


def require_confirmation(
    session: DatabaseSession,
    operation: str,
    *,
    development_only: bool = False,
) -> Protection:
    """Refuse ``operation`` (Refused, exit 3) unless it may run on this database.

    It may on a development or test database, and elsewhere when CONFIRM_DESTRUCTIVE
    (``--confirm-destructive``) names the connected database (``true`` will do, except
    for production). ``development_only`` operations are refused outside development
    and test whatever the confirmation. A confirmation naming another database is
    refused everywhere: it means the command is pointed at the wrong one.
    """
    guard = protection(session)
    confirm = (session.project.settings.confirm_destructive or "").strip()
    database = guard.database
    to_confirm = f"--confirm-destructive {database} (or CONFIRM_DESTRUCTIVE={database})"
    if confirm and confirm.lower() != _CONFIRM_YES and confirm != database:
        raise Refused(
            f"{operation} refused: it was confirmed for database {confirm!r} but the connected "
            f"database is {database!r}; nothing was changed",
            hint=f"check DATABASE_URL; to confirm for this database: {to_confirm}",
        )
    if not guard.protected:
        log.info("guard.allowed", operation=operation, **_fields(guard))
        return guard
    if development_only:
        raise Refused(
            f"{operation} refused: it is only for development and test databases and "
            f"{guard.describe()}; nothing was changed",
            hint=_unmark_hint(guard),
        )
    if not confirm:
        raise Refused(
            f"{operation} refused: it is destructive and {guard.describe()}; nothing was changed",
            hint=f"to go ahead, run it again with {to_confirm}"
            + (f"; {_unmark_hint(guard)}" if guard.marker is None and guard.migrated else ""),
        )
    if confirm.lower() == _CONFIRM_YES and guard.effective == "production":
        raise Refused(
            f"{operation} refused: CONFIRM_DESTRUCTIVE=true is not accepted because "
            f"{guard.describe()}; nothing was changed",
            hint=f"name the database instead: {to_confirm}",
        )
    log.warning("guard.confirmed", operation=operation, confirmed_with=confirm, **_fields(guard))
    return guard


def require_database_name(session: DatabaseSession, operation: str, reason: str) -> None:
    """Refuse ``operation`` (Refused, exit 3) unless CONFIRM_DESTRUCTIVE
    (``--confirm-destructive``) names the connected database (``true`` will not do)."""
    confirm = (session.project.settings.confirm_destructive or "").strip()
    database = session.database_name
    if confirm == database:
        log.warning("guard.confirmed", operation=operation, confirmed_with=confirm)
        return
    wrong = f" (it was confirmed with {confirm!r})" if confirm else ""
    raise Refused(
        f"{operation} refused: {reason}{wrong}; nothing was changed",
        hint=f"to go ahead, run it again with --confirm-destructive {database} "
        f"(or CONFIRM_DESTRUCTIVE={database})",
    )


def _unmark_hint(guard: Protection) -> str:
    command = "migrate-lock env set development"
    if guard.protected:
        command += f" --confirm-destructive {guard.database}"
    return f"if it really is a development database, mark it first: {command}"


def _fields(guard: Protection) -> dict[str, Any]:
    return {
        "database": guard.database,
        "environment": guard.effective,
        "marker": guard.marker.environment if guard.marker else None,
        "local": guard.local,
    }
