"""Backup and restore with the real pg_dump/pg_restore against a real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from conftest import Server, fresh_database

from migrate_lock import backups
from migrate_lock.backups import prune_backups
from migrate_lock.dsn import parse_database_url
from migrate_lock.errors import MigrateLockError
from migrate_lock.sandbox.embedded import EmbeddedPostgres
from migrate_lock.settings import load_settings

from support import (
    APP_ROLE,
    OTHER_ROLE,
    OWNER_WITHOUT_CREATEDB,
    TEST_PASSWORD,
    assert_one_line_failure,
    catalog_snapshot,
    cli_env,
    query,
    run_cli,
    spawn,
)


def upgrade(project: Path, url: str, **env: str) -> None:
    result = run_cli(["upgrade"], cwd=project, database_url=url, **env)
    assert result.returncode == 0, result.stderr


def take_backup(project: Path, url: str, *args: str, **env: str) -> dict[str, object]:
    result = run_cli(["backup", "--json", *args], cwd=project, database_url=url, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def databases(url: str) -> list[str]:
    return [str(row[0]) for row in query(url, "SELECT datname FROM pg_database ORDER BY 1")]


def stem(database: str) -> str:
    """What backup names a database's files after: a readable part and a hash of the name."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", database)
    return f"{readable}-{hashlib.sha256(database.encode()).hexdigest()[:12]}"


