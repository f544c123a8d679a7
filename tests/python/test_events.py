"""Events: typed events in commit order on one delivery thread (never a worker), after the state is
committed; filters; a raising callback is logged and kept; unsubscribe stops delivery."""

import logging
import threading
import time

WAIT = 10  # generous guard against hangs, never a speed assertion

LIFECYCLE = ["created", "queued", "running", "completed", "failed", "cancelled", "timeout"]


def _register_short_job(engine, name="short"):
    """A processor that runs long enough for its `running` state to be committed on its own."""

    @engine.processor(name)
    def short(ctx, payload):
        time.sleep(0.1)
        return {"echo": payload}


def test_status_changed_events_follow_the_lifecycle_in_order(engine, recorder, wait_until):
    changes = recorder()
    engine.on("job-status-changed", changes)
    _register_short_job(engine)
    engine.start()

    job = engine.enqueue("short", {"n": 1}).wait(timeout=WAIT)
    assert job.status == "completed"

    wait_until(
        lambda: any(e.job_id == job.id and e.status == "completed" for e in changes.items),
        what="completed status event",
    )
    statuses = [e.status for e in changes.items if e.job_id == job.id]
    assert statuses[-1] == "completed"
    assert "running" in statuses
    assert set(statuses) <= {"created", "queued", "running", "completed"}
    # Strictly forward through the lifecycle: in order, nothing repeated.
    assert statuses == sorted(set(statuses), key=LIFECYCLE.index)
    assert all(e.type == "job-status-changed" and e.job_type == "short" for e in changes.items)


def test_completed_event_carries_the_result_after_it_is_committed(engine, recorder, wait_until):
    seen = recorder()

    def on_completed(event):
        seen((event, engine.get(event.job_id).status))

    engine.on("job-completed", on_completed)
    _register_short_job(engine)
    engine.start()

    job = engine.enqueue("short", {"n": 2}).wait(timeout=WAIT)

    wait_until(lambda: len(seen) == 1, what="completed event")
    event, status_when_delivered = seen.items[0]
    assert event.type == "job-completed"
    assert event.job_id == job.id
    assert event.job_type == "short"
    assert event.status == "completed"
    assert event.result == {"echo": {"n": 2}}
    assert event.attempt == 1
    assert isinstance(event.timestamp, int) and event.timestamp >= job.created_at
    assert status_when_delivered == "completed"


def test_failed_event_carries_the_error(engine, recorder, wait_until):
    failures = recorder()
    engine.on("job-failed", failures)

    @engine.processor("boom")
    def boom(ctx, payload):
        raise ValueError("boom")

    engine.start()
    job = engine.enqueue("boom", {}, max_attempts=1).wait(timeout=WAIT)

    assert job.status == "failed"
    wait_until(lambda: len(failures) == 1, what="failed event")
    event = failures.items[0]
    assert event.job_id == job.id
    assert event.status == "failed"
    assert "ValueError: boom" in event.error


def test_started_event_is_published_when_a_job_starts(engine, recorder, wait_until):
    started = recorder()
    engine.on("job-started", started)
    _register_short_job(engine)
    engine.start()

    job = engine.enqueue("short", {}).wait(timeout=WAIT)

    wait_until(lambda: len(started) == 1, what="started event")
    assert started.items[0].job_id == job.id
    assert started.items[0].attempt == 1


def test_job_on_progress_receives_progress_events_with_messages(engine, recorder, wait_until):
    @engine.processor("steps")
    def steps(ctx, payload):
        ctx.progress(1, total=2, message="loading")
        time.sleep(0.15)
        ctx.progress(2, total=2, message="saving")
        time.sleep(0.15)

    job = engine.enqueue("steps", {})
    other = engine.enqueue("steps", {})
    progress = recorder()
    job.on_progress(progress)
    engine.start()

    job.wait(timeout=WAIT)
    other.wait(timeout=WAIT)

    wait_until(lambda: any(e.message == "saving" for e in progress.items), what="saving event")
    events = progress.items
    assert all(e.job_id == job.id for e in events)
    assert all(e.type == "job-progress" for e in events)
    by_message = {e.message: e for e in events}
    assert by_message["loading"].progress == 50
    assert (by_message["loading"].progress_current, by_message["loading"].progress_total) == (1, 2)
    assert by_message["saving"].progress == 100
    messages = [e.message for e in events]
    assert messages.index("loading") < messages.index("saving")


