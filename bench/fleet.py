"""Benchmark: ``upgrade --tenants`` against a hand-written Alembic loop, side by side.

    python bench/fleet.py [--tenants 1000] [--jobs 1,4,8] [--repeat 3] [--skip-loop]

Starts its own embedded PostgreSQL and a project from ``migrate-lock init`` (its env.py
unmodified) with 5 revisions of unqualified tables, then measures on fresh copies of one
database with TENANTS empty schemas (``CREATE DATABASE ... TEMPLATE``):

- all pending: ``migrate-lock upgrade --tenants schemas:tenant_%`` with --jobs 1, 4, 8
  (wall time of the whole command, tenants per second, the peak number of the
  database's connections, sampled from pg_stat_activity every 20 ms);
- the same with the loops a team writes by hand (what the issue compares with), each
  one process with Alembic loaded once, calling ``alembic.command.upgrade(config, "head")``
  once per schema: the *shared-connection loop* hands Alembic one pooled SQLAlchemy
  connection with the schema's search_path and ``version_table_schema`` (the faster of
  the two); the *recipe loop* follows Alembic's cookbook ("Rudimental Schema-Level Multi
  Tenancy for PostgreSQL Databases": its env.py opens a connection per command and sets
  the search_path from ``-x tenant=``);
- all at head: the fleet command (and the time its own JSON reports), and the loop.

migrate-lock runs as an installed package would: with .pyc files (this machine sets
PYTHONDONTWRITEBYTECODE=1; bench/installed.py's ``as_installed`` compiles the package and
unsets it for the children).
Prints a table and the targets, and writes bench/results/fleet.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from installed import as_installed

from migrate_lock.sandbox.embedded import EmbeddedPostgres
from migrate_lock.scaffold import init_project

REVISIONS = 5  # the baseline of `migrate-lock init` and four of tables
LOOP_PENDING = "loop, all pending"
LOOP4_PENDING = "loop in 4 processes, all pending"
RECIPE_PENDING = "recipe loop, all pending"

_REVISION = '''"""tables {n}"""

from alembic import op

revision = "{rev:04d}"
down_revision = "{down:04d}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE things_{n} (id serial PRIMARY KEY, name text NOT NULL)")
    op.execute("CREATE INDEX things_{n}_name ON things_{n} (name)")


def downgrade() -> None:
    op.execute("DROP TABLE things_{n}")
'''

#: The hand-written loop, run in its own process (Alembic loaded once, as in the fleet's
#: workers), on one connection shared by every schema (Alembic's "Sharing a Connection
#: across one or more programmatic migration commands" recipe): argv = alembic.ini, URL,
#: schema LIKE pattern. Prints seconds and tenants.
LOOP = r"""
import sys, time
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

