"""A tiny WSGI application with the two probes a container platform asks for.

- ``/healthz`` (liveness): the process answers. It never touches the database: a
  database outage must not make the platform restart every pod.
- ``/readyz`` (readiness): the schema is ready for this code, as
  ``migrate_lock.schema_state()`` says: 200 at head or ahead (a newer release already
  migrated: a rolling deploy), 503 while behind, at a revision this code does not know,
  or when the database cannot be reached.

Serve it with ``gunicorn app:app``, or without dependencies with ``python app.py``
(``HOST``/``PORT``, default 0.0.0.0:8000). Settings (``DATABASE_URL``, ``ALEMBIC_CONFIG``, …)
come from the environment, as for ``migrate-lock`` itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import make_server

import migrate_lock

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

_STATUS = {200: "200 OK", 404: "404 Not Found", 503: "503 Service Unavailable"}


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/healthz":
        return _json(start_response, 200, {"status": "ok"})
    if path == "/readyz":
        return _readyz(start_response)
    return _json(start_response, 404, {"error": f"no route {path}"})


def _readyz(start_response: StartResponse) -> Iterable[bytes]:
    try:
        # One connection attempt (DB_CONNECT_TIMEOUT_SECONDS=0 here): a probe must answer
        # within its timeoutSeconds, not retry for the 30 s an upgrade would.
        settings = migrate_lock.load_settings(db_connect_timeout_seconds=0)
        state = migrate_lock.schema_state(settings=settings)
    except migrate_lock.MigrateLockError as error:
        return _json(start_response, 503, {"ready": False, "error": str(error)})
    return _json(start_response, 200 if state.ready else 503, state.as_dict())


def _json(start_response: StartResponse, code: int, body: dict[str, Any]) -> Iterable[bytes]:
    data = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start_response(_STATUS[code], headers)
    return [data]


def main() -> None:
    # As PID 1 in a container, Python ignores SIGTERM unless it handles it. The handler
    # only sets a flag: an exception raised from it in the middle of a request would be
    # swallowed by wsgiref's catch-all error handler, and the server would keep running.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    host, port = os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "8000"))  # noqa: S104
    with make_server(host, port, app) as server:
        server.timeout = 0.2  # how often to look at the flag while idle
        sys.stderr.write(f"serving on http://{host}:{port}\n")
        while not stop.is_set():
            server.handle_request()


if __name__ == "__main__":
    main()
