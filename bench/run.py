"""Benchmark: migrate-lock against bare Alembic, measured side by side in one run.

    python bench/run.py [--repeat 5] [--quick] [--at-head-only]

Starts its own embedded PostgreSQL, generates example projects, and measures:
- one replica at head: CPU seconds (user+sys of the child) and wall time, median;
- N = 1, 8, 32 replicas started at the same instant at head (warm), and cold (an empty
  database, 20 revisions; migrate-lock only: bare Alembic replicas race and fail);
- at head with M = 20, 200, 1000 revisions, with the heads manifest (`freeze`) and
  without it (the static reader of the revision files answers: "at head without freeze");
- hand-off: from the migrating replica's `migrate.done` to each waiter's continue;
- cold and hand-off again with MIGRATION_LOCK_SCOPE=transaction (what pooler safety costs);
- yoyo-migrations (the `bench` extra: pip install -e '.[bench]') as a second peer: the same
  20 revisions' SQL as yoyo migrations, at head (one replica, N warm) and N cold;
- the peak number of client connections to the server while N replicas run.
Prints the ratios the performance issue sets as targets and writes bench/results/run.json.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import platform
import resource
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
from migrate_lock.sandbox.example import applied_counts, write_example_project

MIGRATE_LOCK = [sys.executable, "-m", "migrate_lock", "upgrade"]
ALEMBIC = [sys.executable, "-m", "alembic", "upgrade", "head"]
STATUS = [sys.executable, "-m", "migrate_lock", "status"]
#: yoyo-migrations, given the database in argv ("{url}": the database's URL for yoyo).
YOYO = [sys.executable, "-m", "yoyo", "apply", "--batch", "--no-config-file"]
YOYO += ["--database", "{url}", "yoyo_migrations"]


def main() -> None:
    as_installed()
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="skip M=1000 and N=32")
    parser.add_argument(
        "--at-head-only",
        action="store_true",
        help="only one replica at head (with and without freeze, M = 20, 200, 1000)",
    )
    args = parser.parse_args()
    yoyo = importlib.util.find_spec("yoyo") is not None
    if not yoyo:
        print("yoyo-migrations is not installed (pip install -e '.[bench]'): left out")
    sizes = [20, 200] if args.quick else [20, 200, 1000]
    replicas = [1, 8] if args.quick else [1, 8, 32]
    results: dict[str, Any] = {"machine": _machine()}
    with (
        tempfile.TemporaryDirectory(prefix="migrate-lock-bench-") as work,
        EmbeddedPostgres(server_options={"max_connections": "300"}) as server,
    ):
        bench = _Bench(Path(work), server)
        projects = {m: bench.project(m) for m in sizes}
        warm = {m: bench.database_at_head(projects[m], f"warm_{m}") for m in sizes}

        at_head = {}
        for m in sizes:
            at_head[m] = {
                "migrate_lock": bench.single(MIGRATE_LOCK, projects[m], warm[m], args.repeat),
                "migrate_lock_no_manifest": bench.single(
                    MIGRATE_LOCK, bench.without_manifest(projects[m]), warm[m], args.repeat
                ),
                "alembic": bench.single(ALEMBIC, projects[m], warm[m], args.repeat),
                # `status` at head, as a process: as cheap as `upgrade` at head (issue 18).
                "status": bench.single(STATUS, projects[m], warm[m], args.repeat),
                "status_no_manifest": bench.single(
                    STATUS, bench.without_manifest(projects[m]), warm[m], args.repeat
                ),
            }
        if yoyo:
            yoyo_project = bench.yoyo_project(projects[20])
            yoyo_warm = bench.database_at_head(yoyo_project, "warm_yoyo", YOYO)
            at_head[20]["yoyo"] = bench.single(YOYO, yoyo_project, yoyo_warm, args.repeat)
        results["at_head_single"] = at_head
        if args.at_head_only:
            replicas = []

        crowd = {}
        for n in replicas:
            crowd[n] = {
                "warm_migrate_lock": bench.crowd(MIGRATE_LOCK, projects[20], warm[20], n),
                "warm_alembic": bench.crowd(ALEMBIC, projects[20], warm[20], n),
                "cold_migrate_lock": bench.cold(projects[20], n),
                "cold_transaction_scope": bench.cold(projects[20], n, "transaction"),
            }
            if yoyo:
                crowd[n]["warm_yoyo"] = bench.crowd(YOYO, yoyo_project, yoyo_warm, n)
                crowd[n]["cold_yoyo"] = bench.cold(yoyo_project, n, command=YOYO)
        results["replicas"] = crowd
        if not args.at_head_only:
            results["handoff_ms"] = bench.handoff(8)
            results["handoff_transaction_scope_ms"] = bench.handoff(8, "transaction")

    ratios = _ratios(results, sizes, replicas)
    results["ratios"] = ratios
    _print(results, sizes, replicas)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    name = "run-at-head.json" if args.at_head_only else "run.json"
    (out / name).write_text(json.dumps(results, indent=2, default=str))


class _Bench:
    def __init__(self, work: Path, server: EmbeddedPostgres) -> None:
        self.work = work
        self.server = server
        self.databases = 0

    def project(self, revisions: int, *, slow: float = 0.0) -> Path:
        path = self.work / f"project_{revisions}_{int(slow * 1000)}"
        if not path.exists():
            write_example_project(
                path,
                revisions + 1,
                slow_revision=revisions // 2 if slow else None,
                slow_seconds=slow,
            )
            # As in the Dockerfile: the heads manifest is written at build time.
            subprocess.run(
                [sys.executable, "-m", "migrate_lock", "freeze"],
                cwd=path,
                env=_env(""),
                check=True,
                capture_output=True,
            )
        return path

    def without_manifest(self, project: Path) -> Path:
        bare = project.with_name(project.name + "_no_manifest")
        if not bare.exists():
            shutil.copytree(project, bare)
            (bare / "migrations" / "migrate-lock.heads.json").unlink()
        return bare

    def database(self, name: str) -> str:
        with psycopg.connect(self.server.url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.server.url(name)

    def database_at_head(self, project: Path, name: str, command: list[str] = MIGRATE_LOCK) -> str:
        url = self.database(name)
        subprocess.run(
            _command(command, url), cwd=project, env=_env(url), check=True, capture_output=True
        )
        return url

    def yoyo_project(self, project: Path) -> Path:
        """``project``'s revisions as yoyo migrations: each revision's upgrade() SQL in a
        .sql file that depends on the one before (the baseline only loads comments)."""
        path = project.with_name(project.name + "_yoyo")
        migrations = path / "yoyo_migrations"
        migrations.mkdir(parents=True, exist_ok=True)
        previous = None
        for revision in sorted((project / "migrations" / "versions").glob("*.py")):
            statements = _upgrade_statements(revision)
            if not statements:
                continue
            header = f"-- depends: {previous}\n" if previous else ""
            body = ";\n".join(statements) + ";\n"
            (migrations / f"{revision.stem}.sql").write_text(header + body)
            previous = revision.stem
        return path

    def single(self, command: list[str], project: Path, url: str, repeat: int) -> dict[str, Any]:
        cpu, wall = [], []
        heads_from = None
        for _ in range(repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run(
                _command(command, url),
                cwd=project,
                env=_env(url),
                check=True,
                capture_output=True,
                text=True,
            )
            wall.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            heads_from = _heads_from(done.stderr)
        # Which path answered migrate-lock's run: "manifest", "revision_files" (the static
        # reader, no freeze) or None (Alembic's heads, the full path).
        return {
            "cpu_s": statistics.median(cpu),
            "wall_s": statistics.median(wall),
            "heads_from": heads_from,
        }

    def crowd(
        self, command: list[str], project: Path, url: str, count: int, scope: str = "auto"
    ) -> dict[str, Any]:
        with _PeakConnections(self.server.url()) as peak:
            started = time.perf_counter()
            processes = [
                subprocess.Popen(
                    _command(command, url),
                    cwd=project,
                    env=_env(url, scope),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                for _ in range(count)
            ]
            codes = [process.wait(timeout=600) for process in processes]
            wall = time.perf_counter() - started
        for process in processes:
            process.communicate()
        return {
            "wall_s": wall,
            "exit_codes": sorted(set(codes)),
            "all_ok": set(codes) == {0},
            "peak_connections": peak.peak,
        }

    def cold(
        self,
        project: Path,
        count: int,
        scope: str = "auto",
        command: list[str] = MIGRATE_LOCK,
    ) -> dict[str, Any]:
        self.databases += 1
        url = self.database(f"cold_{count}_{self.databases}")
        result = self.crowd(command, project, url, count, scope)
        with psycopg.connect(url) as connection:
            counts = applied_counts(connection)
        result["exactly_once"] = len(counts) == 20 and set(counts.values()) == {1}
        return result

    def handoff(self, count: int, scope: str = "auto") -> dict[str, float]:
        project = self.project(20, slow=1.0)
        url = self.database(f"handoff_{scope}")
        env = _env(url, scope)
        processes = [
            subprocess.Popen(
                MIGRATE_LOCK,
                cwd=project,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        done_at, continued = None, []
        for process in processes:
            _, stderr = process.communicate(timeout=600)
            for line in stderr.splitlines():
                event = json.loads(line)
                stamp = datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
                if event["event"] == "migrate.done":
                    done_at = stamp
                elif event["event"] == "migrate.up_to_date" and event.get("role") == "waited":
                    continued.append(stamp)
        if done_at is None or not continued:
            return {}
        delays = [(stamp - done_at) * 1000 for stamp in continued]
        return {"median": statistics.median(delays), "max": max(delays), "waiters": len(delays)}


class _PeakConnections:
    """The most client connections the server had at once while the block ran (sampled
    from pg_stat_activity every 10 ms on a connection of its own, not counted)."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            while not self._stop.is_set():
                row = connection.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND pid <> pg_backend_pid()"
                ).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)
                self._stop.wait(0.01)