@pytest.mark.usefixtures("at_head")
def test_backup_then_restore_gives_back_identical_rows(project: Path, database_url: str) -> None:
    """Why: a backup is only worth what its restore gives back."""
    query(
        database_url,
        "INSERT INTO leagues (name) SELECT 'League ' || g FROM generate_series(1, 500) g",
    )
    before = catalog_snapshot(database_url)
    backup = take_backup(project, database_url)
    query(database_url, "DELETE FROM leagues WHERE mod(id, 2) = 0; CREATE TABLE later (id int)")

    result = run_cli(
        ["restore", str(backup["path"]), "--json"], cwd=project, database_url=database_url
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["revisions"] == ["0021"]
    assert report["tables"] == len(
        query(
            database_url,
            "SELECT 1 FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
        )
    )
    assert report["size_bytes"] > 0
    assert catalog_snapshot(database_url) == before
    assert not any("_restore_" in name for name in databases(database_url))


@pytest.mark.usefixtures("at_head")
def test_truncated_backup_is_refused_and_the_database_is_untouched(
    project: Path, database_url: str
) -> None:
    """Why: a half-copied file must never replace a working database with a broken one."""
    query(
        database_url,
        "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g",
    )
    backup = Path(str(take_backup(project, database_url)["path"]))
    truncated = project / "truncated.dump"
    truncated.write_bytes(backup.read_bytes()[: backup.stat().st_size * 4 // 5])
    # The table of contents is intact, so only restoring (not --list) finds the damage.
    listing = subprocess.run(
        [str(EmbeddedPostgres().bin_dir / "pg_restore"), "--list", str(truncated)],
        capture_output=True,
        check=False,
    )
    assert listing.returncode == 0
    before = catalog_snapshot(database_url)

    result = run_cli(["restore", str(truncated)], cwd=project, database_url=database_url)

    line = assert_one_line_failure(result, 1)
    assert "could not be restored" in line and "not touched" in line
    assert catalog_snapshot(database_url) == before
    assert not any("_restore_" in name for name in databases(database_url))


@pytest.mark.usefixtures("at_head")
def test_a_file_that_is_not_a_dump_is_refused_before_anything_is_created(
    project: Path, database_url: str
) -> None:
    (project / "notes.dump").write_text("not a dump\n")
    names = databases(database_url)

    result = run_cli(["restore", "notes.dump"], cwd=project, database_url=database_url)

    line = assert_one_line_failure(result, 1)
    assert "not a readable pg_dump archive" in line
    assert databases(database_url) == names


def test_restore_of_a_dump_without_a_version_table_is_refused(
    project: Path, database_url: str
) -> None:
    """Why: a dump of some other database must not replace this application's."""
    query(database_url, "CREATE TABLE unrelated (id int)")
    backup = take_backup(project, database_url)
    upgrade(project, database_url)
    before = catalog_snapshot(database_url)
    database = database_url.rsplit("/", 1)[1]

    result = run_cli(
        ["restore", str(backup["path"]), "--confirm-destructive", database],
        cwd=project,
        database_url=database_url,
    )

    line = assert_one_line_failure(result, 1)
    assert '"public"."alembic_version"' in line
    assert catalog_snapshot(database_url) == before


@pytest.mark.usefixtures("at_head")  # marked test, and so is the dump
def test_restore_keeps_the_marker_of_the_database_restored_into(
    project: Path, database_url: str
) -> None:
    """Why: restoring a test dump must not unprotect the staging database it lands in."""
    backup = take_backup(project, database_url)
    assert (
        run_cli(["env", "set", "staging"], cwd=project, database_url=database_url).returncode == 0
    )
    database = database_url.rsplit("/", 1)[1]

    result = run_cli(
        ["restore", str(backup["path"]), "--confirm-destructive", database],
        cwd=project,
        database_url=database_url,
    )

    assert result.returncode == 0, result.stderr
    shown = run_cli(["env", "show", "--json"], cwd=project, database_url=database_url)
    assert json.loads(shown.stdout)["marker"] == "staging", shown.stdout + shown.stderr


@pytest.mark.usefixtures("at_head")
def test_restore_keep_previous_leaves_the_replaced_database_aside(
    project: Path, database_url: str
) -> None:
    """Why: an operator may want the replaced database back after a restore."""
    backup = take_backup(project, database_url)
    query(database_url, "CREATE TABLE made_after_backup (id int)")

    result = run_cli(
        ["restore", str(backup["path"]), "--keep-previous", "--json"],
        cwd=project,
        database_url=database_url,
    )

    assert result.returncode == 0, result.stderr
    previous = json.loads(result.stdout)["previous"]
    old_url = database_url.rsplit("/", 1)[0] + "/" + previous
    try:
        assert query(old_url, "SELECT to_regclass('made_after_backup') IS NOT NULL") == [(True,)]
        assert query(database_url, "SELECT to_regclass('made_after_backup')") == [(None,)]
    finally:
        query(
            database_url.rsplit("/", 1)[0] + "/postgres", f'DROP DATABASE "{previous}" WITH (FORCE)'
        )


@pytest.mark.usefixtures("at_head")
def test_backup_writes_a_verified_file_and_a_latest_link(project: Path, database_url: str) -> None:
    backup = take_backup(project, database_url, "--dir", "nightly")

    path = Path(str(backup["path"]))
    database = database_url.rsplit("/", 1)[1]
    assert path.parent == project / "nightly"
    assert re.fullmatch(rf"{stem(database)}-\d{{8}}T\d{{6}}Z\.dump", path.name)
    assert (project / "nightly" / f"{stem(database)}-latest.dump").resolve() == path
    assert [p.name for p in (project / "nightly").iterdir() if p.name.startswith(".")] == []
    assert backup["revisions"] == ["0021"]


def test_backup_uses_a_client_as_new_as_the_server_when_path_has_an_older_one(
    project: Path, database_url: str
) -> None:
    """Why: distributions ship older pg_dump than the server; the dump must still work."""
    server_major = int(str(query(database_url, "SHOW server_version_num")[0][0])) // 10000

    backup = take_backup(project, database_url)

    client_major = int(re.search(r"\((\d+)", str(backup["client"])).group(1))  # type: ignore[union-attr]
    assert client_major >= server_major


def _older_client_dir(server_major: int) -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    on_path = shutil.which("pg_dump")
    if on_path:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        version = subprocess.run(
            [str(directory / "pg_dump"), "--version"], capture_output=True, text=True, check=False
        ).stdout
        match = re.search(r"\(PostgreSQL\) (\d+)", version)
        if match and int(match.group(1)) < server_major:
            return directory
    return None


def test_a_client_older_than_the_server_is_refused(project: Path, database_url: str) -> None:
    """Why: an old pg_dump fails late and obscurely against a newer server; say it first."""
    server_major = int(str(query(database_url, "SHOW server_version_num")[0][0])) // 10000
    older = _older_client_dir(server_major)
    if older is None:
        pytest.skip(f"no pg_dump older than PostgreSQL {server_major} installed on this machine")

    result = run_cli(["backup"], cwd=project, database_url=database_url, PG_BIN_DIR=str(older))

    line = assert_one_line_failure(result, 78)
    assert f"PostgreSQL {server_major} or newer" in line and "older than the server" in line
    assert not (project / "backups").exists() or list((project / "backups").iterdir()) == []


@pytest.mark.usefixtures("at_head")
def test_upgrade_backup_first_backs_up_before_migrating_and_not_at_head(
    project: Path, database_url: str
) -> None:
    """Why: the pre-migration state is the one worth having when a migration goes wrong."""
    assert run_cli(["downgrade", "0020"], cwd=project, database_url=database_url).returncode == 0

    first = run_cli(["upgrade", "--backup-first"], cwd=project, database_url=database_url)
    second = run_cli(["upgrade", "--backup-first"], cwd=project, database_url=database_url)

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "backup.done" in first.stderr and "backup.done" not in second.stderr
    dumps = [p for p in (project / "backups").glob("*.dump") if not p.is_symlink()]
    assert len(dumps) == 1
    listing = subprocess.run(
        [
            str(EmbeddedPostgres().bin_dir / "pg_restore"),
            "--data-only",
            "-t",
            "alembic_version",
            "-f",
            "-",
            str(dumps[0]),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "0020" in listing and "0021" not in listing


def _named_backup(folder: Path, database: str, age: timedelta, now: datetime) -> Path:
    path = folder / f"{stem(database)}-{(now - age).strftime('%Y%m%dT%H%M%SZ')}.dump"
    path.write_bytes(b"PGDMP")
    return path


def test_retention_always_keeps_the_newest_n_whatever_their_age(tmp_path: Path) -> None:
    """Why: a host that stopped backing up for a week must not lose its last backups too."""
    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    ages = [timedelta(days=d) for d in (30, 31, 32, 40)]
    files = [_named_backup(tmp_path, "shop", age, now) for age in ages]

    deleted = prune_backups(tmp_path, "shop", keep_days=7, keep_last=3, now=now)

    assert deleted == [files[3].name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in files[:3])


def test_retention_deletes_by_age_only_among_this_databases_verified_backups(
    tmp_path: Path,
) -> None:
    """Why: retention must never touch files it did not write and verify."""
    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    keep = [_named_backup(tmp_path, "shop", timedelta(days=d), now) for d in (0, 1, 6)]
    old = _named_backup(tmp_path, "shop", timedelta(days=8), now)
    other = _named_backup(tmp_path, "billing", timedelta(days=90), now)
    unrelated = tmp_path / f"{stem('shop')}-manual-copy.dump"
    unrelated.write_bytes(b"PGDMP")
    os.utime(unrelated, (0, 0))

    deleted = prune_backups(tmp_path, "shop", keep_days=7, keep_last=1, now=now)

    assert deleted == [old.name]
    assert all(path.exists() for path in [*keep, other, unrelated])


@pytest.mark.usefixtures("at_head")
def test_backup_command_applies_retention_after_a_verified_backup(
    project: Path, database_url: str
) -> None:
    database = database_url.rsplit("/", 1)[1]
    folder = project / "backups"
    folder.mkdir()
    now = datetime.now(timezone.utc)
    old = [_named_backup(folder, database, timedelta(days=d), now) for d in (10, 20, 30)]

    backup = take_backup(project, database_url, "--keep-last", "2", "--keep-days", "7")

    assert sorted(backup["pruned"]) == sorted(p.name for p in old[1:])  # type: ignore[arg-type]
    assert old[0].exists() and Path(str(backup["path"])).exists()


@pytest.mark.usefixtures("at_head")
def test_restore_keeps_the_grants_and_settings_of_the_database_object(
    pg_server: Server, project: Path, database_url: str
) -> None:
    """Why: a dump has no database-level GRANTs or settings; losing them locks the app out."""
    database = database_url.rsplit("/", 1)[1]
    role = f"app_{database[-8:]}"
    backup = take_backup(project, database_url)
    admin = pg_server.admin(database)  # a superuser creates roles
    query(admin, f'CREATE ROLE "{role}" LOGIN')
    try:
        query(database_url, f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC')
        query(database_url, f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
        query(database_url, f"ALTER DATABASE \"{database}\" SET statement_timeout = '5s'")
        query(database_url, f'ALTER DATABASE "{database}" SET search_path = "$user", public, extra')
        acl = "SELECT datacl::text FROM pg_database WHERE datname = current_database()"
        settings = (
            "SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d"
            " ON d.oid = s.setdatabase WHERE d.datname = current_database()"
        )
        expected = (query(database_url, acl), query(database_url, settings))

        result = run_cli(["restore", str(backup["path"])], cwd=project, database_url=database_url)

        assert result.returncode == 0, result.stderr
        assert (query(database_url, acl), query(database_url, settings)) == expected
    finally:
        query(database_url, f'REVOKE ALL ON DATABASE "{database}" FROM "{role}"')
        query(admin, f'DROP ROLE "{role}"')


@pytest.mark.usefixtures("at_head")
def test_sigterm_during_a_backup_stops_pg_dump_and_leaves_no_file(
    project: Path, database_url: str
) -> None:
    """Why: a backup job stopped by its scheduler must not leave a dump that looks finished."""
    dumping = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'migrate-lock backup' AND wait_event_type = 'Lock'"
    )
    with psycopg.connect(database_url) as blocker:
        # pg_dump waits for this lock, so the signal surely arrives in the middle of the dump.
        blocker.execute("LOCK TABLE leagues IN ACCESS EXCLUSIVE MODE")
        process = spawn(["backup"], cwd=project, database_url=database_url)
        deadline = time.monotonic() + 30
        while query(database_url, dumping) == [(0,)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert query(database_url, dumping) == [(1,)]

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)

    assert process.returncode == 143, stderr
    assert list((project / "backups").iterdir()) == []
    sessions = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'migrate-lock backup'"
    )
    deadline = time.monotonic() + 10
    while query(database_url, sessions) != [(0,)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert query(database_url, sessions) == [(0,)]


# --- issue 13: names, concurrency, permissions, credentials -------------------------------


def test_backups_of_two_databases_with_the_same_readable_name_never_touch_each_other(
    pg_server: Server, project: Path
) -> None:
    """Why: café and caf_ both became caf_-<time>.dump; caf_'s retention deleted café's."""
    suffix = uuid.uuid4().hex[:8]
    names = [f"café_{suffix}", f"caf__{suffix}"]
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}" OWNER "{APP_ROLE}"')
    try:
        urls = [pg_server.url(name) for name in names]
        cafe = Path(str(take_backup(project, urls[0])["path"]))

        other = take_backup(project, urls[1], "--keep-last", "1", "--keep-days", "0")

        assert other["pruned"] == [] and Path(str(other["path"])) != cafe
        assert cafe.exists()
        assert (project / "backups" / f"{stem(names[0])}-latest.dump").resolve() == cafe
    finally:
        with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_three_backups_started_in_the_same_second_each_keep_a_verified_file(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why: backups started in the same second shared a temporary file: 2 of 3 failed, and
    one pg_dump could write into another's verified file."""
    monkeypatch.setenv("ENVIRONMENT", "test")
    query(database_url, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
    frozen = datetime.now(timezone.utc).replace(microsecond=0)

    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> FrozenClock:
            return cls.fromtimestamp(frozen.timestamp(), tz)

    monkeypatch.setattr(backups, "datetime", FrozenClock)
    # All three name their files at the same moment, once each has found its client.
    together = threading.Barrier(3, timeout=60)
    find_client = backups.find_client

    def client_then_wait(*args: Any) -> backups.PgClient:
        found = find_client(*args)
        together.wait()
        return found

    monkeypatch.setattr(backups, "find_client", client_then_wait)
    settings = load_settings(database_url=database_url)
    folder = tmp_path / "backups"

    with ThreadPoolExecutor(3) as pool:
        runs = [pool.submit(backups.backup, settings=settings, directory=folder) for _ in range(3)]
        paths = {run.result(timeout=120).path for run in runs}

    assert len(paths) == 3
    pg_restore = str(EmbeddedPostgres().bin_dir / "pg_restore")
    for path in paths:
        listing = subprocess.run(
            [pg_restore, "--list", str(path)], capture_output=True, text=True, check=False
        )
        assert listing.returncode == 0 and " TABLE DATA public t " in listing.stdout
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_dumps_are_0600_in_folders_we_create_0700_whatever_the_umask(
    project: Path, database_url: str
) -> None:
    """Why: a dump is production data; it was 0644 in a 0755 folder."""
    result = subprocess.run(
        [sys.executable, "-m", "migrate_lock", "backup", "--json", "--dir", "outer/inner"],
        cwd=project,
        env=cli_env(database_url),
        capture_output=True,
        text=True,
        umask=0,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    path = Path(json.loads(result.stdout)["path"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((project / "outer").stat().st_mode) == 0o700
    assert stat.S_IMODE((project / "outer" / "inner").stat().st_mode) == 0o700


def without_password(url: str) -> str:
    return url.replace(f":{TEST_PASSWORD}@", "@")


def test_backup_upgrade_backup_first_and_restore_work_with_pgpassword(
    project: Path, at_head: str
) -> None:
    """Why: a URL without a password plus PGPASSWORD works for upgrade, but pg_dump and
    pg_restore lost PGPASSWORD: backup, upgrade --backup-first and restore failed."""
    url = without_password(at_head)
    assert TEST_PASSWORD not in url

    backup = take_backup(project, url, PGPASSWORD=TEST_PASSWORD)
    assert run_cli(["downgrade", "0020"], cwd=project, database_url=at_head).returncode == 0
    first = run_cli(
        ["upgrade", "--backup-first"], cwd=project, database_url=url, PGPASSWORD=TEST_PASSWORD
    )
    restored = run_cli(
        ["restore", str(backup["path"]), "--json"],
        cwd=project,
        database_url=url,
        PGPASSWORD=TEST_PASSWORD,
    )

    assert first.returncode == 0 and "backup.done" in first.stderr, first.stderr
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["revisions"] == ["0021"]


def test_pgpassfile_and_pgservice_reach_pg_dump(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    """Why: every libpq credential source must reach the client tools, as it reaches us."""
    url = urlsplit(database_url)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{url.hostname}:{url.port}:*:{APP_ROLE}:{TEST_PASSWORD}\n")
    passfile.chmod(0o600)
    services = tmp_path / "pg_service.conf"
    services.write_text(
        f"[app]\nhost={url.hostname}\nport={url.port}\nuser={APP_ROLE}\n"
        f"password={TEST_PASSWORD}\ndbname={url.path.lstrip('/')}\n"
    )

    take_backup(project, without_password(database_url), PGPASSFILE=str(passfile))
    take_backup(
        project,
        f"postgresql:///{url.path.lstrip('/')}?service=app",
        PGSERVICEFILE=str(services),
    )


@pytest.mark.unit
def test_the_client_tools_get_every_credential_but_never_on_their_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why: argv is world-readable (/proc/PID/cmdline); the environment is not."""
    monkeypatch.setenv("PGPASSWORD", "from-the-environment")
    monkeypatch.setenv("PGPASSFILE", "/secrets/pgpass")
    monkeypatch.setenv("PGSERVICE", "app")
    monkeypatch.setenv("PGSSLCERT", "/certs/client.crt")
    bare = parse_database_url("postgresql://app@db/shop?sslmode=verify-full&sslkey=/certs/k.key")
    with_password = parse_database_url("postgresql://app:s3cr%40t@db/shop")

    conninfo, env = backups._libpq_target(bare, "migrate-lock backup")
    assert env["PGPASSWORD"] == "from-the-environment"
    assert env["PGPASSFILE"] == "/secrets/pgpass" and env["PGSERVICE"] == "app"
    assert env["PGSSLCERT"] == "/certs/client.crt"
    assert "sslkey=/certs/k.key" in conninfo and "sslmode=verify-full" in conninfo

    conninfo, env = backups._libpq_target(with_password, "migrate-lock backup")
    assert "s3cr" not in conninfo and "password" not in conninfo
    assert env["PGPASSWORD"] == "s3cr@t"


# --- issue 13: restore as a managed database's owner ---------------------------------------


def test_restore_as_an_owner_without_createdb_is_refused_saying_what_is_missing(
    pg_server: Server, project: Path
) -> None:
    """Why: without CREATEDB, restore failed half-way with a 'bug' line; say it first."""
    with fresh_database(pg_server, owner=OWNER_WITHOUT_CREATEDB) as url:
        query(url, "CREATE TABLE t (id int)")
        backup = take_backup(project, url)
        names, before = databases(url), catalog_snapshot(url)

        result = run_cli(["restore", str(backup["path"])], cwd=project, database_url=url)

        line = assert_one_line_failure(result, 78)
        assert "CREATEDB" in line and OWNER_WITHOUT_CREATEDB in line
        assert "nothing was changed" in line
        assert databases(url) == names and catalog_snapshot(url) == before


def test_restore_with_another_roles_session_connected_is_refused_listing_it(
    pg_server: Server, project: Path, at_head: str
) -> None:
    """Why: the owner may not close other roles' sessions: restore failed with 'permission
    denied to terminate process' and a 'bug' line."""
    backup = take_backup(project, at_head)
    database = at_head.rsplit("/", 1)[1]
    other = pg_server.url(database, OTHER_ROLE)
    with psycopg.connect(other, application_name="monitoring-agent") as session:
        pid = session.info.backend_pid
        names, before = databases(at_head), catalog_snapshot(at_head)

        result = run_cli(["restore", str(backup["path"])], cwd=project, database_url=at_head)

        line = assert_one_line_failure(result, 3)
        assert f"pid {pid} " in line and OTHER_ROLE in line and "monitoring-agent" in line
        assert "client " in line and "nothing was changed" in line
        assert session.execute("SELECT 1").fetchone() == (1,)
        assert databases(at_head) == names and catalog_snapshot(at_head) == before


class FailingStep:
    """The maintenance connection restore swaps with, failing the statement that matches
    ``pattern`` (or, with ``intruder``, first letting a superuser session into the
    scratch database, as a monitoring agent would)."""

    def __init__(
        self, connection: psycopg.Connection[Any], pattern: str, intruder: str | None
    ) -> None:
        self.connection, self.pattern, self.intruder = connection, pattern, intruder
        self.sessions: list[psycopg.Connection[Any]] = []
        self.fired = False

    def execute(self, statement: Any, *args: Any) -> Any:
        text = statement if isinstance(statement, str) else statement.as_string(self.connection)
        if not self.fired and re.search(self.pattern, text):
            self.fired = True
            if self.intruder is None:
                raise psycopg.errors.QueryCanceled(f"injected failure at: {text}")
            scratch = self.connection.execute(
                r"SELECT datname FROM pg_database WHERE datname LIKE '%\_restore\_%'"
            ).fetchone()
            assert scratch is not None
            self.sessions.append(psycopg.connect(self.intruder + str(scratch[0])))
        return self.connection.execute(statement, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)


SCRATCH, OLD, ASIDE = r'"\w+_restore_[0-9a-f]+"', r'"t_[0-9a-f]{16}"', r'"\w+_replaced_[0-9a-f]+"'
STEPS = {
    "close the scratch database": rf"ALTER DATABASE {SCRATCH} ALLOW_CONNECTIONS false",
    "close the database": rf"ALTER DATABASE {OLD} ALLOW_CONNECTIONS false",
    "terminate its sessions": r"pg_terminate_backend",
    "rename it aside": rf"ALTER DATABASE {OLD} RENAME TO {ASIDE}",
    "rename the scratch database into place": rf"ALTER DATABASE {SCRATCH} RENAME TO {OLD}",
    "open the restored database": rf"ALTER DATABASE {OLD} ALLOW_CONNECTIONS true",
}


@pytest.mark.parametrize("step", [*STEPS, "a superuser session on the scratch database"])
def test_a_failure_at_any_step_of_the_swap_leaves_the_database_in_place(
    pg_server: Server,
    project: Path,
    at_head: str,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    """Why: restore dropped the old database first, then a session on the scratch one (a
    monitoring agent) made the rename fail: 'the old database is gone'."""
    monkeypatch.setenv("ENVIRONMENT", "test")
    monkeypatch.chdir(project)
    settings = load_settings(database_url=at_head)
    backup = backups.backup(settings=settings, directory=project / "backups")
    query(at_head, "CREATE TABLE made_after_backup (id int)")
    before, names = catalog_snapshot(at_head), databases(at_head)
    intruder = None
    if step not in STEPS:  # needs a superuser: the application's role may not close it
        intruder = pg_server.admin("postgres").rsplit("/", 1)[0] + "/"
    pattern = STEPS.get(step, r"ALLOW_CONNECTIONS false")
    connect_maintenance = backups._maintenance_connection
    wrapped: list[FailingStep] = []

    def maintenance(*args: Any) -> Any:
        wrapped.append(FailingStep(connect_maintenance(*args), pattern, intruder))
        return wrapped[-1]

    monkeypatch.setattr(backups, "_maintenance_connection", maintenance)
    try:
        with pytest.raises(MigrateLockError):
            backups.restore(backup.path, settings=settings)
    finally:
        for session in wrapped[0].sessions:
            session.close()

    assert catalog_snapshot(at_head) == before
    assert query(at_head, "SELECT to_regclass('made_after_backup') IS NOT NULL") == [(True,)]
    left = [name for name in databases(at_head) if name not in names]
    for name in left:  # the scratch database the intruder kept us from dropping
        query(pg_server.admin("postgres"), f'DROP DATABASE "{name}" WITH (FORCE)')
    assert len(left) == (1 if intruder else 0)


def test_restore_through_a_url_that_names_the_database_in_its_query_uses_the_scratch_one(
    project: Path, at_head: str
) -> None:
    """Why: libpq lets ?dbname= override the path, so the scratch database's URL still
    named the live database: the dump was restored into it, and the swap ran from it."""
    backup = take_backup(project, at_head)
    query(at_head, "CREATE TABLE made_after_backup (id int)")
    server, database = at_head.rsplit("/", 1)
    url = f"{server}/?dbname={database}"

    result = run_cli(["restore", str(backup["path"])], cwd=project, database_url=url)

    assert result.returncode == 0, result.stderr
    assert query(at_head, "SELECT to_regclass('made_after_backup')") == [(None,)]
    assert not any("_restore_" in name for name in databases(at_head))
