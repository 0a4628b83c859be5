"""``smoke``: prove in CI, on a real PostgreSQL, that the migration history is sound.

With no URL an embedded PostgreSQL is started in a temporary directory; with one, the
checks run in scratch databases created on that server and dropped at the end (also on
failure). The database the URL names is only connected to, never changed.

Checks, in order (docs/ci.md says why each matters):

- ``heads``: one head (or exactly SMOKE_EXPECTED_HEADS);
- ``upgrade``: base to heads with the locked ``upgrade`` (seeds included);
- ``models``: env.py's ``target_metadata`` matches the migrated schema (autogenerate);
- ``seeds``: the seed files apply, and applying them again changes nothing;
- ``at_head``: ``migrate-lock upgrade`` at head exits 0 and applies nothing;
- ``stairway``: every revision upgrades, downgrades and upgrades again, leaving the catalog
  as it found it and its data as the first run left it;
- ``concurrency``: K ``migrate-lock upgrade`` processes at once; each revision once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.runtime.environment import EnvironmentContext
from psycopg import sql
from sqlalchemy import create_engine, pool

from migrate_lock.checks.junit import JUnitCase
from migrate_lock.connection import connect
from migrate_lock.dsn import DatabaseUrl, parse_database_url, with_database
from migrate_lock.errors import (
    ConfigError,
    ExitCode,
    ExtensionNotAvailable,
    MigrateLockError,
    UsageError,
    sqlstate_of,
)
from migrate_lock.logs import log
from migrate_lock.migrate import upgrade
from migrate_lock.project import Project
from migrate_lock.runner import LockedConnection, run_alembic
from migrate_lock.sandbox.embedded import EmbeddedPostgres
from migrate_lock.seeds.apply import apply_seeds
from migrate_lock.seeds.files import changed_seeds, discover, seeds_dir
from migrate_lock.settings import Settings, load_settings
from migrate_lock.version_table import VersionTable, database_revisions

Outcome = Literal["passed", "failed", "skipped"]

#: Our own tables, which the models never describe.
_OWN_TABLE_PREFIX = "migrate_lock_"

#: How the server says it lacks an extension: PostgreSQL 15 and later (SQLSTATE 0A000),
#: before 15 (58P01), and an extension whose shared library does not load (58P01: the
#: distribution ships the extension's files without a library it needs).
_MISSING_EXTENSION = (
    re.compile(r'extension "(?P<name>[^"]+)" is not available'),
    re.compile(r'could not open extension control file "[^"]*?(?P<name>[^"/]+)\.control"'),
    re.compile(r'could not load library "[^"]*/(?P<name>[^"/]+?)(?:\.so|\.dylib|\.dll)?"'),
)

#: The SQLSTATEs of those messages: feature_not_supported, undefined_file.
_EXTENSION_SQLSTATES = frozenset({"0A000", "58P01"})

#: ``[SQLSTATE] message`` as a failure line quotes the server's error.
_SQLSTATE_TAG = re.compile(r"\[([0-9A-Z]{5})\] (?=extension|could not)")

#: "revision 0005 (its doc) failed": which revision a failure line names.
_FAILED_REVISION = re.compile(r"\brevision ([^\s(),:]+) (?:\([^)]*\) )?failed")


def missing_extension(text: str) -> str | None:
    """The extension the server says it lacks in a failure's text, if it says so."""
    tag = _SQLSTATE_TAG.search(text)
    if tag is not None and tag.group(1) not in _EXTENSION_SQLSTATES:
        return None
    for pattern in _MISSING_EXTENSION:
        found = pattern.search(text)
        if found:
            return found.group("name")
    return None


@dataclass(frozen=True)
class Check:
    """One smoke check: what it found, with the context an operator needs to act."""

    name: str
    outcome: Outcome
    summary: str
    context: tuple[str, ...] = ()
    duration_ms: int = 0

    def __post_init__(self) -> None:
        # A revision's or env.py's own error may quote a URL or a password: the report goes
        # to stdout, --json and --junit, which the logger's scrubbing never sees.
        object.__setattr__(self, "summary", log.scrub(self.summary))
        object.__setattr__(self, "context", tuple(log.scrub(line) for line in self.context))


@dataclass(frozen=True)
class SmokeReport:
    """Every check's outcome; ``ok`` when none failed.

    ``environment`` is set when the server, not the project, made a check fail (it lacks
    an extension a revision creates): the checks after it were not run, and the exit
    code is that error's (78), not 1.
    """

    server: str
    checks: tuple[Check, ...]
    environment: MigrateLockError | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.environment is None

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(check.name for check in self.checks if check.outcome == "failed")

    @property
    def exit_code(self) -> int:
        """0 when every check passed, the environment error's code (78), else 1."""
        if self.environment is not None:
            return int(self.environment.exit_code)
        return 0 if self.ok else int(ExitCode.MIGRATION_FAILED)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "server": self.server,
            "failed": list(self.failed),
            "exit_code": self.exit_code,
            "environment": str(self.environment) if self.environment is not None else None,
            "checks": [asdict(check) for check in self.checks],
        }

    def junit_cases(self) -> list[JUnitCase]:
        """One JUnit test case per check (``smoke --junit``)."""
        return [
            JUnitCase(
                name=check.name,
                classname="migrate-lock smoke",
                failure=check.summary if check.outcome == "failed" else None,
                skipped=check.summary if check.outcome == "skipped" else None,
                details="\n".join((check.summary, *check.context)),
                seconds=check.duration_ms / 1000,
            )
            for check in self.checks
        ]


