"""The counts per (type, status) that stats() reads are kept by the store in the same transaction
as every change it makes (no row triggers): after a workload that takes every path a status can
change by, they must equal a count of the rows. `db check` reports counts that drifted and
`db recount` puts them right."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import jobforge
from jobforge import db as jobforge_db


def counted_rows(path):
    con = sqlite3.connect(path)
    try:
        rows = con.execute("SELECT type, status, count(*) FROM jobs GROUP BY 1, 2").fetchall()
        kept = con.execute("SELECT type, status, n FROM job_type_counts WHERE n <> 0").fetchall()
    finally:
        con.close()
    return sorted(rows), sorted(kept)


def assert_counts_agree(path):
    rows, kept = counted_rows(path)
    assert kept == rows
    report = jobforge_db.check(path)
    assert report["ok"], report["problems"]


def test_counts_follow_every_kind_of_status_change(make_engine, db_path, wait_until):
    engine = make_engine(workers=2, retry_delay=0.01)
    release = threading.Event()

    @engine.processor("ok")
    def ok(ctx, payload):
        return {"i": payload["i"]}

    @engine.processor("flaky")
    def flaky(ctx, payload):
        if ctx.attempt < 2:
            raise ValueError("first attempt fails")
        return "ok"

    @engine.processor("bad")
    def bad(ctx, payload):
        raise ValueError("always")

    @engine.processor("slow")
    def slow(ctx, payload):
        while not release.is_set():
            if ctx.cancelled:
                return None
            time.sleep(0.005)
        return "done"

    oks = engine.enqueue_many("ok", [{"i": i} for i in range(200)])
    flakies = [engine.enqueue("flaky", {}, max_attempts=3) for _ in range(5)]
    bads = [engine.enqueue("bad", {}, max_attempts=2) for _ in range(3)]
    delayed = engine.enqueue("ok", {"i": -1}, delay=3600)
    assert engine.cancel(delayed)  # a queued job cancelled
    # A batch whose failing child cancels the siblings still waiting.
    parent = engine.enqueue_batch(
        "batch_x", [("bad", {}, {"max_attempts": 1})] + [("ok", {"i": i}) for i in range(20)],
        on_child_failure="fail_fast",
    )  # fmt: skip
    # A chain whose first step fails: the steps waiting on it are cancelled.
    chain = engine.chain(("bad", {}, {"max_attempts": 1}), ("ok", {"i": 1}), ("ok", {"i": 2}))
    # A chain that runs through: waiting (created) -> queued -> completed.
    good_chain = engine.chain(("ok", {"i": 3}), ("ok", {"i": 4}))
    running = engine.enqueue("slow", {})
    engine.start()
    for job in oks + flakies + bads + [parent] + chain + good_chain:
        engine.wait(job.id, timeout=30)
    wait_until(
        lambda: engine.get(running.id).status == "running",
        timeout=10,
        what=f"running: {engine.get(running.id)!r} {engine.counts()}",
    )
    assert engine.cancel(running)  # a running job asked to stop
    engine.wait(running.id, timeout=10)
    assert engine.retry(bads[0])  # failed -> queued -> failed again
    engine.wait(bads[0].id, timeout=10)
    assert engine.retry(delayed)  # cancelled -> queued
    release.set()
    engine.stop()
    counts = engine.counts()
    rows, kept = counted_rows(db_path)
    assert kept == rows
    total = sum(n for _, _, n in rows)
    assert counts["total"] == total
    for status in ("completed", "failed", "cancelled", "queued"):
        assert counts[status] == sum(n for _, st, n in rows if st == status), status
    assert counts["failed"] >= 3 and counts["cancelled"] >= 2 and counts["completed"] >= 200
    assert_counts_agree(db_path)


def test_counts_survive_a_killed_worker_process(tmp_path):
    """A process killed with jobs running: the next engine recovers them (running -> queued) and
    every count still agrees with the rows, also after the recovered jobs ran."""
    path = str(tmp_path / "jobs.db")
    script = f"""
import time, jobforge
engine = jobforge.Engine({path!r}, workers=2, lease=1.0, heartbeat_interval=0.2)
@engine.processor("hang")
def hang(payload, ctx):
    time.sleep(60)
engine.enqueue_many("hang", [{{}}] * 6)
engine.start()
print("started", flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 20
        running = 0
        while time.monotonic() < deadline:
            con = sqlite3.connect(path)
            running = con.execute("SELECT count(*) FROM jobs WHERE status = 'running'").fetchone()[
                0
            ]
            con.close()
            if running > 0:
                break
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert running > 0, "no job was running when the process was killed: recovery not exercised"
    assert_counts_agree(path)
    engine = jobforge.Engine(path, workers=2, lease=1.0, heartbeat_interval=0.2)
    engine.register("hang", lambda ctx, payload: "quick now")
    engine.start()
    deadline = time.monotonic() + 30
    while engine.counts()["completed"] < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    engine.stop()
    assert engine.counts()["completed"] == 6
    assert_counts_agree(path)


def test_check_reports_drift_and_recount_corrects_it(tmp_path):
    path = str(tmp_path / "jobs.db")
    engine = jobforge.Engine(path, allow_unknown_types=True)
    engine.enqueue_many("noop", [{}] * 10)
    engine.close()
    con = sqlite3.connect(path)
    with con:  # written behind the engine's back: the counts do not follow
        con.execute("UPDATE jobs SET status = 'completed' WHERE rowid <= 4")
    con.close()
    report = jobforge_db.check(path)
    assert not report["ok"]
    assert any("noop/queued counts 10, the rows say 6" in p for p in report["problems"])
    assert any("noop/completed counts 0, the rows say 4" in p for p in report["problems"])
    fixed = jobforge_db.recount(path)
    assert {(c["status"], c["was"], c["now"]) for c in fixed["changed"]} == {
        ("queued", 10, 6),
        ("completed", 0, 4),
    }
    assert jobforge_db.check(path)["ok"]
    engine = jobforge.Engine(path, allow_unknown_types=True)
    assert engine.counts()["queued"] == 6 and engine.counts()["completed"] == 4
    engine.close()
    again = subprocess.run(
        [sys.executable, "-m", "jobforge", "db", "recount", "--db", path],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0 and "the counts were right" in again.stdout


def test_recount_of_a_missing_file_names_it(tmp_path):
    missing = str(tmp_path / "nope.db")
    try:
        jobforge_db.recount(missing)
    except jobforge_db.RepairError as exc:
        assert "nope.db" in str(exc)
    else:
        raise AssertionError("recount of a missing file did not raise")
    assert not os.path.exists(missing)
