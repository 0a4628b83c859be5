"""The documentation's contract tables match the code."""

from __future__ import annotations

import re
from pathlib import Path

from migrate_lock.errors import ExitCode
from migrate_lock.settings import Settings, variable_name

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_exit_code_table_lists_every_exit_code_once_with_its_name() -> None:
    """Why: restart policies are written from this table; it must be the truth."""
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", (DOCS / "exit-codes.md").read_text(), re.M)
    assert sorted((int(code), name) for code, name in rows) == sorted(
        (int(code), code.name) for code in ExitCode
    )


def test_configuration_reference_documents_every_setting() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [
        variable_name(field)
        for field in Settings.model_fields
        if f"`{variable_name(field)}`" not in text
    ]
    assert missing == []
