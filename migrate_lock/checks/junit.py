"""JUnit XML reports for CI systems (``lint --junit FILE``, ``smoke --junit FILE``).

One ``<testsuite>`` in a ``<testsuites>`` root, one ``<testcase>`` per case: the format
GitHub Actions test reporters, GitLab, Jenkins and Azure Pipelines all read. A case
fails with a ``<failure message=…>`` (its ``details`` as the element's text), is skipped
with a ``<skipped message=…>``, or passes. Every text is scrubbed of secrets, and of
what XML cannot hold (a terminal's colour codes, other control characters).
"""

from __future__ import annotations

import os
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from migrate_lock.errors import ConfigError
from migrate_lock.logs import log


@dataclass(frozen=True)
class JUnitCase:
    """One test case. ``failure`` (a one-line message) makes it fail; ``skipped`` skips it."""

    name: str
    classname: str = ""
    failure: str | None = None
    #: The failure's full text (the element body), or what a passing case wants to show.
    details: str = ""
    skipped: str | None = None
    seconds: float = 0.0
    #: Where the case points (a revision file), for reporters that link to it.
    file: str | None = None
    line: int | None = None


def render_junit(suite_name: str, cases: Sequence[JUnitCase]) -> str:
    """The JUnit XML document for ``cases`` as one suite named ``suite_name``, every text
    scrubbed (a revision's error may quote a URL or a password; CI keeps the file)."""
    cases = [_scrubbed(case) for case in cases]
    failures = sum(1 for case in cases if case.failure is not None)
    skipped = sum(1 for case in cases if case.failure is None and case.skipped is not None)
    seconds = f"{sum(case.seconds for case in cases):.3f}"
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0"}
    root = ET.Element("testsuites", {"name": suite_name, "time": seconds, **counts})
    suite = ET.SubElement(
        root,
        "testsuite",
        {"name": suite_name, "skipped": str(skipped), "time": seconds, **counts},
    )
    for case in cases:
        element = ET.SubElement(
            suite,
            "testcase",
            name=case.name,
            classname=case.classname or suite_name,
            time=f"{case.seconds:.3f}",
        )
        if case.file is not None:
            element.set("file", case.file)
        if case.line is not None:
            element.set("line", str(case.line))
        if case.failure is not None:
            failure = ET.SubElement(element, "failure", message=case.failure, type="failure")
            failure.text = case.details or case.failure
        elif case.skipped is not None:
            ET.SubElement(element, "skipped", message=case.skipped)
        elif case.details:
            ET.SubElement(element, "system-out").text = case.details
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


#: A terminal's colour and cursor codes (a revision's error, coloured by its logging).
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: What XML 1.0 cannot hold, even escaped: a document with it is refused by every reader.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _scrubbed(case: JUnitCase) -> JUnitCase:
    def text(value: str) -> str:
        return _NOT_XML.sub("\ufffd", _ANSI.sub("", log.scrub(value)))

    def clean(value: str | None) -> str | None:
        return None if value is None else text(value)

    return replace(
        case,
        name=text(case.name),
        failure=clean(case.failure),
        details=text(case.details),
        skipped=clean(case.skipped),
    )


def write_junit(path: str | Path, suite_name: str, cases: Sequence[JUnitCase]) -> None:
    """Write the report to ``path`` (its folder created), replacing it atomically.

    Raises ConfigError (exit 78) naming the file when it cannot be written.
    """
    target = Path(path)
    document = render_junit(suite_name, cases)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(document)
            os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from a CI uploader
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise ConfigError(
            f"cannot write the JUnit report {target}: {error.strerror or error}",
            hint="give --junit a path in a writable folder",
        ) from None
