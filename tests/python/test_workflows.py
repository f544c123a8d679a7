"""Workflows from Python: batches, dependencies and chains, unique jobs, delayed and scheduled
jobs, queues and limits, retention and run_now. Each test runs on a real SQLite file and on a
fresh PostgreSQL schema (conftest's BOTH_STORES), with real threads and (for the cross-process
guarantees) real child processes."""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import read_row

import jobforge
from jobforge.errors import QueueFull, UnknownJobType

# ---- batches ---------------------------------------------------------------------------------


def test_batch_context_manager_stores_parent_and_children_and_summarises(make_engine):
    engine = make_engine(workers=2)

    @engine.processor("analyze")
    def analyze(ctx, payload):
        if payload.get("bad"):
            raise RuntimeError("bad file")
        return payload["n"]

    with engine.batch("batch_analyze", {"folder": "/data"}) as batch:
        for n in range(5):
            batch.enqueue("analyze", {"n": n, "bad": n == 3}, max_attempts=1)
    assert batch.job.status == "running"
    assert len(engine.jobs(parent=batch.job.id)) == 5
    with engine:
        parent = batch.job.wait(timeout=30)
    assert parent.status == "completed"
    assert parent.result == {"total": 5, "completed": 4, "failed": 1}
    assert parent.progress == 100


def test_batch_policy_fail_fails_the_parent_and_enqueue_batch_is_atomic(make_engine):
    engine = make_engine()

    @engine.processor("analyze")
    def analyze(ctx, payload):
        raise jobforge.PermanentError("no")

    parent = engine.enqueue_batch(
        "batch_export", [("analyze", {"i": i}) for i in range(3)], on_child_failure="fail"
    )
    with engine:
        parent = parent.wait(timeout=30)
    assert parent.status == "failed"
    assert "3 of 3 children failed" in parent.error
    with pytest.raises(UnknownJobType):
        engine.enqueue_batch("batch_x", [("analyze", {}), ("no_such_type", {})])
    assert engine.jobs(type="batch_x") == []  # nothing of the bad batch was written
    with pytest.raises(ValueError, match="on_child_failure"):
        engine.batch("batch_x", on_child_failure="maybe")


def test_cancelling_a_batch_cancels_its_unfinished_children(make_engine):
    engine = make_engine()
    engine.register("analyze", lambda ctx, p: None)
    with engine.batch("batch_analyze") as batch:
        for i in range(4):
            batch.enqueue("analyze", {"i": i})
    assert engine.cancel(batch.job)
    assert engine.get(batch.job.id).status == "cancelled"
    assert {c.status for c in engine.jobs(parent=batch.job)} == {"cancelled"}


def test_an_exception_in_the_batch_block_stores_nothing(make_engine):
    engine = make_engine()
    engine.register("analyze", lambda ctx, p: None)
    with pytest.raises(KeyError):
        with engine.batch("batch_analyze") as batch:
            batch.enqueue("analyze", {})
            raise KeyError("oops")
    assert engine.stats()["total"] == 0


# ---- dependencies and chains -------------------------------------------------------------------


def test_depends_on_waits_and_reads_dependency_results(make_engine):
    engine = make_engine(workers=2)
    order = []

    @engine.processor("fetch")
    def fetch(ctx, payload):
        time.sleep(0.05)
        order.append(payload)
        return {"rows": payload}

    @engine.processor("merge")
    def merge(ctx, payload):
        order.append("merge")
        return sorted(r["rows"] for r in ctx.dependency_results.values())

    a = engine.enqueue("fetch", 1)
    b = engine.enqueue("fetch", 2)
    m = engine.enqueue("merge", depends_on=[a, b.id])
    assert m.status == "created"  # waiting for its dependencies
    with engine:
        assert m.wait(timeout=30).result == [1, 2]
    assert order[-1] == "merge"
    assert {j.id for j in engine.dependencies(m)} == {a.id, b.id}


def test_a_failed_dependency_cancels_the_dependent_unless_run_anyway(make_engine):
    engine = make_engine()

    @engine.processor("step")
    def step(ctx, payload):
        if payload == "fail":
            raise jobforge.PermanentError("broken")
        return payload

    bad = engine.enqueue("step", "fail")
    skipped = engine.enqueue("step", "after", depends_on=[bad])
    anyway = engine.enqueue("step", "report", depends_on=[bad], run_anyway=True)
    with engine:
        assert skipped.wait(timeout=30).status == "cancelled"
        assert anyway.wait(timeout=30).status == "completed"
    assert f"dependency {bad.id} ended failed" in engine.get(skipped.id).error
    with pytest.raises(ValueError, match="dependency 'nope' does not exist"):
        engine.enqueue("step", depends_on=["nope"])


