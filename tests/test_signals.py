"""SIGTERM and SIGINT on `migrate-lock run`: real processes, real signals, a real server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from migrate_lock.lock import lock_key
from migrate_lock.sandbox.example import write_example_project

from support import cli_env, leave_to_alembic, query, run_cli, spawn, wait_for_a_sleeping_revision

#: CMD for the tests; it must never run when the upgrade was interrupted.
NEVER = [sys.executable, "-c", "print('COMMAND STARTED')"]
SIGNALS = [
    pytest.param(signal.SIGTERM, 143, id="SIGTERM"),
    pytest.param(signal.SIGINT, 130, id="SIGINT"),
]


def _wait_for_line(process: subprocess.Popen[str], text: str) -> list[str]:
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never logged:\n{''.join(seen)}")


def _other_sessions(database_url: str, holder_pid: int | None = None) -> int:
    rows = query(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND pid IS DISTINCT FROM %s",
        (holder_pid,),
    )
    return int(str(rows[0][0]))


@pytest.mark.parametrize(
    ("signum", "exit_code", "manifest"),
    [
        pytest.param(signal.SIGTERM, 143, False, id="SIGTERM"),
        pytest.param(signal.SIGINT, 130, False, id="SIGINT"),
        pytest.param(signal.SIGTERM, 143, True, id="SIGTERM-lean-wait"),
    ],
)
def test_signal_while_waiting_for_the_lock_exits_at_once_and_closes_the_session(
    project: Path, database_url: str, signum: signal.Signals, exit_code: int, manifest: bool
) -> None:
    """Why: `docker stop` on a waiting replica must not hang for the grace period nor leave
    a session (and its retries) behind; the command must never start."""
    if manifest:  # with a heads manifest, the wait happens on the lean (libpq) path
        assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0
    else:
        leave_to_alembic(project)
    database = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(%s)", (lock_key(database, "public", "alembic_version"),)
        )
        waiter = spawn(["run", "--", *NEVER], cwd=project, database_url=database_url)
        _wait_for_line(waiter, "lock.waiting")

        signalled = time.monotonic()
        waiter.send_signal(signum)
        stdout, stderr = waiter.communicate(timeout=10)
        exited = time.monotonic() - signalled
        while _other_sessions(database_url, holder.info.backend_pid) and (
            time.monotonic() - signalled < 1.0
        ):
            time.sleep(0.02)
        gone = time.monotonic() - signalled
        sessions_left = _other_sessions(database_url, holder.info.backend_pid)

    assert waiter.returncode == exit_code, stderr
    assert exited < 1.0, f"took {exited:.2f}s to exit"
    assert sessions_left == 0, f"session still there {gone:.2f}s after the signal"
    assert "COMMAND STARTED" not in stdout
    assert f"interrupted by {signum.name}" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize(("signum", "exit_code"), SIGNALS)
def test_signal_during_a_slow_migration_rolls_back_and_the_next_start_completes(
    tmp_path: Path, database_url: str, signum: signal.Signals, exit_code: int
) -> None:
    """Why: a pod deleted mid-migration must cancel its statement, roll back and free the
    lock at once, never start the server, and leave the next pod a clean start."""
    project = tmp_path / "project"
    write_example_project(project, 21, slow_revision=12, slow_seconds=4)
    migrator = spawn(["run", "--", *NEVER], cwd=project, database_url=database_url)
    _wait_for_line(migrator, "migrate.revision revision=0011")
    wait_for_a_sleeping_revision(database_url)  # inside revision 0012, after its CREATE TABLE

    signalled = time.monotonic()
    migrator.send_signal(signum)
    stdout, stderr = migrator.communicate(timeout=10)
    exited = time.monotonic() - signalled

    assert migrator.returncode == exit_code, stderr
    assert exited < 1.5, f"took {exited:.2f}s: the running statement was not cancelled"
    assert "COMMAND STARTED" not in stdout and "run.exec" not in stderr
    assert "rolled back" in stderr and "Traceback" not in stderr
    assert query(database_url, "SELECT to_regclass('alembic_version'), to_regclass('t_11')") == [
        (None, None)
    ]
    # The server ends a session a moment after its client has gone (under load, after the
    # process's exit was seen here): give it that moment, as the waiter test above does.
    while _other_sessions(database_url) and time.monotonic() - signalled < 1.5:
        time.sleep(0.02)
    assert _other_sessions(database_url) == 0

    again = spawn(["run", "--", *NEVER], cwd=project, database_url=database_url)
    stdout, stderr = again.communicate(timeout=60)
    assert again.returncode == 0, stderr
    assert stdout == "COMMAND STARTED\n"
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0021",)]


def test_sigterm_reaches_migrate_lock_running_as_pid_1_of_its_own_pid_namespace(
    project: Path, database_url: str
) -> None:
    """Why: in a container we are PID 1, where the kernel drops a SIGTERM nobody handles;
    `docker stop` must still end the wait at once rather than after the grace period."""
    database = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(%s)", (lock_key(database, "public", "alembic_version"),)
        )
        container = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--kill-child",
                sys.executable,
                "-m",
                "migrate_lock",
                "run",
                "--",
                *NEVER,
            ],
            cwd=project,
            env=cli_env(database_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for_line(container, "lock.waiting")
        children = Path(f"/proc/{container.pid}/task/{container.pid}/children").read_text()
        (pid_1,) = children.split()  # our process, as the host sees it

        signalled = time.monotonic()
        os.kill(int(pid_1), signal.SIGTERM)
        stdout, stderr = container.communicate(timeout=10)
        exited = time.monotonic() - signalled

    assert container.returncode == 143, stderr
    assert exited < 1.0, f"took {exited:.2f}s to exit"
    assert "COMMAND STARTED" not in stdout
