"""``lint``: each revision's offline SQL, checked by Squawk for lock-heavy and destructive DDL.

The revisions are rendered once, offline (``upgrade --sql``: no database), and cut into
one SQL text per revision at Alembic's ``-- Running upgrade A -> B`` comments. Squawk
(the ``squawk-cli`` package of the ``lint`` extra, a Rust binary) checks every text in one
run (a second one for the statements inside autocommit blocks, outside a transaction);
its findings come back as (revision, rule, line in that revision's SQL, message), each of
a kind and a level (LEVELS). By default only what is new is linted (choose_scope), and
findings on tables the same run creates are set apart (on_new_tables); ``plan`` lints its
pending revisions the same way (check_revisions).

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from migrate_lock.checks.junit import JUnitCase, write_junit
from migrate_lock.connection import connect
from migrate_lock.errors import MigrationFailed, SquawkMissing, TemporaryError, UsageError
from migrate_lock.logs import log
from migrate_lock.project import DatabaseSession, Project
from migrate_lock.protocol import upgrade_sql
from migrate_lock.runner import NEEDS_DATABASE_MARK, skipping_live_revisions
from migrate_lock.seeds.sql_file import split_statements
from migrate_lock.settings import Settings
from migrate_lock.state import require_known

Kind = Literal["destructive", "lock-heavy", "retry-unsafe", "advice"]
Level = Literal["error", "warning", "advice"]
#: How to choose the revisions: ``lint``'s options, or the default (see choose_scope).
ScopeMode = Literal["range", "since", "git-base", "files", "pending", "all"]

#: Each kind's level; ``lint`` fails on findings at or above LINT_FAIL_ON (``error``).
LEVELS: dict[Kind, Level] = {
    "destructive": "error",
    "lock-heavy": "error",
    "retry-unsafe": "warning",
    "advice": "advice",
}
_RANK: dict[str, int] = {"advice": 0, "warning": 1, "error": 2}

#: Rules that cannot apply under migrate-lock, excluded unless named in LINT_INCLUDE_RULES.
DEFAULT_EXCLUDED: dict[str, str] = {
    "require-lock-timeout": "migrate-lock sets lock_timeout (DDL_LOCK_TIMEOUT) on the session",
    "require-statement-timeout": "migrate-lock sets statement_timeout (DDL_STATEMENT_TIMEOUT) "
    "on the session",
    "prefer-robust-stmts": "each revision runs in a transaction: a failure rolls back, so a "
    "re-run starts from a clean state without IF [NOT] EXISTS (checked all the same in an "
    "autocommit_block, which no transaction rolls back)",
}

#: The rule that finds a statement a failed run cannot rerun (in an autocommit_block).
ROBUST_RULE = "prefer-robust-stmts"

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

#: Rules about types and style: nothing is locked or lost today (and every ``prefer-*``).
ADVICE_RULES = frozenset({"ban-char-field"})

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

    @property
    def level(self) -> Level:
        return LEVELS[self.kind]

    def describe(self) -> str:
        text = f"{self.revision} line {self.line}: {self.rule} ({self.kind}): {self.message}"
        return text + (f" [{self.statement}]" if self.statement else "")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "level": self.level}


@dataclass(frozen=True)
class LintScope:
    """Which revisions ``lint`` checked and why (one ``lint.scope`` log line says it)."""

    mode: ScopeMode
    detail: str


@dataclass(frozen=True)
class Checked:
    """Squawk's findings on a run of revisions, in revision order.

    ``on_new_tables``: destructive or lock-heavy findings on a table an earlier statement
    of the same run created (it holds no data and no one waits on its lock): not counted.
    """

    findings: tuple[Finding, ...]
    on_new_tables: tuple[Finding, ...] = ()


@dataclass(frozen=True)
class LintReport:
    """What ``lint`` found; ``ok`` when no finding reaches ``fail_on``."""

    revisions: tuple[str, ...]
    findings: tuple[Finding, ...]
    excluded: tuple[str, ...]
    ignored: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Revisions not linted because they read from the database: id -> why.
    needs_database: dict[str, str] = field(default_factory=dict)
    scope: LintScope = LintScope("all", "every revision")
    fail_on: Level = "error"
    on_new_tables: tuple[Finding, ...] = ()
    #: Each linted revision's file, where known (annotations and JUnit point at it).
    files: dict[str, str] = field(default_factory=dict)

    @property
    def failing(self) -> tuple[Finding, ...]:
        """The findings at or above ``fail_on``: ``lint`` exits 1 when there are any."""
        return tuple(f for f in self.findings if _RANK[f.level] >= _RANK[self.fail_on])

    @property
    def ok(self) -> bool:
        return not self.failing

    def annotations(self) -> list[str]:
        """The findings as GitHub Actions workflow commands (github_annotations)."""
        return github_annotations(self)

    def write_junit(self, path: str | Path) -> None:
        """Write the report as JUnit XML, one case per revision (junit_cases)."""
        write_junit(path, _SUITE, junit_cases(self))

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "scope": asdict(self.scope),
            "fail_on": self.fail_on,
            "revisions": list(self.revisions),
            "excluded_rules": list(self.excluded),
            "ignored_per_revision": {rev: list(rules) for rev, rules in self.ignored.items()},
            "findings": [finding.as_dict() for finding in self.findings],
            "on_new_tables": [finding.as_dict() for finding in self.on_new_tables],
            "needs_database": dict(self.needs_database),
        }


def lint(
    rev_range: str | None = None,
    *,
    since: str | None = None,
    git_base: str | None = None,
    files: Sequence[str | Path] | None = None,
    fail_on: Level | None = None,
    settings: Settings | None = None,
) -> LintReport:
    """Render revisions as offline SQL and run Squawk on them. Changes nothing.

    Which revisions (at most one of the options; see choose_scope): ``rev_range``
    (``START:END``), ``since`` (the revisions after REV), ``git_base`` (the revision files
    changed against a git ref, uncommitted and untracked ones included), ``files`` (these
    revision files; others are ignored). With none: the revisions pending against the
    database when a database URL is set and the database answers, else every revision.

    ``fail_on`` (default LINT_FAIL_ON, ``error``) is the lowest level that makes the
    report fail. Raises UsageError (exit 2) for a bad range, revision or git ref, and
    SquawkMissing (exit 78) when Squawk is not installed; findings are in the report.
    """
    project = Project(settings)
    scope, revisions = choose_scope(
        project, rev_range=rev_range, since=since, git_base=git_base, files=files
    )
    log.info("lint.scope", mode=scope.mode, detail=scope.detail)
    rendered = [r for r in revisions if r.needs_database is None]
    # Every revision, for want of a database: a deployed history whose early tables hold
    # data, as far as we know; so no table counts as new. The other scopes are new work.
    checked = check_revisions(project, rendered, as_one_run=scope.mode != "all")
    for finding in checked.findings:
        log.debug("lint.finding", severity=finding.level, **asdict(finding))
    skipped = {r.revision: r.needs_database for r in revisions if r.needs_database is not None}
    for revision, reason in skipped.items():
        log.warning(
            "lint.skipped",
            revision=revision,
            detail=f"revision {revision} not linted: it needs a live database (it {reason})",
        )
    ids = [r.revision for r in revisions]
    ignored = per_revision_ignores(project, ids)
    log.info(
        "lint.done",
        revisions=len(revisions),
        findings=len(checked.findings),
        skipped=len(skipped),
        on_new_tables=len(checked.on_new_tables),
    )
    return LintReport(
        revisions=tuple(ids),
        findings=checked.findings,
        excluded=tuple(sorted(excluded_rules(project.settings))),
        ignored={rev: tuple(sorted(rules)) for rev, rules in ignored.items() if rules},
        needs_database=skipped,
        scope=scope,
        fail_on=fail_on or project.settings.lint_fail_on,
        on_new_tables=checked.on_new_tables,
        files=revision_files(project, ids),
    )


def choose_scope(
    project: Project,
    *,
    rev_range: str | None = None,
    since: str | None = None,
    git_base: str | None = None,
    files: Sequence[str | Path] | None = None,
) -> tuple[LintScope, list[RevisionSql]]:
    """The revisions ``lint`` checks, rendered, and how they were chosen."""
    given = [
        name
        for name, value in (
            ("START:END", rev_range),
            ("--since", since),
            ("--git-base", git_base),
            ("FILES", files),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise UsageError(f"lint takes one of {', '.join(given)}, not several")
    settings = project.settings
    if rev_range is not None:
        return LintScope("range", rev_range), render_revisions(settings, rev_range)
    if since is not None:
        return LintScope("since", f"the revisions after {since}"), render_revisions(
            settings, f"{since}:heads"
        )
    if git_base is not None:
        changed = changed_files(git_base, Path(project.scripts.script.dir))
        chosen = revisions_of_files(project, changed)
        detail = f"{len(chosen)} revision files changed against {git_base}"
        return LintScope("git-base", detail), _rendered(settings, chosen)
    if files is not None:
        chosen = revisions_of_files(project, [Path(f) for f in files])
        detail = f"{len(chosen)} revision files of the {len(files)} given"
        return LintScope("files", detail), _rendered(settings, chosen)
    pending = pending_revisions(project)
    if pending is not None:
        detail = f"{len(pending)} revisions pending against {project.url.masked}"
        return LintScope("pending", detail), _rendered(settings, pending)
    reason = (
        "the database did not answer"
        if project.settings.migration_database_url or project.settings.database_url
        else "no database URL"
    )
    detail = f"every revision ({reason}; --since REV or --git-base REF lints only what is new)"
    return LintScope("all", detail), render_revisions(settings, "heads")


def pending_revisions(project: Project) -> list[str] | None:
    """The revisions pending against the database, or None when no database URL is set
    or the database does not answer within a few seconds (then every revision is linted).

    A database at a revision this code does not know is UnknownDatabaseRevision (exit 5),
    as in ``plan``: linting every revision would hide that the URL is wrong.
    """
    if not (project.settings.migration_database_url or project.settings.database_url):
        return None
    scripts = project.scripts
    try:
        connection = connect(
            project.url,
            timeout_seconds=min(project.settings.db_connect_timeout_seconds, _PROBE_SECONDS),
            application_name="migrate-lock lint",
        )
    except TemporaryError as error:
        log.warning("lint.no_database", detail=f"linting every revision: {error}")
        return None
    try:
        state = DatabaseSession(project, connection).state(scripts.heads(), scripts)
    finally:
        connection.close()
    require_known(state)
    return list(state.pending)


#: How long ``lint`` waits for the database before it lints every revision instead.
_PROBE_SECONDS = 5.0


def changed_files(base: str, where: Path | None = None) -> list[Path]:
    """The files changed against git ref ``base`` (from where the branch left it, working
    tree included) and the untracked ones, as absolute paths, in the repository that holds
    ``where`` (the migrations folder; else the current directory's: run from another
    repository, git would answer for that one, and lint would pass on nothing).

    Raises UsageError (exit 2) when git cannot answer (not a repository, unknown ref).
    """
    at = ["-C", str(where)] if where is not None else []

    def git(*args: str) -> list[str]:
        try:
            result = subprocess.run(
                ["git", *at, *args], capture_output=True, text=True, check=False, timeout=60
            )
        except OSError as error:
            raise UsageError(
                f"--git-base {base}: cannot run git ({error.strerror or error})",
                hint="install git, or name the revisions with --since REV",
            ) from None
        if result.returncode != 0:
            said = " ".join(result.stderr.split())[:300]
            raise UsageError(
                f"--git-base {base}: git says: {said}",
                hint="fetch the ref first (actions/checkout: fetch-depth: 0), "
                "or name the revisions with --since REV",
            )
        return [line for line in result.stdout.splitlines() if line.strip()]

    top = Path(git("rev-parse", "--show-toplevel")[0])
    names = git("diff", "--name-only", "--no-renames", "--diff-filter=d", "--merge-base", base)
    names += git("ls-files", "--others", "--exclude-standard", "--full-name", str(top))
    return [top / name for name in names]


def revisions_of_files(project: Project, paths: Sequence[Path]) -> list[str]:
    """The revisions whose files are among ``paths``, in the order they run."""
    wanted = {_resolved(path) for path in paths}
    by_file = {_resolved(Path(path)): revision for revision, path in _script_paths(project)}
    chosen = {by_file[path] for path in wanted if path in by_file}
    return [revision for revision, _ in _script_paths(project) if revision in chosen]


def revision_files(project: Project, revisions: Sequence[str]) -> dict[str, str]:
    """Each revision's file, relative to the current directory where it lies below it."""
    paths = dict(_script_paths(project))
    here = Path.cwd()
    found = {}
    for revision in revisions:
        path = paths.get(revision)
        if path is None:
            continue
        try:
            found[revision] = str(Path(path).absolute().relative_to(here))
        except ValueError:
            found[revision] = str(path)
    return found


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


