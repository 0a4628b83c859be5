"""Where a fleet's tenants come from: ``--tenants SOURCE`` parsed, listed and sharded.

SOURCE is one of

- ``schemas:PATTERN``: every schema of the database whose name matches the SQL ``LIKE``
  pattern (``schemas:tenant_%``);
- ``query:SQL``: a query returning one column: schema names, or database names or URLs;
- ``databases:PATTERN``: every database on the server matching the ``LIKE`` pattern;
- ``databases:@FILE``: a file with one database URL (or name) per line.

Light on purpose (standard library only): ``status --tenants`` at head loads no Alembic.
The listing runs on any connection with ``execute(...).fetchall()`` (lean.abc's
``LockConnection``: the libpq binding or psycopg).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from migrate_lock.errors import TenantSourceError, UsageError

if TYPE_CHECKING:
    from migrate_lock.lean.abc import LockConnection

SourceKind = Literal["schemas", "query", "databases", "file"]
TenantKind = Literal["schema", "database"]

#: Schemas that are never tenants, whatever the pattern says.
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "migrate_lock", "pg_toast")


@dataclass(frozen=True)
class TenantSource:
    """A parsed ``--tenants`` value."""

    kind: SourceKind
    #: The LIKE pattern, the SQL, or the file's path.
    value: str

    def __str__(self) -> str:
        prefix = "databases:@" if self.kind == "file" else f"{self.kind}:"
        return prefix + self.value


@dataclass(frozen=True, order=True)
class Tenant:
    """One tenant: a schema of the migration database, or a database of its own.

    ``name`` is what the fleet reports, shards on and hands to ``env.py``
    (``config.attributes["tenant"]``): the schema, or the database's name. ``url`` is set
    for a database tenant given by URL (``databases:@FILE``, ``query:``); a database
    tenant without one is on the migration URL's server, with its credentials.
    """

    name: str
    kind: TenantKind
    url: str | None = None

    @property
    def schema(self) -> str | None:
        return self.name if self.kind == "schema" else None


def parse_source(text: str) -> TenantSource:
    """``schemas:PATTERN``, ``query:SQL``, ``databases:PATTERN`` or ``databases:@FILE``."""
    kind, sep, value = text.strip().partition(":")
    kind = kind.strip().lower()
    value = value.strip()
    if not sep or kind not in ("schemas", "query", "databases"):
        raise TenantSourceError(
            f"--tenants {text!r} names no tenant source",
            hint="use schemas:PATTERN (e.g. schemas:tenant_%), query:SQL, databases:PATTERN "
            "or databases:@FILE",
        )
    if not value:
        raise TenantSourceError(
            f"--tenants {kind}: needs a "
            + ("query" if kind == "query" else "pattern (SQL LIKE, e.g. tenant_%)"),
            hint="see docs/tenants.md",
        )
    if kind == "databases" and value.startswith("@"):
        path = value[1:].strip()
        if not path:
            raise TenantSourceError(
                "--tenants databases:@ needs a file name", hint="databases:@FILE"
            )
        return TenantSource("file", path)
    return TenantSource(kind, value)  # type: ignore[arg-type]


def read_database_file(path: str | os.PathLike[str]) -> list[Tenant]:
    """One database URL (or name) per line; blank lines and ``#`` comments skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as error:
        raise TenantSourceError(
            f"--tenants databases:@{path}: cannot read the file ({type(error).__name__})",
            hint="give a UTF-8 file with one database URL per line",
        ) from None
    values = [line.strip() for line in text.splitlines()]
    return database_tenants(value for value in values if value and not value.startswith("#"))


def database_tenants(values: Iterable[str]) -> list[Tenant]:
    """Database tenants from names or URLs (a URL's tenant name is its database's)."""
    tenants: dict[str, Tenant] = {}
    for value in values:
        if _is_url(value):
            name = database_of(value)
            tenants.setdefault(name, Tenant(name, "database", value))
        else:
            tenants.setdefault(value, Tenant(value, "database"))
    return sorted(tenants.values())


