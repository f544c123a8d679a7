"""Chaos: worker processes killed at random while they drain a queue, and a frozen worker.

The contract under test (docs/workers.md): execution is at-least-once, completion exactly once.
A processor may run again after its process died (its side effects happened, its end was never
committed), but every job ends `completed` once, written by the worker holding its lease, and
nothing is lost or stuck.

Each execution appends "job_id attempt pid" to a file of its process with one os.write on an
O_APPEND descriptor, so a line is never torn or lost when the process is SIGKILLed right after."""

from __future__ import annotations

import importlib
import os
import random
import signal
import sqlite3
import sys
import textwrap
import time
from collections import Counter

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and POSIX signals")

JOBS = 5000
PROCESSES = 4
KILL_EVERY = (0.2, 0.4)  # seconds between two SIGKILLs, at random
WAIT = 120  # guards against hangs only


def _wait_durable(db, processes, timeout=30):
    """Waits until `processes` live workers claim durably. The first worker on a file starts
    alone and claims in memory until it notices the others (at its next heartbeat); tests that
    count attempts per execution start after that."""
    deadline = time.monotonic() + timeout
    while True:
        connection = sqlite3.connect(db, timeout=5)
        try:
            modes = [m for (m,) in connection.execute(
                "SELECT claim_mode FROM workers WHERE state = 'running'"
            )]  # fmt: skip
        finally:
            connection.close()
        if modes.count("durable") >= processes:
            return
        assert time.monotonic() < deadline, f"workers not claiming durably: {modes}"
        time.sleep(0.02)


APP = """
import os, time
import jobforge

engine = jobforge.Engine(
    {db!r}, workers=4, heartbeat_interval=0.2, lease=2.0, poll_interval=0.05, retry_delay=0.05
)
OUT = {out!r}
_fds = {{}}


@engine.processor("chaos", max_attempts=100)
def chaos(ctx, payload):
    pid = os.getpid()
    fd = _fds.get(pid)
    if fd is None:
        fd = _fds[pid] = os.open(
            os.path.join(OUT, f"exec-{{pid}}.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND
        )
    os.write(fd, f"{{ctx.job_id}} {{ctx.attempt}} {{pid}}\\n".encode())  # one atomic line
    time.sleep(payload["ms"] / 1000)
    return {{"pid": pid, "attempt": ctx.attempt}}


@engine.processor("hold", max_attempts=5)
def hold(ctx, payload):
    pid = os.getpid()
    with open(os.path.join(OUT, "hold.txt"), "a") as fh:
        fh.write(f"start {{ctx.job_id}} {{ctx.attempt}} {{pid}} {{time.time()}}\\n")
    time.sleep(payload["seconds"])
    with open(os.path.join(OUT, "hold.txt"), "a") as fh:
        fh.write(f"end {{ctx.job_id}} {{ctx.attempt}} {{pid}} {{time.time()}}\\n")
    return {{"pid": pid, "attempt": ctx.attempt}}
"""


@pytest.fixture
def chaos_app(tmp_path, monkeypatch):
    """Imports a fresh app module (an engine on tmp_path/chaos.db) from tmp_path; yields it and
    stops its engine at teardown."""
    out = tmp_path / "executions"
    out.mkdir()
    name = f"chaosapp_{os.getpid()}_{random.randrange(1 << 30)}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(APP).format(db=str(tmp_path / "chaos.db"), out=str(out))
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SKBUILD_EDITABLE_VERBOSE", "0")
    module = importlib.import_module(name)
    module.NAME = name
    try:
        yield module
    finally:
        module.engine.stop(wait=False)
        sys.modules.pop(name, None)