def autocommit_lines(sql: str) -> tuple[set[int], set[int]]:
    """The 0-based lines of ``sql`` inside autocommit blocks, and the boundary lines.

    Alembic writes ``COMMIT;`` before an ``autocommit_block`` and ``BEGIN;`` after it in
    offline SQL. Such a pair is a boundary, not the revision's own transaction control;
    a ``COMMIT;`` with no ``BEGIN;`` after it is the revision's own, and stays linted.
    """
    lines = sql.splitlines()
    inside: set[int] = set()
    boundaries: set[int] = set()
    opened: int | None = None
    for number, line in enumerate(lines):
        word = line.strip().upper()
        if opened is None and word == "COMMIT;":
            opened = number
        elif opened is not None and word == "BEGIN;":
            boundaries |= {opened, number}
            inside |= set(range(opened + 1, number))
            opened = None
    return inside, boundaries


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


def classify(rule: str, *, autocommit: bool = False) -> Kind:
    """``destructive``, ``retry-unsafe`` (a statement that cannot be rerun, in an
    autocommit block), ``advice`` (every ``prefer-*`` rule, ``ban-char-field``) or
    ``lock-heavy`` (the default for any rule we do not know)."""
    if autocommit and rule == ROBUST_RULE:
        return "retry-unsafe"
    if rule in DESTRUCTIVE_RULES:
        return "destructive"
    if rule in ADVICE_RULES or rule.startswith("prefer-"):
        return "advice"
    return "lock-heavy"


