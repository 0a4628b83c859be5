#!/bin/sh
# Container entrypoint: migrate under the lock, then exec the command, which becomes the
# container's main process (same PID, gets SIGTERM itself, its exit code is the container's).
#
#   COPY --chmod=0755 docker-entrypoint.sh /usr/local/bin/
#   ENTRYPOINT ["docker-entrypoint.sh"]
#   CMD ["gunicorn", "--bind", "0.0.0.0:8000", "app:app"]
#
# Commands named in ENTRYPOINT_PASSTHROUGH (default: migrate-lock alembic) are exec'd as
# they are: no migration first, and no Python, so they start even when the settings are
# broken. Add "sh bash" to get a debug shell that way; but then a CMD such as
# ["sh", "-c", "exec gunicorn ..."] would skip the migration too.
# Settings: docs/configuration.md. Exit codes: docs/exit-codes.md.
set -eu

if [ "$#" -gt 0 ]; then
    passthrough="${ENTRYPOINT_PASSTHROUGH-migrate-lock alembic}"
    set -f  # the list is words, not patterns
    for name in $(printf '%s\n' "$passthrough" | tr ',' ' '); do
        if [ "${1##*/}" = "$name" ]; then
            exec "$@"
        fi
    done
    set +f
fi

exec migrate-lock run -- "$@"
