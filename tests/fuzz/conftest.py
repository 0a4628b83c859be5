"""Fixtures of the fuzz tier: one small project and one database at its head per worker."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from migrate_lock.dsn import parse_database_url
from migrate_lock.sandbox.example import write_example_project

from .harness import check, run, scratch_database


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test below tests/fuzz/ is in the tier (``-m fuzz`` selects it)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.fuzz)


@pytest.fixture(scope="session")
def small_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example project with 3 revisions: the examples copy it before they change it."""
    path = tmp_path_factory.mktemp("fuzz") / "project"
    write_example_project(path, 3)
    return path


@pytest.fixture(scope="session")
def frozen_project(small_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``small_project`` with its heads manifest (``freeze``): ``upgrade`` asks the lean path."""
    path = tmp_path_factory.mktemp("fuzz-frozen") / "project"
    shutil.copytree(small_project, path)
    check(run(["freeze"], cwd=path, database_url=None), codes={0})
    return path


@pytest.fixture(scope="session")
def small_head(pg_server: Any, small_project: Path) -> Iterator[str]:
    """The name of a database at ``small_project``'s head (made by a real upgrade), for
    examples to copy (``scratch_database(..., template=small_head)``)."""
    server = pg_server
    with scratch_database(server.admin_url, server.url) as url:
        result = run(["upgrade"], cwd=small_project, database_url=url)
        check(result, codes={0})
        yield parse_database_url(url).database
