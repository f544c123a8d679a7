"""Retry backoff kinds, processor-requested retries and permanent errors."""

from __future__ import annotations

import time

import pytest

import jobforge


def _record_attempt_times(engine, job_type, **options):
    times: list[float] = []

    @engine.processor(job_type, **options)
    def failing(ctx, payload):
        times.append(time.monotonic())
        raise RuntimeError(f"attempt {ctx.attempt} failed")

    return times


def _gaps(times):
    return [b - a for a, b in zip(times, times[1:])]


# The dispatcher wakes when a retry is due; scheduling on a loaded 2-core machine may add a
# little. Generous upper bounds: these check the formula, not the machine.
SLACK = 0.25


@pytest.mark.parametrize(
    "backoff, expected",
    [
        (jobforge.Fixed(0.05), [0.05, 0.05, 0.05]),
        (jobforge.Linear(0.05), [0.05, 0.10, 0.15]),
        (jobforge.Exponential(0.05, factor=2), [0.05, 0.10, 0.20]),
        (jobforge.Exponential(0.05, factor=3, max=0.2), [0.05, 0.15, 0.20]),
    ],
    ids=["fixed", "linear", "exponential", "exponential-capped"],
)
def test_each_backoff_kind_spaces_the_attempts_by_its_formula(make_engine, backoff, expected):
    engine = make_engine(workers=1)
    times = _record_attempt_times(engine, "flaky", max_attempts=4, backoff=backoff)
    engine.start()
    job = engine.enqueue("flaky", {}).wait(timeout=20)
    assert job.status == "failed"
    assert job.attempts == 4
    assert job.backoff == backoff
    for gap, want in zip(_gaps(times), expected):
        assert want - 0.005 <= gap <= want + SLACK, (_gaps(times), expected)


def test_jitter_spreads_delays_within_its_bounds(make_engine):
    engine = make_engine(workers=2)
    times = _record_attempt_times(
        engine, "jittery", max_attempts=2, backoff=jobforge.Exponential(0.2, jitter=0.5)
    )
    engine.start()
    jobs = [engine.enqueue("jittery", {}) for _ in range(1)]
    for job in jobs:
        job.wait(timeout=20)
    gap = _gaps(times)[0]
    assert 0.1 - 0.005 <= gap <= 0.3 + SLACK


def test_a_job_option_overrides_the_processor_backoff(make_engine):
    engine = make_engine(workers=1)
    times = _record_attempt_times(engine, "flaky", max_attempts=2, backoff=jobforge.Fixed(5))
    engine.start()
    job = engine.enqueue("flaky", {}, backoff=jobforge.Fixed(0.05)).wait(timeout=20)
    assert job.status == "failed"
    assert _gaps(times)[0] < 0.05 + SLACK


def test_retry_raised_by_the_processor_uses_its_own_delay(make_engine):
    engine = make_engine(workers=1)
    times: list[float] = []

    @engine.processor("polite", max_attempts=3, retry_delay=10)
    def polite(ctx, payload):
        times.append(time.monotonic())
        if ctx.attempt == 1:
            raise jobforge.Retry("rate limited", delay=0.1)
        return {"attempt": ctx.attempt}

    retries = []
    engine.on("job-retry", retries.append)
    engine.start()
    job = engine.enqueue("polite", {}).wait(timeout=20)
    assert job.status == "completed"
    assert job.result == {"attempt": 2}
    assert 0.095 <= _gaps(times)[0] <= 0.1 + SLACK
    engine.flush_events()
    assert [ev.error for ev in retries] == ["Retry: rate limited"]


def test_retry_without_attempts_left_fails_the_job(make_engine):
    engine = make_engine(workers=1)

    @engine.processor("again", max_attempts=2, retry_delay=0.01)
    def again(ctx, payload):
        raise jobforge.Retry(delay=0)

    engine.start()
    job = engine.enqueue("again", {}).wait(timeout=20)
    assert job.status == "failed"
    assert job.attempts == 2


def test_permanent_error_fails_at_once_whatever_attempts_are_left(make_engine):
    engine = make_engine(workers=1)
    calls = []

    @engine.processor("doomed", max_attempts=5, retry_delay=0.01)
    def doomed(ctx, payload):
        calls.append(ctx.attempt)
        raise jobforge.PermanentError("the file is corrupt")

    engine.start()
    job = engine.enqueue("doomed", {}).wait(timeout=20)
    assert job.status == "failed"
    assert calls == [1]
    assert job.error == "PermanentError: the file is corrupt"
    assert "Traceback" in job.error_detail


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: jobforge.Fixed(-1), ValueError),
        (lambda: jobforge.Linear("1"), TypeError),
        (lambda: jobforge.Exponential(1, factor=0.5), ValueError),
        (lambda: jobforge.Exponential(1, jitter=2), ValueError),
        (lambda: jobforge.Exponential(1, max=-3), ValueError),
        (lambda: jobforge.Retry(delay=-1), ValueError),
    ],
)
def test_bad_backoff_values_are_refused_with_the_field_named(make, error):
    with pytest.raises(error) as info:
        make()
    assert any(word in str(info.value) for word in ("delay", "step", "factor", "jitter", "max"))


def test_backoff_and_retry_delay_together_are_refused_and_nothing_is_written(engine):
    with pytest.raises(ValueError, match="either retry_delay or backoff"):
        engine.enqueue("noop", {}, retry_delay=1, backoff=jobforge.Fixed(1))
    with pytest.raises(TypeError, match="backoff must be"):
        engine.enqueue("noop", {}, backoff="exponential")
    assert engine.stats()["total"] == 0


def test_backoff_survives_a_reopen(db_path):
    first = jobforge.Engine(db_path)
    job = first.enqueue(
        "noop", {}, backoff=jobforge.Exponential(0.5, factor=3, max=60, jitter=0.25)
    )
    first.stop()
    again = jobforge.Engine(db_path)
    assert again.get(job.id).backoff == jobforge.Exponential(0.5, factor=3, max=60, jitter=0.25)
