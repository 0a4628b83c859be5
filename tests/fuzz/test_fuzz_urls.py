"""Database URLs of every shape, with passwords of every character: no output shows the
password, and every verb ends with a documented code (issue 14, items 1 and 10).

No database is needed: every host is a closed local port and DB_CONNECT_TIMEOUT_SECONDS
is 0, so a verb that gets as far as connecting exits 75 at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from .harness import check, examples, run, scratch_database
from .strategies import SCHEMES, DatabaseInput, Password, database_inputs, passwords
from support import APP_ROLE

#: The verbs issue 14 names: each reads the URL its own way (status and env show connect,
#: plan connects and renders SQL, upgrade --sql only renders, upgrade tries the lean path
#: first).
VERBS = [["status", "--json"], ["plan"], ["upgrade", "--sql"], ["env", "show"], ["upgrade"]]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
@examples(share=0.6)
@given(
    given_url=database_inputs(),
    log_format=st.sampled_from(["text", "json"]),
    log_level=st.sampled_from(["INFO", "DEBUG"]),
    frozen=st.booleans(),
)
def test_no_url_prints_its_password(
    small_project: Path,
    frozen_project: Path,
    verb: list[str],
    given_url: DatabaseInput,
    log_format: str,
    log_level: str,
    frozen: bool,
) -> None:
    """``frozen``: the project has its heads manifest, so ``upgrade`` starts on the lean path
    (lean/pq.py reads the URL); otherwise it goes to the full path at once."""
    result = run(
        [*given_url.flags, *verb],
        cwd=frozen_project if frozen else small_project,
        database_url=None,
        env={
            "LOG_FORMAT": log_format,
            "LOG_LEVEL": log_level,
            "DB_CONNECT_TIMEOUT_SECONDS": "0",
            **given_url.env,
        },
    )
    # Nothing listens: a URL is refused (78) or its host unreachable (75); only
    # `upgrade --sql` needs no connection and may succeed.
    check(result, given_url.secret, codes={0, 75, 78} if "--sql" in verb else {75, 78})


@pytest.fixture(scope="module")
def fuzz_role(pg_server: Any) -> Iterator[str]:
    """A login role for this module's passwords, a member of the application's role (so it
    may use a copy of the database at head)."""
    role = f"fuzz_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE "{APP_ROLE}"')
    yield role
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')


@examples(share=0.5)
@given(
    password=passwords(binary=False),
    form=st.sampled_from(["userinfo", "query", "pgpassword"]),
    scheme=st.sampled_from(SCHEMES),
    verb=st.sampled_from(VERBS[:2] + VERBS[3:]),
    log_format=st.sampled_from(["text", "json"]),
)
def test_any_password_logs_in_and_is_never_printed(
    pg_server: Any,
    small_project: Path,
    small_head: str,
    fuzz_role: str,
    password: Password,
    form: str,
    scheme: str,
    verb: list[str],
    log_format: str,
) -> None:
    """The real server, the role's password set to the generated one: percent-encoded (or
    in PGPASSWORD) it logs in and the verb succeeds; written raw, it works or is refused
    (78); and at LOG_LEVEL=DEBUG nothing prints it."""
    with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(fuzz_role), sql.Literal(password.text)
            )
        )
    with scratch_database(pg_server.admin_url, pg_server.url, template=small_head) as url:
        parts = urlsplit(url)
        where = f"{parts.netloc.rpartition('@')[2]}{parts.path}"
        env = {"LOG_FORMAT": log_format, "LOG_LEVEL": "DEBUG"}
        if form == "userinfo":
            env["DATABASE_URL"] = f"{scheme}://{fuzz_role}:{password.written}@{where}"
        elif form == "query":
            env["DATABASE_URL"] = f"{scheme}://{fuzz_role}@{where}?password={password.written}"
        else:
            env["DATABASE_URL"] = f"{scheme}://{fuzz_role}@{where}"
            env["PGPASSWORD"] = password.text
        result = run(verb, cwd=small_project, database_url=None, env=env)
    written_safely = form == "pgpassword" or password.written == quote(password.text, safe="")
    check(result, password.secret, codes={0} if written_safely else {0, 78})
