"""Backup and restore with the real pg_dump/pg_restore against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from migrate_lock.backups import prune_backups
from migrate_lock.sandbox.embedded import EmbeddedPostgres

from support import assert_one_line_failure, catalog_snapshot, query, run_cli, spawn


def upgrade(project: Path, url: str, **env: str) -> None:
    result = run_cli(["upgrade"], cwd=project, database_url=url, **env)
    assert result.returncode == 0, result.stderr


def take_backup(project: Path, url: str, *args: str, **env: str) -> dict[str, object]:
    result = run_cli(["backup", "--json", *args], cwd=project, database_url=url, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def databases(url: str) -> list[str]:
    return [str(row[0]) for row in query(url, "SELECT datname FROM pg_database ORDER BY 1")]


def test_backup_then_restore_gives_back_identical_rows(project: Path, database_url: str) -> None:
    """Why: a backup is only worth what its restore gives back."""
    upgrade(project, database_url)
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
        query(database_url, "SELECT 1 FROM pg_tables WHERE schemaname = 'public'")
    )
    assert report["size_bytes"] > 0
    assert catalog_snapshot(database_url) == before
    assert not any("_restore_" in name for name in databases(database_url))


def test_truncated_backup_is_refused_and_the_database_is_untouched(
    project: Path, database_url: str
) -> None:
    """Why: a half-copied file must never replace a working database with a broken one."""
    upgrade(project, database_url)
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


def test_a_file_that_is_not_a_dump_is_refused_before_anything_is_created(
    project: Path, database_url: str
) -> None:
    upgrade(project, database_url)
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

    result = run_cli(["restore", str(backup["path"])], cwd=project, database_url=database_url)

    line = assert_one_line_failure(result, 1)
    assert '"public"."alembic_version"' in line
    assert catalog_snapshot(database_url) == before


def test_restore_keeps_the_marker_of_the_database_restored_into(
    project: Path, database_url: str
) -> None:
    """Why: restoring a test dump must not unprotect the staging database it lands in."""
    upgrade(project, database_url)  # marked test, and so is the dump
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
    assert query(database_url, "SELECT environment FROM migrate_lock_environment") == [("staging",)]


def test_restore_keep_previous_leaves_the_replaced_database_aside(
    project: Path, database_url: str
) -> None:
    """Why: an operator may want the replaced database back after a restore."""
    upgrade(project, database_url)
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


def test_backup_writes_a_verified_file_and_a_latest_link(project: Path, database_url: str) -> None:
    upgrade(project, database_url)

    backup = take_backup(project, database_url, "--dir", "nightly")

    path = Path(str(backup["path"]))
    database = database_url.rsplit("/", 1)[1]
    assert path.parent == project / "nightly"
    assert re.fullmatch(rf"{database}-\d{{8}}T\d{{6}}Z\.dump", path.name)
    assert (project / "nightly" / f"{database}-latest.dump").resolve() == path
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


def test_upgrade_backup_first_backs_up_before_migrating_and_not_at_head(
    project: Path, database_url: str
) -> None:
    """Why: the pre-migration state is the one worth having when a migration goes wrong."""
    upgrade(project, database_url)
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
    path = folder / f"{database}-{(now - age).strftime('%Y%m%dT%H%M%SZ')}.dump"
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
    unrelated = tmp_path / "shop-manual-copy.dump"
    unrelated.write_bytes(b"PGDMP")
    os.utime(unrelated, (0, 0))

    deleted = prune_backups(tmp_path, "shop", keep_days=7, keep_last=1, now=now)

    assert deleted == [old.name]
    assert all(path.exists() for path in [*keep, other, unrelated])


def test_backup_command_applies_retention_after_a_verified_backup(
    project: Path, database_url: str
) -> None:
    upgrade(project, database_url)
    database = database_url.rsplit("/", 1)[1]
    folder = project / "backups"
    folder.mkdir()
    now = datetime.now(timezone.utc)
    old = [_named_backup(folder, database, timedelta(days=d), now) for d in (10, 20, 30)]

    backup = take_backup(project, database_url, "--keep-last", "2", "--keep-days", "7")

    assert sorted(backup["pruned"]) == sorted(p.name for p in old[1:])  # type: ignore[arg-type]
    assert old[0].exists() and Path(str(backup["path"])).exists()


def test_restore_keeps_the_grants_and_settings_of_the_database_object(
    project: Path, database_url: str
) -> None:
    """Why: a dump has no database-level GRANTs or settings; losing them locks the app out."""
    upgrade(project, database_url)
    database = database_url.rsplit("/", 1)[1]
    role = f"app_{database[-8:]}"
    backup = take_backup(project, database_url)
    query(database_url, f'CREATE ROLE "{role}" LOGIN')
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
        query(database_url, f'DROP ROLE "{role}"')


def test_sigterm_during_a_backup_stops_pg_dump_and_leaves_no_file(
    project: Path, database_url: str
) -> None:
    """Why: a backup job stopped by its scheduler must not leave a dump that looks finished."""
    upgrade(project, database_url)
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
