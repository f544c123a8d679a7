"""Enqueue: what a new job looks like, defaults, durability, persistence, batches and the
native processors."""

import threading
import time
import uuid

from conftest import read_row

import jobforge

WAIT = 10  # generous guard against hangs, never a speed assertion


def test_enqueue_returns_queued_job_with_the_given_options(engine):
    job = engine.enqueue("noop", {"path": "a.jpg"}, priority=3, max_attempts=4, timeout=12.5)

    assert isinstance(job, jobforge.Job)
    assert job.type == "noop"
    assert job.status == "queued"
    assert job.priority == 3
    assert job.payload == {"path": "a.jpg"}
    assert job.max_attempts == 4
    assert job.timeout == 12.5
    assert job.attempts == 0
    assert job.progress == 0
    assert job.result is None
    assert job.error is None
    assert job.parent_id is None
    assert job.is_final is False
    assert isinstance(job.created_at, int) and job.created_at > 0
    assert isinstance(job.queued_at, int) and job.queued_at >= job.created_at
    assert job.started_at is None
    assert job.completed_at is None


def test_enqueue_without_options_uses_documented_defaults(engine):
    job = engine.enqueue("noop", {})

    assert job.priority == 5
    assert job.max_attempts == 3
    assert job.timeout == 300


def test_processor_options_are_the_defaults_of_its_jobs_and_enqueue_overrides_them(engine):
    @engine.processor("resize", timeout=30, max_attempts=2, priority=2)
    def resize(ctx, payload):
        return None

    from_processor = engine.enqueue("resize", {"path": "a.jpg"})
    overridden = engine.enqueue("resize", {"path": "b.jpg"}, priority=9, max_attempts=5, timeout=7)

    assert from_processor.priority == 2
    assert from_processor.max_attempts == 2
    assert from_processor.timeout == 30
    assert (overridden.priority, overridden.max_attempts, overridden.timeout) == (9, 5, 7)


def test_job_id_is_a_canonical_36_character_uuid(engine):
    job = engine.enqueue("noop", {})

    assert len(job.id) == 36
    assert str(uuid.UUID(job.id)) == job.id


def test_job_ids_are_time_ordered(engine):
    ids = []
    for _ in range(10):
        ids.append(engine.enqueue("noop", {}).id)
        time.sleep(0.002)  # different milliseconds: this checks time order, not same-ms order

    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_enqueue_is_committed_to_the_file_when_it_returns(engine, db_path):
    job = engine.enqueue("noop", {"k": 1})

    row = read_row(db_path, "SELECT type, status FROM jobs WHERE id = ?", (job.id,))
    assert row == ("noop", "queued")


def test_enqueue_from_many_threads_at_once_keeps_every_job(engine):
    threads, per_thread = 8, 50
    barrier = threading.Barrier(threads)
    ids, errors = [], []
    lock = threading.Lock()

    def produce(n):
        barrier.wait()
        try:
            mine = [engine.enqueue("noop", {"thread": n, "i": i}).id for i in range(per_thread)]
        except BaseException as exc:  # noqa: BLE001 - any exception fails this test
            with lock:
                errors.append(exc)
        else:
            with lock:
                ids.extend(mine)

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(WAIT)

    assert errors == []
    assert len(set(ids)) == threads * per_thread
    assert engine.stats()["total"] == threads * per_thread
    assert all(engine.get(job_id) is not None for job_id in ids[::37])


def test_job_enqueued_in_one_engine_is_still_there_after_reopening(make_engine, db_path):
    payload = {"path": "a.jpg", "sizes": [64, 128], "nested": {"x": 1.5, "ok": True, "none": None}}
    first = make_engine(allow_unknown_types=True)
    job = first.enqueue("resize", payload, priority=2)
    first.stop(wait=True)

    second = make_engine(allow_unknown_types=True)
    reread = second.get(job.id)

    assert reread is not None
    assert reread.id == job.id
    assert reread.type == "resize"
    assert reread.status == "queued"
    assert reread.priority == 2
    assert reread.payload == payload