def test_chain_fans_out_and_in_in_one_transaction(make_engine):
    engine = make_engine(workers=3)
    seen = []
    lock = threading.Lock()

    @engine.processor("stage")
    def stage(ctx, payload):
        with lock:
            seen.append(payload)
        return payload

    jobs = engine.chain(
        ("stage", "a"), [("stage", "b1"), ("stage", "b2")], {"type": "stage", "payload": "c"}
    )
    assert [j.status for j in jobs] == ["queued", "created", "created", "created"]
    with engine:
        assert jobs[-1].wait(timeout=30).status == "completed"
    assert seen[0] == "a" and seen[-1] == "c" and set(seen[1:3]) == {"b1", "b2"}
    with pytest.raises(TypeError, match="chain step 0"):
        engine.chain(42)


# ---- unique jobs -------------------------------------------------------------------------------

UNIQUE_PRODUCER = textwrap.dedent(
    """
    import sys, jobforge
    engine = jobforge.Engine(sys.argv[1], allow_unknown_types=True)
    ids = {engine.enqueue("sync", {"p": sys.argv[2]}, unique_key="sync:user:42").id for _ in range(50)}
    print(" ".join(sorted(ids)))
    """
)


def test_unique_key_gives_one_job_across_processes(db_path):
    db = db_path
    jobforge.Engine(db, allow_unknown_types=True).stop()  # create the database once
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", UNIQUE_PRODUCER, db, str(i)], stdout=subprocess.PIPE, text=True
        )
        for i in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    ids = {i for out in outputs for i in out}
    assert len(ids) == 1
    engine = jobforge.Engine(db, allow_unknown_types=True)
    assert engine.stats()["queued"] == 1
    assert engine.get(ids.pop()).unique_key == "sync:user:42"


def test_unique_for_keeps_the_key_after_the_job_ended(make_engine):
    engine = make_engine()
    engine.register("sync", lambda ctx, p: "done")
    first = engine.enqueue("sync", unique_key="k", unique_for=3600)
    with engine:
        first.wait(timeout=30)
    assert engine.enqueue("sync", unique_key="k", unique_for=3600).id == first.id
    plain = engine.enqueue("sync", unique_key="other")
    assert engine.enqueue("sync", unique_key="other").id == plain.id
    with pytest.raises(ValueError, match="unique_for needs a unique_key"):
        engine.enqueue("sync", unique_for=5)


# ---- delayed and scheduled jobs ----------------------------------------------------------------


def test_run_at_datetime_delays_the_job(make_engine):
    engine = make_engine(poll_interval=5.0)  # only the dispatcher's own wake-up can be on time
    started = {}

    @engine.processor("later")
    def later(ctx, payload):
        started["at"] = time.time()

    with engine:
        time.sleep(0.05)
        due = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=0.4)
        job = engine.enqueue("later", run_at=due)
        assert job.wait(timeout=30).status == "completed"
    assert started["at"] >= due.timestamp() - 0.01
    assert started["at"] - due.timestamp() < 2.0  # generous: the poll alone would take 5 s
    with pytest.raises(TypeError, match="run_at must be a datetime"):
        engine.enqueue("later", run_at="tomorrow")


def test_schedule_persists_and_validates(make_engine, db_path):
    engine = make_engine()
    engine.register("cleanup_tmp", lambda ctx, p: None)
    sc = engine.schedule(
        "nightly-cleanup", "0 2 * * *", "cleanup_tmp", {"dir": "/tmp"}, priority=10
    )
    assert sc.next_fire.hour == 2 and sc.next_fire.minute == 0
    assert sc.next_fire_at > time.time()
    again = make_engine()  # another engine on the file sees it: persisted
    assert [s.name for s in again.schedules()] == ["nightly-cleanup"]
    assert again.schedules()[0].payload == {"dir": "/tmp"}
    with pytest.raises(ValueError, match="cron expression '61 \\* \\* \\* \\*' is invalid"):
        engine.schedule("bad", "61 * * * *", "cleanup_tmp")
    with pytest.raises(ValueError, match="timezone"):
        engine.schedule("bad", "@daily", "cleanup_tmp", timezone="Europe/Paris")
    with pytest.raises(ValueError, match="misfire"):
        engine.schedule("bad", "@daily", "cleanup_tmp", misfire="later")
    assert (
        engine.schedule("offset", "30 6 * * *", "cleanup_tmp", timezone="+02:00").next_fire.hour
        == 4
    )
    assert engine.unschedule("nightly-cleanup") is True
    assert engine.unschedule("nightly-cleanup") is False


