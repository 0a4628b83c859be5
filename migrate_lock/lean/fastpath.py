"""The at-head fast path: "already at head" without Alembic, SQLAlchemy, psycopg or pydantic.

Almost every start of almost every replica finds nothing to do. This path answers
that case with the standard library, libpq through ctypes (pq.py), and the heads
manifest (manifest.py), in a fraction of the CPU time of loading Alembic.

It only ever says "nothing to do". Whenever it cannot be sure (no manifest or a
stale one, a setting it does not recognise as certainly valid, a connection or
query problem, the database not exactly at the heads, a changed seed file), it
returns None and the caller runs the full protocol, which validates everything
again and produces the proper errors. So it can be slower, never wrong.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrate_lock import rules
from migrate_lock.dsn import DatabaseUrl, parse_database_url
from migrate_lock.errors import LockTimeout, MigrateLockError
from migrate_lock.guard import check_database_urls
from migrate_lock.lean.manifest import read_manifest, script_files
from migrate_lock.lean.pq import LeanConnection, LeanUnavailable, conninfo_is_valid
from migrate_lock.lock import lock_key, release, wait_for_lock, wait_for_transaction_lock
from migrate_lock.logs import log
from migrate_lock.outcome import Role, UpgradeResult
from migrate_lock.scope import choose_scope
from migrate_lock.seeds.files import changed_seeds, discover, seeds_dir
from migrate_lock.version_table import VersionTable, current_schema, database_revisions

_FLOAT = re.compile(r"^\s*\d+(\.\d+)?\s*$")
_INTEGER = re.compile(r"^\s*-?\d{1,19}\s*$")
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}
_DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


@dataclass
class LeanSettings:
    """The settings the fast path reads, each checked against rules.py."""

    database_url: str | None = None
    migration_database_url: str | None = None
    environment: str | None = None
    alembic_config: Path = Path("alembic.ini")
    version_table: str = "alembic_version"
    version_table_schema: str | None = None
    seeds_dir: Path | None = None
    seed_on_upgrade: bool = True
    db_connect_timeout_seconds: float = 30.0
    migration_lock_timeout_seconds: float = 600.0
    migration_lock_key: int | None = None
    migration_lock_scope: str = "auto"
    log_format: str = "auto"
    log_level: str = "INFO"
    #: Checked too, but not used by the fast path.
    others: dict[str, Any] = field(default_factory=dict)


def fast_upgrade(overrides: Mapping[str, Any] | None = None) -> UpgradeResult | Handover | None:
    """``upgrade`` to the heads, as far as it can be done without Alembic.

    Returns an UpgradeResult when the database is (or, after waiting for another
    replica, has become) at the heads; a Handover when this process got the lock and
    must run the migrations itself (the full path, with the lock handed over); None
    when only the full path can tell. ``overrides`` are the CLI's flags by settings
    field name (None = not given). A lock timeout is raised (LockTimeout, exit 75).
    """
    started = time.monotonic()
    try:
        settings = lean_settings(os.environ, read_dotenv(Path(".env")), overrides or {})
        log.configure(log_format=settings.log_format, level=settings.log_level)
        return _lean_upgrade(settings, started)
    except LockTimeout:
        raise
    except (LeanUnavailable, MigrateLockError, OSError, ValueError):
        return None


class Handover:
    """The lock, held on the lean connection until the full path is ready to take it.

    In the transaction scope the lean connection holds it inside an open transaction
    (which also keeps a pooler from giving that server connection to anyone else).
    """

    def __init__(self, connection: LeanConnection, key: int, *, in_transaction: bool) -> None:
        self.connection = connection
        self.key = key
        self.in_transaction = in_transaction

    def release(self) -> None:
        """Let go of the lock (the full path takes it next) and close the connection."""
        if self.connection.closed:
            return
        try:
            if self.in_transaction:
                self.connection.execute("ROLLBACK")  # ends the transaction, and the lock
            else:
                release(self.connection, self.key)  # type: ignore[arg-type]
        except LeanUnavailable:
            pass  # the connection died (a timeout, a terminated backend): the lock went with it
        finally:
            self.connection.close()


def lean_settings(
    environ: Mapping[str, str], dotenv: Mapping[str, str], overrides: Mapping[str, Any]
) -> LeanSettings:
    """Read every migrate-lock setting; raise LeanUnavailable unless all are certainly valid."""
    raw: dict[str, str] = {}
    for source in (dotenv, environ):  # the environment beats .env, as in settings.py
        for name in _FIELDS:
            # A field's first variable beats its aliases (ENVIRONMENT before APP_ENV).
            given = next((v for v in _variables(name) if v in source), None)
            if given is not None:
                raw[name] = source[given]
    for name, value in overrides.items():
        if value is not None:
            raw[name] = str(value)
    if overrides.get("database_url"):
        raw["migration_database_url"] = str(overrides["database_url"])
    settings = LeanSettings()
    for name, value in raw.items():
        checked = SETTINGS[_variables(name)[0]][1](value)
        if hasattr(settings, name):
            setattr(settings, name, checked)
        else:
            settings.others[name] = checked
    return settings


def _lean_upgrade(settings: LeanSettings, started: float) -> UpgradeResult | Handover | None:
    files = script_files(settings.alembic_config)
    manifest = read_manifest(files) if files is not None else None
    if manifest is None:
        return None
    url = _migration_url(settings)
    check_database_urls(
        settings.environment,
        {
            "DATABASE_URL": settings.database_url,
            "MIGRATION_DATABASE_URL": settings.migration_database_url,
        },
        staging_checks=settings.others.get("staging_url_checks", True),
        allow_localhost=settings.others.get("allow_localhost_database", False),
    )
    log.add_secret(url.password)
    timeout = int(min(10.0, max(1.0, settings.db_connect_timeout_seconds)))
    connection = LeanConnection.connect(url.libpq, timeout_seconds=timeout)
    try:
        outcome = _check_or_wait(
            connection, settings, manifest.heads, manifest.revisions, started, url
        )
    except BaseException:
        connection.close()
        raise
    if not isinstance(outcome, Handover):
        connection.close()
    return outcome


def _check_or_wait(
    connection: LeanConnection,
    settings: LeanSettings,
    heads: tuple[str, ...],
    known: frozenset[str],
    started: float,
    url: DatabaseUrl,
) -> UpgradeResult | Handover | None:
    db: Any = connection  # the psycopg subset our read-only queries use
    schema = settings.version_table_schema or current_schema(db)
    table = VersionTable(schema, settings.version_table)
    seeds = (
        discover(seeds_dir(settings.seeds_dir, settings.alembic_config))
        if settings.seed_on_upgrade
        else []
    )
    row = db.execute("SELECT current_database()").fetchone()
    database = str(row[0]) if row and row[0] else url.database
    key = settings.migration_lock_key
    key = key if key is not None else lock_key(database, schema, table.name)

    def at_heads(current: tuple[str, ...] | None) -> bool:
        return (
            current is not None
            and set(current) == set(heads)
            and not changed_seeds(db, table, seeds)
        )

    current = database_revisions(db, table)
    if at_heads(current):
        return _done("fast_path", heads, key, 0.0, started)
    if any(revision not in known for revision in current or ()):
        return None  # ahead or unknown: the full path knows the history and the graph
    scope = choose_scope(
        settings.migration_lock_scope,
        host=url.host,
        port=url.port,
        connection=connection,
    )
    # Waiting here, not in the full path: most replicas never need Alembic at all.
    outcome = (wait_for_transaction_lock if scope.transaction else wait_for_lock)(
        db,
        key,
        timeout_seconds=settings.migration_lock_timeout_seconds,
        work_is_done=lambda: at_heads(database_revisions(db, table)),
    )
    if outcome.acquired:
        log.info(
            "lock.acquired",
            lock_key=key,
            wait_ms=round(outcome.waited_seconds * 1000),
            attempts=outcome.attempts,
            **({"scope": "transaction"} if scope.transaction else {}),
        )
        return Handover(connection, key, in_transaction=scope.transaction)
    return _done("waited", heads, key, outcome.waited_seconds, started)


def _done(
    role: Role, current: tuple[str, ...], key: int, waited: float, started: float
) -> UpgradeResult:
    result = UpgradeResult(
        role=role,
        from_revisions=current,
        to_revisions=current,
        applied=(),
        seeded=(),
        lock_key=key,
        wait_ms=round(waited * 1000),
        total_ms=round((time.monotonic() - started) * 1000),
    )
    log.info(
        "migrate.up_to_date",
        role=role,
        from_rev=list(current),
        to_rev=list(current),
        applied=0,
        seeded=0,
        status="at_head",
        wait_ms=result.wait_ms,
        duration_ms=result.total_ms,
        heads_from="manifest",
    )
    return result


def _migration_url(settings: LeanSettings) -> DatabaseUrl:
    raw = settings.migration_database_url or settings.database_url
    if not raw:
        raise LeanUnavailable("no database URL")
    return parse_database_url(raw, libpq_check=_libpq_accepts)


def _libpq_accepts(conninfo: str, variable: str) -> None:
    if not conninfo_is_valid(conninfo):
        raise LeanUnavailable("libpq rejects the URL")


def read_dotenv(path: Path) -> dict[str, str]:
    # The plain KEY=VALUE lines python-dotenv reads; anything fancier (interpolation,
    # multi-line values) is left to the full path.
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _DOTENV_LINE.match(line)
        if not match or "${" in line:
            raise LeanUnavailable(".env line the fast path does not parse")
        value = match.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[match.group(1)] = value
    return values


def _url(value: str) -> str | None:
    return value.strip() or None


def _choice(options: tuple[str, ...], *, upper: bool = False) -> Any:
    def check(value: str) -> str | None:
        cleaned = value.strip().upper() if upper else value.strip().lower()
        if not cleaned and not upper:
            return None
        if cleaned not in options:
            raise LeanUnavailable("not an allowed value")
        return cleaned

    return check


def _float(value: str) -> float:
    if not _FLOAT.match(value):
        raise LeanUnavailable("not a plain non-negative number")
    return float(value)


def _int64(value: str) -> int:
    if not _INTEGER.match(value) or not rules.INT64[0] <= int(value) <= rules.INT64[1]:
        raise LeanUnavailable("not a 64-bit integer")
    return int(value)


def _positive_int(value: str) -> int:
    if not _INTEGER.match(value) or int(value) < 1:
        raise LeanUnavailable("not a positive integer")
    return int(value)


def _bool(value: str) -> bool:
    cleaned = value.strip().lower()
    if cleaned in _TRUE:
        return True
    if cleaned in _FALSE:
        return False
    raise LeanUnavailable("not a boolean")


def _duration(value: str) -> str:
    if not rules.DURATION.match(value):
        raise LeanUnavailable("not a duration")
    return value


def _identifier(value: str) -> str:
    if not rules.IDENTIFIER.match(value):
        raise LeanUnavailable("not an identifier")
    return value


def _path(value: str) -> Path:
    return Path(value)


#: Every variable settings.py reads (a test keeps the two in step), with its field and
#: the check. The first variable of a field is its main name; aliases follow it.
SETTINGS: dict[str, tuple[str, Any]] = {
    "DATABASE_URL": ("database_url", _url),
    "MIGRATION_DATABASE_URL": ("migration_database_url", _url),
    "ENVIRONMENT": ("environment", _choice(rules.ENVIRONMENTS)),
    "APP_ENV": ("environment", _choice(rules.ENVIRONMENTS)),
    "MIGRATION_LOCK_TIMEOUT_SECONDS": ("migration_lock_timeout_seconds", _float),
    "MIGRATION_LOCK_KEY": ("migration_lock_key", _int64),
    "MIGRATION_LOCK_SCOPE": ("migration_lock_scope", _choice(rules.LOCK_SCOPES)),
    "DDL_LOCK_TIMEOUT": ("ddl_lock_timeout", _duration),
    "DDL_STATEMENT_TIMEOUT": ("ddl_statement_timeout", _duration),
    "DDL_IDLE_IN_TRANSACTION_TIMEOUT": ("ddl_idle_in_transaction_timeout", _duration),
    "DB_CONNECT_TIMEOUT_SECONDS": ("db_connect_timeout_seconds", _float),
    "LOG_FORMAT": ("log_format", _choice(rules.LOG_FORMATS)),
    "LOG_LEVEL": ("log_level", _choice(rules.LOG_LEVELS, upper=True)),
    "ALEMBIC_CONFIG": ("alembic_config", _path),
    "VERSION_TABLE": ("version_table", _identifier),
    "VERSION_TABLE_SCHEMA": ("version_table_schema", _identifier),
    "SEEDS_DIR": ("seeds_dir", _path),
    "SEED_ON_UPGRADE": ("seed_on_upgrade", _bool),
    "MIGRATE_ON_START": ("migrate_on_start", _bool),
    "ENTRYPOINT_PASSTHROUGH": ("entrypoint_passthrough", str),
    "CONFIRM_DESTRUCTIVE": ("confirm_destructive", str),
    "STAGING_URL_CHECKS": ("staging_url_checks", _bool),
    "ALLOW_LOCALHOST_DATABASE": ("allow_localhost_database", _bool),
    "BACKUP_DIR": ("backup_dir", _path),
    "BACKUP_KEEP_DAYS": ("backup_keep_days", _float),
    "BACKUP_KEEP_LAST": ("backup_keep_last", _positive_int),
    "BACKUP_BEFORE_UPGRADE": ("backup_before_upgrade", _bool),
    "PG_BIN_DIR": ("pg_bin_dir", _path),
    "SMOKE_EXPECTED_HEADS": ("smoke_expected_heads", str),
    "SMOKE_STAIRWAY_FROM": ("smoke_stairway_from", str),
    "LINT_EXCLUDE_RULES": ("lint_exclude_rules", str),
    "LINT_INCLUDE_RULES": ("lint_include_rules", str),
}


_FIELDS = tuple(dict.fromkeys(name for name, _ in SETTINGS.values()))


def _variables(name: str) -> list[str]:
    return [variable for variable, (field_name, _) in SETTINGS.items() if field_name == name]
