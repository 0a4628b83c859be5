"""The ``migrate-lock`` command: flags in, a library call, an exit code out. No logic here."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

import migrate_lock
from migrate_lock import __version__
from migrate_lock.errors import ExitCode, MigrateLockError, unclassified_server_error
from migrate_lock.fleet.cli import tenant_options
from migrate_lock.interrupts import Terminated, signals_raise
from migrate_lock.lean.settings_schema import (
    choices,
    default,
    dotenv_path,
    read_dotenv,
    read_field,
)
from migrate_lock.logs import log

if TYPE_CHECKING:
    from migrate_lock.outcome import UpgradeResult
    from migrate_lock.settings import Settings

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="migrate-lock")
@click.option(
    "-c",
    "--config",
    "alembic_config",
    type=click.Path(path_type=Path),
    help="Alembic config file [env ALEMBIC_CONFIG; default ./alembic.ini].",
)
@click.option("--database-url", help="Database URL [env DATABASE_URL].")
@click.option(
    "--env-file",
    type=click.Path(path_type=Path),
    help="The .env file to read [env ENV_FILE; default the first .env upward from here, "
    "within the repository].",
)
@click.option(
    "--log-format",
    type=click.Choice(choices("log_format"), case_sensitive=False),
    help="[env LOG_FORMAT]",
)
@click.option(
    "--log-level",
    type=click.Choice(choices("log_level"), case_sensitive=False),
    help="[env LOG_LEVEL]",
)
@click.pass_context
def main(ctx: click.Context, /, **flags: Any) -> None:
    """Run Alembic migrations exactly once from any number of replicas."""
    ctx.obj = flags


def _overrides(ctx: click.Context, **more: Any) -> dict[str, Any]:
    """The flags as settings by field name (None: not given); they beat the environment.

    ``--database-url`` also beats MIGRATION_DATABASE_URL: the settings table's ``collect``
    says so, for both paths and for library callers alike.
    """
    return {**(ctx.find_root().obj or {}), **more}


def _settings(ctx: click.Context, **more: Any) -> Settings:
    # Through the facade: pydantic loads only for the verbs that need it.
    settings = migrate_lock.load_settings(**_overrides(ctx, **more))
    log.configure(log_format=settings.log_format, level=settings.log_level)
    return settings


def _run(action: Callable[[], T]) -> T:
    """Call the library; turn its failures into one line and a documented exit code.

    While the library runs, ``print()`` goes to stderr: stdout carries only what the verb
    prints after it (a JSON document, SQL, a table), never what revisions, env.py or the
    application code they import print while they load or run. An action that writes its
    document as it goes (``upgrade --sql``, ``demo``) is given the real stdout.
    """
    # Until settings are validated, honour the log settings as given, so that even a
    # settings error is reported in the format the operator asked for.
    flags = click.get_current_context().find_root().obj or {}
    log.configure(
        log_format=flags.get("log_format") or _early_setting("log_format"),
        level=flags.get("log_level") or _early_setting("log_level"),
    )
    try:
        with signals_raise(), contextlib.redirect_stdout(sys.stderr):
            return action()
    except MigrateLockError as error:
        _fail(str(error), error.exit_code)
    except Terminated:
        _fail(
            "interrupted by SIGTERM; anything open was rolled back", ExitCode.TERMINATED, now=True
        )
    except KeyboardInterrupt:
        _fail(
            "interrupted by SIGINT; anything open was rolled back", ExitCode.INTERRUPTED, now=True
        )
    except Exception as error:  # noqa: BLE001 - the last line of defence: still one line
        log.debug("command.traceback", error=repr(error))
        explained = unclassified_server_error(error)
        if explained is not None:
            _fail(str(explained), explained.exit_code)
        _fail(
            f"unexpected {type(error).__name__}: {error}; this is a bug in migrate-lock, "
            "please report it (LOG_LEVEL=DEBUG shows more)",
            ExitCode.MIGRATION_FAILED,
        )


def _early_setting(field: str) -> Any:
    """``field`` by the settings' rule, or its default while it is wrong (the settings'
    validation then reports it, in the format chosen here)."""
    flags = click.get_current_context().find_root().obj or {}
    try:
        dotenv = read_dotenv(dotenv_path(os.environ, flags))
    except ValueError:  # a line the lean reader leaves to python-dotenv, a missing ENV_FILE
        dotenv = {}
    try:
        return read_field(field, os.environ, dotenv)
    except ValueError:
        return default(field)


def _fail(message: str, code: ExitCode, *, now: bool = False) -> NoReturn:
    if log.format == "json":
        log.error("command.failed", error=message, exit_code=int(code))
    else:
        line = " ".join(f"migrate-lock: error: {message} (exit {int(code)})".split())
        sys.stderr.write(log.scrub(line) + "\n")
    if now:
        # Interrupted: every connection is closed already (the finally blocks ran on the
        # way here). Skipping the interpreter's teardown of Alembic and SQLAlchemy gives
        # back 0.2 s or more of a stopping container's grace period.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))
    sys.exit(int(code))


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, default=str, indent=2))


_confirm_option = click.option(
    "--confirm-destructive",
    "confirm",
    metavar="DBNAME",
    help="Confirm a destructive operation on the database DBNAME [env CONFIRM_DESTRUCTIVE].",
)


def _then_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--then CMD`` and ``--then-always``: the bootstrap step run under the lock."""
    command = click.option(
        "--then-always",
        "then_always",
        is_flag=True,
        default=None,
        help="Run the --then step on every start, not only on a change [env MIGRATE_THEN_ALWAYS].",
    )(command)
    return click.option(
        "--then",
        "then",
        metavar="CMD",
        help="Shell command run after the revisions and seeds, holding the migration lock, "
        "when something changed [env MIGRATE_THEN].",
    )(command)


