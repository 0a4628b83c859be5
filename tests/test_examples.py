"""The deployment examples users copy: parsed and checked where it matters, the app run for real."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrate_lock.settings import Settings

from support import cli_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
KUBERNETES = EXAMPLES / "kubernetes"
#: Exit codes that fail the same way on every retry (docs/exit-codes.md).
PERMANENT = {1, 2, 3, 5, 78}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _dockerfile() -> list[tuple[str, str]]:
    text = (EXAMPLES / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def _containers(path: Path) -> dict[str, dict[str, Any]]:
    spec = _yaml(path)["spec"]["template"]["spec"]
    found = spec.get("initContainers", []) + spec["containers"]
    return {container["name"]: container for container in found}


# --- Dockerfile and entrypoint ------------------------------------------------------


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    """Why: runAsNonRoot can only verify a numeric UID, and root in a container is avoidable."""
    users = [rest for keyword, rest in _dockerfile() if keyword == "USER"]
    assert len(users) == 1
    uid = users[0].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    order = [keyword for keyword, _ in _dockerfile()]
    assert order.index("USER") > max(i for i, k in enumerate(order) if k == "RUN")


def test_dockerfile_uses_a_slim_python_base_and_the_exec_form_entrypoint() -> None:
    """Why: a shell-form ENTRYPOINT puts /bin/sh at PID 1, which never forwards SIGTERM."""
    instructions = dict(_dockerfile())
    assert re.fullmatch(r"python:3\.\d+-slim", instructions["FROM"])
    assert json.loads(instructions["ENTRYPOINT"]) == ["docker-entrypoint.sh"]
    assert json.loads(instructions["CMD"])[0] == "gunicorn"
    runs = [rest for keyword, rest in _dockerfile() if keyword == "RUN"]
    assert "migrate-lock freeze" in runs  # the cheap at-head start
    copies = [rest for keyword, rest in _dockerfile() if keyword == "COPY"]
    assert any(
        rest.endswith("docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh") for rest in copies
    )


def test_examples_ship_the_same_entrypoint_script_as_entrypoints() -> None:
    """Why: the copy users build from must not drift from the script the tests run."""
    assert (EXAMPLES / "docker-entrypoint.sh").read_bytes() == (
        ROOT / "entrypoints" / "docker-entrypoint.sh"
    ).read_bytes()
    assert os.access(EXAMPLES / "docker-entrypoint.sh", os.X_OK)


# --- docker-compose.yml ----------------------------------------------------------------


def test_compose_starts_several_api_replicas_through_the_entrypoint_after_a_healthy_db() -> None:
    """Why: the point of the example is replicas starting at once against a database that is up."""
    services = _yaml(EXAMPLES / "docker-compose.yml")["services"]
    api = services["api"]
    assert api["deploy"]["replicas"] >= 2
    assert "entrypoint" not in api and api["command"][0] == "gunicorn"
    assert api["depends_on"]["db"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert "MIGRATE_ON_START" not in api["environment"]
    assert "pg_isready" in services["db"]["healthcheck"]["test"]


def test_compose_migrate_service_is_a_one_off_upgrade() -> None:
    services = _yaml(EXAMPLES / "docker-compose.yml")["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate-lock", "upgrade"]
    assert migrate["restart"] == "no" and migrate["profiles"] == ["tools"]
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert migrate["command"][0] in Settings().entrypoint_passthrough.split()


def test_compose_scheduler_shares_the_image_but_never_migrates() -> None:
    """Why: a scheduler that migrates would race the API for the lock it need not take."""
    services = _yaml(EXAMPLES / "docker-compose.yml")["services"]
    scheduler = services["scheduler"]
    assert scheduler["environment"]["MIGRATE_ON_START"] == "false"
    assert scheduler["depends_on"]["api"]["condition"] == "service_healthy"
    assert scheduler["image"] == services["api"]["image"] == services["migrate"]["image"]
    assert (
        scheduler["environment"]["DATABASE_URL"] == services["api"]["environment"]["DATABASE_URL"]
    )


def test_compose_takes_the_database_password_from_the_environment() -> None:
    """Why: a password committed in an example ends up in production."""
    services = _yaml(EXAMPLES / "docker-compose.yml")["services"]
    assert services["db"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "${POSTGRES_PASSWORD:?" in services["api"]["environment"]["DATABASE_URL"]


# --- Kubernetes ----------------------------------------------------------------------


def test_deployment_keeps_the_image_entrypoint_and_outlasts_the_lock_wait_in_startup() -> None:
    """Why: `command:` would bypass the migration, and a liveness probe during the lock wait
    would kill every waiting replica."""
    api = _containers(KUBERNETES / "deployment.yaml")["api"]
    assert "command" not in api and api["args"][0] == "gunicorn"
    startup = api["startupProbe"]
    lock_timeout = float(_env(api)["MIGRATION_LOCK_TIMEOUT_SECONDS"])
    assert startup["periodSeconds"] * startup["failureThreshold"] > lock_timeout
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert _env(api)["DATABASE_URL"]["secretKeyRef"]["name"]
    deployment = _yaml(KUBERNETES / "deployment.yaml")
    assert deployment["spec"]["progressDeadlineSeconds"] > lock_timeout


def test_initcontainer_variant_migrates_in_the_init_container_only() -> None:
    containers = _containers(KUBERNETES / "deployment-initcontainer.yaml")
    assert containers["migrate"]["command"] == ["migrate-lock", "upgrade"]
    assert _env(containers["api"])["MIGRATE_ON_START"] == "false"
    assert containers["migrate"]["image"] == containers["api"]["image"]


def test_job_fails_fast_on_permanent_exit_codes_and_retries_75() -> None:
    """Why: a Job retrying a broken revision six times hides the failure for half an hour."""
    job = _yaml(KUBERNETES / "job.yaml")["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy
    container = job["template"]["spec"]["containers"][0]
    assert container["command"] == ["migrate-lock", "upgrade"]
    rules = job["podFailurePolicy"]["rules"]
    by_action: dict[str, set[int]] = {}
    for rule in rules:
        codes = rule.get("onExitCodes")
        if codes:
            assert codes["operator"] == "In" and codes["containerName"] == container["name"]
            assert codes["values"] == sorted(set(codes["values"]))  # the API requires order
            by_action.setdefault(rule["action"], set()).update(codes["values"])
    assert {1, 3, 78} <= by_action["FailJob"] <= PERMANENT
    assert 75 not in by_action["FailJob"] and 75 in by_action.get("Count", set())
    assert job["backoffLimit"] >= 1
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules


# --- the example app, for real -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def serve_app(tmp_path: Path) -> Any:
    started: list[subprocess.Popen[str]] = []

    def serve(cwd: Path, database_url: str) -> int:
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "app.py")],
            cwd=cwd,
            env=cli_env(database_url, HOST="127.0.0.1", PORT=str(port)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        started.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if _get(port, "/healthz")[0] == 200:
                    return port
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the example app did not start")

    serve.started = started  # type: ignore[attr-defined]
    yield serve
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def test_example_app_is_not_ready_before_the_migration_and_ready_after(
    project: Path, database_url: str, serve_app: Any
) -> None:
    """Why: a pod must get traffic only once the schema matches its code."""
    port = serve_app(project, database_url)

    before = _get(port, "/readyz")
    assert run_cli(["upgrade"], cwd=project, database_url=database_url).returncode == 0
    after = _get(port, "/readyz")

    assert before[0] == 503 and before[1]["status"] == "behind" and len(before[1]["pending"]) == 21
    assert after[0] == 200 and after[1]["status"] == "at_head" and after[1]["current"] == ["0021"]


def test_example_app_readyz_answers_503_at_once_when_the_database_is_down(
    project: Path, serve_app: Any
) -> None:
    """Why: a probe that retries for 30 s times out instead of saying "not ready";
    liveness must stay green so the platform does not restart every pod."""
    port = serve_app(project, f"postgresql://app:secret@127.0.0.1:{_free_port()}/app")

    started = time.monotonic()
    status, body = _get(port, "/readyz")
    took = time.monotonic() - started

    assert status == 503 and body["ready"] is False and "unreachable" in body["error"]
    # One attempt, not the 30 s retry budget of an upgrade (the bound leaves room for a
    # loaded machine: the first request also imports psycopg and pydantic).
    assert took < 10.0, f"/readyz took {took:.1f}s"
    assert "secret" not in body["error"]
    assert _get(port, "/healthz")[0] == 200


def test_example_app_stops_on_sigterm_even_in_the_middle_of_a_request(
    project: Path, serve_app: Any
) -> None:
    """Why: as PID 1 the app must stop on `docker stop`; wsgiref swallows an exception raised
    by a signal handler during a request, so the handler must only set a flag."""
    with socket.socket() as silent:  # accepts connections, never answers: a slow database
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = serve_app(
            project, f"postgresql://app:secret@127.0.0.1:{silent.getsockname()[1]}/app"
        )
        app_process = serve_app.started[-1]
        answers: list[int] = []
        request = threading.Thread(target=lambda: answers.append(_get(port, "/readyz")[0]))
        request.start()
        time.sleep(0.3)  # the request now waits for the database

        app_process.send_signal(signal.SIGTERM)
        app_process.wait(timeout=10)
        request.join(timeout=10)

    assert app_process.returncode == 0
    assert answers == [503]


def test_example_scheduler_waits_for_the_schema_then_ticks(
    project: Path, database_url: str
) -> None:
    """Why: under Kubernetes nothing orders the scheduler after the migration but itself."""
    scheduler = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "scheduler.py")],
        cwd=project,
        env=cli_env(database_url, SCHEDULER_INTERVAL_SECONDS="0.2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert scheduler.stderr is not None
        first = scheduler.stderr.readline()
        assert run_cli(["upgrade"], cwd=project, database_url=database_url).returncode == 0
        lines = [first]
        while "tick" not in lines[-1] and lines[-1]:  # "" is the end of its output
            lines.append(scheduler.stderr.readline())
    finally:
        scheduler.terminate()
        scheduler.wait(timeout=10)

    assert scheduler.returncode == 0  # stopped by SIGTERM, cleanly
    assert "waiting: schema behind" in lines[0]
    assert any("schema ready (at_head at 0021)" in line for line in lines)
