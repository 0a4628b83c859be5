"""``lint``: each revision's offline SQL, checked by Squawk for lock-heavy and destructive DDL.

The revisions are rendered once, offline (``upgrade --sql``: no database), and cut into
one SQL text per revision at Alembic's ``-- Running upgrade A -> B`` comments. Squawk
(the ``squawk-cli`` package, a Rust binary) checks every text in one run; its findings
come back as (revision, rule, line in that revision's SQL, message).

Rules can be excluded for every revision (``LINT_EXCLUDE_RULES``) or for one revision by a
comment in its file: ``# migrate-lock: lint-ignore ban-drop-column, renaming-column``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from migrate_lock.errors import ConfigError, MigrationFailed
from migrate_lock.logs import log
from migrate_lock.project import Project
from migrate_lock.protocol import upgrade_sql
from migrate_lock.runner import NEEDS_DATABASE_MARK, skipping_live_revisions
from migrate_lock.settings import Settings

Kind = Literal["destructive", "lock-heavy", "advice"]

#: Rules that cannot apply under migrate-lock, excluded unless named in LINT_INCLUDE_RULES.
DEFAULT_EXCLUDED: dict[str, str] = {
    "require-lock-timeout": "migrate-lock sets lock_timeout (DDL_LOCK_TIMEOUT) on the session",
    "require-statement-timeout": "migrate-lock sets statement_timeout (DDL_STATEMENT_TIMEOUT) "
    "on the session",
    "prefer-robust-stmts": "each revision runs in a transaction: a failure rolls back, so a "
    "re-run starts from a clean state without IF [NOT] EXISTS",
}

#: Statements that lose data or break clients still running the previous release.
DESTRUCTIVE_RULES = frozenset(
    {
        "ban-drop-column",
        "ban-drop-table",
        "ban-drop-database",
        "ban-truncate-cascade",
        "ban-drop-not-null",
        "renaming-column",
        "renaming-table",
    }
)

#: Rules about types and style: nothing is locked or lost today.
ADVICE_RULES = frozenset(
    {
        "prefer-big-int",
        "prefer-bigint-over-int",
        "prefer-bigint-over-smallint",
        "prefer-identity",
        "prefer-text-field",
        "prefer-timestamptz",
        "ban-char-field",
    }
)

_RUNNING = re.compile(r"^-- Running upgrade (?P<down>.*?) -> (?P<rev>\S+)\s*$")
_IGNORE = re.compile(r"#\s*migrate-lock:\s*lint-ignore\s+(?P<rules>[\w\-, ]+)")


@dataclass(frozen=True)
class RevisionSql:
    """One revision's upgrade as offline SQL (what ``upgrade --sql`` prints for it)."""

    revision: str
    down_revisions: tuple[str, ...]
    sql: str
    #: Why its SQL was not rendered (it reads from the database), else None.
    needs_database: str | None = None


@dataclass(frozen=True)
class Finding:
    """One Squawk finding: ``line`` is 1-based in the revision's rendered SQL."""

    revision: str
    rule: str
    kind: Kind
    line: int
    statement: str
    message: str
    help: str | None = None

    def describe(self) -> str:
        text = f"{self.revision} line {self.line}: {self.rule} ({self.kind}): {self.message}"
        return text + (f" [{self.statement}]" if self.statement else "")


@dataclass(frozen=True)
class LintReport:
    """What ``lint`` found; ``ok`` when no finding is left after the exclusions."""

    revisions: tuple[str, ...]
    findings: tuple[Finding, ...]
    excluded: tuple[str, ...]
    ignored: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Revisions not linted because they read from the database: id -> why.
    needs_database: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "revisions": list(self.revisions),
            "excluded_rules": list(self.excluded),
            "ignored_per_revision": {rev: list(rules) for rev, rules in self.ignored.items()},
            "findings": [asdict(finding) for finding in self.findings],
            "needs_database": dict(self.needs_database),
        }


def lint(rev_range: str | None = None, *, settings: Settings | None = None) -> LintReport:
    """Render the revisions in ``rev_range`` (``START:END``; default all) and run Squawk.

    Offline: needs no database. Raises UsageError (exit 2) for a bad range and
    ConfigError (exit 78) when Squawk is missing; findings are in the report (the CLI
    exits 1 when there are any).
    """
    project = Project(settings)
    revisions = render_revisions(project.settings, rev_range or "heads")
    excluded = excluded_rules(project.settings)
    ignored = per_revision_ignores(project, [r.revision for r in revisions])
    rendered = [r for r in revisions if r.needs_database is None]
    findings = run_squawk(rendered, excluded=excluded, ignored=ignored)
    for finding in findings:
        log.debug("lint.finding", **asdict(finding))
    skipped = {r.revision: r.needs_database for r in revisions if r.needs_database is not None}
    for revision, reason in skipped.items():
        log.warning(
            "lint.skipped",
            revision=revision,
            detail=f"revision {revision} not linted: it needs a live database (it {reason})",
        )
    log.info("lint.done", revisions=len(revisions), findings=len(findings), skipped=len(skipped))
    return LintReport(
        revisions=tuple(r.revision for r in revisions),
        findings=tuple(findings),
        excluded=tuple(sorted(excluded)),
        ignored={rev: tuple(sorted(rules)) for rev, rules in ignored.items() if rules},
        needs_database=skipped,
    )