@main.command()
@click.argument("revision", default="heads")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (no lock, no DB).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--lock-timeout", type=float, help="[env MIGRATION_LOCK_TIMEOUT_SECONDS]")
@click.option(
    "--backup-first",
    is_flag=True,
    default=None,
    help="Back up before revisions run (only when there are) [env BACKUP_BEFORE_UPGRADE].",
)
@_then_options
@tenant_options("upgrade", _run)
@click.pass_context
def upgrade(
    ctx: click.Context,
    revision: str,
    sql: bool,
    as_json: bool,
    lock_timeout: float | None,
    backup_first: bool | None,
    then: str | None,
    then_always: bool | None,
) -> None:
    """Upgrade to REVISION (default: heads) under the migration lock."""
    document = sys.stdout  # for the SQL: _run sends everything else printed to stderr

    def action() -> UpgradeResult | None:
        if sql:
            migrate_lock.upgrade_sql(revision, settings=_settings(ctx), output=document)
            return None
        return migrate_lock.upgrade(
            revision,
            overrides=_overrides(
                ctx,
                migration_lock_timeout_seconds=lock_timeout,
                backup_before_upgrade=backup_first,
                migrate_then=then,
                migrate_then_always=then_always,
            ),
        )

    result = _run(action)
    if as_json and result is not None:
        _print_json(result.as_dict())


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@_then_options
@click.pass_context
def run(
    ctx: click.Context, command: tuple[str, ...], then: str | None, then_always: bool | None
) -> None:
    """Migrate under the lock (unless MIGRATE_ON_START=false), then exec COMMAND.

    Use it as the container's entrypoint: migrate-lock run -- gunicorn app:app
    (with a bootstrap step: run --then 'python initial_data.py' -- gunicorn app:app)
    """
    overrides = _overrides(ctx, migrate_then=then, migrate_then_always=then_always)
    _run(lambda: migrate_lock.run(command, overrides=overrides))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON on stdout.")
