"""Fault-injection soak: worker processes drain a steady stream of jobs while faults are injected,
and every promise is checked at the end (docs/workers.md, "The contract").

Faults (--faults, comma-separated; picked at random every --every seconds):
  kill      SIGKILL a worker process (it is restarted)
  freeze    SIGSTOP a worker for 1.5 leases, then SIGCONT (it must fence itself, not double-complete)
  outage    nobody can write for 2.5 leases: the PostgreSQL server is stopped and started again
            (a private server), or another process holds the SQLite file's write lock
  terminate pg_terminate_backend on every connection of the soak (PostgreSQL)
  diskfull  a worker's file writes fail (RLIMIT_FSIZE through prlimit) for 2 s (SQLite)

Every execution is recorded by the processor outside the engine (one fsync'd O_APPEND write per
run), and every acknowledged enqueue by the producer (fsync'd after enqueue returned); each
committed completion is noted by the process that committed it (its job-completed event).

    python benchmarks/soak_faults.py --store sqlite --duration 120
    python benchmarks/soak_faults.py --store postgres --duration 120       # a private server
    python benchmarks/soak_faults.py --store postgres --url postgresql:///test   # no outages

Report: enqueued (acknowledged), executed (jobs with at least one run), runs, completed,
double completions, lost (acknowledged but missing, or never run), stuck (not final after the
drain), failed "lost" (ended failed with "worker ... was lost" although no worker died for good),
re-runs, count drift (counts() against a count of the jobs table). Exit code 0 when nothing is
lost, doubled, stuck or drifting and no live worker's job failed as lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pg_private  # noqa: E402

import jobforge  # noqa: E402

WORKER = textwrap.dedent(
    r"""
    import os, random, signal, sys, time
    import jobforge

    url, out, name, lease = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full disk is an error, not a death
    engine = jobforge.Engine(url, workers=4, heartbeat_interval=lease / 10, lease=lease,
                             poll_interval=0.05, retry_delay=0.05, claim_in_memory=False)
    runs = os.open(os.path.join(out, f"runs-{name}-{os.getpid()}.txt"),
                   os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    done = os.open(os.path.join(out, f"completed-{name}-{os.getpid()}.txt"),
                   os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def note(fd, line):
        os.write(fd, (line + "\n").encode())  # one write: atomic with O_APPEND
        os.fsync(fd)

    @engine.processor("soak", max_attempts=1000)
    def soak(ctx, payload):
        note(runs, f"{ctx.job_id} {ctx.attempt} {os.getpid()}")
        time.sleep(payload["ms"] / 1000)
        return {"pid": os.getpid()}

    engine.on("job-completed", lambda ev: note(done, f"{ev.job_id} {os.getpid()}"))
    engine.start()
    print("READY", flush=True)
    sys.stdin.read()
    """
)


class Worker:
    def __init__(self, url: str, out: str, name: str, lease: float) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.args = ([sys.executable, "-c", WORKER, url, out, name, str(lease)], env)
        self.start()

    def start(self) -> None:
        cmd, env = self.args
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env,
        )  # fmt: skip
        self.process.stdout.readline()  # READY (or EOF if it died at start: restarted later)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGCONT)
                self.process.stdin.close()
                self.process.wait(30)
            except (subprocess.TimeoutExpired, OSError, BrokenPipeError):
                self.process.kill()
        self.process.wait(10)


class Soak:
    def __init__(self, args: argparse.Namespace, server: pg_private.PrivatePostgres | None = None,
                 folder: str | None = None) -> None:  # fmt: skip
        """`server`: a private server to use (and stop for outages) instead of starting one."""
        self.args = args
        self.rng = random.Random(args.seed)
        self.folder = folder or tempfile.mkdtemp(prefix="jobforge-soak-")
        self.server, self.own_server = server, False
        if args.store == "sqlite":
            self.server = None
            self.url = os.path.join(self.folder, "soak.db")
        elif args.url:
            self.server = None
            self.url = args.url
        else:
            if self.server is None:
                self.server, self.own_server = pg_private.PrivatePostgres(), True
            self.url = self.server.new_schema_url()
        self.faults = [f for f in args.faults.split(",") if f and self.applies(f)]
        self.injected: Counter = Counter()
        self.stop_producer = threading.Event()

    def applies(self, fault: str) -> bool:
        if fault in ("outage",):
            return self.args.store == "sqlite" or self.server is not None
        if fault == "terminate":
            return self.args.store == "postgres"
        if fault == "diskfull":
            return self.args.store == "sqlite"
        return fault in ("kill", "freeze")

    # ---- producer -------------------------------------------------------------------------------

    def produce(self, engine: jobforge.Engine) -> None:
        acked = os.open(
            os.path.join(self.folder, "acked.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND
        )
        rng = random.Random(self.args.seed + 1)
        while not self.stop_producer.is_set():
            try:
                jobs = engine.enqueue_many(
                    "soak", [{"ms": rng.choice((2, 5, 10, 20))} for _ in range(self.args.batch)]
                )
            except jobforge.StoreError:
                time.sleep(0.1)  # the store is away: what was not acknowledged does not count
                continue
            os.write(acked, "".join(j.id + "\n" for j in jobs).encode())
            os.fsync(acked)
            time.sleep(self.args.pause)
        os.close(acked)

    # ---- faults ---------------------------------------------------------------------------------

    def inject(self, fault: str, workers: list[Worker]) -> None:
        lease = self.args.lease
        live = [w for w in workers if w.alive()]
        victim = self.rng.choice(live) if live else None
        if fault == "kill" and victim:
            os.kill(victim.pid, signal.SIGKILL)
            victim.process.wait(10)
            victim.start()
        elif fault == "freeze" and victim:
            os.kill(victim.pid, signal.SIGSTOP)
            time.sleep(1.5 * lease)
            os.kill(victim.pid, signal.SIGCONT)
        elif fault == "outage":
            seconds = min(2.5 * lease, 4.0) if self.server is None else 2.5 * lease
            if self.server is not None:
                self.server.stop()
                time.sleep(seconds)
                self.server.start()
            else:
                connection = sqlite3.connect(self.url, timeout=30, isolation_level=None)
                connection.execute("BEGIN IMMEDIATE")
                time.sleep(seconds)
                connection.execute("ROLLBACK")
                connection.close()
        elif fault == "terminate":
            schema = (
                self.url.split("application_name=")[-1] if "application_name=" in self.url else None
            )
            where = (
                f"application_name = '{schema}'"
                if schema
                else "pid <> pg_backend_pid() AND datname = current_database()"
            )
            psql = self.server.psql if self.server else None
            sql = f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {where}"
            if psql:
                psql(sql)
            else:
                subprocess.run(["psql", self.url, "-qAtc", sql], capture_output=True, timeout=30)
        elif fault == "diskfull" and victim:
            resource.prlimit(victim.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
            time.sleep(2.0)
            if victim.alive():
                resource.prlimit(victim.pid, resource.RLIMIT_FSIZE,
                                 (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # fmt: skip
        self.injected[fault] += 1

    # ---- the run --------------------------------------------------------------------------------

    def run(self) -> dict:
        args = self.args
        engine = jobforge.Engine(self.url, allow_unknown_types=True)
        workers = [Worker(self.url, self.folder, f"w{i}", args.lease) for i in range(args.workers)]
        producer = threading.Thread(target=self.produce, args=(engine,), daemon=True)
        began = time.monotonic()
        producer.start()
        while time.monotonic() - began < args.duration:
            time.sleep(self.rng.uniform(0.5 * args.every, 1.5 * args.every))
            for w in workers:
                if not w.alive():
                    w.start()
            if self.faults:
                if self.args.cycle:  # each fault in turn: every kind happens in a short run
                    fault = self.faults[sum(self.injected.values()) % len(self.faults)]
                else:
                    fault = self.rng.choice(self.faults)
                self.inject(fault, workers)
        self.stop_producer.set()
        producer.join()
        faults_s = time.monotonic() - began
        for w in workers:
            if not w.alive():
                w.start()
        acked = self.read_ids("acked.txt")
        drained = self.drain(acked, args.drain)
        for w in workers:
            w.stop()
        report = self.report(engine, acked, drained)
        report.update(store=args.store, duration_s=round(faults_s, 1), faults=dict(self.injected),
                      lease_s=args.lease, workers=args.workers, records=self.folder)  # fmt: skip
        return report

    def read_ids(self, name: str) -> list[str]:
        path = os.path.join(self.folder, name)
        with open(path) as fh:
            return [line.strip() for line in fh if line.strip()]

    def rows(self) -> dict[str, tuple[str, int, str]]:
        sql = "SELECT id, status, attempts, COALESCE(error, '') FROM jobs"
        if self.args.store == "sqlite":
            connection = sqlite3.connect(self.url, timeout=30)
            try:
                return {r[0]: (r[1], int(r[2]), r[3]) for r in connection.execute(sql)}
            finally:
                connection.close()
        out = subprocess.run(["psql", self.url, "-qAt", "-F", "\t", "-c", sql],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        rows = {}
        for line in out.stdout.splitlines():
            f = (line + "\t").split("\t")
            if len(f) >= 4:
                rows[f[0]] = (f[1], int(f[2]), f[3])
        return rows

    def drain(self, acked: list[str], timeout: float) -> float:
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            rows = self.rows()
            if all(rows.get(i, ("queued",))[0] in ("completed", "failed") for i in acked):
                break
            time.sleep(0.5)
        return time.monotonic() - began

    def report(self, engine: jobforge.Engine, acked: list[str], drain_s: float) -> dict:
        rows = self.rows()
        runs: list[tuple[str, ...]] = []
        completions: Counter = Counter()
        for name in os.listdir(self.folder):
            path = os.path.join(self.folder, name)
            if name.startswith("runs-"):
                with open(path) as fh:
                    runs.extend(tuple(line.split()) for line in fh if line.strip())
            elif name.startswith("completed-"):
                with open(path) as fh:
                    completions.update(line.split()[0] for line in fh if line.strip())
        per_job = Counter(r[0] for r in runs)
        acked_set = set(acked)
        statuses = Counter(rows[i][0] for i in acked if i in rows)
        lost = [i for i in acked if i not in rows or (rows[i][0] == "completed" and not per_job[i])]
        stuck = [i for i in acked if i in rows and rows[i][0] not in ("completed", "failed")]
        failed_lost = [i for i in acked if i in rows and rows[i][0] == "failed"
                       and "was lost" in rows[i][2]]  # fmt: skip
        doubles = [i for i, n in completions.items() if n > 1]
        counts = engine.counts()
        table = Counter(status for status, _, _ in rows.values())
        drift = {s: counts.get(s, 0) - table.get(s, 0)
                 for s in ("queued", "running", "completed", "failed")
                 if counts.get(s, 0) != table.get(s, 0)}  # fmt: skip
        return {
            "enqueued": len(acked),
            "executed": sum(1 for i in acked_set if per_job[i]),
            "runs": len(runs),
            "re_runs": len(runs) - sum(1 for i in acked_set if per_job[i]),
            "completed": statuses.get("completed", 0),
            "failed": statuses.get("failed", 0),
            "failed_as_lost": len(failed_lost),
            "double_completions": len(doubles),
            "lost": len(lost),
            "stuck": len(stuck),
            "count_drift": drift,
            "drain_s": round(drain_s, 1),
        }

    def close(self) -> None:
        if self.own_server:
            self.server.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--url", help="a PostgreSQL URL to use instead of a private server (no outages)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument(
        "--lease", type=float, default=1.5, help="the workers' lease (s); heartbeat lease/10"
    )
    p.add_argument("--faults", default="kill,freeze,outage,terminate,diskfull")
    p.add_argument("--every", type=float, default=3.0, help="mean seconds between faults")
    p.add_argument("--cycle", action="store_true", help="inject the faults in turn, not at random")
    p.add_argument("--batch", type=int, default=20, help="jobs per enqueue_many")
    p.add_argument("--pause", type=float, default=0.05, help="seconds between two batches")
    p.add_argument("--drain", type=float, default=120.0, help="seconds allowed to drain at the end")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the report here too")
    return p.parse_args(argv)


def failures(report: dict) -> list[str]:
    """What broke a promise, by name (empty: none)."""
    keys = ("lost", "double_completions", "stuck", "count_drift", "failed_as_lost")
    return [k for k in keys if report[k]]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soak = Soak(args)
    try:
        report = soak.run()
    finally:
        soak.close()
    for key, value in report.items():
        print(f"{key:20} {value}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 1 if failures(report) else 0


if __name__ == "__main__":
    sys.exit(main())
