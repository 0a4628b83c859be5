#!/usr/bin/env python3
"""Migrate, then confirm the database is ready for this code: the runbook's check.

Run it beside running pods (the same lock keeps it safe), after a deploy, or in CI:

    python smoke_migrate.py          # DATABASE_URL, ALEMBIC_CONFIG, … from the environment

Exit 0 when it migrated or the database was already at head (or ahead: a newer release
migrated it), printing one line on stdout, e.g. ``ok: already at head 0021``. Otherwise
one ``smoke_migrate: error: …`` line on stderr and migrate-lock's exit code
(docs/exit-codes.md): 1 a revision failed, 75 retry later, 78 configuration, …
"""

from __future__ import annotations

import sys

from migrate_lock import MigrateLockError, schema_state, upgrade
from migrate_lock.interrupts import Terminated, signals_raise
from migrate_lock.logs import log
from migrate_lock.settings import load_settings


def main() -> int:
    try:
        with signals_raise():
            settings = load_settings()
            result = upgrade(settings=settings)
            # Read it back on a new connection, the way the application's /readyz will.
            state = schema_state(settings=settings)
    except MigrateLockError as error:
        return _fail(str(error), int(error.exit_code))
    except Terminated:
        return _fail("interrupted by SIGTERM; anything open was rolled back", 143)
    except KeyboardInterrupt:
        return _fail("interrupted by SIGINT; anything open was rolled back", 130)
    except Exception as error:  # noqa: BLE001 - still one scrubbed line, never a traceback
        return _fail(f"unexpected {type(error).__name__}: {error}", 1)
    revisions = ", ".join(state.current) or "(none)"
    if not state.ready:
        return _fail(f"upgrade returned but the database is {state.status} at {revisions}", 1)
    if result.role == "migrated":
        line = f"ok: migrated {len(result.applied)} revision(s), now at {revisions}"
    elif state.status == "ahead":
        line = f"ok: already ahead of this code at {revisions}"
    else:
        line = f"ok: already at head {revisions}"
    sys.stdout.write(line + "\n")
    return 0


def _fail(message: str, code: int) -> int:
    # Scrubbed like every migrate-lock line: no password ever reaches the output.
    line = " ".join(log.scrub(f"smoke_migrate: error: {message} (exit {code})").split())
    sys.stderr.write(line + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
