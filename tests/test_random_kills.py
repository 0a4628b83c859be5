"""Random kills: SIGKILL the migrator at a random moment of a 20-revision upgrade.

A replica killed mid-migration (the OOM killer, a lost node, ``kill -9``) gets no chance
to roll back or unlock: the server must. Each trial starts a real ``migrate-lock
upgrade`` on a fresh database, SIGKILLs it a random time after ``migrate.start``, then
checks from another connection that the lock went with the session and that the
database is exactly at some revision (that revision's schema and data, each revision
logged once); then the next run must apply exactly the rest.

Every revision pauses ``PAUSE_SECONDS`` after its first statement. A trial waits for a
random number (0 to 21) of ``migrate.revision`` events, then a random part of one
revision's time (a full run's time from ``migrate.start`` to ``migrate.done``, measured
once per worker and mode, over 21): so the kill lands in any revision, in a statement,
between two, between revisions, in the bookkeeping or the commit, paced by the run itself
however loaded the machine is. Each batch has its own seed; a failure names the seed, the
trial and where it killed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from conftest import Server, fresh_database

from migrate_lock.dsn import parse_database_url
from migrate_lock.migrate import upgrade
from migrate_lock.sandbox.example import applied_counts, write_example_project
from migrate_lock.settings import Settings

from pgbouncer import pgbouncer
from support import assert_no_secret, query, spawn

REVISIONS = [f"{number:04d}" for number in range(1, 22)]
HEAD = REVISIONS[-1]
PAUSE_SECONDS = 0.005
#: Batches per mode (10 trials each, seeds 7100+, 7200+, 7300+). The suite runs 2, 2 and 1
#: (50 kills, ~40 s on 2 cores); a soak run asks for more: RANDOM_KILL_BATCHES=10 (220 kills).
BATCHES = int(os.environ.get("RANDOM_KILL_BATCHES", "2"))
TRIALS_PER_BATCH = 10
#: Batches of the same trials behind a real PgBouncer (transaction pooling).
POOLED_BATCHES = max(1, BATCHES // 2)
#: How long the server may take to notice the dead client and end its session. A
#: session killed mid-statement is noticed when the statement ends (a few ms here) or
#: at the latest by client_connection_check_interval (2 s, set by prepare_session).
RELEASE_BOUND_SECONDS = 10.0
#: The schema objects migrate-lock writes after Alembic commits, not part of a revision.
OUR_OWN = "migrate\\_lock\\_%"

Snapshot = dict[str, object]


@dataclass(frozen=True)
class Upgrade:
    """A project to migrate, and how long its full run lasts after ``migrate.start``.

    With ``pooler_port``, the killed replica connects through that PgBouncer.
    """

    project: Path
    window: float
    pooler_port: int | None = None

    def replica_url(self, url: str) -> str:
        if self.pooler_port is None:
            return url
        direct = parse_database_url(url)
        return url.replace(f"@{direct.host}:{direct.port}/", f"@127.0.0.1:{self.pooler_port}/")


@dataclass(frozen=True)
class Kill:
    """What one trial found after its SIGKILL."""

    where: str
    exit_code: int
    revision: str | None
    lock_released_after: float

    @property
    def mid_run(self) -> bool:
        return self.revision != HEAD


@pytest.mark.slow
def test_a_migrator_killed_in_its_one_transaction_leaves_no_revision_or_head(
    pg_server: Server,
    one_transaction: Upgrade,
    references: dict[str | None, Snapshot],
    batch: int,
) -> None:
    """Why: with one transaction for the run, a kill must never leave part of it behind;
    the database is where it started or at head, and the next run finishes the job."""
    seed = 7_100 + batch
    kills = [
        _kill_at_random(pg_server, one_transaction, references, seed, trial)
        for trial in range(TRIALS_PER_BATCH)
    ]

    _report("one transaction", seed, kills)
    for kill in kills:
        assert kill.revision in (None, HEAD), f"{kill.where}: the run was half applied"
    _assert_most_kills_landed_mid_run(kills)


@pytest.mark.slow
def test_a_migrator_killed_with_a_transaction_per_migration_leaves_a_whole_revision(
    pg_server: Server,
    per_migration: Upgrade,
    references: dict[str | None, Snapshot],
    batch: int,
) -> None:
    """Why: with transaction_per_migration, a kill keeps the revisions already committed
    and none of the one it was in; the next run applies exactly the rest."""
    seed = 7_200 + batch
    kills = [
        _kill_at_random(pg_server, per_migration, references, seed, trial)
        for trial in range(TRIALS_PER_BATCH)
    ]

    _report("transaction per migration", seed, kills)
    _assert_most_kills_landed_mid_run(kills)
    # Revisions commit one by one, so kills also leave the database between the ends.
    between = [kill for kill in kills if kill.revision not in (None, HEAD)]
    assert between, f"seed={seed}: no kill left an intermediate revision: {_summary(kills)}"


@pytest.mark.slow
@pytest.mark.parametrize("pooled_batch", range(POOLED_BATCHES), ids=lambda b: f"batch{b}")
def test_a_migrator_killed_behind_pgbouncer_leaves_no_revision_or_head_and_no_lock(
    pg_server: Server,
    behind_pgbouncer: Upgrade,
    references: dict[str | None, Snapshot],
    pooled_batch: int,
) -> None:
    """Why: behind a transaction pooler the lock is the transaction's, and the pooler, not
    the server, sees the client die; nothing may stay locked or half applied. The project
    asks for transaction_per_migration: the transaction scope runs it as one transaction."""
    seed = 7_300 + pooled_batch
    kills = [
        _kill_at_random(pg_server, behind_pgbouncer, references, seed, trial)
        for trial in range(TRIALS_PER_BATCH)
    ]

    _report("behind PgBouncer, transaction scope", seed, kills)
    for kill in kills:
        assert kill.revision in (None, HEAD), f"{kill.where}: the run was half applied"
    _assert_most_kills_landed_mid_run(kills)


@pytest.fixture(params=range(BATCHES), ids=lambda batch: f"batch{batch}")
def batch(request: pytest.FixtureRequest) -> int:
    """Batches of trials, so pytest-xdist spreads them over its workers."""
    return int(request.param)


@pytest.fixture(scope="module")
def one_transaction(pg_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Upgrade:
    """The example project as scaffolded: one transaction for the whole run."""
    project = tmp_path_factory.mktemp("one-transaction") / "project"
    write_example_project(project, len(REVISIONS), pause_seconds=PAUSE_SECONDS)
    return Upgrade(project, _measure_window(pg_server, project))


@pytest.fixture(scope="module")
def per_migration(pg_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Upgrade:
    """The example project with ``transaction_per_migration=True`` in its env.py."""
    project = tmp_path_factory.mktemp("per-migration") / "project"
    write_example_project(project, len(REVISIONS), pause_seconds=PAUSE_SECONDS)
    env = project / "migrations" / "env.py"
    text = env.read_text()
    line = '        on_version_apply=config.attributes.get("on_version_apply"),\n'
    assert text.count(line) == 1, "the template's env.py changed: update this fixture"
    env.write_text(text.replace(line, line + "        transaction_per_migration=True,\n"))
    return Upgrade(project, _measure_window(pg_server, project))


@pytest.fixture(scope="module")
def behind_pgbouncer(per_migration: Upgrade, pg_server: Server) -> Iterator[Upgrade]:
    """The per-migration project, its replicas connecting through a transaction pool of 4."""
    with pgbouncer(pg_server.url("postgres"), pool_size=4) as (port, _log):
        yield Upgrade(per_migration.project, per_migration.window, pooler_port=port)


@pytest.fixture(scope="module")
def references(
    pg_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> dict[str | None, Snapshot]:
    """The snapshot of each revision (None: no revision yet), upgrading one at a time.

    In-process (the Python API) rather than 21 CLI runs: the same protocol, a few
    seconds per worker instead of about fifteen.
    """
    project = tmp_path_factory.mktemp("reference") / "project"
    write_example_project(project, len(REVISIONS))
    snapshots: dict[str | None, Snapshot] = {}
    with fresh_database(pg_server) as url:
        snapshots[None] = _snapshot(url)
        for revision in REVISIONS:
            upgrade(revision, settings=_settings(url, project))
            snapshots[revision] = _snapshot(url)
    return snapshots


def _kill_at_random(
    server: Server,
    subject: Upgrade,
    references: dict[str | None, Snapshot],
    seed: int,
    trial: int,
) -> Kill:
    """One trial: kill, check the database the kill left, run again, check the result."""
    rng = random.Random(seed * 1000 + trial)
    # Paced by the run itself (its migrate.revision events), so a loaded machine that
    # slows the run down (or a calibration that ran slower than the trials) cannot push
    # the kills past its end: wait for ``applied`` revisions, then a random part of one.
    applied = rng.randrange(len(REVISIONS) + 1)
    delay = rng.uniform(0, subject.window / len(REVISIONS))
    where = (
        f"seed={seed} trial={trial} after {applied} revisions + {delay * 1000:.0f} ms"
        f" of window={subject.window * 1000:.0f} ms"
    )
    with fresh_database(server) as url:
        replica = spawn(
            ["upgrade"],
            cwd=subject.project,
            database_url=subject.replica_url(url),
            LOG_FORMAT="json",
        )
        seen = _read_until(replica, '"migrate.start"', where)
        for _ in range(applied):
            seen += _read_until(replica, '"migrate.revision"', where)
        time.sleep(delay)
        os.kill(replica.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        stderr = "".join(seen) + replica.communicate(timeout=60)[1]
        where += f", exit {replica.returncode}"
        # -9: killed; 0: the run had ended just before the kill (the window's far end).
        assert replica.returncode in (-signal.SIGKILL, 0), f"{where}:\n{stderr}"
        if subject.pooler_port is not None:  # auto saw the pooler
            assert '"scope": "transaction"' in stderr, f"{where}:\n{stderr}"

        lock_released_after = _wait_for_the_dead_session(
            url, killed_at, where, pooled=subject.pooler_port is not None
        )
        revision = _revision(url)
        where += f", left at {revision or 'no revision'}"
        if replica.returncode == 0:
            assert revision == HEAD, where
        found = _snapshot(url)
        assert found == references[revision], (
            f"{where}: not that revision's schema; differs in"
            f" {_differences(found, references[revision])}"
        )
        marked = query(url, "SELECT to_regclass('migrate_lock.environment')") != [(None,)]
        assert _applied_counts(url) == _expected_counts(revision), where
        if revision is not None:
            # Written in each revision's own transaction: never a revision without them.
            assert marked, f"{where}: no environment marker"
            assert (revision,) in query(url, "SELECT revision FROM migrate_lock.history"), where

        # The next run in-process: the protocol the CLI calls, without an interpreter
        # start per trial (100 of those made this file 2.5 times as slow).
        again = upgrade(settings=_settings(url, subject.project))
        pending = REVISIONS[REVISIONS.index(revision) + 1 :] if revision else REVISIONS
        assert list(again.applied) == pending, where
        assert _revision(url) == HEAD, where
        found = _snapshot(url)
        assert found == references[HEAD], (
            f"{where}: the next run left another schema; differs in"
            f" {_differences(found, references[HEAD])}"
        )
        assert _applied_counts(url) == _expected_counts(HEAD), where
    return Kill(where, replica.returncode, revision, lock_released_after)


def _assert_most_kills_landed_mid_run(kills: list[Kill]) -> None:
    # Else the trials prove nothing about interrupted runs: the window would be wrong.
    mid_run = [kill for kill in kills if kill.mid_run]
    assert 3 * len(mid_run) >= len(kills), f"too few kills mid-run: {_summary(kills)}"


def _measure_window(server: Server, project: Path) -> float:
    """Seconds from seeing ``migrate.start`` to seeing ``migrate.done`` in a full run."""
    with fresh_database(server) as url:
        replica = spawn(["upgrade"], cwd=project, database_url=url, LOG_FORMAT="json")
        seen = _read_until(replica, '"migrate.start"', "calibration")
        started = time.monotonic()
        seen += _read_until(replica, '"migrate.done"', "calibration")
        window = time.monotonic() - started
        stderr = "".join(seen) + replica.communicate(timeout=120)[1]
        assert replica.returncode == 0, stderr
        assert _revision(url) == HEAD, stderr
    # A window shorter than 20 pauses would mean the revisions did not pause.
    assert window > 20 * PAUSE_SECONDS, f"a full run took only {window:.3f} s"
    return window


def _settings(url: str, project: Path) -> Settings:
    return Settings(
        database_url=url,
        alembic_config=project / "alembic.ini",
        environment="test",
        log_level="WARNING",
    )


def _read_until(replica: subprocess.Popen[str], text: str, where: str) -> list[str]:
    assert replica.stderr is not None
    seen: list[str] = []
    for line in replica.stderr:
        seen.append(line)
        if text in line:
            break
    assert_no_secret(*seen)
    assert seen and text in seen[-1], f"{where}: {text} never logged:\n{''.join(seen)}"
    return seen


def _wait_for_the_dead_session(url: str, killed_at: float, where: str, *, pooled: bool) -> float:
    """Wait until the server has ended the killed replica's session (behind a pooler: its
    transaction, as the pooler keeps idle server connections); return how long after the
    kill its advisory lock was released."""
    sessions_left = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()" + (" AND state <> 'idle'" if pooled else "")
    )
    released_after: float | None = None
    while True:
        [(sessions, locks)] = query(
            url,
            f"SELECT ({sessions_left}),"
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            "        AND database = (SELECT oid FROM pg_database"
            "                        WHERE datname = current_database()))",
        )
        elapsed = time.monotonic() - killed_at
        if locks == 0 and released_after is None:
            released_after = elapsed
        if sessions == 0 and released_after is not None:
            return released_after
        assert elapsed < RELEASE_BOUND_SECONDS, (
            f"{where}: {sessions} session(s) and {locks} advisory lock(s) left"
            f" {elapsed:.1f} s after the kill"
        )
        time.sleep(0.005)


def _revision(url: str) -> str | None:
    """The database's revision; None when there is none (no version table, or empty)."""
    if query(url, "SELECT to_regclass('alembic_version')") == [(None,)]:
        return None
    rows = query(url, "SELECT version_num FROM alembic_version")
    assert len(rows) <= 1, rows
    return str(rows[0][0]) if rows else None


