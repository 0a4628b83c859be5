"""The application's own exceptions, raised from env.py (at import, with the lock held,
in offline mode) or from a revision: attributed to env.py or the revision, one line, a
documented code, never a "bug" line, never the password, even when the application's
message quotes DATABASE_URL (issue 14, items 2, 7 and 10).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from .harness import NO_SERVER, check, copy_of, examples, run, scratch_database
from .strategies import raising_statements

#: Where in env.py (or a revision) the application's code raises: after the line named,
#: at its indentation.
PLACES = {
    "env.py, on import": ("env.py", "config = context.config\n", ""),
    "env.py, offline": ("env.py", "def run_migrations_offline() -> None:\n", "    "),
    "env.py, under the lock": ("env.py", "def run_on(connection) -> None:  #", "    "),
    "env.py, in the transaction": ("env.py", "    with context.begin_transaction():\n", "        "),
    "a revision": ("versions/0003_table.py", "def upgrade() -> None:\n", "    "),
}


def _raise_in(project: Path, place: str, statement: str) -> None:
    name, after, indent = PLACES[place]
    path = project / "migrations" / name
    text = path.read_text()
    assert after in text, (path, after)
    if after.endswith("#"):  # a def line with a trailing comment: insert after the line
        line_end = text.index("\n", text.index(after)) + 1
        text = text[:line_end] + indent + statement + "\n" + text[line_end:]
    else:
        text = text.replace(after, after + indent + statement + "\n")
    path.write_text(text, encoding="utf-8", errors="surrogatepass")


@examples(share=0.6)
@given(
    statement=raising_statements(),
    place=st.sampled_from(sorted(PLACES)),
    log_format=st.sampled_from(["text", "json"]),
)
def test_application_errors_offline(
    small_project: Path, statement: str, place: str, log_format: str
) -> None:
    """`upgrade --sql` runs env.py (offline) and the revisions' upgrade(): no database."""
    with copy_of(small_project) as project:
        _raise_in(project, place, statement)
        result = run(
            ["upgrade", "--sql"],
            cwd=project,
            database_url=NO_SERVER,
            env={"LOG_FORMAT": log_format, "DB_CONNECT_TIMEOUT_SECONDS": "0"},
        )
    check(result)


@examples(share=0.6)
@given(
    statement=raising_statements(),
    place=st.sampled_from(sorted(PLACES)),
    verb=st.sampled_from([["upgrade"], ["plan"], ["run", "--", "true"]]),
    log_format=st.sampled_from(["text", "json"]),
)
def test_application_errors_against_the_database(
    pg_server: Any,
    small_project: Path,
    statement: str,
    place: str,
    verb: list[str],
    log_format: str,
) -> None:
    """`upgrade` (and `run`) take the lock, then run env.py online and the revisions; `plan`
    runs them to render the SQL. A fresh empty database each."""
    with (
        scratch_database(pg_server.admin_url, pg_server.url) as url,
        copy_of(small_project) as project,
    ):
        _raise_in(project, place, statement)
        result = run(verb, cwd=project, database_url=url, env={"LOG_FORMAT": log_format})
    check(result)
