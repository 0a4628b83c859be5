"""Project files that do not load are configuration errors naming the file (issue 14).

In-process, no database: the scripts, ``alembic.ini`` and ``.env`` are loaded the way
every verb loads them (``Project(settings).scripts``, ``load_settings()``). The CLI side
(one line, exit 78, on every verb) is in tests/test_classified_failures.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from migrate_lock.errors import (
    ConfigError,
    DatabaseObjectsChanged,
    ExitCode,
    NoRevisions,
    ProjectFileError,
    TableLockTimeout,
    unclassified_server_error,
)
from migrate_lock.lean.settings_schema import row
from migrate_lock.metadata_guard import _setting as protect_setting
from migrate_lock.project import Project
from migrate_lock.sandbox.example import write_example_project
from migrate_lock.settings import load_settings

pytestmark = pytest.mark.unit

Edit = Callable[[Path], None]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example project (3 revisions) as the current directory, no stray settings."""
    path = tmp_path / "project"
    write_example_project(path, 3)
    monkeypatch.chdir(path)
    for name in ("ALLOW_NO_REVISIONS", "ENVIRONMENT", "APP_ENV", "DDL_STATEMENT_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    return path


def _revision(project: Path, number: int) -> Path:
    return next((project / "migrations" / "versions").glob(f"{number:04d}_*.py"))


def _edit(number: int, old: str, new: str) -> Edit:
    def edit(project: Path) -> None:
        path = _revision(project, number)
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))

    return edit


def _load(project: Path) -> ProjectFileError:
    with pytest.raises(ProjectFileError) as raised:
        Project(load_settings()).scripts  # noqa: B018 - loading is the point
    error = raised.value
    assert error.exit_code == ExitCode.CONFIG
    assert "\n" not in str(error)
    return error


@pytest.mark.parametrize(
    ("edit", "path", "line", "says"),
    [
        (
            _edit(2, "def downgrade", "def oops(:\n    pass\n\n\ndef downgrade"),
            "0002_start.py",
            None,
            "SyntaxError: invalid syntax",
        ),
        (
            _edit(2, "from alembic import op\n", "from alembic import op\nimport no_such_xyz\n"),
            "0002_start.py",
            4,
            "ModuleNotFoundError: No module named 'no_such_xyz'",
        ),
        (_edit(2, 'down_revision = "0001"\n', ""), "0002_start.py", None, "no down_revision"),
        (
            _edit(2, 'down_revision = "0001"', 'down_revision = "0003"'),
            "0002_start.py",
            None,
            "Cycle is detected in revisions (0002, 0003)",
        ),
        (
            _edit(3, 'down_revision = "0002"', 'down_revision = "0000"'),
            "0003_table.py",
            None,
            "revision 0003 has down_revision '0000', which no revision file defines",
        ),
    ],
    ids=["syntax", "import", "no-down-revision", "cycle", "missing-parent"],
)
def test_a_revision_that_does_not_load_names_its_file(
    project: Path, edit: Edit, path: str, line: int | None, says: str
) -> None:
    """Why: a broken revision is the project's to fix (exit 78), not a bug of ours."""
    edit(project)
    error = _load(project)
    assert error.path == f"migrations/versions/{path}"
    assert says in str(error)
    if line is not None:
        assert error.line == line
    assert str(error).startswith(f"migrations/versions/{path}")


def test_a_syntax_error_names_its_line(project: Path) -> None:
    _edit(2, "def downgrade", "def oops(:\n    pass\n\n\ndef downgrade")(project)
    error = _load(project)
    text = _revision(project, 2).read_text().splitlines()
    assert error.line is not None and text[error.line - 1].startswith("def oops(")


def test_a_revision_id_defined_twice_names_both_files(project: Path) -> None:
    """Why: Alembic only warns, and one of the two silently never runs."""
    versions = project / "migrations" / "versions"
    (versions / "0003_copy.py").write_text(_revision(project, 3).read_text())
    error = _load(project)
    assert "revision id '0003' is also defined in" in str(error)
    assert {error.path, str(error).split("also defined in ")[1].split(";")[0]} == {
        "migrations/versions/0003_copy.py",
        "migrations/versions/0003_table.py",
    }


