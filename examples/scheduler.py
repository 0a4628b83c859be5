"""A periodic worker that shares the API's image but never migrates.

It runs with ``MIGRATE_ON_START=false`` (``migrate-lock run`` then starts it at once) and
waits until the schema is ready for this code before its first tick, so it works the
same under Compose (where ``depends_on`` also orders it after the API) and under
Kubernetes (where nothing orders it).

``SCHEDULER_INTERVAL_SECONDS`` (default 60) is the pause between two ticks.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import migrate_lock

#: Set by SIGTERM. As PID 1 in a container, Python ignores SIGTERM unless it handles it;
#: the handler only sets this flag, so no library in the middle of a call swallows it.
stop = threading.Event()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    interval = float(os.environ.get("SCHEDULER_INTERVAL_SECONDS", "60"))
    if not wait_until_ready(poll_seconds=min(interval, 2.0)):
        return
    while not stop.is_set():
        tick()
        stop.wait(interval)


def wait_until_ready(*, poll_seconds: float) -> bool:
    """Wait until the schema is at head or ahead (another process migrates); False on SIGTERM."""
    settings = migrate_lock.load_settings(db_connect_timeout_seconds=0)
    while not stop.is_set():
        try:
            state = migrate_lock.schema_state(settings=settings)
        except migrate_lock.MigrateLockError as error:
            _say(f"waiting: {error}")
        else:
            if state.ready:
                _say(f"schema ready ({state.status} at {', '.join(state.current)})")
                return True
            _say(f"waiting: schema {state.status}, {len(state.pending)} revision(s) pending")
        stop.wait(poll_seconds)
    return False


def tick() -> None:
    _say("tick")  # the periodic work goes here


def _say(text: str) -> None:
    sys.stderr.write(f"scheduler: {text}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    main()
