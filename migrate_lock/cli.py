"""The ``migrate-lock`` command: flags in, a library call, an exit code out. No logic here."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from migrate_lock import __version__
from migrate_lock.errors import ExitCode, MigrateLockError
from migrate_lock.interrupts import Terminated, signals_raise
from migrate_lock.logs import log

if TYPE_CHECKING:
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
@click.option("--log-format", type=click.Choice(["auto", "json", "text"]), help="[env LOG_FORMAT]")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="[env LOG_LEVEL]",
)
@click.pass_context
def main(ctx: click.Context, /, **flags: Any) -> None:
    """Run Alembic migrations exactly once from any number of replicas."""
    ctx.obj = flags


def _settings(ctx: click.Context, **more: Any) -> Settings:
    # Imported here: pydantic costs more than the whole at-head fast path.
    from migrate_lock.settings import load_settings

    flags = dict(ctx.obj)
    if flags.get("database_url"):
        # The flag names the one database to use: it beats MIGRATION_DATABASE_URL too.
        more["migration_database_url"] = flags["database_url"]
    settings = load_settings(**flags, **more)
    log.configure(log_format=settings.log_format, level=settings.log_level)
    return settings


def _run(action: Callable[[], T]) -> T:
    """Call the library; turn its failures into one line and a documented exit code."""
    # Until settings are validated, honour the log settings as given, so that even a
    # settings error is reported in the format the operator asked for.
    flags = click.get_current_context().find_root().obj or {}
    log.configure(
        log_format=flags.get("log_format") or os.environ.get("LOG_FORMAT", "auto").lower(),
        level=flags.get("log_level") or os.environ.get("LOG_LEVEL", "INFO"),
    )
    try:
        with signals_raise():
            return action()
    except MigrateLockError as error:
        _fail(str(error), error.exit_code)
    except Terminated:
        _fail("interrupted by SIGTERM; anything open was rolled back", ExitCode.TERMINATED)
    except KeyboardInterrupt:
        _fail("interrupted by SIGINT; anything open was rolled back", ExitCode.INTERRUPTED)
    except Exception as error:  # noqa: BLE001 - the last line of defence: still one line
        log.debug("command.traceback", error=repr(error))
        _fail(
            f"unexpected {type(error).__name__}: {error}; this is a bug in migrate-lock, "
            "please report it (LOG_LEVEL=DEBUG shows more)",
            ExitCode.MIGRATION_FAILED,
        )


def _fail(message: str, code: ExitCode) -> NoReturn:
    if log.format == "json":
        log.error("command.failed", error=message, exit_code=int(code))
    else:
        line = " ".join(f"migrate-lock: error: {message} (exit {int(code)})".split())
        sys.stderr.write(log.scrub(line) + "\n")
    sys.exit(int(code))


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, default=str, indent=2))


@main.command()
@click.argument("revision", default="heads")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (no lock, no DB).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--lock-timeout", type=float, help="[env MIGRATION_LOCK_TIMEOUT_SECONDS]")
@click.pass_context
def upgrade(
    ctx: click.Context, revision: str, sql: bool, as_json: bool, lock_timeout: float | None
) -> None:
    """Upgrade to REVISION (default: heads) under the migration lock."""

    def action() -> None:
        handover = None
        if revision == "heads" and not sql:
            # Lean first: at head (or after waiting for another replica) nothing heavy loads.
            from migrate_lock.fastpath import Handover, fast_upgrade

            fast = fast_upgrade({**ctx.obj, "migration_lock_timeout_seconds": lock_timeout})
            if isinstance(fast, Handover):
                handover = fast
            elif fast is not None:
                if as_json:
                    _print_json(fast.as_dict())
                return
        try:
            from migrate_lock.migrate import upgrade as run_upgrade
            from migrate_lock.migrate import upgrade_sql

            settings = _settings(ctx, migration_lock_timeout_seconds=lock_timeout)
            if sql:
                upgrade_sql(revision, settings=settings)
                return
            result = run_upgrade(
                revision, settings=settings, handover=handover.release if handover else None
            )
            if as_json:
                _print_json(result.as_dict())
        finally:
            if handover is not None:
                handover.release()

    _run(action)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, command: tuple[str, ...]) -> None:
    """Migrate under the lock (unless MIGRATE_ON_START=false), then exec COMMAND.

    Use it as the container's entrypoint: migrate-lock run -- gunicorn app:app
    """
    from migrate_lock.entrypoint import run as run_entrypoint
    from migrate_lock.entrypoint import run_if_nothing_to_do

    def action() -> None:
        # Lean first: a start that finds nothing to migrate loads nothing heavy.
        handover = run_if_nothing_to_do(command, ctx.obj)
        run_entrypoint(command, settings=_settings(ctx), handover=handover)

    _run(action)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON on stdout.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Compare the database with the code: exit 0 at head/ahead, 4 pending, 5 unknown."""
    from migrate_lock.inspection import status as read_status

    result = _run(lambda: read_status(settings=_settings(ctx)))
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
@click.pass_context
def current(ctx: click.Context) -> None:
    """Print the revision(s) the database is at."""
    from migrate_lock.inspection import current as read_current

    revisions = _run(lambda: read_current(settings=_settings(ctx)))
    click.echo("\n".join(revisions) if revisions else "(none)")


@main.command()
@click.pass_context
def heads(ctx: click.Context) -> None:
    """Print the head revision(s) of the migration scripts."""
    from migrate_lock.inspection import heads as read_heads

    click.echo("\n".join(_run(lambda: read_heads(settings=_settings(ctx)))))


@main.command()
@click.pass_context
def history(ctx: click.Context) -> None:
    """List the revisions of the migration scripts, newest first."""
    from migrate_lock.inspection import history as read_history

    for info in _run(lambda: read_history(settings=_settings(ctx))):
        down = ", ".join(info.down_revisions) or "<base>"
        head = " (head)" if info.is_head else ""
        click.echo(f"{down} -> {info.revision}{head}, {info.doc}")


@main.command()
@click.pass_context
def freeze(ctx: click.Context) -> None:
    """Write the heads manifest (for the Dockerfile): replicas at head then skip Alembic."""
    from migrate_lock.manifest import freeze as write_manifest

    manifest = _run(lambda: write_manifest(settings=_settings(ctx)))
    click.echo(f"wrote {manifest.path} (heads: {', '.join(manifest.heads)})")


@main.command()
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@click.option("--force", is_flag=True, help="Apply every seed file, changed or not.")
@click.option(
    "--prune", is_flag=True, help="Delete rows whose key is not in the CSV (destructive)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_context
def seed(ctx: click.Context, dry_run: bool, force: bool, prune: bool, as_json: bool) -> None:
    """Apply changed seed files (reference data) under the migration lock."""
    from migrate_lock.seed import seed as run_seed

    run = _run(lambda: run_seed(settings=_settings(ctx), force=force, prune=prune, dry_run=dry_run))
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
    from migrate_lock.scaffold import init_project

    for written in _run(lambda: init_project(path)):
        click.echo(f"wrote {written}")


@main.command()
@click.option("--replicas", type=click.IntRange(1, 64), default=8, show_default=True)
def demo(replicas: int) -> None:
    """Start N replicas at once on an embedded PostgreSQL and show that one migrates."""
    from migrate_lock.demo import run_demo

    report = _run(lambda: run_demo(replicas=replicas))
    sys.exit(0 if report.exactly_once else int(ExitCode.MIGRATION_FAILED))
