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
import time

import migrate_lock


def main() -> None:
    # As PID 1 in a container, Python ignores SIGTERM unless it handles it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    interval = float(os.environ.get("SCHEDULER_INTERVAL_SECONDS", "60"))
    wait_until_ready(poll_seconds=min(interval, 2.0))
    while True:
        tick()
        time.sleep(interval)


def wait_until_ready(*, poll_seconds: float) -> None:
    """Block until the schema is at head or ahead; another process does the migrating."""
    settings = migrate_lock.load_settings(db_connect_timeout_seconds=0)
    while True:
        try:
            state = migrate_lock.schema_state(settings=settings)
        except migrate_lock.MigrateLockError as error:
            _say(f"waiting: {error}")
        else:
            if state.ready:
                _say(f"schema ready ({state.status} at {', '.join(state.current)})")
                return
            _say(f"waiting: schema {state.status}, {len(state.pending)} revision(s) pending")
        time.sleep(poll_seconds)


def tick() -> None:
    _say("tick")  # the periodic work goes here


def _say(text: str) -> None:
    sys.stderr.write(f"scheduler: {text}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    main()