@tenant_options("status", _run)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Compare the database with the code: exit 0 at head/ahead, 4 pending, 5 unknown."""
    # Overrides, not settings: at head the lean path answers, without pydantic or Alembic.
    result = _run(lambda: migrate_lock.status(overrides=_overrides(ctx)))
    if as_json:
        _print_json(result.as_dict())
    else:
        state = result.state
        click.echo(f"status:  {state.status}")
        click.echo(f"current: {', '.join(state.current) or '(none)'}")
        click.echo(f"heads:   {', '.join(state.heads)}")
        if state.pending:
            click.echo(f"pending: {len(state.pending)} ({', '.join(state.pending)})")
        holder = result.lock_holder
        click.echo(f"lock:    {holder.describe() if holder else 'free'} (key {result.lock_key})")
    sys.exit(int(result.exit_code))


@main.command()
@tenant_options("current", _run)
@click.pass_context
def current(ctx: click.Context) -> None:
    """Print the revision(s) the database is at."""
    revisions = _run(lambda: migrate_lock.current(settings=_settings(ctx)))
    click.echo("\n".join(revisions) if revisions else "(none)")


@main.command()
@click.pass_context
def heads(ctx: click.Context) -> None:
    """Print the head revision(s) of the migration scripts."""
    click.echo("\n".join(_run(lambda: migrate_lock.heads(settings=_settings(ctx)))))


@main.command()
@click.pass_context
def history(ctx: click.Context) -> None:
    """List the revisions of the migration scripts, newest first."""
    for info in _run(lambda: migrate_lock.history(settings=_settings(ctx))):
        click.echo(info.line)  # as `alembic history` prints it, markers included


@main.command()
@click.pass_context
def freeze(ctx: click.Context) -> None:
    """Write the heads manifest (for the Dockerfile): replicas at head then skip Alembic."""
    manifest = _run(lambda: migrate_lock.freeze(settings=_settings(ctx)))
    click.echo(f"wrote {manifest.path} (heads: {', '.join(manifest.heads)})")


@main.command()
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@click.option("--force", is_flag=True, help="Apply every seed file, changed or not.")
@click.option(
    "--prune", is_flag=True, help="Delete rows whose key is not in the CSV (destructive)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@_confirm_option
@tenant_options("seed", _run)
@click.pass_context
def seed(
    ctx: click.Context, dry_run: bool, force: bool, prune: bool, as_json: bool, confirm: str | None
) -> None:
    """Apply changed seed files (reference data) under the migration lock."""
    run = _run(
        lambda: migrate_lock.seed.seed(
            settings=_settings(ctx, confirm_destructive=confirm),
            force=force,
            prune=prune,
            dry_run=dry_run,
        )
    )
    if as_json:
        _print_json(run.as_dict())
        return
    verb = "would apply" if run.dry_run else "applied"
    for result in run.results:
        if result.action == "skipped":
            click.echo(f"{result.name}: unchanged, skipped")
            continue
        click.echo(
            f"{result.name}: {verb}: {result.inserted} inserted, {result.updated} updated, "
            f"{result.unchanged} unchanged, {result.deleted} deleted"
        )


@main.command()
@click.argument("path", type=click.Path(path_type=Path), default=".")
def init(path: Path) -> None:
    """Scaffold alembic.ini and migrations/ (env.py ready for migrate-lock) in PATH."""
    for written in _run(lambda: migrate_lock.init_project(path)):
        click.echo(f"wrote {written}")


@main.command()
@click.option("--replicas", type=click.IntRange(1, 64), default=8, show_default=True)
def demo(replicas: int) -> None:
    """Start N replicas at once on an embedded PostgreSQL and show that one migrates."""
    document = sys.stdout  # the demo prints its table as it goes
    report = _run(lambda: migrate_lock.run_demo(replicas=replicas, out=document))
    sys.exit(0 if report.exactly_once else int(ExitCode.MIGRATION_FAILED))


# --- CI: smoke checks, lint, plan (docs/ci.md) -------------------------------------------


@main.command()
@click.option(
    "--database-url",
    "server_url",
    metavar="URL",
    help="Server to create scratch databases on (URL's database is untouched).",
)
@click.option("--replicas", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--skip", multiple=True, metavar="CHECK", help="Leave out a check (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option(
    "--junit",
    "junit_file",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the report as JUnit XML (one test case per check).",
)
@click.pass_context
def smoke(
    ctx: click.Context,
    server_url: str | None,
    replicas: int,
    skip: tuple[str, ...],
    as_json: bool,
    junit_file: Path | None,
) -> None:
    """CI checks on a scratch database (embedded PostgreSQL without a URL). Exit 1 if any fails."""
    from migrate_lock.checks.junit import write_junit  # noqa: PLC0415 - this verb only

    report = _run(
        lambda: migrate_lock.smoke(
            settings=_settings(ctx, migration_database_url=server_url),
            replicas=replicas,
            skip=skip,
        )
    )
    if junit_file is not None:
        _run(lambda: write_junit(junit_file, "migrate-lock smoke", report.junit_cases()))
    if as_json:
        _print_json(report.as_dict())
    else:
        click.echo(f"smoke on {report.server}")
        for check in report.checks:
            click.echo(f"{check.outcome.upper():<7} {check.name}: {check.summary}")
            for line in check.context:
                click.echo(f"          {line}")
        verdict = "all checks passed" if report.ok else f"FAILED: {', '.join(report.failed)}"
        click.echo(verdict)
    if report.environment is not None:  # the server's fault, not the project's: its own code
        _fail(str(report.environment), report.environment.exit_code)
    sys.exit(report.exit_code)


@main.command()
@click.argument("arguments", nargs=-1, metavar="[START:END | FILE...]")
@click.option("--since", metavar="REV", help="Lint the revisions after REV.")
@click.option(
    "--git-base",
    metavar="REF",
    help="Lint the revision files changed against git REF (e.g. origin/main).",
)
@click.option(
    "--files", "as_files", is_flag=True, help="The arguments are files (pre-commit's list)."
)
@click.option(
    "--fail-on",
    type=click.Choice(choices("lint_fail_on"), case_sensitive=False),
    help="Lowest finding level that fails [env LINT_FAIL_ON; default error].",
)
@click.option("--junit", type=click.Path(path_type=Path), help="Also write a JUnit XML report.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON on stdout.")
@click.pass_context
def lint(
    ctx: click.Context,
    arguments: tuple[str, ...],
    since: str | None,
    git_base: str | None,
    as_files: bool,
    fail_on: str | None,
    junit: Path | None,
    as_json: bool,
) -> None:
    """Check revisions' SQL with Squawk (offline). Exit 1 on findings at --fail-on or above.

    By default only what is new: the revisions pending against the database when a
    database URL is set, else every revision (docs/ci.md).
    """
    if not as_files and len(arguments) > 1:
        raise click.UsageError("give one START:END range, or --files FILE...")
    rev_range = arguments[0] if arguments and not as_files else None
    files = list(arguments) if as_files else None
    report = _run(
        lambda: migrate_lock.lint(
            rev_range,
            since=since,
            git_base=git_base,
            files=files,
            settings=_settings(ctx, lint_fail_on=fail_on),
        )
    )
    if junit is not None:
        _run(lambda: report.write_junit(junit))
    annotations = report.annotations() if os.environ.get("GITHUB_ACTIONS") == "true" else []
    if as_json:
        _print_json(report.as_dict())
        for line in annotations:  # the runner reads workflow commands on stderr too
            click.echo(line, err=True)
    else:
        for finding in report.findings:
            click.echo(finding.describe())
        for line in annotations:
            click.echo(line)
        new_tables = len(report.on_new_tables)
        click.echo(
            f"{len(report.revisions)} revisions, {len(report.findings)} findings, "
            f"{len(report.failing)} at {report.fail_on} or above"
            + (f"; {new_tables} on tables new in this run not counted" if new_tables else "")
            + (f" (excluded: {', '.join(report.excluded)})" if report.excluded else "")
        )
    sys.exit(0 if report.ok else int(ExitCode.MIGRATION_FAILED))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON on stdout.")
@click.option("--no-sql", is_flag=True, help="Leave out each revision's SQL.")
@tenant_options("plan", _run)
@click.pass_context
def plan(ctx: click.Context, as_json: bool, no_sql: bool) -> None:
    """What `upgrade` would do now: pending revisions, their SQL and risks. Changes nothing."""
    result = _run(lambda: migrate_lock.plan(settings=_settings(ctx), sql=not no_sql))
    if as_json:
        _print_json(result.as_dict())
        return
    click.echo(f"database: {result.database} ({result.status})")
    click.echo(f"current:  {', '.join(result.current) or '(none)'}")
    click.echo(f"heads:    {', '.join(result.heads)}")
    click.echo("timeouts: " + ", ".join(f"{k}={v}" for k, v in result.timeouts.items()))
    if not result.pending and not result.seeds:
        click.echo("nothing to do")
    for revision in result.pending:
        flags = [
            k
            for k, on in (
                ("DESTRUCTIVE", revision.destructive),
                ("LOCK-HEAVY", revision.lock_heavy),
            )
            if on
        ]
        click.echo(f"\n== {revision.revision} {revision.doc} {' '.join(flags)}".rstrip())
        for finding in revision.findings:
            click.echo(f"   ! {finding.describe()}")
        if revision.on_new_tables:
            click.echo(
                f"   ({len(revision.on_new_tables)} findings on tables new in this run, "
                "not flagged: they hold no data and no one waits on their locks)"
            )
        if not no_sql:
            click.echo(revision.sql.rstrip())
    if result.seeds:
        click.echo(f"\nseeds to apply: {', '.join(result.seeds)}")


# --- guardrails: destructive verbs, the environment marker, backup and restore ----------


# ignore_unknown_options: `downgrade -1` is a relative revision, not an option.
@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("revision")
@_confirm_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def downgrade(ctx: click.Context, revision: str, confirm: str | None, as_json: bool) -> None:
    """Downgrade to REVISION (a revision, -N or base) under the lock. Destructive."""
    result = _run(
        lambda: migrate_lock.downgrade(
            revision, settings=_settings(ctx, confirm_destructive=confirm)
        )
    )
    _report_destructive(result, as_json)


@main.command()
@click.argument("revision")
@_confirm_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def stamp(ctx: click.Context, revision: str, confirm: str | None, as_json: bool) -> None:
    """Set the version table to REVISION without running revisions. Destructive."""
    result = _run(
        lambda: migrate_lock.stamp(revision, settings=_settings(ctx, confirm_destructive=confirm))
    )
    _report_destructive(result, as_json)


@main.command("init-db")
@click.option(
    "--metadata",
    "metadata",
    required=True,
    metavar="MODULE:ATTR",
    help="Your models' MetaData or declarative base, e.g. myapp.models:Base.metadata.",
)
@_confirm_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def init_db(ctx: click.Context, metadata: str, confirm: str | None, as_json: bool) -> None:
    """Brand-new database: create_all from your models, then stamp the heads. Destructive."""
    result = _run(
        lambda: migrate_lock.init_db(metadata, settings=_settings(ctx, confirm_destructive=confirm))
    )
    _report_destructive(result, as_json)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def reset(ctx: click.Context, as_json: bool) -> None:
    """Drop everything in the version table's schema and upgrade again (development/test)."""
    _report_destructive(_run(lambda: migrate_lock.reset(settings=_settings(ctx))), as_json)


