"""``migrate-lock run -- CMD``: migrate under the lock, then become CMD (same PID)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from migrate_lock.lean.settings_schema import default
from migrate_lock.lock import lock_key

from support import assert_one_line_failure, cli_env, leave_to_alembic, query, run_cli, spawn

ENTRYPOINTS = Path(__file__).resolve().parent.parent / "entrypoints"

#: CMD for the tests: reports its PID and whether the schema was there, then exits 7.
REPORTER = (
    "import json, os, sys; "
    "print(json.dumps({'pid': os.getpid(), 'argv': sys.argv[1:]}), flush=True); "
    "sys.exit(7)"
)

FAILING_REVISION = '''"""break on purpose"""

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SELECT * FROM no_such_table")


def downgrade() -> None:
    pass
'''


def _process(
    args: list[str], *, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _reporter(*args: str) -> list[str]:
    return [sys.executable, "-c", REPORTER, *args]


def _path_env() -> str:
    # The entrypoint script finds `migrate-lock` on PATH, as it would in an image.
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _version(database_url: str) -> list[tuple[object, ...]]:
    if query(database_url, "SELECT to_regclass('alembic_version')") == [(None,)]:
        return []
    return query(database_url, "SELECT version_num FROM alembic_version")


@pytest.mark.parametrize("manifest", [False, True], ids=["alembic", "manifest"])
def test_run_migrates_then_execs_the_command_in_the_same_process(
    project: Path, database_url: str, manifest: bool
) -> None:
    """Why: CMD must become PID 1 to get the container's signals, and its exit code is ours."""
    if manifest:  # the lean path takes the lock and hands it to the full path
        assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0
    else:
        leave_to_alembic(project)
    process = spawn(
        ["run", "--", *_reporter("--bind", "0.0.0.0:8000")], cwd=project, database_url=database_url
    )
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 7, stderr
    report = json.loads(stdout)
    assert report == {"pid": process.pid, "argv": ["--bind", "0.0.0.0:8000"]}
    assert _version(database_url) == [("0021",)]
    assert stderr.index("migrate.done") < stderr.index("run.exec")


def test_as_pid_1_of_a_container_run_hands_pid_1_to_the_command(
    project: Path, database_url: str
) -> None:
    """Why: only PID 1 gets `docker stop`'s SIGTERM; the server must be PID 1, not our child."""
    result = _process(
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
            *_reporter(),
        ],
        cwd=project,
        env=cli_env(database_url),
    )

    assert result.returncode == 7, result.stderr
    assert json.loads(result.stdout)["pid"] == 1
    assert _version(database_url) == [("0021",)]


@pytest.mark.parametrize("manifest", [False, True], ids=["alembic", "manifest"])
def test_run_closes_every_connection_before_the_exec(
    project: Path, database_url: str, manifest: bool
) -> None:
    """Why: a connection left to the exec is cut without a goodbye (the server counts it as
    abandoned) or, were it inheritable, would hold a backend and maybe the lock for good."""
    if manifest:  # the lean path's connection and the lock it hands over must go too
        assert run_cli(["freeze"], cwd=project, database_url=None).returncode == 0
    else:
        leave_to_alembic(project)

    result = run_cli(["run", "--", "true"], cwd=project, database_url=database_url)

    assert result.returncode == 0, result.stderr
    assert "run.exec" in result.stderr
    # Backends leave pg_stat_activity just before they report how their session ended.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        (abandoned,) = query(
            database_url,
            "SELECT sessions_abandoned FROM pg_stat_database WHERE datname = current_database()",
        )[0]
        assert abandoned == 0
        time.sleep(0.1)


