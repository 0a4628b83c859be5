"""``demo``: N real replicas start at once on an embedded PostgreSQL; one migrates.

Everything is real: a PostgreSQL server from the ``embedded`` extra, an example
project on disk, and N ``migrate-lock upgrade`` processes launched together. The
demo prints who migrated, who waited and for how long, and checks exactly-once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import psycopg

from migrate_lock.sandbox.embedded import EmbeddedPostgres
from migrate_lock.sandbox.example import applied_counts, write_example_project


@dataclass(frozen=True)
class ReplicaRun:
    """One replica process of the demo."""

    replica: int
    pid: int
    exit_code: int
    role: str
    wait_ms: int | None
    total_ms: int
    error: str | None


@dataclass(frozen=True)
class DemoReport:
    """What the demo saw; ``exactly_once`` is the verdict."""

    replicas: list[ReplicaRun]
    revisions: int
    applied_counts: dict[str, int]
    at_head: bool

    @property
    def exactly_once(self) -> bool:
        return (
            self.at_head
            and all(run.exit_code == 0 for run in self.replicas)
            and len(self.applied_counts) == self.revisions - 1
            and all(count == 1 for count in self.applied_counts.values())
        )


def run_demo(
    *, replicas: int = 8, revisions: int = 8, slow_seconds: float = 1.0, out: TextIO | None = None
) -> DemoReport:
    """Run the demo and print its table to ``out`` (stdout by default)."""
    out = out or sys.stdout
    with tempfile.TemporaryDirectory(prefix="migrate-lock-demo-") as workdir:
        project = Path(workdir) / "project"
        ids = write_example_project(
            project, revisions, slow_revision=revisions // 2, slow_seconds=slow_seconds
        )
        # As a Dockerfile would: freeze the heads so replicas at head skip Alembic.
        subprocess.run(
            [sys.executable, "-m", "migrate_lock", "freeze"],
            cwd=project,
            env={
                **os.environ,
                "ALEMBIC_CONFIG": str(project / "alembic.ini"),
                "LOG_LEVEL": "ERROR",
            },
            check=True,
            capture_output=True,
        )
        out.write(
            f"Starting an embedded PostgreSQL and {replicas} replicas "
            f"({len(ids)} revisions, one of them slow)…\n"
        )
        with EmbeddedPostgres() as server:
            url = server.url()
            runs = _start_replicas(replicas, project, url)
            with psycopg.connect(url) as connection:
                counts = applied_counts(connection)
                row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        report = DemoReport(
            replicas=runs,
            revisions=len(ids),
            applied_counts=counts,
            at_head=bool(row and row[0] == ids[-1]),
        )
    _print_table(report, out)
    return report


def _start_replicas(count: int, project: Path, url: str) -> list[ReplicaRun]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "MIGRATE_LOCK_ENVIRONMENT": "development",
        "LOG_FORMAT": "json",
        "ALEMBIC_CONFIG": str(project / "alembic.ini"),
    }
    command = [sys.executable, "-m", "migrate_lock", "upgrade", "--json"]
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            command,
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]

    def finish(number: int, process: subprocess.Popen[str]) -> ReplicaRun:
        stdout, stderr = process.communicate(timeout=300)
        total_ms = round((time.monotonic() - started) * 1000)
        return _replica_run(number, process, stdout, stderr, total_ms)

    # One waiting thread per replica, so each one's total is its own exit time.
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(finish, n, p) for n, p in enumerate(processes, start=1)]
        return [future.result() for future in futures]


def _replica_run(
    number: int, process: subprocess.Popen[str], stdout: str, stderr: str, total_ms: int
) -> ReplicaRun:
    try:
        result = json.loads(stdout)
    except json.JSONDecodeError:
        lines = stderr.strip().splitlines()
        return ReplicaRun(
            number,
            process.pid,
            process.returncode,
            "failed",
            None,
            total_ms,
            lines[-1] if lines else "no output",
        )
    return ReplicaRun(
        number,
        process.pid,
        process.returncode,
        str(result["role"]),
        int(result["wait_ms"]),
        total_ms,
        None,
    )


def _print_table(report: DemoReport, out: TextIO) -> None:
    out.write(
        f"\n{'replica':>7}  {'pid':>7}  {'exit':>4}  {'role':<10}  "
        f"{'wait ms':>7}  {'total ms':>8}\n"
    )
    for run in report.replicas:
        wait = "-" if run.wait_ms is None else str(run.wait_ms)
        out.write(
            f"{run.replica:>7}  {run.pid:>7}  {run.exit_code:>4}  {run.role:<10}  "
            f"{wait:>7}  {run.total_ms:>8}\n"
        )
        if run.error:
            out.write(f"         error: {run.error}\n")
    roles = [run.role for run in report.replicas]
    summary = ", ".join(f"{roles.count(role)} {role}" for role in sorted(set(roles)))
    applied = sum(report.applied_counts.values())
    verdict = "yes" if report.exactly_once else "NO"
    out.write(
        f"\nexactly once: {verdict} ({report.revisions - 1} revisions with effects, "
        f"{applied} applications; {summary}; database at head: "
        f"{'yes' if report.at_head else 'no'})\n"
    )