def _report_destructive(result: Any, as_json: bool) -> None:
    if as_json:
        _print_json(result.as_dict())
        return
    before = ", ".join(result.from_revisions) or "(none)"
    after = ", ".join(result.to_revisions) or "(none)"
    extra = ""
    if result.operation == "init-db":
        extra = f", {result.created_tables} tables created"
    elif result.operation == "reset":
        extra = f", {result.dropped_objects} objects dropped"
    click.echo(
        f"{result.operation} {result.database} ({result.environment}): {before} -> {after}, "
        f"{len(result.steps)} steps{extra}"
    )


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="[env BACKUP_DIR]")
@click.option("--keep-days", type=click.FloatRange(min=0), help="[env BACKUP_KEEP_DAYS; 7]")
@click.option("--keep-last", type=click.IntRange(min=1), help="[env BACKUP_KEEP_LAST; 3]")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def backup(
    ctx: click.Context,
    directory: Path | None,
    keep_days: float | None,
    keep_last: int | None,
    as_json: bool,
) -> None:
    """pg_dump (custom format) to a verified file in --dir, then delete old backups."""
    result = _run(
        lambda: migrate_lock.backup(
            settings=_settings(ctx), directory=directory, keep_days=keep_days, keep_last=keep_last
        )
    )
    if as_json:
        _print_json(result.as_dict())
        return
    click.echo(f"wrote {result.path} ({result.size_bytes} bytes, verified)")
    for name in result.pruned:
        click.echo(f"deleted {name}")


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@_confirm_option
@click.option("--keep-previous", is_flag=True, help="Rename the replaced database aside.")
@click.option("--no-owner", is_flag=True, help="pg_restore --no-owner.")
@click.option("--no-privileges", is_flag=True, help="pg_restore --no-privileges.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def restore(
    ctx: click.Context,
    file: Path,
    confirm: str | None,
    keep_previous: bool,
    no_owner: bool,
    no_privileges: bool,
    as_json: bool,
) -> None:
    """Replace the database with FILE, verified in a scratch database first. Destructive."""
    result = _run(
        lambda: migrate_lock.restore(
            file,
            settings=_settings(ctx, confirm_destructive=confirm),
            keep_previous=keep_previous,
            no_owner=no_owner,
            no_privileges=no_privileges,
        )
    )
    if as_json:
        _print_json(result.as_dict())
        return
    click.echo(
        f"restored {result.database} from {result.file}: revision "
        f"{', '.join(result.revisions)}, {result.tables} tables, {result.size_bytes} bytes"
        + (f"; the previous database is now {result.previous}" if result.previous else "")
    )