ini, url, pattern, part, parts = sys.argv[1:6]
config = Config(ini)
config.attributes["configure_logger"] = False
engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
started = time.perf_counter()
with engine.connect() as connection:
    schemas = [row[0] for row in connection.execute(
        text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p ORDER BY 1"), {"p": pattern})]
    connection.commit()
schemas = schemas[int(part)::int(parts)]
for schema in schemas:
    with engine.connect() as connection:
        connection.execute(text(f'SET search_path TO "{schema}", public'))
        connection.commit()
        config.attributes["connection"] = connection
        config.attributes["version_table_schema"] = schema
        command.upgrade(config, "head")
        connection.commit()
print(time.perf_counter() - started, len(schemas))
"""

#: The env.py of Alembic's cookbook recipe "Rudimental Schema-Level Multi Tenancy for
#: PostgreSQL Databases": a NullPool engine per command, the tenant from ``-x tenant=``,
#: its search_path set (so the unqualified version table lives in the tenant's schema).
RECIPE_ENV = """from alembic import context
from sqlalchemy import engine_from_config, pool, text

config = context.config


def run_migrations_online():
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    current_tenant = context.get_x_argument(as_dictionary=True).get("tenant")
    with connectable.connect() as connection:
        connection.execute(text('set search_path to "%s"' % current_tenant))
        connection.commit()
        connection.dialect.default_schema_name = current_tenant
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""

#: The loop around that recipe, in-process (the recipe itself runs the alembic command
#: line once per tenant): ``command.upgrade`` with ``-x tenant=SCHEMA``, once per schema.
RECIPE_LOOP = r"""
import argparse, sys, time
import psycopg
from alembic import command
from alembic.config import Config

ini, url, pattern, part, parts = sys.argv[1:6]
config = Config(ini)
config.attributes["configure_logger"] = False
config.set_main_option("sqlalchemy.url", url.replace("postgresql://", "postgresql+psycopg://", 1))
started = time.perf_counter()
with psycopg.connect(url) as connection:
    schemas = [row[0] for row in connection.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s ORDER BY 1", (pattern,))]
schemas = schemas[int(part)::int(parts)]
for schema in schemas:
    config.cmd_opts = argparse.Namespace(x=[f"tenant={schema}"])
    command.upgrade(config, "head")
print(time.perf_counter() - started, len(schemas))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--jobs", default="1,4,8")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the pending runs")
    args = parser.parse_args()
    jobs = [int(item) for item in args.jobs.split(",")]
    as_installed()
    env = dict(os.environ) | {"ENVIRONMENT": "test", "LOG_FORMAT": "json", "LOG_LEVEL": "WARNING"}
    server = EmbeddedPostgres(password="bench-fleet-pw")
    server.start()
    results: dict[str, Any] = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "tenants": args.tenants,
        "revisions": REVISIONS,
    }
    try:
        with tempfile.TemporaryDirectory() as work:
            project = make_project(Path(work) / "project")
            template = make_template(server, args.tenants)
            recipe = make_recipe_project(project, Path(work) / "recipe")
            runs: list[dict[str, Any]] = []
            # Rounds side by side: a machine's load moves, and each round measures every
            # contender under about the same load; the report takes medians.
            for round_ in range(args.repeat):

                def measured(what: str, timed: tuple[float, int], at: int = round_) -> None:
                    runs.append(
                        {"what": what, "seconds": timed[0], "tenants": timed[1], "round": at}
                    )

                if not args.skip_loop:
                    url = copy(server, template, f"loop_{round_}")
                    measured(LOOP_PENDING, loop(LOOP, project, url, env))
                    if round_ == 0:
                        measured("loop, all at head", loop(LOOP, project, url, env))
                    url = copy(server, template, f"recipe_{round_}")
                    measured(RECIPE_PENDING, loop(RECIPE_LOOP, recipe, url, env))
                    # What 4 jobs could get from Alembic alone: no lock, no checks.
                    url = copy(server, template, f"loop4_{round_}")
                    measured(LOOP4_PENDING, loop(LOOP, project, url, env, processes=4))
                for job_count in jobs:
                    url = copy(server, template, f"jobs{job_count}_{round_}")
                    runs.append(
                        fleet(project, url, env, job_count, "all pending") | {"round": round_}
                    )
                    if job_count == jobs[-1] and round_ == 0:
                        runs.append(
                            fleet(project, url, env, job_count, "all at head") | {"round": 0}
                        )
            results["runs"] = runs
    finally:
        server.stop()
    report(results)


def make_project(path: Path) -> Path:
    init_project(path)
    for n in range(2, REVISIONS + 1):
        text = _REVISION.format(n=n, rev=n, down=n - 1)
        (path / "migrations" / "versions" / f"{n:04d}_things.py").write_text(text)
    return path


def make_recipe_project(project: Path, path: Path) -> Path:
    """The same revisions, with the cookbook recipe's env.py."""
    shutil.copytree(project, path, ignore=shutil.ignore_patterns("__pycache__"))
    (path / "migrations" / "env.py").write_text(RECIPE_ENV)
    return path


def make_template(server: EmbeddedPostgres, tenants: int) -> str:
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute("CREATE DATABASE fleet_template")
    with psycopg.connect(server.url("fleet_template"), autocommit=True) as connection:
        connection.execute(
            f"DO $$ BEGIN FOR i IN 1..{tenants} LOOP EXECUTE format('CREATE SCHEMA tenant_%s',"
            " lpad(i::text, 4, '0')); END LOOP; END $$"
        )
    return "fleet_template"


def copy(server: EmbeddedPostgres, template: str, name: str) -> str:
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return server.url(name)


def loop(
    code: str, project: Path, url: str, env: dict[str, str], processes: int = 1
) -> tuple[float, int]:
    """Run the loop ``code`` in ``processes`` processes at once, each on its share of the
    schemas; the wall time until the last ends, and the schemas done."""
    started = time.perf_counter()
    running = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(project / "alembic.ini"), url, "tenant_%", *share],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for share in ((str(part), str(processes)) for part in range(processes))
    ]
    outputs = [process.communicate()[0] for process in running]
    total = time.perf_counter() - started
    if any(process.returncode for process in running):
        raise SystemExit("a loop failed")
    return total, sum(int(output.split()[1]) for output in outputs)


