"""The GIL: blocking calls release it, native processors run without it, and Python processors
hold it only for their own call."""

import contextlib
import sys
import threading
import time

WAIT = 10  # generous guard against hangs, never a speed assertion

# While the main thread blocks for ~0.5 s in a call that releases the GIL, a Python thread counts
# to millions. If the call held the GIL, the counter could only move during the one switch
# interval (set to 1 ms below) before the call took it: a few thousand at most.
SUBSTANTIAL = 100_000


@contextlib.contextmanager
def _python_thread_counting():
    counter = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1

    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    thread = threading.Thread(target=count, name="gil-counter")
    thread.start()
    try:
        yield counter
    finally:
        stop.set()
        thread.join(WAIT)
        sys.setswitchinterval(previous_interval)


def test_job_wait_releases_the_gil(engine):
    engine.start()
    job = engine.enqueue("sleep", {"seconds": 0.5})

    with _python_thread_counting() as counter:
        before = counter[0]
        finished = job.wait(timeout=WAIT)
        advanced = counter[0] - before

    assert finished.status == "completed"
    assert advanced > SUBSTANTIAL


def test_engine_wait_releases_the_gil(engine):
    engine.start()
    job = engine.enqueue("sleep", {"seconds": 0.5})

    with _python_thread_counting() as counter:
        before = counter[0]
        finished = engine.wait(job.id, timeout=WAIT)
        advanced = counter[0] - before

    assert finished.status == "completed"
    assert advanced > SUBSTANTIAL


def test_stop_waiting_for_a_running_job_releases_the_gil(engine, wait_until):
    engine.start()
    job = engine.enqueue("sleep", {"seconds": 0.8})
    wait_until(lambda: engine.get(job.id).status == "running", what="sleep job running")

    with _python_thread_counting() as counter:
        before = counter[0]
        engine.stop(wait=True)
        advanced = counter[0] - before

    assert engine.get(job.id).status == "completed"
    assert advanced > SUBSTANTIAL


def test_native_jobs_run_in_parallel_while_the_main_thread_spins_python(make_engine):
    engine = make_engine(workers=2)
    completed = []
    engine.on("job-completed", lambda event: completed.append(event.job_id))
    engine.start()
    jobs = [engine.enqueue("sleep", {"seconds": 0.3}) for _ in range(2)]

    # Pure Python spinning, no blocking call: the native workers must still make progress.
    spins = 0
    deadline = time.monotonic() + WAIT
    while len(completed) < 2 and time.monotonic() < deadline:
        spins += 1

    assert sorted(completed) == sorted(job.id for job in jobs)
    assert spins > 0
    finished = [engine.get(job.id) for job in jobs]
    assert all(job.status == "completed" for job in finished)
    # Both ran at the same time: each started before the other completed.
    assert max(job.started_at for job in finished) < min(job.completed_at for job in finished)


def test_python_processors_hold_the_gil_only_for_their_call(make_engine):
    engine = make_engine(workers=2)
    spans = {}
    both_started = threading.Barrier(2)

    @engine.processor("sleepy")
    def sleepy(ctx, payload):
        start = time.monotonic()
        # Both processors are inside their call at once: neither holds the GIL while blocked.
        both_started.wait(WAIT)
        time.sleep(0.2)
        spans[payload["i"]] = (start, time.monotonic(), threading.get_ident())

    engine.start()
    jobs = [engine.enqueue("sleepy", {"i": i}) for i in range(2)]

    with _python_thread_counting() as counter:
        before = counter[0]
        finished = [job.wait(timeout=WAIT) for job in jobs]
        advanced = counter[0] - before

    assert [job.status for job in finished] == ["completed", "completed"]
    (start_a, end_a, thread_a), (start_b, end_b, thread_b) = spans[0], spans[1]
    assert start_a < end_b and start_b < end_a
    assert thread_a != thread_b
    assert threading.get_ident() not in (thread_a, thread_b)
    assert advanced > SUBSTANTIAL