@main.group()
def env() -> None:
    """The environment the database is marked as (what the guardrails protect)."""


@env.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def env_show(ctx: click.Context, as_json: bool) -> None:
    """Print the database's marker, the local ENVIRONMENT and the verdict."""
    _report_environment(
        _run(lambda: migrate_lock.show_environment(settings=_settings(ctx))), as_json
    )


@env.command("set")
@click.argument("name", type=click.Choice(choices("environment"), case_sensitive=False))
@_confirm_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def env_set(ctx: click.Context, name: str, confirm: str | None, as_json: bool) -> None:
    """Mark the database as NAME. Lowering the protection is destructive."""
    result = _run(
        lambda: migrate_lock.set_environment(
            name, settings=_settings(ctx, confirm_destructive=confirm)
        )
    )
    _report_environment(result, as_json)


def _report_environment(result: Any, as_json: bool) -> None:
    data = result.as_dict()
    if as_json:
        _print_json(data)
        return
    click.echo(f"database:  {data['database']}")
    click.echo(f"marker:    {data['marker'] or '(none)'}")
    click.echo(f"local:     {data['local'] or '(ENVIRONMENT not set)'}")
    verdict = "protected" if data["protected"] else "not protected"
    click.echo(f"effective: {data['effective']} ({verdict})")
