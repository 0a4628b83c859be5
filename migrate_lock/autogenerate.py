"""``include_object``: migrate-lock's own tables, hidden from the application's autogenerate.

migrate-lock keeps its tables (the environment marker, the history, the seed tracking) in
a schema of its own, ``migrate_lock``; releases before it kept them beside the version
table as ``migrate_lock_environment``, ``migrate_lock_history`` and ``migrate_lock_seeds``.
Alembic's autogenerate (``alembic revision --autogenerate``, ``alembic check``,
pytest-alembic's model test) compares the application's models with the database, and a
table that no model declares is proposed for ``op.drop_table``: with ``include_schemas=True``
our schema's tables, and with any setting the legacy ones. Deploying such a revision
silently resets the history and the seed tracking (or fails on the marker).

``env.py`` passes this function to ``context.configure(include_object=include_object)``
(the ``migrate-lock init`` template does; docs/existing-projects.md shows the change for an
existing one). It imports nothing beyond the standard library and one constant.
"""

from __future__ import annotations

from typing import Any

from migrate_lock.version_table import OWN_SCHEMA

#: What the tables of releases before the own schema were called (any schema).
LEGACY_PREFIX = "migrate_lock_"


def include_object(
    obj: Any,
    name: str | None,
    type_: str,
    reflected: bool,
    compare_to: Any,
) -> bool:
    """Alembic's ``include_object`` hook: False for migrate-lock's own tables, else True.

    Left out: every table in the ``migrate_lock`` schema, and a table of the database
    named ``migrate_lock_…`` that no model declares (a legacy table of ours). Their
    columns, indexes and constraints go with them. To combine it with a filter of your
    own: ``include_object=lambda *a: include_object(*a) and mine(*a)``.
    """
    if type_ != "table":
        return True
    if getattr(obj, "schema", None) == OWN_SCHEMA:
        return False
    legacy = (name or "").startswith(LEGACY_PREFIX)
    return not (legacy and reflected and compare_to is None)
