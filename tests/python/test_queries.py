"""Queries: get, jobs() filters and paging (newest first), active(), stats()."""

import threading

WAIT = 10  # generous guard against hangs, never a speed assertion

STATS_KEYS = {
    "total",
    "created",
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
    "timeout",
}


def test_get_returns_the_job_with_its_fields(engine):
    job = engine.enqueue("noop", {"a": 1}, priority=4)

    found = engine.get(job.id)

    assert found.id == job.id
    assert found.type == "noop"
    assert found.payload == {"a": 1}
    assert found.priority == 4
    assert found.status == "queued"


def test_jobs_lists_newest_first(engine):
    ids = [engine.enqueue("noop", {"i": i}).id for i in range(5)]

    assert [job.id for job in engine.jobs()] == ids[::-1]


def test_jobs_lists_a_batch_newest_first(engine):
    ids = [job.id for job in engine.enqueue_many("noop", [{"i": i} for i in range(20)])]

    assert [job.id for job in engine.jobs(limit=20)] == ids[::-1]


def test_jobs_limit_and_offset_page_through_newest_first(engine):
    ids = [engine.enqueue("noop", {"i": i}).id for i in range(7)]
    newest_first = ids[::-1]

    assert [job.id for job in engine.jobs(limit=3)] == newest_first[:3]
    assert [job.id for job in engine.jobs(limit=3, offset=3)] == newest_first[3:6]
    assert [job.id for job in engine.jobs(limit=3, offset=6)] == newest_first[6:]
    assert engine.jobs(limit=3, offset=7) == []


def test_jobs_default_limit_is_100(engine):
    engine.enqueue_many("noop", [{"i": i} for i in range(120)])

    assert len(engine.jobs()) == 100
    assert len(engine.jobs(limit=200)) == 120


def test_jobs_filter_by_status(engine):
    kept = [engine.enqueue("noop", {"i": i}) for i in range(3)]
    dropped = [engine.enqueue("noop", {"i": i}) for i in range(3, 5)]
    for job in dropped:
        assert engine.cancel(job.id)

    assert [job.id for job in engine.jobs(status="cancelled")] == [j.id for j in dropped[::-1]]
    assert [job.id for job in engine.jobs(status="queued")] == [j.id for j in kept[::-1]]
    assert engine.jobs(status="completed") == []


def test_jobs_filter_by_type(make_engine):
    engine = make_engine(allow_unknown_types=True)
    images = [engine.enqueue("resize", {"i": i}) for i in range(2)]
    engine.enqueue("transcode", {"i": 9})

    assert [job.id for job in engine.jobs(type="resize")] == [j.id for j in images[::-1]]
    assert [job.type for job in engine.jobs(type="transcode")] == ["transcode"]
    assert engine.jobs(type="nothing-of-this-type") == []


def test_jobs_filter_by_type_and_status_combined(engine):
    first = engine.enqueue("noop", {})
    second = engine.enqueue("sleep", {"seconds": 0.01})
    engine.cancel(first.id)
    engine.cancel(second.id)

    assert [job.id for job in engine.jobs(status="cancelled", type="noop")] == [first.id]


def test_jobs_filter_by_parent(engine):
    parent = engine.enqueue("noop", {"batch": True})
    children = [engine.enqueue("noop", {"i": i}, parent=parent.id) for i in range(3)]
    engine.enqueue("noop", {"unrelated": True})

    assert [job.id for job in engine.jobs(parent=parent.id)] == [c.id for c in children[::-1]]


def test_active_lists_queued_and_running_jobs_only(engine, wait_until):
    gate = threading.Event()

    @engine.processor("gated")
    def gated(ctx, payload):
        gate.wait(WAIT)

    engine.start()
    done = engine.enqueue("noop", {}).wait(timeout=WAIT)
    running = engine.enqueue("gated", {})
    wait_until(lambda: engine.get(running.id).status == "running", what="status running")
    waiting = engine.enqueue("noop", {}, delay=60)
    cancelled = engine.enqueue("noop", {}, delay=60)
    engine.cancel(cancelled.id)
    try:
        active = {job.id: job.status for job in engine.active()}
    finally:
        gate.set()

    assert active == {running.id: "running", waiting.id: "queued"}
    assert done.id not in active
    assert running.wait(timeout=WAIT).status == "completed"


def test_stats_of_an_empty_file_are_all_zero(engine):
    assert engine.counts() == {key: 0 for key in STATS_KEYS}
    stats = engine.stats()
    assert {k: stats[k] for k in STATS_KEYS} == {key: 0 for key in STATS_KEYS}
    assert stats["types"] == {}
    assert stats["due"] == stats["queued_total"] == stats["oldest_due_age_ms"] == 0


def test_stats_count_every_outcome(make_engine):
    engine = make_engine(workers=2)

    @engine.processor("boom")
    def boom(ctx, payload):
        raise ValueError("boom")

    @engine.processor("stuck")
    def stuck(ctx, payload):
        while not ctx.cancelled:
            threading.Event().wait(0.01)

    cancelled = engine.enqueue("noop", {})
    assert engine.cancel(cancelled.id)
    engine.start()
    finished = [
        engine.enqueue("noop", {}),
        engine.enqueue("noop", {}),
        engine.enqueue("sleep", {"seconds": 0.01}),
        engine.enqueue("boom", {}, max_attempts=1),
        engine.enqueue("boom", {}, max_attempts=2),
        engine.enqueue("stuck", {}, timeout=0.2),
    ]
    delayed = engine.enqueue("noop", {}, delay=60)
    for job in finished:
        job.wait(timeout=WAIT)

    stats = engine.counts()
    assert set(stats) == STATS_KEYS
    assert stats == {
        "total": 8,
        "created": 0,
        "queued": 1,
        "running": 0,
        "completed": 3,
        "failed": 2,
        "cancelled": 1,
        "timeout": 1,
    }
    assert engine.jobs(status="queued")[0].id == delayed.id
    assert sum(stats[key] for key in STATS_KEYS - {"total"}) == stats["total"]


def test_stats_follow_a_retried_job(engine):
    should_fail = [True]

    @engine.processor("fragile")
    def fragile(ctx, payload):
        if should_fail[0]:
            raise ValueError("not yet")

    engine.start()
    job = engine.enqueue("fragile", {}, max_attempts=1).wait(timeout=WAIT)
    assert (engine.stats()["failed"], engine.stats()["completed"]) == (1, 0)

    should_fail[0] = False
    assert job.retry() is True
    job.wait(timeout=WAIT)

    stats = engine.stats()
    assert (stats["total"], stats["failed"], stats["completed"], stats["queued"]) == (1, 0, 1, 0)


def test_stats_of_a_reopened_file_match_before_closing(make_engine):
    first = make_engine(workers=1)
    first.start()
    for _ in range(3):
        first.enqueue("noop", {}).wait(timeout=WAIT)
    first.enqueue("noop", {}, delay=60)
    before = first.counts()
    types_before = {t: v["counts"] for t, v in first.stats()["types"].items()}
    first.stop(wait=True)

    second = make_engine()

    assert second.counts() == before
    assert {t: v["counts"] for t, v in second.stats()["types"].items()} == types_before
