"""``--tenants`` and its options on ``upgrade``, ``status``, ``current``, ``plan``, ``seed``.

``cli.py`` adds them with one line per command (``@tenant_options("upgrade", _run)``):
without ``--tenants`` the command runs as before; with it, the fleet version runs
instead, through the same ``_run`` (one line and an exit code for a failure that stops
the whole fleet). Only flags here; the logic is the fleet package's.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from migrate_lock.errors import ExitCode, UsageError
from migrate_lock.logs import log

T = TypeVar("T")
Runner = Callable[[Callable[[], Any]], Any]

#: The options each verb takes with --tenants (beyond --tenants and --shard).
_RUNS = ("upgrade", "seed")


def tenant_options(verb: str, run: Runner) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Add ``--tenants SOURCE`` and ``--shard INDEX/COUNT`` (and, on ``upgrade`` and
    ``seed``, ``--jobs N``, ``--fail-fast``, ``--skip-locked``) to the command ``verb``.
    ``run`` is cli.py's ``_run``."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def wrapper(**params: Any) -> None:
            tenants = params.pop("tenants")
            fleet_flags: dict[str, Any] = {
                name: params.pop(name)
                for name in ("shard", "jobs", "fail_fast", "skip_locked")
                if name in params
            }
            if tenants is None:
                given = [
                    "--" + name.replace("_", "-")
                    for name, value in fleet_flags.items()
                    if value not in (None, False)
                ]
                if given:
                    raise click.UsageError(f"{', '.join(given)} needs --tenants SOURCE")
                command(**params)
                return
            _fleet(verb, run, tenants, fleet_flags, params)

        options = [
            click.option(
                "--tenants",
                metavar="SOURCE",
                help="Every tenant of SOURCE: schemas:PATTERN, query:SQL, databases:PATTERN "
                "or databases:@FILE (docs/tenants.md).",
            ),
            click.option(
                "--shard",
                metavar="INDEX/COUNT",
                help="With --tenants: this share of them (/COUNT: INDEX from "
                "JOB_COMPLETION_INDEX).",
            ),
        ]
        if verb in _RUNS:
            options += [
                click.option(
                    "--jobs",
                    type=click.IntRange(1, 256),
                    metavar="N",
                    help="With --tenants: tenants at a time, one worker process each [default 4].",
                ),
                click.option(
                    "--fail-fast",
                    is_flag=True,
                    default=False,
                    help="With --tenants: start no tenant after one failed.",
                ),
                click.option(
                    "--skip-locked",
                    is_flag=True,
                    default=False,
                    help="With --tenants: report a tenant whose lock is held, do not wait.",
                ),
            ]
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


def _overrides(**more: Any) -> dict[str, Any]:
    root = click.get_current_context().find_root().obj or {}
    return {**root, **more}


def _refuse(params: dict[str, Any], verb: str, **flags: str) -> None:
    for name, flag in flags.items():
        if params.get(name) not in (None, False, "heads"):
            raise UsageError(
                f"{verb} --tenants does not take {flag}",
                hint="see docs/tenants.md for what a fleet runs",
            )


def _fleet(
    verb: str, run: Runner, tenants: str, flags: dict[str, Any], params: dict[str, Any]
) -> None:
    from migrate_lock.fleet import report  # noqa: PLC0415 - only with --tenants
    from migrate_lock.fleet import run as fleet  # noqa: PLC0415 - as above

    as_json = bool(params.get("as_json"))
    shard = flags.get("shard")
    if verb in _RUNS:
        common: dict[str, Any] = {
            "jobs": flags.get("jobs") or 4,
            "fail_fast": flags.get("fail_fast", False),
            "skip_locked": flags.get("skip_locked", False),
            "shard": shard,
        }
        if verb == "upgrade":

            def upgrade() -> report.FleetResult:
                _refuse(
                    params,
                    "upgrade",
                    revision="a REVISION (a fleet goes to the heads)",
                    sql="--sql",
                    backup_first="--backup-first",
                    then="--then",
                    then_always="--then-always",
                )
                overrides = _overrides(migration_lock_timeout_seconds=params.get("lock_timeout"))
                return fleet.upgrade_fleet(tenants, overrides=overrides, **common)

            result = run(upgrade)
        else:

            def seed() -> report.FleetResult:
                _refuse(params, "seed", dry_run="--dry-run")
                overrides = _overrides(confirm_destructive=params.get("confirm"))
                return fleet.seed_fleet(
                    tenants,
                    overrides=overrides,
                    force=bool(params.get("force")),
                    prune=bool(params.get("prune")),
                    **common,
                )

            result = run(seed)
        _finish(result, as_json)
    plan = run(lambda: fleet.fleet_plan(tenants, shard=shard, overrides=_overrides()))
    if as_json:
        click.echo(_json(plan.as_dict()))
    elif verb == "current":
        for state in plan.tenants:
            shown = ", ".join(state.current or ()) or "(none)"
            click.echo(f"{state.tenant.name}: {shown}")
    else:
        _print_plan(plan, verb)
    if verb == "current":
        sys.exit(0)
    sys.exit(int(ExitCode.OK if len(plan.at_head) == len(plan.tenants) else ExitCode.PENDING))


def _json(document: dict[str, Any]) -> str:
    """``document`` indented by its keys, each item of a list on one line of its own:
    for thousands of tenants, json's indenting encoder (pure Python) cost ~0.25 s, the
    compact one (in C) a tenth of it."""
    fields = []
    for key, value in document.items():
        if isinstance(value, list) and value:
            items = ",\n    ".join(json.dumps(item, default=str) for item in value)
            text = "[\n    " + items + "\n  ]"
        else:
            text = json.dumps(value, default=str)
        fields.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(fields) + "\n}"


def _print_plan(plan: Any, verb: str) -> None:
    total = len(plan.tenants)
    click.echo(f"tenants: {total}, at head: {len(plan.at_head)}, heads: {', '.join(plan.heads)}")
    click.echo("")
    click.echo(f"{'revision':<40} {'tenants':>8}")
    for revision, count in plan.by_revision().items():
        click.echo(f"{revision:<40} {count:>8}")
    behind = [state for state in plan.tenants if state.status != "at_head"]
    if behind:
        click.echo("")
        label = "to migrate" if verb == "plan" else "not at head"
        click.echo(f"{label}: {len(behind)}")
        for state in behind[:50]:
            where = ", ".join(state.current or ()) or "(none)"
            extra = f" ({state.detail})" if state.detail else ""
            click.echo(f"  {state.tenant.name}: {state.status} at {where}{extra}")
        if len(behind) > 50:
            click.echo(f"  ... and {len(behind) - 50} more (--json lists them all)")


def _finish(result: Any, as_json: bool) -> NoReturn:
    from migrate_lock.fleet.report import summary_table  # noqa: PLC0415 - with --tenants

    if as_json:
        click.echo(_json(result.as_dict()))
    else:
        click.echo(summary_table(result))
    code = result.exit_code
    if code != ExitCode.OK:
        problems = result.failed or result.locked
        first = problems[0] if problems else None
        what = "failed" if result.failed else "were skipped: their lock was held"
        count = len(result.failed) if result.failed else len(result.locked)
        message = f"{count} of {len(result.tenants)} tenants {what}" + (
            f" (first: {first.tenant}: {first.error})" if first else ""
        )
        message += "; run it again when fixed: tenants at head are skipped"
        if log.format == "json":
            log.error("command.failed", error=message, exit_code=int(code))
        else:
            line = " ".join(f"migrate-lock: error: {message} (exit {int(code)})".split())
            sys.stderr.write(log.scrub(line) + "\n")
    sys.exit(int(code))
