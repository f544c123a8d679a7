"""Observability (issue 5): every event kind in lifecycle order, rate limits of progress events and
progress writes, stages / unknown totals / rate / ETA / outcome counters, job logs and their
filters, asyncio and blocking event streams, and the numbers of stats(), queue_stats(), health()
and metrics_text() checked against a known workload.

Everything runs on a real SQLite file with real worker threads; sleeps and gates shape the
workload, time limits only guard against hangs (except where a bound is the point: the rate limits).
"""

import asyncio
import errno
import gc
import os
import subprocess
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import jobforge

WAIT = 10  # generous guard against hangs

FINAL_EVENTS = {"job-completed", "job-failed", "job-cancelled", "job-timeout"}
UNKNOWN_ID = "00000000-0000-7000-8000-000000000000"
# jobforge's input errors are ValueErrors; a dedicated ValidationError class, when there is one,
# must be the one raised.
ValidationError = getattr(jobforge, "ValidationError", ValueError)


@pytest.fixture
def gates():
    """gates() makes a threading.Event, gates(Steps) a Steps; all are released at teardown (before
    the engines stop), so a failing test never leaves a processor waiting on them."""
    made = []

    def make(kind=threading.Event):
        obj = kind()
        made.append(obj)
        return obj

    yield make
    for obj in made:
        obj.set()


def _of(events, job_id):
    return [e for e in events if e.job_id == job_id]


def _kinds(events):
    return [e.type for e in events]


def _wait_for_event(rec, wait_until, job_id, kind, timeout=WAIT):
    return wait_until(
        lambda: next((e for e in rec.items if e.job_id == job_id and e.type == kind), None),
        timeout=timeout,
        what=f"{kind} for {job_id}",
    )


_ORDER = {"created": 0, "queued": 1, "running": 2}


def _later(status, than):
    """Whether ``status`` comes after ``than`` in a job's life (a final status after any other)."""
    return _ORDER.get(status, 3) > _ORDER.get(than, 3)


def _collapse_middle(kinds):
    """Runs of job-progress / job-log become one 'progress/log' item."""
    out = []
    for kind in kinds:
        item = "progress/log" if kind in ("job-progress", "job-log") else kind
        if item == "progress/log" and out and out[-1] == item:
            continue
        out.append(item)
    return out


# -- 1. events ----------------------------------------------------------------------------------


def test_every_event_of_a_completed_job_arrives_in_lifecycle_order(engine, recorder, wait_until):
    everything = recorder()
    engine.on("*", everything)

    @engine.processor("steps")
    def steps(ctx, payload):
        ctx.progress(1, total=2, message="one")
        ctx.log("info", "first", step=1)
        time.sleep(0.15)  # the running state is committed on its own
        ctx.progress(2, total=2, message="two")
        ctx.log("info", "second", step=2)
        time.sleep(0.15)  # the event rate limit lets the last progress through
        return {"ok": True}

    engine.start()
    job = engine.enqueue("steps", {}).wait(timeout=WAIT)
    assert job.status == "completed"
    _wait_for_event(everything, wait_until, job.id, "job-completed")
    engine.flush_events()

    events = _of(everything.items, job.id)
    assert _collapse_middle(_kinds(events)) == [
        "job-created",
        "job-status-changed",
        "job-queued",
        "job-status-changed",
        "job-started",
        "progress/log",
        "job-status-changed",
        "job-completed",
    ]
    changes = [(e.previous_status, e.status) for e in events if e.type == "job-status-changed"]
    assert changes == [("created", "queued"), ("queued", "running"), ("running", "completed")]
    assert events[0].status == "created"
    assert all(e.job_type == "steps" for e in events)
    logs = [e for e in events if e.type == "job-log"]
    assert [(e.message, e.level, e.fields) for e in logs] == [
        ("first", "info", {"step": 1}),
        ("second", "info", {"step": 2}),
    ]
    progress = [e for e in events if e.type == "job-progress"]
    assert progress and progress[-1].progress_current == 2 and progress[-1].progress == 100
    assert [e.progress_current for e in progress] == sorted(e.progress_current for e in progress)
    assert events[-1].result == {"ok": True}
    assert events[0].timestamp == job.created_at
    assert all(job.created_at <= e.timestamp <= job.completed_at for e in events)
    assert events[-1].timestamp == job.completed_at


def test_retried_job_emits_job_retry_then_runs_again(engine, recorder, wait_until):
    everything = recorder()
    engine.on("*", everything)

    @engine.processor("flaky", max_attempts=3, retry_delay=0.05)
    def flaky(ctx, payload):
        ctx.log("info", f"attempt {ctx.attempt}")
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return ctx.attempt

    engine.start()
    job = engine.enqueue("flaky", {}).wait(timeout=WAIT)
    assert job.status == "completed" and job.result == 2
    _wait_for_event(everything, wait_until, job.id, "job-completed")

    events = _of(everything.items, job.id)
    kinds = _kinds(events)
    retry = events[kinds.index("job-retry")]
    assert retry.status == "queued" and retry.previous_status == "running"
    assert retry.attempt == 1
    assert "RuntimeError: first attempt fails" in retry.error
    assert kinds.count("job-started") == 2
    assert kinds.index("job-started") < kinds.index("job-retry")
    assert kinds.index("job-retry") < len(kinds) - 1 - kinds[::-1].index("job-started")
    changes = [e.status for e in events if e.type == "job-status-changed"]
    assert changes == ["queued", "running", "queued", "running", "completed"]
    assert kinds[-1] == "job-completed" and events[-1].attempt == 2
    assert "job-failed" not in kinds
    logs = [
        (e.message, kinds.index("job-retry") > i)
        for i, e in enumerate(events)
        if e.type == "job-log"
    ]
    assert logs == [("attempt 1", True), ("attempt 2", False)]
    assert [(line.attempt, line.message) for line in engine.logs(job.id)] == [
        (1, "attempt 1"),
        (2, "attempt 2"),
    ]


def test_failed_cancelled_and_timed_out_jobs_end_with_their_own_event(engine, recorder, wait_until):
    everything = recorder()
    engine.on("*", everything)
    started = threading.Event()

    @engine.processor("boom", max_attempts=1)
    def boom(ctx, payload):
        raise ValueError("broken input")

    @engine.processor("loop")
    def loop(ctx, payload):
        started.set()
        while True:
            ctx.check_cancelled()
            time.sleep(0.005)

    engine.start()
    failed = engine.enqueue("boom", {}).wait(timeout=WAIT)
    timed_out = engine.enqueue("loop", {}, timeout=0.3).wait(timeout=WAIT)
    started.clear()
    running = engine.enqueue("loop", {}, timeout=60)
    assert started.wait(WAIT)
    assert engine.cancel(running.id)
    cancelled = running.wait(timeout=WAIT)
    assert (failed.status, timed_out.status, cancelled.status) == ("failed", "timeout", "cancelled")

    expected = {failed.id: "job-failed", timed_out.id: "job-timeout", cancelled.id: "job-cancelled"}
    for job_id, kind in expected.items():
        _wait_for_event(everything, wait_until, job_id, kind)
    engine.flush_events()
    for job_id, kind in expected.items():
        events = _of(everything.items, job_id)
        kinds = _kinds(events)
        assert kinds[-2:] == ["job-status-changed", kind], kinds
        assert FINAL_EVENTS & set(kinds) == {kind}
        assert "job-started" in kinds
        final = events[-1]
        assert final.status == kind[len("job-") :]
        assert final.previous_status == "running"
    assert "ValueError: broken input" in _of(everything.items, failed.id)[-1].error


def test_a_queued_job_cancelled_before_it_runs_gets_job_cancelled(engine, recorder, wait_until):
    everything = recorder()
    engine.on("*", everything)
    job = engine.enqueue("noop", {})  # engine not started: stays queued
    assert engine.cancel(job.id)
    _wait_for_event(everything, wait_until, job.id, "job-cancelled")
    engine.flush_events()
    events = _of(everything.items, job.id)
    assert _kinds(events) == [
        "job-created",
        "job-status-changed",
        "job-queued",
        "job-status-changed",
        "job-cancelled",
    ]
    assert (events[-1].previous_status, events[-1].status) == ("queued", "cancelled")