def _applied_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as connection:
        if connection.execute("SELECT to_regclass('migration_log')").fetchone() == (None,):
            return {}
        return applied_counts(connection)


def _expected_counts(revision: str | None) -> dict[str, int]:
    """Every revision up to ``revision`` once (the baseline logs nothing)."""
    applied = REVISIONS[1 : REVISIONS.index(revision) + 1] if revision else []
    return dict.fromkeys(applied, 1)


def _snapshot(url: str) -> Snapshot:
    """The schema and data the revisions made, leaving out what may differ between two
    databases at the same revision: serial ids (a rolled-back INSERT used some up),
    migration_log's clock timestamps, and migrate-lock's own bookkeeping tables."""
    user = "NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'migrate_lock')"
    catalog = {
        "relations": "SELECT n.nspname, c.relname, c.relkind FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE n.nspname {user} AND c.relname NOT LIKE %(own)s ORDER BY 1, 2",
        "columns": "SELECT table_schema, table_name, column_name, data_type, is_nullable,"
        f" column_default FROM information_schema.columns WHERE table_schema {user}"
        " AND table_name NOT LIKE %(own)s ORDER BY 1, 2, 3",
        "indexes": "SELECT schemaname, indexname, indexdef FROM pg_indexes"
        f" WHERE schemaname {user} AND tablename NOT LIKE %(own)s ORDER BY 1, 2",
        "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
        " FROM pg_constraint WHERE connamespace::regnamespace::text"
        f" {user} AND conrelid::regclass::text NOT LIKE %(own)s ORDER BY 1, 2",
    }
    with psycopg.connect(url, autocommit=True) as connection:
        snapshot: Snapshot = {
            name: connection.execute(sql, {"own": OUR_OWN}).fetchall()
            for name, sql in catalog.items()
        }
        tables = connection.execute(
            f"SELECT schemaname, tablename FROM pg_tables WHERE schemaname {user}"
            " AND tablename NOT LIKE %s ORDER BY 1, 2",
            (OUR_OWN,),
        ).fetchall()
        for schema, table in tables:
            snapshot[f"{schema}.{table}"] = connection.execute(
                "SELECT count(*), md5(coalesce(string_agg(r, '|' ORDER BY r), '')) FROM"
                f" (SELECT (to_jsonb(t) - 'id' - 'applied_at')::text AS r"
                f' FROM "{schema}"."{table}" t) rows'
            ).fetchall()
    return snapshot


def _differences(found: Snapshot, expected: Snapshot) -> list[str]:
    return sorted(
        key for key in found.keys() | expected.keys() if found.get(key) != expected.get(key)
    )


def _report(mode: str, seed: int, kills: list[Kill]) -> None:
    # Shown with `pytest -rP`: where the kills landed, for the reliability page.
    print(f"{mode}, seed={seed}: {_summary(kills)}")


def _summary(kills: list[Kill]) -> str:
    mid_run = sum(kill.mid_run for kill in kills)
    after_head = sum(not kill.mid_run and kill.exit_code != 0 for kill in kills)
    ended = sum(kill.exit_code == 0 for kill in kills)
    revisions = Counter(kill.revision or "none" for kill in kills)
    released = sorted(kill.lock_released_after * 1000 for kill in kills)
    return (
        f"{mid_run}/{len(kills)} killed mid-run, {after_head} after head was committed,"
        f" {ended} after the process ended;"
        f" left at {dict(sorted(revisions.items()))};"
        f" lock released after {released[0]:.0f}-{released[-1]:.0f} ms"
    )
