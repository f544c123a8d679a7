"""Seed schema: a database created with exactly the seed schema opens, is migrated in place, keeps
its rows, and its queued jobs run."""

import json
import sqlite3
import time
import uuid

import pytest

WAIT = 10  # generous guard against hangs, never a speed assertion

SEED_SCHEMA = """
CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  type TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'created',
  priority INTEGER NOT NULL DEFAULT 5,
  payload TEXT NOT NULL,
  progress INTEGER DEFAULT 0,
  result TEXT,
  error TEXT,
  attempts INTEGER DEFAULT 0,
  max_attempts INTEGER DEFAULT 3,
  parent_job_id TEXT,
  user_initiated INTEGER DEFAULT 1,
  timeout_seconds INTEGER DEFAULT 300,
  created_at INTEGER NOT NULL,
  queued_at INTEGER,
  started_at INTEGER,
  completed_at INTEGER,
  timeout_at INTEGER,
  FOREIGN KEY (parent_job_id) REFERENCES jobs(id)
);
CREATE INDEX idx_jobs_status ON jobs(status);
CREATE INDEX idx_jobs_type ON jobs(type);
CREATE INDEX idx_jobs_priority ON jobs(priority);
CREATE INDEX idx_jobs_user_initiated ON jobs(user_initiated);
CREATE INDEX idx_jobs_parent_id ON jobs(parent_job_id);
CREATE INDEX idx_jobs_created_at ON jobs(created_at);
"""

SEED_COLUMNS = (
    "id, type, status, priority, payload, progress, result, error, attempts, max_attempts, "
    "parent_job_id, user_initiated, timeout_seconds, created_at, queued_at, started_at, "
    "completed_at, timeout_at"
)


@pytest.fixture
def seed_rows(db_path):
    """A seed-schema file with a completed parent, two queued children and a failed job."""
    now = int(time.time() * 1000)
    rows = {
        "completed": dict(
            id=str(uuid.uuid4()),
            type="convert",
            status="completed",
            priority=5,
            payload={"n": 0},
            progress=100,
            result={"ok": True},
            error=None,
            attempts=1,
            parent=None,
            created_at=now - 5000,
            completed_at=now - 4000,
        ),
        "queued_low": dict(
            id=str(uuid.uuid4()),
            type="convert",
            status="queued",
            priority=7,
            payload={"n": 1},
            progress=0,
            result=None,
            error=None,
            attempts=0,
            parent=None,
            created_at=now - 3000,
            completed_at=None,
        ),
        "queued_high": dict(
            id=str(uuid.uuid4()),
            type="convert",
            status="queued",
            priority=2,
            payload={"n": 2},
            progress=0,
            result=None,
            error=None,
            attempts=0,
            parent=None,
            created_at=now - 2000,
            completed_at=None,
        ),
        "failed": dict(
            id=str(uuid.uuid4()),
            type="convert",
            status="failed",
            priority=5,
            payload={"n": 3},
            progress=10,
            result=None,
            error="Error: disk full",
            attempts=3,
            parent=None,
            created_at=now - 1000,
            completed_at=now - 500,
        ),
    }
    rows["queued_low"]["parent"] = rows["completed"]["id"]
    rows["queued_high"]["parent"] = rows["completed"]["id"]

    connection = sqlite3.connect(db_path)
    connection.executescript(SEED_SCHEMA)
    for row in rows.values():
        connection.execute(
            "INSERT INTO jobs (id, type, status, priority, payload, progress, result, error, "
            "attempts, max_attempts, parent_job_id, user_initiated, timeout_seconds, created_at, "
            "queued_at, started_at, completed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 3, ?, 1, 300, ?, ?, ?, ?)",
            (
                row["id"],
                row["type"],
                row["status"],
                row["priority"],
                json.dumps(row["payload"]),
                row["progress"],
                None if row["result"] is None else json.dumps(row["result"]),
                row["error"],
                row["attempts"],
                row["parent"],
                row["created_at"],
                row["created_at"] + 10,
                row["completed_at"] - 100 if row["completed_at"] else None,
                row["completed_at"],
            ),
        )
    connection.commit()
    connection.close()
    return rows