def test_every_job_log_event_arrives_before_job_completed(engine, recorder, wait_until):
    everything = recorder()
    engine.on("*", everything)

    @engine.processor("chatty")
    def chatty(ctx, payload):
        for i in range(200):
            ctx.log("debug" if i % 2 else "info", f"line {i}", i=i)
        return "done"  # ends right after the last line

    engine.start()
    jobs = [engine.enqueue("chatty", {}) for _ in range(3)]
    for job in jobs:
        assert job.wait(timeout=WAIT).status == "completed"
    for job in jobs:
        _wait_for_event(everything, wait_until, job.id, "job-completed")
    engine.flush_events()
    for job in jobs:
        events = _of(everything.items, job.id)
        kinds = _kinds(events)
        logs = [e for e in events if e.type == "job-log"]
        assert [e.fields["i"] for e in logs] == list(range(200))
        assert kinds.index("job-started") < kinds.index("job-log")
        last_log = len(kinds) - 1 - kinds[::-1].index("job-log")
        assert last_log < kinds.index("job-completed")
        assert last_log < kinds.index("job-status-changed", kinds.index("job-started"))


def test_subscriptions_to_one_job_and_to_one_type(engine, recorder, wait_until):
    @engine.processor("alpha")
    def alpha(ctx, payload):
        ctx.progress(1, total=1)
        return "a"

    @engine.processor("beta")
    def beta(ctx, payload):
        return "b"

    by_type = recorder()
    everything = recorder()
    engine.on("*", by_type, job_type="alpha")
    engine.on("job-completed", everything)
    a1 = engine.enqueue("alpha", {})
    b1 = engine.enqueue("beta", {})
    a2 = engine.enqueue("alpha", {})
    by_job = recorder()
    engine.on("*", by_job, job_id=b1.id)
    engine.start()
    for job in (a1, b1, a2):
        job.wait(timeout=WAIT)

    wait_until(lambda: len(everything) == 3, what="three completed events")
    engine.flush_events()
    assert {e.job_id for e in by_type.items} == {a1.id, a2.id}
    assert all(e.job_type == "alpha" for e in by_type.items)
    assert {"job-created", "job-started", "job-completed"} <= set(_kinds(by_type.items))
    # Only b1's events reach the subscription to b1.
    assert {e.job_id for e in by_job.items} == {b1.id}
    assert _kinds(by_job.items)[-1] == "job-completed"
    assert "job-started" in _kinds(by_job.items)


def test_unsubscribe_with_the_handle_stops_deliveries_mid_job(engine, recorder, wait_until, gates):
    first_seen = threading.Event()
    go_on = gates()

    @engine.processor("two-phase")
    def two_phase(ctx, payload):
        ctx.progress(1, total=3)
        ctx.log("info", "phase one")
        assert go_on.wait(WAIT)
        ctx.progress(2, total=3)
        ctx.log("info", "phase two")
        time.sleep(0.15)
        ctx.progress(3, total=3)
        return None

    job = engine.enqueue("two-phase", {})
    removed = recorder()
    kept = recorder()

    def on_removed(ev):
        removed(ev)
        if ev.type == "job-log":
            first_seen.set()

    sub = engine.on("*", on_removed, job_id=job.id)
    engine.on("*", kept, job_id=job.id)
    engine.start()
    assert first_seen.wait(WAIT)
    sub.unsubscribe()
    assert not sub.active
    count_at_unsubscribe = len(removed)
    go_on.set()
    job.wait(timeout=WAIT)
    _wait_for_event(kept, wait_until, job.id, "job-completed")
    engine.flush_events()
    assert len(removed) == count_at_unsubscribe
    assert "phase one" in [e.message for e in removed.items if e.type == "job-log"]
    assert "phase two" not in [e.message for e in removed.items]
    assert "phase two" in [e.message for e in kept.items if e.type == "job-log"]


def test_no_event_reports_a_state_the_file_does_not_have_yet(make_engine, db_path, gates):
    """Checked from another engine on the same file, inside the callbacks: the state an event
    reports (a status, a log line) is already committed when it is delivered."""
    engine = make_engine(workers=2)
    reader = make_engine(db_path)
    go_on = gates()
    seen = []

    def check(ev):
        stored = reader.get(ev.job_id)
        if ev.type == "job-log":
            stored_ids = [line.id for line in reader.logs(ev.job_id)]
            seen.append((ev.type, ev.level, ev.log_id, ev.log_id in stored_ids))
        elif ev.type == "job-created":  # created and queued in one commit
            seen.append((ev.type, ev.status, stored and stored.status, stored is not None))
        elif ev.type != "job-progress":  # the file has this state or a later one
            reached = stored is not None and (
                stored.status == ev.status or _later(stored.status, ev.status)
            )
            seen.append((ev.type, ev.status, stored and stored.status, reached))

    engine.on("*", check)

    @engine.processor("talk")
    def talk(ctx, payload):
        ctx.log("info", "right away")
        ctx.progress(1, total=2)
        assert go_on.wait(WAIT)
        ctx.log("warning", "later")
        return None

    engine.start()
    jobs = [engine.enqueue("talk", {}) for _ in range(3)]
    time.sleep(0.2)
    go_on.set()
    for job in jobs:
        assert job.wait(timeout=WAIT).status == "completed"
    engine.flush_events()
    kinds = {entry[0] for entry in seen}
    assert {"job-created", "job-queued", "job-started", "job-log", "job-completed"} <= kinds
    assert [entry for entry in seen if not entry[-1]] == []


def test_an_abandoned_async_stream_ends_its_subscription(engine):
    """Breaking out of ``async for ev in engine.aevents()`` and dropping the stream must not
    leave a subscription behind that keeps queueing every lifecycle event forever (the blocking
    stream closes itself when collected)."""
    engine.start()

    blocking = engine.events(timeout=WAIT)
    engine.enqueue("noop", {})
    for _ev in blocking:
        break
    del blocking
    gc.collect()
    assert engine._subs == []

    async def main():
        stream = engine.aevents(timeout=WAIT)
        engine.enqueue("noop", {})
        async for _ev in stream:
            break

    asyncio.run(main())
    gc.collect()
    assert engine._subs == [], engine._subs


# -- 2. rate limits ---------------------------------------------------------------------------


def test_a_progress_flood_is_rate_limited_in_events_and_store_writes(
    make_engine, db_path, recorder, wait_until, gates
):
    engine = make_engine(workers=1, progress_interval=0.1)
    n = 100_000
    flood_done = threading.Event()
    gate = gates()
    timing = {}

    @engine.processor("flood")
    def flood(ctx, payload):
        t0 = time.monotonic()
        for chunk in range(10):
            for i in range(chunk * 10_000 + 1, (chunk + 1) * 10_000 + 1):
                ctx.progress(i, total=n)
            time.sleep(0.12)  # the flood spans several maintenance flushes (1 s each)
        timing["flood"] = time.monotonic() - t0
        flood_done.set()
        assert gate.wait(WAIT)
        return "done"

    job = engine.enqueue("flood", {})
    progress = recorder()
    engine.on("job-progress", progress, job_id=job.id)
    writes_before = engine._core.local_stats()["progress_writes"]
    engine.start()
    assert flood_done.wait(WAIT)

    # The latest progress is visible at once, while the job still runs (held by the gate).
    current = engine.get(job.id)
    assert current.status == "running"
    assert (current.progress_current, current.progress_total, current.progress) == (n, n, 100)
    assert current.percent == 100.0

    # Trailing event: the last update is published although no progress call follows it.
    trailing = wait_until(
        lambda: next((e for e in progress.items if e.progress_current == n), None),
        timeout=2,
        what="the trailing progress event",
    )
    assert trailing.progress == 100
    assert engine.get(job.id).status == "running"

    # The store gets the end of the flood too (a 10-point move is due at the next flush), before
    # the job ends: another engine on the file reads it from the store.
    reader = make_engine(db_path)
    stored = wait_until(
        lambda: (lambda j: j if j.progress == 100 else None)(reader.get(job.id)),
        timeout=3,
        what="100% written to the store",
    )
    assert stored.status in ("running", "queued")  # the job has not ended

    received = len(progress)
    bound = timing["flood"] / 0.1 + 3
    assert 1 <= received <= bound, (received, timing["flood"])
    values = [e.progress_current for e in progress.items]
    assert values == sorted(values)

    gate.set()
    assert job.wait(timeout=WAIT).status == "completed"
    writes = engine._core.local_stats()["progress_writes"] - writes_before
    # 0..100 % with a step of 10 points: at most one write per 10 points, plus the end.
    assert 1 <= writes <= 11, writes
    final = reader.get(job.id)
    assert (final.progress, final.progress_current) == (100, n)


