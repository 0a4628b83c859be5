"""Benchmark: ``upgrade --tenants`` against a hand-written Alembic loop, side by side.

    python bench/fleet.py [--tenants 1000] [--jobs 1,4,8] [--skip-loop]

Starts its own embedded PostgreSQL and a project from ``migrate-lock init`` (its env.py
unmodified) with 5 revisions of unqualified tables, then measures on fresh copies of one
database with TENANTS empty schemas (``CREATE DATABASE ... TEMPLATE``):

- all pending: ``migrate-lock upgrade --tenants schemas:tenant_%`` with --jobs 1, 4, 8
  (wall time of the whole command, tenants per second, the peak number of the
  database's connections, sampled from pg_stat_activity every 20 ms);
- the same with the loop a team writes by hand (what the issue compares with): one
  process, Alembic loaded once, ``alembic.command.upgrade(config, "head")`` once per
  schema with ``version_table_schema`` and the search_path set for the schema, on one
  pooled SQLAlchemy connection;
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
#: workers): argv = alembic.ini, URL, schema LIKE pattern. Prints seconds and tenants.
LOOP = r"""
import sys, time
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

ini, url, pattern = sys.argv[1:4]
config = Config(ini)
config.attributes["configure_logger"] = False
engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
started = time.perf_counter()
with engine.connect() as connection:
    schemas = [row[0] for row in connection.execute(
        text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p ORDER BY 1"), {"p": pattern})]
    connection.commit()
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--jobs", default="1,4,8")
    parser.add_argument("--skip-loop", action="store_true")
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
            runs: list[dict[str, Any]] = []
            if not args.skip_loop:
                url = copy(server, template, "loop")
                seconds, count = loop(project, url, env)
                runs.append({"what": "loop, all pending", "seconds": seconds, "tenants": count})
                seconds, count = loop(project, url, env)
                runs.append({"what": "loop, all at head", "seconds": seconds, "tenants": count})
            for job_count in jobs:
                url = copy(server, template, f"jobs{job_count}")
                runs.append(fleet(project, url, env, job_count, "all pending"))
                if job_count == jobs[-1]:
                    runs.append(fleet(project, url, env, job_count, "all at head"))
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


def loop(project: Path, url: str, env: dict[str, str]) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", LOOP, str(project / "alembic.ini"), url, "tenant_%"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    total = time.perf_counter() - started
    _, count = done.stdout.split()
    return total, int(count)


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
    print(f"{'run':<44} {'seconds':>8} {'tenants/s':>10} {'conns':>6}")
    for run in runs:
        rate = run["tenants"] / run["seconds"] if run["seconds"] else 0.0
        conns = run.get("connections", "")
        print(f"{run['what']:<44} {run['seconds']:>8.2f} {rate:>10.1f} {conns!s:>6}")
    by = {run["what"]: run for run in runs}
    loop_pending = by.get("loop, all pending")
    targets = []
    at_head = [run for run in runs if run["what"].endswith("all at head") and "jobs" in run]
    for run in at_head:
        targets.append(f"all at head: {run['seconds']:.2f}s (target <= 1 s)")
    jobs4 = by.get("migrate-lock --jobs 4, all pending")
    if loop_pending and jobs4:
        ratio = loop_pending["seconds"] / jobs4["seconds"]
        targets.append(f"all pending, --jobs 4 vs the loop: {ratio:.2f}x (target >= 2x)")
    for run in runs:
        if "jobs" in run:
            ok = run["connections"] <= run["jobs"] + 1
            targets.append(
                f"{run['what']}: {run['connections']} connections (target <= {run['jobs'] + 1}"
                f"{'' if ok else ', MISSED'})"
            )
    print("\n".join(targets))
    results["targets"] = targets
    out = Path(__file__).parent / "results" / "fleet.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
