"""The JUnit writer: what CI test reporters read from ``lint --junit`` and ``smoke --junit``."""

from __future__ import annotations

import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from migrate_lock.checks.junit import JUnitCase, render_junit, write_junit
from migrate_lock.errors import ConfigError

pytestmark = pytest.mark.unit


def test_counts_failures_and_skips_and_keeps_each_case() -> None:
    """Reporters show the suite's counts first: they must match the cases."""
    cases = [
        JUnitCase("0001", classname="lint"),
        JUnitCase(
            "0002 ban-drop-column",
            classname="lint",
            failure='dropping a column <breaks> clients & "old" code',
            details="line 3: ALTER TABLE t DROP COLUMN c;",
            file="migrations/versions/0002_x.py",
            line=3,
            seconds=0.25,
        ),
        JUnitCase("0003", skipped="needs a live database"),
    ]
    root = ET.fromstring(render_junit("migrate-lock lint", cases))
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    assert suite.get("errors") == "0"
    elements = suite.findall("testcase")
    assert [e.get("name") for e in elements] == ["0001", "0002 ban-drop-column", "0003"]
    failure = elements[1].find("failure")
    assert failure is not None
    assert failure.get("message") == 'dropping a column <breaks> clients & "old" code'
    assert failure.text == "line 3: ALTER TABLE t DROP COLUMN c;"
    assert elements[1].get("file") == "migrations/versions/0002_x.py"
    assert elements[1].get("line") == "3"
    assert elements[1].get("time") == "0.250"
    assert elements[2].get("classname") == "migrate-lock lint"  # the suite name by default
    assert elements[2].find("skipped") is not None


def test_an_empty_suite_is_a_valid_document() -> None:
    """lint with nothing to check still writes a report the CI step can upload."""
    root = ET.fromstring(render_junit("empty", []))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "0"


def test_write_creates_the_folder_and_a_readable_file(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "lint.xml"
    write_junit(target, "s", [JUnitCase("a", failure="boom")])
    assert ET.parse(target).getroot().find("testsuite") is not None
    assert target.stat().st_mode & stat.S_IROTH  # a CI uploader running as another user
    assert [p.name for p in target.parent.iterdir()] == ["lint.xml"]  # no temporary left


def test_an_unwritable_path_is_a_config_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"cannot write the JUnit report .*file/lint.xml"):
        write_junit(blocker / "lint.xml", "s", [])