def test_progress_events_respect_progress_interval_while_a_flood_runs(make_engine, recorder):
    engine = make_engine(workers=1, progress_interval=0.05)
    stamps = []
    lock = threading.Lock()

    def on_progress(ev):
        with lock:
            stamps.append((time.monotonic(), ev.progress_current))

    timing = {}

    @engine.processor("timed-flood")
    def timed_flood(ctx, payload):
        time.sleep(0.1)  # start committed first: every event comes from the rate limiter
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 0.6:
            for _ in range(1000):
                i += 1
                ctx.progress(i)
        timing["calls"] = i
        timing["flood"] = time.monotonic() - t0
        time.sleep(0.2)
        return i

    job = engine.enqueue("timed-flood", {})
    engine.on("job-progress", on_progress, job_id=job.id)
    engine.start()
    assert job.wait(timeout=WAIT).status == "completed"
    engine.flush_events()
    with lock:
        got = list(stamps)
    assert timing["calls"] > 10_000
    assert 3 <= len(got) <= timing["flood"] / 0.05 + 3, (len(got), timing)
    assert got[-1][1] == timing["calls"]  # the trailing one carries the last count
    assert [v for _, v in got] == sorted(v for _, v in got)


def test_progress_persistence_follows_the_step_and_the_interval(make_engine, tmp_path, gates):
    """Three files, three policies, the same job reporting 40 % then waiting: a 40-point move is
    due with a 10-point step; with a 100-point step it waits for progress_persist_interval (30 s
    by default: nothing written while the job runs; 0.2 s: written at the next flush)."""
    gate = gates()
    policies = {
        "step10": dict(progress_persist_step=10),
        "step100": dict(progress_persist_step=100),
        "interval": dict(progress_persist_step=100, progress_persist_interval=0.2),
    }
    engines, readers, jobs = {}, {}, {}
    reported = {name: threading.Event() for name in policies}
    for name, options in policies.items():
        path = str(tmp_path / f"{name}.db")
        engine = engines[name] = make_engine(path, workers=1, **options)

        def forty(ctx, payload, name=name):
            ctx.count("rows", 40)
            ctx.progress(40, total=100, message="forty")
            reported[name].set()
            assert gate.wait(WAIT)

        engine.register("forty", forty)
        jobs[name] = engine.enqueue("forty", {})
        readers[name] = make_engine(path)
        engine.start()
    for event in reported.values():
        assert event.wait(WAIT)

    deadline = time.monotonic() + 2.5  # two maintenance flushes (1 s each) and some slack
    while time.monotonic() < deadline:
        stored = {name: readers[name].get(jobs[name].id).progress for name in policies}
        if stored["step10"] == 40 and stored["interval"] == 40:
            break
        time.sleep(0.02)
    time.sleep(0.3)  # the step100 engine had the same flushes
    stored = {name: readers[name].get(jobs[name].id).progress for name in policies}
    # The outcome counters go with each progress write.
    assert readers["step10"].get(jobs["step10"].id).outcome == {"rows": 40}
    writes = {name: engines[name]._core.local_stats()["progress_writes"] for name in policies}
    for name in policies:
        assert engines[name].get(jobs[name].id).progress == 40  # in memory, whatever the store has

    gate.set()
    for name in policies:
        done = jobs[name].wait(timeout=WAIT)
        assert done.status == "completed"
        # The end always writes the last progress.
        stored_job = readers[name].get(jobs[name].id)
        assert (stored_job.progress_current, stored_job.progress_total) == (40, 100)
        assert stored_job.message == "forty"
        assert stored_job.outcome == {"rows": 40}

    assert stored["step10"] == 40 and stored["interval"] == 40, stored
    assert writes["step10"] == 1 and writes["interval"] == 1, writes
    # A 40-point move with a 100-point step and a 30 s interval is not written while the job runs
    # (its first 30 s): only its end writes it.
    assert stored["step100"] == 0 and writes["step100"] == 0, (stored, writes)


def test_a_blocked_callback_does_not_hold_up_workers_or_lose_final_events(
    make_engine, wait_until, gates
):
    """progress_interval=0 publishes every call. The only callback blocks while two jobs report
    150,000 progress updates each: the jobs still finish, the engine's bounded queue coalesces
    progress, and afterwards the callback gets the last progress of each job and both ends."""
    engine = make_engine(workers=2, progress_interval=0)
    release = gates()
    blocked = threading.Event()
    n = 150_000
    seen = {"progress": 0}
    last = {}
    finals = []

    def slow(ev):
        if not blocked.is_set():
            blocked.set()
            assert release.wait(WAIT)
        if ev.type == "job-progress":
            seen["progress"] += 1
            last[ev.job_id] = ev.progress_current
        elif ev.type in FINAL_EVENTS:
            finals.append(ev)

    engine.on("*", slow)

    @engine.processor("spam")
    def spam(ctx, payload):
        for i in range(1, n + 1):
            ctx.progress(i, total=n)
        return None

    engine.start()
    jobs = [engine.enqueue("spam", {}) for _ in range(2)]
    for job in jobs:
        assert job.wait(timeout=WAIT).status == "completed"
    assert blocked.is_set() and not release.is_set()  # finished while the callback was blocked
    release.set()
    wait_until(lambda: len(finals) == 2, timeout=WAIT, what="both job-completed events")
    engine.flush_events()
    local = engine._core.local_stats()
    assert local["events_coalesced"] > 0
    assert seen["progress"] < 2 * n
    assert last == {job.id: n for job in jobs}
    assert sorted(e.job_id for e in finals) == sorted(job.id for job in jobs)


# -- 3. stages, unknown totals, increment, rate / ETA, outcome ---------------------------------


class Steps:
    """Lets the test look at a running job between the steps of its processor."""

    def __init__(self):
        self.reached = [threading.Event() for _ in range(8)]
        self.resume = [threading.Event() for _ in range(8)]

    def pause(self, i):
        self.reached[i].set()
        assert self.resume[i].wait(WAIT)

    def at(self, i):
        assert self.reached[i].wait(WAIT), f"processor did not reach step {i}"

    def go(self, i):
        self.resume[i].set()

    def set(self):
        for event in self.resume:
            event.set()


def test_stages_unknown_totals_and_increment_are_visible_while_running(engine, gates):
    steps = gates(Steps)

    @engine.processor("phased")
    def phased(ctx, payload):
        ctx.stage("Phase 1: loading", total=10)
        for _ in range(4):
            ctx.increment()
        ctx.increment(2)
        steps.pause(0)
        ctx.stage("Phase 2: processing")  # unknown total
        ctx.progress(1200, message="1,250 processed")
        ctx.increment(50)  # unknown total: still a count
        steps.pause(1)
        ctx.progress(1250, total=5000, message="1,250 / 5,000")
        steps.pause(2)
        ctx.progress(3, total=4, stage="Phase 3: saving")
        steps.pause(3)
        return "ok"

    job = engine.enqueue("phased", {})
    engine.start()

    steps.at(0)
    j = engine.get(job.id)
    assert j.status == "running"
    assert j.stage == "Phase 1: loading"
    assert (j.progress_current, j.progress_total) == (6, 10)
    assert j.percent == 60.0 and j.progress == 60
    steps.go(0)

    steps.at(1)
    j = engine.get(job.id)
    assert j.stage == "Phase 2: processing"
    assert j.progress_current == 1250
    assert j.progress_total is None
    assert j.percent is None
    assert j.eta is None
    assert j.message == "1,250 processed"
    steps.go(1)

    steps.at(2)
    j = engine.get(job.id)
    assert (j.progress_current, j.progress_total) == (1250, 5000)
    assert j.percent == 25.0 and j.progress == 25
    assert j.message == "1,250 / 5,000"
    steps.go(2)

    steps.at(3)
    j = engine.get(job.id)
    assert j.stage == "Phase 3: saving"
    assert (j.progress_current, j.progress_total, j.percent) == (3, 4, 75.0)
    steps.go(3)

    done = job.wait(timeout=WAIT)
    assert done.status == "completed"
    assert done.stage == "Phase 3: saving"


