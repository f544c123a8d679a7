"""Timeouts: a job running past its timeout ends `timeout`, its processor sees ctx.cancelled, and
its worker is free for the next job."""

import threading

import pytest

import jobforge

WAIT = 10  # generous guard against hangs, never a speed assertion


def _register_loop_until_cancelled(engine, name="loop"):
    saw_cancelled = threading.Event()

    @engine.processor(name)
    def loop(ctx, payload):
        while not ctx.cancelled:
            threading.Event().wait(0.01)
        saw_cancelled.set()

    return saw_cancelled


def test_job_running_past_its_timeout_ends_timeout_and_processor_sees_cancelled(engine):
    saw_cancelled = _register_loop_until_cancelled(engine)
    engine.start()

    job = engine.enqueue("loop", {}, timeout=0.3).wait(timeout=WAIT)

    assert job.status == "timeout"
    assert job.is_final is True
    assert job.attempts == 1  # a timeout ends the job; it is not retried
    assert saw_cancelled.is_set()


def test_worker_is_free_for_the_next_job_after_a_timeout(make_engine):
    engine = make_engine(workers=1)
    _register_loop_until_cancelled(engine)
    engine.start()

    stuck = engine.enqueue("loop", {}, timeout=0.3)
    after = engine.enqueue("noop", {})

    assert stuck.wait(timeout=WAIT).status == "timeout"
    assert after.wait(timeout=WAIT).status == "completed"


def test_native_sleep_past_its_timeout_ends_timeout_without_sleeping_it_out(engine):
    engine.start()

    # wait(timeout=4) < 5 s of sleep: the job must be stopped by its timeout, not finish its sleep.
    job = engine.enqueue("sleep", {"seconds": 5}, timeout=0.3).wait(timeout=4)

    assert job.status == "timeout"
    assert job.result is None


def test_check_cancelled_raises_job_cancelled_after_timeout_and_job_ends_timeout(engine):
    raised = []

    @engine.processor("checking")
    def checking(ctx, payload):
        try:
            while True:
                ctx.check_cancelled()
                threading.Event().wait(0.01)
        except jobforge.JobCancelled as exc:
            raised.append(exc)
            raise

    engine.start()
    job = engine.enqueue("checking", {}, timeout=0.3).wait(timeout=WAIT)

    assert job.status == "timeout"
    assert len(raised) == 1


def test_processor_that_ignores_its_timeout_still_ends_timeout_without_its_result(engine):
    @engine.processor("oblivious")
    def oblivious(ctx, payload):
        threading.Event().wait(0.5)  # never looks at ctx.cancelled
        return "too late"

    engine.start()
    job = engine.enqueue("oblivious", {}, timeout=0.2).wait(timeout=WAIT)

    assert job.status == "timeout"
    assert job.result is None


def test_processor_timeout_is_the_default_of_its_jobs(engine):
    saw_cancelled = threading.Event()

    @engine.processor("bounded", timeout=0.3)
    def bounded(ctx, payload):
        while not ctx.cancelled:
            threading.Event().wait(0.01)
        saw_cancelled.set()

    engine.start()
    job = engine.enqueue("bounded", {})

    assert job.timeout == pytest.approx(0.3)
    assert job.wait(timeout=WAIT).status == "timeout"
    assert saw_cancelled.is_set()


def test_job_finishing_within_its_timeout_completes(engine):
    engine.start()

    job = engine.enqueue("sleep", {"seconds": 0.05}, timeout=5).wait(timeout=WAIT)

    assert job.status == "completed"


def test_timeout_event_is_published(engine, recorder, wait_until):
    timeouts = recorder()
    engine.on("job-timeout", timeouts)
    engine.start()

    job = engine.enqueue("sleep", {"seconds": 5}, timeout=0.2).wait(timeout=4)

    assert job.status == "timeout"
    wait_until(lambda: len(timeouts) == 1, what="timeout event")
    event = timeouts.items[0]
    assert event.job_id == job.id
    assert event.type == "job-timeout"
    assert event.status == "timeout"