def _executions(out_dir):
    runs = []
    for name in os.listdir(out_dir):
        if name.startswith("exec-"):
            with open(os.path.join(out_dir, name)) as fh:
                runs.extend(tuple(line.split()) for line in fh if line.strip())
    return runs


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_four_worker_processes_drain_5000_jobs_while_one_is_sigkilled_every_300_ms(chaos_app, mode):
    engine = chaos_app.engine
    out_dir = chaos_app.OUT
    rng = random.Random(12345)
    jobs = engine.enqueue_many("chaos", [{"ms": rng.choice((10, 20, 40, 60))} for _ in range(JOBS)])
    ids = {job.id for job in jobs}
    started = time.monotonic()
    if mode == "fork":
        engine.start(processes=PROCESSES)
    else:  # fresh `python -m jobforge worker --app ...` processes
        engine.start(processes=PROCESSES, app=f"{chaos_app.NAME}:engine")
    supervisor = engine.supervisor
    supervisor.wait_ready(WAIT)
    _wait_durable(engine.path, PROCESSES)

    kills = 0
    deadline = time.monotonic() + WAIT
    while engine.stats()["completed"] < JOBS:
        assert time.monotonic() < deadline, f"not drained in time: {engine.stats()}"
        time.sleep(rng.uniform(*KILL_EVERY))
        pids = [c["pid"] for c in supervisor.children() if c["pid"] and c["ready"]]
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
    duration = time.monotonic() - started
    engine.stop(wait=True)

    # Every job completed, once: the store holds nothing else.
    stats = engine.stats()
    assert stats["total"] == JOBS
    assert stats["completed"] == JOBS, stats
    assert all(stats[s] == 0 for s in ("created", "queued", "running", "failed", "cancelled",
                                        "timeout")), stats  # fmt: skip
    final = {job.id: job for job in engine.jobs(status="completed", limit=JOBS + 1)}
    assert set(final) == ids

    # At least once: every job ran; some ran again after their process was killed.
    runs = _executions(out_dir)
    per_job = Counter(job_id for job_id, _, _ in runs)
    assert set(per_job) == ids, "a completed job with no recorded execution"
    lost = JOBS - len(per_job)
    duplicates = len(runs) - JOBS
    assert lost == 0
    assert len(runs) >= JOBS

    # Exactly one completion, by the holder of the last lease: the stored result is that of an
    # execution that really happened, in the job's last attempt.
    executed = set(runs)
    for job in final.values():
        result = job.result
        assert (job.id, str(result["attempt"]), str(result["pid"])) in executed
        assert result["attempt"] == job.attempts
        # Attempts are accounted: worker processes sharing the file claim durably, so every
        # execution was preceded by a committed claim that counted it (claims of jobs whose
        # process died before running them count too, hence >=).
        assert job.attempts >= per_job[job.id] >= 1

    exits = supervisor.exits
    killed = sum(1 for e in exits if e.returncode == -signal.SIGKILL)
    assert killed >= kills * 0.9  # a few SIGKILLs hit a process that was exiting anyway
    # Besides our SIGKILLs and clean exits: a replacement still starting up when the final stop
    # came dies of SIGTERM's default action before its handlers exist (it claimed nothing).
    unexpected = [
        e for e in exits
        if e.returncode not in (0, -signal.SIGKILL)
        and not (e.requested and not e.ready and e.returncode == -signal.SIGTERM)
    ]  # fmt: skip
    assert not unexpected, unexpected
    max_attempts = max(job.attempts for job in final.values())
    print(
        f"\nchaos ({mode}): {JOBS} jobs, {PROCESSES} worker processes, {kills} SIGKILLs, "
        f"{supervisor.restarts} restarts, {len(runs)} executions, {duplicates} duplicate "
        f"executions, lost {lost}, max attempts {max_attempts}, {duration:.1f} s"
    )


def _hold_lines(out_dir):
    path = os.path.join(out_dir, "hold.txt")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [line.split() for line in fh if line.strip()]


def test_a_frozen_worker_loses_its_job_when_its_lease_expires_and_its_late_finish_is_ignored(
    chaos_app,
):
    engine = chaos_app.engine  # lease 2 s, heartbeat 0.2 s
    out_dir = chaos_app.OUT
    engine.start(processes=3)
    engine.supervisor.wait_ready(WAIT)
    _wait_durable(engine.path, 3)
    job = engine.enqueue("hold", {"seconds": 1.5})
    while not _hold_lines(out_dir):
        time.sleep(0.005)
    holder = int(_hold_lines(out_dir)[0][3])
    os.kill(holder, signal.SIGSTOP)
    frozen_at = time.time()
    try:
        done = job.wait(timeout=WAIT)
        assert done.status == "completed"
        assert done.attempts == 2
        assert done.result["pid"] != holder and done.result["attempt"] == 2
        starts = [line for line in _hold_lines(out_dir) if line[0] == "start"]
        assert [(int(s[2]), int(s[3]) == holder) for s in starts] == [(1, True), (2, False)]
        taken_back_after = float(starts[1][4]) - frozen_at
        completed_at = done.completed_at
    finally:
        os.kill(holder, signal.SIGCONT)
    # The frozen worker wakes up, finishes its sleep and reports its end: the lease is not its
    # own any more, so nothing changes.
    deadline = time.monotonic() + WAIT
    while not any(line[0] == "end" and int(line[3]) == holder for line in _hold_lines(out_dir)):
        assert time.monotonic() < deadline, "the frozen worker never finished its run"
        time.sleep(0.02)
    time.sleep(0.5)  # its end would be committed by now
    after = engine.get(job.id)
    assert (after.status, after.attempts, after.result, after.completed_at) == (
        "completed", 2, done.result, completed_at,
    )  # fmt: skip
    assert engine.stats()["completed"] == 1
    print(
        f"\nfrozen worker (lease 2 s, heartbeat 0.2 s): its job ran again in another process "
        f"{taken_back_after:.2f} s after SIGSTOP; its late finish was ignored"
    )


# A worker declared dead (frozen past its lease) that heartbeats again is live again.
def test_a_worker_revived_after_a_freeze_does_not_run_jobs_twice(chaos_app):
    engine = chaos_app.engine
    out_dir = chaos_app.OUT
    engine.start(processes=3)
    engine.supervisor.wait_ready(WAIT)
    _wait_durable(engine.path, 3)
    first = engine.enqueue("hold", {"seconds": 3.0})
    while not _hold_lines(out_dir):
        time.sleep(0.005)
    holder = int(_hold_lines(out_dir)[0][3])
    os.kill(holder, signal.SIGSTOP)
    try:
        assert first.wait(timeout=WAIT).status == "completed"
    finally:
        os.kill(holder, signal.SIGCONT)
    time.sleep(0.5)
    jobs = engine.enqueue_many("hold", [{"seconds": 0.3}] * 12)
    for job in jobs:
        assert job.wait(timeout=WAIT).status == "completed"
    starts = Counter(line[1] for line in _hold_lines(out_dir) if line[0] == "start")
    ran_twice = [job.id for job in jobs if starts[job.id] > 1]
    assert ran_twice == []