def test_progress_is_the_percent_as_an_int_and_never_100_before_the_total(engine, gates):
    """docs/observability.md: ``job.progress`` is ``job.percent`` as an int."""
    steps = gates(Steps)

    @engine.processor("thirds")
    def thirds(ctx, payload):
        ctx.progress(2, total=3)
        steps.pause(0)
        ctx.progress(999, total=1000)
        steps.pause(1)
        ctx.progress(1000, total=1000)
        steps.pause(2)

    job = engine.enqueue("thirds", {})
    engine.start()
    for step, (percent, progress) in enumerate([(200 / 3, 66), (99.9, 99), (100.0, 100)]):
        steps.at(step)
        j = engine.get(job.id)
        assert j.percent == pytest.approx(percent)
        assert j.progress == int(j.percent) == progress
        steps.go(step)
    job.wait(timeout=WAIT)


def test_stage_events_carry_the_stage_and_unknown_totals_have_no_percent(
    engine, recorder, wait_until
):
    @engine.processor("stage-events")
    def stage_events(ctx, payload):
        time.sleep(0.1)
        ctx.stage("counting")
        ctx.progress(7)
        time.sleep(0.2)
        ctx.stage("known", total=8)
        ctx.progress(2, total=8)
        time.sleep(0.2)
        return None

    job = engine.enqueue("stage-events", {})
    progress = recorder()
    engine.on("job-progress", progress, job_id=job.id)
    engine.start()
    job.wait(timeout=WAIT)
    engine.flush_events()
    by_stage = {e.stage: e for e in progress.items}
    assert by_stage["counting"].progress_current == 7
    assert by_stage["counting"].progress_total is None
    assert by_stage["counting"].percent is None
    assert by_stage["known"].progress_current == 2
    assert by_stage["known"].percent == 25.0


def test_rate_and_eta_while_running_with_a_known_total(make_engine, db_path, gates):
    engine = make_engine(workers=2)
    reader = make_engine(db_path)  # stands for another process: no rate, no ETA
    steps = gates(Steps)
    timing = {}

    @engine.processor("steady")
    def steady(ctx, payload):
        t0 = time.monotonic()
        for i in range(1, 61):  # ~100 units per second for ~0.6 s
            ctx.progress(i, total=200)
            time.sleep(0.01)
        timing["rate"] = 60 / (time.monotonic() - t0)
        steps.pause(0)
        return None

    job = engine.enqueue("steady", {})
    progress = []
    engine.on("job-progress", progress.append, job_id=job.id)
    engine.start()
    steps.at(0)
    j = engine.get(job.id)
    assert j.status == "running"
    assert j.progress_current == 60
    engine.flush_events()
    late = [e for e in progress if e.progress_current >= 40]
    assert late and all(e.rate is not None and e.eta is not None for e in late)
    assert late[-1].eta == pytest.approx((200 - late[-1].progress_current) / late[-1].rate, rel=0.1)
    assert j.rate is not None and j.eta is not None
    assert timing["rate"] / 2 <= j.rate <= timing["rate"] * 2, (j.rate, timing)
    # ETA = what is left at the current rate.
    assert j.eta == pytest.approx((200 - 60) / j.rate, rel=0.1, abs=0.05)
    elsewhere = reader.get(job.id)
    assert elsewhere.rate is None and elsewhere.eta is None
    steps.go(0)
    done = job.wait(timeout=WAIT)
    assert done.eta is None  # finished: nothing left to estimate


def test_outcome_counters_are_summed_and_survive_reopening_the_file(make_engine, db_path, gates):
    engine = make_engine(workers=2)
    steps = gates(Steps)

    @engine.processor("sync")
    def sync(ctx, payload):
        ctx.count("updates", 3)
        ctx.count("inserts")
        ctx.count("updates", 2)
        steps.pause(0)
        ctx.count("deletes", 4)
        ctx.count("errors")
        ctx.count("inserts", 1)
        return None

    @engine.processor("sync-fails", max_attempts=1)
    def sync_fails(ctx, payload):
        ctx.count("updates", 7)
        ctx.count("errors", 2)
        raise RuntimeError("gave up")

    job = engine.enqueue("sync", {})
    failing = engine.enqueue("sync-fails", {})
    engine.start()
    steps.at(0)
    assert engine.get(job.id).outcome == {"updates": 5, "inserts": 1}
    steps.go(0)

    expected = {"updates": 5, "inserts": 2, "deletes": 4, "errors": 1}
    assert job.wait(timeout=WAIT).outcome == expected
    assert failing.wait(timeout=WAIT).status == "failed"
    assert failing.outcome == {"updates": 7, "errors": 2}
    engine.stop()

    reopened = make_engine(db_path)
    assert reopened.get(job.id).outcome == expected
    assert reopened.get(failing.id).outcome == {"updates": 7, "errors": 2}
    assert reopened.get(job.id).to_dict()["outcome"] == expected


# -- 4. logs ----------------------------------------------------------------------------------


class Unserialisable:
    def __repr__(self):
        return "<Unserialisable thing>"


def test_logs_are_stored_with_fields_and_stage_and_queried_with_filters(make_engine, db_path):
    engine = make_engine(workers=1)
    marks = {}

    @engine.processor("logger")
    def logger(ctx, payload):
        ctx.log("debug", "d0")
        ctx.log("info", "i1", n=1, name="x", nested={"a": [1, 2]}, thing=Unserialisable())
        ctx.stage("S1")
        ctx.log("warning", "w2", retry_in=1.5)
        ctx.log("error", "e3")
        time.sleep(0.05)
        marks["since"] = time.time()
        time.sleep(0.05)
        for i in range(20):
            ctx.log("info", f"late {i}", i=i)
        try:
            ctx.log("fatal", "never stored")
        except ValueError as exc:  # ValidationError naming the level
            marks["bad_level"] = exc
        return None

    engine.start()
    job = engine.enqueue("logger", {}).wait(timeout=WAIT)
    assert job.status == "completed"

    lines = engine.logs(job.id)
    assert [line.message for line in lines] == ["d0", "i1", "w2", "e3"] + [
        f"late {i}" for i in range(20)
    ]
    ids = [line.id for line in lines]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(line.job_id == job.id and line.attempt == 1 for line in lines)
    assert [line.level for line in lines[:4]] == ["debug", "info", "warning", "error"]
    assert lines[0].fields == {}
    assert lines[1].fields == {
        "n": 1,
        "name": "x",
        "nested": {"a": [1, 2]},
        "thing": "<Unserialisable thing>",
    }
    assert lines[2].fields == {"retry_in": 1.5}
    assert [line.stage for line in lines[:4]] == [None, None, "S1", "S1"]
    assert lines[-1].stage == "S1"
    ats = [line.at for line in lines]
    assert ats == sorted(ats)
    assert job.created_at <= ats[0] <= ats[-1] <= job.completed_at

    # Bad level: the processor's call raised, naming the field; nothing was stored.
    assert isinstance(marks["bad_level"], ValidationError)
    assert "level" in str(marks["bad_level"]) and "fatal" in str(marks["bad_level"])
    assert "never stored" not in [line.message for line in lines]

    # level= is a minimum.
    assert [line.message for line in engine.logs(job.id, level="warning")] == ["w2", "e3"]
    assert [line.message for line in engine.logs(job.id, level="error")] == ["e3"]
    assert "d0" not in [line.message for line in engine.logs(job.id, level="info")]
    assert len(engine.logs(job.id, level="info")) == 23
    assert len(engine.logs(job.id, level="debug")) == 24
    # since= (Unix seconds or a datetime).
    late = [f"late {i}" for i in range(20)]
    assert [line.message for line in engine.logs(job.id, since=marks["since"])] == late
    from datetime import datetime

    since_dt = datetime.fromtimestamp(marks["since"])
    assert [line.message for line in engine.logs(job.id, since=since_dt)] == late
    # limit= takes the first lines, tail=True the last ones (still oldest first).
    assert [line.message for line in engine.logs(job.id, limit=3)] == ["d0", "i1", "w2"]
    assert [line.message for line in engine.logs(job.id, limit=3, tail=True)] == [
        "late 17",
        "late 18",
        "late 19",
    ]
    # after= continues a follow-up from the last id seen.
    after = engine.logs(job.id, after=lines[3].id, limit=5)
    assert [line.message for line in after] == [f"late {i}" for i in range(5)]
    assert engine.logs(job.id, after=lines[-1].id) == []
    # Filters combine.
    combined = engine.logs(job.id, level="info", since=marks["since"], limit=2, tail=True)
    assert [line.message for line in combined] == ["late 18", "late 19"]
    assert [line.message for line in engine.logs(job)] == [line.message for line in lines]
    assert [line.message for line in job.logs(level="error")] == ["e3"]
    assert lines[1].to_dict()["fields"]["n"] == 1

    # Lines survive reopening the file.
    engine.stop()
    reopened = make_engine(db_path)
    again = reopened.logs(job.id)
    assert [(line.id, line.message, line.level, line.stage, line.fields) for line in again] == [
        (line.id, line.message, line.level, line.stage, line.fields) for line in lines
    ]


