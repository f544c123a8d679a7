"""Faults that last (issue 21): a store outage longer than the lease, and clock steps of one
process. Real worker processes on a SQLite file and on a private PostgreSQL server (started here
with initdb/pg_ctl, stopped and started for outages; the machine's main server is never touched).
A SQLite "outage" is another process holding the file's write lock: nobody can write, heartbeats
included. Clock steps are simulated per process with the test-only JOBFORGE_TEST_CLOCK_OFFSET_MS
(from the start) or a step file the worker watches (in the middle of a run).

Every execution is recorded by the processor with one fsync'd O_APPEND write, so the count of
runs is exact."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import jobforge
from jobforge import _core

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import soak_faults  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX processes")

WAIT = 60  # guards against hangs only
HOUR_MS = 3_600_000

WORKER = textwrap.dedent(
    r"""
    import os, sys, threading, time
    import jobforge
    from jobforge import _core

    url, out, name, enqueue = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    engine = jobforge.Engine(url, workers=2, heartbeat_interval=0.15, lease=1.5,
                             poll_interval=0.1, claim_in_memory=False)
    fd = os.open(os.path.join(out, f"runs-{name}.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def note(line):
        os.write(fd, (line + "\n").encode())  # one write: atomic with O_APPEND
        os.fsync(fd)

    @engine.processor("hold", max_attempts=3)
    def hold(ctx, payload):
        note(f"start {ctx.job_id} {ctx.attempt} {os.getpid()}")
        time.sleep(payload["seconds"])
        note(f"end {ctx.job_id} {ctx.attempt} {os.getpid()}")
        return {"pid": os.getpid()}

    @engine.processor("loop", max_attempts=3)
    def loop(ctx, payload):  # works until done or asked to stop
        note(f"start {ctx.job_id} {ctx.attempt} {os.getpid()}")
        deadline = time.monotonic() + payload["seconds"]
        while time.monotonic() < deadline:
            if ctx.cancelled:
                note(f"stopped {ctx.job_id} {ctx.attempt} {os.getpid()}")
                return None
            time.sleep(0.02)
        note(f"end {ctx.job_id} {ctx.attempt} {os.getpid()}")
        return {"pid": os.getpid()}

    def watch_step():  # a clock step in the middle of the run, on request
        path = os.path.join(out, f"step-{name}")
        while not os.path.exists(path):
            time.sleep(0.02)
        _core._set_test_clock_offset_ms(int(open(path).read()))
        note("stepped")

    threading.Thread(target=watch_step, daemon=True).start()
    engine.start()
    ids = [j.id for j in engine.enqueue_many("hold", [{"seconds": 4.0}] * enqueue)]
    print("READY", engine.worker_id, *ids, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    engine.stop(wait=False)
    """
)


class Worker:
    def __init__(self, url, out, name, clock_offset_ms=0, enqueue=0):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        if clock_offset_ms:
            env["JOBFORGE_TEST_CLOCK_OFFSET_MS"] = str(clock_offset_ms)
        self.out, self.name = out, name
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, url, str(out), name, str(enqueue)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        line = self.process.stdout.readline()
        assert line.startswith("READY"), f"worker {name} did not start: {line!r}"
        self.enqueued = line.split()[2:]  # ids of the jobs it enqueued itself

    def step(self, offset_ms):
        path = os.path.join(self.out, f"step-{self.name}")
        with open(path + ".tmp", "w") as fh:
            fh.write(str(offset_ms))
        os.rename(path + ".tmp", path)

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def runs(out):
    lines = []
    for name in sorted(os.listdir(out)):
        if name.startswith("runs-"):
            with open(os.path.join(out, name)) as fh:
                lines.extend(line.split() for line in fh if line.strip())
    return lines


def starts(out):
    return [line for line in runs(out) if line[0] == "start"]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """(url, server): a fresh SQLite file (server None), or a fresh schema on the private server
    (conftest's private_pg)."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db"), None
    server = request.getfixturevalue("private_pg")
    if not server.running:
        server.start()
    return server.new_schema_url(), server


@pytest.fixture
def workers():
    started = []

    def make(*args, **kwargs):
        w = Worker(*args, **kwargs)
        started.append(w)
        return w

    yield make
    for w in started:
        w.close()


def job_rows(url, server):
    """{id: (status, attempts, error)} read behind the engines' backs."""
    sql = "SELECT id, status, attempts, COALESCE(error, '') FROM jobs ORDER BY id"
    if server is None:
        connection = sqlite3.connect(url, timeout=30)
        try:
            rows = connection.execute(sql).fetchall()
        finally:
            connection.close()
    else:
        text = server.psql(sql, url)
        rows = [(line + "\t").split("\t")[:4] for line in text.splitlines() if line]
    return {r[0]: (r[1], int(r[2]), r[3]) for r in rows}


def wait_final(url, server, ids, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        try:
            rows = job_rows(url, server)
        except (RuntimeError, sqlite3.OperationalError):
            rows = {}
        if rows and all(rows.get(i, ("queued",))[0] in ("completed", "failed") for i in ids):
            return rows
        assert time.monotonic() < deadline, f"jobs not done in time: {rows}"
        time.sleep(0.1)


def outage(url, server, seconds):
    """Nobody can write for `seconds`: the server is stopped (PostgreSQL), or another process holds
    the file's write lock (SQLite)."""
    if server is not None:
        server.stop()
        time.sleep(seconds)
        server.start()
        return
    connection = sqlite3.connect(url, timeout=30, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    time.sleep(seconds)
    connection.execute("ROLLBACK")
    connection.close()


def wait_until(predicate, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---- item 2: an outage longer than the lease -----------------------------------------------------


def test_live_workers_keep_their_jobs_through_a_store_outage_longer_than_the_lease(
    store, tmp_path, workers
):
    url, server = store
    for i in range(3):
        workers(url, tmp_path, f"w{i}")
    producer = jobforge.Engine(url, allow_unknown_types=True)
    ids = [j.id for j in producer.enqueue_many("hold", [{"seconds": 6.0}] * 4, max_attempts=3)]
    wait_until(lambda: len(starts(tmp_path)) >= 4, "every job running")
    # 3 s (SQLite: under the store's 5 s busy timeout) or 4 s: 2-3 leases of 1.5 s.
    outage(url, server, 3.0 if server is None else 4.0)
    rows = wait_final(url, server, ids)
    ran = [line[1] for line in starts(tmp_path)]
    assert {i: rows[i] for i in ids} == {i: ("completed", 1, "") for i in ids}
    assert sorted(ran) == sorted(ids), "a live worker's job was taken back and run again"


# The owner's side: a worker that could not renew for longer than a lease (frozen here) learns,
# once it can write again, that its job was taken back, stops it and records no end for it.
def test_a_worker_that_could_not_renew_stops_the_jobs_taken_back_meanwhile(
    store, tmp_path, workers
):
    url, server = store
    owner = workers(url, tmp_path, "owner")
    producer = jobforge.Engine(url, allow_unknown_types=True)
    job = producer.enqueue("loop", {"seconds": 5.0})
    wait_until(lambda: starts(tmp_path), "the owner running the job")
    peer = workers(url, tmp_path, "peer")
    os.kill(owner.process.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: len(starts(tmp_path)) >= 2, "the peer taking the job back")
    finally:
        os.kill(owner.process.pid, signal.SIGCONT)
    woke = time.monotonic()
    wait_until(
        lambda: any(line[0] in ("stopped", "end") and line[2] == "1" for line in runs(tmp_path)),
        "the woken owner finishing or stopping its attempt",
    )
    stopped_after = time.monotonic() - woke
    first = [line for line in runs(tmp_path) if line[2] == "1" and line[0] != "start"]
    assert first[0][0] == "stopped", f"the woken owner ran its lost attempt to the end: {first}"
    rows = wait_final(url, server, [job.id])
    assert rows[job.id] == ("completed", 2, "")
    assert [line[0] for line in runs(tmp_path) if line[2] == "2"] == ["start", "end"]
    assert peer.process.pid == int(next(line[3] for line in runs(tmp_path) if line[2] == "2"))
    print(f"\nthe woken owner stopped its lost attempt {stopped_after:.2f} s after waking")


# ---- item 4: clock steps of one process -----------------------------------------------------------


@pytest.mark.parametrize(
    "who, offset_ms, when",
    [("peer", HOUR_MS, "start"), ("owner", -HOUR_MS, "start"), ("peer", HOUR_MS, "mid-run")],
)
def test_a_clock_an_hour_off_in_one_process_does_not_rerun_jobs_in_flight(
    store, tmp_path, workers, who, offset_ms, when
):
    url, server = store
    at_start = offset_ms if when == "start" else 0
    # The owner enqueues its jobs itself: with its clock an hour behind, jobs stamped by a true
    # clock would not be due for it (see docs/workers.md, "Clocks").
    owner = workers(url, tmp_path, "owner", at_start if who == "owner" else 0, enqueue=2)
    ids = owner.enqueued
    wait_until(lambda: len(starts(tmp_path)) >= 2, "both jobs running in the owner")
    peer = workers(url, tmp_path, "peer", at_start if who == "peer" else 0)
    if when == "mid-run":
        (peer if who == "peer" else owner).step(offset_ms)
    rows = wait_final(url, server, ids)
    assert {i: rows[i] for i in ids} == {i: ("completed", 1, "") for i in ids}
    assert sorted(line[1] for line in starts(tmp_path)) == sorted(ids)


def test_a_backward_step_keeps_schedules_firing_and_delayed_jobs_due(store):
    url, server = store
    engine = jobforge.Engine(url, workers=2, poll_interval=0.1)
    engine.schedule("tick", "@every 1s", "noop")

    def fires():
        return sum(1 for j in engine.jobs(type="noop", limit=10_000) if not j.payload)

    with engine:
        wait_until(lambda: fires() >= 1, "the schedule's first fire")
        delayed = engine.enqueue("noop", {"delayed": True}, delay=1.0)
        _core._set_test_clock_offset_ms(-HOUR_MS)
        try:
            stepped = time.monotonic()
            assert delayed.wait(timeout=15).status == "completed", "held by the step"
            before = fires()
            wait_until(lambda: fires() >= before + 2, "the schedule firing after the step", 15)
            print(
                f"\nafter a -1 h step: delayed job done, schedule fired twice more within "
                f"{time.monotonic() - stepped:.1f} s"
            )
        finally:
            _core._set_test_clock_offset_ms(0)


def test_a_process_whose_clock_is_behind_recomputes_the_next_fire_of_a_schedule(
    store, tmp_path, workers
):
    url, server = store
    planner = jobforge.Engine(url, allow_unknown_types=True)
    planner.schedule("tick", "@every 1s", "noop")  # next fire: in 1 s, by the true clock
    workers(url, tmp_path, "behind", -HOUR_MS)  # alone, an hour behind: would wait an hour

    def fires():
        return sum(1 for j in planner.jobs(type="noop", limit=10_000))

    wait_until(lambda: fires() >= 2, "the schedule firing in the process an hour behind", 20)


# ---- the soak, short ------------------------------------------------------------------------------


def test_a_short_fault_soak_loses_doubles_and_strands_nothing(store, tmp_path):
    url, server = store
    faults = "outage,kill,freeze," + ("diskfull" if server is None else "terminate")
    args = soak_faults.parse_args([
        "--store", "sqlite" if server is None else "postgres", "--duration", "14",
        "--every", "1.5", "--faults", faults, "--cycle", "--lease", "1.5", "--drain", "60",
    ])  # fmt: skip
    soak = soak_faults.Soak(args, server=server, folder=str(tmp_path))
    try:
        report = soak.run()
    finally:
        soak.close()
    print("\nsoak:", report)
    assert report["enqueued"] > 0 and len(report["faults"]) >= 3  # outage, kill, freeze at least
    assert soak_faults.failures(report) == [], report
