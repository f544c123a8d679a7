"""Checkpoints run off the commit path (a checkpointer thread, and a short catch-up by the writer
once the WAL passes ~4,000 pages): the WAL must stay bounded under a steady stream of single
commits, and nothing committed may be lost across the checkpoints."""

import os
import sqlite3

import jobforge

WAL_BOUND = 40 * 1024 * 1024  # the catch-up starts the WAL over at ~16 MB; SQLite's page is 4 KB


def test_the_wal_stays_bounded_under_a_stream_of_single_commits(tmp_path):
    path = str(tmp_path / "jobs.db")
    engine = jobforge.Engine(path, allow_unknown_types=True)
    largest = 0
    for i in range(20_000):  # ~8 pages per commit: 160,000 WAL frames (640 MB) without resets
        engine.enqueue("noop", {"i": i})
        if i % 500 == 0:
            largest = max(largest, os.path.getsize(path + "-wal"))
    largest = max(largest, os.path.getsize(path + "-wal"))
    assert largest < WAL_BOUND, f"the WAL grew to {largest / 1e6:.0f} MB"
    engine.close()
    con = sqlite3.connect(path)
    try:
        n, distinct = con.execute("SELECT count(*), count(DISTINCT payload) FROM jobs").fetchone()
        assert n == distinct == 20_000
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()


def test_jobs_drained_while_checkpoints_run_are_all_completed_once(tmp_path, wait_until):
    path = str(tmp_path / "jobs.db")
    engine = jobforge.Engine(path, workers=2)
    for _ in range(5):
        engine.enqueue_many("noop", [{"i": i} for i in range(20_000)])
    engine.start()
    engine.enqueue("noop", {"last": True})
    wait_until(lambda: engine.counts()["completed"] == 100_001, timeout=120, what="all completed")
    engine.stop()
    assert os.path.getsize(path + "-wal") < WAL_BOUND
    con = sqlite3.connect(path)
    try:
        row = con.execute(
            "SELECT count(*), sum(status = 'completed'), sum(attempts = 1) FROM jobs"
        ).fetchone()
    finally:
        con.close()
    assert row == (100_001, 100_001, 100_001)
