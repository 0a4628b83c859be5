"""The documented ``get_url()`` of an env.py that builds its URL from application settings
(docs/existing-projects.md): it prefers the URL migrate-lock resolved and then does not
import the application's settings, so the offline verbs need none of its secrets."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs" / "existing-projects.md"
SECTION = "## An `env.py` that builds its URL from application settings"


class FakeConfig:
    def __init__(self, url: str | None) -> None:
        self.url = url

    def get_main_option(self, name: str) -> str | None:
        return self.url if name == "sqlalchemy.url" else None


def documented_get_url(config: FakeConfig) -> Any:
    section = DOCS.read_text(encoding="utf-8").split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    changed = next(block for block in blocks if "get_main_option" in block)
    namespace: dict[str, Any] = {"config": config}
    exec(compile(changed, str(DOCS), "exec"), namespace)  # the docs' own code
    return namespace["get_url"]


def test_the_url_migrate_lock_set_wins_and_the_settings_are_not_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql+psycopg://app:pw@db/app"
    monkeypatch.setitem(sys.modules, "app", None)  # importing the application would fail

    assert documented_get_url(FakeConfig(url))() == url


def test_plain_alembic_still_reads_the_application_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = types.SimpleNamespace(SQLALCHEMY_DATABASE_URI="postgresql://app:pw@app-db/app")
    for name in ("app", "app.core"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    config_module = types.ModuleType("app.core.config")
    config_module.settings = settings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "app.core.config", config_module)

    assert documented_get_url(FakeConfig(None))() == "postgresql://app:pw@app-db/app"
