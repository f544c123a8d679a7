"""W10: enqueue and drain throughput on PostgreSQL beside SQLite, with 1, 2 and 4 worker processes.

    python benchmarks/w10_postgres.py [--jobs 20000] [--runs 3] [--url postgresql:///test]

Each trial uses a fresh store: a new SQLite file, or a new schema (random name) in the database of
``--url`` (default $JOBFORGE_TEST_POSTGRES_URL or postgresql:///test), dropped afterwards.
Figures (medians of --runs trials):

* enqueue, one call at a time from one thread, each durable on return;
* enqueue_many in batches of 1,000;
* drain of pre-enqueued jobs of the native ``noop`` processor by 1, 2 and 4 worker processes, each
  ``jobforge.Engine(url, workers=2)`` (durable claims: SQLite switches to them as soon as a second
  process shares the file; PostgreSQL always claims durably), timed from the start signal until
  the store counts every job completed; every job must end completed with one attempt.

Prints a Markdown table (docs/performance.md keeps the last one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import jobforge

WORKER = textwrap.dedent(
    """
    import sys, jobforge
    e = jobforge.Engine(sys.argv[1], workers=2)
    print("ready", flush=True)
    sys.stdin.readline()
    e.start()
    sys.stdin.readline()
    e.stop()
    print("stopped", flush=True)
    """
)


def psql(base_url: str, sql: str) -> str:
    out = subprocess.run(
        ["psql", base_url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


class Store:
    """A fresh store for one trial: a SQLite file or a PostgreSQL schema."""

    def __init__(self, kind: str, base_url: str, tmp: Path) -> None:
        self.kind, self.base_url = kind, base_url
        if kind == "sqlite":
            self.url = str(tmp / f"w10-{uuid.uuid4().hex[:8]}.db")
        else:
            self.schema = f"jobforge_bench_{uuid.uuid4().hex[:12]}"
            psql(base_url, f"CREATE SCHEMA {self.schema}")
            sep = "&" if "?" in base_url else "?"
            self.url = f"{base_url}{sep}options=-csearch_path%3D{self.schema}"

    def drop(self) -> None:
        if self.kind == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(self.url + suffix).unlink(missing_ok=True)
        else:
            psql(self.base_url, f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


def enqueue_single(store: Store, n: int) -> float:
    engine = jobforge.Engine(store.url, allow_unknown_types=True)
    t0 = time.perf_counter()
    for i in range(n):
        engine.enqueue("noop", {"i": i})
    return n / (time.perf_counter() - t0)


def enqueue_many(store: Store, n: int) -> float:
    engine = jobforge.Engine(store.url, allow_unknown_types=True)
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        engine.enqueue_many("noop", [{"i": i} for i in range(start, min(n, start + 1000))])
    return n / (time.perf_counter() - t0)


def drain(store: Store, n: int, processes: int) -> float:
    producer = jobforge.Engine(store.url, allow_unknown_types=True)
    for start in range(0, n, 5000):
        producer.enqueue_many("noop", [{"i": i} for i in range(start, min(n, start + 5000))])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, store.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(processes)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        t0 = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        while producer.counts()["completed"] < n:
            time.sleep(0.01)
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("drain did not finish in 600 s")
        elapsed = time.perf_counter() - t0
        for p in procs:
            p.stdin.write("stop\n")
            p.stdin.flush()
        for p in procs:
            p.wait(120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    once = sum(1 for j in producer.jobs(status="completed", limit=n) if j.attempts == 1)
    if once != n:
        raise RuntimeError(f"{n - once} jobs did not complete with exactly one attempt")
    return n / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20_000, help="jobs per drain/enqueue_many trial")
    ap.add_argument("--single", type=int, default=3_000, help="jobs per single-enqueue trial")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--url", default=os.environ.get("JOBFORGE_TEST_POSTGRES_URL", "postgresql:///test")
    )
    args = ap.parse_args()
    results: dict[tuple[str, str], list[float]] = {}
    workloads = [("enqueue (one call, durable)", lambda s: enqueue_single(s, args.single))]
    workloads.append(("enqueue_many (batches of 1,000)", lambda s: enqueue_many(s, args.jobs)))
    for procs in (1, 2, 4):
        workloads.append(
            (
                f"drain noop, {procs} process(es) × 2 workers",
                lambda s, p=procs: drain(s, args.jobs, p),
            )
        )
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for name, fn in workloads:
                for kind in ("sqlite", "postgres"):
                    store = Store(kind, args.url, Path(tmp))
                    try:
                        rate = fn(store)
                    finally:
                        store.drop()
                    results.setdefault((name, kind), []).append(rate)
                    print(f"run {run + 1}: {name} [{kind}]: {rate:,.0f} jobs/s", file=sys.stderr)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"\nW10, commit {commit}, {os.cpu_count()} cores, {args.jobs:,} jobs "
        f"({args.single:,} for single enqueue), median of {args.runs}\n"
    )
    print("| workload | SQLite (jobs/s) | PostgreSQL (jobs/s) | PostgreSQL / SQLite |")
    print("| --- | ---: | ---: | ---: |")
    for name, _ in workloads:
        lite = statistics.median(results[(name, "sqlite")])
        pg = statistics.median(results[(name, "postgres")])
        print(f"| {name} | {lite:,.0f} | {pg:,.0f} | {pg / lite:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
