"""The smallest examples the fuzz tier (tests/fuzz/) found, each kept here in-process.

Each test names the property that found it; the process-level check stays in the tier.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from migrate_lock.dsn import parse_database_url
from migrate_lock.errors import (
    ConfigError,
    ExitCode,
    MigrateLockError,
    describe_sql_error,
    first_line,
)
from migrate_lock.revisions import load_scripts
from migrate_lock.runner import alembic_config, run_offline
from migrate_lock.sandbox.example import write_example_project

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:%D9@127.0.0.1:1/db",
        "postgresql://app@127.0.0.1:1/db?password=Qv7%D9Jx4",
        "postgresql://app:pw@127.0.0.1:1/%FF",
    ],
)
def test_percent_encoded_bytes_that_are_not_utf8_are_a_config_error(url: str) -> None:
    """test_no_url_prints_its_password: psycopg reads every value of the URL as UTF-8 and
    raised UnicodeDecodeError ('a bug in migrate-lock', exit 1); at LOG_LEVEL=DEBUG its
    repr printed the password's bytes."""
    with pytest.raises(ConfigError, match="not UTF-8") as raised:
        parse_database_url(url)
    assert raised.value.exit_code == ExitCode.CONFIG
    assert "Qv7" not in str(raised.value) and "%D9" not in str(raised.value)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "project"
    write_example_project(path, 3)
    monkeypatch.chdir(path)
    return path


@pytest.mark.parametrize("text", ["", "# only a comment\n", "[loggers]\nkeys = root\n"])
def test_an_alembic_ini_without_an_alembic_section_is_a_config_error(
    project: Path, text: str
) -> None:
    """test_a_broken_alembic_ini_is_one_line_and_a_documented_code: Alembic's CommandError
    'No config file ... or file has no [alembic] section' was 'a bug in migrate-lock'."""
    (project / "alembic.ini").write_text(text)
    with pytest.raises(ConfigError, match=r"alembic.ini.*\[alembic\]") as raised:
        alembic_config(project / "alembic.ini")
    assert raised.value.exit_code == ExitCode.CONFIG


def _insert(path: Path, after: str, line: str) -> None:
    text = path.read_text()
    assert after in text
    path.write_text(text.replace(after, after + line + "\n", 1))


APP_BASE = (
    "raise type('AppBase', (BaseException,), {})"
    "('the app stopped: ' + __import__('os').environ['X_SECRET'])"
)


@pytest.mark.parametrize(
    "statement",
    [APP_BASE, "raise __import__('asyncio').CancelledError()", "raise GeneratorExit()"],
)
@pytest.mark.parametrize("where", ["env.py", "revision"])
def test_a_base_exception_from_the_application_is_classified(
    project: Path, monkeypatch: pytest.MonkeyPatch, statement: str, where: str
) -> None:
    """test_application_errors_offline / _against_the_database: a BaseException that is
    not an Exception (asyncio.CancelledError, an application's own) escaped as a traceback
    (and its message, which may quote the URL, unscrubbed)."""
    monkeypatch.setenv("X_SECRET", "Qv7-secret-Jx4")
    if where == "env.py":
        _insert(project / "migrations" / "env.py", "config = context.config\n", statement)
    else:
        revision = project / "migrations" / "versions" / "0003_table.py"
        _insert(revision, "def upgrade() -> None:\n", "    " + statement)
    config = alembic_config(project / "alembic.ini")
    with pytest.raises(MigrateLockError) as raised:
        run_offline(config, "heads")
    assert raised.value.exit_code in (ExitCode.CONFIG, ExitCode.MIGRATION_FAILED)


def test_a_base_exception_while_loading_a_revision_is_classified(project: Path) -> None:
    revision = project / "migrations" / "versions" / "0003_table.py"
    _insert(revision, '"""\n', "raise __import__('asyncio').CancelledError('x')")
    with pytest.raises(ConfigError, match=r"0003_table\.py"):
        load_scripts(alembic_config(project / "alembic.ini"))


def test_a_server_error_with_an_empty_message_is_described() -> None:
    """test_application_errors_against_the_database: psycopg.errors.UndefinedTable('')
    raised by a revision made describe_sql_error fail with IndexError (a 'bug' line, and a
    traceback offline)."""
    assert describe_sql_error(psycopg.errors.UndefinedTable("")) == "[42P01] UndefinedTable"


def test_an_exception_whose_str_fails_has_a_first_line() -> None:
    """test_a_broken_revision_...: an application's exception whose __str__ raises made the
    report itself fail ('unexpected ZeroDivisionError', a 'bug' line)."""
    odd = type("Odd", (Exception,), {"__str__": lambda self: 1 / 0})("m")
    assert first_line(odd) == "Odd"


def test_a_query_password_with_a_line_break_is_masked_whole() -> None:
    """test_any_password_logs_in_and_is_never_printed: libpq logs in with a raw line break
    in ``?password=``, and ``plan`` printed the masked URL with the password's tail (the
    masking ended the value at the line break before the whole password was replaced)."""
    url = parse_database_url("postgres://app@127.0.0.1:5432/db?password=Qv7\\\nsecret\tJx4")
    assert "secret" not in url.masked and "Jx4" not in url.masked, url.masked


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("depends_on = 123", "KeyError: 123"),
        ("depends_on = object()", "KeyError: <object object"),
        ('revision = ("0001", "0001")', "its revision id is a tuple, not a string"),
    ],
)
def test_odd_values_in_a_revision_file_are_a_config_error(
    project: Path, line: str, expected: str
) -> None:
    """test_a_broken_revision_is_one_line_and_a_documented_code: a number in depends_on
    failed the report of the missing revision ('unexpected TypeError', a 'bug' line); a
    tuple as the revision id loaded, then `heads` failed printing it (a traceback)."""
    revision = project / "migrations" / "versions" / "0003_table.py"
    name = line.split(" =", maxsplit=1)[0]
    text = revision.read_text()
    start = text.index(f"\n{name} = ") + 1
    revision.write_text(text[:start] + line + text[text.index("\n", start) :])
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_scripts(alembic_config(project / "alembic.ini"))
