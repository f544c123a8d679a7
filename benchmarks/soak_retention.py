"""Retention soak: does the database stay bounded over many enqueue → complete → cleanup cycles?

Each cycle enqueues N native `noop` jobs (with a log line each from a Python processor for one
job in ten, so job_logs grows too), drains them, then runs `engine.cleanup(older_than=0)`. The file
size (database + WAL) is printed per cycle, beside a run of the same cycles without cleanup.
SQLite reuses freed pages, so with cleanup the size levels off after the first cycle or two.

    python benchmarks/soak_retention.py [--cycles 30] [--jobs 20000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jobforge


def file_size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def soak(path: str, cycles: int, jobs: int, clean: bool) -> list[tuple[int, int, float]]:
    engine = jobforge.Engine(path, workers=2)

    @engine.processor("logged")
    def logged(ctx, payload):
        ctx.log("info", "processed", i=payload)

    rows = []
    engine.start()
    try:
        for cycle in range(cycles):
            start = time.perf_counter()
            engine.enqueue_many("noop", [{"i": i} for i in range(jobs - jobs // 10)])
            engine.enqueue_many("logged", list(range(jobs // 10)))
            deadline = time.monotonic() + 600
            while engine.stats()["completed"] < jobs * (1 if clean else cycle + 1):
                if time.monotonic() > deadline:
                    raise TimeoutError("drain took over 10 minutes")
                time.sleep(0.01)
            if clean:
                engine.cleanup(older_than=0)
            rows.append((cycle + 1, file_size(path), time.perf_counter() - start))
    finally:
        engine.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=30)
    ap.add_argument("--jobs", type=int, default=20_000, help="jobs per cycle")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cleaned = soak(os.path.join(tmp, "clean.db"), args.cycles, args.jobs, True)
        kept = soak(os.path.join(tmp, "kept.db"), args.cycles, args.jobs, False)
    print(f"retention soak: {args.cycles} cycles of {args.jobs:,} jobs (1 in 10 logs a line)")
    print(
        f"{'cycle':>5}  {'jobs so far':>11}  {'with cleanup':>13}  {'without':>13}  {'s/cycle':>7}"
    )
    for (cycle, size, secs), (_, size_kept, _) in zip(cleaned, kept):
        print(f"{cycle:>5}  {cycle * args.jobs:>11,}  {size / 1e6:>10.1f} MB  "
              f"{size_kept / 1e6:>10.1f} MB  {secs:>7.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
