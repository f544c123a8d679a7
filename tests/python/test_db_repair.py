"""`jobforge.db.check` and `repair` on a database damaged for real: bytes of a page of the jobs
table overwritten in the file."""

import os
import sqlite3

import pytest

import jobforge
from jobforge import db

JOBS = 3000


def _fill(path):
    engine = jobforge.Engine(path, workers=1)
    jobs = engine.enqueue_many("noop", [{"i": i, "pad": "x" * 200} for i in range(JOBS)])
    engine.stop()
    return [j.id for j in jobs]


def _page_of_table(path, table):
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = [r[0] for r in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
            (table,))]  # fmt: skip
    finally:
        conn.close()
    return page_size, pages[len(pages) // 2]


def _smash(path, page_size, page):
    with open(path, "r+b") as f:
        f.seek((page - 1) * page_size + 8)  # keep the page header's type byte: a bad cell area
        f.write(os.urandom(page_size - 16))


def alive_jobs(path):
    conn = sqlite3.connect(path)
    try:
        return [type("J", (), {"id": r[0]}) for r in conn.execute("SELECT id FROM jobs")]
    finally:
        conn.close()


def test_check_of_a_healthy_file_is_ok(tmp_path):
    path = str(tmp_path / "jobs.db")
    _fill(path)
    report = db.check(path)
    assert report["ok"] is True and report["problems"] == []
    assert report["jobs"] == JOBS
    engine = jobforge.Engine(path)
    assert engine.check_integrity()["ok"] is True
    assert engine.check_integrity(quick=True)["ok"] is True


def test_repair_copies_every_readable_row_and_keeps_the_damaged_file(tmp_path):
    path = str(tmp_path / "jobs.db")
    ids = _fill(path)
    page_size, page = _page_of_table(path, "jobs")
    _smash(path, page_size, page)

    before = db.check(path)
    assert before["ok"] is False and before["problems"]

    report = db.repair(path)
    assert os.path.exists(report["damaged_copy"])
    jobs = report["tables"]["jobs"]
    assert jobs["lost"] > 0, report
    assert jobs["copied"] + jobs["lost"] == JOBS
    # The id index survived the damage, so the report names every lost job.
    assert sorted(jobs["lost_ids"]) == sorted(set(ids) - {j.id for j in alive_jobs(path)})
    assert report["check"]["ok"] is True

    engine = jobforge.Engine(path, workers=1)
    counts = engine.counts()
    assert counts["total"] == jobs["copied"] == counts["queued"]
    # Whatever survived is intact and runs.
    survivors = [engine.get(i) for i in ids]
    alive = [j for j in survivors if j is not None]
    assert len(alive) == jobs["copied"]
    assert all(j.payload["pad"] == "x" * 200 for j in alive)
    engine.start()
    alive[0].wait(timeout=30)
    assert alive[0].refresh().status == "completed"
    engine.stop()


def test_repair_keeps_the_types_workers_published(tmp_path):
    path = str(tmp_path / "jobs.db")
    _fill(path)
    worker = jobforge.Engine(path, workers=1)
    worker.register("resize", lambda ctx, payload: None, max_attempts=2, timeout=30)
    worker.start()
    worker.stop()
    _smash(path, *_page_of_table(path, "jobs"))

    report = db.repair(path)
    assert report["tables"]["worker_types"]["copied"] > 0, report
    assert report["check"]["ok"] is True
    # A producer that never registered resize still enqueues it with the worker's options.
    job = jobforge.Engine(path).enqueue("resize", {})
    assert (job.max_attempts, job.timeout) == (2, 30.0)


def test_repair_refuses_a_file_in_use_by_a_live_worker(tmp_path):
    path = str(tmp_path / "jobs.db")
    engine = jobforge.Engine(path, workers=1)
    engine.start()
    try:
        with pytest.raises(db.RepairError, match="worker"):
            db.repair(path)
    finally:
        engine.stop()


def test_repair_of_something_that_is_not_a_database_is_an_error(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(db.RepairError):
        db.repair(str(path))
    with pytest.raises(db.RepairError):
        db.check(str(tmp_path / "missing.db"))
