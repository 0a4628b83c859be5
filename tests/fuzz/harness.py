"""The fuzz tier's profiles, its one invariant, and the real processes it checks it on.

Every property of the tier ends in ``check(...)``: whatever the generated input, the
``migrate-lock`` process (a real one, as an operator runs it)

- exits with a documented code (``migrate_lock.ExitCode``);
- prints no traceback and no "this is a bug in migrate-lock" line;
- reports a failure as exactly one ``migrate-lock: error:`` line (text) or one
  ``command.failed`` event carrying the exit code (JSON);
- never prints the password: not raw, not percent-decoded, not with its whitespace folded,
  not a piece of it (each generated password starts and ends with a marker no output of
  migrate-lock contains, so a printed fragment shows), not escaped by JSON or by the text
  format's quoting (every JSON line and every quoted value is decoded and checked too).

Profiles (``HYPOTHESIS_PROFILE``, see docs/ci.md "The fuzz tier"): ``fuzz-ci`` is the
default, a few examples per property, derandomized (the same examples every run, so CI
never turns red on a new random draw) and without shrinking (a failure would spend
minutes of processes shrinking; the example is printed as drawn); ``fuzz-long`` draws many
more at random and shrinks what it finds, for a run by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg
from hypothesis import HealthCheck, Phase, settings

from migrate_lock.errors import ExitCode

from support import APP_ROLE, TEST_PASSWORD, cli_env

# --- profiles ------------------------------------------------------------------------------

#: Examples per property in each profile (a property that costs more per example, such as
#: one with a fresh database each, takes a share of it: see ``examples``).
EXAMPLES = {"fuzz-ci": 10, "fuzz-long": 300}
_HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile(
    "fuzz-ci",
    max_examples=EXAMPLES["fuzz-ci"],
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=_HEALTH,
    print_blob=True,
)
settings.register_profile(
    "fuzz-long",
    max_examples=EXAMPLES["fuzz-long"],
    deadline=None,
    suppress_health_check=_HEALTH,
    print_blob=True,
)
#: The profile this run uses: HYPOTHESIS_PROFILE when it names one of the tier's.
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fuzz-ci")
if PROFILE not in EXAMPLES:
    PROFILE = "fuzz-ci"


def examples(share: float = 1.0) -> settings:
    """The profile's settings with ``share`` of its examples (at least 2)."""
    return settings(
        settings.get_profile(PROFILE), max_examples=max(2, round(EXAMPLES[PROFILE] * share))
    )


# --- secrets -------------------------------------------------------------------------------

#: Every generated password starts and ends with these: no output of migrate-lock contains
#: them (revision ids, lock keys, database names and timestamps are digits and hex), so
#: any fragment of a password that reaches the output carries one.
MARK_START, MARK_END = "Qv7", "Jx4"


@dataclass(frozen=True)
class Secret:
    """A password, and every form in which the input wrote it."""

    forms: frozenset[str]

    @classmethod
    def of(cls, *forms: str | None) -> Secret:
        found: set[str] = {MARK_START, MARK_END, TEST_PASSWORD}
        for form in forms:
            if form:
                found.update({form, " ".join(form.split())})
        return cls(frozenset(item for item in found if len(item) >= 3))


NO_SECRET = Secret.of()

# --- running ---------------------------------------------------------------------------------

