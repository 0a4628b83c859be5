"""Benchmark: what waiting costs the database (issue 16, item 2), side by side in one run.

    python bench/waiting.py [--repeat 3] [--quick]

Starts its own embedded PostgreSQL servers and measures, medians over ``--repeat`` runs:
- slots: N replicas (64) start on an empty database whose migration takes S seconds (30);
  the connections they hold, sampled from pg_stat_activity every 0.2 s from 5 s after the
  last one started until the migration ends: peak and median. Baseline in the same run:
  the same with MIGRATION_LOCK_WAIT_CONNECTION_SECONDS=3600 (every waiter keeps its
  connection, as before). Also the hand-off: from the migrating replica's exit to each
  waiter's exit, median.
- short: the hand-off again with a 1 s migration and 8 replicas (waiters still on their LISTEN).
- crowded: 128 replicas, a 3 s migration, against max_connections=40 and 200: all exit 0?
  "too many clients" lines in the server log, connection retries, wall time and its ratio.
Prints the targets' ratios and writes bench/results/waiting.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from installed import as_installed

from migrate_lock.sandbox.embedded import EmbeddedPostgres
from migrate_lock.sandbox.example import applied_counts, write_example_project

UPGRADE = [sys.executable, "-m", "migrate_lock", "upgrade"]
SAMPLE_FROM_SECONDS = 5.0
SHORT_REPLICAS = 8


def main() -> None:
    as_installed()
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="16 replicas, 10 s, crowd of 48")
    args = parser.parse_args()
    replicas, slow, crowd = (16, 10.0, 48) if args.quick else (64, 30.0, 128)
    results: dict[str, Any] = {"replicas": replicas, "slow_seconds": slow, "crowd": crowd}
    with tempfile.TemporaryDirectory(prefix="migrate-lock-wait-") as work:
        root = Path(work)
        long_project = _project(root / "long", slow)
        short_project = _project(root / "short", 1.0)
        crowd_project = _project(root / "crowd", 3.0)
        with EmbeddedPostgres(server_options={"max_connections": "300"}) as server:
            runs = {"released": [], "kept": [], "short": []}
            for repetition in range(args.repeat):
                for variant, keep in (("released", None), ("kept", "3600")):
                    extra = {"MIGRATION_LOCK_WAIT_CONNECTION_SECONDS": keep} if keep else {}
                    url = _database(server, f"slots_{variant}_{repetition}")
                    runs[variant].append(_run(long_project, url, replicas, extra, sample=True))
                url = _database(server, f"short_{repetition}")
                # As bench/run.py's hand-off: 8 replicas. With 64 on 2 cores the woken waiters
                # queue for the CPU (~100 ms median, as much for waiters that keep theirs).
                runs["short"].append(_run(short_project, url, SHORT_REPLICAS, {}, sample=False))
            results["slots"] = {name: _summary(found) for name, found in runs.items()}
        crowded: dict[str, list[dict[str, Any]]] = {"40": [], "200": []}
        for limit, found_runs in crowded.items():
            with EmbeddedPostgres(server_options={"max_connections": limit}) as server:
                log = server.data_dir / "server.log"
                for repetition in range(args.repeat):
                    before = _too_many(log)
                    url = _database(server, f"crowd_{repetition}")
                    found = _run(crowd_project, url, crowd, {}, sample=False)
                    found["too_many_clients"] = _too_many(log) - before
                    found_runs.append(found)
        results["crowded"] = {limit: _summary(found) for limit, found in crowded.items()}
    results["targets"] = _targets(results)
    print(json.dumps(results["targets"], indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "waiting.json").write_text(json.dumps(results, indent=2))


def _project(path: Path, slow: float) -> Path:
    write_example_project(path, 21, slow_revision=10, slow_seconds=slow)
    subprocess.run(
        [sys.executable, "-m", "migrate_lock", "freeze"],
        cwd=path,
        env=_env(""),
        check=True,
        capture_output=True,
    )
    return path


def _database(server: EmbeddedPostgres, name: str) -> str:
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return server.url(name)


def _env(url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url,
        "LOG_FORMAT": "json",
        "ENVIRONMENT": "development",
        "DB_CONNECT_TIMEOUT_SECONDS": "300",
        **(extra or {}),
    }


def _run(
    project: Path, url: str, replicas: int, extra: dict[str, str], *, sample: bool
) -> dict[str, Any]:
    """Start ``replicas`` at once; wait for all, noting when each exits and, if ``sample``,
    how many connections the database has (ours excluded) from 5 s after the last start."""
    logs = [tempfile.TemporaryFile() for _ in range(replicas)]  # noqa: SIM115 - closed below
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            UPGRADE, cwd=project, env=_env(url, extra), stdout=subprocess.DEVNULL, stderr=log
        )
        for log in logs
    ]
    all_started = time.monotonic()
    exits: dict[int, float] = {}
    samples: list[int] = []
    next_sample = all_started + SAMPLE_FROM_SECONDS
    with psycopg.connect(url, autocommit=True) as watcher:
        while len(exits) < replicas:
            now = time.monotonic()
            for index, process in enumerate(processes):
                if index not in exits and process.poll() is not None:
                    exits[index] = now
            migrating = any(i not in exits for i in range(replicas)) and not _migration_done(
                watcher
            )
            if sample and now >= next_sample and migrating:
                row = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                ).fetchone()
                samples.append(int(row[0]) if row else 0)
                next_sample = now + 0.2
            time.sleep(0.01)
        counts = applied_counts(watcher)
    retries, done_at, continued = 0, None, []
    for log in logs:
        log.seek(0)
        for line in log.read().decode(errors="replace").splitlines():
            event = json.loads(line) if line.startswith("{") else {}
            stamp = datetime.fromisoformat(event.get("ts", "1970-01-01T00:00:00+00:00"))
            if event.get("event") == "db.retry":
                retries += 1
            elif event.get("event") == "migrate.done":
                done_at = stamp.timestamp()
            elif event.get("event") == "migrate.up_to_date" and event.get("role") == "waited":
                continued.append(stamp.timestamp())
        log.close()
    # From the migrating replica's migrate.done to each waiter's continue (as bench/run.py).
    handoffs = [(stamp - done_at) * 1000 for stamp in continued] if done_at else []
    return {
        "all_exit_0": all(p.returncode == 0 for p in processes),
        "exactly_once": len(counts) == 20 and set(counts.values()) == {1},
        "wall_s": max(exits.values()) - started,
        "peak_connections_after_5s": max(samples, default=None),
        "median_connections_after_5s": statistics.median(samples) if samples else None,
        "handoff_ms_median": statistics.median(handoffs) if handoffs else None,
        "db_retries": retries,
    }


def _migration_done(connection: psycopg.Connection[Any]) -> bool:
    try:
        row = connection.execute("SELECT count(*) FROM migration_log").fetchone()
    except psycopg.errors.UndefinedTable:
        return False
    return bool(row and int(row[0]) >= 20)


def _too_many(log: Path) -> int:
    return log.read_text(errors="replace").count("too many clients") if log.exists() else 0


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"runs": runs}
    for key in runs[0]:
        values = [run[key] for run in runs if isinstance(run[key], (int, float))]
        if isinstance(runs[0][key], bool):
            summary[key] = all(run[key] for run in runs)
        elif values:
            summary[key] = statistics.median(values)
    return summary


def _targets(results: dict[str, Any]) -> dict[str, Any]:
    slots, crowded = results["slots"], results["crowded"]
    return {
        "peak connections after 5 s, waiters give back (≤ 8)": slots["released"].get(
            "peak_connections_after_5s"
        ),
        "peak connections after 5 s, waiters keep (before)": slots["kept"].get(
            "peak_connections_after_5s"
        ),
        "hand-off median ms, long migration (≤ 1000)": slots["released"].get("handoff_ms_median"),
        "hand-off median ms, 1 s migration, 8 replicas (≤ 50)": slots["short"].get(
            "handoff_ms_median"
        ),
        "crowd vs max_connections=40: all exit 0": crowded["40"].get("all_exit_0"),
        "crowd vs 40: 'too many clients' lines (0)": crowded["40"].get("too_many_clients"),
        "crowd wall time 40 / 200 (≤ 1.5)": crowded["40"]["wall_s"] / crowded["200"]["wall_s"],
        "exactly once everywhere": all(
            group.get("exactly_once") for group in [*slots.values(), *crowded.values()]
        ),
    }


if __name__ == "__main__":
    main()