def test_the_command_does_not_inherit_pythons_ignored_sigpipe(
    project: Path, database_url: str
) -> None:
    """Why: Python ignores SIGPIPE and an ignored signal survives exec; a command that inherits
    that never dies of a closed pipe as programs expect (`app | head` would run on)."""
    result = run_cli(
        ["run", "--", "cat", "/proc/self/status"],
        cwd=project,
        database_url=database_url,
        MIGRATE_ON_START="false",
    )

    assert result.returncode == 0, result.stderr
    (ignored,) = [
        line.split()[1] for line in result.stdout.splitlines() if line.startswith("SigIgn")
    ]
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not int(ignored, 16) & (1 << (signum - 1)), f"{signum.name} ignored: {ignored}"


@pytest.mark.parametrize("way", ["cli", "library"])
def test_migrate_on_start_false_starts_the_command_without_touching_the_schema(
    project: Path, database_url: str, way: str
) -> None:
    """Why: a scheduler sharing the image must not migrate (or wait for the lock) itself."""
    if way == "cli":
        args = [sys.executable, "-m", "migrate_lock", "run", "--", *_reporter()]
    else:  # the full path, as a Python caller gets it
        call = f"from migrate_lock.entrypoint import run; run({_reporter()!r})"
        args = [sys.executable, "-c", call]
    result = _process(
        args,
        cwd=project,
        env=cli_env(database_url, MIGRATE_ON_START="false"),
    )

    assert result.returncode == 7, result.stderr
    assert "run.migrate_skipped" in result.stderr
    assert _version(database_url) == []


@pytest.mark.usefixtures("at_head")
def test_run_at_head_with_a_manifest_execs_without_loading_alembic(
    project: Path, database_url: str
) -> None:
    """Why: nearly every container start finds the schema at head; that start must be cheap."""
    assert run_cli(["freeze"], cwd=project, database_url=database_url).returncode == 0

    process = spawn(["run", "--", *_reporter()], cwd=project, database_url=database_url)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 7, stderr
    assert json.loads(stdout)["pid"] == process.pid
    assert "role=fast_path" in stderr and "heads_from=manifest" in stderr
    assert stderr.index("heads_from=manifest") < stderr.index("run.exec")


def test_failing_migration_exits_1_and_never_starts_the_command(
    project: Path, database_url: str
) -> None:
    """Why: a server started on a half-migrated schema serves errors; the restart policy decides."""
    (project / "migrations" / "versions" / "0022_broken.py").write_text(FAILING_REVISION)

    result = run_cli(["run", "--", *_reporter()], cwd=project, database_url=database_url)

    line = assert_one_line_failure(result, 1)
    assert "revision 0022" in line
    assert result.stdout == ""
    assert "run.exec" not in result.stderr


def test_lock_timeout_exits_75_and_never_starts_the_command(
    project: Path, database_url: str
) -> None:
    """Why: 75 means "retry later"; the server must not start behind a migration still running."""
    database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(%s)", (lock_key(str(database), "public", "alembic_version"),)
        )
        result = run_cli(
            ["run", "--", *_reporter()],
            cwd=project,
            database_url=database_url,
            MIGRATION_LOCK_TIMEOUT_SECONDS="1",
        )

    line = assert_one_line_failure(result, 75)
    assert "gave up waiting for the migration lock" in line
    assert result.stdout == ""


def test_unknown_command_exits_2_before_migrating(project: Path, database_url: str) -> None:
    """Why: a typo in CMD must fail at once, not after a migration and then crash-loop."""
    result = run_cli(["run", "--", "gunicron", "app:app"], cwd=project, database_url=database_url)

    line = assert_one_line_failure(result, 2)
    assert "'gunicron'" in line and "PATH" in line
    assert _version(database_url) == []


def test_run_without_a_command_is_a_usage_error(project: Path, database_url: str) -> None:
    result = run_cli(["run"], cwd=project, database_url=database_url)

    line = assert_one_line_failure(result, 2)
    assert "migrate-lock run -- gunicorn app:app" in line