#: Nothing listens on these ports of 127.0.0.1 (binding below 1024 needs root): a
#: connection is refused at once.
CLOSED_PORTS = (1, 2)
NO_SERVER = f"postgresql://app:{TEST_PASSWORD}@127.0.0.1:1/app"

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass
class Run:
    """One ``migrate-lock`` process: what it was given and what it did."""

    args: list[str]
    env: dict[str, str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        given = {key: value for key, value in self.env.items() if key not in os.environ}
        return (
            f"migrate-lock {' '.join(self.args)} -> exit {self.returncode}\n"
            f"env: {given!r}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )


def run(
    args: list[str],
    *,
    cwd: Path,
    database_url: str | None,
    env: Mapping[str, str] | None = None,
    unset: Iterable[str] = (),
    timeout: float = 120,
) -> Run:
    """``migrate-lock ARGS`` as a real process, in the suite's environment (support.cli_env)
    minus ``unset``, plus ``env``."""
    given = cli_env(database_url)
    for name in unset:
        given.pop(name, None)
    given.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "migrate_lock", *args],
        cwd=cwd,
        env=given,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    # Bytes first: a non-UTF-8 byte in the output is a finding of its own, not a crash here.
    return Run(
        args,
        given,
        result.returncode,
        result.stdout.decode("utf-8", "backslashreplace"),
        result.stderr.decode("utf-8", "backslashreplace"),
    )


#: The codes a verb may end with (docs/exit-codes.md).
DOCUMENTED = frozenset(int(code) for code in ExitCode)
#: Results, not failures: ``status`` says pending (4) or unknown (5) without an error line.
_NOT_A_FAILURE = {int(ExitCode.OK), int(ExitCode.PENDING), int(ExitCode.UNKNOWN_REVISION)}


def check(result: Run, secret: Secret = NO_SECRET, *, codes: Iterable[int] = DOCUMENTED) -> None:
    """The tier's invariant (see the module's docstring); ``codes`` narrows the exit codes."""
    output = result.stdout + result.stderr
    for view in _views(result):
        for form in secret.forms:
            assert form not in view, f"the password ({form!r}) was printed\n{result}"
    assert "Traceback" not in output, f"a traceback\n{result}"
    assert "this is a bug in migrate-lock" not in output, f"a 'bug' line\n{result}"
    allowed = set(codes)
    assert result.returncode in allowed, (
        f"exit {result.returncode}, not {sorted(allowed)}\n{result}"
    )
    _check_failure_report(result)


def _views(result: Run) -> Iterator[str]:
    """The output as printed, and every string in it as JSON or the text format encoded it."""
    yield result.stdout
    yield result.stderr
    for stream in (result.stdout, result.stderr):
        for literal in _JSON_STRING.findall(stream):
            with contextlib.suppress(ValueError):
                yield json.loads(literal)
    for line in result.stderr.splitlines():
        with contextlib.suppress(ValueError):
            yield from _strings(json.loads(line))


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _check_failure_report(result: Run) -> None:
    code = result.returncode
    if code in _NOT_A_FAILURE and (code == 0 or result.args[:1] == ["status"]):
        return
    if code == ExitCode.USAGE and "Usage:" in result.stderr:
        return  # click's own words for an unknown option
    reported = "migrate-lock: error:" in result.stderr or '"command.failed"' in result.stderr
    if code == ExitCode.MIGRATION_FAILED and result.args[:1] == ["lint"] and not reported:
        return  # lint's findings: its report on stdout says what failed
    # In either format (LOG_FORMAT=auto is JSON here, stderr being no terminal).
    reports = [
        line for line in result.stderr.splitlines() if line.startswith("migrate-lock: error:")
    ]
    events = [
        event
        for event in (_json_or_none(line) for line in result.stderr.splitlines())
        if isinstance(event, dict) and event.get("event") == "command.failed"
    ]
    assert len(reports) + len(events) == 1, f"not one failure line\n{result}"
    if reports:
        assert reports[0].endswith(f"(exit {code})"), f"the error line says another code\n{result}"
    else:
        assert events[0].get("exit_code") == code, f"command.failed says another code\n{result}"


def _json_or_none(line: str) -> object:
    try:
        return json.loads(line)
    except ValueError:
        return None


# --- projects and databases ----------------------------------------------------------------


@contextlib.contextmanager
def copy_of(project: Path) -> Iterator[Path]:
    """A throwaway copy of ``project`` (an example may break or write into it)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as folder:
        copy = Path(folder) / "project"
        shutil.copytree(project, copy, ignore=shutil.ignore_patterns("__pycache__"))
        yield copy


@contextlib.contextmanager
def scratch_database(
    admin_url: str,
    url_for: Callable[[str, str], str],
    *,
    template: str | None = None,
    owner: str = APP_ROLE,
) -> Iterator[str]:
    """A new database (empty, or a copy of ``template``) owned by ``owner``; its URL as
    ``url_for(name, owner)`` gives it; dropped on the way out."""
    name = f"fz_{uuid.uuid4().hex[:16]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{copy} OWNER "{owner}"')
    try:
        yield url_for(name, owner)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
