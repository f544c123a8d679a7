"""Cancel: a queued job is cancelled at once, a running job sees ctx.cancelled and ends
`cancelled`; unknown or finished jobs are refused; concurrent cancels are safe; abort_all."""

import threading
import uuid

import jobforge

WAIT = 10  # generous guard against hangs, never a speed assertion

# Runs in a child process: one job that runs until it sees ctx.cancelled.
RUNNING_CHILD = r"""
import sys, time
import jobforge

engine = jobforge.Engine(sys.argv[1], workers=1)

@engine.processor("hold")
def hold(ctx, payload):
    print("RUNNING", flush=True)
    while not ctx.cancelled:
        time.sleep(0.01)
    print("SAW_CANCEL", flush=True)

job = engine.enqueue("hold", {})
print("JOB", job.id, flush=True)
engine.start()
time.sleep(60)
"""


def _register_loop_until_cancelled(engine, name="loop"):
    started = threading.Event()
    saw_cancelled = threading.Event()

    @engine.processor(name)
    def loop(ctx, payload):
        started.set()
        while not ctx.cancelled:
            threading.Event().wait(0.01)
        saw_cancelled.set()

    return started, saw_cancelled


def test_queued_job_is_cancelled_at_once_and_never_runs(make_engine):
    engine = make_engine(workers=1)
    ran = []

    @engine.processor("record")
    def record(ctx, payload):
        ran.append(payload["i"])

    doomed = engine.enqueue("record", {"i": "doomed"})
    kept = engine.enqueue("record", {"i": "kept"})

    assert engine.cancel(doomed.id) is True
    cancelled = engine.get(doomed.id)
    assert cancelled.status == "cancelled"
    assert cancelled.is_final is True

    engine.start()
    assert kept.wait(timeout=WAIT).status == "completed"
    assert ran == ["kept"]
    assert engine.get(doomed.id).status == "cancelled"


def test_running_job_sees_ctx_cancelled_and_ends_cancelled(engine):
    started, saw_cancelled = _register_loop_until_cancelled(engine)
    engine.start()
    job = engine.enqueue("loop", {})
    assert started.wait(WAIT)

    assert engine.cancel(job.id) is True

    assert job.wait(timeout=WAIT).status == "cancelled"
    assert saw_cancelled.is_set()


def test_running_job_cancelled_from_another_process(make_engine, spawn_child, db_path, wait_until):
    child = spawn_child(RUNNING_CHILD, db_path)
    job_id = child.read_until("JOB ").split()[1]
    child.read_until("RUNNING")
    engine = make_engine(workers=1)  # this process only cancels: no processor, not started
    wait_until(lambda: engine.get(job_id).status == "running", what="child's job running")

    assert engine.cancel(job_id) is True

    child.read_until("SAW_CANCEL")
    assert engine.wait(job_id, timeout=WAIT).status == "cancelled"


def test_native_sleep_cancelled_while_running_stops_sleeping(engine, wait_until):
    engine.start()
    job = engine.enqueue("sleep", {"seconds": 5})
    wait_until(lambda: engine.get(job.id).status == "running", what="sleep job running")

    assert engine.cancel(job.id) is True

    # wait(timeout=4) < 5 s of sleep: the native processor must honour the cancel.
    done = job.wait(timeout=4)
    assert done.status == "cancelled"
    assert done.result is None


def test_check_cancelled_raises_job_cancelled_in_a_running_job(engine):
    started = threading.Event()
    raised = []

    @engine.processor("checking")
    def checking(ctx, payload):
        started.set()
        try:
            while True:
                ctx.check_cancelled()
                threading.Event().wait(0.01)
        except jobforge.JobCancelled as exc:
            raised.append(exc)
            raise

    engine.start()
    job = engine.enqueue("checking", {})
    assert started.wait(WAIT)

    assert job.cancel() is True

    assert job.wait(timeout=WAIT).status == "cancelled"
    assert len(raised) == 1
    assert isinstance(raised[0], jobforge.JobforgeError)


def test_cancel_of_unknown_job_id_returns_false(engine):
    assert engine.cancel(str(uuid.uuid4())) is False
    assert engine.cancel("not-a-job-id") is False
    assert engine.stats()["total"] == 0


def test_cancel_of_finished_jobs_returns_false(engine):
    @engine.processor("boom")
    def boom(ctx, payload):
        raise ValueError("boom")

    engine.start()
    completed = engine.enqueue("noop", {}).wait(timeout=WAIT)
    failed = engine.enqueue("boom", {}, max_attempts=1).wait(timeout=WAIT)
    cancelled = engine.enqueue("noop", {}, delay=60)
    assert engine.cancel(cancelled.id) is True

    assert engine.cancel(completed.id) is False
    assert engine.cancel(failed.id) is False
    assert engine.cancel(cancelled.id) is False
    assert engine.get(completed.id).status == "completed"
    assert engine.get(failed.id).status == "failed"


def _cancel_from_threads(engine, job_id, threads=8):
    barrier = threading.Barrier(threads)
    results, errors = [], []
    lock = threading.Lock()

    def cancel():
        barrier.wait()
        try:
            outcome = engine.cancel(job_id)
        except BaseException as exc:  # noqa: BLE001 - any exception is a failure of this test
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(outcome)

    workers = [threading.Thread(target=cancel) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(WAIT)
    return results, errors


def test_concurrent_cancels_of_a_running_job_are_safe(engine):
    started, _ = _register_loop_until_cancelled(engine)
    engine.start()
    job = engine.enqueue("loop", {})
    assert started.wait(WAIT)

    results, errors = _cancel_from_threads(engine, job.id)

    assert errors == []
    assert len(results) == 8
    assert True in results
    assert job.wait(timeout=WAIT).status == "cancelled"


def test_concurrent_cancels_of_a_queued_job_are_safe(engine):
    job = engine.enqueue("noop", {})

    results, errors = _cancel_from_threads(engine, job.id)

    assert errors == []
    assert len(results) == 8
    assert True in results
    assert engine.get(job.id).status == "cancelled"


def test_abort_all_cancels_queued_and_running_jobs_and_returns_their_count(make_engine):
    engine = make_engine(workers=1)
    started, saw_cancelled = _register_loop_until_cancelled(engine)
    engine.start()
    done = engine.enqueue("noop", {}).wait(timeout=WAIT)
    running = engine.enqueue("loop", {})
    assert started.wait(WAIT)
    queued = [engine.enqueue("noop", {}, delay=60) for _ in range(3)]

    assert engine.abort_all() == 4

    assert running.wait(timeout=WAIT).status == "cancelled"
    assert saw_cancelled.is_set()
    for job in queued:
        assert engine.get(job.id).status == "cancelled"
    assert engine.get(done.id).status == "completed"
    stats = engine.stats()
    assert (stats["cancelled"], stats["completed"], stats["queued"]) == (4, 1, 0)


def test_abort_all_with_no_active_job_returns_zero(engine):
    engine.start()
    engine.enqueue("noop", {}).wait(timeout=WAIT)

    assert engine.abort_all() == 0
    assert engine.stats()["completed"] == 1


def test_cancelled_event_is_published(engine, recorder, wait_until):
    cancelled = recorder()
    engine.on("job-cancelled", cancelled)
    engine.start()
    job = engine.enqueue("noop", {}, delay=60)

    assert engine.cancel(job.id) is True

    wait_until(lambda: len(cancelled) == 1, what="cancel event")
    event = cancelled.items[0]
    assert event.job_id == job.id
    assert event.status == "cancelled"