def test_run_with_tenants_points_to_the_fleet_verb_and_migrates_nothing(
    project: Path, database_url: str
) -> None:
    """Why: click hands an option run does not have on as the command ("cannot start
    '--tenants': not on PATH"); a fleet is `upgrade --tenants`, not each replica's start."""
    result = run_cli(
        ["run", "--tenants", "schemas:tenant_%", "--", "true"],
        cwd=project,
        database_url=database_url,
    )

    line = assert_one_line_failure(result, 2)
    assert "run has no option --tenants" in line and "upgrade --tenants" in line
    assert _version(database_url) == []


def test_upgrade_with_tenants_refuses_a_bootstrap_step(project: Path, database_url: str) -> None:
    """Why: --then is the application's one-off step; a fleet would run it per tenant."""
    result = run_cli(
        ["upgrade", "--tenants", "schemas:tenant_%", "--then", "true"],
        cwd=project,
        database_url=database_url,
    )

    line = assert_one_line_failure(result, 2)
    assert "upgrade --tenants does not take --then" in line


def test_passthrough_command_runs_without_migrating(project: Path, database_url: str) -> None:
    """Why: `docker compose run api alembic downgrade -1` must not upgrade to head first."""
    result = run_cli(
        ["run", "--", "migrate-lock", "current"],
        cwd=project,
        database_url=database_url,
        PATH=_path_env(),
    )

    assert result.returncode == 0, result.stderr
    assert "run.passthrough" in result.stderr
    assert result.stdout.strip() == "(none)"


def test_entrypoint_script_execs_migrate_lock_run_in_the_same_process(
    project: Path, database_url: str
) -> None:
    """Why: a shell that forks instead of exec'ing would sit as PID 1 and swallow SIGTERM."""
    process = subprocess.Popen(
        ["sh", str(ENTRYPOINTS / "docker-entrypoint.sh"), *_reporter()],
        cwd=project,
        env=cli_env(database_url, PATH=_path_env()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 7, stderr
    assert json.loads(stdout)["pid"] == process.pid
    assert _version(database_url) == [("0021",)]


def test_entrypoint_script_passes_configured_commands_through_without_python(
    project: Path,
) -> None:
    """Why: a debug shell must start even when the settings are broken."""
    result = _process(
        ["bash", str(ENTRYPOINTS / "docker-entrypoint.sh"), "sh", "-c", "echo shell"],
        cwd=project,
        env=cli_env(
            "mysql://not-a-postgres-url", ENTRYPOINT_PASSTHROUGH="sh bash", PATH=_path_env()
        ),
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "shell\n"
    assert result.stderr == ""


def test_entrypoint_script_and_settings_share_the_passthrough_default() -> None:
    """Why: the script and `run` must agree on which commands skip the migration."""
    script = (ENTRYPOINTS / "docker-entrypoint.sh").read_text()
    passthrough = default("entrypoint_passthrough")
    assert f'\nPASSTHROUGH_DEFAULT="{passthrough}"\n' in script


def test_smoke_migrate_exits_0_when_migrated_and_again_when_at_head(
    project: Path, database_url: str
) -> None:
    """Why: the runbook's "did it migrate?" check must be green both times it is run."""
    smoke = [sys.executable, str(ENTRYPOINTS / "smoke_migrate.py")]
    env = cli_env(database_url)
    first = _process(smoke, cwd=project, env=env)
    second = _process(smoke, cwd=project, env=env)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert first.stdout.startswith("ok: migrated") and "0021" in first.stdout
    assert second.stdout.startswith("ok: already at head") and "0021" in second.stdout


def test_smoke_migrate_exits_with_migrate_locks_code_on_failure(
    project: Path, database_url: str
) -> None:
    """Why: a runbook script that says "ok" after a failed revision sends on-call home early."""
    (project / "migrations" / "versions" / "0022_broken.py").write_text(FAILING_REVISION)
    result = _process(
        [sys.executable, str(ENTRYPOINTS / "smoke_migrate.py")],
        cwd=project,
        env=cli_env(database_url),
    )

    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert "revision 0022" in result.stderr and "Traceback" not in result.stderr
