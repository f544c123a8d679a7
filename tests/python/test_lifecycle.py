"""Status lifecycle: created → queued → running → completed | failed | cancelled | timeout,
refused transitions, the job context, Job methods, start/stop and the context manager."""

import threading
from decimal import Decimal
from fractions import Fraction

import pytest

import jobforge

WAIT = 10  # generous guard against hangs, never a speed assertion


def test_job_goes_from_queued_to_running_to_completed(engine, wait_until):
    gate = threading.Event()

    @engine.processor("gated")
    def gated(ctx, payload):
        gate.wait(WAIT)
        return {"done": payload["n"]}

    job = engine.enqueue("gated", {"n": 7})
    assert job.status == "queued"
    engine.start()

    wait_until(lambda: engine.get(job.id).status == "running", what="status running")
    running = engine.get(job.id)
    assert running.started_at is not None
    assert running.completed_at is None
    assert running.attempts == 1
    assert running.is_final is False
    gate.set()

    done = job.wait(timeout=WAIT)
    assert done.status == "completed"
    assert done.result == {"done": 7}
    assert done.is_final is True
    assert done.error is None
    assert done.attempts == 1
    assert done.created_at <= done.queued_at <= done.started_at <= done.completed_at


def test_processor_context_exposes_job_id_type_and_attempt(engine):
    seen = {}

    @engine.processor("inspect")
    def inspect(ctx, payload):
        seen.update(
            job_id=ctx.job_id, job_type=ctx.job_type, attempt=ctx.attempt, cancelled=ctx.cancelled
        )
        return None

    engine.start()
    job = engine.enqueue("inspect", {}).wait(timeout=WAIT)

    assert job.status == "completed"
    assert seen == {"job_id": job.id, "job_type": "inspect", "attempt": 1, "cancelled": False}


def test_processor_receives_the_decoded_payload(engine):
    received = []

    @engine.processor("echo")
    def echo(ctx, payload):
        received.append(payload)
        return payload

    engine.start()
    payload = {"a": [1, 2, {"b": None}], "c": "ünïcödé", "d": 1.25}
    job = engine.enqueue("echo", payload).wait(timeout=WAIT)

    assert received == [payload]
    assert job.result == payload


def test_completed_job_cannot_be_cancelled_or_retried(engine):
    engine.start()
    job = engine.enqueue("noop", {}).wait(timeout=WAIT)
    assert job.status == "completed"

    assert engine.cancel(job.id) is False
    assert engine.retry(job.id) is False
    assert job.cancel() is False
    assert job.retry() is False
    assert engine.get(job.id).status == "completed"


def test_queued_job_cannot_be_retried(engine):
    job = engine.enqueue("noop", {})

    assert engine.retry(job.id) is False
    assert engine.get(job.id).status == "queued"


def test_running_job_cannot_be_retried(engine, wait_until):
    gate = threading.Event()

    @engine.processor("gated")
    def gated(ctx, payload):
        gate.wait(WAIT)

    engine.start()
    job = engine.enqueue("gated", {})
    wait_until(lambda: engine.get(job.id).status == "running", what="status running")

    assert engine.retry(job.id) is False
    gate.set()
    assert job.wait(timeout=WAIT).status == "completed"


def test_job_refresh_rereads_the_store_and_returns_itself(engine):
    job = engine.enqueue("noop", {})
    engine.start()
    engine.wait(job.id, timeout=WAIT)

    assert job.status == "queued"  # a Job is a snapshot until refreshed
    refreshed = job.refresh()
    assert refreshed is job
    assert job.status == "completed"
    assert job.is_final is True


def test_engine_wait_returns_the_finished_job(engine):
    engine.start()
    job = engine.enqueue("noop", {})

    finished = engine.wait(job.id, timeout=WAIT)

    assert isinstance(finished, jobforge.Job)
    assert finished.id == job.id
    assert finished.status == "completed"


def test_job_wait_raises_timeout_error_when_the_job_does_not_finish(engine):
    job = engine.enqueue("noop", {})  # engine not started: the job can never finish

    with pytest.raises(TimeoutError):
        job.wait(timeout=0.1)


def test_progress_with_a_total_is_stored_as_a_percentage(engine, wait_until):
    gate = threading.Event()

    @engine.processor("steps")
    def steps(ctx, payload):
        ctx.progress(1, total=4, message="quarter")
        gate.wait(WAIT)

    engine.start()
    job = engine.enqueue("steps", {})
    try:
        wait_until(lambda: job.refresh().progress == 25, what="progress 25")
        assert job.progress_current == 1
        assert job.progress_total == 4
        assert job.message == "quarter"
    finally:
        gate.set()
    assert job.wait(timeout=WAIT).status == "completed"


