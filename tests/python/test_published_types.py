"""Published job types (docs/workers.md): workers publish the types they serve and their
processors' options; producers that never registered a processor (`jobforge enqueue`, a
producer-only process) enqueue with them; `health()` names due types no live worker serves.

Real worker processes (`jobforge worker --app`, `start(processes=1)`), real SIGKILL, on a SQLite
file and on a PostgreSQL schema."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

import jobforge

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and POSIX signals")

WAIT = 30  # guards against hangs only, never a speed assertion

APP = """
import jobforge

engine = jobforge.Engine({db!r}, heartbeat_interval=0.2, lease=1.0, poll_interval=0.05)

@engine.processor("resize", max_attempts=2, timeout=30, retry_delay=4, priority="high")
def resize(ctx, payload):
    return payload
"""


def _env():
    env = dict(os.environ)
    env.pop("JOBFORGE_DB", None)
    env["SKBUILD_EDITABLE_VERBOSE"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


class Worker:
    """`python -m jobforge worker ...` in a subprocess; stderr is read line by line."""

    def __init__(self, cwd, *args):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobforge", "worker", *args],
            cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def read_until(self, fragment, timeout=120):
        seen = []
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, f"worker exited before printing {fragment!r}: {seen}"
            seen.append(line)
            if fragment in line:
                return line

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def worker_app(tmp_path, db_path):
    (tmp_path / "publishedapp.py").write_text(APP.format(db=db_path))
    workers = []

    def start():
        worker = Worker(str(tmp_path), "--app", "publishedapp:engine", "--concurrency", "1")
        workers.append(worker)
        worker.read_until("jobforge: worker ")
        return worker

    yield start
    for worker in workers:
        worker.kill()


def _cli_enqueue(db_path, *args):
    out = subprocess.run(
        [sys.executable, "-m", "jobforge", "enqueue", "--db", db_path, "--json", *args],
        capture_output=True, text=True, env=_env(), timeout=WAIT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _unserved(engine):
    return engine.health(integrity=False)["queue"]["unserved_types"]


def test_producers_enqueue_with_the_options_a_worker_process_published(
    worker_app, db_path, make_engine
):
    producer = make_engine()  # never registers "resize", never starts
    with pytest.raises(jobforge.UnknownJobType, match="no worker publishes it"):
        producer.enqueue("resize", {})  # nobody published it yet
    worker_app()

    # The CLI (its engine allows unknown types) and a producer-only engine: the worker's options
    # (2 attempts, 30 s, retry 4 s, priority high = 3), not the defaults (3, 300 s, 1 s, 5).
    record = _cli_enqueue(db_path, "resize", "--delay", "3600")
    assert (record["max_attempts"], record["timeout"]) == (2, 30.0)
    job = producer.enqueue("resize", {"w": 1}, delay=3600)
    assert (job.max_attempts, job.timeout, job.retry_delay, job.priority) == (2, 30.0, 4.0, 3)
    stored = producer.get(job.id)
    assert (stored.max_attempts, stored.timeout) == (2, 30.0)
    # A job's own options still override.
    own = producer.enqueue("resize", {}, max_attempts=5, timeout=7, delay=3600)
    assert (own.max_attempts, own.timeout) == (5, 7.0)
    assert (
        _cli_enqueue(db_path, "resize", "--max-attempts", "6", "--delay", "3600")["max_attempts"]
        == 6
    )

    # A type nobody publishes: refused as before, unless unknown types are allowed (then the
    # engine's defaults apply).
    with pytest.raises(jobforge.UnknownJobType, match="'thumbnail'.*no worker publishes it"):
        producer.enqueue("thumbnail", {})
    lenient = make_engine(allow_unknown_types=True).enqueue("thumbnail", {}, delay=3600)
    assert (lenient.max_attempts, lenient.timeout) == (3, 300.0)
    assert _cli_enqueue(db_path, "thumbnail", "--delay", "3600")["max_attempts"] == 3


def test_health_names_due_types_no_live_worker_serves_after_the_worker_is_killed(
    worker_app, db_path, make_engine, wait_until
):
    worker = worker_app()
    observer = make_engine(allow_unknown_types=True, lease=1.0)
    observer.enqueue("thumbnail", {})  # due, and no worker serves it
    health = observer.health(integrity=False)
    assert health["status"] == "degraded"
    assert "due jobs of type(s) no live worker serves: 'thumbnail'" in health["reasons"]
    assert "resize" not in _unserved(observer)

    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(WAIT)
    # The type stays known (the dead worker's entry is the last one): jobs wait for a worker.
    job = make_engine().enqueue("resize", {"x": 1})
    assert job.max_attempts == 2
    assert wait_until(lambda: _unserved(observer) == ["resize", "thumbnail"], timeout=WAIT)
    reasons = observer.health(integrity=False)["reasons"]
    assert "due jobs of type(s) no live worker serves: 'resize', 'thumbnail'" in reasons

    # A worker back: resize is served again (and its job runs).
    worker_app()
    assert wait_until(lambda: _unserved(observer) in ([], ["thumbnail"]), timeout=WAIT)
    assert job.wait(timeout=WAIT).status == "completed"
    assert _unserved(observer) == ["thumbnail"]


def test_newest_publish_of_a_live_worker_wins_and_a_producer_notices_within_seconds(
    worker_app, make_engine, wait_until
):
    worker_app()  # resize: 2 attempts, 30 s
    producer = make_engine()
    assert producer.enqueue("resize", {}, delay=3600).max_attempts == 2

    # A second worker (a process of start(processes=1)) registers resize with other options
    # later: its publish is the newest, so it wins, also for the long-lived producer (its cache
    # is re-read every 2 s).
    second = make_engine(heartbeat_interval=0.2, lease=1.0, poll_interval=0.05)
    second.register("resize", lambda ctx, payload: None, max_attempts=5, timeout=10)
    second.start(processes=1)
    assert wait_until(
        lambda: producer.enqueue("resize", {}, delay=3600).max_attempts == 5, timeout=WAIT
    )
    assert make_engine().enqueue("resize", {}, delay=3600).timeout == 10.0

    # It stops (deregisters): the remaining live worker's entry wins again.
    second.stop()
    assert make_engine().enqueue("resize", {}, delay=3600).max_attempts == 2
    assert wait_until(
        lambda: producer.enqueue("resize", {}, delay=3600).max_attempts == 2, timeout=WAIT
    )
