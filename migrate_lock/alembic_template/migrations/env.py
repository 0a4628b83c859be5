"""Alembic environment, written by `migrate-lock init`.

Under `migrate-lock upgrade` this file is handed the connection that holds the
migration lock (``config.attributes["connection"]``) and must use it: opening one of
its own would run migrations outside the lock, so migrate-lock refuses that. Under
pytest-alembic that attribute is an Engine; under plain `alembic` it is not set.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, engine_from_config, pool

# Hides migrate-lock's own tables (schema migrate_lock) from autogenerate and `alembic check`.
from migrate_lock import include_object

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# Point this at your models' MetaData to let `alembic revision --autogenerate`
# (and `migrate-lock smoke`) compare models with migrations, e.g.:
#   from myapp.models import Base
#   target_metadata = Base.metadata
target_metadata = None

VERSION_TABLE = {
    "version_table": config.attributes.get("version_table", "alembic_version"),
    "version_table_schema": config.attributes.get("version_table_schema"),
}


def from_environment(name: str) -> str:
    """NAME, or the content of the file NAME_FILE names (Docker and Kubernetes secrets)."""
    value = os.environ.get(name, "").strip()
    secret_file = os.environ.get(f"{name}_FILE", "").strip()
    if not value and secret_file:
        with open(secret_file, encoding="utf-8-sig") as file:  # a BOM is not the URL
            value = file.read().strip()
    return value


def database_url() -> str:
    # Under migrate-lock: the URL it resolved (sqlalchemy.url). Under plain alembic: the
    # environment, as migrate-lock reads it (not .env, which plain alembic does not read).
    url = (
        config.get_main_option("sqlalchemy.url")
        or from_environment("MIGRATION_DATABASE_URL")
        or from_environment("DATABASE_URL")
    )
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        # SQLAlchemy would pick psycopg2; migrate-lock uses psycopg 3.
        url = "postgresql+psycopg://" + rest
    return url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url() or "postgresql+psycopg://",
        target_metadata=target_metadata,
        include_object=include_object,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object,
        on_version_apply=config.attributes.get("on_version_apply"),
        **VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        # migrate-lock's connection (it holds the migration lock): run on it as it is.
        run_on(given)
        return
    # An Engine handed over (pytest-alembic's alembic_engine), or one of our own.
    engine = given
    if engine is None:
        engine = engine_from_config(
            {"sqlalchemy.url": database_url()}, prefix="sqlalchemy.", poolclass=pool.NullPool
        )
    with engine.connect() as connection:
        run_on(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
