"""The 10-million-job soak: enqueue and drain jobs in cycles with retention on, sampling the
process's RSS and the file's size, to show that neither grows with the number of jobs that went
through (only with the largest backlog and the retention window).

Each cycle enqueues --cycle jobs with enqueue_many (native `noop`, and one in --logged-every a
Python processor that writes a log line, so job_logs churns too), waits until they are done, and
samples. Retention is the engine's own (`retention=`, `cleanup_interval=`): finished jobs older
than --retention seconds are deleted by the engine's cleanup, in small transactions, while the
next cycles run. A sampler thread reads RSS (VmRSS) and file size (database + WAL) every 0.5 s;
the table shows per cycle the peaks since the previous row.

    python benchmarks/soak.py                       # 10,000,000 jobs in cycles of 250,000
    python benchmarks/soak.py --total 1000000 --cycle 100000 --json soak.json

Verdict: bounded when the peaks of the second half of the run are within 10% (RSS) and 10%
(file) of the peaks of the first half after warm-up (the first 10% of the cycles).
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

import jobforge


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def file_size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


class Sampler(threading.Thread):
    """Peaks of RSS and file size since the last take()."""

    def __init__(self, path: str, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.path, self.interval = path, interval
        self.lock = threading.Lock()
        self.rss = self.size = 0
        self.done = threading.Event()

    def sample(self) -> None:
        rss, size = rss_bytes(), file_size(self.path)
        with self.lock:
            self.rss, self.size = max(self.rss, rss), max(self.size, size)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def take(self) -> tuple[int, int]:
        self.sample()
        with self.lock:
            out = (self.rss, self.size)
            self.rss = self.size = 0
        return out


def soak(args: argparse.Namespace, path: str) -> dict:
    engine = jobforge.Engine(
        path, workers=2, retention=args.retention, cleanup_interval=args.cleanup_interval
    )

    @engine.processor("logged")
    def logged(ctx, payload):
        ctx.log("info", "processed", i=payload)

    cycles = max(1, args.total // args.cycle)
    logged_n = args.cycle // args.logged_every if args.logged_every else 0
    native_n = args.cycle - logged_n
    payloads = [{"i": i} for i in range(native_n)]
    sampler = Sampler(path)
    sampler.start()
    rows = []
    t_start = time.perf_counter()
    engine.start()
    try:
        for cycle in range(1, cycles + 1):
            t0 = time.perf_counter()
            engine.enqueue_many("noop", payloads)
            if logged_n:
                engine.enqueue_many("logged", list(range(logged_n)))
            t_enq = time.perf_counter() - t0
            deadline = time.monotonic() + 900
            while True:
                c = engine.counts()
                if c["queued"] == 0 and c["running"] == 0:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cycle {cycle} did not drain in 15 minutes: {c}")
                time.sleep(0.02)
            secs = time.perf_counter() - t0
            rss, size = sampler.take()
            rows.append({
                "cycle": cycle, "jobs_so_far": cycle * args.cycle, "seconds": round(secs, 2),
                "enqueue_s": round(t_enq, 2), "rate": round(args.cycle / secs),
                "rss_mb": round(rss / 1e6, 1), "file_mb": round(size / 1e6, 1),
                "rows": c["total"], "failed": c["failed"],
            })  # fmt: skip
            if cycle == 1 or cycle % args.every == 0 or cycle == cycles:
                r = rows[-1]
                print(f"{r['cycle']:>5}  {r['jobs_so_far']:>12,}  {r['rate']:>9,}/s  "
                      f"{r['rss_mb']:>8.1f} MB  {r['file_mb']:>8.1f} MB  {r['rows']:>10,}",
                      flush=True)  # fmt: skip
    finally:
        engine.stop()
        sampler.done.set()
    warm = max(1, cycles // 10)
    body = rows[warm:]
    half = len(body) // 2
    first, second = body[:half] or body, body[half:] or body

    def peak(part, key):
        return max(r[key] for r in part)

    verdict = {
        "rss_first_half_mb": peak(first, "rss_mb"), "rss_second_half_mb": peak(second, "rss_mb"),
        "file_first_half_mb": peak(first, "file_mb"),
        "file_second_half_mb": peak(second, "file_mb"),
    }  # fmt: skip
    verdict["bounded"] = (
        verdict["rss_second_half_mb"] <= 1.1 * verdict["rss_first_half_mb"]
        and verdict["file_second_half_mb"] <= 1.1 * verdict["file_first_half_mb"]
    )
    return {
        "jobs": cycles * args.cycle, "cycles": cycles, "cycle": args.cycle,
        "retention_s": args.retention, "cleanup_interval_s": args.cleanup_interval,
        "logged_every": args.logged_every, "seconds": round(time.perf_counter() - t_start, 1),
        "failed": rows[-1]["failed"], "rows": rows, **verdict,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--total", type=int, default=10_000_000, help="jobs in all")
    ap.add_argument("--cycle", type=int, default=250_000, help="jobs per cycle")
    ap.add_argument("--logged-every", type=int, default=20,
                    help="one job in this many runs in Python and logs a line (0: none)")  # fmt: skip
    ap.add_argument("--retention", type=float, default=5.0, help="seconds finished jobs stay")
    ap.add_argument("--cleanup-interval", type=float, default=5.0, help="seconds between cleanups")
    ap.add_argument("--every", type=int, default=4, help="print every Nth cycle")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--dir", help="directory for the database (default: a temporary one)")
    args = ap.parse_args()
    if args.cycle <= 0 or args.total < args.cycle:
        ap.error("--cycle must be positive and at most --total")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    print(f"soak: {args.total:,} jobs in cycles of {args.cycle:,}, retention {args.retention} s "
          f"(cleanup every {args.cleanup_interval} s), commit {commit}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}", flush=True)  # fmt: skip
    print(f"{'cycle':>5}  {'jobs so far':>12}  {'rate':>11}  {'peak RSS':>11}  {'peak file':>11}  "
          f"{'rows':>10}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = soak(args, os.path.join(tmp, "soak.db"))
    result.update(
        commit=commit, date=time.strftime("%Y-%m-%dT%H:%M"), python=sys.version.split()[0]
    )
    print(f"done in {result['seconds']:,} s; peak RSS {result['rss_first_half_mb']} MB (first "
          f"half) / {result['rss_second_half_mb']} MB (second half); peak file "
          f"{result['file_first_half_mb']} / {result['file_second_half_mb']} MB; failed jobs "
          f"{result['failed']}; {'bounded' if result['bounded'] else 'GROWING'}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    sys.exit(0 if result["bounded"] and result["failed"] == 0 else 1)


if __name__ == "__main__":
    main()