def test_logs_of_an_unknown_job_and_with_a_bad_level_raise_naming_the_field(engine):
    job = engine.enqueue("noop", {})
    assert engine.logs(job.id) == []  # a known job without lines
    with pytest.raises(ValidationError, match="level"):
        engine.logs(job.id, level="fatal")
    with pytest.raises(TypeError, match="job_id"):
        engine.logs(12345)
    with pytest.raises(ValueError, match="limit"):
        engine.logs(job.id, limit=-1)
    with pytest.raises(ValidationError) as unknown:
        engine.logs(UNKNOWN_ID)
    assert UNKNOWN_ID in str(unknown.value)
    # Like every input error, it names the field (e.g. "limit must be 0 or more, got -1").
    assert "job_id" in str(unknown.value), str(unknown.value)
    # docs/observability.md: "An unknown job id raises `ValidationError` (field `job_id`)".
    assert hasattr(jobforge, "ValidationError"), "jobforge has no ValidationError"


def test_job_log_events_stream_each_line_live(engine, recorder, wait_until, gates):
    steps = gates(Steps)

    @engine.processor("tail")
    def tail(ctx, payload):
        ctx.log("info", "starting", batch=1)
        steps.pause(0)
        ctx.stage("copy")
        ctx.log("warning", "slow disk", ms=250)
        return None

    job = engine.enqueue("tail", {})
    log_events = recorder()
    engine.on("job-log", log_events, job_id=job.id)
    engine.start()
    steps.at(0)
    # The first line is delivered while the job still runs (a live tail).
    first = wait_until(lambda: log_events.items, what="first job-log event")[0]
    assert engine.get(job.id).status == "running"
    assert (first.type, first.level, first.message, first.fields) == (
        "job-log",
        "info",
        "starting",
        {"batch": 1},
    )
    assert first.stage is None
    steps.go(0)
    job.wait(timeout=WAIT)
    wait_until(lambda: len(log_events) == 2, what="second job-log event")
    second = log_events.items[1]
    assert (second.level, second.message, second.fields, second.stage) == (
        "warning",
        "slow disk",
        {"ms": 250},
        "copy",
    )
    stored = engine.logs(job.id)
    assert [e.log_id for e in log_events.items] == [line.id for line in stored]
    assert all(e.job_type == "tail" and e.job_id == job.id for e in log_events.items)


# -- 5. asyncio and blocking streams --------------------------------------------------------------


async def _ticker(ticks, stop):
    while not stop.is_set():
        ticks.append(time.monotonic())
        await asyncio.sleep(0.01)


def _max_gap(ticks):
    return max((b - a for a, b in zip(ticks, ticks[1:])), default=0.0)


def test_aevents_delivers_events_without_blocking_the_loop(engine):
    engine.start()

    async def main():
        ticks = []
        stop = asyncio.Event()
        ticker = asyncio.create_task(_ticker(ticks, stop))
        seen = []
        async with engine.aevents(timeout=WAIT) as stream:
            job = engine.enqueue("sleep", {"seconds": 0.5})
            async for ev in stream:
                if ev.job_id != job.id:
                    continue
                seen.append(ev)
                if ev.type in FINAL_EVENTS:
                    break
        stop.set()
        await ticker
        return job, seen, ticks

    t0 = time.monotonic()
    job, seen, ticks = asyncio.run(main())
    assert time.monotonic() - t0 < WAIT
    kinds = _kinds(seen)
    assert kinds[0] == "job-created"
    assert kinds[-1] == "job-completed"
    assert "job-started" in kinds and "job-progress" in kinds
    assert len(ticks) >= 20  # the loop kept turning while events were awaited
    assert _max_gap(ticks) < 0.25, _max_gap(ticks)


def test_aevents_timeout_ends_the_async_iteration(engine):
    async def main():
        got = []
        t0 = time.monotonic()
        async for ev in engine.aevents(timeout=0.3):
            got.append(ev)
        return got, time.monotonic() - t0

    got, elapsed = asyncio.run(main())
    assert got == []
    assert 0.25 <= elapsed < 3


def test_await_job_and_wait_async_keep_the_loop_responsive(engine, gates):
    gate = gates()

    @engine.processor("held")
    def held(ctx, payload):
        assert gate.wait(WAIT)
        return "released"

    engine.start()

    async def main():
        ticks = []
        stop = asyncio.Event()
        ticker = asyncio.create_task(_ticker(ticks, stop))
        slept = await engine.enqueue("sleep", {"seconds": 0.3})
        blocked = engine.enqueue("held", {})
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await blocked.wait_async(timeout=0.3)
        timed_out_after = time.monotonic() - t0
        gate.set()
        released = await blocked.wait_async(timeout=WAIT)
        stop.set()
        await ticker
        return slept, released, timed_out_after, ticks

    slept, released, timed_out_after, ticks = asyncio.run(main())
    assert slept.status == "completed" and slept.result == {"slept": 0.3}
    assert released.status == "completed" and released.result == "released"
    assert 0.25 <= timed_out_after < 2
    assert len(ticks) >= 30
    assert _max_gap(ticks) < 0.25, _max_gap(ticks)


def test_blocking_events_iterator_yields_events_then_ends_after_the_timeout(engine):
    engine.start()
    stream = engine.events(timeout=0.4)
    job = engine.enqueue("noop", {})
    t0 = time.monotonic()
    seen = list(stream)  # ends 0.4 s after the last event
    elapsed = time.monotonic() - t0
    kinds = _kinds(_of(seen, job.id))
    assert kinds[0] == "job-created" and kinds[-1] == "job-completed"
    assert 0.35 <= elapsed < 5
    # Ended: the subscription is gone and iterating again yields nothing.
    assert list(stream) == []
    with engine.events(timeout=0.2) as quiet:
        t0 = time.monotonic()
        assert list(quiet) == []
        assert 0.15 <= time.monotonic() - t0 < 3