def test_native_sleep_reports_progress(engine, recorder, wait_until):
    progress = recorder()
    engine.on("job-progress", progress)
    engine.start()

    job = engine.enqueue("sleep", {"seconds": 0.4}).wait(timeout=WAIT)

    assert job.status == "completed"
    wait_until(lambda: len(progress) >= 1, what="a progress event from native sleep")
    values = [e.progress for e in progress.items if e.job_id == job.id]
    assert values == sorted(values)
    assert all(0 <= value <= 100 for value in values)


def test_raising_callback_is_logged_and_does_not_stop_later_events_or_the_engine(
    engine, recorder, wait_until, caplog
):
    caplog.set_level(logging.ERROR, logger="jobforge")
    raised_for = recorder()
    good = recorder()

    def bad_callback(event):
        raised_for(event.job_id)
        raise RuntimeError("subscriber bug")

    engine.on("job-completed", bad_callback)
    engine.on("job-completed", good)
    engine.start()

    first = engine.enqueue("noop", {}).wait(timeout=WAIT)
    second = engine.enqueue("noop", {}).wait(timeout=WAIT)
    third = engine.enqueue("sleep", {"seconds": 0.05}).wait(timeout=WAIT)

    assert [job.status for job in (first, second, third)] == ["completed"] * 3
    wait_until(lambda: len(good) == 3 and len(raised_for) == 3, what="all three events")
    assert raised_for.items == [first.id, second.id, third.id]  # stays subscribed
    wait_until(
        lambda: any(_logged_subscriber_bug(r) for r in caplog.records),
        what="the callback's exception logged by logger 'jobforge'",
    )


def _logged_subscriber_bug(record):
    if not record.name.startswith("jobforge"):
        return False
    text = record.getMessage() + (record.exc_text or "")
    if record.exc_info:
        text += repr(record.exc_info[1])
    return "subscriber bug" in text


def test_callbacks_run_on_one_delivery_thread_that_is_not_a_worker(engine, wait_until):
    worker_threads = set()
    callback_threads = set()
    lock = threading.Lock()

    @engine.processor("where")
    def where(ctx, payload):
        with lock:
            worker_threads.add(threading.get_ident())
        time.sleep(0.02)

    def on_any(event):
        with lock:
            callback_threads.add(threading.get_ident())

    engine.on("*", on_any)
    engine.start()
    jobs = [engine.enqueue("where", {"i": i}) for i in range(6)]
    for job in jobs:
        job.wait(timeout=WAIT)

    wait_until(lambda: callback_threads, what="callbacks delivered")
    time.sleep(0.1)  # let the tail of the events arrive
    with lock:
        assert len(callback_threads) == 1
        assert worker_threads
        assert callback_threads.isdisjoint(worker_threads)
        assert threading.get_ident() not in callback_threads


def test_star_subscription_receives_every_event_type(engine, recorder, wait_until):
    everything = recorder()
    engine.on("*", everything)
    _register_short_job(engine)
    engine.start()

    job = engine.enqueue("short", {}).wait(timeout=WAIT)

    wait_until(
        lambda: any(e.type == "job-completed" for e in everything.items), what="completed event"
    )
    types = {e.type for e in everything.items if e.job_id == job.id}
    assert {"job-status-changed", "job-started", "job-completed"} <= types


def test_filters_by_job_id_and_job_type_deliver_only_matching_events(engine, recorder, wait_until):
    @engine.processor("alpha")
    def alpha(ctx, payload):
        return "a"

    @engine.processor("beta")
    def beta(ctx, payload):
        return "b"

    by_type = recorder()
    by_id = recorder()
    everything = recorder()
    engine.on("job-completed", by_type, job_type="alpha")
    engine.on("job-completed", everything)
    engine.start()
    jobs = [engine.enqueue("alpha", {}), engine.enqueue("beta", {}), engine.enqueue("alpha", {})]
    engine.on("job-completed", by_id, job_id=jobs[2].id)
    for job in jobs:
        job.wait(timeout=WAIT)

    wait_until(lambda: len(everything) == 3, what="three completed events")
    time.sleep(0.05)
    assert sorted(e.job_id for e in by_type.items) == sorted([jobs[0].id, jobs[2].id])
    assert [e.job_id for e in by_id.items] == [jobs[2].id]