SCHEDULE_WORKER = textwrap.dedent(
    """
    import sys, time, jobforge
    engine = jobforge.Engine(sys.argv[1], workers=1, poll_interval=0.02)
    engine.register("tick", lambda ctx, p: None)
    engine.start()
    time.sleep(float(sys.argv[2]))
    engine.stop()
    """
)


def test_every_fire_makes_exactly_one_job_with_three_processes(make_engine, db_path):
    engine = make_engine()
    engine.register("tick", lambda ctx, p: None)
    engine.schedule("ticker", "@every 1s", "tick")
    procs = [
        subprocess.Popen([sys.executable, "-c", SCHEDULE_WORKER, db_path, "4.5"]) for _ in range(3)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    jobs = engine.jobs(type="tick")
    assert 3 <= len(jobs) <= 6
    made = sorted(j.created_at for j in jobs)  # Unix ms
    assert all(b - a > 500 for a, b in zip(made, made[1:]))  # one job per fire, a second apart


# ---- the cron parser against croniter (a fuzz-style property test) -----------------------------

croniter = pytest.importorskip("croniter").croniter


def _random_field(rng, lo, hi, names=()):
    kind = rng.randrange(6)
    if kind == 0:
        return "*"
    # croniter reads a field that covers every value ("*/1", "0-6") sometimes as "*" and sometimes
    # not (it depends on the other fields); jobforge treats only a bare "*" as unrestricted. The
    # generator leaves those spellings out.
    if kind == 1:
        return f"*/{rng.randint(2, hi - lo + 1)}"
    a = rng.randint(lo, hi)
    b = rng.randint(a, hi)
    if a == lo and b == hi:
        return "*"
    if kind == 2:
        return str(a)
    if b == a:  # croniter reads a degenerate range "a-a" as "*"; jobforge as "a"
        return str(a)
    if kind == 3:
        return f"{a}-{b}"
    if kind == 4:
        return f"{a}-{b}/{rng.randint(1, 5)}"
    items = sorted({rng.randint(lo, hi) for _ in range(rng.randint(2, 4))})
    text = ",".join(str(i) for i in items)
    if names and rng.random() < 0.5:
        text = ",".join(names[i - lo] for i in items)
    return text


def test_cron_next_fire_times_match_croniter_on_random_expressions(make_engine):
    from jobforge import _core

    engine = make_engine()
    engine.register("t", lambda ctx, p: None)
    rng = random.Random(1124)
    months = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    days = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
    checked = 0
    for _ in range(300):
        expr = " ".join([
            _random_field(rng, 0, 59), _random_field(rng, 0, 23), _random_field(rng, 1, 28),
            _random_field(rng, 1, 12, months), _random_field(rng, 0, 6, days),
        ])  # fmt: skip
        base = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(
            seconds=rng.randint(0, 3 * 365 * 86400)
        )
        expected = croniter(expr, base).get_next(dt.datetime)
        got = _core.cron_next(expr, int(base.timestamp() * 1000), "UTC")
        assert got == int(expected.timestamp() * 1000), f"{expr} after {base}"
        checked += 1
    assert checked == 300


# ---- queues and limits -------------------------------------------------------------------------


def test_a_worker_serves_only_its_queues(make_engine, db_path):
    producer = make_engine()
    producer.register("export", lambda ctx, p: p)
    a = producer.enqueue("export", 1, queue="exports")
    b = producer.enqueue("export", 2, queue="images")
    many = producer.enqueue_many("export", [3, 4], queue="exports")
    assert a.queue == "exports" and {j.queue for j in many} == {"exports"}
    worker = make_engine(queues=["exports"])
    worker.register("export", lambda ctx, p: p)
    with worker:
        assert a.wait(timeout=30).status == "completed"
        assert all(j.wait(timeout=30).status == "completed" for j in many)
        time.sleep(0.2)
        assert worker.get(b.id).status == "queued"


LIMIT_WORKER = textwrap.dedent(
    """
    import os, sys, time, jobforge
    db, out = sys.argv[1], sys.argv[2]
    engine = jobforge.Engine(db, workers=3, poll_interval=0.02)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    @engine.processor("index_page", max_concurrent=1)
    def index_page(ctx, payload):
        os.write(fd, f"start {time.monotonic():.6f}\\n".encode())
        time.sleep(0.03)
        os.write(fd, f"end {time.monotonic():.6f}\\n".encode())

    engine.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and engine.stats()["completed"] < int(sys.argv[3]):
        time.sleep(0.02)
    engine.stop()
    """
)


def test_max_concurrent_holds_across_two_processes(tmp_path, db_path):
    db = db_path
    out = str(tmp_path / "events.txt")
    producer = jobforge.Engine(db, allow_unknown_types=True)
    producer.enqueue_many("index_page", [{"i": i} for i in range(16)])
    procs = [
        subprocess.Popen([sys.executable, "-c", LIMIT_WORKER, db, out, "16"]) for _ in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    events = sorted((float(t), kind) for kind, t in (line.split() for line in open(out)))
    running = peak = 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 1
    assert sum(1 for _, k in events if k == "start") == 16


def test_rate_limit_spaces_starts(make_engine):
    engine = make_engine(workers=4)
    starts = []

    @engine.processor("call_api", rate="20/s")
    def call_api(ctx, payload):
        starts.append(time.monotonic())

    jobs = engine.enqueue_many("call_api", range(10))
    with engine:
        for j in jobs:
            j.wait(timeout=30)
    assert max(starts) - min(starts) >= 0.3  # 10 starts at 20/s, bursts of 2: ≥ 0.4 s
    with pytest.raises(ValueError, match="rate must look like"):
        engine.register("x", lambda ctx, p: None, rate="fast")


def test_max_queue_size_raises_queue_full_and_writes_nothing(make_engine):
    engine = make_engine(max_queue_size=2)
    engine.register("work", lambda ctx, p: None)
    engine.enqueue("work")
    engine.enqueue("work")
    with pytest.raises(QueueFull, match="queue 'default' is full"):
        engine.enqueue("work")
    assert engine.stats()["queued"] == 2
    engine.queue("exports", max_size=1)
    engine.enqueue("work", queue="exports")
    with pytest.raises(QueueFull, match="queue 'exports' is full"):
        engine.enqueue("work", queue="exports")


def _execute(db_path, sql):
    """Runs a write behind the engine's back, on its SQLite file or its PostgreSQL schema."""
    if db_path.startswith(("postgresql://", "postgres://")):
        subprocess.run(["psql", db_path, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        return
    con = sqlite3.connect(db_path)
    try:
        con.execute(sql)
        con.commit()
    finally:
        con.close()


# ---- retention ---------------------------------------------------------------------------------


def test_cleanup_deletes_old_finished_jobs_and_their_logs(make_engine, db_path):
    engine = make_engine()

    @engine.processor("chatty")
    def chatty(ctx, payload):
        ctx.log("info", "hello")

    jobs = engine.enqueue_many("chatty", range(20))
    with engine:
        for j in jobs:
            j.wait(timeout=30)
    waiting = engine.enqueue("chatty", 99)
    _execute(db_path, "UPDATE jobs SET created_at = created_at - 7200000, "
                      "completed_at = completed_at - 7200000 WHERE status = 'completed'")  # fmt: skip
    assert engine.cleanup(older_than=3600) == 20
    assert int(read_row(db_path, "SELECT count(*) FROM job_logs")[0]) == 0
    assert engine.get(waiting.id) is not None
    with pytest.raises(ValueError, match="older_than"):
        engine.cleanup(older_than=-1)


def test_retention_runs_the_cleanup_job_on_its_own(make_engine):
    engine = make_engine(retention=0.5, cleanup_interval=1)
    done = engine.enqueue("noop")
    with engine:
        done.wait(timeout=30)
        deadline = time.time() + 30
        while engine.get(done.id) is not None and time.time() < deadline:
            time.sleep(0.05)
        assert engine.get(done.id) is None
    cleanups = engine.jobs(type="cleanup")
    assert cleanups and all(j.priority == 10 for j in cleanups)
    assert [s.name for s in engine.schedules()] == ["jobforge.cleanup"]


# ---- the direct path ---------------------------------------------------------------------------


def test_run_now_runs_in_the_callers_thread_and_raises_the_processors_error(make_engine):
    engine = make_engine(allow_exec=True)
    seen = {}

    @engine.processor("resize")
    def resize(ctx, payload):
        seen["thread"] = threading.get_ident()
        ctx.progress(1, total=2, message="half")
        if payload.get("bad"):
            raise KeyError("width")
        return {"w": payload["w"] // 2}

    updates = []
    assert engine.run_now(
        "resize", {"w": 100}, progress=lambda c, t, m: updates.append((c, t, m))
    ) == {"w": 50}
    assert seen["thread"] == threading.get_ident()
    assert updates == [(1.0, 2.0, "half")]
    with pytest.raises(KeyError, match="width"):
        engine.run_now("resize", {"bad": True})
    assert engine.run_now("noop") is None  # a native processor
    with pytest.raises(UnknownJobType):
        engine.run_now("nope")
    # A native processor's field rules apply before it runs, as at enqueue.
    with pytest.raises(ValueError, match="exec: payload field 'argv'"):
        engine.run_now("exec", {"argv": "ls -l"})
    assert engine.stats()["total"] == 0  # no history rows