def test_a_slow_consumer_gets_coalesced_progress_but_every_final_event(make_engine):
    engine = make_engine(workers=3, progress_interval=0.005)
    n_jobs = 6

    @engine.processor("noisy")
    def noisy(ctx, payload):
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 0.4:
            i += 1
            ctx.progress(i, total=10**9)
        ctx.log("info", "done", calls=i)
        if payload["fail"]:
            raise RuntimeError("noisy failure")
        return i

    stream = engine.events(job_type="noisy", maxsize=5, timeout=1.0)
    engine.start()
    jobs = [engine.enqueue("noisy", {"fail": k % 3 == 0}, max_attempts=1) for k in range(n_jobs)]
    for job in jobs:
        assert job.wait(timeout=WAIT).is_final  # nobody reads the stream meanwhile
    seen = list(stream)

    assert stream.coalesced > 0
    for job in jobs:
        events = _of(seen, job.id)
        kinds = _kinds(events)
        final = "job-failed" if job.status == "failed" else "job-completed"
        assert kinds.count(final) == 1, kinds
        assert kinds[-1] == final
        statuses = [e.status for e in events if e.type == "job-status-changed"]
        assert statuses == ["queued", "running", job.status]
        assert {"job-created", "job-queued", "job-started"} <= set(kinds)
        values = [e.progress_current for e in events if e.type == "job-progress"]
        assert values == sorted(values)
    assert sum(j.status == "failed" for j in jobs) == 2
    progress_events = sum(e.type == "job-progress" for e in seen)
    # ~80 progress events per job were published at 5 ms; the queue kept few of them.
    assert progress_events < n_jobs * 20, progress_events


# -- 6. numbers -------------------------------------------------------------------------------


def test_stats_per_type_match_a_known_workload(make_engine):
    engine = make_engine(workers=4)

    @engine.processor("a")
    def a(ctx, payload):
        time.sleep(payload["s"])
        return None

    @engine.processor("b", max_attempts=1)
    def b(ctx, payload):
        raise RuntimeError("b always fails")

    @engine.processor("r", max_attempts=2, retry_delay=0.01)
    def r(ctx, payload):
        if ctx.attempt == 1:
            raise RuntimeError("retry me")
        return None

    fast = engine.enqueue_many("a", [{"s": 0.1}] * 8)
    long_jobs = [engine.enqueue("sleep", {"seconds": 0.3}) for _ in range(4)]
    failing = engine.enqueue_many("b", [{}] * 3)
    retried = engine.enqueue("r", {})
    engine.start()
    for job in [*fast, *long_jobs, *failing, retried]:
        assert job.wait(timeout=WAIT).is_final

    stats = engine.stats()
    assert stats["total"] == 16
    assert stats["completed"] == 13 and stats["failed"] == 3
    assert stats["queued"] == stats["running"] == 0
    assert {k: stats[k] for k in ("total", *jobforge.STATUSES)} == engine.counts()
    types = stats["types"]
    assert set(types) >= {"a", "b", "r", "sleep"}

    ta, tb, tr, ts = types["a"], types["b"], types["r"], types["sleep"]
    assert ta["counts"]["completed"] == 8 and sum(ta["counts"].values()) == 8
    assert tb["counts"]["failed"] == 3 and sum(tb["counts"].values()) == 3
    assert tr["counts"]["completed"] == 1 and tr["retried"] == 1
    assert ta["error_rate"] == 0.0
    assert tb["error_rate"] == 1.0
    assert tr["error_rate"] == pytest.approx(0.5)
    assert ta["runs"] == 8 and tb["runs"] == 3 and ts["runs"] == 4

    # Run times: 0.1 s and 0.3 s sleeps, within the histogram's ~20 % (plus a little overhead).
    for t, seconds in ((ta, 0.1), (ts, 0.3)):
        for key in ("mean_run_ms", "p50_run_ms", "p95_run_ms"):
            assert 0.8 * seconds * 1000 <= t[key] <= 1.3 * seconds * 1000, (key, t[key])
    assert ta["p95_run_ms"] < ts["p50_run_ms"]

    # Throughput over the last minute: same window for every type, so ratios are exact.
    assert ta["created_per_s"] > 0 and ta["completed_per_s"] > 0
    assert ta["created_per_s"] == pytest.approx(2 * ts["created_per_s"])
    assert ta["completed_per_s"] == pytest.approx(8 * tr["completed_per_s"])
    assert tb["created_per_s"] > 0 and tb["completed_per_s"] == 0

    assert stats["queued_total"] == 0 and stats["due"] == 0 and stats["oldest_due_age_ms"] == 0


def test_windowed_stats_reach_other_engines_within_seconds_and_survive_stop(
    make_engine, db_path, wait_until
):
    """A process sums its windowed figures in memory and writes them about once a second (with
    its next transaction, a heartbeat at the latest) and when it stops: another engine on the
    file sees them within seconds, and an engine opened after the stop sees all of them."""
    engine = make_engine(workers=2, heartbeat_interval=0.5)
    engine.register("a", lambda ctx, payload: None)
    jobs = engine.enqueue_many("a", [{}] * 5)
    engine.start()
    for job in jobs:
        assert job.wait(timeout=WAIT).status == "completed"
    observer = make_engine(allow_unknown_types=True)  # never started: reads the file only

    def observed_runs():
        return observer.stats()["types"].get("a", {}).get("runs", 0)

    wait_until(lambda: observed_runs() == 5, timeout=10, what="the other engine sees 5 runs")
    more = engine.enqueue_many("a", [{}] * 3)
    for job in more:
        assert job.wait(timeout=WAIT).status == "completed"
    engine.stop()
    later = make_engine(allow_unknown_types=True)
    t = later.stats()["types"]["a"]
    assert t["runs"] == 8 and t["counts"]["completed"] == 8


def test_queue_stats_counts_pending_delayed_and_active_jobs(make_engine, wait_until, gates):
    engine = make_engine(workers=3)
    gate = gates()
    running = threading.Event()

    @engine.processor("held")
    def held(ctx, payload):
        running.set()
        assert gate.wait(WAIT)

    for _ in range(3):
        engine.enqueue("noop", {})
    for _ in range(2):
        engine.enqueue("noop", {}, delay=60)
    q = engine.queue_stats()
    assert q == {"pending": 3, "active": 0, "concurrency": 3, "delayed": 2, "running_here": 0}
    stats = engine.stats()
    assert stats["queued_total"] == 5 and stats["due"] == 3
    time.sleep(0.05)
    assert engine.stats()["oldest_due_age_ms"] >= 40

    engine.start()
    wait_until(lambda: engine.counts()["completed"] == 3, what="the three due jobs done")
    job = engine.enqueue("held", {})
    assert running.wait(WAIT)
    # A job claimed in memory is 'queued' in the file until its start is written (soon after).
    q = wait_until(
        lambda: (lambda q: q if q["active"] == 1 else None)(engine.queue_stats()),
        what="the held job active",
    )
    assert q == {"pending": 0, "active": 1, "concurrency": 3, "delayed": 2, "running_here": 1}
    gate.set()
    job.wait(timeout=WAIT)
    assert engine.queue_stats()["running_here"] == 0


def test_queue_stats_never_reports_delayed_jobs_that_do_not_exist(make_engine):
    """Nothing is enqueued with a delay, so ``delayed`` must stay 0 while jobs start and end.
    queue_stats() derives it as queued_total - due: both must come from one snapshot."""
    engine = make_engine(workers=4)
    engine.start()
    jobs = engine.enqueue_many("sleep", [{"seconds": 0.01}] * 200)
    samples = bad = 0
    seen = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.6:
        q = engine.queue_stats()
        samples += 1
        if q["delayed"] != 0:
            bad += 1
            seen.append(q)
    for job in jobs:
        job.wait(timeout=WAIT)
    assert samples > 100
    assert bad == 0, f"{bad} of {samples} samples reported delayed jobs, e.g. {seen[:3]}"


def test_queue_stats_active_counts_a_job_whose_start_is_committed(make_engine, wait_until, gates):
    engine = make_engine(workers=2)
    gate = gates()

    @engine.processor("held")
    def held(ctx, payload):
        assert gate.wait(WAIT)

    engine.start()
    job = engine.enqueue("held", {})
    # The running state reaches the store once the job outlasts a commit.
    wait_until(lambda: engine.queue_stats()["active"] == 1, what="active == 1")
    assert engine.queue_stats()["running_here"] == 1
    assert engine.get(job.id).status == "running"
    gate.set()
    job.wait(timeout=WAIT)
    assert engine.queue_stats() == {
        "pending": 0,
        "active": 0,
        "concurrency": 2,
        "delayed": 0,
        "running_here": 0,
    }


