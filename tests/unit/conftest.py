"""Fixtures of the unit tier (in-process, no database)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest


@pytest.fixture
def cwd(tmp_path: Path) -> Iterator[Path]:
    """An empty environment, in a repository of its own (no stray .env above it)."""
    (tmp_path / ".git").mkdir()
    with mock.patch.dict(os.environ, clear=True):
        before = os.getcwd()
        os.chdir(tmp_path)
        try:
            yield tmp_path
        finally:
            os.chdir(before)
