"""``python -m migrate_lock``: the same as the ``migrate-lock`` command."""

from migrate_lock.cli import main

main()
