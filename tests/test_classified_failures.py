"""Every failure classified (issue 14): load errors, the application's own errors in
env.py, revisions the server ends for idling, revisions that exit, an empty versions/
folder, durations the server refuses, a broken marker table. Real CLI processes.

Most cases fail before any connection is made, so they point at a closed port with no
connect budget: a verb that connected after all would exit 75, not the code expected.
The same cases in-process (every breakage, no process each) are tests/unit/test_load_errors.py.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from migrate_lock.sandbox.example import write_example_project

from support import TEST_PASSWORD, assert_one_line_failure, query, run_cli

#: Nothing listens here: only a verb that fails before connecting gives the expected code.
NO_SERVER = f"postgresql://app:{TEST_PASSWORD}@127.0.0.1:1/app"

#: Every verb that loads the revisions (issue 14, item 2).
LOADING_VERBS = [
    ["upgrade"],
    ["status"],
    ["heads"],
    ["plan"],
    ["freeze"],
    ["lint"],
    ["upgrade", "--sql"],
]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """The example project with 3 revisions (the failures need no more)."""
    path = tmp_path / "project"
    write_example_project(path, 3)
    return path


def _revision(project: Path, number: int) -> Path:
    return next((project / "migrations" / "versions").glob(f"{number:04d}_*.py"))


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, path
    path.write_text(text.replace(old, new, 1))


def test_a_revision_that_does_not_load_is_exit_78_on_every_verb(small: Path) -> None:
    """Why: it was 'unexpected SyntaxError; this is a bug in migrate-lock' (exit 1)."""
    _replace(_revision(small, 2), "def downgrade", "def oops(:\n    pass\n\n\ndef downgrade")
    for verb in LOADING_VERBS:
        result = run_cli(verb, cwd=small, database_url=NO_SERVER, DB_CONNECT_TIMEOUT_SECONDS="0")
        line = assert_one_line_failure(result, 78)
        assert "migrations/versions/0002_start.py, line 18: SyntaxError: invalid syntax" in line
        assert "bug" not in line, verb


def test_an_alembic_ini_without_a_section_header_is_exit_78_naming_it(small: Path) -> None:
    ini = small / "alembic.ini"
    ini.write_text("script_location = migrations\n" + ini.read_text())
    result = run_cli(["status"], cwd=small, database_url=NO_SERVER, DB_CONNECT_TIMEOUT_SECONDS="0")
    line = assert_one_line_failure(result, 78)
    assert "alembic.ini, line 1: has no section header" in line


def test_an_unterminated_quote_in_dotenv_is_exit_78_naming_the_line(small: Path) -> None:
    """Why: python-dotenv skipped the line with a warning: ENVIRONMENT=production was lost
    and the production checks with it."""
    (small / ".env").write_text('LOG_FORMAT=text\nENVIRONMENT="production\n')
    result = run_cli(["upgrade"], cwd=small, database_url=NO_SERVER, DB_CONNECT_TIMEOUT_SECONDS="0")
    line = assert_one_line_failure(result, 78)
    assert ".env, line 2: cannot be parsed" in line


def test_a_duration_the_server_refuses_is_exit_78_at_start_up(small: Path) -> None:
    """Why: 30d passed validation, then SET failed under the lock with a 'bug' line."""
    result = run_cli(
        ["upgrade"],
        cwd=small,
        database_url=NO_SERVER,
        DDL_STATEMENT_TIMEOUT="30d",
        DB_CONNECT_TIMEOUT_SECONDS="0",
    )
    line = assert_one_line_failure(result, 78)
    assert "DDL_STATEMENT_TIMEOUT is invalid (got '30d'): must be at most 2147483647ms" in line


def test_the_duration_limit_is_the_servers(database_url: str) -> None:
    """Why: the schema's limit must be the one SET applies, no stricter and no looser."""
    from migrate_lock.lean.settings_schema import row

    parse = row("ddl_statement_timeout").parse
    values = ["24d", "25d", "596h", "597h", "2147483647", "2147483647.4", "2147483647.5"]
    with psycopg.connect(database_url, autocommit=True) as connection:
        for value in values:
            try:
                connection.execute(f"SET statement_timeout = '{value}'")
                server_accepts = True
            except psycopg.errors.InvalidParameterValue:
                server_accepts = False
            try:
                parse(value)
                we_accept = True
            except ValueError:
                we_accept = False
            assert we_accept == server_accepts, value


@pytest.mark.parametrize("verb", [["upgrade"], ["status"], ["run", "--", "true"]])
def test_an_empty_versions_folder_is_exit_78(small: Path, verb: list[str]) -> None:
    """Why: an image built without versions/ exited 0 and started the application."""
    for path in (small / "migrations" / "versions").glob("*.py"):
        path.unlink()
    result = run_cli(verb, cwd=small, database_url=NO_SERVER, DB_CONNECT_TIMEOUT_SECONDS="0")
    line = assert_one_line_failure(result, 78)
    assert "no revisions found in migrations/versions" in line
    assert "ALLOW_NO_REVISIONS" in line


def test_a_project_with_no_revisions_yet_may_say_so(small: Path, database_url: str) -> None:
    for path in (small / "migrations" / "versions").glob("*.py"):
        path.unlink()
    result = run_cli(["upgrade"], cwd=small, database_url=database_url, ALLOW_NO_REVISIONS="1")
    assert result.returncode == 0, result.stderr


