"""A JUnit report CI can always read (lint --junit, smoke --junit)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from migrate_lock.checks.junit import JUnitCase, render_junit

pytestmark = pytest.mark.unit


def test_colour_codes_and_control_characters_leave_the_report_well_formed() -> None:
    """Why: a revision whose error came coloured by its logging (ESC[31m…) made smoke
    --junit write a file no XML reader accepts: the CI's test report was lost whole."""
    error = "revision 0007 failed: \x1b[31mValueError\x1b[0m: bad row\x0c\x00 in 'café'\tand\r\n"
    cases = [JUnitCase("0007", failure=error, details=error), JUnitCase("0008", skipped=error)]
    root = ET.fromstring(render_junit("migrate-lock smoke", cases).encode())
    failure = root.find(".//failure")
    assert failure is not None
    assert failure.attrib["message"].startswith("revision 0007 failed: ValueError: bad row")
    assert "café" in failure.attrib["message"] and "\x1b" not in (failure.text or "")