def test_enqueue_many_returns_one_queued_job_per_payload_in_order(engine):
    payloads = [{"path": "a.jpg"}, {"path": "b.jpg"}, {"path": "c.jpg"}]

    jobs = engine.enqueue_many("noop", payloads, priority=4)

    assert [job.payload for job in jobs] == payloads
    assert all(job.status == "queued" and job.priority == 4 for job in jobs)
    assert len({job.id for job in jobs}) == 3
    assert engine.stats()["total"] == 3


def test_enqueue_many_of_a_thousand_noop_jobs_drains_to_completed(engine, wait_until):
    engine.enqueue_many("noop", [{"i": i} for i in range(1000)])
    engine.start()

    wait_until(lambda: engine.stats()["completed"] == 1000, timeout=WAIT, what="1000 completed")
    stats = engine.stats()
    assert stats["total"] == 1000
    assert stats["queued"] == 0
    assert stats["running"] == 0
    assert stats["failed"] == 0


def test_native_noop_and_sleep_processors_exist_in_every_engine(engine):
    engine.start()

    noop = engine.enqueue("noop", {"anything": 1}).wait(timeout=WAIT)
    slept = engine.enqueue("sleep", {"seconds": 0.05}).wait(timeout=WAIT)

    assert noop.status == "completed"
    assert noop.result is None
    assert slept.status == "completed"
    assert slept.result == {"slept": 0.05}


def test_python_processor_replaces_native_processor_of_the_same_name(engine):
    @engine.processor("noop")
    def python_noop(ctx, payload):
        return "from python"

    engine.start()
    job = engine.enqueue("noop", {}).wait(timeout=WAIT)

    assert job.status == "completed"
    assert job.result == "from python"


def test_processor_registered_after_start_runs_its_jobs(engine):
    engine.start()

    @engine.processor("late")
    def late(ctx, payload):
        return {"doubled": payload["n"] * 2}

    job = engine.enqueue("late", {"n": 21}).wait(timeout=WAIT)

    assert job.status == "completed"
    assert job.result == {"doubled": 42}


def test_processor_result_is_stored_as_decoded_json(engine):
    @engine.processor("shapes")
    def shapes(ctx, payload):
        return {"list": [1, 2.5, "x", None, True], "nested": {"a": {"b": []}}}

    engine.start()
    job = engine.enqueue("shapes", {}).wait(timeout=WAIT)

    assert job.result == {"list": [1, 2.5, "x", None, True], "nested": {"a": {"b": []}}}
    assert engine.get(job.id).result == job.result


def test_producer_with_allow_unknown_types_enqueues_a_type_it_cannot_run(make_engine, db_path):
    producer = make_engine(allow_unknown_types=True)
    job = producer.enqueue("transcode", {"file": "a.wav"})
    producer.stop(wait=True)

    consumer = make_engine(workers=1)

    @consumer.processor("transcode")
    def transcode(ctx, payload):
        return payload["file"].upper()

    consumer.start()
    finished = consumer.wait(job.id, timeout=WAIT)
    assert finished.status == "completed"
    assert finished.result == "A.WAV"


def test_delayed_job_waits_in_queue_until_its_run_at(engine):
    engine.start()

    job = engine.enqueue("noop", {}, delay=0.3)

    assert job.status == "queued"
    assert job.run_at is not None
    assert job.run_at - job.created_at >= 290
    finished = job.wait(timeout=WAIT)
    assert finished.status == "completed"
    assert finished.started_at >= job.run_at


def test_child_job_records_its_parent(engine):
    parent = engine.enqueue("noop", {"batch": True})
    child = engine.enqueue("noop", {"item": 1}, parent=parent.id)

    assert child.parent_id == parent.id
    assert engine.get(child.id).parent_id == parent.id


def test_user_initiated_option_is_accepted(engine):
    job = engine.enqueue("noop", {}, user_initiated=False)

    assert engine.get(job.id).status == "queued"
