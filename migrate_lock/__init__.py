"""migrate-lock: Alembic migrations applied exactly once, from any number of replicas.

The public API is importable from here; heavy modules load only when used::

    import migrate_lock
    result = migrate_lock.upgrade()              # under the lock, like the CLI
    state = migrate_lock.schema_state()          # for a /readyz handler
    with migrate_lock.migration_lock() as hold:  # your own code under the same lock
        ...
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "upgrade": "migrate_lock.migrate",
    "upgrade_sql": "migrate_lock.protocol",
    "migration_lock": "migrate_lock.project",
    "run": "migrate_lock.entrypoint",
    "run_sql_file": "migrate_lock.seeds.sql_file",
    "freeze": "migrate_lock.heads_manifest",
    "smoke": "migrate_lock.checks.smoke",
    "lint": "migrate_lock.checks.lint",
    "plan": "migrate_lock.checks.plan",
    "UpgradeResult": "migrate_lock.outcome",
    "status": "migrate_lock.inspection",
    "schema_state": "migrate_lock.inspection",
    "current": "migrate_lock.inspection",
    "heads": "migrate_lock.inspection",
    "history": "migrate_lock.inspection",
    "Status": "migrate_lock.inspection",
    "SchemaState": "migrate_lock.state",
    "init_project": "migrate_lock.scaffold",
    "run_demo": "migrate_lock.sandbox.demo",
    "load_settings": "migrate_lock.settings",
    "Settings": "migrate_lock.settings",
    "lock_key": "migrate_lock.lock",
    "EmbeddedPostgres": "migrate_lock.sandbox.embedded",
    "MigrateLockError": "migrate_lock.errors",
    "ExitCode": "migrate_lock.errors",
    "protect": "migrate_lock.metadata_guard",
    "include_object": "migrate_lock.autogenerate",
    "show_environment": "migrate_lock.environment",
    "set_environment": "migrate_lock.environment",
    "Protection": "migrate_lock.guard",
    "downgrade": "migrate_lock.destructive",
    "stamp": "migrate_lock.destructive",
    "init_db": "migrate_lock.destructive",
    "reset": "migrate_lock.destructive",
    "DestructiveResult": "migrate_lock.destructive",
    "backup": "migrate_lock.backups",
    "restore": "migrate_lock.backups",
    "BackupResult": "migrate_lock.backups",
    "RestoreResult": "migrate_lock.backups",
    "upgrade_fleet": "migrate_lock.fleet.run",
    "seed_fleet": "migrate_lock.fleet.run",
    "fleet_plan": "migrate_lock.fleet.run",
    "FleetResult": "migrate_lock.fleet.report",
    "FleetPlan": "migrate_lock.fleet.plan",
}

#: Modules of the public API, loaded on first use: ``migrate_lock.seed.seed()`` (the verb),
#: and ``from migrate_lock.seed import run_sql_file`` in older revision files.
_MODULES = ("seed",)

__all__ = [
    "BackupResult",
    "DestructiveResult",
    "EmbeddedPostgres",
    "ExitCode",
    "FleetPlan",
    "FleetResult",
    "MigrateLockError",
    "Protection",
    "RestoreResult",
    "SchemaState",
    "Settings",
    "Status",
    "UpgradeResult",
    "__version__",
    "backup",
    "current",
    "downgrade",
    "fleet_plan",
    "freeze",
    "heads",
    "history",
    "include_object",
    "init_db",
    "init_project",
    "lint",
    "load_settings",
    "lock_key",
    "migration_lock",
    "plan",
    "protect",
    "reset",
    "restore",
    "run",
    "run_demo",
    "run_sql_file",
    "schema_state",
    "seed",
    "seed_fleet",
    "set_environment",
    "show_environment",
    "smoke",
    "stamp",
    "status",
    "upgrade",
    "upgrade_fleet",
    "upgrade_sql",
]

if TYPE_CHECKING:
    from migrate_lock import seed
    from migrate_lock.autogenerate import include_object
    from migrate_lock.backups import BackupResult, RestoreResult, backup, restore
    from migrate_lock.checks.lint import lint
    from migrate_lock.checks.plan import plan
    from migrate_lock.checks.smoke import smoke
    from migrate_lock.destructive import DestructiveResult, downgrade, init_db, reset, stamp
    from migrate_lock.entrypoint import run
    from migrate_lock.environment import set_environment, show_environment
    from migrate_lock.errors import ExitCode, MigrateLockError
    from migrate_lock.fleet.plan import FleetPlan
    from migrate_lock.fleet.report import FleetResult
    from migrate_lock.fleet.run import fleet_plan, seed_fleet, upgrade_fleet
    from migrate_lock.guard import Protection
    from migrate_lock.heads_manifest import freeze
    from migrate_lock.inspection import Status, current, heads, history, schema_state, status
    from migrate_lock.lock import lock_key
    from migrate_lock.metadata_guard import protect
    from migrate_lock.migrate import upgrade
    from migrate_lock.outcome import UpgradeResult
    from migrate_lock.project import migration_lock
    from migrate_lock.protocol import upgrade_sql
    from migrate_lock.sandbox.demo import run_demo
    from migrate_lock.sandbox.embedded import EmbeddedPostgres
    from migrate_lock.scaffold import init_project
    from migrate_lock.seeds.sql_file import run_sql_file
    from migrate_lock.settings import Settings, load_settings
    from migrate_lock.state import SchemaState


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return import_module(f"migrate_lock.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'migrate_lock' has no attribute {name!r}")
    return getattr(import_module(module), name)
