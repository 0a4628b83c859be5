"""The FastAPI + SQLModel example, from an empty database to serving (issue 15, "Done when").

``examples/fastapi_sqlmodel/`` is laid out as full-stack-fastapi-template's backend: SQLModel
models, migrations from ``migrate-lock init`` and ``alembic revision --autogenerate``, and
``initial_data.py``, which creates the first superuser with a password hashed from the
environment ("check, then insert"). Sixteen replicas start at once with

    migrate-lock run --then 'python initial_data.py' -- python serve_once.py

where ``serve_once.py`` stands in for the server: it imports the application and answers
two requests in-process (the health check, and a login with the superuser's password),
through the ASGI interface itself, then exits 0. docs/existing-projects.md ("FastAPI and
SQLModel") walks through the same files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import cli_env, query, spawn

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fastapi_sqlmodel"
REPLICAS = 16
SUPERUSER = "admin@example.com"
#: The first superuser's password, from the environment as the template's .env has it.
SUPERUSER_PASSWORD = "Adm1n-from-the-env-93kQ"

#: The "server": the application answering requests without a socket (no uvicorn, no httpx).
SERVE_ONCE = """
import asyncio
import json
import os

from app.main import app


async def call(method, path, body=None):
    payload = json.dumps(body).encode() if body is not None else b""
    sent = []

    async def receive():
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message):
        sent.append(message)

    headers = [(b"host", b"replica"), (b"content-type", b"application/json")]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("replica", 80),
    }
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


async def main():
    health = await call("GET", "/api/v1/utils/health-check/")
    email, password = os.environ["FIRST_SUPERUSER"], os.environ["FIRST_SUPERUSER_PASSWORD"]
    login = await call("POST", "/api/v1/login", {"email": email, "password": password})
    print("serving:", health, login)
    raise SystemExit(0 if health == (200, True) and login[0] == 200 else 1)


asyncio.run(main())
"""


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the example application, with the stand-in server beside it."""
    path = tmp_path / "backend"
    shutil.copytree(EXAMPLE, path, ignore=shutil.ignore_patterns("__pycache__"))
    (path / "serve_once.py").write_text(SERVE_ONCE)
    return path


@pytest.mark.slow
def test_sixteen_replicas_go_from_an_empty_database_to_serving(
    example: Path, database_url: str
) -> None:
    """Why: the template's "alembic upgrade head; python app/initial_data.py" before the
    server crashed 7 of 8 replicas with a UniqueViolation; with the bootstrap under the
    lock every replica serves, and the first superuser exists once, with a working hash."""
    python = sys.executable
    env = {"FIRST_SUPERUSER": SUPERUSER, "FIRST_SUPERUSER_PASSWORD": SUPERUSER_PASSWORD}
    replicas = [
        spawn(
            ["run", "--then", f"{python} initial_data.py", "--", python, "serve_once.py"],
            cwd=example,
            database_url=database_url,
            **env,
        )
        for _ in range(REPLICAS)
    ]
    results = []
    for replica in replicas:
        stdout, stderr = replica.communicate(timeout=300)
        results.append((replica.returncode, stdout + stderr))

    outputs = "\n".join(output for _, output in results)
    assert [code for code, _ in results] == [0] * REPLICAS, outputs
    assert all("serving: (200, True) (200, " in output for _, output in results), outputs
    assert outputs.count("Creating initial data") == 1  # the step ran once, for all
    assert SUPERUSER_PASSWORD not in outputs
    users = query(database_url, 'SELECT email, is_superuser, hashed_password FROM "user"')
    assert [(email, superuser) for email, superuser, _ in users] == [(SUPERUSER, True)]
    assert str(users[0][2]).startswith("scrypt$")
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0002",)]
    assert query(database_url, "SELECT count(*) FROM migrate_lock.then_runs") == [(1,)]

    # The models and the migrations agree, and migrate-lock's tables are not proposed.
    check = subprocess.run(
        [str(Path(python).parent / "alembic"), "check"],
        cwd=example,
        env=cli_env(database_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr
