"""No secret in the new reports: smoke's report (stdout, --json, --junit) and lint's JUnit.

Found by running smoke on a revision whose error quotes the database URL (an env.py or a
revision that says where it could not connect): the stderr line was scrubbed, but the
report on stdout and the JUnit file CI keeps held the password.
"""

from __future__ import annotations

import json
import os
import re
from unittest import mock

import pytest

from migrate_lock.checks.junit import JUnitCase, render_junit
from migrate_lock.checks.smoke import Check, SmokeReport
from migrate_lock.dsn import parse_database_url, scrub_text

pytestmark = pytest.mark.unit

PASSWORD = "p@ss:w/rd%?#x"
URL = "postgresql://app:p%40ss%3Aw%2Frd%25%3F%23x@db.internal:5432/app"


def leaks(text: str) -> list[str]:
    return [form for form in (PASSWORD, "p%40ss%3Aw%2Frd%25%3F%23x") if form in text]


@mock.patch.dict(os.environ, {"DATABASE_URL": URL})
def test_smoke_s_report_never_shows_a_password_a_revision_quoted() -> None:
    error = f"revision 0002 (leak) failed: RuntimeError: cannot reach {URL} (password {PASSWORD})"
    check = Check("upgrade", "failed", f"base -> heads failed: {error}", context=(error,))
    report = SmokeReport(server="postgresql://app:***@db.internal:5432/app", checks=(check,))
    assert not leaks(check.summary + "\n".join(check.context))
    assert not leaks(json.dumps(report.as_dict()))
    assert not leaks(render_junit("migrate-lock smoke", report.junit_cases()))
    # (other tests' secrets, registered in this process, may mask more: "app" among them)
    assert re.search(r"cannot reach postgresql://\S+:\*\*\*@db\.internal:5432/", check.summary)


@mock.patch.dict(os.environ, {"DATABASE_URL": URL})
def test_a_junit_report_is_scrubbed_whoever_built_its_cases() -> None:
    """lint --junit's cases carry Squawk's messages and the revisions' statements."""
    case = JUnitCase(
        name="0002",
        failure=f"statement quotes {URL}",
        details=f"ALTER ROLE reader PASSWORD '{PASSWORD}';",
        skipped=None,
    )
    document = render_junit("migrate-lock lint", [case, JUnitCase("0003", skipped=URL)])
    assert not leaks(document)
    assert "ALTER ROLE reader PASSWORD" in document


KEY_PASSPHRASE = "k3y-Passphrase"
TLS_URL = (
    "postgresql://app:n0t-this@db.internal:5432/app?sslmode=verify-full"
    f"&sslcert=/run/secrets/client.crt&sslkey=/run/secrets/client.key&sslpassword={KEY_PASSPHRASE}"
)


def test_the_client_key_s_passphrase_is_a_secret_too() -> None:
    """Why: with a client certificate (managed PostgreSQL), libpq's sslpassword= showed in
    every masked URL: the lock.scope line, smoke's server, the TLS failure lines."""
    url = parse_database_url(TLS_URL)
    assert KEY_PASSPHRASE not in url.masked and "sslpassword=***" in url.masked
    conninfo = f"host=db.internal sslpassword='{KEY_PASSPHRASE}' sslmode=verify-full"
    assert KEY_PASSPHRASE not in scrub_text(f"pg_dump: error: {conninfo}")
    with mock.patch.dict(os.environ, {"DATABASE_URL": TLS_URL}):
        assert KEY_PASSPHRASE not in scrub_text(f"could not decrypt with {KEY_PASSPHRASE}")
