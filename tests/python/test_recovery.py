"""Restart recovery: jobs left `running` by a process that died are run again when the file is
next opened. The dying process is a real child process killed with SIGKILL."""

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest

WAIT = 10  # generous guard against hangs, never a speed assertion

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

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


def _child_env():
    env = dict(os.environ)
    # The child imports jobforge exactly as this process does.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def _start_reader(stream):
    lines = queue.Queue()

    def pump():
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _next_line(lines, timeout=WAIT):
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError("child printed nothing in time") from None
    if line is None:
        raise AssertionError("child exited early")
    return line


def _status_in_file(db_path, job_id):
    connection = sqlite3.connect(db_path, timeout=5)
    try:
        row = connection.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        connection.close()
    return row[0] if row else None


def _run_child_until_running_then_kill(db_path, kind, wait_until):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, db_path, kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    try:
        lines = _start_reader(child.stdout)
        first = _next_line(lines).split()
        assert first[0] == "JOB", first
        job_id = first[1]
        behind_id = _next_line(lines).split()[1]
        if kind == "python":
            assert _next_line(lines) == "RUNNING"
        # The child's `running` state must be durable before the crash, or there is nothing to
        # recover (a job whose running state was never committed is simply still queued).
        wait_until(lambda: _status_in_file(db_path, job_id) == "running", timeout=WAIT,
                   what="child's job committed as running")
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(WAIT)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return job_id, behind_id


@pytest.mark.parametrize("kind", ["python", "native"])
def test_job_left_running_by_a_killed_process_runs_again_when_the_file_is_reopened(
    make_engine, db_path, wait_until, kind
):
    job_id, behind_id = _run_child_until_running_then_kill(db_path, kind, wait_until)
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


def test_job_left_running_by_a_killed_process_is_queued_again_on_reopen(
    make_engine, db_path, wait_until
):
    job_id, _ = _run_child_until_running_then_kill(db_path, "native", wait_until)

    engine = make_engine(workers=1)

    # Not started: nothing runs it, but the dead owner's job must be back in the queue.
    wait_until(lambda: engine.get(job_id).status == "queued", timeout=WAIT,
               what="dead process's job queued again")
    assert engine.stats()["running"] == 0