def test_progress_without_a_total_is_a_count_with_no_percentage(engine, wait_until):
    gate = threading.Event()

    @engine.processor("count")
    def count(ctx, payload):
        ctx.progress(1250, message="1,250 processed")
        gate.wait(WAIT)

    engine.start()
    job = engine.enqueue("count", {})
    try:
        wait_until(lambda: job.refresh().progress_current == 1250, what="progress 1250")
        assert job.progress_total is None
        assert job.percent is None
        assert job.progress == 0
        assert job.message == "1,250 processed"
    finally:
        gate.set()
    assert job.wait(timeout=WAIT).status == "completed"


def test_progress_arguments_of_other_types_work_or_raise_naming_the_argument(engine):
    errors = []

    @engine.processor("typed")
    def typed(ctx, payload):
        ctx.progress(Fraction(1, 2), total=Decimal(4), message="half of one", stage="load")
        for call in (
            lambda: ctx.progress("3"),
            lambda: ctx.progress(True),
            lambda: ctx.progress(1, total="4"),
            lambda: ctx.progress(1, 4, message=5),
            lambda: ctx.progress(1, 4, stage=b"x"),
        ):
            try:
                call()
            except TypeError as exc:
                errors.append(str(exc))
            else:
                errors.append("no error")
        ctx.progress(3, total=4, message="three quarters")
        return None

    engine.start()
    job = engine.enqueue("typed", {}).wait(timeout=WAIT)
    assert job.status == "completed", job.error
    assert errors == [
        "current must be a number, got str",
        "current must be a number, got bool",
        "total must be a number, got str",
        "message must be a str or None, got int",
        "stage must be a str or None, got bytes",
    ]
    assert job.progress_current == 3 and job.progress_total == 4
    assert job.message == "three quarters" and job.stage == "load"


def test_context_manager_starts_and_stops_the_engine(db_path):
    with jobforge.Engine(db_path, workers=1) as engine:
        assert isinstance(engine, jobforge.Engine)
        job = engine.enqueue("noop", {})
        assert job.wait(timeout=WAIT).status == "completed"
    # After __exit__ the engine is stopped: a new job stays queued.
    late = engine.enqueue("noop", {})
    with pytest.raises(TimeoutError):
        late.wait(timeout=0.3)
    assert engine.get(late.id).status == "queued"


def test_context_manager_exit_lets_a_running_job_finish(db_path):
    started = threading.Event()
    finished = []

    with jobforge.Engine(db_path, workers=1) as engine:

        @engine.processor("slow")
        def slow(ctx, payload):
            started.set()
            threading.Event().wait(0.3)
            finished.append(ctx.job_id)
            return "finished"

        job = engine.enqueue("slow", {})
        assert started.wait(WAIT)

    assert finished == [job.id]
    assert engine.get(job.id).status == "completed"


def test_stop_with_wait_lets_a_running_job_finish(engine):
    started = threading.Event()

    @engine.processor("slow")
    def slow(ctx, payload):
        started.set()
        threading.Event().wait(0.3)
        return {"cancelled_seen": ctx.cancelled}

    engine.start()
    job = engine.enqueue("slow", {})
    assert started.wait(WAIT)

    engine.stop(wait=True)

    done = engine.get(job.id)
    assert done.status == "completed"
    assert done.result == {"cancelled_seen": False}


def _register_stoppable(engine, how, started, saw_cancel):
    """A processor of type `how` that runs until asked to stop, then stops in that way."""
    if how == "native-sleep":
        return "sleep", {"seconds": 60}

    @engine.processor(how)
    def stoppable(ctx, payload):
        started.set()
        while not ctx.cancelled:
            threading.Event().wait(0.01)
        saw_cancel.set()
        if how == "raises-job-cancelled":
            ctx.check_cancelled()
        return "interrupted run"

    return how, {}


@pytest.mark.parametrize("how", ["returns", "raises-job-cancelled", "native-sleep"])
def test_stop_without_wait_puts_a_running_job_back_in_the_queue_uncounted(
    make_engine, wait_until, how
):
    engine = make_engine(workers=1)
    started, saw_cancel = threading.Event(), threading.Event()
    job_type, payload = _register_stoppable(engine, how, started, saw_cancel)
    engine.start()
    job = engine.enqueue(job_type, payload)
    wait_until(lambda: engine.get(job.id).status == "running", what="status running")
    if how != "native-sleep":
        assert started.wait(WAIT)  # claimed is not yet started: wait for the processor itself

    engine.stop(wait=False)

    if how != "native-sleep":
        assert saw_cancel.wait(WAIT)  # the processor was asked to stop through ctx.cancelled

    def no_longer_running():
        current = engine.get(job.id)
        return current if current.status != "running" else None

    stopped = wait_until(no_longer_running, what="stopped job no longer running")
    assert stopped.status == "queued"
    assert stopped.attempts == 0
    assert stopped.result is None

    # The next engine on the file runs it again as a first attempt.
    next_engine = make_engine(workers=1)

    @next_engine.processor(job_type)
    def quick(ctx, payload):
        return {"attempt": ctx.attempt}

    next_engine.start()
    rerun = next_engine.wait(job.id, timeout=WAIT)
    assert rerun.status == "completed"
    assert rerun.result == {"attempt": 1}
    assert rerun.attempts == 1
