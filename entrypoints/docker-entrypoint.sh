#!/bin/sh
# Container entrypoint: migrate under the lock, then exec the command, which becomes the
# container's main process (same PID, gets SIGTERM itself, its exit code is the container's).
#
#   COPY --chmod=0755 docker-entrypoint.sh /usr/local/bin/
#   ENTRYPOINT ["docker-entrypoint.sh"]
#   CMD ["gunicorn", "--bind", "0.0.0.0:8000", "app:app"]
#
# Commands named in ENTRYPOINT_PASSTHROUGH (default: migrate-lock alembic flask) are exec'd as
# they are: no migration first, and no Python, so they start even when the settings are
# broken. Add "sh bash" to get a debug shell that way; but then a CMD such as
# ["sh", "-c", "exec gunicorn ..."] would skip the migration too.
# Settings: docs/configuration.md. Exit codes: docs/exit-codes.md.
set -eu

# The default of ENTRYPOINT_PASSTHROUGH (migrate_lock/lean/settings_schema.py).
PASSTHROUGH_DEFAULT="migrate-lock alembic flask"

# Whether ENTRYPOINT_PASSTHROUGH names the command $1, read as migrate-lock reads every
# setting: surrounding whitespace ignored, a blank value is the default, names separated
# by whitespace or commas, `none` alone for no command. A path in the list is an error
# that `migrate-lock run` reports (exit 78), so then nothing passes through here.
# Differences (docs/configuration.md): upper-case name only, no .env, ASCII whitespace.
passes_through() {
    wanted=$1
    set -f  # the list is words, not patterns
    # The rest of Python's ASCII whitespace becomes spaces, which the shell splits on.
    list=$(printf '%s\n' "${ENTRYPOINT_PASSTHROUGH-}" | tr '\r\v\f\034\035\036\037' '       ')
    # shellcheck disable=SC2086 # split on purpose
    set -- $list
    if [ "$#" -eq 0 ]; then
        list=$PASSTHROUGH_DEFAULT
    fi
    # shellcheck disable=SC2046 # split on purpose
    set -- $(printf '%s\n' "$list" | tr ',' ' ')
    if [ "$#" -eq 1 ] && [ "$1" = none ]; then
        return 1
    fi
    for name in "$@"; do
        case $name in */*) return 1 ;; esac
    done
    for name in "$@"; do
        if [ "$name" = "$wanted" ]; then
            return 0
        fi
    done
    return 1
}

if [ "$#" -gt 0 ] && passes_through "${1##*/}"; then
    exec "$@"
fi

exec migrate-lock run -- "$@"
