"""CI runs what the README tells contributors to run: the unit tier, then the whole suite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def commands(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines() if line.startswith("python -m pytest")]


def test_ci_runs_the_unit_tier_then_the_readme_test_command_exactly() -> None:
    """A CI command that drifts from the README's leaves contributors running another suite."""
    readme = (ROOT / "README.md").read_text()
    whole_suite = re.search(r"Run the whole test suite.*?```sh\n(.*?)\n```", readme, re.S)
    assert whole_suite is not None

    assert commands((ROOT / ".ci" / "run").read_text()) == [
        "python -m pytest -m unit -q",
        whole_suite.group(1).strip(),
    ]
    assert "`python -m pytest -m unit`" in readme
