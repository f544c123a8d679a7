"""Integers no C++ type can hold, at every public entry point that takes a number.

Each must raise ``jobforge.ValidationError`` naming the field and the value (never pybind11's
"incompatible function arguments" dump, never an OverflowError), and write nothing.
"""

import asyncio

import pytest

import jobforge

HUGE = [2**63, -(2**70), 10**30]


def engine_calls(engine, job, n):
    """(field, call) for each public entry point that takes a number, ``n`` in that place."""
    return [
        ("priority", lambda: engine.enqueue("noop", priority=n)),
        ("max_attempts", lambda: engine.enqueue("noop", max_attempts=n)),
        ("timeout", lambda: engine.enqueue("noop", timeout=n)),
        ("delay", lambda: engine.enqueue("noop", delay=n)),
        ("retry_delay", lambda: engine.enqueue("noop", retry_delay=n)),
        ("unique_for", lambda: engine.enqueue("noop", unique_key="k", unique_for=n)),
        ("backoff", lambda: engine.enqueue("noop", backoff=jobforge.Fixed(n))),
        ("priority", lambda: engine.enqueue_many("noop", [None], priority=n)),
        ("max_attempts", lambda: engine.enqueue_many("noop", [None], max_attempts=n)),
        ("timeout", lambda: engine.enqueue_many("noop", [None], timeout=n)),
        ("delay", lambda: engine.enqueue_many("noop", [None], delay=n)),
        ("priority", lambda: engine.enqueue_many("noop", [None], queue="q", priority=n)),
        ("delay", lambda: engine.enqueue_many("noop", [None], queue="q", delay=n)),
        ("priority", lambda: engine.chain(("noop", None, {"priority": n}))),
        ("priority", lambda: engine.enqueue_batch("noop", children=[("noop", None)], priority=n)),
        ("priority", lambda: engine.register("t", lambda c, p: None, priority=n)),
        ("max_attempts", lambda: engine.register("t", lambda c, p: None, max_attempts=n)),
        ("timeout", lambda: engine.register("t", lambda c, p: None, timeout=n)),
        ("retry_delay", lambda: engine.register("t", lambda c, p: None, retry_delay=n)),
        ("max_concurrent", lambda: engine.register("t", lambda c, p: None, max_concurrent=n)),
        ("max_concurrent", lambda: engine.queue("q", max_concurrent=n)),
        ("max_size", lambda: engine.queue("q", max_size=n)),
        ("priority", lambda: engine.schedule("s", "@hourly", "noop", priority=n)),
        ("older_than", lambda: engine.cleanup(n)),
        ("limit", lambda: engine.jobs(limit=n)),
        ("offset", lambda: engine.jobs(offset=n)),
        ("limit", lambda: engine.active(limit=n)),
        ("limit", lambda: engine.logs(job.id, limit=n)),
        ("after", lambda: engine.logs(job.id, after=n)),
        ("since", lambda: engine.logs(job.id, since=n)),
        ("limit", lambda: job.logs(limit=n)),
        ("timeout", lambda: engine.wait(job.id, timeout=n)),
        ("timeout", lambda: job.wait(timeout=n)),
        ("processes", lambda: engine.start(processes=n)),
        ("concurrency", lambda: engine.start(processes=1, concurrency=n)),
    ]


def total(engine):
    return engine.counts()["total"]


@pytest.mark.parametrize("n", HUGE)
def test_huge_ints_at_every_engine_entry_point_raise_validation_error(engine, n):
    job = engine.enqueue("noop")
    before = total(engine)
    for field, call in engine_calls(engine, job, n):
        with pytest.raises(jobforge.ValidationError) as info:
            call()
        assert info.value.field == field, (field, str(info.value))
        assert field in str(info.value) and str(n) in str(info.value), str(info.value)
    assert total(engine) == before
    assert "t" not in engine.processor_types
    assert engine.schedules() == []


ENGINE_OPTIONS = [
    "workers", "pool_size", "progress_persist_step", "max_queue_size", "retry_delay",
    "poll_interval", "heartbeat_interval", "lease", "progress_interval",
    "progress_persist_interval", "stats_window", "interrupt_grace", "misfire_grace", "retention",
    "cleanup_interval",
]  # fmt: skip


@pytest.mark.parametrize("option", ENGINE_OPTIONS)
@pytest.mark.parametrize("n", HUGE)
def test_huge_ints_as_engine_options_raise_validation_error(db_path, option, n):
    with pytest.raises(jobforge.ValidationError) as info:
        jobforge.Engine(db_path, **{option: n})
    assert info.value.field == option
    assert str(n) in str(info.value)


@pytest.mark.parametrize("n", HUGE)
def test_huge_ints_in_a_processor_context_raise_validation_error(engine, n):
    outcomes = []

    @engine.processor("probe")
    def probe(ctx, payload):
        # A count is an exact int64: refused. Progress figures are floats (2**63 is one), so
        # they may be taken; either way never a TypeError or OverflowError.
        for field, must_refuse, call in [
            ("n", True, lambda: ctx.count("things", n)),
            ("current", False, lambda: ctx.progress(n)),
            ("total", False, lambda: ctx.progress(1, total=n)),
            ("total", False, lambda: ctx.stage("s", total=n)),
            ("n", False, lambda: ctx.increment(n)),
        ]:
            try:
                call()
                outcomes.append((field, "accepted", must_refuse))
            except jobforge.ValidationError as exc:
                ok = exc.field == field and str(n) in str(exc)
                outcomes.append((field, "refused" if ok else f"wrong: {exc}", must_refuse))
            except Exception as exc:  # noqa: BLE001 - reported below
                outcomes.append((field, f"{type(exc).__name__}: {exc}", must_refuse))
        return None

    with engine:
        assert engine.enqueue("probe").wait(timeout=10).status == "completed"
    assert len(outcomes) == 5
    for _field, outcome, must_refuse in outcomes:
        assert outcome == "refused" or (outcome == "accepted" and not must_refuse), outcomes


@pytest.mark.parametrize("n", HUGE)
def test_huge_retry_delay_from_a_processor_fails_cleanly(engine, n):
    @engine.processor("again", max_attempts=2)
    def again(ctx, payload):
        raise jobforge.Retry(delay=n)

    with engine:
        job = engine.enqueue("again")
        with pytest.raises(jobforge.ValidationError) as info:
            raise jobforge.Retry(delay=n)
        assert info.value.field == "delay"
        assert job.wait(timeout=10).status == "failed"


@pytest.mark.parametrize("n", HUGE)
def test_huge_ints_to_events_raise_validation_error(engine, n):
    with pytest.raises(jobforge.ValidationError) as info:
        list(engine.events(timeout=n))
    assert info.value.field == "timeout"

    async def consume():
        async for _ in engine.aevents(timeout=n):
            break

    with pytest.raises(jobforge.ValidationError):
        asyncio.run(consume())
