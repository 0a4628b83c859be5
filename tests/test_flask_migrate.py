"""Flask-Migrate and migrate-lock side by side (issue 18, items 2 and 3; issue 15, section 6).

The project is ``examples/flask_migrate/``: a Mega-Tutorial-style application whose
``migrations/`` are what ``flask db init`` and ``flask db migrate`` wrote, changed as
docs/existing-projects.md ("Flask-Migrate") says. The diffs are read from that page and
applied (``git apply``) to the installed Flask-Migrate's own ``flask db init`` output, so the
page, the example and the template cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import flask_migrate
import pytest

from migrate_lock.errors import ConfigError
from migrate_lock.runner import alembic_config
from migrate_lock.version_table import HISTORY_TABLE

from support import assert_one_line_failure, cli_env, query, run_cli, spawn

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flask_migrate"
DOCS = ROOT / "docs" / "existing-projects.md"
TEMPLATE = Path(flask_migrate.__file__).parent / "templates" / "flask"
REVISION = "ca218bddfdfb"
ALEMBIC_INI = {"ALEMBIC_CONFIG": "migrations/alembic.ini"}
BIN = str(Path(sys.executable).parent)


#: env.py's ``config = context.config`` line followed by pushing the microblog app's
#: context when none is active (what someone adopting Flask-Migrate 4 adds first).
WITH_APP_CONTEXT = (
    "config = context.config\n\n"
    "from flask import has_app_context\n"
    "if not has_app_context():\n"
    "    from microblog import create_app\n"
    "    create_app().app_context().push()\n"
)


def section(title: str) -> str:
    text = DOCS.read_text().split(f"\n{title}\n", 1)[1]
    level = title.split(" ", 1)[0]
    return re.split(rf"\n{level} ", text, maxsplit=1)[0]


def documented_diff() -> str:
    """The ``diff`` blocks of "1. The change, for Flask-Migrate 4's template"."""
    text = section("### 1. The change, for Flask-Migrate 4's template")
    blocks = re.findall(r"```diff\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 2  # alembic.ini, env.py
    return "".join(blocks)


def flask_db_init(path: Path) -> Path:
    """The example application with ``migrations/`` as the installed ``flask db init``
    writes it (no revision yet)."""
    shutil.copytree(EXAMPLE / "microblog", path / "microblog")
    result = subprocess.run(
        [f"{BIN}/flask", "--app", "microblog", "db", "init"],
        cwd=path,
        env=cli_env(None),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return path


def apply_documented_diff(project: Path) -> None:
    patch = project / "documented.diff"
    patch.write_text(documented_diff())
    subprocess.run(["git", "apply", str(patch)], cwd=project, check=True, timeout=30)
    patch.unlink()


def example_project(path: Path) -> Path:
    """A copy of examples/flask_migrate (the documented change applied, one revision)."""
    shutil.copytree(EXAMPLE, path, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
    return path


@pytest.mark.unit
def test_the_documented_diffs_turn_flask_db_init_into_the_example(tmp_path: Path) -> None:
    """The diffs apply to the installed Flask-Migrate's template, and give the example's
    files (which the other tests run)."""
    project = flask_db_init(tmp_path / "microblog")

    apply_documented_diff(project)

    for name in ("alembic.ini", "env.py", "script.py.mako"):
        assert (project / "migrations" / name).read_text() == (
            EXAMPLE / "migrations" / name
        ).read_text(), name


@pytest.mark.unit
def test_the_script_location_hint_fits_flask_migrates_layout(tmp_path: Path) -> None:
    """Why: the hint said `script_location = %(here)s/migrations`, wrong for Flask-Migrate's
    migrations/alembic.ini (it is %(here)s there, and prepend_sys_path is needed)."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    shutil.copy(TEMPLATE / "env.py", migrations / "env.py")
    shutil.copy(TEMPLATE / "alembic.ini.mako", migrations / "alembic.ini")

    with pytest.raises(ConfigError) as refused:
        alembic_config(migrations / "alembic.ini")

    assert "`script_location = %(here)s`" in str(refused.value)
    assert "`prepend_sys_path = %(here)s/..`" in str(refused.value)
    assert "flask-migrate" in str(refused.value)

    # The usual layout (alembic.ini beside migrations/) keeps its hint.
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    with pytest.raises(ConfigError) as usual:
        alembic_config(tmp_path / "alembic.ini")
    assert "`script_location = %(here)s/migrations`" in str(usual.value)