class Sampler(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.most = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as connection:
            while not self.stop.is_set():
                row = connection.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                ).fetchone()
                self.most = max(self.most, int(row[0]) if row else 0)
                time.sleep(0.02)


def fleet(project: Path, url: str, env: dict[str, str], jobs: int, what: str) -> dict[str, Any]:
    sampler = Sampler(url)
    sampler.start()
    started = time.perf_counter()
    command = [sys.executable, "-m", "migrate_lock", "upgrade", "--tenants", "schemas:tenant_%"]
    done = subprocess.run(
        [*command, "--jobs", str(jobs), "--json"],
        cwd=project,
        env=env | {"DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )
    total = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    if done.returncode != 0:
        raise SystemExit(f"the fleet failed ({done.returncode}): {done.stderr[-2000:]}")
    document = json.loads(done.stdout)
    return {
        "what": f"migrate-lock --jobs {jobs}, {what}",
        "seconds": total,
        "fleet_seconds": document["seconds"],
        "tenants": len(document["tenants"]),
        "counts": document["counts"],
        "connections": sampler.most,
        "jobs": jobs,
    }


def report(results: dict[str, Any]) -> None:
    runs = results["runs"]
    print(f"{results['machine']}; {results['tenants']} schemas x {results['revisions']} revisions")
    print(
        f"{'run (median of its rounds)':<44} {'seconds':>8} {'tenants/s':>10} {'conns':>6} rounds"
    )
    by: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by.setdefault(run["what"], []).append(run)
    medians = {
        what: statistics.median(run["seconds"] for run in group) for what, group in by.items()
    }
    for what, group in by.items():
        seconds = medians[what]
        rate = group[0]["tenants"] / seconds if seconds else 0.0
        conns = max((run["connections"] for run in group if "connections" in run), default="")
        each = " ".join(f"{run['seconds']:.1f}" for run in group)
        print(f"{what:<44} {seconds:>8.2f} {rate:>10.1f} {conns!s:>6} {each}")
    targets = []
    for run in runs:
        if run["what"].endswith("all at head") and "jobs" in run:
            targets.append(f"all at head: {run['seconds']:.2f}s (target <= 1 s)")
    jobs4 = "migrate-lock --jobs 4, all pending"
    for baseline, name in (
        (LOOP_PENDING, "the loop on one shared connection"),
        (RECIPE_PENDING, "the loop around Alembic's multi-tenancy recipe"),
    ):
        if baseline in by and jobs4 in by:
            rounds = [
                loop_run["seconds"] / fleet_run["seconds"]
                for loop_run, fleet_run in zip(by[baseline], by[jobs4], strict=True)
            ]
            each = ", ".join(f"{ratio:.2f}" for ratio in rounds)
            targets.append(
                f"all pending, --jobs 4 vs {name}: {statistics.median(rounds):.2f}x"
                f" (rounds: {each}; target >= 2x)"
            )
    for what, group in by.items():
        if "jobs" in group[0]:
            most, allowed = max(run["connections"] for run in group), group[0]["jobs"] + 1
            targets.append(
                f"{what}: at most {most} connections (target <= {allowed}"
                f"{'' if most <= allowed else ', MISSED'})"
            )
    print("\n".join(targets))
    results["targets"] = targets
    out = Path(__file__).parent / "results" / "fleet.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