def test_unsubscribe_and_off_stop_delivery(engine, recorder, wait_until):
    unsubscribed = recorder()
    turned_off = recorder()
    barrier = recorder()
    sub = engine.on("job-completed", unsubscribed)
    other = engine.on("job-completed", turned_off)
    engine.on("job-completed", barrier)
    engine.start()

    first = engine.enqueue("noop", {}).wait(timeout=WAIT)
    wait_until(lambda: len(barrier) == 1, what="first completed event")
    assert len(unsubscribed) == 1 and len(turned_off) == 1

    sub.unsubscribe()
    engine.off(other)
    second = engine.enqueue("noop", {}).wait(timeout=WAIT)

    # Events are delivered in commit order on one thread: once the still-subscribed callback has
    # seen the second job, the removed ones would have seen it too.
    wait_until(lambda: len(barrier) == 2, what="second completed event")
    time.sleep(0.05)
    assert [e.job_id for e in unsubscribed.items] == [first.id]
    assert [e.job_id for e in turned_off.items] == [first.id]
    assert barrier.items[1].job_id == second.id


def test_a_blocked_callback_delays_only_itself_and_reports_what_it_dropped(
    engine, recorder, wait_until, caplog
):
    """Before: one blocked callback stopped delivery to every other subscriber, and the lifecycle
    events waiting for it piled up without bound."""
    caplog.set_level(logging.WARNING, logger="jobforge")
    release = threading.Event()
    blocked_seen = recorder()

    def blocked(event):
        blocked_seen(event)
        release.wait(WAIT)

    fast = recorder()
    slow = engine.on("*", blocked, maxsize=5)
    engine.on("job-completed", fast)
    engine.start()
    try:
        jobs = [engine.enqueue("noop", {"i": i}) for i in range(20)]
        for job in jobs:
            job.wait(timeout=WAIT)
        # The other subscriber gets every event while the first callback is still blocked.
        wait_until(lambda: len(fast) == len(jobs), what="every completed event, despite the block")
        assert sorted(e.job_id for e in fast.items) == sorted(j.id for j in jobs)
        assert len(blocked_seen) == 1
        # Its own queue stayed bounded: what did not fit was dropped, counted and logged.
        assert slow._queue is not None and len(slow._queue._items) <= 5
        assert slow.dropped > 0
        assert sum(slow.dropped_by_type.values()) == slow.dropped
        wait_until(lambda: any("is behind" in r.getMessage() for r in caplog.records),
                   what="a log line when it starts dropping")  # fmt: skip
    finally:
        release.set()
    dropped = slow.dropped
    wait_until(
        lambda: any("dropped" in r.getMessage() and "fell behind" in r.getMessage()
                    for r in caplog.records),
        what="a log line saying what it dropped, once it catches up",
    )  # fmt: skip
    summary = next(r.getMessage() for r in caplog.records if "fell behind" in r.getMessage())
    assert "job-" in summary
    engine.flush_events()  # waits for the slow subscriber's queue too
    assert len(blocked_seen) > 1  # what was queued for it came after the block
    assert not slow._queue._items
    assert slow.dropped == dropped


def test_a_quiet_subscription_gives_its_callback_thread_back(engine, monkeypatch, wait_until):
    # One job.on_progress per job must not keep one thread per job for ever: a subscription's
    # callback thread ends once its events stop, and the next event starts another.
    import jobforge.engine as engine_module

    monkeypatch.setattr(engine_module, "_SUBSCRIBER_IDLE_EXIT", 1.0)
    _register_short_job(engine)
    engine.start()
    before = threading.active_count()
    seen = []
    jobs = [engine.enqueue("short", {"n": i}) for i in range(20)]
    for job in jobs:
        job.on_status(lambda ev: seen.append(ev.job_id))
    for job in jobs:
        job.wait(timeout=WAIT)
    engine.flush_events()

    def events_threads():
        return [t for t in threading.enumerate() if t.name.startswith("jobforge-events")]

    wait_until(lambda: not events_threads(), timeout=WAIT, what="idle callback threads ended")
    assert threading.active_count() <= before
    # A later event still reaches a subscription whose thread ended.
    late = []
    sub = engine.on("job-completed", lambda ev: late.append(ev.job_id))
    job = engine.enqueue("short", {"n": 99}).wait(timeout=WAIT)
    wait_until(lambda: job.id in late, what="event after the idle exit")
    sub.unsubscribe()