def test_seed_database_opens_and_keeps_its_rows(make_engine, seed_rows):
    engine = make_engine()

    for row in seed_rows.values():
        job = engine.get(row["id"])
        assert job is not None, row["id"]
        assert job.type == row["type"]
        assert job.status == row["status"]
        assert job.priority == row["priority"]
        assert job.payload == row["payload"]
        assert job.result == row["result"]
        assert job.attempts == row["attempts"]
        assert job.max_attempts == 3
        assert job.timeout == 300
        assert job.parent_id == row["parent"]
        assert job.created_at == row["created_at"]
        assert job.completed_at == row["completed_at"]

    assert engine.get(seed_rows["failed"]["id"]).error == "Error: disk full"
    stats = engine.stats()
    assert (stats["total"], stats["queued"], stats["completed"], stats["failed"]) == (4, 2, 1, 1)


def test_seed_database_queued_jobs_run_to_completion_once_started(make_engine, seed_rows):
    engine = make_engine(workers=1)
    order = []

    @engine.processor("convert")
    def convert(ctx, payload):
        order.append(payload["n"])
        return {"converted": payload["n"] * 10}

    engine.start()
    high = engine.wait(seed_rows["queued_high"]["id"], timeout=WAIT)
    low = engine.wait(seed_rows["queued_low"]["id"], timeout=WAIT)

    assert (high.status, high.result) == ("completed", {"converted": 20})
    assert (low.status, low.result) == ("completed", {"converted": 10})
    assert order == [2, 1]  # priority 2 before 7; finished rows are not run again
    assert engine.stats()["completed"] == 3


def test_seed_database_queries_see_migrated_rows(make_engine, seed_rows):
    engine = make_engine()

    newest_first = [job.id for job in engine.jobs()]
    children = {job.id for job in engine.jobs(parent=seed_rows["completed"]["id"])}

    assert newest_first == [
        seed_rows[k]["id"] for k in ("failed", "queued_high", "queued_low", "completed")
    ]
    assert children == {seed_rows["queued_low"]["id"], seed_rows["queued_high"]["id"]}


def test_seed_database_is_migrated_in_place_and_stays_readable(make_engine, db_path, seed_rows):
    engine = make_engine()
    added = engine.enqueue("noop", {"new": True})
    engine.stop(wait=True)

    connection = sqlite3.connect(db_path)
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        rows = connection.execute(f"SELECT {SEED_COLUMNS} FROM jobs").fetchall()
        integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()

    assert version >= 1
    assert integrity == "ok"
    assert {row[0] for row in rows} == {r["id"] for r in seed_rows.values()} | {added.id}


def test_migrated_database_opens_again(make_engine, seed_rows):
    first = make_engine()
    first.stop(wait=True)

    second = make_engine()

    assert second.stats()["total"] == 4
    assert second.get(seed_rows["completed"]["id"]).result == {"ok": True}


def test_processes_opening_a_new_file_at_once_all_get_the_migrated_schema(tmp_path):
    # Worker processes started together on a new file: each used to read user_version 0 and
    # run the migrations, and all but one failed ("duplicate column name: run_at").
    import subprocess
    import sys

    db = tmp_path / "jobs.db"
    start = time.time() + 1.5
    code = (
        "import sys, time, jobforge\n"
        "while time.time() < float(sys.argv[2]): pass\n"
        "e = jobforge.Engine(sys.argv[1])\n"
        "e.enqueue('noop')\n"
        "print('ok')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(db), str(start)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0 and out.strip() == "ok", err
    import jobforge

    assert jobforge.Engine(str(db)).counts()["total"] == 6
