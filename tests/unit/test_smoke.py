"""smoke's judgements without a server: which failures are the environment's, what a
down and up cycle must leave as it found, the report's exit code and JUnit cases."""

from __future__ import annotations

import pytest

from migrate_lock.checks.smoke import (
    Check,
    SmokeReport,
    _cycle_findings,
    _row_findings,
    _SmokeRun,
    environment_problem,
    failure_text,
    missing_extension,
)
from migrate_lock.errors import ExtensionNotAvailable, MigrationFailed

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # PostgreSQL 15 and later (SQLSTATE 0A000), as the runner reports it
        (
            'revision 0005 (add ids) failed: [0A000] extension "uuid-ossp" is not available '
            'in: CREATE EXTENSION IF NOT EXISTS "uuid-ossp"; rolled back',
            "uuid-ossp",
        ),
        # before PostgreSQL 15 (58P01)
        (
            '[58P01] could not open extension control file "/usr/share/postgresql/13/extension/'
            'pgcrypto.control": No such file or directory',
            "pgcrypto",
        ),
        # the extension's files are there, a library it needs is not (a distribution that
        # ships uuid-ossp without libossp-uuid)
        (
            '[58P01] could not load library "/opt/pg/lib/uuid-ossp.so": libossp-uuid.so.16: '
            "cannot open shared object file",
            "uuid-ossp",
        ),
        ('[42710] type "mood" already exists', None),
        # a revision's own exception (RAISE: P0001) that quotes such a message
        ('[P0001] extension "uuid-ossp" is not available, says the revision', None),
        ('[42704] required extension "cube" is not installed', None),  # no CASCADE: the revision's
    ],
)
def test_an_extension_the_server_lacks_is_recognised(text: str, expected: str | None) -> None:
    """Why: zero-config smoke reported a missing extension as the revision's fault."""
    assert missing_extension(text) == expected


def test_the_environment_error_names_the_extension_the_revision_and_the_fix() -> None:
    """Embedded: use a full PostgreSQL (--database-url); a URL's server: install it there."""
    text = 'revision 0005 (add ids) failed: [0A000] extension "uuid-ossp" is not available'
    embedded = environment_problem("embedded", text)
    assert isinstance(embedded, ExtensionNotAvailable)
    assert embedded.exit_code == 78
    assert (embedded.extension, embedded.revision) == ("uuid-ossp", "0005")
    assert str(embedded).startswith(
        'the embedded PostgreSQL has no extension "uuid-ossp" (revision 0005 creates it): '
        "the environment lacks it, the revision is not at fault; run smoke against a full "
        "PostgreSQL that has it, with --database-url"
    )
    served = environment_problem("postgresql://ci:***@db:5432/postgres", text, "0009")
    assert served is not None and served.revision == "0009"
    assert 'the server postgresql://ci:***@db:5432/postgres has no extension "uuid-ossp"' in (
        str(served)
    )
    assert "install it on that server" in str(served)
    assert environment_problem("embedded", '[42P07] relation "t" already exists') is None


def test_a_replicas_json_failure_line_and_an_error_of_ours_are_read_alike() -> None:
    """The at_head and concurrency checks read replicas' stderr (LOG_FORMAT=json, which
    escapes the quotes around the name); the others read our error and its SQLSTATE."""
    stderr = (
        '{"event": "migrate.revision", "revision": "0004"}\n'
        '{"event": "command.failed", "error": "revision 0005 (ids) failed: [0A000] extension '
        '\\"uuid-ossp\\" is not available in: CREATE EXTENSION", "exit_code": 1}\n'
    )
    assert 'extension "uuid-ossp" is not available' in failure_text(stderr)
    run = _SmokeRun.__new__(_SmokeRun)
    run.label = "embedded"
    found = run.environment_problem(None, stderr)
    assert found is not None and (found.extension, found.revision) == ("uuid-ossp", "0005")
    text = 'revision 0006 (x) failed: extension "pgcrypto" is not available'
    ours = MigrationFailed(text, revision="0006", sqlstate="0A000")
    found = run.environment_problem(ours, str(ours))
    assert found is not None and (found.extension, found.revision) == ("pgcrypto", "0006")
    raised = MigrationFailed(text, revision="0006", sqlstate="P0001")  # the revision's RAISE
    assert run.environment_problem(raised, str(raised)) is None