def check_revisions(
    project: Project, revisions: list[RevisionSql], *, as_one_run: bool = True
) -> Checked:
    """Squawk on rendered revisions (in the order they run), with the exclusions and each
    file's ignores. ``as_one_run``: they run together on a database that has none of
    them, so findings on tables the run itself creates are set apart (on_new_tables)."""
    settings = project.settings
    findings = run_squawk(
        revisions,
        excluded=excluded_rules(settings),
        ignored=per_revision_ignores(project, [r.revision for r in revisions]),
        robust_excluded=_rules(settings.lint_exclude_rules),
    )
    return on_new_tables(revisions, findings) if as_one_run else Checked(tuple(findings))


def run_squawk(
    revisions: list[RevisionSql],
    *,
    excluded: set[str],
    ignored: dict[str, set[str]] | None = None,
    robust_excluded: set[str] | None = None,
) -> list[Finding]:
    """Run Squawk over every revision's SQL; findings in revision order.

    Each revision's statements inside autocommit blocks are checked as what they are,
    outside a transaction, in a second run: with ``prefer-robust-stmts`` (unless in
    ``robust_excluded``), since no rollback undoes half of such a block. The boundaries
    Alembic writes around the blocks are not checked. Line numbers stay the revision's.
    """
    ignored = ignored or {}
    if not revisions:
        return []
    binary = squawk_binary()
    robust_excluded = robust_excluded or set()
    with tempfile.TemporaryDirectory(prefix="migrate-lock-lint-") as folder:
        in_transaction: dict[str, RevisionSql] = {}
        autocommit: dict[str, RevisionSql] = {}
        for index, rendered in enumerate(revisions):
            lines = rendered.sql.splitlines()
            inside, boundaries = autocommit_lines(rendered.sql)
            path = Path(folder) / f"{index:05d}.sql"
            path.write_text(_keep(lines, set(range(len(lines))) - inside - boundaries))
            in_transaction[str(path)] = rendered
            if inside:
                path = Path(folder) / f"{index:05d}.autocommit.sql"
                path.write_text(_keep(lines, inside))
                autocommit[str(path)] = rendered
        reported = _squawk(binary, in_transaction, excluded, in_transaction=True)
        if autocommit:
            robust = (excluded - {ROBUST_RULE}) | (robust_excluded & {ROBUST_RULE})
            reported += _squawk(binary, autocommit, robust, in_transaction=False)
    findings = []
    for item in reported:
        name = str(item.get("file"))
        revision = in_transaction.get(name) or autocommit.get(name)
        if revision is None:
            continue
        rule = str(item.get("rule_name"))
        if rule in ignored.get(revision.revision, set()):
            continue
        if rule in excluded and not (name in autocommit and rule == ROBUST_RULE):
            continue
        line = int(item.get("line", 0))  # Squawk counts lines from 0
        lines = revision.sql.splitlines()
        statement = lines[line] if line < len(lines) else ""
        findings.append(
            Finding(
                revision=revision.revision,
                rule=rule,
                kind=classify(rule, autocommit=name in autocommit),
                line=line + 1,
                statement=" ".join(statement.split())[:200],
                message=str(item.get("message", "")),
                help=item.get("help"),
            )
        )
    order = {r.revision: i for i, r in enumerate(revisions)}
    return sorted(findings, key=lambda f: (order[f.revision], f.line, f.rule))


