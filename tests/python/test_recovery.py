"""Restart recovery: jobs left `running` by a process that died are run again when the file is
next opened. The dying process is a real child process killed with SIGKILL."""

import signal
import threading

import pytest
from conftest import read_row

WAIT = 10  # generous guard against hangs, never a speed assertion

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

# Runs in the child while the test looks on: one job that runs until it is cancelled.
LIVE_CHILD = r"""
import sys, time
import jobforge

engine = jobforge.Engine(sys.argv[1], workers=1)

@engine.processor("hold")
def hold(ctx, payload):
    print("RUNNING", flush=True)
    while not ctx.cancelled:
        time.sleep(0.01)

job = engine.enqueue("hold", {}, max_attempts=3)
print("JOB", job.id, flush=True)
engine.start()
time.sleep(60)
"""

# Runs in the child: enqueues a long job (a Python processor that sleeps, or the native `sleep`
# processor) plus a second job queued behind it, starts one worker and never finishes on its own.
CHILD = r"""
import sys, time
import jobforge

path, kind = sys.argv[1], sys.argv[2]
engine = jobforge.Engine(path, workers=1)

if kind == "python":
    @engine.processor("hang")
    def hang(ctx, payload):
        print("RUNNING", flush=True)
        time.sleep(60)

    job = engine.enqueue("hang", {"n": 1}, max_attempts=3)
    behind = engine.enqueue("hang", {"n": 2}, max_attempts=3)
else:
    job = engine.enqueue("sleep", {"seconds": 60}, max_attempts=3)
    behind = engine.enqueue("sleep", {"seconds": 60}, max_attempts=3)

print("JOB", job.id, flush=True)
print("BEHIND", behind.id, flush=True)
engine.start()
time.sleep(60)
"""


def _status_in_file(db_path, job_id):
    row = read_row(db_path, "SELECT status FROM jobs WHERE id = ?", (job_id,))
    return row[0] if row else None


def _run_child_until_running_then_kill(spawn_child, db_path, kind, wait_until):
    child = spawn_child(CHILD, db_path, kind)
    try:
        job_id = child.read_until("JOB ").split()[1]
        behind_id = child.read_until("BEHIND ").split()[1]
        if kind == "python":
            child.read_until("RUNNING")
        # The child's `running` state must be durable before the crash, or there is nothing to
        # recover (a job whose running state was never committed is simply still queued).
        wait_until(
            lambda: _status_in_file(db_path, job_id) == "running",
            timeout=WAIT,
            what="child's job committed as running",
        )
    finally:
        returncode = child.kill()
    assert returncode == -signal.SIGKILL
    return job_id, behind_id


@pytest.mark.parametrize("kind", ["python", "native"])
def test_job_left_running_by_a_killed_process_runs_again_when_the_file_is_reopened(
    make_engine, spawn_child, db_path, wait_until, kind
):
    job_id, behind_id = _run_child_until_running_then_kill(spawn_child, db_path, kind, wait_until)
    assert _status_in_file(db_path, job_id) == "running"

    engine = make_engine(workers=1)
    job_type = "hang" if kind == "python" else "sleep"
    attempts_seen = []

    @engine.processor(job_type)
    def quick(ctx, payload):
        attempts_seen.append((ctx.job_id, ctx.attempt))
        return {"recovered": True}

    engine.start()
    recovered = engine.wait(job_id, timeout=WAIT)

    assert recovered.status == "completed"
    assert recovered.result == {"recovered": True}
    assert recovered.attempts == 2
    assert (job_id, 2) in attempts_seen
    # The job that was still waiting behind it is not lost either.
    assert engine.wait(behind_id, timeout=WAIT).status == "completed"


def test_job_left_running_by_a_killed_process_is_back_in_the_queue_after_restart(
    make_engine, spawn_child, db_path, wait_until
):
    job_id, behind_id = _run_child_until_running_then_kill(
        spawn_child, db_path, "python", wait_until
    )

    # This engine has no processor for the dead process's job type, so nothing runs the
    # recovered job: it must simply be queued again, with its one attempt counted.
    engine = make_engine(workers=1, allow_unknown_types=True)
    engine.start()

    wait_until(
        lambda: engine.get(job_id).status == "queued",
        timeout=WAIT,
        what="dead process's job queued again",
    )
    recovered = engine.get(job_id)
    assert recovered.attempts == 1
    assert recovered.is_final is False
    assert engine.get(behind_id).status == "queued"
    assert engine.stats()["running"] == 0


def test_restart_does_not_take_a_running_job_from_a_live_process(
    make_engine, spawn_child, db_path, wait_until
):
    child = spawn_child(LIVE_CHILD, db_path)
    job_id = child.read_until("JOB ").split()[1]
    child.read_until("RUNNING")
    wait_until(
        lambda: _status_in_file(db_path, job_id) == "running",
        timeout=WAIT,
        what="child's job committed as running",
    )
    stolen = []
    engine = make_engine(workers=1)

    @engine.processor("hold")
    def hold(ctx, payload):
        stolen.append(ctx.job_id)

    engine.start()
    # Absence cannot be awaited: give this engine's start-up recovery and a few dispatcher polls
    # the chance to (wrongly) take the live child's job.
    threading.Event().wait(0.6)

    assert stolen == []
    job = engine.get(job_id)
    assert job.status == "running"
    assert job.attempts == 1
    assert child.process.poll() is None