def test_four_replicas_migrate_a_flask_migrate_project_once(
    tmp_path: Path, database_url: str
) -> None:
    """The documented change: four replicas at once, one migrates, the revision runs once;
    then ``flask db current`` through ``migrate-lock run`` names it (passed through), and
    ``flask db check`` finds the models and the database equal."""
    project = example_project(tmp_path / "microblog")

    replicas = [
        spawn(["upgrade"], cwd=project, database_url=database_url, **ALEMBIC_INI) for _ in range(4)
    ]
    outputs = [replica.communicate(timeout=120) for replica in replicas]

    assert [replica.returncode for replica in replicas] == [0] * 4, outputs
    applied = [
        line
        for _, stderr in outputs
        for line in stderr.splitlines()
        if "migrate.revision" in line and f"revision={REVISION}" in line
    ]
    assert len(applied) == 1, outputs
    assert query(database_url, "SELECT version_num FROM alembic_version") == [(REVISION,)]
    assert query(database_url, f"SELECT count(*) FROM {HISTORY_TABLE}") == [(1,)]
    assert query(database_url, "SELECT to_regclass('post') IS NOT NULL") == [(True,)]

    current = run_cli(
        ["run", "--", "flask", "--app", "microblog", "db", "current"],
        cwd=project,
        database_url=database_url,
        PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        **ALEMBIC_INI,
    )

    assert current.returncode == 0, current.stderr
    assert "run.passthrough" in current.stderr
    assert f"{REVISION} (head)" in current.stdout

    # Autogenerate (`flask db check`) sees no change: not migrate-lock's own tables either.
    check = run_cli(
        ["run", "--", "flask", "--app", "microblog", "db", "check"],
        cwd=project,
        database_url=database_url,
        PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        **ALEMBIC_INI,
    )

    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr


def test_upgrade_sql_and_lint_without_a_database_render_postgresql(tmp_path: Path) -> None:
    """Why (issue 18, item 2): with no database variable, the application falls back to
    SQLite; the documented env.py keeps the URL migrate-lock set, so the SQL is PostgreSQL's
    and lint finds no syntax errors."""
    project = example_project(tmp_path / "microblog")

    sql = run_cli(["upgrade", "--sql"], cwd=project, database_url=None, **ALEMBIC_INI)

    assert sql.returncode == 0, sql.stderr
    assert 'CREATE TABLE "user"' in sql.stdout
    assert "id SERIAL NOT NULL" in sql.stdout  # PostgreSQL's; SQLite says INTEGER
    assert "TIMESTAMP WITHOUT TIME ZONE" in sql.stdout
    assert f"INSERT INTO alembic_version (version_num) VALUES ('{REVISION}')" in sql.stdout

    lint = run_cli(["lint", "--json"], cwd=project, database_url=None, **ALEMBIC_INI)

    assert lint.returncode in (0, 1), lint.stderr
    report = json.loads(lint.stdout)
    assert "syntax" not in json.dumps(report).lower(), report


def unchanged_env_py(project: Path, *, with_app_context: bool) -> Path:
    """The example, with Flask-Migrate's own env.py back (the application context pushed,
    optionally, as the first thing someone adopting it would add)."""
    source = (TEMPLATE / "env.py").read_text()
    if with_app_context:
        source = source.replace(
            "config = context.config\n",
            WITH_APP_CONTEXT,
            1,
        )
    (project / "migrations" / "env.py").write_text(source)
    return project


