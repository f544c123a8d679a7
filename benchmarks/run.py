#!/usr/bin/env python3
"""jobforge's reference workloads (see BENCHMARKS.md): one command, one table.

    python benchmarks/run.py [--quick] [--only W1,W3] [--json out.json] [--peers] [--runs 3]

Every workload runs in a fresh temporary SQLite file, each trial in a fresh Python process, and
reports the median of ``--runs`` trials (at least 3). Baselines are measured in the same run,
interleaved with the engine's trials so both see the same noise: the raw-SQLite limit program
(``benchmarks/sqlite_limit.cpp``, built here with g++ -O2 into ``build/bench/``) for W1, W2, W3
and W9, and a plain Python loop making the same processor calls for W4. ``--peers`` adds huey,
rq, celery and dramatiq (where installed; Redis on 127.0.0.1:6379) on a W1/W3-like workload.
``--only W10`` runs ``benchmarks/w10_postgres.py``: enqueue and drain with 1, 2 and 4 worker
processes on PostgreSQL beside SQLite (needs a server; see docs/postgresql.md).

The table goes to stdout; progress to stderr; the JSON to ``benchmarks/results/<date>-<commit>.json``
(or ``--json``). Read ratios, not absolute numbers: the machine is shared and noisy.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
BUILD = ROOT / "build" / "bench"
LIMIT_SRC = BENCH / "sqlite_limit.cpp"
LIMIT_HDR = ROOT / "cpp" / "src" / "store" / "sqlite_sql.hpp"
LIMIT_BIN = BUILD / "sqlite_limit"
RESULTS = BENCH / "results"
WORKERS = 2  # worker threads per engine process, as in BENCHMARKS.md ("2 workers")

# Sizes per workload. Full sizes are BENCHMARKS.md's; --quick keeps the whole run near a minute.
SIZES = {
    "full": {
        "W1": 100_000,
        "W1b": 100_000,
        "W2": 1_000_000,
        "W3": 1_000_000,
        "W4": 200_000,
        "W5": 1_000,
        "W6": 1_000_000,
        "W7": 1_000_000,
        "W8": 10_000_000,
        "W9": 200_000,
        "peers": 10_000,
    },
    "quick": {
        "W1": 5_000,
        "W1b": 8_000,
        "W2": 50_000,
        "W3": 50_000,
        "W4": 20_000,
        "W5": 300,
        "W6": 100_000,
        "W7": 200_000,
        "W8": 300_000,
        "W9": 30_000,
        "peers": 3_000,
    },
}
# A trial that takes longer than this (seconds) is stopped and reports the rate it reached.
CAPS = {"full": {"drain": 100.0, "peer": 20.0}, "quick": {"drain": 20.0, "peer": 10.0}}
ENQUEUE_CHUNK = 10_000  # W2: enqueue_many is called with this many payloads per call
# The raw program's rates are flat in N (see README), so its baselines run on at most this many
# jobs: single inserts (W1, W1b), batched inserts (W2), and jobs drained from the same big file as
# the engine's (W3).
RAW_MAX = {"insert-single": 30_000, "insert-batch": 300_000, "lifecycle": 300_000}
CHILDREN = 10_000  # W6: children of one batch job
W9_PROCESSES = (1, 2, 4)
W9_CHECK_JOBS = 4_000  # W9's exactly-once check
W1B_THREADS = 8
ALL_WORKLOADS = ("W1", "W1b", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9")

# Run at the start of every child and W9 worker process. With a snapshot (the default), the
# editable install's import hook (which rebuilds the C++ when other engineers touch cpp/) is
# bypassed, so every trial of one run measures the same build of jobforge._core.
BOOTSTRAP = """\
import os as _os, sys as _sys
_pkg = _os.environ.get("JOBFORGE_BENCH_PKG")
if _pkg:
    _sys.meta_path[:] = [f for f in _sys.meta_path
                         if not type(f).__module__.startswith("_editable_skbc_jobforge")]
    _sys.path.insert(0, _pkg)
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(values: list[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def vm_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# =============================================================================================
# Child side: each function runs in a fresh process and returns a JSON-able dict.
# =============================================================================================


def _jobforge():
    import jobforge

    return jobforge


def child_enqueue_single(spec: dict) -> dict:
    """W1: one enqueue at a time from one thread; each returns once its commit is durable."""
    jf = _jobforge()
    engine = jf.Engine(spec["path"], workers=WORKERS)
    for i in range(20):  # warm-up: reader/writer connections, statement cache
        engine.enqueue("noop", {"i": -i})
    n = spec["n"]
    enqueue = engine.enqueue
    t0 = time.perf_counter()
    for i in range(n):
        enqueue("noop", {"i": i})
    dt = time.perf_counter() - t0
    return {"seconds": dt, "rate": n / dt}


def child_enqueue_threads(spec: dict) -> dict:
    """W1b: the same from several Python threads at once (group commit shares the commits)."""
    jf = _jobforge()
    engine = jf.Engine(spec["path"], workers=WORKERS)
    for i in range(20):
        engine.enqueue("noop", {"i": -i})
    threads_n, per = spec["threads"], spec["n"] // spec["threads"]
    barrier = threading.Barrier(threads_n + 1)
    errors: list[BaseException] = []

    def producer(k: int) -> None:
        barrier.wait()
        try:
            for i in range(per):
                engine.enqueue("noop", {"i": k * per + i})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(threads_n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {"seconds": dt, "rate": threads_n * per / dt}


def child_enqueue_many(spec: dict) -> dict:
    """W2: enqueue_many in chunks (payload dicts exist before the clock starts)."""
    jf = _jobforge()
    engine = jf.Engine(spec["path"], workers=WORKERS)
    engine.enqueue_many("noop", [{"i": -1}] * 10)
    n, chunk = spec["n"], spec["chunk"]
    payloads = [{"i": i} for i in range(chunk)]
    t0 = time.perf_counter()
    done = 0
    while done < n:
        k = min(chunk, n - done)
        engine.enqueue_many("noop", payloads if k == chunk else payloads[:k])
        done += k
    dt = time.perf_counter() - t0
    return {"seconds": dt, "rate": n / dt}


def _drain(engine, n: int, cap: float) -> dict:
    """Starts the engine and polls stats() (a read of the counters table) until n completed."""
    t0 = time.perf_counter()
    engine.start()
    completed = 0
    while True:
        time.sleep(0.005)
        completed = engine.stats()["completed"]
        elapsed = time.perf_counter() - t0
        if completed >= n or elapsed > cap:
            break
    engine.stop()
    stats = engine.stats()
    return {
        "seconds": elapsed,
        "rate": completed / elapsed,
        "completed": completed,
        "capped": completed < n,
        "stats": stats,
    }


def child_drain_native(spec: dict) -> dict:
    """W3: drain pre-enqueued `noop` jobs (native processor, no GIL) with 2 workers."""
    jf = _jobforge()
    engine = jf.Engine(spec["path"], workers=spec["workers"])
    return _drain(engine, spec["n"], spec["cap"])


def child_drain_python(spec: dict) -> dict:
    """W4: drain a Python no-op processor; first the plain loop baseline, in the same process."""
    jf = _jobforge()
    from jobforge import _json

    def pynoop(ctx, payload):
        return None

    # Baseline: what any queue must do per job for a Python processor, without a queue: decode
    # the payload, call the processor, encode its result.
    n_loop = spec["n"]
    payloads = [_json.dumps({"i": i}) for i in range(n_loop)]
    loads, dumps = _json.loads, _json.dumps
    t0 = time.perf_counter()
    for p in payloads:
        dumps(pynoop(None, loads(p)), "result")
    loop_dt = time.perf_counter() - t0

    engine = jf.Engine(spec["path"], workers=spec["workers"])
    engine.register("pynoop", pynoop)
    out = _drain(engine, spec["n"], spec["cap"])
    out["loop_rate"] = n_loop / loop_dt
    return out


def child_latency(spec: dict) -> dict:
    """W5: enqueue → processor start on an idle, started engine, sequential jobs."""
    jf = _jobforge()
    engine = jf.Engine(spec["path"], workers=WORKERS)
    started = threading.Event()
    mark = [0.0]

    def lat(ctx, payload):
        mark[0] = time.perf_counter()
        started.set()
        return None

    engine.register("lat", lat)
    engine.start()
    lat_ms, enq_ms = [], []
    try:
        for i in range(-20, spec["n"]):  # 20 warm-up jobs
            started.clear()
            t0 = time.perf_counter()
            job = engine.enqueue("lat", None)
            t1 = time.perf_counter()
            if not started.wait(10):
                raise RuntimeError("processor did not start within 10 s")
            job.wait(10)  # idle again before the next job
            if i >= 0:
                lat_ms.append((mark[0] - t0) * 1e3)
                enq_ms.append((t1 - t0) * 1e3)
            time.sleep(0.0005)
    finally:
        engine.stop()
    return {
        "p50_ms": percentile(lat_ms, 0.5),
        "p99_ms": percentile(lat_ms, 0.99),
        "max_ms": max(lat_ms),
        "enqueue_p50_ms": percentile(enq_ms, 0.5),
        "enqueue_p99_ms": percentile(enq_ms, 0.99),
    }


def child_w6_children(spec: dict) -> dict:
    """W6 set-up: one batch job and its children, through enqueue_many(parent=…)."""
    jf = _jobforge()
    engine = jf.Engine(spec["path"], workers=WORKERS, allow_unknown_types=True)
    parent = engine.enqueue("batch", {"items": spec["children"]})
    payloads = [{"i": i} for i in range(spec["children"])]
    for k in range(0, len(payloads), ENQUEUE_CHUNK):
        engine.enqueue_many("item", payloads[k : k + ENQUEUE_CHUNK], parent=parent.id)
    return {"parent": parent.id}


def _time_calls(fn: Callable[[], Any], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def child_queries(spec: dict) -> dict:
    """W6: queries on a file with many jobs of mixed status and type (engine not started)."""
    con = sqlite3.connect(spec["path"])
    (max_rowid,) = con.execute("SELECT max(rowid) FROM jobs").fetchone()
    rng = random.Random(7)
    ids = []
    while len(ids) < 1000:
        row = con.execute(
            "SELECT id FROM jobs WHERE rowid = ?", (rng.randint(1, max_rowid),)
        ).fetchone()
        if row:
            ids.append(row[0])
    con.close()

    jf = _jobforge()
    engine = jf.Engine(spec["path"], workers=WORKERS, allow_unknown_types=True)
    engine.stats()
    engine.get(ids[0])  # open a reader connection
    it = iter(ids * 2)
    get_s = _time_calls(lambda: engine.get(next(it)), len(ids))

    statuses = ["queued", "completed", "failed"]
    pages: dict[str, int] = {}
    k = [0]

    def page():
        status = statuses[k[0] % 3]
        k[0] += 1
        pages[status] = len(engine.jobs(status=status, limit=100))

    page_s = _time_calls(page, 150)
    stats_s = _time_calls(engine.stats, 1000)
    parent = spec["parent"]
    kids = [0]

    def children():
        kids[0] = len(engine.jobs(parent=parent, limit=spec["children"] + 10))

    children_s = _time_calls(children, 10)
    return {
        "get_us": statistics.median(get_s) * 1e6,
        "get_p99_us": percentile(get_s, 0.99) * 1e6,
        "page_ms": statistics.median(page_s) * 1e3,
        "stats_ms": statistics.median(stats_s) * 1e3,
        "children_ms": statistics.median(children_s) * 1e3,
        "children_found": kids[0],
        "page_sizes": pages,
        "stats": engine.stats(),
    }


def child_progress(spec: dict) -> dict:
    """W7: one Python job calling ctx.progress n times; events counted by a subscriber."""
    jf = _jobforge()
    n = spec["n"]

    def plain(current, total=None, message=None):
        return None

    t0 = time.perf_counter()
    for i in range(n):
        plain(i, total=n)
    loop_ns = (time.perf_counter() - t0) / n * 1e9

    engine = jf.Engine(spec["path"], workers=1)
    timing = {}

    def prog(ctx, payload):
        progress = ctx.progress
        t0 = time.perf_counter()
        for i in range(n):
            progress(i, total=n)
        timing["seconds"] = time.perf_counter() - t0
        return None

    engine.register("prog", prog)
    events = []
    engine.on("job-progress", lambda ev: events.append(ev.timestamp))
    engine.start()
    job = engine.enqueue("prog", None)
    job.wait(600)
    engine._core.flush_events()
    time.sleep(0.2)
    engine.stop()
    secs = timing["seconds"]
    return {
        "ns_per_call": secs / n * 1e9,
        "loop_ns_per_call": loop_ns,
        "events": len(events),
        "events_per_s": len(events) / secs if secs > 0 else None,
        "status": job.status,
    }


def child_progress_flood(spec: dict) -> dict:
    """W7: how many events a Python callback receives when every progress update is an event
    (progress_interval=0): `jobs` Python jobs on 2 workers, each calling ctx.progress `n` times."""
    jf = _jobforge()
    n, jobs = spec["n"], spec["jobs"]
    engine = jf.Engine(spec["path"], workers=2, progress_interval=0)

    def flood(ctx, payload):
        progress = ctx.progress
        for i in range(n):
            progress(i, total=n)

    engine.register("flood", flood)
    received = [0]

    def on_progress(ev):
        received[0] += 1

    engine.on("job-progress", on_progress)
    engine.start()
    t0 = time.perf_counter()
    handles = engine.enqueue_many("flood", [None] * jobs)
    for h in handles:
        h.wait(600)
    engine.flush_events()
    secs = time.perf_counter() - t0
    local = engine._core.local_stats()
    engine.stop()
    return {
        "events": received[0],
        "updates": n * jobs,
        "seconds": secs,
        "events_per_s": received[0] / secs,
        "coalesced": local["events_coalesced"],
    }


def child_rss(spec: dict) -> dict:
    """W8: resident memory of a process with an engine started on the file. No processor is
    registered for the queued jobs' type, so they stay queued (the dispatcher ignores them)."""
    jf = _jobforge()
    engine = jf.Engine(spec["path"], workers=WORKERS)
    engine.start()
    time.sleep(1.0)  # a few dispatcher and maintenance cycles
    stats = engine.stats()
    rss, hwm = vm_kb("VmRSS"), vm_kb("VmHWM")
    engine.stop()
    return {"rss_mb": rss / 1024, "hwm_mb": hwm / 1024, "queued": stats["queued"]}


def child_peer_jobforge(spec: dict) -> dict:
    """The peers' workload through jobforge: a Python no-op processor, 2 worker threads."""
    jf = _jobforge()
    engine = jf.Engine(spec["path"], workers=WORKERS)
    engine.register("pynoop", lambda ctx, payload: None)
    n = spec["n"]
    t0 = time.perf_counter()
    for i in range(n):
        engine.enqueue("pynoop", {"i": i})
    enq = time.perf_counter() - t0
    out = _drain(engine, n, spec["cap"])
    return {"enqueue_rate": n / enq, "drain_rate": out["rate"], "capped": out["capped"]}


# ---- peers -----------------------------------------------------------------------------------

PEER_MODULES = {
    "huey": """
        import os, redis
        from huey import RedisHuey
        P, URL = os.environ["BENCH_PREFIX"], os.environ["BENCH_REDIS"]
        huey = RedisHuey(P + "huey", url=URL)
        _r = None

        @huey.task()
        def noop(i):
            global _r
            if _r is None:
                _r = redis.Redis.from_url(URL)
            _r.incr(P + "done")
        """,
    "rq": """
        import os, redis
        P, URL = os.environ["BENCH_PREFIX"], os.environ["BENCH_REDIS"]
        _r = None

        def noop(i):
            global _r
            if _r is None:
                _r = redis.Redis.from_url(URL)
            _r.incr(P + "done")
        """,
    "celery": """
        import os, redis
        from celery import Celery
        P, URL = os.environ["BENCH_PREFIX"], os.environ["BENCH_REDIS"]
        app = Celery(P + "app", broker=URL)
        app.conf.update(task_ignore_result=True, task_default_queue=P + "celery",
                        broker_transport_options={"global_keyprefix": P},
                        worker_hijack_root_logger=False)
        _r = None

        @app.task
        def noop(i):
            global _r
            if _r is None:
                _r = redis.Redis.from_url(URL)
            _r.incr(P + "done")
        """,
    "dramatiq": """
        import os, redis, dramatiq
        from dramatiq.brokers.redis import RedisBroker
        P, URL = os.environ["BENCH_PREFIX"], os.environ["BENCH_REDIS"]
        dramatiq.set_broker(RedisBroker(url=URL, namespace=P + "dramatiq"))
        _r = None

        @dramatiq.actor(queue_name="bench", max_retries=0)
        def noop(i):
            global _r
            if _r is None:
                _r = redis.Redis.from_url(URL)
            _r.incr(P + "done")
        """,
}


def _peer_worker_cmds(name: str, mod: str, queue: str, url: str) -> list[list[str]]:
    py = sys.executable
    if name == "huey":  # the consumer with 2 worker processes
        return [
            [
                py,
                "-m",
                "huey.bin.huey_consumer",
                f"{mod}.huey",
                "-w",
                "2",
                "-k",
                "process",
                "-q",
                "-C",
            ]
        ]
    if name == "rq":  # two `rq worker` processes (each forks a work horse per job, rq's default)
        cmd = [py, "-m", "rq.cli", "worker", "--url", url, "--quiet", queue]
        return [cmd, cmd]
    if name == "celery":  # prefork pool, concurrency = cores
        return [
            [
                py,
                "-m",
                "celery",
                "-A",
                mod,
                "worker",
                "-c",
                "2",
                "-P",
                "prefork",
                "-Q",
                queue,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ]
        ]
    if name == "dramatiq":  # 2 processes, default 8 threads each
        return [[py, "-m", "dramatiq", mod, "-p", "2"]]
    raise ValueError(name)


def child_peer(spec: dict) -> dict:
    """A peer: enqueue n no-op tasks one call at a time, then drain them with its own worker
    (2 processes). Each task increments a Redis counter, so completion is observable."""
    import importlib

    import redis

    name, n, url, workdir = spec["name"], spec["n"], spec["redis"], Path(spec["workdir"])
    prefix = f"jfbench-{os.getpid()}-"
    mod = f"{name}_bench_tasks"
    (workdir / f"{mod}.py").write_text(textwrap.dedent(PEER_MODULES[name]))
    os.environ.update(BENCH_PREFIX=prefix, BENCH_REDIS=url)
    os.environ["PYTHONPATH"] = str(workdir) + os.pathsep + os.environ.get("PYTHONPATH", "")
    sys.path.insert(0, str(workdir))
    tasks = importlib.import_module(mod)
    r = redis.Redis.from_url(url)
    r.ping()
    counter = prefix + "done"
    queue = prefix + ("celery" if name == "celery" else name)

    if name == "huey":
        enqueue = tasks.noop
    elif name == "rq":
        from rq import Queue

        q = Queue(queue, connection=redis.Redis.from_url(url))

        def enqueue(i):
            q.enqueue(tasks.noop, i)
    elif name == "celery":
        enqueue = tasks.noop.delay
    else:
        enqueue = tasks.noop.send

    procs: list[subprocess.Popen] = []
    try:
        t0 = time.perf_counter()
        for i in range(n):
            enqueue(i)
        enq = time.perf_counter() - t0
        for cmd in _peer_worker_cmds(name, mod, queue, url):
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=workdir,
                    env=os.environ.copy(),
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        boot_deadline = time.perf_counter() + 60
        while int(r.get(counter) or 0) < 1:
            if time.perf_counter() > boot_deadline or any(p.poll() is not None for p in procs):
                err = b"".join(p.stderr.read() if p.poll() is not None else b"" for p in procs)
                raise RuntimeError(f"{name} worker did not start: {err.decode()[-800:]}")
            time.sleep(0.002)
        t_first = time.perf_counter()
        first = int(r.get(counter) or 0)
        while True:
            done = int(r.get(counter) or 0)
            now = time.perf_counter()
            if done >= n or now - t_first > spec["cap"]:
                break
            time.sleep(0.005)
        rate = (done - first) / (now - t_first) if done > first else None
        return {"enqueue_rate": n / enq, "drain_rate": rate, "done": done, "capped": done < n}
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)  # the session this run started for the worker
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        patterns = [prefix + "*"] + (["rq:*"] if name == "rq" else [])
        for pattern in patterns:
            keys = list(r.scan_iter(pattern, count=1000))
            for k in range(0, len(keys), 500):
                r.delete(*keys[k : k + 500])
        if name == "huey":
            for key in r.scan_iter("huey.*" + prefix + "*"):
                r.delete(key)


CHILD_FUNCS: dict[str, Callable[[dict], dict]] = {
    "enqueue_single": child_enqueue_single,
    "enqueue_threads": child_enqueue_threads,
    "enqueue_many": child_enqueue_many,
    "drain_native": child_drain_native,
    "drain_python": child_drain_python,
    "latency": child_latency,
    "w6_children": child_w6_children,
    "queries": child_queries,
    "progress": child_progress,
    "progress_flood": child_progress_flood,
    "rss": child_rss,
    "peer_jobforge": child_peer_jobforge,
    "peer": child_peer,
}


def child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    exec(BOOTSTRAP, {})  # before anything imports jobforge
    try:
        result = CHILD_FUNCS[spec["kind"]](spec)
    except BaseException:  # noqa: BLE001 - the parent reports it
        traceback.print_exc()
        return 1
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# =============================================================================================
# Parent side
# =============================================================================================


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode = "quick" if args.quick else "full"
        self.sizes = SIZES[self.mode]
        self.caps = CAPS[self.mode]
        self.runs = max(1, args.runs)
        self.tmp = Path(tempfile.mkdtemp(prefix="jobforge-bench-", dir=args.tmpdir))
        self.env = os.environ.copy()
        self.rows: list[dict] = []
        self.raw: dict[str, Any] = {}
        self.templates: dict[tuple, Path] = {}
        self.meta: dict[str, Any] = {}
        self.counter = 0

    # ---- set-up ------------------------------------------------------------------------------

    def build_limit(self) -> None:
        newest = max(LIMIT_SRC.stat().st_mtime, LIMIT_HDR.stat().st_mtime)
        if LIMIT_BIN.exists() and LIMIT_BIN.stat().st_mtime >= newest:
            return
        BUILD.mkdir(parents=True, exist_ok=True)
        cmd = [
            "g++",
            "-O2",
            "-std=c++17",
            "-Wall",
            "-Wextra",
            f"-I{ROOT / 'cpp' / 'src'}",
            str(LIMIT_SRC),
            "-lsqlite3",
            "-o",
            str(LIMIT_BIN),
        ]
        log("building " + " ".join(cmd))
        subprocess.run(cmd, check=True)

    def build_progress_native(self) -> Path:
        """The native W7 program, built with the engine by CMake (Release) into build/bench/."""
        out_dir = BUILD / "cmake"
        cmd = ["cmake", "-S", str(ROOT), "-B", str(out_dir), "-G", "Ninja",
               "-DCMAKE_BUILD_TYPE=Release", "-DJOBFORGE_BUILD_TESTS=OFF",
               "-DJOBFORGE_BUILD_BENCH=ON"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        subprocess.run(["cmake", "--build", str(out_dir), "--target", "progress_native"],
                       check=True, capture_output=True)  # fmt: skip
        return out_dir / "progress_native"

    def snapshot_package(self) -> None:
        """Imports jobforge once (this may rebuild the extension) and, unless --no-snapshot,
        copies the package and its built extension so every trial runs the same build."""
        for attempt in range(4):
            r = subprocess.run(
                [sys.executable, "-c", "import jobforge, jobforge._core as c; print(c.__file__)"],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if r.returncode == 0:
                so = Path(r.stdout.strip().splitlines()[-1])
                break
            log(f"import jobforge failed (a concurrent rebuild?), retrying: {r.stderr[-300:]}")
            time.sleep(15 * (attempt + 1))
        else:
            raise SystemExit("cannot import jobforge: " + r.stderr[-2000:])
        self.meta["extension"] = str(so)
        self.meta["extension_mtime"] = _dt.datetime.fromtimestamp(so.stat().st_mtime).isoformat(
            timespec="seconds"
        )
        if self.args.no_snapshot:
            return
        pkg = self.tmp / "pkg"
        shutil.copytree(
            ROOT / "python" / "jobforge",
            pkg / "jobforge",
            ignore=shutil.ignore_patterns("__pycache__", "*.so"),
        )
        shutil.copy2(so, pkg / "jobforge" / so.name)
        self.env["JOBFORGE_BENCH_PKG"] = str(pkg)

    def collect_meta(self) -> None:
        def git(*a: str) -> str:
            r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
            return r.stdout.strip()

        dirty = git("status", "--porcelain", "--", "cpp", "bindings", "python")
        self.meta.update(
            commit=git("rev-parse", "--short", "HEAD") or "unknown",
            dirty=bool(dirty),
            date=_dt.datetime.now().isoformat(timespec="seconds"),
            store=f"sqlite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL)",
            workers=WORKERS,
            cores=os.cpu_count(),
            cores_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            loadavg=os.getloadavg(),
            python=platform.python_version(),
            mode=self.mode,
            runs=self.runs,
            sizes=self.sizes,
        )

    # ---- running pieces ----------------------------------------------------------------------

    def fresh(self, name: str) -> Path:
        self.counter += 1
        d = self.tmp / f"{self.counter:03d}-{name}"
        d.mkdir()
        return d / "jobs.db"

    def child(self, kind: str, timeout: float = 900, **spec: Any) -> dict:
        spec["kind"] = kind
        r = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=self.tmp,
        )
        for line in reversed(r.stdout.splitlines()):
            if line.startswith("RESULT "):
                return json.loads(line[7:])
        raise RuntimeError(f"child {kind} failed (exit {r.returncode}): {r.stderr.strip()[-1500:]}")

    def limit(
        self, path: Path, mode: str, n: int, batch: int = 0, type_: str = "noop", bulk=False
    ) -> dict:
        cmd = [str(LIMIT_BIN), str(path), mode, str(n), str(batch), f"--type={type_}"]
        if bulk:
            cmd.append("--bulk")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"sqlite_limit {mode} failed: {r.stderr.strip()[-800:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def template(self, n: int, type_: str) -> Path:
        """A database with n queued jobs of one type, made once by the raw program (the same
        INSERT statement as the engine's) and copied for every trial."""
        key = (n, type_)
        if key not in self.templates:
            path = self.fresh(f"template-{type_}-{n}")
            t0 = time.perf_counter()
            self.limit(path, "insert-batch", n, 50_000, type_, bulk=True)
            log(f"template {n:,} queued '{type_}' jobs in {time.perf_counter() - t0:.1f} s")
            self.templates[key] = path
        return self.templates[key]

    def copy_of(self, template: Path, name: str) -> Path:
        path = self.fresh(name)
        shutil.copyfile(template, path)
        return path

    def drop(self, path: Path) -> None:
        shutil.rmtree(path.parent, ignore_errors=True)

    def row(
        self,
        wid: str,
        what: str,
        figure: Optional[float],
        unit: str,
        baseline: Optional[float] = None,
        baseline_what: str = "",
        target: str = "",
        met: Optional[bool] = None,
        note: str = "",
        trials: Any = None,
    ) -> None:
        ratio = figure / baseline if figure is not None and baseline else None
        self.rows.append(
            dict(
                workload=wid,
                what=what,
                figure=figure,
                unit=unit,
                baseline=baseline,
                baseline_what=baseline_what,
                ratio=ratio,
                target=target,
                met=met,
                note=note,
                trials=trials,
            )
        )

    def failed(self, wid: str, what: str, exc: BaseException) -> None:
        log(f"{wid} failed: {exc}")
        self.row(wid, what, None, "", note=f"FAILED: {str(exc).strip().splitlines()[-1][:200]}")

    # ---- workloads ---------------------------------------------------------------------------

    def w1(self) -> None:
        n = self.sizes["W1"]
        eng, raw = [], []
        for k in range(self.runs):
            log(f"W1 trial {k + 1}/{self.runs}: {n:,} single enqueues (and the raw limit)")
            p = self.fresh("w1-raw")
            raw.append(self.limit(p, "insert-single", min(n, RAW_MAX["insert-single"]))["rate"])
            self.drop(p)
            p = self.fresh("w1")
            eng.append(self.child("enqueue_single", path=str(p), n=n)["rate"])
            self.drop(p)
        fig, base = median(eng), median(raw)
        self.raw["W1"] = {"engine": eng, "limit_insert_single": raw}
        self.row(
            "W1",
            "enqueue, 1 thread, durable each",
            fig,
            "jobs/s",
            base,
            "raw: 1 insert/txn",
            "≥ 0.80 × raw",
            fig / base >= 0.8,
            trials=eng,
        )

    def w1b(self) -> None:
        n = self.sizes["W1b"]
        eng, raw = [], []
        for k in range(self.runs):
            log(f"W1b trial {k + 1}/{self.runs}: {n:,} enqueues from {W1B_THREADS} threads")
            p = self.fresh("w1b-raw")
            raw.append(self.limit(p, "insert-single", min(n, RAW_MAX["insert-single"]))["rate"])
            self.drop(p)
            p = self.fresh("w1b")
            eng.append(self.child("enqueue_threads", path=str(p), n=n, threads=W1B_THREADS)["rate"])
            self.drop(p)
        fig, base = median(eng), median(raw)
        self.raw["W1b"] = {"engine": eng, "limit_insert_single": raw}
        self.row(
            "W1b",
            f"enqueue, {W1B_THREADS} threads, durable each",
            fig,
            "jobs/s",
            base,
            "raw: 1 insert/txn",
            "≥ 50,000/s",
            fig >= 50_000,
            note="ratio > 1: group commit shares commits",
            trials=eng,
        )

    def w2(self) -> None:
        n = self.sizes["W2"]
        eng, raw = [], []
        for k in range(self.runs):
            log(f"W2 trial {k + 1}/{self.runs}: enqueue_many {n:,} in chunks of {ENQUEUE_CHUNK:,}")
            p = self.fresh("w2-raw")
            k_raw = min(n, RAW_MAX["insert-batch"])
            raw.append(self.limit(p, "insert-batch", k_raw, ENQUEUE_CHUNK)["rate"])
            self.drop(p)
            p = self.fresh("w2")
            eng.append(self.child("enqueue_many", path=str(p), n=n, chunk=ENQUEUE_CHUNK)["rate"])
            self.drop(p)
        fig, base = median(eng), median(raw)
        self.raw["W2"] = {"engine": eng, "limit_insert_batch": raw}
        self.row(
            "W2",
            f"enqueue_many ({ENQUEUE_CHUNK:,}/call)",
            fig,
            "jobs/s",
            base,
            f"raw: {ENQUEUE_CHUNK:,} inserts/txn",
            "≥ 0.80 × raw",
            fig / base >= 0.8,
            trials=eng,
        )

    def w3(self) -> None:
        n = self.sizes["W3"]
        tpl = self.template(n, "noop")
        eng, two, one, notes = [], [], [], set()
        for k in range(self.runs):
            log(f"W3 trial {k + 1}/{self.runs}: drain {n:,} native noop jobs, {WORKERS} workers")
            p = self.copy_of(tpl, "w3-raw2")
            two.append(self.limit(p, "lifecycle", min(n, RAW_MAX["lifecycle"]), 64)["rate"])
            self.drop(p)
            p = self.copy_of(tpl, "w3-raw1")
            one.append(self.limit(p, "lifecycle-one", min(n, RAW_MAX["lifecycle"]), 512)["rate"])
            self.drop(p)
            p = self.copy_of(tpl, "w3")
            out = self.child(
                "drain_native", path=str(p), n=n, workers=WORKERS, cap=self.caps["drain"]
            )
            eng.append(out["rate"])
            if out["capped"]:
                notes.add(f"capped at {self.caps['drain']:.0f} s: rate over the jobs done")
            self.drop(p)
        fig = median(eng)
        self.raw["W3"] = {"engine": eng, "limit_lifecycle_2w": two, "limit_lifecycle_1w": one}
        self.row(
            "W3",
            f"drain native noop, {WORKERS} workers",
            fig,
            "jobs/s",
            median(two),
            "raw: claim 64 + finish 64/txn",
            "≥ 100,000/s",
            fig >= 100_000,
            note="; ".join(sorted(notes)),
            trials=eng,
        )
        self.row(
            "W3",
            "  same, vs the one-write limit",
            fig,
            "jobs/s",
            median(one),
            "raw: 1 write/job, 512/txn",
            "",
            None,
        )

    def w4(self) -> None:
        n = self.sizes["W4"]
        tpl = self.template(n, "pynoop")
        eng, loop, notes = [], [], set()
        for k in range(self.runs):
            log(f"W4 trial {k + 1}/{self.runs}: drain {n:,} Python no-op jobs, {WORKERS} workers")
            p = self.copy_of(tpl, "w4")
            out = self.child(
                "drain_python", path=str(p), n=n, workers=WORKERS, cap=self.caps["drain"]
            )
            eng.append(out["rate"])
            loop.append(out["loop_rate"])
            if out["capped"]:
                notes.add(f"capped at {self.caps['drain']:.0f} s")
            self.drop(p)
        fig, base = median(eng), median(loop)
        overhead = (1 / fig - 1 / base) * 1e6
        notes.add(f"engine cost ≈ {overhead:.1f} µs/job over the loop")
        self.raw["W4"] = {"engine": eng, "plain_loop": loop}
        self.row(
            "W4",
            f"drain Python no-op, {WORKERS} workers",
            fig,
            "jobs/s",
            base,
            "plain loop: decode+call+encode",
            "≥ 30,000/s",
            fig >= 30_000,
            note="; ".join(sorted(notes)),
            trials=eng,
        )

    def w5(self) -> None:
        n = self.sizes["W5"]
        outs = []
        for k in range(self.runs):
            log(f"W5 trial {k + 1}/{self.runs}: {n:,} sequential enqueue→start latencies")
            p = self.fresh("w5")
            outs.append(self.child("latency", path=str(p), n=n))
            self.drop(p)
        p50 = median([o["p50_ms"] for o in outs])
        p99 = median([o["p99_ms"] for o in outs])
        enq50 = median([o["enqueue_p50_ms"] for o in outs])
        self.raw["W5"] = outs
        self.row(
            "W5",
            "enqueue→start p50",
            p50,
            "ms",
            target="≤ 0.2 ms",
            met=p50 <= 0.2,
            note=f"of which enqueue's durable commit p50 {enq50:.3f} ms",
            trials=[o["p50_ms"] for o in outs],
        )
        self.row(
            "W5",
            "enqueue→start p99",
            p99,
            "ms",
            target="≤ 1 ms",
            met=p99 <= 1.0,
            trials=[o["p99_ms"] for o in outs],
        )

    def w6_template(self, n: int) -> tuple[Path, str]:
        path = self.template(n, "email")
        w6 = self.fresh("w6-template")
        shutil.copyfile(path, w6)
        t0 = time.perf_counter()
        con = sqlite3.connect(w6)
        with con:
            # Four types; 60% completed, 10% failed, 5% cancelled, 5% running, 20% queued.
            con.execute("""
                UPDATE jobs SET
                  type = CASE rowid % 4 WHEN 0 THEN 'email' WHEN 1 THEN 'resize'
                                        WHEN 2 THEN 'report' ELSE 'sync' END,
                  status = CASE WHEN (rowid / 4) % 20 < 12 THEN 'completed'
                                WHEN (rowid / 4) % 20 < 14 THEN 'failed'
                                WHEN (rowid / 4) % 20 < 15 THEN 'cancelled'
                                WHEN (rowid / 4) % 20 < 16 THEN 'running'
                                ELSE 'queued' END
            """)
            con.execute("""
                UPDATE jobs SET attempts = 1, started_at = created_at + 5,
                  completed_at = CASE WHEN status = 'running' THEN NULL ELSE created_at + 10 END,
                  result = CASE WHEN status = 'completed' THEN '{"ok":true}' END,
                  error = CASE WHEN status = 'failed' THEN 'ValueError: bad input' END
                WHERE status <> 'queued'
            """)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        from jobforge import db as jobforge_db

        jobforge_db.recount(str(w6))  # the statuses were set by hand: count them
        parent = self.child("w6_children", path=str(w6), children=CHILDREN)["parent"]
        log(
            f"W6 file: {n:,} mixed jobs + {CHILDREN:,} children in {time.perf_counter() - t0:.1f} s"
        )
        return w6, parent

    def w6(self) -> None:
        n = self.sizes["W6"]
        tpl, parent = self.w6_template(n)
        outs = []
        for k in range(self.runs):
            log(f"W6 trial {k + 1}/{self.runs}: queries on {n + CHILDREN:,} jobs")
            p = self.copy_of(tpl, "w6")
            out = self.child("queries", path=str(p), parent=parent, children=CHILDREN)
            if out["children_found"] != CHILDREN:
                raise RuntimeError(f"jobs(parent=…) found {out['children_found']} children")
            outs.append(out)
            self.drop(p)
        self.raw["W6"] = outs

        def m(key: str) -> float:
            return median([o[key] for o in outs])

        self.row(
            "W6",
            "get(id)",
            m("get_us"),
            "µs",
            target="≤ 50 µs",
            met=m("get_us") <= 50,
            note=f"p99 {m('get_p99_us'):.0f} µs; includes the Python Job wrapper",
        )
        self.row(
            "W6",
            "jobs(status=…) page of 100",
            m("page_ms"),
            "ms",
            target="≤ 1 ms",
            met=m("page_ms") <= 1.0,
            note="queued/completed/failed in turn",
        )
        self.row("W6", "stats()", m("stats_ms"), "ms", target="≤ 1 ms", met=m("stats_ms") <= 1.0)
        self.row(
            "W6",
            f"jobs(parent=…) {CHILDREN:,} children",
            m("children_ms"),
            "ms",
            target="≤ 10 ms",
            met=m("children_ms") <= 10.0,
            note="all children in one call (limit 10,010)",
        )

    def w7(self) -> None:
        n = self.sizes["W7"]
        outs = []
        for k in range(self.runs):
            log(f"W7 trial {k + 1}/{self.runs}: {n:,} ctx.progress calls from Python")
            p = self.fresh("w7")
            out = self.child("progress", path=str(p), n=n)
            if out["status"] != "completed":
                raise RuntimeError(f"progress job ended {out['status']}")
            outs.append(out)
            self.drop(p)
        self.raw["W7"] = outs
        fig = median([o["ns_per_call"] for o in outs])
        base = median([o["loop_ns_per_call"] for o in outs])
        evs = median([o["events_per_s"] for o in outs])
        self.row(
            "W7",
            "ctx.progress, Python processor",
            fig,
            "ns/call",
            base,
            "plain Python call, same args",
            "≤ 1,000 ns",
            fig <= 1000,
            note=f"{evs:.1f} progress events/s delivered to a Python callback (configured: 10/s)",
            trials=[o["ns_per_call"] for o in outs],
        )
        floods = []
        for _k in range(self.runs):
            p = self.fresh("w7f")
            floods.append(self.child("progress_flood", path=str(p), n=max(1000, n // 10), jobs=8))
            self.drop(p)
        self.raw["W7flood"] = floods
        ffig = median([o["events_per_s"] for o in floods])
        self.row(
            "W7",
            "progress events to a Python callback, flood",
            ffig,
            "events/s",
            note=(
                f"8 Python jobs x {max(1000, n // 10):,} updates, progress_interval=0 (every "
                f"update an event); {median([o['coalesced'] for o in floods]):,.0f} coalesced"
            ),
            trials=[o["events_per_s"] for o in floods],
        )
        binary = self.build_progress_native()
        native = []
        for _k in range(self.runs):
            p = self.fresh("w7n")
            r = subprocess.run([str(binary), str(p), str(n)], capture_output=True, text=True,
                               timeout=600)  # fmt: skip
            if r.returncode != 0:
                raise RuntimeError(f"progress_native failed: {r.stderr.strip()[-800:]}")
            native.append(json.loads(r.stdout.strip().splitlines()[-1]))
            self.drop(p)
        self.raw["W7native"] = native
        nfig = median([o["ns_per_call"] for o in native])
        nevs = median([o["events"] / o["seconds"] for o in native if o["seconds"] > 0])
        self.row(
            "W7",
            "ctx.progress, native processor",
            nfig,
            "ns/call",
            target="≤ 50 ns",
            met=nfig <= 50,
            note=f"{nevs:.1f} progress events/s delivered (configured: 10/s)",
            trials=[o["ns_per_call"] for o in native],
        )

    def w8(self) -> None:
        n = self.sizes["W8"]
        tpl = self.template(n, "bulk")
        outs, empty = [], []
        for k in range(self.runs):
            log(f"W8 trial {k + 1}/{self.runs}: RSS with {n:,} queued jobs")
            p = self.fresh("w8-empty")
            empty.append(self.child("rss", path=str(p)))
            self.drop(p)
            outs.append(self.child("rss", path=str(tpl)))
        self.raw["W8"] = {"engine": outs, "empty": empty}
        fig = median([o["rss_mb"] for o in outs])
        base = median([o["rss_mb"] for o in empty])
        queued = outs[0]["queued"]
        self.row(
            "W8",
            f"RSS, {n:,} queued jobs",
            fig,
            "MB",
            base,
            "same, empty file",
            "≤ 200 MB",
            fig <= 200,
            note=f"engine started, no processor for the jobs' type; stats() saw {queued:,} "
            f"queued; peak {median([o['hwm_mb'] for o in outs]):.0f} MB",
            trials=[o["rss_mb"] for o in outs],
        )

    def w9_trial(self, path: Path, procs_n: int, n: int, cap: float, check: bool = False) -> dict:
        """procs_n processes, each `jobforge.Engine(path, workers=2)`, started together; the clock
        runs from the start signal until the store counts n completed jobs. With check, the jobs
        are of type `w9check`, whose Python processor records every execution, so a job run twice
        (not only completed twice) is caught."""
        script = BOOTSTRAP + textwrap.dedent(f"""
            import os, sys, time, jobforge
            e = jobforge.Engine(sys.argv[1], workers={WORKERS})
            ran = []
            if {check!r}:
                def w9check(ctx, payload):
                    ran.append(ctx.job_id)
                    time.sleep(0.0005)  # long enough for every process to take part
                e.register("w9check", w9check)
            print("ready", flush=True)
            sys.stdin.readline()
            e.start()
            sys.stdin.readline()
            e.stop()
            if ran:
                with open(sys.argv[1] + ".ran." + str(os.getpid()), "w") as f:
                    f.write("\\n".join(ran))
            print("stopped", flush=True)
        """)
        errs = [open(path.parent / f"worker-{k}.err", "w+") for k in range(procs_n)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errs[k],
                text=True,
                env=self.env,
                cwd=self.tmp,
            )
            for k in range(procs_n)
        ]
        try:
            for k, p in enumerate(procs):
                if p.stdout.readline().strip() != "ready":
                    p.wait(30)
                    errs[k].seek(0)
                    raise RuntimeError("W9 worker failed: " + errs[k].read()[-800:])
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            q = "SELECT COALESCE(sum(n), 0) FROM job_type_counts WHERE status = 'completed'"
            t0 = time.perf_counter()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            while True:
                time.sleep(0.01)
                done = con.execute(q).fetchone()[0]
                elapsed = time.perf_counter() - t0
                if done >= n or elapsed > cap:
                    break
            con.close()
            for p in procs:
                p.stdin.write("stop\n")
                p.stdin.flush()
            for p in procs:
                p.wait(120)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for f in errs:
                f.close()
        con = sqlite3.connect(path)
        completed, not_one, total, running = con.execute(
            "SELECT sum(status = 'completed'), sum(status = 'completed' AND attempts <> 1), "
            "count(*), sum(status = 'running') FROM jobs"
        ).fetchone()
        cols = [r[1] for r in con.execute("PRAGMA table_info(workers)")]
        modes = []
        if "claim_mode" in cols:  # engines that claim in memory while alone on the file
            modes = [r[0] for r in con.execute("SELECT claim_mode FROM workers")]
        con.close()
        out = {
            "rate": done / elapsed,
            "seconds": elapsed,
            "completed": completed,
            "attempts_not_1": not_one,
            "total": total,
            "running_left": running,
            "capped": done < n,
            "claim_modes_at_end": modes,
        }
        if check:
            ids: list[str] = []
            for f in path.parent.glob(path.name + ".ran.*"):
                ids += [x for x in f.read_text().split("\n") if x]
            out["executions"] = len(ids)
            out["executed_twice"] = len(ids) - len(set(ids))
            out["processes_that_ran_jobs"] = len(list(path.parent.glob(path.name + ".ran.*")))
        return out

    def w9(self) -> None:
        n = self.sizes["W9"]
        tpl = self.template(n, "noop")
        raw: list[float] = []
        res: dict[int, list[dict]] = {k: [] for k in W9_PROCESSES}
        for k in range(self.runs):
            p = self.copy_of(tpl, "w9-raw")
            raw.append(self.limit(p, "lifecycle", min(n, RAW_MAX["lifecycle"]), 64)["rate"])
            self.drop(p)
            for procs_n in W9_PROCESSES:
                log(f"W9 trial {k + 1}/{self.runs}: {procs_n} process(es) drain {n:,} jobs")
                p = self.copy_of(tpl, f"w9-{procs_n}")
                res[procs_n].append(self.w9_trial(p, procs_n, n, self.caps["drain"]))
                self.drop(p)
        base = median(raw)
        self.raw["W9"] = {"limit_lifecycle_2w": raw, **{str(k): v for k, v in res.items()}}
        for procs_n, outs in res.items():
            fig = median([o["rate"] for o in outs])
            ok = all(
                o["completed"] == n and o["attempts_not_1"] == 0 and o["total"] == n for o in outs
            )
            bad = [o for o in outs if not (o["completed"] == n and o["attempts_not_1"] == 0)]
            rates = sorted(o["rate"] for o in outs)
            note = f"trials {fmt_num(rates[0])}–{fmt_num(rates[-1])}/s; "
            modes = sorted({m for o in outs for m in o["claim_modes_at_end"]})
            if modes:
                note += f"claim modes seen at the end: {', '.join(modes)}; "
            note += (
                "all completed once"
                if ok
                else "LOST/DUPLICATE/UNFINISHED: "
                + "; ".join(
                    f"completed {o['completed']}/{n}, attempts≠1: {o['attempts_not_1']}"
                    + (" (capped)" if o["capped"] else "")
                    for o in bad
                )
            )
            self.row(
                "W9",
                f"{procs_n} process(es) × {WORKERS} workers",
                fig,
                "jobs/s",
                base,
                "raw: claim 64 + finish 64/txn",
                "≥ 0.80 × raw; none lost",
                ok and fig / base >= 0.8,
                note=note,
                trials=[o["rate"] for o in outs],
            )
        # Exactly-once check: a Python processor records each execution (one trial each).
        n_check = W9_CHECK_JOBS
        tpl = self.template(n_check, "w9check")
        checks = {}
        for procs_n in [k for k in W9_PROCESSES if k > 1]:
            log(f"W9 check: {procs_n} processes, {n_check:,} jobs, every execution recorded")
            p = self.copy_of(tpl, f"w9-check-{procs_n}")
            o = self.w9_trial(p, procs_n, n_check, self.caps["drain"], check=True)
            checks[procs_n] = o
            self.drop(p)
            ok = (
                o["completed"] == n_check
                and o["attempts_not_1"] == 0
                and o["executions"] == n_check
                and o["executed_twice"] == 0
            )
            self.row(
                "W9",
                f"  exactly-once check, {procs_n} processes",
                o["executions"],
                "runs",
                n_check,
                "jobs",
                "each job run once",
                ok,
                note=f"a Python processor (0.5 ms each) records every run: {o['executed_twice']} "
                f"jobs ran twice, {o['completed']:,} completed, {o['processes_that_ran_jobs']} of "
                f"{procs_n} processes ran jobs (1 trial)",
            )
        self.raw["W9"]["checks"] = checks

    # ---- peers -------------------------------------------------------------------------------

    def peers(self) -> None:
        n = self.sizes["peers"]
        cap = self.caps["peer"]
        url = self.args.redis_url
        log(f"peers: {n:,} no-op tasks each (enqueue one by one, then drain)")
        jf_out = []
        for _ in range(self.runs):
            p = self.fresh("peer-jobforge")
            jf_out.append(self.child("peer_jobforge", path=str(p), n=n, cap=cap))
            self.drop(p)
        jf_enq = median([o["enqueue_rate"] for o in jf_out])
        jf_drain = median([o["drain_rate"] for o in jf_out])
        self.raw["peers"] = {"jobforge": jf_out}
        self.row(
            "peers",
            "jobforge enqueue (1 thread)",
            jf_enq,
            "jobs/s",
            note="durable on return (SQLite)",
        )
        self.row("peers", f"jobforge drain (Python no-op, {WORKERS} threads)", jf_drain, "jobs/s")
        try:
            import redis

            redis.Redis.from_url(url).ping()
        except Exception as exc:  # noqa: BLE001
            self.row(
                "peers",
                "huey, rq, celery, dramatiq",
                None,
                "",
                note=f"skipped: Redis not reachable at {url} ({exc})",
            )
            return
        import importlib.util

        for name in ("huey", "rq", "celery", "dramatiq"):
            if importlib.util.find_spec(name) is None:
                self.row(
                    "peers", name, None, "", note=f"skipped: not installed (pip install {name})"
                )
                continue
            outs = []
            try:
                for k in range(self.runs):
                    log(f"peers: {name} trial {k + 1}/{self.runs}")
                    wd = self.fresh(f"peer-{name}").parent
                    outs.append(
                        self.child(
                            "peer",
                            name=name,
                            n=n,
                            cap=cap,
                            redis=url,
                            workdir=str(wd),
                            timeout=cap + 300,
                        )
                    )
            except Exception as exc:  # noqa: BLE001
                self.failed("peers", name, exc)
                continue
            self.raw["peers"][name] = outs
            enq = median([o["enqueue_rate"] for o in outs])
            drain = median([o["drain_rate"] for o in outs])
            capped = any(o["capped"] for o in outs)
            self.row(
                "peers",
                f"{name} enqueue (1 thread)",
                enq,
                "jobs/s",
                jf_enq,
                "jobforge, same run",
                note="Redis; not fsync'd on return",
            )
            self.row(
                "peers",
                f"{name} drain ({_PEER_SETUP[name]})",
                drain,
                "jobs/s",
                jf_drain,
                "jobforge, same run",
                note=("capped: rate over the tasks done; " if capped else "")
                + "from first completion; each task INCRs a Redis counter",
            )

    # ---- the run -----------------------------------------------------------------------------

    def run(self, only: list[str]) -> None:
        table = {
            "W1": self.w1,
            "W1b": self.w1b,
            "W2": self.w2,
            "W3": self.w3,
            "W4": self.w4,
            "W5": self.w5,
            "W6": self.w6,
            "W7": self.w7,
            "W8": self.w8,
            "W9": self.w9,
        }
        for wid in only:
            t0 = time.perf_counter()
            try:
                table[wid]()
            except Exception as exc:  # noqa: BLE001 - one failing workload does not end the run
                traceback.print_exc()
                self.failed(wid, "(workload)", exc)
            log(f"{wid} took {time.perf_counter() - t0:.0f} s")
        if self.args.peers:
            t0 = time.perf_counter()
            try:
                self.peers()
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                self.failed("peers", "(peers)", exc)
            log(f"peers took {time.perf_counter() - t0:.0f} s")


_PEER_SETUP = {
    "huey": "consumer -w 2 -k process",
    "rq": "2 × rq worker, fork per job",
    "celery": "prefork -c 2",
    "dramatiq": "-p 2, 8 threads",
}


def fmt_num(v: Optional[float]) -> str:
    if v is None:
        return "—"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(v: Optional[float]) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if v >= 0.1 else f"{v:.3f}"


def render(meta: dict, rows: list[dict]) -> str:
    head = (
        f"jobforge benchmarks — commit {meta['commit']}{' (+uncommitted engine changes)' if meta['dirty'] else ''}"
        f", {meta['date']}, store {meta['store']}, workers {meta['workers']}, cores {meta['cores']}"
        f", {meta['mode']} sizes, median of {meta['runs']}, load {meta['loadavg'][0]:.1f} at start"
    )
    cols = [
        "workload",
        "figure",
        "value",
        "unit",
        "baseline (same run)",
        "base",
        "ratio",
        "target",
        "met",
    ]
    lines = []
    for r in rows:
        met = "—" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(
            [
                r["workload"],
                r["what"],
                fmt_num(r["figure"]),
                r["unit"],
                r["baseline_what"],
                fmt_num(r["baseline"]),
                fmt_ratio(r["ratio"]),
                r["target"],
                met,
            ]
        )
    widths = [
        max(len(c), *(len(x[i]) for x in lines)) if lines else len(c) for i, c in enumerate(cols)
    ]
    right = {2, 5, 6}

    def fmt_line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    out = [head, "", fmt_line(cols), fmt_line(["-" * w for w in widths])]
    out += [fmt_line(x) for x in lines]
    notes = [f"  {r['workload']} {r['what'].strip()}: {r['note']}" for r in rows if r["note"]]
    if notes:
        out += ["", "notes:"] + notes
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes: about a minute in all")
    ap.add_argument(
        "--only", default="", help="comma-separated workloads, e.g. W1,W3 (default all)"
    )
    ap.add_argument("--json", dest="json_out", default=None, help="where to write the JSON")
    ap.add_argument("--peers", action="store_true", help="also huey, rq, celery, dramatiq")
    ap.add_argument("--runs", type=int, default=3, help="trials per figure (median; default 3)")
    ap.add_argument("--tmpdir", default=None, help="where the temporary databases go")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/11", help="for --peers")
    ap.add_argument(
        "--no-snapshot",
        action="store_true",
        help="run the live editable install (may rebuild mid-run) instead of a copy",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        return child_main(args.child)

    wanted = {w.strip().lower() for w in args.only.split(",") if w.strip()}
    if "peers" in wanted:  # --only peers: the peers' rows alone
        args.peers = True
        wanted.discard("peers")
        wanted = wanted or {"none"}
    if "w10" in wanted:  # --only W10: PostgreSQL beside SQLite (needs a server; its own table)
        wanted.discard("w10")
        w10 = [sys.executable, str(Path(__file__).with_name("w10_postgres.py")), "--runs"]
        w10.append(str(args.runs))
        if args.quick:
            w10 += ["--jobs", "5000", "--single", "1000"]
        code = subprocess.call(w10)
        if code or not wanted:
            return code
    unknown = wanted - {w.lower() for w in ALL_WORKLOADS} - {"none"}
    if unknown:
        known = ", ".join(ALL_WORKLOADS)
        ap.error(f"unknown workload(s) {', '.join(sorted(unknown))}; known: {known}, peers")
    only = [w for w in ALL_WORKLOADS if not wanted or w.lower() in wanted]

    runner = Runner(args)
    t0 = time.perf_counter()
    try:
        runner.collect_meta()
        runner.build_limit()
        runner.snapshot_package()
        log(
            f"mode {runner.mode}, {runner.runs} runs, temp {runner.tmp}, workloads {','.join(only)}"
        )
        runner.run(only)
    finally:
        if not args.keep:
            shutil.rmtree(runner.tmp, ignore_errors=True)
    runner.meta["seconds"] = round(time.perf_counter() - t0, 1)
    text = render(runner.meta, runner.rows)
    print(text)
    out = (
        Path(args.json_out)
        if args.json_out
        else (RESULTS / f"{_dt.date.today().isoformat()}-{runner.meta['commit']}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"meta": runner.meta, "rows": runner.rows, "raw": runner.raw, "table": text},
            indent=1,
            default=str,
        )
    )
    log(f"wrote {out} ({runner.meta['seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