def _command(command: list[str], url: str) -> list[str]:
    """``command`` with yoyo's database URL in place of "{url}" (psycopg 3's driver)."""
    yoyo_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return [part.replace("{url}", yoyo_url) for part in command]


def _upgrade_statements(revision: Path) -> list[str]:
    """The SQL strings a generated example revision's upgrade() passes to op.execute."""
    tree = ast.parse(revision.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "upgrade":
            return [
                str(call.args[0].value)
                for call in ast.walk(node)
                if isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "execute"
                and call.args
                and isinstance(call.args[0], ast.Constant)
            ]
    return []


def _heads_from(stderr: str) -> str | None:
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "migrate.up_to_date":
            return event.get("heads_from")
    return None


def _env(url: str, scope: str = "auto") -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url,
        "LOG_FORMAT": "json",
        "ENVIRONMENT": "development",
        "MIGRATION_LOCK_SCOPE": scope,
    }


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def _ratios(results: dict[str, Any], sizes: list[int], replicas: list[int]) -> dict[str, float]:
    at_head = results["at_head_single"]
    crowd = results["replicas"]
    ratios = {
        "at_head_cpu_vs_alembic": at_head[20]["migrate_lock"]["cpu_s"]
        / at_head[20]["alembic"]["cpu_s"],
        # Issue 16, item 1: no build step. The static reader instead of the manifest.
        "at_head_without_freeze_cpu_vs_alembic": at_head[20]["migrate_lock_no_manifest"]["cpu_s"]
        / at_head[20]["alembic"]["cpu_s"],
        f"at_head_{sizes[-1]}_vs_20_revisions": at_head[sizes[-1]]["migrate_lock"]["cpu_s"]
        / at_head[20]["migrate_lock"]["cpu_s"],
        f"at_head_{sizes[-1]}_vs_20_revisions_without_freeze": at_head[sizes[-1]][
            "migrate_lock_no_manifest"
        ]["cpu_s"]
        / at_head[20]["migrate_lock_no_manifest"]["cpu_s"],
        "status_vs_upgrade_at_head_cpu_without_freeze": at_head[20]["status_no_manifest"]["cpu_s"]
        / at_head[20]["migrate_lock_no_manifest"]["cpu_s"],
    }
    if "yoyo" in at_head[20]:
        ratios["at_head_cpu_vs_yoyo"] = (
            at_head[20]["migrate_lock"]["cpu_s"] / at_head[20]["yoyo"]["cpu_s"]
        )
        ratios["at_head_without_freeze_cpu_vs_yoyo"] = (
            at_head[20]["migrate_lock_no_manifest"]["cpu_s"] / at_head[20]["yoyo"]["cpu_s"]
        )
    if not replicas:
        return ratios
    top = replicas[-1]
    ratios |= {
        f"warm_{top}_wall_vs_alembic": crowd[top]["warm_migrate_lock"]["wall_s"]
        / crowd[top]["warm_alembic"]["wall_s"],
        f"cold_{top}_wall_vs_alembic_warm": crowd[top]["cold_migrate_lock"]["wall_s"]
        / crowd[top]["warm_alembic"]["wall_s"],
        # Not a target: what the pooler-safe scope costs against the session scope.
        f"cold_{top}_transaction_vs_session_scope": crowd[top]["cold_transaction_scope"]["wall_s"]
        / crowd[top]["cold_migrate_lock"]["wall_s"],
    }
    if "warm_yoyo" in crowd[top]:
        ratios[f"warm_{top}_wall_vs_yoyo"] = (
            crowd[top]["warm_migrate_lock"]["wall_s"] / crowd[top]["warm_yoyo"]["wall_s"]
        )
        ratios[f"cold_{top}_wall_vs_yoyo"] = (
            crowd[top]["cold_migrate_lock"]["wall_s"] / crowd[top]["cold_yoyo"]["wall_s"]
        )
    return ratios