@pytest.mark.parametrize("verb", [["upgrade", "--sql"], ["lint"]])
def test_flask_migrates_own_env_py_is_refused_for_its_sqlite_dialect(
    tmp_path: Path, verb: list[str]
) -> None:
    """Why (issue 18, item 2): Flask-Migrate's env.py replaces sqlalchemy.url with the
    application's SQLite fallback; upgrade --sql printed SQLite SQL and lint reported it as
    141 syntax errors. Now: exit 78 naming the dialect and why, no SQL."""
    project = unchanged_env_py(example_project(tmp_path / "microblog"), with_app_context=True)

    result = run_cli(verb, cwd=project, database_url=None, **ALEMBIC_INI)

    line = assert_one_line_failure(result, 78)
    assert "env.py configured the sqlite dialect, not PostgreSQL" in line
    assert "Flask-Migrate's env.py sets it from the application's SQLALCHEMY_DATABASE_URI" in line
    assert "CREATE TABLE" not in result.stdout


def test_plan_refuses_the_application_s_sqlite_fallback_too(
    tmp_path: Path, database_url: str
) -> None:
    """migrate-lock on MIGRATION_DATABASE_URL, the application's DATABASE_URL unset: plan
    (pending revisions from the database, SQL rendered offline) refuses the same way."""
    project = unchanged_env_py(example_project(tmp_path / "microblog"), with_app_context=True)

    result = run_cli(
        ["plan"],
        cwd=project,
        database_url=None,
        MIGRATION_DATABASE_URL=database_url,
        **ALEMBIC_INI,
    )

    line = assert_one_line_failure(result, 78)
    assert "env.py configured the sqlite dialect, not PostgreSQL" in line
    assert "CREATE TABLE" not in result.stdout


def test_flask_migrates_own_env_py_asks_for_an_application_context(tmp_path: Path) -> None:
    """Why (issue 18, item 3): outside `flask`, the template's current_app raised "Working
    outside of application context", reported with the hint about application settings."""
    project = unchanged_env_py(example_project(tmp_path / "microblog"), with_app_context=False)

    result = run_cli(["upgrade", "--sql"], cwd=project, database_url=None, **ALEMBIC_INI)

    line = assert_one_line_failure(result, 78)
    assert "migrations/env.py" in line
    assert "push the application's context in env.py" in line
    assert "#flask-migrate" in line


def test_the_flask_migrate_3_replacements_run_under_the_lock(
    tmp_path: Path, database_url: str
) -> None:
    """The section "Older Flask-Migrate templates": its before/after pairs, on a template
    that has the 2.6-3.x lines (db.get_engine(), deprecated in Flask-SQLAlchemy 3.0 and gone
    in 3.2: under migrate-lock the changed file never calls it)."""
    text = section("### Older Flask-Migrate templates")
    url_before, url_after, engine_before, engine_after = re.findall(
        r"```python\n(.*?)```", text, re.DOTALL
    )[:4]
    project = example_project(tmp_path / "microblog")
    env_py = project / "migrations" / "env.py"
    old = (
        (TEMPLATE / "env.py")
        .read_text()
        .replace("config.set_main_option('sqlalchemy.url', get_engine_url())\n", url_before, 1)
        .replace("    connectable = get_engine()\n", engine_before, 1)
    )
    assert old.count(url_before) == old.count(engine_before) == 1
    changed = old.replace(url_before, url_after).replace(engine_before, engine_after)
    # The application context and the fileConfig guard, as for Flask-Migrate 4.
    changed = changed.replace(
        "config = context.config\n",
        WITH_APP_CONTEXT,
        1,
    ).replace(
        "fileConfig(config.config_file_name)\n",
        "if config.attributes.get('configure_logger', True):\n"
        "    fileConfig(config.config_file_name)\n",
        1,
    )
    env_py.write_text(changed)

    # Both replacements count: unchanged, the URL line would call db.get_engine() on import.
    result = run_cli(["upgrade"], cwd=project, database_url=database_url, **ALEMBIC_INI)

    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT version_num FROM alembic_version") == [(REVISION,)]