def test_health_is_ok_on_a_healthy_engine(engine):
    engine.start()
    assert engine.enqueue("noop", {}).wait(timeout=WAIT).status == "completed"
    h = engine.health()
    assert h["status"] == "ok", h
    assert h["reasons"] == []
    assert h["database"] == {"reachable": True, "integrity": "ok"}
    me = [w for w in h["workers"] if w["id"] == engine.worker_id]
    assert len(me) == 1 and me[0]["alive"] is True and me[0]["state"] == "running"
    assert 0 <= me[0]["heartbeat_age"] < 10
    assert h["queue"] == {"queued": 0, "due": 0, "oldest_due_age": 0.0, "unserved_types": []}
    assert h["error_rates"] == {"noop": 0.0}
    assert engine.workers()[0]["id"] == engine.worker_id


def test_health_is_degraded_when_jobs_are_due_and_no_worker_runs(make_engine, tmp_path):
    registered = make_engine(workers=1)
    registered.enqueue("noop", {})
    registered.enqueue("noop", {})
    registered.enqueue("noop", {}, delay=60)  # not due: no worker needed for it yet
    h = registered.health()
    assert h["status"] == "degraded"
    assert any("2 job(s) due" in r and "no live worker" in r for r in h["reasons"]), h
    assert h["database"]["integrity"] == "ok"
    assert h["queue"]["queued"] == 3 and h["queue"]["due"] == 2

    producer = make_engine(str(tmp_path / "producer.db"), allow_unknown_types=True)
    producer.enqueue("resize", {"path": "a.jpg"})
    h = producer.health()
    assert h["status"] == "degraded"
    assert any("due" in r and "no live worker" in r for r in h["reasons"]), h
    assert h["workers"] == []

    time.sleep(0.3)
    h = registered.health(max_wait=0.1)
    assert any("oldest due job has waited" in r for r in h["reasons"]), h
    assert h["queue"]["oldest_due_age"] >= 0.25

    # Only delayed jobs: nothing is waiting, so nothing is wrong.
    quiet = make_engine(str(tmp_path / "quiet.db"))
    quiet.enqueue("noop", {}, delay=60)
    assert quiet.health()["status"] == "ok"

    # Once a worker runs them the verdict is ok again.
    registered.start()
    for job in registered.jobs(status="queued"):
        if job.run_at <= time.time() * 1000:
            job.wait(timeout=WAIT)
    h = registered.health()
    assert h["status"] == "ok", h


def test_health_seen_from_a_monitor_reports_a_worker_that_stopped_heartbeating(
    make_engine, db_path
):
    worker = make_engine(workers=1, heartbeat_interval=5)  # one heartbeat every 5 s
    worker.start()
    monitor = make_engine(db_path, lease=0.2)  # not started: it only reads the file
    time.sleep(0.4)
    h = monitor.health()
    [seen] = [w for w in h["workers"] if w["id"] == worker.worker_id]
    assert seen["alive"] is False and seen["heartbeat_age"] >= 0.3
    assert seen["state"] == "running"
    assert h["status"] == "degraded"
    assert any("stopped heartbeating" in r and worker.worker_id in r for r in h["reasons"]), h
    # The worker's own view (a 30 s lease) is fine.
    assert worker.health()["status"] == "ok"
    _, values = _samples(monitor.metrics_text())
    assert values[("jobforge_workers_alive", ())] == 0
    assert values[("jobforge_health", (("status", "degraded"),))] == 1


