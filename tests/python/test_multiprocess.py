"""Several worker processes on one SQLite file: every job runs exactly once.

A process alone on a file claims in memory; as soon as another worker registers, both claim
durably (the newcomer waits until the first has switched). These tests run real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jobforge

WORKER = textwrap.dedent(
    """
    import os, sys, time
    import jobforge

    db, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    engine = jobforge.Engine(db, workers=2, poll_interval=0.05)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    @engine.processor("record")
    def record(ctx, payload):
        os.write(fd, (ctx.job_id + "\\n").encode())  # one write: atomic with O_APPEND

    engine.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and engine.stats()["completed"] < n:
        time.sleep(0.02)
    engine.stop()
    os.close(fd)
    """
)


def _run_workers(tmp_path, count, n, stagger=0.0):
    db = str(tmp_path / "shared.db")
    producer = jobforge.Engine(db, allow_unknown_types=True)
    ids = {job.id for job in producer.enqueue_many("record", [{"i": i} for i in range(n)])}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "SKBUILD_EDITABLE_VERBOSE": "0"}
    procs = []
    for k in range(count):
        out = tmp_path / f"ran-{k}.txt"
        procs.append(subprocess.Popen([sys.executable, str(script), db, str(out), str(n)], env=env))
        if stagger:
            import time

            time.sleep(stagger)
    for p in procs:
        assert p.wait(timeout=120) == 0
    runs = []
    for k in range(count):
        out = tmp_path / f"ran-{k}.txt"
        if out.exists():
            runs.extend(out.read_text().split())
    return producer, ids, runs


def test_three_worker_processes_run_every_job_exactly_once(tmp_path):
    producer, ids, runs = _run_workers(tmp_path, count=3, n=6000)
    assert len(runs) == len(ids)
    assert set(runs) == ids
    stats = producer.stats()
    assert stats["completed"] == len(ids)
    assert all(job.attempts == 1 for job in producer.jobs(status="completed", limit=len(ids)))


def test_a_worker_joining_a_running_one_takes_over_part_of_the_queue_without_duplicates(tmp_path):
    # The first worker starts alone (claims in memory); the second joins while it runs.
    producer, ids, runs = _run_workers(tmp_path, count=2, n=20000, stagger=0.3)
    assert sorted(runs) == sorted(ids)
    assert producer.stats()["completed"] == len(ids)
