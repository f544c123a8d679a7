"""Retries: failed attempts go back to the queue until max_attempts, then the job fails with the
error and traceback stored; retry() puts a failed, cancelled or timed-out job back in the queue."""

import threading
import uuid

WAIT = 10  # generous guard against hangs, never a speed assertion


def test_failing_processor_is_retried_up_to_max_attempts_then_fails_with_traceback(make_engine):
    engine = make_engine(workers=1, retry_delay=0.05)
    attempts_seen = []

    @engine.processor("boom")
    def boom(ctx, payload):
        attempts_seen.append(ctx.attempt)
        raise ValueError("boom")

    engine.start()
    job = engine.enqueue("boom", {}, max_attempts=3).wait(timeout=WAIT)

    assert job.status == "failed"
    assert job.attempts == 3
    assert attempts_seen == [1, 2, 3]
    assert "ValueError: boom" in job.error
    assert "Traceback" in job.error_detail
    assert "boom" in job.error_detail
    assert job.is_final is True
    assert job.completed_at is not None


def test_processor_failing_once_then_succeeding_completes_on_the_second_attempt(make_engine):
    engine = make_engine(workers=1, retry_delay=0.05)

    @engine.processor("flaky")
    def flaky(ctx, payload):
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return {"attempt": ctx.attempt}

    engine.start()
    job = engine.enqueue("flaky", {}, max_attempts=3).wait(timeout=WAIT)

    assert job.status == "completed"
    assert job.attempts == 2
    assert job.result == {"attempt": 2}


def test_single_attempt_job_fails_without_retry(engine):
    calls = []

    @engine.processor("boom")
    def boom(ctx, payload):
        calls.append(ctx.attempt)
        raise KeyError("missing")

    engine.start()
    job = engine.enqueue("boom", {}, max_attempts=1).wait(timeout=WAIT)

    assert job.status == "failed"
    assert job.attempts == 1
    assert calls == [1]
    assert job.error.startswith("KeyError")


def test_processor_max_attempts_is_the_default_of_its_jobs(engine):
    @engine.processor("boom", max_attempts=2, retry_delay=0.01)
    def boom(ctx, payload):
        raise ValueError("boom")

    engine.start()
    job = engine.enqueue("boom", {}).wait(timeout=WAIT)

    assert job.status == "failed"
    assert job.attempts == 2


def test_failed_attempt_with_attempts_left_goes_back_to_queued_until_its_retry_delay(
    engine, wait_until
):
    @engine.processor("boom")
    def boom(ctx, payload):
        raise ValueError("boom")

    engine.start()
    job = engine.enqueue("boom", {}, max_attempts=3, retry_delay=60)

    def queued_again_after_first_attempt():
        current = engine.get(job.id)
        return current if current.attempts == 1 and current.status == "queued" else None

    waiting = wait_until(
        queued_again_after_first_attempt, what="first attempt failed and job queued again"
    )
    assert waiting.is_final is False
    assert waiting.run_at is not None
    assert waiting.run_at >= waiting.created_at + 59_000
    assert engine.cancel(job.id) is True


def test_retry_event_is_published_for_each_failed_attempt_with_attempts_left(
    make_engine, recorder, wait_until
):
    engine = make_engine(workers=1, retry_delay=0.02)
    retries = recorder()
    engine.on("job-retry", retries)

    @engine.processor("boom")
    def boom(ctx, payload):
        raise ValueError("boom")

    engine.start()
    job = engine.enqueue("boom", {}, max_attempts=3).wait(timeout=WAIT)

    assert job.status == "failed"
    wait_until(lambda: len(retries) >= 2, what="two retry events")
    events = [e for e in retries.items if e.job_id == job.id]
    assert len(events) == 2
    assert all(e.type == "job-retry" for e in events)


def test_retry_of_failed_job_queues_it_and_it_runs_again_with_attempts_reset(engine):
    should_fail = [True]

    @engine.processor("fragile")
    def fragile(ctx, payload):
        if should_fail[0]:
            raise ValueError("not yet")
        return {"attempt": ctx.attempt}

    engine.start()
    job = engine.enqueue("fragile", {}, max_attempts=1).wait(timeout=WAIT)
    assert job.status == "failed"

    should_fail[0] = False
    assert engine.retry(job.id) is True

    again = job.wait(timeout=WAIT)
    assert again.status == "completed"
    assert again.attempts == 1
    assert again.result == {"attempt": 1}


def test_retry_of_cancelled_job_puts_it_back_in_the_queue(engine):
    job = engine.enqueue("noop", {})
    assert engine.cancel(job.id) is True

    assert job.retry() is True

    assert engine.get(job.id).status == "queued"
    engine.start()
    assert job.wait(timeout=WAIT).status == "completed"


def test_retry_of_timed_out_job_runs_it_again(engine):
    runs = []

    @engine.processor("stuck_once")
    def stuck_once(ctx, payload):
        runs.append(ctx.attempt)
        if len(runs) == 1:
            while not ctx.cancelled:
                threading.Event().wait(0.01)
            return None
        return "second run"

    engine.start()
    job = engine.enqueue("stuck_once", {}, timeout=0.3, max_attempts=1).wait(timeout=WAIT)
    assert job.status == "timeout"

    assert engine.retry(job.id) is True

    again = job.wait(timeout=WAIT)
    assert again.status == "completed"
    assert again.result == "second run"
    assert len(runs) == 2


def test_retry_of_unknown_job_id_returns_false(engine):
    assert engine.retry(str(uuid.uuid4())) is False
    assert engine.retry("not-a-job-id") is False
    assert engine.stats()["total"] == 0