def render_revisions(settings: Settings, target: str) -> list[RevisionSql]:
    """The offline SQL of every revision ``upgrade TARGET --sql`` would run, one per revision.

    A revision that reads from the database cannot be rendered: it comes back with
    ``needs_database`` set and no SQL, and the revisions after it are rendered.
    """
    buffer = io.StringIO()
    with skipping_live_revisions():
        upgrade_sql(target, settings=settings, output=buffer)
    return split_revisions(buffer.getvalue())


def split_revisions(sql: str) -> list[RevisionSql]:
    """Cut Alembic's offline output at its ``-- Running upgrade`` comments.

    What comes before the first revision (the version table's CREATE) is Alembic's, not
    a revision's, and is left out; so are the BEGIN/COMMIT that frame the whole run.
    """
    chunks: list[tuple[str, tuple[str, ...], list[str]]] = []
    for line in sql.splitlines():
        match = _RUNNING.match(line)
        if match:
            downs = tuple(d.strip() for d in match["down"].split(",") if d.strip())
            chunks.append((match["rev"], downs, []))
        elif chunks:
            chunks[-1][2].append(line)
    revisions = []
    for revision, downs, lines in chunks:
        marks = [line for line in lines if line.startswith(NEEDS_DATABASE_MARK)]
        if marks:
            # What it wrote before it failed is not its SQL: none is shown.
            reason = marks[-1].removeprefix(NEEDS_DATABASE_MARK).strip()
            revisions.append(RevisionSql(revision, downs, "", needs_database=reason))
            continue
        text = "\n".join(lines).strip("\n")
        for frame in ("COMMIT;", "BEGIN;"):
            text = text.removesuffix(frame).rstrip()
        revisions.append(RevisionSql(revision, downs, text + "\n"))
    return revisions


def excluded_rules(settings: Settings) -> set[str]:
    """DEFAULT_EXCLUDED plus LINT_EXCLUDE_RULES, minus LINT_INCLUDE_RULES."""
    return (set(DEFAULT_EXCLUDED) | _rules(settings.lint_exclude_rules)) - _rules(
        settings.lint_include_rules
    )


def per_revision_ignores(project: Any, revisions: list[str]) -> dict[str, set[str]]:
    """The rules each revision's file ignores (``# migrate-lock: lint-ignore RULE, …``)."""
    ignores: dict[str, set[str]] = {}
    for revision in revisions:
        script = project.scripts.script.get_revision(revision)
        path = Path(script.path) if script is not None and script.path else None
        text = path.read_text(errors="replace") if path and path.is_file() else ""
        ignores[revision] = {rule for m in _IGNORE.finditer(text) for rule in _rules(m["rules"])}
    return ignores


def classify(rule: str) -> Kind:
    """``destructive``, ``lock-heavy`` (the default for any rule we do not know) or ``advice``."""
    if rule in DESTRUCTIVE_RULES:
        return "destructive"
    if rule in ADVICE_RULES:
        return "advice"
    return "lock-heavy"


def run_squawk(
    revisions: list[RevisionSql],
    *,
    excluded: set[str],
    ignored: dict[str, set[str]] | None = None,
) -> list[Finding]:
    """Run Squawk once over every revision's SQL; findings in revision order."""
    ignored = ignored or {}
    if not revisions:
        return []
    binary = squawk_binary()
    with tempfile.TemporaryDirectory(prefix="migrate-lock-lint-") as folder:
        files: dict[str, RevisionSql] = {}
        for index, rendered in enumerate(revisions):
            path = Path(folder) / f"{index:05d}.sql"
            path.write_text(rendered.sql)
            files[str(path)] = rendered
        command = [binary, "--reporter", "json", "--assume-in-transaction", *files]
        if excluded:
            command.insert(1, "--exclude=" + ",".join(sorted(excluded)))
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        try:
            reported = json.loads(result.stdout or "[]")
        except json.JSONDecodeError:
            detail = " ".join((result.stderr or result.stdout).split())[:300]
            raise MigrationFailed(
                f"squawk failed (exit {result.returncode}): {detail}",
                hint="run the revision's SQL through squawk yourself "
                "(migrate-lock upgrade START:END --sql | squawk)",
            ) from None
    findings = []
    for item in reported:
        found = files.get(str(item.get("file")))
        if found is None:
            continue
        revision = found
        rule = str(item.get("rule_name"))
        if rule in excluded or rule in ignored.get(revision.revision, set()):
            continue
        line = int(item.get("line", 0))  # Squawk counts lines from 0
        statement = revision.sql.splitlines()[line] if line < len(revision.sql.splitlines()) else ""
        findings.append(
            Finding(
                revision=revision.revision,
                rule=rule,
                kind=classify(rule),
                line=line + 1,
                statement=" ".join(statement.split())[:200],
                message=str(item.get("message", "")),
                help=item.get("help"),
            )
        )
    order = {r.revision: i for i, r in enumerate(revisions)}
    return sorted(findings, key=lambda f: (order[f.revision], f.line, f.rule))


def squawk_binary() -> str:
    """Squawk beside this Python (the venv that installed ``squawk-cli``), else on PATH."""
    beside = Path(sys.executable).parent / "squawk"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("squawk")
    if found:
        return found
    raise ConfigError(
        "squawk is not installed (it comes with the squawk-cli package)",
        hint="pip install squawk-cli, or reinstall migrate-lock",
    )


def _rules(text: str | None) -> set[str]:
    return {rule.strip() for rule in (text or "").replace(" ", ",").split(",") if rule.strip()}
