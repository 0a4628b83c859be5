"""When a waiter gives its connection back at once: half the slots it competes for taken.

Those are the server's (``max_connections`` less the reserved ones), but on a managed
database the application's role, or its database, often has a CONNECTION LIMIT far below
the server's: 64 replicas of a role limited to 20 connections would each keep one while
waiting, and the serving replicas of that role would get "too many connections for role".
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import psycopg
import pytest
from conftest import Server
from psycopg import sql

from migrate_lock.dsn import parse_database_url, with_database
from migrate_lock.lock import server_is_crowded

from support import TEST_PASSWORD


@pytest.fixture
def limited_role(pg_server: Server, database_url: str) -> Iterator[str]:
    """A new login role with CONNECTION LIMIT 4; its URL to ``database_url``'s database."""
    role = f"limited_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 4 PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(TEST_PASSWORD)
            )
        )
    try:
        yield pg_server.url(parse_database_url(database_url).database, role)
    finally:
        with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def open_more(url: str, count: int, stack: ExitStack) -> None:
    for _ in range(count):
        stack.enter_context(psycopg.connect(url))


def test_a_role_with_half_its_connection_limit_in_use_is_crowded(limited_role: str) -> None:
    with psycopg.connect(limited_role, autocommit=True) as waiter, ExitStack() as others:
        assert not server_is_crowded(waiter)  # 1 of 4
        open_more(limited_role, 1, others)
        assert server_is_crowded(waiter)  # 2 of 4


def test_a_database_with_half_its_connection_limit_in_use_is_crowded(
    pg_server: Server, database_url: str
) -> None:
    name = parse_database_url(database_url).database
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 4").format(sql.Identifier(name)))
    with psycopg.connect(database_url, autocommit=True) as waiter, ExitStack() as others:
        assert not server_is_crowded(waiter)
        open_more(database_url, 1, others)
        assert server_is_crowded(waiter)


def test_a_superuser_is_held_to_the_server_slots_alone(
    pg_server: Server, database_url: str
) -> None:
    """Neither limit applies to a superuser (the server exempts it)."""
    name = parse_database_url(database_url).database
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 2").format(sql.Identifier(name)))
    superuser = with_database(parse_database_url(pg_server.admin_url), name).libpq
    with psycopg.connect(superuser, autocommit=True) as waiter, ExitStack() as others:
        open_more(superuser, 2, others)
        assert not server_is_crowded(waiter)
