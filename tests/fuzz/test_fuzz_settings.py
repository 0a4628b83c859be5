"""Every setting of the settings table, with values valid, odd and absurd, from the
environment or ``.env``, in any spelling of its name: each verb exits with a documented
code, one line, never a "bug" line, never the password (issue 14, items 5, 9 and 10).

The rows come from lean/settings_schema.py itself (a new setting is fuzzed the day it is
added; a new kind of value fails here until it has values). Each example runs on its own
database, a copy of one at the small project's head or an empty one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from migrate_lock.lean.settings_schema import SCHEMA, Setting

from .harness import check, copy_of, examples, run, scratch_database
from .strategies import setting_values

VERBS = [
    ["upgrade"],
    ["status", "--json"],
    ["plan"],
    ["env", "show"],
    ["upgrade", "--sql"],
    ["run", "--", "true"],
]
SPELLINGS = [str, str.lower, str.title]


def _dotenv_line(name: str, value: str, quote: str) -> str:
    return f"{name}={quote}{value}{quote}\n"


@examples(share=1.5)
@given(
    data=st.data(),
    rows=st.lists(st.sampled_from(SCHEMA), min_size=1, max_size=3, unique_by=lambda r: r.field),
    verb=st.sampled_from(VERBS),
    at_head=st.booleans(),
)
def test_every_setting_fails_cleanly_or_works(
    pg_server: Any,
    small_project: Path,
    small_head: str,
    data: st.DataObject,
    rows: list[Setting],
    verb: list[str],
    at_head: bool,
) -> None:
    server = pg_server
    template = small_head if at_head else None
    with (
        scratch_database(server.admin_url, server.url, template=template) as url,
        copy_of(small_project) as project,
    ):
        env: dict[str, str] = {}
        dotenv = ""
        for row in rows:
            value = data.draw(setting_values(row, url), label=row.field)
            name = data.draw(st.sampled_from(row.variables), label="name")
            name = data.draw(st.sampled_from(SPELLINGS), label="spelling")(name)
            if data.draw(st.booleans(), label="in .env"):
                quote = data.draw(st.sampled_from(["", "'", '"']), label="quote")
                dotenv += _dotenv_line(name, value, quote)
            else:
                env[name] = value.replace("\x00", "")
        if dotenv:
            (project / ".env").write_text(dotenv, encoding="utf-8", errors="surrogatepass")
        fuzzed = {row.variables[0] for row in rows} | {
            alias for row in rows for alias in row.variables
        }
        unset = [name for name in ("ENVIRONMENT", "LOG_FORMAT") if name in fuzzed]
        result = run(verb, cwd=project, database_url=url, env=env, unset=unset, timeout=60)
    check(result)