def database_of(url: str) -> str:
    """The database a URL names (its path, else ``dbname=``); UsageError if none."""
    from urllib.parse import parse_qs, unquote, urlsplit  # noqa: PLC0415 - only for URLs

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    name = query.get("dbname", [""])[0] or unquote(parts.path.lstrip("/"))
    if not name:
        raise TenantSourceError(
            "a tenant database URL names no database", hint="end each URL with /DBNAME"
        )
    return name


def _is_url(value: str) -> bool:
    return "://" in value


def list_tenants(source: TenantSource, connection: LockConnection | None) -> list[Tenant]:
    """The source's tenants, sorted by name, listed on ``connection`` (the migration
    database; None only for ``databases:@FILE``). Schema tenants: the schemas; ``query:``
    values that are URLs, or that name no schema of this database, are databases."""
    if source.kind == "file":
        return read_database_file(source.value)
    if connection is None:
        raise TenantSourceError(f"--tenants {source} needs the migration database's URL")
    if source.kind == "schemas":
        rows = connection.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s"
            " AND nspname <> ALL(%s) AND nspname !~ '^pg_' ORDER BY 1",
            (source.value, list(SYSTEM_SCHEMAS)),
        ).fetchall()
        return [Tenant(str(row[0]), "schema") for row in rows]
    if source.kind == "databases":
        rows = connection.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s AND datallowconn"
            " AND NOT datistemplate ORDER BY 1",
            (source.value,),
        ).fetchall()
        return [Tenant(str(row[0]), "database") for row in rows]
    rows = connection.execute(source.value).fetchall()
    values = sorted({str(row[0]) for row in rows if row and row[0] is not None})
    return classify_values(values, _schemas_among(connection, values))


def classify_values(values: Sequence[str], schemas: set[str]) -> list[Tenant]:
    """``query:`` values: a schema of the migration database is a schema tenant; a URL or
    any other name is a database tenant."""
    found = [Tenant(value, "schema") for value in values if value in schemas]
    found += database_tenants(value for value in values if value not in schemas)
    return sorted(found)


def _schemas_among(connection: LockConnection, values: Sequence[str]) -> set[str]:
    names = [value for value in values if not _is_url(value)]
    if not names:
        return set()
    rows = connection.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (names,)
    ).fetchall()
    return {str(row[0]) for row in rows}


# --- sharding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """``--shard INDEX/COUNT``: this run takes the tenants whose stable hash modulo COUNT
    is INDEX (0-based, as Kubernetes' JOB_COMPLETION_INDEX)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def takes(self, tenant: str) -> bool:
        return shard_of(tenant, self.count) == self.index


def shard_of(tenant: str, count: int) -> int:
    """The shard of ``tenant`` among ``count``: the same in every process and release
    (SHA-256 of the name, never Python's salted ``hash()``)."""
    digest = hashlib.sha256(tenant.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


_SHARD = re.compile(r"^\s*(\d*)\s*/\s*(\d+)\s*$")


def parse_shard(text: str | None, environ: Mapping[str, str] | None = None) -> Shard | None:
    """``INDEX/COUNT`` or ``/COUNT`` (INDEX from JOB_COMPLETION_INDEX, as a Kubernetes
    Indexed Job sets it); None for no sharding. UsageError on anything else."""
    if text is None or not text.strip():
        return None
    environ = os.environ if environ is None else environ
    found = _SHARD.match(text)
    if found is None:
        raise UsageError(
            f"--shard {text!r} is not INDEX/COUNT",
            hint="e.g. --shard 0/4, or --shard /4 with JOB_COMPLETION_INDEX set",
        )
    index_text, count = found[1], int(found[2])
    if not index_text:
        index_text = environ.get("JOB_COMPLETION_INDEX", "").strip()
        if not index_text.isdigit():
            raise UsageError(
                f"--shard {text.strip()} takes its INDEX from JOB_COMPLETION_INDEX, which is "
                + ("not set" if not index_text else f"{index_text!r}, not a number"),
                hint="give it (--shard 0/4), or run as a Kubernetes Indexed Job",
            )
    index = int(index_text)
    if count < 1 or index >= count:
        raise UsageError(
            f"--shard {index}/{count}: INDEX must be from 0 to COUNT-1",
            hint="Kubernetes' JOB_COMPLETION_INDEX counts from 0; COUNT is the Job's completions",
        )
    return Shard(index, count)
