"""Priority: 1 runs before 10; within a priority, first in first out (older run_at first)."""

WAIT = 10  # generous guard against hangs, never a speed assertion


def _record_order(engine):
    order = []

    @engine.processor("record")
    def record(ctx, payload):
        order.append(payload["i"])

    return order


def test_jobs_run_by_priority_then_in_enqueue_order(make_engine):
    engine = make_engine(workers=1)
    order = _record_order(engine)
    priorities = [5, 10, 1, 5, 3, 1, 10, 5, 3, 1]
    jobs = [engine.enqueue("record", {"i": i}, priority=p) for i, p in enumerate(priorities)]

    engine.start()
    for job in jobs:
        assert job.wait(timeout=WAIT).status == "completed"

    expected = [i for i, _ in sorted(enumerate(priorities), key=lambda pair: (pair[1], pair[0]))]
    assert order == expected == [2, 5, 9, 4, 8, 0, 3, 7, 1, 6]


def test_jobs_of_one_priority_run_first_in_first_out(make_engine):
    engine = make_engine(workers=1)
    order = _record_order(engine)
    jobs = [engine.enqueue("record", {"i": i}) for i in range(20)]

    engine.start()
    for job in jobs:
        job.wait(timeout=WAIT)

    assert order == list(range(20))


def test_enqueue_many_jobs_keep_their_order_within_a_priority(make_engine):
    engine = make_engine(workers=1)
    order = _record_order(engine)
    low = engine.enqueue_many("record", [{"i": i} for i in range(5)], priority=7)
    high = engine.enqueue_many("record", [{"i": i} for i in range(5, 10)], priority=2)

    engine.start()
    for job in low + high:
        job.wait(timeout=WAIT)

    assert order == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]


def test_processor_default_priority_orders_its_jobs(make_engine):
    engine = make_engine(workers=1)
    order = []

    @engine.processor("background", priority=9)
    def background(ctx, payload):
        order.append(("background", payload["i"]))

    @engine.processor("urgent", priority=1)
    def urgent(ctx, payload):
        order.append(("urgent", payload["i"]))

    jobs = [engine.enqueue("background", {"i": 0}), engine.enqueue("urgent", {"i": 1})]
    engine.start()
    for job in jobs:
        job.wait(timeout=WAIT)

    assert order == [("urgent", 1), ("background", 0)]


def test_delayed_job_does_not_hold_back_a_due_job_of_the_same_priority(make_engine):
    engine = make_engine(workers=1)
    order = _record_order(engine)
    delayed = engine.enqueue("record", {"i": "delayed"}, delay=0.3)
    due = engine.enqueue("record", {"i": "due"})

    engine.start()
    delayed.wait(timeout=WAIT)
    due.wait(timeout=WAIT)

    assert order == ["due", "delayed"]