#: A stairway step of a revision: up, down to its parent, up again.
_CYCLE: tuple[Literal["upgrade", "downgrade"], ...] = ("upgrade", "downgrade", "upgrade")

#: The checks, in the order they run.
CHECKS = ("heads", "upgrade", "models", "seeds", "at_head", "stairway", "concurrency")


def smoke(
    *, settings: Settings | None = None, replicas: int = 8, skip: tuple[str, ...] = ()
) -> SmokeReport:
    """Run every check but those in ``skip``; return the report (a failing check does not raise).

    The server is DATABASE_URL's (MIGRATION_DATABASE_URL's) when set, else an embedded
    one. Raises ConfigError (78) when the project cannot be loaded or the role may not
    CREATE DATABASE.
    """
    unknown = sorted(set(skip) - set(CHECKS))
    if unknown:
        raise UsageError(
            f"unknown smoke check {', '.join(unknown)}", hint=f"the checks are {', '.join(CHECKS)}"
        )
    settings = settings or load_settings()
    project = Project(settings)
    project.scripts  # noqa: B018 - a broken project fails before any server starts
    with _server(settings) as (server_url, label):
        run = _SmokeRun(project, server_url, replicas, frozenset(skip), label)
        try:
            checks = run.all_checks()
        finally:
            run.drop_scratch_databases()
    report = SmokeReport(label, tuple(checks), run.environment)
    log.info("smoke.done", ok=report.ok, failed=list(report.failed))
    return report