def test_no_revisions_is_a_configuration_error_unless_allowed(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why: an image built without versions/ would start the application on no schema."""
    for path in (project / "migrations" / "versions").glob("*.py"):
        path.unlink()
    with pytest.raises(NoRevisions, match=r"no revisions found in migrations/versions") as raised:
        Project(load_settings()).scripts  # noqa: B018
    assert raised.value.exit_code == ExitCode.CONFIG
    assert "ALLOW_NO_REVISIONS=true" in str(raised.value)
    monkeypatch.setenv("ALLOW_NO_REVISIONS", "true")
    assert Project(load_settings()).scripts.heads() == ()


@pytest.mark.parametrize(
    ("change", "line", "says"),
    [
        (lambda text: "script_location = x\n" + text, 1, "has no section header"),
        (
            lambda text: text.replace(
                "prepend_sys_path = .", "prepend_sys_path = .\nversion_locations = %(nope)s/v"
            ),
            6,
            "option 'version_locations' in section [alembic] has a bad %-reference",
        ),
        (
            lambda text: text.replace("%(here)s/migrations", "%(here)s/migrations%"),
            4,
            "option 'script_location' in section [alembic] has a bad %-reference",
        ),
        (lambda text: text + "\n[alembic]\nx = 1\n", 44, "section [alembic] appears twice"),
    ],
    ids=["no-section-header", "missing-reference", "bare-percent", "duplicate-section"],
)
def test_an_alembic_ini_that_does_not_parse_names_the_file_and_line(
    project: Path, change: Callable[[str], str], line: int, says: str
) -> None:
    ini = project / "alembic.ini"
    ini.write_text(change(ini.read_text()))
    error = _load(project)
    assert (error.path, error.line) == ("alembic.ini", line)
    assert says in str(error)


def test_an_alembic_ini_that_is_not_utf8_names_the_line(project: Path) -> None:
    ini = project / "alembic.ini"
    ini.write_bytes(ini.read_bytes().replace(b"prepend_sys_path", b"# caf\xe9\nprepend_sys_path"))
    error = _load(project)
    assert (error.path, error.line) == ("alembic.ini", 5)
    assert "is not UTF-8 (byte 0xe9)" in str(error)


def test_a_bad_reference_never_shows_the_value(project: Path) -> None:
    """Why: the value of sqlalchemy.url may hold a password."""
    ini = project / "alembic.ini"
    text = ini.read_text().replace(
        "%(here)s/migrations", "%(here)s/migrations\nversion_locations = s3cr%t-Pw/%(here)s"
    )
    ini.write_text(text)
    assert "s3cr" not in str(_load(project))


@pytest.mark.parametrize(
    ("content", "line", "says"),
    [
        (b'LOG_FORMAT=text\nENVIRONMENT="production\n', 2, "cannot be parsed"),
        (b"LOG_FORMAT=text\nAPP_NAME=caf\xe9\n", 2, "is not UTF-8 (byte 0xe9)"),
    ],
    ids=["unterminated-quote", "not-utf8"],
)
def test_a_dotenv_that_does_not_parse_names_the_line(
    project: Path, content: bytes, line: int, says: str
) -> None:
    """Why: python-dotenv skips such a line with a warning, and with ENVIRONMENT in it the
    production checks would silently switch off."""
    (project / ".env").write_bytes(content)
    with pytest.raises(ProjectFileError) as raised:
        load_settings()
    assert (raised.value.path, raised.value.line) == (".env", line)
    assert says in str(raised.value)
    assert raised.value.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("30d", False),
        ("25d", False),
        ("597h", False),
        ("35792min", False),
        ("2147483648", False),
        ("2147483647.5", False),
        ("24d", True),
        ("596h", True),
        ("2147483647", True),
        ("2147483647.4", True),
        ("2147483647499us", True),
        ("0", True),
    ],
)
def test_a_duration_longer_than_postgresql_accepts_is_refused_at_start_up(
    project: Path, value: str, accepted: bool
) -> None:
    """Why: SET statement_timeout = '30d' fails under the lock, after the wait; the schema's
    parser (both paths read with it) refuses it at start-up. The limits are the server's
    (INT_MAX milliseconds after rounding), checked against it in
    tests/test_classified_failures.py."""
    for field in ("ddl_lock_timeout", "ddl_statement_timeout", "ddl_idle_in_transaction_timeout"):
        if accepted:
            assert load_settings(**{field: value}) is not None
            assert row(field).parse(value) == value
            continue
        with pytest.raises(ConfigError, match=rf"{row(field).variable} is invalid.*at most"):
            load_settings(**{field: value})
        with pytest.raises(ValueError, match="at most 2147483647ms"):
            row(field).parse(value)


def test_a_blank_environment_leaves_app_env_to_decide_on_every_path(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why: the CLI and protect() must agree on which environment this is."""
    monkeypatch.setenv("ENVIRONMENT", "")
    monkeypatch.setenv("APP_ENV", "production")
    assert load_settings().environment == "production"
    assert protect_setting("environment") == "production"


def test_an_error_with_other_constructor_arguments_keeps_its_class_when_reworded() -> None:
    """Why: with_message copied by calling __init__ again, which failed (a TypeError, a
    'bug' line) for classes whose __init__ takes other arguments."""
    table = TableLockTimeout("revision 0003", "[55P03] busy").with_message("busy; at 0002")
    assert isinstance(table, TableLockTimeout) and table.exit_code == ExitCode.TEMPORARY
    assert str(table).startswith("busy; at 0002")
    loaded = ProjectFileError("env.py", "raised X", line=3, hint="fix it")
    moved = loaded.with_message(loaded.message + "; the database is at 0002")
    assert isinstance(moved, ProjectFileError)
    assert (moved.path, moved.line) == ("env.py", 3)
    assert str(moved) == "env.py, line 3: raised X; the database is at 0002; fix it"


def test_a_catalog_error_that_reaches_the_top_is_a_configuration_error() -> None:
    """Why: a marker table missing a column is the database's state, not a bug of ours."""
    explained = unclassified_server_error(psycopg.errors.UndefinedColumn("no column set_by"))
    assert isinstance(explained, DatabaseObjectsChanged)
    assert explained.exit_code == ExitCode.CONFIG
    assert "[42703]" in str(explained)
    assert unclassified_server_error(RuntimeError("ours")) is None
    assert unclassified_server_error(psycopg.errors.DivisionByZero("x")) is None