def _print(results: dict[str, Any], sizes: list[int], replicas: list[int]) -> None:
    at_head = results["at_head_single"]
    print("one replica at head (median)                CPU s    wall s   heads from")
    for m in sizes:
        for tool in (
            "migrate_lock",
            "migrate_lock_no_manifest",
            "alembic",
            "status",
            "status_no_manifest",
            "yoyo",
        ):
            if tool not in at_head[m]:
                continue
            row = at_head[m][tool]
            source = row["heads_from"] or ("alembic" if tool.startswith("migrate_lock") else "-")
            print(f"  M={m:<5} {tool:<26}   {row['cpu_s']:.3f}    {row['wall_s']:.3f}   {source}")
    print("\nN replicas at once                    wall s   peak conn.  exit codes")
    for n, row in results["replicas"].items():
        for case in (
            "warm_migrate_lock",
            "warm_alembic",
            "warm_yoyo",
            "cold_migrate_lock",
            "cold_transaction_scope",
            "cold_yoyo",
        ):
            if case not in row:
                continue
            data = row[case]
            once = f"  exactly once: {data['exactly_once']}" if "exactly_once" in data else ""
            print(
                f"  N={n:<3} {case:<24}      {data['wall_s']:.3f}   {data['peak_connections']:>4}"
                f"        {data['exit_codes']}{once}"
            )
    if "handoff_ms" in results:
        print(f"\nhand-off (holder's commit -> waiter continues): {results['handoff_ms']}")
        print(f"  in the transaction scope (polling): {results['handoff_transaction_scope_ms']}")
    print(
        "\nratios (targets: at-head CPU <= 0.30 with and without freeze, warm <= 0.35, "
        "cold <= 0.50, M=1000 <= 1.10 with freeze, <= 1.2 without):"
    )
    for name, value in results["ratios"].items():
        print(f"  {name:<40} {value:.2f}")


if __name__ == "__main__":
    main()
