"""Benchmark: CSV seeding against a raw COPY of the same file, measured in the same run.

    python bench/seeds.py [--rows 100000] [--repeat 5]

Starts its own embedded PostgreSQL. Reports medians and the ratios the reference-data
issue sets as goals:
- first seed of a 100k-row CSV into an empty table <= 1.5x a raw COPY of the file;
- re-seed of the same rows with 1% changed (informative: what a release costs);
- an unchanged re-run of `migrate-lock seed` < 100 ms beyond process start-up
  (`migrate-lock --version`, same interpreter and imports).
Writes bench/results/seeds.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from migrate_lock.sandbox.embedded import EmbeddedPostgres
from migrate_lock.scaffold import init_project
from migrate_lock.seeds.apply import apply_seeds
from migrate_lock.seeds.files import SeedFile
from migrate_lock.version_table import VersionTable

TABLE = "CREATE TABLE bench_rows (id bigint PRIMARY KEY, name text NOT NULL, score int NOT NULL, note text)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="migrate-lock-bench-") as work,
        EmbeddedPostgres() as server,
    ):
        url = server.url()
        data = _csv(args.rows)
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(TABLE)
            raw = _median(args.repeat, lambda: _raw_copy(connection, data))
            first = _median(args.repeat, lambda: _first_seed(connection, data))
            changed_data = _csv(args.rows, changed_every=100)
            changed = _median(args.repeat, lambda: _reseed_changed(connection, data, changed_data))
        startup, unchanged, upgrade = _unchanged_rerun(Path(work), url, data, args.repeat)
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "rows": args.rows,
        "raw_copy_s": raw,
        "first_seed_s": first,
        "first_seed_ratio": first / raw,
        "reseed_1pct_changed_s": changed,
        "reseed_1pct_changed_ratio": changed / raw,
        "process_startup_s": startup,
        "unchanged_rerun_s": unchanged,
        "unchanged_beyond_startup_ms": (unchanged - startup) * 1000,
        "unchanged_upgrade_s": upgrade,
        "unchanged_upgrade_beyond_startup_ms": (upgrade - startup) * 1000,
    }
    _print(results)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "seeds.json").write_text(json.dumps(results, indent=2))


def _csv(rows: int, *, changed_every: int = 0) -> bytes:
    def note(i: int) -> str:
        return f"changed {i}" if changed_every and i % changed_every == 0 else f"note for row {i}"

    lines = ["id,name,score,note"]
    lines += [f"{i},name {i},{i % 1000},{note(i)}" for i in range(1, rows + 1)]
    return ("\n".join(lines) + "\n").encode()


def _median(repeat: int, action: object) -> float:
    timings = [action() for _ in range(repeat)]  # type: ignore[operator]
    return statistics.median(timings)


def _raw_copy(connection: psycopg.Connection, data: bytes) -> float:
    connection.execute("TRUNCATE bench_rows")
    started = time.perf_counter()
    with (
        connection.transaction(),
        connection.cursor().copy(
            "COPY bench_rows (id, name, score, note) FROM STDIN WITH (FORMAT csv, HEADER true)"
        ) as copy,
    ):
        copy.write(data)
    return time.perf_counter() - started


def _first_seed(connection: psycopg.Connection, data: bytes) -> float:
    connection.execute("TRUNCATE bench_rows")
    table = VersionTable("public", "alembic_version")
    started = time.perf_counter()
    apply_seeds(
        connection, table, [SeedFile("bench_rows.csv", Path("bench_rows.csv"), data)], force=True
    )
    return time.perf_counter() - started


def _reseed_changed(connection: psycopg.Connection, data: bytes, changed: bytes) -> float:
    _first_seed(connection, data)
    table = VersionTable("public", "alembic_version")
    started = time.perf_counter()
    apply_seeds(
        connection, table, [SeedFile("bench_rows.csv", Path("bench_rows.csv"), changed)], force=True
    )
    return time.perf_counter() - started


def _unchanged_rerun(work: Path, url: str, data: bytes, repeat: int) -> tuple[float, float, float]:
    project = work / "project"
    init_project(project)
    (project / "seeds").mkdir()
    (project / "seeds" / "bench_rows.csv").write_bytes(data)
    env = {**os.environ, "DATABASE_URL": url, "LOG_FORMAT": "json", "ENVIRONMENT": "development"}
    command = [sys.executable, "-m", "migrate_lock"]
    subprocess.run([*command, "seed"], cwd=project, env=env, check=True, capture_output=True)

    def timed(*args: str) -> float:
        started = time.perf_counter()
        subprocess.run([*command, *args], cwd=project, env=env, check=True, capture_output=True)
        return time.perf_counter() - started

    # What every replica start pays: `upgrade` at head with the seeds unchanged, on the
    # lean path (heads frozen, as in the Dockerfile).
    subprocess.run([*command, "upgrade"], cwd=project, env=env, check=True, capture_output=True)
    subprocess.run([*command, "freeze"], cwd=project, env=env, check=True, capture_output=True)
    startup = _median(repeat, lambda: timed("--version"))
    unchanged = _median(repeat, lambda: timed("seed"))
    upgrade = _median(repeat, lambda: timed("upgrade"))
    return startup, unchanged, upgrade


def _print(results: dict[str, object]) -> None:
    print(f"rows: {results['rows']}")
    print(f"raw COPY:                    {results['raw_copy_s']:.3f} s")
    print(
        f"first seed (empty table):    {results['first_seed_s']:.3f} s  ratio {results['first_seed_ratio']:.2f}x (goal <= 1.5x)"
    )
    print(
        f"re-seed, ~1% rows changed:   {results['reseed_1pct_changed_s']:.3f} s  ratio {results['reseed_1pct_changed_ratio']:.2f}x"
    )
    print(f"process start-up (--version): {results['process_startup_s'] * 1000:.0f} ms")
    print(
        f"unchanged `seed` re-run:     {results['unchanged_rerun_s'] * 1000:.0f} ms  = start-up + {results['unchanged_beyond_startup_ms']:.0f} ms (full path)"
    )
    print(
        f"`upgrade` at head, seeds unchanged: {results['unchanged_upgrade_s'] * 1000:.0f} ms  = start-up + {results['unchanged_upgrade_beyond_startup_ms']:.0f} ms (goal < 100 ms)"
    )


if __name__ == "__main__":
    main()