def test_health_reports_a_high_error_rate(make_engine):
    engine = make_engine(workers=4)

    @engine.processor("broken", max_attempts=1)
    def broken(ctx, payload):
        raise RuntimeError("always")

    engine.start()
    for job in engine.enqueue_many("broken", [{}] * 10):
        job.wait(timeout=WAIT)
    h = engine.health()
    assert h["status"] == "degraded"
    assert h["error_rates"]["broken"] == 1.0
    assert any("broken" in r and "failed" in r for r in h["reasons"]), h


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs of the test's own (unmounted at teardown, after the engines stop)."""
    where = tmp_path / "small"
    where.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
        capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        pytest.skip(f"mounting a 4 MB tmpfs is not permitted here: {out.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(path):
    """Writes `path` until the disk is full; returns the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"x" * 65536
        while True:
            try:
                n = os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return written
            if n == 0:
                return written
            written += n
    finally:
        os.close(fd)


# Issue 21 item 1 / issue 15 item 5: the disk fills while a worker runs jobs. The ends are kept and
# retried (on main they were printed and dropped: the jobs stayed running and wait() never
# returned); health() says degraded with the reason; enqueue is refused at once; once space is
# freed the ends commit, wait() returns, and nothing is lost.
@pytest.mark.parametrize("claim_in_memory", [True, False], ids=["memory", "durable"])
def test_a_full_disk_keeps_the_ends_of_jobs_until_space_is_freed(
    small_disk, make_engine, wait_until, claim_in_memory
):
    engine = make_engine(str(small_disk / "jobs.db"), workers=2, claim_in_memory=claim_in_memory)
    release = threading.Event()

    @engine.processor("hold")
    def hold(ctx, payload):
        ctx.log("info", f"holding {payload['n']}")
        release.wait(WAIT)
        return {"n": payload["n"]}

    engine.start()
    jobs = [engine.enqueue("hold", {"n": n}) for n in range(2)]
    for job in jobs:
        wait_until(lambda job=job: job.refresh().status == "running", what="jobs running")
    assert engine.health(integrity=False)["status"] == "ok"

    assert _fill(str(small_disk / "filler")) > 0
    release.set()
    wait_until(lambda: engine.store_health().startswith("degraded: "), what="degraded")
    h = engine.health(integrity=False)
    assert h["status"] == "degraded", h
    assert any(
        r.startswith("store degraded: writes failing since") and "database or disk is full" in r
        for r in h["reasons"]
    ), h
    with pytest.raises(jobforge.StoreError):
        engine.enqueue("hold", {"n": 99})
    with pytest.raises(TimeoutError):
        jobs[0].wait(timeout=0.5)  # its end is only kept, not written
    assert [job.refresh().status for job in jobs] == ["running", "running"]

    waited = []
    waiter = threading.Thread(target=lambda: waited.append(jobs[1].wait(timeout=WAIT).status))
    waiter.start()
    os.remove(small_disk / "filler")
    waiter.join(WAIT + 1)
    assert waited == ["completed"]
    for n, job in enumerate(jobs):
        assert job.wait(timeout=WAIT).status == "completed"
        assert job.result == {"n": n}
        assert [line.message for line in job.logs()] == [f"holding {n}"]
    wait_until(lambda: engine.store_health() == "ok", what="store ok again")
    assert engine.health(integrity=False)["status"] == "ok"
    counts = engine.counts()
    assert counts["completed"] == 2 and counts["total"] == 2, counts


def test_health_is_failing_after_writes_fail_for_longer_than_the_limit(small_disk, make_engine):
    engine = make_engine(str(small_disk / "jobs.db"), workers=1)
    engine.start()
    assert engine.enqueue("noop", {}).wait(timeout=WAIT).status == "completed"
    _fill(str(small_disk / "filler"))
    with pytest.raises(jobforge.StoreError):
        engine.enqueue("noop", {})
    assert engine.store_health().startswith("degraded: writes failing since ")
    time.sleep(1.1)
    from jobforge.observe import health

    h = health(engine, integrity=False, max_write_failure=0.5)
    assert h["status"] == "failing", h
    assert engine.health(integrity=False)["status"] == "degraded"  # the default limit is 60 s
    os.remove(small_disk / "filler")


PG_BIN = "/usr/lib/postgresql/15/bin"


@pytest.fixture
def small_pg():
    """A private PostgreSQL server whose tables live in a tablespace on a 4 MB tmpfs of its own
    (its WAL stays on the ordinary disk): (url, the tmpfs folder). Stopped at teardown."""
    import shutil
    import socket
    import tempfile

    if not os.path.exists(f"{PG_BIN}/initdb") or shutil.which("runuser") is None:
        pytest.skip("no PostgreSQL server binaries here")
    home = tempfile.mkdtemp(prefix="jfpg")  # short: a Unix socket path has a small limit
    small = os.path.join(home, "small")
    os.mkdir(small)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", small], capture_output=True, text=True
    )
    if out.returncode != 0:
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(f"mounting a 4 MB tmpfs is not permitted here: {out.stderr.strip()}")
    space = os.path.join(small, "space")
    os.mkdir(space)
    for p in (home, small, space):
        shutil.chown(p, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(*args):
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True, timeout=60
        )

    data = f"{home}/data"
    try:
        out = pg(f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "--no-sync")
        if out.returncode != 0:
            pytest.skip(f"initdb failed: {out.stderr.strip()}")
        opts = f"-p {port} -k {home} -c listen_addresses='' -c fsync=off"
        out = pg(f"{PG_BIN}/pg_ctl", "-D", data, "-o", opts, "-l", f"{home}/log", "-w", "start")
        assert out.returncode == 0, out.stderr
        base = f"postgresql:///postgres?host={home}&port={port}&user=postgres"
        sql = f"CREATE TABLESPACE small LOCATION '{space}'"
        out = subprocess.run(["psql", base, "-qAtc", sql], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        yield f"{base}&options=-c%20default_tablespace%3Dsmall", small
    finally:
        pg(f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop")
        subprocess.run(["umount", "-l", small], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


# The same on PostgreSQL: the server refuses the end (could not extend file: no space left). On
# main the end was printed and dropped (the jobs stayed running, store_health() said ok).
def test_a_full_disk_on_the_postgresql_server_keeps_the_ends_of_jobs(
    small_pg, make_engine, wait_until
):
    url, disk = small_pg
    engine = make_engine(url, workers=2)
    release = threading.Event()

    @engine.processor("hold")
    def hold(ctx, payload):
        release.wait(WAIT)
        return {"n": payload["n"], "pad": payload["pad"]}  # toasted: it needs new pages

    engine.start()
    pads = [os.urandom(16384).hex() for _ in range(2)]
    jobs = [engine.enqueue("hold", {"n": n, "pad": pads[n]}) for n in range(2)]
    for job in jobs:
        wait_until(lambda job=job: job.refresh().status == "running", what="jobs running")

    assert _fill(os.path.join(disk, "filler")) > 0
    release.set()
    wait_until(lambda: engine.store_health().startswith("degraded: "), what="degraded")
    assert "writes failing since" in engine.store_health(), engine.store_health()
    assert "No space left on device" in engine.store_health(), engine.store_health()
    h = engine.health(integrity=False)
    assert h["status"] == "degraded", h
    with pytest.raises(jobforge.StoreError):
        engine.enqueue("hold", {"n": 99, "pad": ""})
    assert [job.refresh().status for job in jobs] == ["running", "running"]

    os.remove(os.path.join(disk, "filler"))
    for n, job in enumerate(jobs):
        assert job.wait(timeout=WAIT).status == "completed"
        assert job.result == {"n": n, "pad": pads[n]}
    wait_until(lambda: engine.store_health() == "ok", what="store ok again")
    counts = engine.counts()
    assert counts["completed"] == 2 and counts["total"] == 2, counts


def _samples(text):
    families = {f.name: f for f in text_string_to_metric_families(text)}
    values = {}
    for family in families.values():
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, values


def test_metrics_text_parses_with_prometheus_client_and_matches_the_numbers(make_engine):
    engine = make_engine(workers=4)
    odd_type = 'odd "type" \\ with\nnewline'

    @engine.processor("ok")
    def ok(ctx, payload):
        ctx.log("info", "fine")
        time.sleep(0.05)

    @engine.processor("bad", max_attempts=1)
    def bad(ctx, payload):
        raise RuntimeError("nope")

    @engine.processor(odd_type)
    def odd(ctx, payload):
        return None

    jobs = engine.enqueue_many("ok", [{}] * 5) + engine.enqueue_many("bad", [{}] * 2)
    jobs.append(engine.enqueue(odd_type, {}))
    engine.start()
    for job in jobs:
        job.wait(timeout=WAIT)
    engine.enqueue("ok", {}, delay=60)

    text = engine.metrics_text()
    families, values = _samples(text)

    expected_families = {
        "jobforge_jobs": "gauge",
        "jobforge_queue_depth": "gauge",
        "jobforge_jobs_due": "gauge",
        "jobforge_oldest_due_age_seconds": "gauge",
        "jobforge_job_run_seconds_mean": "gauge",
        "jobforge_job_run_seconds_p50": "gauge",
        "jobforge_job_run_seconds_p95": "gauge",
        "jobforge_job_error_ratio": "gauge",
        "jobforge_jobs_created_per_second": "gauge",
        "jobforge_jobs_completed_per_second": "gauge",
        "jobforge_workers_alive": "gauge",
        "jobforge_worker_heartbeat_age_seconds": "gauge",
        "jobforge_health": "gauge",
        "jobforge_engine_running_jobs": "gauge",
        "jobforge_engine_worker_threads": "gauge",
        "jobforge_progress_writes": "counter",
        "jobforge_log_lines": "counter",
        "jobforge_events_coalesced": "counter",
        "jobforge_events_dropped": "counter",
    }
    assert {name: f.type for name, f in families.items()} == expected_families
    for family in families.values():
        assert family.documentation  # HELP present

    def value(name, **labels):
        return values[(name, tuple(sorted(labels.items())))]

    assert value("jobforge_jobs", type="ok", status="completed") == 5
    assert value("jobforge_jobs", type="ok", status="queued") == 1
    assert value("jobforge_jobs", type="bad", status="failed") == 2
    assert value("jobforge_jobs", type=odd_type, status="completed") == 1  # labels escaped
    assert value("jobforge_queue_depth") == 1
    assert value("jobforge_jobs_due") == 0
    assert value("jobforge_job_error_ratio", type="bad") == 1.0
    assert value("jobforge_job_error_ratio", type="ok") == 0.0
    assert 0.04 <= value("jobforge_job_run_seconds_mean", type="ok") <= 0.065
    assert value("jobforge_jobs_created_per_second", type="ok") > 0
    assert value("jobforge_jobs_completed_per_second", type="ok") > 0
    assert value("jobforge_jobs_completed_per_second", type="bad") == 0
    assert value("jobforge_workers_alive") == 1
    assert value("jobforge_health", status="ok") == 1
    assert value("jobforge_health", status="degraded") == 0
    assert value("jobforge_health", status="failing") == 0
    assert value("jobforge_engine_worker_threads") == 4
    assert value("jobforge_engine_running_jobs") == 0
    assert value("jobforge_log_lines_total") == engine._core.local_stats()["log_lines"] == 5
    hb = [k for k in values if k[0] == "jobforge_worker_heartbeat_age_seconds"]
    assert len(hb) == 1 and dict(hb[0][1])["worker"] == engine.worker_id
    # Agrees with stats().
    detail = engine.stats()["types"]["ok"]
    assert value("jobforge_job_run_seconds_p95", type="ok") == pytest.approx(
        detail["p95_run_ms"] / 1000.0
    )
    assert text.endswith("\n")


def test_metrics_text_of_a_degraded_engine(make_engine):
    engine = make_engine(workers=1)
    engine.enqueue("noop", {})
    _, values = _samples(engine.metrics_text())
    assert values[("jobforge_health", (("status", "degraded"),))] == 1
    assert values[("jobforge_health", (("status", "ok"),))] == 0
    assert values[("jobforge_jobs_due", ())] == 1
    assert values[("jobforge_workers_alive", ())] == 0
    assert values[("jobforge_jobs", (("status", "queued"), ("type", "noop")))] == 1
