"""Stopping: stop(wait=True) waits for running jobs; Ctrl-C (KeyboardInterrupt) while it waits,
or stop(wait=False) from another thread, escalates: running jobs are asked to stop and go back to
the queue with their attempt not counted."""

import os
import signal
import textwrap
import threading
import time

import jobforge

WAIT = 30

CHILD = textwrap.dedent(
    """
    import sys, time, jobforge
    engine = jobforge.Engine(sys.argv[1], workers=1, interrupt_grace=0.2)

    @engine.processor("stubborn")
    def stubborn(ctx, payload):
        print("RUNNING", flush=True)
        while not ctx.cancelled:      # runs until asked to stop
            time.sleep(0.01)
        print("ASKED", ctx.stop_reason, flush=True)
        return None

    engine.start()
    job = engine.enqueue("stubborn", {})
    while engine.get(job.id).status != "running":
        time.sleep(0.01)
    print("STOPPING", job.id, flush=True)
    try:
        engine.stop()            # waits for the job, until Ctrl-C
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    print("STATUS", engine.get(job.id).status, engine.get(job.id).attempts, flush=True)
    """
)


def test_ctrl_c_during_a_waiting_stop_puts_the_running_job_back(spawn_child, db_path):
    child = spawn_child(CHILD, db_path)
    child.read_until("RUNNING")
    child.read_until("STOPPING")
    time.sleep(0.3)  # stop() is now waiting for the job
    os.kill(child.process.pid, signal.SIGINT)
    assert child.read_until("ASKED") == "ASKED shutdown"
    child.read_until("INTERRUPTED")
    assert child.read_until("STATUS") == "STATUS queued 0"
    assert child.process.wait(WAIT) == 0


def test_stop_without_waiting_from_another_thread_escalates(engine):
    started = threading.Event()

    @engine.processor("loop")
    def loop(ctx, payload):
        started.set()
        while not ctx.cancelled:
            time.sleep(0.01)
        return "stopped"

    engine.start()
    job = engine.enqueue("loop", {})
    assert started.wait(WAIT)
    waiter = threading.Thread(target=engine.stop)  # wait=True, not the main thread
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive(), "stop(wait=True) returned while its job still ran"
    engine.stop(wait=False)
    waiter.join(WAIT)
    assert not waiter.is_alive()
    job.refresh()
    assert (job.status, job.attempts) == ("queued", 0)
    assert isinstance(engine, jobforge.Engine)
