"""Stopping: stop(wait=True) waits for running jobs; stop(wait=False) from another thread
escalates it: running jobs are asked to stop and go back to the queue, their attempt not
counted."""

import threading
import time

import jobforge

WAIT = 30


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