APP_SETTINGS_IN_ENV_PY = """config = context.config

from pydantic_settings import BaseSettings


class AppSettings(BaseSettings):
    secret_key: str


app_settings = AppSettings()
"""


@pytest.mark.parametrize("verb", [["upgrade"], ["upgrade", "--sql"]])
def test_the_applications_own_error_in_env_py_is_exit_78_attributed_to_env_py(
    small: Path, database_url: str, verb: list[str]
) -> None:
    """Why: a CI job without the app's secrets got 'this is a bug in migrate-lock'."""
    _replace(small / "migrations" / "env.py", "config = context.config\n", APP_SETTINGS_IN_ENV_PY)
    result = run_cli(verb, cwd=small, database_url=database_url)
    line = assert_one_line_failure(result, 78)
    assert "migrations/env.py, line 29: raised ValidationError: 1 validation error" in line
    assert "bug" not in line
    assert query(database_url, "SELECT to_regclass('alembic_version')") == [(None,)]


@pytest.mark.parametrize("where", ["revision", "env.py"])
def test_a_revision_or_env_py_that_exits_the_process_is_exit_1_rolled_back(
    small: Path, database_url: str, where: str
) -> None:
    """Why: sys.exit(0) in a revision ended the run with exit 0, nothing applied, no line."""
    if where == "revision":
        _replace(_revision(small, 3), "def upgrade() -> None:\n", EXITS)
        expected = "revision 0003 exited the process (SystemExit(0)); rolled back"
    else:
        _replace(small / "migrations" / "env.py", "def run_on(connection) -> None:", RUN_ON)
        expected = "env.py exited the process (SystemExit(0)); rolled back"
    result = run_cli(["upgrade"], cwd=small, database_url=database_url)
    line = assert_one_line_failure(result, 1)
    assert expected in line
    assert query(database_url, "SELECT to_regclass('alembic_version')") == [(None,)]


EXITS = "def upgrade() -> None:\n    import sys\n\n    sys.exit(0)\n"
RUN_ON = (
    "def run_on(connection) -> None:\n    import sys\n\n    sys.exit(0)\n\n\n"
    "def _unused(connection) -> None:"
)


def test_a_revision_the_server_ends_for_idling_is_exit_1_without_a_reconnect(
    small: Path, database_url: str
) -> None:
    """Why: it was a lost connection, rerun four times, then exit 75: retried forever."""
    _replace(
        _revision(small, 3),
        "def upgrade() -> None:\n",
        "def upgrade() -> None:\n    import time\n\n    op.execute('SELECT 1')\n"
        "    time.sleep(0.6)\n",
    )
    result = run_cli(
        ["upgrade"], cwd=small, database_url=database_url, DDL_IDLE_IN_TRANSACTION_TIMEOUT="150ms"
    )
    line = assert_one_line_failure(result, 1)
    assert "revision 0003 (table t_3) was ended by the server" in line
    assert "DDL_IDLE_IN_TRANSACTION_TIMEOUT" in line and "25P03" in line
    assert "db.connection_lost" not in result.stderr
    assert query(database_url, "SELECT to_regclass('alembic_version')") == [(None,)]


def test_a_marker_table_missing_a_column_is_a_configuration_error(
    project: Path, at_head: str
) -> None:
    """Why: it was refused through 'unexpected UndefinedColumn; this is a bug'."""
    marker = query(
        at_head,
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM"
        " information_schema.columns WHERE column_name = 'set_by' LIMIT 1",
    )[0][0]
    query(at_head, f"ALTER TABLE {marker} DROP COLUMN set_by")
    result = run_cli(["env", "show"], cwd=project, database_url=at_head)
    line = assert_one_line_failure(result, 78)
    assert 'column "set_by" does not exist' in line
    assert "bug" not in line


def test_a_blank_environment_and_app_env_production_is_production_for_the_cli(
    small: Path,
) -> None:
    """Why: the blank ENVIRONMENT is unset, so APP_ENV decides, as protect() reads it
    (tests/unit/test_load_errors.py): production refuses a database on localhost."""
    result = run_cli(
        ["upgrade"],
        cwd=small,
        database_url=NO_SERVER,
        ENVIRONMENT="",
        APP_ENV="production",
        DB_CONNECT_TIMEOUT_SECONDS="0",
    )
    line = assert_one_line_failure(result, 78)
    assert "localhost" in line or "127.0.0.1" in line


def test_a_bad_reference_that_env_py_reads_names_alembic_ini(small: Path) -> None:
    """Why: env.py reads options Alembic never does; their errors are alembic.ini's."""
    ini = small / "alembic.ini"
    ini.write_text(ini.read_text().replace("path_separator = os", "path_separator = os\nx = 5%"))
    _replace(
        small / "migrations" / "env.py",
        "config = context.config\n",
        'config = context.config\nconfig.get_main_option("x")\n',
    )
    result = run_cli(["upgrade", "--sql"], cwd=small, database_url=NO_SERVER)
    line = assert_one_line_failure(result, 78)
    assert "alembic.ini, line 7: option 'x' in section [alembic] has a bad %-reference" in line