def on_new_tables(revisions: list[RevisionSql], findings: list[Finding]) -> Checked:
    """Set apart the destructive and lock-heavy findings on tables created earlier in
    the same run (by an earlier revision or statement): a table no release has used holds
    no data and no one waits on its lock.

    A statement counts as on new tables only when every table it names is new (a foreign
    key from a new table to an existing one still locks the existing one). ``CREATE
    TABLE … AS`` and ``… PARTITION OF`` create tables with data or a parent: not new.
    """
    new: set[str] = set()
    kept: list[Finding] = []
    apart: list[Finding] = []
    by_revision: dict[str, list[Finding]] = {}
    for finding in findings:
        by_revision.setdefault(finding.revision, []).append(finding)
    for revision in revisions:
        mine = sorted(by_revision.get(revision.revision, []), key=lambda f: f.line)
        statements = split_statements(revision.sql)
        for index, statement in enumerate(statements):
            end = statements[index + 1].line if index + 1 < len(statements) else 1 << 30
            targets = tables_of(statement.sql)
            for finding in [f for f in mine if statement.line <= f.line < end]:
                relaxed = finding.kind in ("destructive", "lock-heavy")
                if relaxed and targets and targets <= new:
                    apart.append(finding)
                else:
                    kept.append(finding)
                mine.remove(finding)
            new |= created_tables(statement.sql)
            new |= renamed_new_tables(statement.sql, new)
        kept.extend(mine)  # before the first statement: none, but never lose one
    order = {r.revision: i for i, r in enumerate(revisions)}

    def key(f: Finding) -> tuple[int, int, str]:
        return (order[f.revision], f.line, f.rule)

    return Checked(tuple(sorted(kept, key=key)), tuple(sorted(apart, key=key)))