def test_a_cycle_names_what_the_downgrade_left_and_what_a_rerun_changed() -> None:
    """Why: the stairway saw neither a leftover enum type nor duplicated rows."""
    rows = {"public.leagues": (3, "h")}
    before = {("table", "public.leagues"): ""}
    up = {**before, ("type", "public.mood"): "enum ('happy', 'sad')"}
    assert _cycle_findings("0003", (before, rows), (up, rows), (up, rows), (up, rows)) == [
        "downgrade of 0003 left type public.mood behind"
    ]
    changed = {("table", "public.leagues"): "", ("index", "public.ix"): "CREATE INDEX ix ON t (b)"}
    down = {("table", "public.leagues"): "", ("index", "public.ix"): "CREATE INDEX ix ON t (a)"}
    states = ((changed, rows), (changed, rows), (down, rows), (changed, rows))
    assert _cycle_findings("0004", *states) == [
        "downgrade of 0004 changed index public.ix: CREATE INDEX ix ON t (b) -> "
        "CREATE INDEX ix ON t (a)"
    ]
    states = ((before, rows), (up, rows), (before, rows), (before, rows))
    assert _cycle_findings("0005", *states) == [
        "upgrade of 0005 run again did not create type public.mood"
    ]
    states = ((before, rows), (up, rows), (before, rows), (up, rows))
    assert _cycle_findings("0006", *states) == []


def test_rows_a_rerun_duplicates_or_changes_are_findings() -> None:
    """Only where the downgrade did not put the rows back: a revision whose downgrade deletes
    what it inserted may insert other values the second time (gen_random_uuid(), now())."""
    before = {"public.leagues": (4, "a"), "public.teams": (2, "b"), "public.keep": (1, "c")}
    first = {"public.leagues": (5, "a2"), "public.teams": (2, "b2"), "public.keep": (2, "c2")}
    down = {"public.leagues": (5, "a2"), "public.teams": (2, "b2"), "public.keep": (1, "c")}
    again = {"public.leagues": (6, "x"), "public.teams": (2, "y"), "public.keep": (2, "other")}
    assert _row_findings("0007", before, first, down, again) == [
        "upgrade of 0007 run again after its downgrade left 6 rows in public.leagues, "
        "the first run 5",
        "upgrade of 0007 run again after its downgrade changed the rows of public.teams "
        "(2 rows, other values)",
    ]


def test_the_report_exit_code_and_junit_cases() -> None:
    """78 when the server lacks an extension (not 1: no revision to fix); one case a check."""
    checks = (
        Check("heads", "passed", "one head: 0005", duration_ms=5),
        Check("upgrade", "failed", "the embedded PostgreSQL has no extension", ("ctx",)),
        Check("stairway", "skipped", "not run"),
    )
    assert SmokeReport("embedded", checks[:1]).exit_code == 0
    assert SmokeReport("embedded", checks[:2]).exit_code == 1
    error = ExtensionNotAvailable("no extension", extension="uuid-ossp", revision="0005")
    report = SmokeReport("embedded", checks, error)
    assert (report.ok, report.exit_code) == (False, 78)
    assert report.as_dict()["environment"] == "no extension"
    cases = report.junit_cases()
    assert [case.name for case in cases] == ["heads", "upgrade", "stairway"]
    assert cases[0].failure is None and cases[0].skipped is None and cases[0].seconds == 0.005
    assert cases[1].failure == "the embedded PostgreSQL has no extension"
    assert cases[1].details == "the embedded PostgreSQL has no extension\nctx"
    assert cases[2].skipped == "not run"