class _SmokeRun:
    def __init__(
        self,
        project: Project,
        server_url: DatabaseUrl,
        replicas: int,
        skip: frozenset[str],
        label: str = "embedded",
    ) -> None:
        self.project = project
        self.skip = skip
        self.server_url = server_url
        self.replicas = replicas
        self.label = label
        self.prefix = f"smoke_{secrets.token_hex(4)}"
        self.created: list[str] = []
        #: Set when the server lacks something a revision needs: later checks do not run.
        self.environment: ExtensionNotAvailable | None = None

    def all_checks(self) -> list[Check]:
        checks = [self.run("heads", self.check_heads)]
        main = (
            self.scratch("main") if {"upgrade", "models", "seeds", "at_head"} - self.skip else None
        )
        upgraded = self.run("upgrade", lambda: self.check_upgrade(_given(main)))
        checks.append(upgraded)
        dependent: list[tuple[str, Callable[[], Check]]] = [
            ("models", lambda: self.check_models(_given(main))),
            ("seeds", lambda: self.check_seeds(_given(main))),
            ("at_head", lambda: self.check_at_head(_given(main))),
        ]
        for name, check in dependent:
            if upgraded.outcome != "passed" and name not in self.skip and not self.environment:
                checks.append(
                    Check(name, "skipped", "needs a database at heads (upgrade did not pass)")
                )
            else:
                checks.append(self.run(name, check))
        checks.append(self.run("stairway", lambda: self.check_stairway(self.scratch("stairway"))))
        checks.append(
            self.run("concurrency", lambda: self.check_concurrency(self.scratch("replicas")))
        )
        return checks

    def run(self, name: str, check: Callable[[], Check]) -> Check:
        if name in self.skip:
            return Check(name, "skipped", "skipped (--skip)")
        if self.environment is not None:
            return Check(
                name,
                "skipped",
                f'not run: the server lacks extension "{self.environment.extension}" (above)',
            )

        def attributed() -> Check:
            try:
                return check()
            except MigrateLockError as error:
                environment = (
                    error
                    if isinstance(error, ExtensionNotAvailable)
                    else self.environment_problem(error, str(error))
                )
                if environment is None:
                    raise
                self.environment = environment
                return Check(name, "failed", str(environment))

        return _timed(name, attributed)

    def environment_problem(
        self, error: BaseException | None, text: str
    ) -> ExtensionNotAvailable | None:
        """From an error of ours (its SQLSTATE and revision), or a replica's stderr."""
        if error is not None:
            sqlstate = getattr(error, "sqlstate", None) or sqlstate_of(error)
            if sqlstate is not None and sqlstate not in _EXTENSION_SQLSTATES:
                return None  # a revision's own exception that quotes such a message
            return environment_problem(self.label, text, getattr(error, "revision", None))
        return environment_problem(self.label, failure_text(text))

    def _raise_environment(self, error: BaseException | None, text: str) -> None:
        environment = self.environment_problem(error, text)
        if environment is not None:
            raise environment

    # --- the checks ----------------------------------------------------------------------

    def check_heads(self) -> Check:
        heads = self.project.scripts.heads()
        expected = _split(self.project.settings.smoke_expected_heads)
        context = tuple(self._describe_revision(head) for head in heads)
        if expected:
            if set(heads) == set(expected):
                return Check("heads", "passed", f"heads are {', '.join(heads)} as expected")
            return Check(
                "heads",
                "failed",
                f"heads are {', '.join(heads)}, SMOKE_EXPECTED_HEADS says {', '.join(expected)}",
                context,
            )
        if len(heads) == 1:
            return Check("heads", "passed", f"one head: {heads[0]}")
        return Check(
            "heads",
            "failed",
            f"{len(heads)} heads ({', '.join(heads)}): usually an unresolved merge; "
            "merge them with `alembic merge heads` (or set SMOKE_EXPECTED_HEADS)",
            context,
        )

    def check_upgrade(self, url: DatabaseUrl) -> Check:
        try:
            result = upgrade("heads", settings=self.settings_for(url))
        except MigrateLockError as error:
            self._raise_environment(error, str(error))
            return Check("upgrade", "failed", f"base -> heads failed: {error}")
        return Check(
            "upgrade",
            "passed",
            f"base -> {', '.join(result.to_revisions)}: {len(result.applied)} revisions, "
            f"{len(result.seeded)} seed files",
        )

    def check_models(self, url: DatabaseUrl) -> Check:
        try:
            differences = compare_models(self.project_for(url))
        except MigrateLockError as error:
            return Check("models", "failed", str(error))
        if differences is None:
            return Check(
                "models",
                "skipped",
                "env.py passes no target_metadata to context.configure (see docs/ci.md)",
            )
        if not differences:
            return Check("models", "passed", "the models match the migrated schema")
        return Check(
            "models",
            "failed",
            f"the models and the migrations differ in {len(differences)} places: write a "
            "revision for the change (alembic revision --autogenerate) or fix the models",
            tuple(differences),
        )

    def check_seeds(self, url: DatabaseUrl) -> Check:
        settings = self.project.settings
        files = discover(seeds_dir(settings.seeds_dir, settings.alembic_config))
        if not files:
            return Check("seeds", "passed", "no seed files")
        with self.project_for(url).session(application_name="migrate-lock smoke") as session:
            connection, table = session.connection, session.version_table
            try:
                apply_seeds(connection, table, changed_seeds(connection, table, files))
            except MigrateLockError as error:
                self._raise_environment(error, str(error))
                return Check("seeds", "failed", f"the seed files do not apply: {error}")
            before = table_fingerprints(connection)
            try:
                apply_seeds(connection, table, files, force=True)
            except MigrateLockError as error:
                return Check("seeds", "failed", f"the seed files fail a second time: {error}")
            after = table_fingerprints(connection)
        changed = sorted(
            name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
        )
        if changed:
            context = tuple(
                f"{name}: {_rows(before.get(name))} rows before, {_rows(after.get(name))} after"
                for name in changed
            )
            return Check(
                "seeds",
                "failed",
                f"applying the seed files a second time changed {', '.join(changed)}: make them "
                "idempotent (INSERT … ON CONFLICT, or CSV seeds keyed by primary key)",
                context,
            )
        return Check(
            "seeds", "passed", f"{len(files)} seed files apply; a second run changes nothing"
        )

    def check_at_head(self, url: DatabaseUrl) -> Check:
        process = self._spawn_upgrade(url)
        ((stdout, stderr),) = self._outputs([process])
        result = _json_object(stdout)
        if process.returncode != 0:
            self._raise_environment(None, stderr)
            return Check(
                "at_head",
                "failed",
                f"migrate-lock upgrade at head exited {process.returncode}",
                _last_lines(stderr),
            )
        applied = result.get("applied") if result else None
        if applied:
            return Check("at_head", "failed", f"a re-run at head applied {applied}")
        role = result.get("role") if result else "?"
        return Check("at_head", "passed", f"a re-run at head exits 0 ({role}, nothing applied)")

    def check_stairway(self, url: DatabaseUrl) -> Check:
        """Each revision up, down and up again. A step that fails stops it; a cycle that
        leaves the catalog other than it found it (a type the downgrade forgot), or the
        rows other than the first upgrade left them (a data revision that inserts again),
        is a finding, and the stairway goes on to the next revision."""
        project = self.project_for(url)
        scripts = project.scripts
        order = [s.revision for s in scripts.script.walk_revisions("base", "heads")][::-1]
        exempt = self._exempt_from_downgrade()
        findings: list[str] = []
        with project.session(application_name="migrate-lock smoke") as session:
            config = project.config
            config.attributes["version_table"] = session.version_table.name
            config.attributes["version_table_schema"] = session.version_table.schema
            connection, table = session.connection, session.version_table
            # The catalog and rows before the next revision's upgrade (None: not taken).
            before: tuple[Catalog, Rows] | None = None
            for revision in order:
                cycle = revision not in exempt
                if cycle and before is None:
                    before = database_state(connection, table)
                states: list[tuple[Catalog, Rows]] = []
                steps = _CYCLE if cycle else _CYCLE[:1]
                for step, command in enumerate(steps):
                    try:
                        run_alembic(
                            config,
                            connection,
                            command,
                            self._target(connection, table, revision, command),
                        )
                    except MigrateLockError as error:
                        self._raise_environment(error, str(error))
                        what = "upgrade again" if step == 2 else command
                        return Check(
                            "stairway",
                            "failed",
                            f"revision {revision}: {what} failed: {error}",
                            (
                                f"{len(order)} revisions; stopped at {revision} "
                                f"({self._describe_revision(revision)})",
                                "a revision that cannot go down on purpose: set "
                                "SMOKE_STAIRWAY_FROM to the first revision that must",
                                *findings,
                            ),
                        )
                    if cycle:
                        states.append(database_state(connection, table))
                if cycle:
                    assert before is not None
                    findings += _cycle_findings(revision, before, *states)
                    before = states[-1]
        down = len(order) - len(exempt)
        if findings:
            revisions = sorted({line.split(" of ", 1)[1].split(" ", 1)[0] for line in findings})
            return Check(
                "stairway",
                "failed",
                f"a down and up cycle does not restore what it found: "
                f"{len(findings)} differences in {', '.join(revisions)}; make downgrade() "
                "undo all that upgrade() does (DROP TYPE …) and data revisions idempotent "
                "(INSERT … ON CONFLICT DO NOTHING, WHERE NOT EXISTS)",
                tuple(findings),
            )
        return Check(
            "stairway",
            "passed",
            f"{len(order)} revisions up; {down} of them down and up again"
            + (f" ({len(exempt)} older than SMOKE_STAIRWAY_FROM only up)" if exempt else "")
            + ("; catalog and rows the same after each cycle" if down else ""),
        )

    def _target(
        self,
        connection: psycopg.Connection[Any],
        table: VersionTable,
        revision: str,
        command: Literal["upgrade", "downgrade"],
    ) -> str:
        """Where the stairway's step goes: the revision up; down to its parent."""
        if command == "upgrade":
            return revision
        script = self.project.scripts.script.get_revision(revision)
        downs = _split_tuple(script.down_revision if script else None)
        if not downs:
            return "base"
        if len(downs) > 1:
            return "-1"  # a merge: down to its parents
        if len(database_revisions(connection, table) or ()) > 1:
            # Another branch's head is applied too: down to the parent would take that
            # branch down as well; go down this revision's branch only.
            return f"{revision}@-1"
        return downs[0]

    def check_concurrency(self, url: DatabaseUrl) -> Check:
        processes = [self._spawn_upgrade(url) for _ in range(self.replicas)]
        outputs = self._outputs(processes)
        problems: list[str] = []
        applied: Counter[str] = Counter()
        migrated = 0
        for index, (process, (stdout, stderr)) in enumerate(zip(processes, outputs, strict=True)):
            result = _json_object(stdout)
            if process.returncode != 0 or result is None:
                self._raise_environment(None, stderr)
                tail = " | ".join(_last_lines(stderr, 2))
                problems.append(f"replica {index + 1} exited {process.returncode}: {tail}")
                continue
            applied.update(result.get("applied") or ())
            migrated += result.get("role") == "migrated"
        expected = {s.revision for s in self.project.scripts.script.walk_revisions("base", "heads")}
        twice = sorted(rev for rev, count in applied.items() if count > 1)
        missing = sorted(expected - set(applied))
        if twice:
            problems.append(f"applied more than once: {', '.join(twice)}")
        if missing and not problems:
            problems.append(f"never applied: {', '.join(missing)}")
        if migrated != 1 and not problems:
            problems.append(f"{migrated} replicas report role 'migrated', expected exactly 1")
        with self.project_for(url).session(application_name="migrate-lock smoke") as session:
            at = database_revisions(session.connection, session.version_table) or ()
        heads = self.project.scripts.heads()
        if set(at) != set(heads):
            problems.append(
                f"the database is at {', '.join(at) or 'no revision'}, not {', '.join(heads)}"
            )
        if problems:
            return Check(
                "concurrency",
                "failed",
                f"{self.replicas} replicas at once did not apply every revision exactly once",
                tuple(problems),
            )
        return Check(
            "concurrency",
            "passed",
            f"{self.replicas} replicas at once: all exit 0, one migrated, "
            f"{len(expected)} revisions applied once each",
        )

    # --- scratch databases and processes -------------------------------------------------

    def scratch(self, suffix: str) -> DatabaseUrl:
        """Create an empty database on the server (dropped by drop_scratch_databases)."""
        name = f"{self.prefix}_{suffix}"
        with self._maintenance() as connection:
            try:
                connection.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
                )
            except psycopg.errors.InsufficientPrivilege:
                raise ConfigError(
                    f"the role in the URL may not create the scratch database {name}",
                    hint="give it CREATEDB (ALTER ROLE … CREATEDB), or run smoke without a URL "
                    "to use an embedded PostgreSQL",
                ) from None
        self.created.append(name)
        log.info("smoke.scratch_created", database=name)
        return with_database(self.server_url, name)

    def drop_scratch_databases(self) -> None:
        if not self.created:
            return

        with self._maintenance() as connection:
            for name in self.created:
                try:
                    connection.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(name)
                        )
                    )
                    log.info("smoke.scratch_dropped", database=name)
                except Exception as error:  # noqa: BLE001 - report, and drop the others
                    log.warning("smoke.scratch_left", database=name, error=str(error))
        self.created.clear()

    @contextlib.contextmanager
    def _maintenance(self) -> Iterator[psycopg.Connection[Any]]:
        connection = connect(
            self.server_url,
            timeout_seconds=self.project.settings.db_connect_timeout_seconds,
            application_name="migrate-lock smoke",
        )
        try:
            yield connection
        finally:
            connection.close()

    def settings_for(self, url: DatabaseUrl) -> Settings:
        # A scratch database is a test database: no production start-up checks apply.
        return self.project.settings.model_copy(
            update={
                "database_url": url.libpq,
                "migration_database_url": url.libpq,
                "environment": "test",
                "backup_before_upgrade": False,
            }
        )

    def project_for(self, url: DatabaseUrl) -> Project:
        return Project(self.settings_for(url))

    def _spawn_upgrade(self, url: DatabaseUrl) -> subprocess.Popen[str]:
        settings = self.project.settings
        env = {
            key: value
            for key, value in os.environ.items()
            if key
            not in (
                "DATABASE_URL",
                "DATABASE_URL_FILE",
                "MIGRATION_DATABASE_URL",
                "MIGRATION_DATABASE_URL_FILE",
                "APP_ENV",
                "MIGRATION_LOCK_KEY",
            )
        }
        env.update(
            DATABASE_URL=url.libpq,
            MIGRATE_LOCK_ENVIRONMENT="test",  # beats ENVIRONMENT, and .env's too
            ALEMBIC_CONFIG=str(Path(settings.alembic_config).resolve()),
            LOG_FORMAT="json",
            BACKUP_BEFORE_UPGRADE="false",
        )
        if settings.seeds_dir is not None:
            env["SEEDS_DIR"] = str(Path(settings.seeds_dir).resolve())
        return subprocess.Popen(
            [sys.executable, "-m", "migrate_lock", "upgrade", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _outputs(self, processes: list[subprocess.Popen[str]]) -> list[tuple[str, str]]:
        # A replica that hangs past the lock timeout is a failure, never a hung CI job.
        deadline = time.monotonic() + self.project.settings.migration_lock_timeout_seconds + 120
        outputs = []
        for process in processes:
            try:
                outputs.append(process.communicate(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
                outputs.append((stdout, stderr + "\nmigrate-lock smoke: killed after the deadline"))
        return outputs

    def _exempt_from_downgrade(self) -> set[str]:
        first = self.project.settings.smoke_stairway_from
        if first is None:
            return set()
        scripts = self.project.scripts
        if not scripts.knows(first):
            raise ConfigError(
                f"SMOKE_STAIRWAY_FROM names {first!r}, which is not a revision of this project",
                hint="see `migrate-lock history`",
            )
        return set(scripts.ancestry((first,))) - {first}

    def _describe_revision(self, revision: str) -> str:
        script = self.project.scripts.script.get_revision(revision)
        doc = (script.doc or "").strip() if script is not None else ""
        path = Path(script.path).name if script is not None and script.path else "?"
        return f"{revision} {doc!r} in {path}" if doc else f"{revision} in {path}"


def failure_text(stderr: str) -> str:
    """A replica's stderr as text: its lines, and the message of each JSON log event
    (``LOG_FORMAT=json`` escapes the quotes around an extension's name)."""
    lines: list[str] = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if isinstance(event, dict):
                    lines.extend(str(event[key]) for key in ("error", "detail") if key in event)
                    continue
        lines.append(line)
    return "\n".join(lines)


def environment_problem(
    server: str, text: str, revision: str | None = None
) -> ExtensionNotAvailable | None:
    """The server's fault behind a failure's ``text``, if that is what it is: an extension
    the server lacks. ``server`` is ``embedded`` or the masked URL; ``revision`` the
    failing revision when known (else read from the text)."""
    extension = missing_extension(text)
    if extension is None:
        return None
    if revision is None and (found := _FAILED_REVISION.search(text)):
        revision = found.group(1)
    creates = f" (revision {revision} creates it)" if revision else ""
    if server == "embedded":
        return ExtensionNotAvailable(
            f'the embedded PostgreSQL has no extension "{extension}"{creates}: '
            "the environment lacks it, the revision is not at fault",
            hint="run smoke against a full PostgreSQL that has it, with --database-url "
            "(in CI a PostgreSQL service container; see docs/ci.md, Extensions)",
            extension=extension,
            revision=revision,
        )
    return ExtensionNotAvailable(
        f'the server {server} has no extension "{extension}" installed{creates}: '
        "the environment lacks it, the revision is not at fault",
        hint="install it on that server (for uuid-ossp or pgcrypto: PostgreSQL's contrib "
        "package), or point --database-url at a server that has it",
        extension=extension,
        revision=revision,
    )


def compare_models(project: Project) -> list[str] | None:
    """Alembic's autogenerate comparison of env.py's ``target_metadata`` with the database.

    env.py runs as under ``alembic revision --autogenerate``, so its own options
    (``include_object``, ``compare_type``, …) apply. None when env.py passes no
    ``target_metadata``; otherwise one line per difference (our own tables left out).
    """
    found: dict[str, Any] = {}

    def capture(revision: Any, context: Any) -> list[Any]:
        metadata = context.opts.get("target_metadata")
        if metadata is not None:
            found["diffs"] = compare_metadata(context, metadata)
        return []  # nothing to run

    config = project.config
    script = project.scripts.script
    engine = create_engine(project.url.sqlalchemy, poolclass=pool.NullPool)
    try:
        # What engine.connect() makes, as the subclass the runner hands env.py: a
        # Connection for the template's env.py, and one that answers connect() for an env.py
        # written as pytest-alembic's docs say (which takes the attribute for an Engine).
        with LockedConnection(engine) as connection:
            config.attributes["connection"] = connection
            try:
                with EnvironmentContext(config, script, fn=capture, as_sql=False):
                    script.run_env()
            except MigrateLockError:
                raise
            except Exception as error:  # noqa: BLE001 - env.py or the models may raise anything
                raise ConfigError(
                    f"cannot compare the models: {type(error).__name__}: {error}",
                    hint="check that env.py imports your models",
                ) from None
            finally:
                config.attributes.pop("connection", None)
    finally:
        engine.dispose()
    if "diffs" not in found:
        return None
    return [line for diff in found["diffs"] if (line := describe_difference(diff))]


def describe_difference(diff: Any) -> str | None:
    """One autogenerate difference as a readable line (None for our own tables)."""
    if isinstance(diff, list):  # modify_* come grouped per column
        lines = [describe_difference(item) for item in diff]
        return "; ".join(line for line in lines if line) or None
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        name = diff[1].name
        where = (
            "in the models, not in the database"
            if kind == "add_table"
            else ("in the database, not in the models")
        )
        return None if name.startswith(_OWN_TABLE_PREFIX) else f"table {name}: {where}"
    if kind in ("add_column", "remove_column"):
        where = (
            "in the models, not in the database"
            if kind == "add_column"
            else ("in the database, not in the models")
        )
        return f"column {diff[2]}.{diff[3].name}: {where}"
    if kind.startswith("modify_"):
        table, column, old, new = diff[2], diff[3], diff[5], diff[6]
        what = kind.removeprefix("modify_")
        return f"column {table}.{column}: {what} is {old!r} in the database, {new!r} in the models"
    item = diff[1]
    table = getattr(getattr(item, "table", None), "name", None) or getattr(item, "parent", None)
    if isinstance(table, str) and table.startswith(_OWN_TABLE_PREFIX):
        return None
    side = (
        "in the models, not in the database"
        if kind.startswith("add")
        else ("in the database, not in the models")
    )
    noun = kind.split("_", 1)[1]
    return (
        f"{noun} {getattr(item, 'name', None) or item}"
        + (f" on {table}" if table else "")
        + f": {side}"
    )


def table_fingerprints(connection: psycopg.Connection[Any]) -> dict[str, tuple[int, str]]:
    """Row count and a content hash of every user table (ours left out)."""
    tables = connection.execute(
        "SELECT schemaname, tablename FROM pg_tables"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'migrate_lock')"
        " AND tablename NOT LIKE 'migrate\\_lock\\_%' ORDER BY 1, 2"
    ).fetchall()
    prints: dict[str, tuple[int, str]] = {}
    for schema, name in tables:
        row = connection.execute(
            sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                " FROM {}.{} t"
            ).format(sql.Identifier(schema), sql.Identifier(name))
        ).fetchone()
        prints[f"{schema}.{name}"] = (int(row[0]), str(row[1])) if row else (0, "")
    return prints


#: What the catalog holds, by (kind, qualified name): its definition, as text.
Catalog = dict[tuple[str, str], str]

#: Each table's row count and a hash of its rows, by qualified name.
Rows = dict[str, tuple[int, str]]

#: The schemas that are the server's, not the application's (``migrate_lock`` is ours).
_CATALOG_COMMON = r"""
WITH own AS (
    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE (n.nspname = %(schema)s AND c.relname = %(table)s)
       OR c.relname LIKE 'migrate\_lock\_%%'
), ns AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'migrate_lock')
      AND nspname NOT LIKE 'pg\_temp\_%%' AND nspname NOT LIKE 'pg\_toast\_temp\_%%'
), ext AS (
    SELECT classid, objid FROM pg_depend WHERE deptype = 'e'
)
"""

_CATALOG = (
    _CATALOG_COMMON
    + r"""
SELECT 'schema', quote_ident(ns.nspname), '' FROM ns
WHERE NOT EXISTS (
    SELECT FROM ext WHERE classid = 'pg_namespace'::regclass AND objid = ns.oid)
UNION ALL
SELECT CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'i' THEN 'index' WHEN 'I' THEN 'index'
           WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
           WHEN 'f' THEN 'foreign table' ELSE 'table' END,
       ns.nspname || '.' || c.relname,
       CASE WHEN c.relkind IN ('i', 'I') THEN pg_get_indexdef(c.oid)
            WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) ELSE '' END
FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'i', 'I')
  AND c.oid NOT IN (SELECT oid FROM own)
  AND NOT EXISTS (SELECT FROM pg_index i
                  WHERE i.indexrelid = c.oid AND i.indrelid IN (SELECT oid FROM own))
  AND NOT EXISTS (SELECT FROM ext WHERE classid = 'pg_class'::regclass AND objid = c.oid)
UNION ALL
SELECT 'column', ns.nspname || '.' || c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
       || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
       || CASE WHEN a.attidentity <> '' THEN ' IDENTITY' ELSE '' END
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN ns ON ns.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND c.oid NOT IN (SELECT oid FROM own)
  AND NOT EXISTS (SELECT FROM ext WHERE classid = 'pg_class'::regclass AND objid = c.oid)
UNION ALL
SELECT 'constraint',
       con.conname || ' on ' || ns.nspname || '.' || coalesce(c.relname, t.typname, ''),
       pg_get_constraintdef(con.oid)
FROM pg_constraint con JOIN ns ON ns.oid = con.connamespace
LEFT JOIN pg_class c ON c.oid = con.conrelid
LEFT JOIN pg_type t ON t.oid = con.contypid
WHERE con.conrelid NOT IN (SELECT oid FROM own)
  AND NOT EXISTS (SELECT FROM ext WHERE classid = 'pg_class'::regclass AND objid = c.oid)
  AND NOT EXISTS (SELECT FROM ext WHERE classid = 'pg_type'::regclass AND objid = t.oid)
UNION ALL
SELECT 'type', ns.nspname || '.' || t.typname,
       CASE t.typtype
           WHEN 'e' THEN 'enum (' || coalesce((
               SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
               FROM pg_enum e WHERE e.enumtypid = t.oid), '') || ')'
           WHEN 'd' THEN 'domain over ' || format_type(t.typbasetype, t.typtypmod)
           WHEN 'r' THEN 'range' WHEN 'm' THEN 'multirange' WHEN 'c' THEN 'composite'
           ELSE 'base' END
FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
WHERE (t.typtype <> 'c'
       OR EXISTS (SELECT FROM pg_class r WHERE r.oid = t.typrelid AND r.relkind = 'c'))
  AND NOT EXISTS (SELECT FROM pg_type element WHERE element.typarray = t.oid)
  AND NOT EXISTS (SELECT FROM ext WHERE classid = 'pg_type'::regclass AND objid = t.oid)
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate'
           ELSE 'function' END,
       p.oid::regprocedure::text,
       coalesce(pg_get_function_result(p.oid), '') || ' ' || md5(coalesce(p.prosrc, ''))
FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
WHERE NOT EXISTS (SELECT FROM ext WHERE classid = 'pg_proc'::regclass AND objid = p.oid)
UNION ALL
SELECT 'trigger', tg.tgname || ' on ' || ns.nspname || '.' || c.relname,
       pg_get_triggerdef(tg.oid)
FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN ns ON ns.oid = c.relnamespace
WHERE NOT tg.tgisinternal AND c.oid NOT IN (SELECT oid FROM own)
"""
)

#: Every user table, and the columns whose values a rerun must reproduce: not those a
#: default, an identity or a generation fills (a serial id, a timestamp), nor foreign
#: keys (they hold such ids).
_ROW_TABLES = (
    _CATALOG_COMMON
    + r"""
SELECT ns.nspname, c.relname,
       coalesce(array_agg(a.attname::text ORDER BY a.attnum) FILTER (
           WHERE NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
             AND NOT EXISTS (SELECT FROM pg_constraint f
                             WHERE f.contype = 'f' AND f.conrelid = c.oid
                               AND a.attnum = ANY (f.conkey))), '{}')
FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind = 'r' AND c.oid NOT IN (SELECT oid FROM own)
  AND NOT EXISTS (SELECT FROM ext WHERE classid = 'pg_class'::regclass AND objid = c.oid)
GROUP BY ns.nspname, c.relname
ORDER BY 1, 2
"""
)


def catalog_snapshot(connection: psycopg.Connection[Any], table: VersionTable) -> Catalog:
    """The application's schema objects: schemas, tables, views, columns, sequences,
    indexes, constraints, types, functions and triggers, each with its definition.

    Left out: the server's schemas, migrate-lock's (``migrate_lock``, ``migrate_lock_*``
    tables), the version table and its index, and what extensions own.
    """
    rows = connection.execute(_CATALOG, {"schema": table.schema, "table": table.name})
    return {(str(kind), str(name)): str(definition) for kind, name, definition in rows}


def row_fingerprints(connection: psycopg.Connection[Any], table: VersionTable) -> Rows:
    """Row count and a content hash of every user table (one query), over the columns a
    rerun must reproduce (see ``_ROW_TABLES``); the version table and ours left out."""
    tables = connection.execute(_ROW_TABLES, {"schema": table.schema, "table": table.name})
    parts = []
    for schema, name, columns in tables.fetchall():
        qualified = sql.Identifier(schema, name)
        label = sql.Literal(f"{schema}.{name}")
        if columns:
            row = sql.SQL("ROW({})::text").format(
                sql.SQL(", ").join(sql.Identifier(column) for column in columns)
            )
            parts.append(
                sql.SQL(
                    "SELECT {}, count(*), md5(coalesce(string_agg(r, '|' ORDER BY r), ''))"
                    " FROM (SELECT {} AS r FROM {}) s"
                ).format(label, row, qualified)
            )
        else:
            parts.append(sql.SQL("SELECT {}, count(*), '' FROM {}").format(label, qualified))
    if not parts:
        return {}
    found = connection.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall()
    return {str(name): (int(count), str(digest)) for name, count, digest in found}


def database_state(
    connection: psycopg.Connection[Any], table: VersionTable
) -> tuple[Catalog, Rows]:
    """The catalog and the rows, as a stairway cycle compares them."""
    return catalog_snapshot(connection, table), row_fingerprints(connection, table)


def _cycle_findings(
    revision: str,
    before: tuple[Catalog, Rows],
    up: tuple[Catalog, Rows],
    down: tuple[Catalog, Rows],
    again: tuple[Catalog, Rows],
) -> list[str]:
    """What a down and up cycle of ``revision`` did that it should not: the catalog after
    the downgrade is not the one before the upgrade (or, when it is, the second upgrade's
    is not the first's), and rows the second upgrade left other than the first."""
    findings = [
        f"downgrade of {revision} {what}"
        for what in _catalog_differences(before[0], down[0], "left {} behind", "removed {}")
    ]
    if not findings:  # a leftover shows again after the upgrade: say it once
        findings = [
            f"upgrade of {revision} run again {what}"
            for what in _catalog_differences(
                up[0], again[0], "created {} as well", "did not create {}"
            )
        ]
    return findings + _row_findings(revision, before[1], up[1], down[1], again[1])


def _catalog_differences(old: Catalog, new: Catalog, added: str, removed: str) -> list[str]:
    lines = []
    for key in sorted(old.keys() | new.keys()):
        name = " ".join(key)
        if key not in old:
            lines.append(added.format(name))
        elif key not in new:
            lines.append(removed.format(name))
        elif old[key] != new[key]:
            lines.append(f"changed {name}: {_short(old[key])} -> {_short(new[key])}")
    return lines


def _row_findings(revision: str, before: Rows, up: Rows, down: Rows, again: Rows) -> list[str]:
    """Tables whose rows differ after ``revision``'s second upgrade from after its first.

    Only where the downgrade did not put the rows back as they were before the upgrade:
    where it did (it deleted what the upgrade inserted), a difference can only come from
    values the upgrade computes afresh each time (``gen_random_uuid()``, ``now()``).
    """
    findings = []
    for name in sorted(up.keys() & again.keys()):
        if before.get(name) == down.get(name):
            continue
        (first, first_hash), (second, second_hash) = up[name], again[name]
        if first != second:
            findings.append(
                f"upgrade of {revision} run again after its downgrade left {second} rows in "
                f"{name}, the first run {first}"
            )
        elif first_hash != second_hash:
            findings.append(
                f"upgrade of {revision} run again after its downgrade changed the rows of "
                f"{name} ({first} rows, other values)"
            )
    return findings


def _short(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@contextlib.contextmanager
def _server(settings: Settings) -> Iterator[tuple[DatabaseUrl, str]]:
    if settings.migration_database_url or settings.database_url:
        url = settings.migration_url()
        log.add_secret(url.password)
        yield url, url.masked
        return

    started = time.monotonic()
    with EmbeddedPostgres() as server:
        log.add_secret(server.password)
        log.info("smoke.server_started", duration_ms=round((time.monotonic() - started) * 1000))
        yield parse_database_url(server.url()), "embedded"


def _timed(name: str, check: Callable[[], Check]) -> Check:
    started = time.monotonic()
    log.info("smoke.check", check=name)
    try:
        result = check()
    except MigrateLockError as error:
        result = Check(name, "failed", str(error))
    result = Check(
        result.name,
        result.outcome,
        result.summary,
        result.context,
        round((time.monotonic() - started) * 1000),
    )
    log.info(f"smoke.{result.outcome}", check=name, duration_ms=result.duration_ms)
    return result


def _given(url: DatabaseUrl | None) -> DatabaseUrl:
    assert url is not None, "a check ran without its scratch database"
    return url


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").replace(" ", ",").split(",") if part.strip())


def _split_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _json_object(stdout: str) -> dict[str, Any] | None:
    try:
        value = json.loads(stdout)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def _last_lines(text: str, count: int = 3) -> tuple[str, ...]:
    return tuple(line for line in text.strip().splitlines()[-count:] if line)


def _rows(fingerprint: tuple[int, str] | None) -> int:
    return fingerprint[0] if fingerprint else 0