_NAME = r'(?:"[^"]+"|[\w$]+)(?:\s*\.\s*(?:"[^"]+"|[\w$]+))?'
_CREATE_TABLE = re.compile(
    r"^\s*CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?(?:(?:TEMP|TEMPORARY|UNLOGGED)\s+)?TABLE\s+"
    rf"(?P<if_not_exists>IF\s+NOT\s+EXISTS\s+)?(?P<name>{_NAME})\s*(?P<rest>.*)",
    re.IGNORECASE | re.DOTALL,
)
_ALTER_TABLE = re.compile(
    rf"^\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<name>{_NAME})(?P<rest>.*)",
    re.IGNORECASE | re.DOTALL,
)
_RENAME_TO = re.compile(rf"^\s*RENAME\s+TO\s+(?P<name>{_NAME})\s*;?\s*$", re.IGNORECASE)
_CREATE_INDEX = re.compile(
    rf"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\b.*?\bON\s+(?:ONLY\s+)?(?P<name>{_NAME})",
    re.IGNORECASE | re.DOTALL,
)
_DROP_TABLE = re.compile(
    r"^\s*DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?P<names>[^;]*?)\s*(?:CASCADE|RESTRICT)?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
#: Other tables an ALTER TABLE works on: a key's target, a partition attached (scanned), a parent.
_REFERENCES = re.compile(
    rf"\b(?:REFERENCES|ATTACH\s+PARTITION|INHERIT)\s+(?P<name>{_NAME})", re.IGNORECASE
)


def created_tables(sql: str) -> set[str]:
    """The table a ``CREATE TABLE name (…)`` statement creates (empty for ``… AS``, and for
    ``IF NOT EXISTS``: the table may be there already, with data)."""
    match = _CREATE_TABLE.match(sql)
    if match is None or match["if_not_exists"]:
        return set()
    if re.match(r"(AS|PARTITION\s+OF|OF)\b", match["rest"], re.IGNORECASE):
        return set()
    return {_table(match["name"])}


def renamed_new_tables(sql: str, new: set[str]) -> set[str]:
    """``ALTER TABLE new RENAME TO other``: ``other`` is new as well."""
    match = _ALTER_TABLE.match(sql)
    if match is None or _table(match["name"]) not in new:
        return set()
    renamed = _RENAME_TO.match(match["rest"])
    if renamed is None:
        return set()
    schema, dot, _ = _table(match["name"]).rpartition(".")  # RENAME TO keeps the schema
    return {schema + dot + _table(renamed["name"])}


def tables_of(sql: str) -> set[str]:
    """The tables a statement works on (and references), or an empty set if not known."""
    for pattern in (_ALTER_TABLE, _CREATE_INDEX):
        match = pattern.match(sql)
        if match is not None:
            found = {_table(match["name"])}
            return found | {_table(m["name"]) for m in _REFERENCES.finditer(sql)}
    dropped = _DROP_TABLE.match(sql)
    if dropped is not None:
        return {_table(name) for name in dropped["names"].split(",") if name.strip()}
    return set()


def _table(name: str) -> str:
    """A table's name (``schema.name`` when qualified), folded as PostgreSQL folds it.

    The schema is kept: ``other.audit`` is not the ``audit`` the run created, and an
    unqualified name is not taken for a qualified one (a finding is set apart only when
    the table is surely new)."""
    parts = re.split(r'\s*\.\s*(?=(?:"[^"]+"|[\w$]+)\s*$)', name.strip())
    return ".".join(part[1:-1] if part.startswith('"') else part.lower() for part in parts)


def squawk_binary() -> str:
    """Squawk beside this Python (the venv that installed ``squawk-cli``), else on PATH.

    Raises SquawkMissing (exit 78) when neither has it: ``pip install 'migrate-lock[lint]'``.
    """
    beside = Path(sys.executable).parent / "squawk"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("squawk")
    if found:
        return found
    raise SquawkMissing(
        "squawk is not installed (lint and plan need it; it comes with the lint extra)",
        hint="pip install 'migrate-lock[lint]'",
    )


def _squawk(
    binary: str, files: dict[str, RevisionSql], excluded: set[str], *, in_transaction: bool
) -> list[dict[str, Any]]:
    command = [binary, "--reporter", "json", *files]
    if in_transaction:
        command.insert(1, "--assume-in-transaction")
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
    return list(reported)


def _keep(lines: list[str], keep: set[int]) -> str:
    """``lines`` with the others blanked, so that line numbers stay the revision's."""
    return "\n".join(line if n in keep else "" for n, line in enumerate(lines)) + "\n"


def _rendered(settings: Settings, chosen: list[str]) -> list[RevisionSql]:
    """``chosen`` rendered (offline, from base: whatever the database's revisions are)."""
    if not chosen:
        return []
    rendered = {r.revision: r for r in render_revisions(settings, "heads")}
    return [rendered[revision] for revision in chosen if revision in rendered]


def _script_paths(project: Project) -> list[tuple[str, str]]:
    """(revision, file) for every revision, in the order they run (base first)."""
    scripts = list(project.scripts.script.walk_revisions())
    return [(s.revision, s.path) for s in reversed(scripts) if s.path]


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _rules(text: str | None) -> set[str]:
    return {rule.strip() for rule in (text or "").replace(" ", ",").split(",") if rule.strip()}


def github_annotations(report: LintReport) -> list[str]:
    """One GitHub Actions workflow command per finding (``::error``, ``::warning`` or
    ``::notice`` by level), pointing at the revision file's line (source_line)."""
    kinds: dict[Level, str] = {"error": "error", "warning": "warning", "advice": "notice"}
    lines = []
    for finding in report.findings:
        file = report.files.get(finding.revision)
        where = {"title": f"{finding.rule} ({finding.kind})"}
        if file is not None:
            line = source_line(file, finding.statement)
            where = {"file": _workspace_path(file), "line": str(line)} | where
        properties = ",".join(f"{key}={_escape(value, True)}" for key, value in where.items())
        message = f"revision {finding.revision}, SQL line {finding.line}: {finding.message}"
        if finding.statement:
            message += f"\n{finding.statement}"
        lines.append(f"::{kinds[finding.level]} {properties}::{_escape(message, False)}")
    return lines


def junit_cases(report: LintReport) -> list[JUnitCase]:
    """One case per revision: failed by its findings at or above ``fail_on``, skipped
    when it needs a live database; findings below ``fail_on`` are its output."""
    failing = set(report.failing)
    cases = []
    for revision in report.revisions:
        mine = [f for f in report.findings if f.revision == revision]
        bad = [f for f in mine if f in failing]
        text = "\n".join(f.describe() for f in mine)
        file = report.files.get(revision)
        if revision in report.needs_database:
            reason = f"needs a live database (it {report.needs_database[revision]})"
            case = JUnitCase(revision, _SUITE, skipped=reason, file=file)
        elif bad:
            summary = f"{len(bad)} findings at {report.fail_on} or above: {bad[0].describe()}"
            case = JUnitCase(revision, _SUITE, failure=summary, details=text, file=file)
        else:
            case = JUnitCase(revision, _SUITE, details=text, file=file)
        cases.append(case)
    return cases


_SUITE = "migrate-lock lint"


def source_line(file: str, statement: str) -> int:
    """The line of the revision file a finding points at: in ``upgrade()``, the first line
    naming most of the statement's identifiers (its table, column, index), else the ``def
    upgrade`` line itself (rendered SQL has no line in the Python file), else 1."""
    try:
        lines = Path(file).read_text(errors="replace").splitlines()
    except OSError:
        return 1
    start = next(
        (n for n, line in enumerate(lines) if re.match(r"\s*def\s+upgrade\s*\(", line)), None
    )
    if start is None:
        return 1
    words = {w.lower() for w in re.findall(r"[A-Za-z_][\w$]*", statement)} - _SQL_WORDS
    best, best_score = start, 0
    for number in range(start + 1, len(lines)):
        line = lines[number]
        if re.match(r"def\s", line):  # the next top-level function: upgrade() ended
            break
        found = {w.lower() for w in re.findall(r"[A-Za-z_][\w$]*", line)}
        score = len(words & found)
        if score > best_score:
            best, best_score = number, score
    return best + 1


#: Words of DDL that name nothing: they do not tell one statement's line from another's.
_SQL_WORDS = frozenset(
    """add alter and as by cascade check column concurrently constraint create default
    delete drop exists foreign from if in index insert into is key not null on only
    primary references rename restrict set table to type unique update using values
    where with without time zone text integer int bigint varchar timestamp boolean
    serial""".split()  # noqa: SIM905 - a list of 53 one-word strings reads worse
)


def _workspace_path(file: str) -> str:
    """The path GitHub wants: relative to the checkout (GITHUB_WORKSPACE) when inside it."""
    workspace = os.environ.get("GITHUB_WORKSPACE")
    if workspace:
        try:
            return str(Path(file).absolute().relative_to(Path(workspace).absolute()))
        except ValueError:
            pass
    return file


def _escape(text: str, in_property: bool) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if in_property else text
