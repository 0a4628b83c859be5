"""pytest-alembic and migrate-lock side by side (issue 18, item 1).

Both tools hand ``env.py`` something in ``config.attributes["connection"]``: pytest-alembic
an Engine (its ``alembic_engine`` fixture), migrate-lock the Connection that holds the lock.
pytest-alembic's four built-in tests are collected here, as its docs say to, against a
``migrate-lock init`` project on the real test server (the non-superuser owner role); and
both documented forms of ``env.py`` run under both tools.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import alembic
import pytest
import pytest_alembic
from pytest_alembic.config import Config as PytestAlembicConfig
from pytest_alembic.tests import (  # collected as this module's tests, as pytest-alembic says
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from migrate_lock.dsn import parse_database_url
from migrate_lock.scaffold import init_project

from support import ITEM_MODELS, ITEM_REVISION, query, run_cli

__all__ = [
    "test_model_definitions_match_ddl",
    "test_single_head_revision",
    "test_up_down_consistency",
    "test_upgrade",
]

MODELS = "shop_models"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "existing-projects.md"
GENERIC_ENV_PY = Path(alembic.__file__).parent / "templates" / "generic" / "env.py"


def write_shop(path: Path, env_py: str | None = None) -> Path:
    """A ``migrate-lock init`` project with one table, its models and (optionally) another
    env.py; ``target_metadata`` points at the models, as an application's would."""
    init_project(path)
    (path / f"{MODELS}.py").write_text(ITEM_MODELS)
    (path / "migrations" / "versions" / "0002_items.py").write_text(ITEM_REVISION)
    env = path / "migrations" / "env.py"
    source = env_py if env_py is not None else env.read_text()
    env.write_text(
        source.replace(
            "target_metadata = None", f"from {MODELS} import metadata as target_metadata", 1
        )
    )
    return path


def enter_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in ``project`` as pytest-alembic users do. ``prepend_sys_path = .`` makes "." a
    path entry; its cached finder may still list an earlier test's directory, so the
    models module written just now is only found once the import caches are dropped."""
    monkeypatch.chdir(project)
    sys.modules.pop(MODELS, None)
    importlib.invalidate_caches()


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # pytest-alembic reads alembic.ini from the directory pytest runs in, and
    # `prepend_sys_path = .` is relative to it, as in an application's repository.
    project = write_shop(tmp_path / "shop")
    enter_project(project, monkeypatch)
    yield project
    sys.modules.pop(MODELS, None)


@pytest.fixture
def alembic_config(shop: Path) -> dict[str, str]:
    return {"file": str(shop / "alembic.ini")}


@pytest.fixture
def alembic_engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(parse_database_url(database_url).sqlalchemy)
    yield engine
    engine.dispose()


def documented_env_py() -> str:
    """Alembic's ``generic`` env.py with the change docs/existing-projects.md describes."""
    section = DOCS.read_text().split("## The change, for Alembic's `generic` template", 1)[1]
    section = section.split("\n## ", 1)[0]
    imports, logging, online = re.findall(r"```python\n(.*?)```", section, re.DOTALL)[:3]
    source = GENERIC_ENV_PY.read_text()
    anchor = "from alembic import context\n"
    source = source.replace(anchor, anchor + imports)
    source = source.replace(
        "if config.config_file_name is not None:\n    fileConfig(config.config_file_name)\n",
        logging,
    )
    start = source.index("def run_migrations_online()")
    end = source.index("\nif context.is_offline_mode():")
    return source[:start] + online + "\n" + source[end:]


def pytest_alembic_env_py() -> str:
    """Alembic's ``generic`` env.py changed as pytest-alembic's setup page says."""
    source = GENERIC_ENV_PY.read_text()
    changed = source.replace(
        "    connectable = engine_from_config(\n",
        '    connectable = context.config.attributes.get("connection", None)\n\n'
        "    if connectable is None:\n"
        "        connectable = engine_from_config(\n",
        1,
    )
    assert changed != source
    return changed


@pytest.mark.parametrize(
    "env_py",
    [pytest_alembic_env_py, documented_env_py],
    ids=["pytest_alembic_docs", "our_docs"],
)
def test_both_env_py_forms_run_under_both_tools(
    tmp_path: Path, database_url: str, env_py: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why: an env.py written as pytest-alembic says called ``.connect()`` on migrate-lock's
    Connection ("'Connection' object has no attribute 'connect'", reported as "fix the
    revision"); the documented env.py gave pytest-alembic's Engine to context.configure."""
    assert callable(env_py)
    project = write_shop(tmp_path / "shop", env_py())
    enter_project(project, monkeypatch)

    result = run_cli(["upgrade"], cwd=project, database_url=database_url)

    assert result.returncode == 0, result.stderr
    assert query(database_url, "SELECT version_num FROM alembic_version") == [("0002",)]

    # And pytest-alembic, on the same env.py: down to base and up again.
    engine = create_engine(parse_database_url(database_url).sqlalchemy)
    try:
        config = PytestAlembicConfig.from_raw_config({"file": str(project / "alembic.ini")})
        with pytest_alembic.runner(config=config, engine=engine) as runner:
            runner.migrate_down_to("base", return_current=False)
            assert query(database_url, "SELECT to_regclass('item') IS NULL") == [(True,)]
            runner.migrate_up_to("heads", return_current=False)
            assert runner.current == "0002"
    finally:
        engine.dispose()
        sys.modules.pop(MODELS, None)
