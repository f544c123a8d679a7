"""Worker processes: `jobforge worker --app module:attr` and `engine.start(processes=N)`.

Everything runs real processes: the CLI as `python -m jobforge worker`, forked children of this
test process, scripts whose processors live in `__main__`. Crashes are real too: a processor
that calls os._exit(1) or dereferences NULL takes its whole worker process down; the supervisor
restarts it and the other workers recover the job."""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and POSIX signals")

WAIT = 30  # guards against hangs only, never a speed assertion

# Fast recovery for tests: a dead peer on this host is noticed at the next heartbeat of a live
# one; a frozen one once its lease has expired.
FAST = dict(heartbeat_interval=0.2, lease=1.0, poll_interval=0.05)


def _env():
    env = dict(os.environ)
    env.pop("JOBFORGE_DB", None)
    env["SKBUILD_EDITABLE_VERBOSE"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def _lines(path):
    try:
        with open(path) as fh:
            return [line.split() for line in fh if line.strip()]
    except FileNotFoundError:
        return []


def _append(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, (text + "\n").encode())  # one write: atomic with O_APPEND
    finally:
        os.close(fd)


def _wait_durable(db, processes, timeout=30):
    """Waits until `processes` live workers claim durably. The first worker on a file starts
    alone and claims in memory until it notices the others (at its next heartbeat); tests that
    count attempts per execution start after that."""
    deadline = time.monotonic() + timeout
    while True:
        connection = sqlite3.connect(db, timeout=5)
        try:
            modes = [m for (m,) in connection.execute(
                "SELECT claim_mode FROM workers WHERE state = 'running'"
            )]  # fmt: skip
        finally:
            connection.close()
        if modes.count("durable") >= processes:
            return
        assert time.monotonic() < deadline, f"workers not claiming durably: {modes}"
        time.sleep(0.02)


APP = """
import ctypes, os, time
import jobforge

engine = jobforge.Engine({db!r}, workers=2, heartbeat_interval=0.2, lease=1.0, poll_interval=0.05)
RAN = {ran!r}

def _ran(ctx):
    fd = os.open(RAN, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, f"{{ctx.job_id}} {{os.getpid()}} {{ctx.attempt}} {{time.time()}}\\n".encode())
    os.close(fd)

@engine.processor("square", max_attempts=7, priority=2)
def square(ctx, payload):
    _ran(ctx)
    return {{"square": payload["x"] ** 2, "pid": os.getpid()}}

@engine.processor("hold", max_attempts=3)
def hold(ctx, payload):
    _ran(ctx)
    deadline = time.monotonic() + payload.get("seconds", 60)
    while time.monotonic() < deadline and not ctx.cancelled:
        time.sleep(0.01)
    return {{"pid": os.getpid(), "cancelled": ctx.cancelled}}

@engine.processor("fan-out")
def fan_out(ctx, payload):
    # Enqueues through the module's engine, as application code does.
    child = engine.enqueue("square", {{"x": payload["x"]}})
    return {{"child": child.id, "pid": os.getpid()}}

@engine.processor("crash", max_attempts=2)
def crash(ctx, payload):
    _ran(ctx)
    if payload["how"] == "exit":
        os._exit(1)
    ctypes.string_at(0)  # SIGSEGV
"""


@pytest.fixture
def app(tmp_path):
    """Writes `workerapp.py` (an engine on tmp_path/jobs.db with a few processors) into tmp_path;
    returns (module directory, db path, executions file)."""
    db = str(tmp_path / "jobs.db")
    ran = str(tmp_path / "ran.txt")
    (tmp_path / "workerapp.py").write_text(APP.format(db=db, ran=ran))
    return str(tmp_path), db, ran


class Worker:
    """`python -m jobforge worker ...` in a subprocess; stderr is read line by line."""

    def __init__(self, cwd, *args):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobforge", "worker", *args],
            cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def read_until(self, fragment, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"worker printed no {fragment!r} in time: {self.seen}"
                ) from None
            if line is None:
                raise AssertionError(f"worker exited before printing {fragment!r}: {self.seen}")
            self.seen.append(line)
            if fragment in line:
                return line

    def wait(self, timeout=WAIT):
        return self.process.wait(timeout)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def cli_worker():
    workers = []

    def start(cwd, *args):
        worker = Worker(cwd, *args)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill()


# -- jobforge worker ------------------------------------------------------------------------------


def test_cli_worker_runs_the_apps_processors_and_exits_0_on_sigterm(app, cli_worker, make_engine):
    cwd, db, ran = app
    worker = cli_worker(cwd, "--app", "workerapp:engine", "--concurrency", "3")
    line = worker.read_until("jobforge: worker ")
    # One line at start: id, file, types, concurrency.
    assert f"on {db}: types " in line
    assert "checksum, crash, fan-out, hold, noop, scan, sleep, square" in line  # no exec
    assert "(concurrency 3," in line

    producer = make_engine(allow_unknown_types=True)
    jobs = producer.enqueue_many("square", [{"x": x} for x in range(20)])
    results = [job.wait(timeout=WAIT).result for job in jobs]
    assert [r["square"] for r in results] == [x * x for x in range(20)]
    assert {r["pid"] for r in results} == {worker.process.pid}

    # A processor that enqueues through the module's engine: the job is stored (that engine is
    # never started in the worker; the worker's own engine runs the child).
    parent = producer.enqueue("fan-out", {"x": 9}).wait(timeout=WAIT)
    assert producer.wait(parent.result["child"], timeout=WAIT).result["square"] == 81

    worker.process.send_signal(signal.SIGTERM)
    worker.read_until("SIGTERM, stopping after the running jobs")
    assert worker.wait() == 0


def test_cli_worker_lets_its_running_job_finish_on_sigterm(app, cli_worker, make_engine):
    cwd, db, ran = app
    worker = cli_worker(cwd, "--app", "workerapp:engine")
    worker.read_until("jobforge: worker ")
    producer = make_engine(allow_unknown_types=True)
    job = producer.enqueue("hold", {"seconds": 1.0})
    while not _lines(ran):
        time.sleep(0.01)
    worker.process.send_signal(signal.SIGTERM)
    worker.read_until("stopping after the running jobs")
    assert worker.wait() == 0
    job = job.refresh()
    assert job.status == "completed"
    assert job.result == {"pid": worker.process.pid, "cancelled": False}


def test_cli_worker_second_signal_exits_at_once_and_the_job_is_recovered(
    app, cli_worker, make_engine
):
    cwd, db, ran = app
    worker = cli_worker(cwd, "--app", "workerapp:engine")
    worker.read_until("jobforge: worker ")
    producer = make_engine(allow_unknown_types=True)
    job = producer.enqueue("hold", {"seconds": 60})
    while not _lines(ran):
        time.sleep(0.01)
    worker.process.send_signal(signal.SIGINT)
    worker.read_until("SIGINT, stopping after the running jobs")
    worker.process.send_signal(signal.SIGINT)
    worker.read_until("SIGINT again, exiting now")
    assert worker.wait() == 130
    # The job was left running under a dead owner: the next worker to open the file takes it
    # back (one attempt counted) and runs it.
    assert producer.get(job.id).status == "running"
    second = cli_worker(cwd, "--app", "workerapp:engine")
    second.read_until("jobforge: worker ")
    while len(_lines(ran)) < 2:  # the second run has started: it holds until cancelled
        time.sleep(0.01)
    assert [int(r[2]) for r in _lines(ran)] == [1, 2]
    # Alone on the file, the second worker claimed in memory: its start reaches the file within
    # a commit window. Cancel once it is there, so the cancel reaches the running job.
    while (producer.get(job.id).status, producer.get(job.id).attempts) != ("running", 2):
        time.sleep(0.01)
    producer.cancel(job.id)
    done = job.wait(timeout=WAIT)
    assert done.status == "cancelled"
    assert done.attempts == 2
    second.process.send_signal(signal.SIGTERM)
    assert second.wait() == 0


def test_cli_worker_sigquit_puts_the_running_job_back_without_counting_it(
    app, cli_worker, make_engine
):
    cwd, db, ran = app
    worker = cli_worker(cwd, "--app", "workerapp:engine")
    worker.read_until("jobforge: worker ")
    producer = make_engine(allow_unknown_types=True)
    job = producer.enqueue("hold", {"seconds": 60})
    while not _lines(ran):
        time.sleep(0.01)
    worker.process.send_signal(signal.SIGQUIT)
    worker.read_until("SIGQUIT, stopping now")
    assert worker.wait() == 0
    job = job.refresh()
    assert job.status == "queued"
    assert job.attempts == 0


def test_cli_worker_uses_db_concurrency_and_heartbeat_options(
    app, cli_worker, make_engine, tmp_path
):
    cwd, db, ran = app
    other = str(tmp_path / "other.db")
    producer = make_engine(other, allow_unknown_types=True)
    job = producer.enqueue("square", {"x": 4})
    worker = cli_worker(
        cwd, "--app", "workerapp:engine", "--db", other, "--concurrency", "1",
        "--heartbeat", "0.5", "--lease", "2",
    )  # fmt: skip
    line = worker.read_until("jobforge: worker ")
    assert f"on {other}:" in line
    assert "(concurrency 1," in line
    assert job.wait(timeout=WAIT).result["square"] == 16
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_cli_worker_accepts_a_factory(tmp_path, cli_worker, make_engine):
    db = str(tmp_path / "jobs.db")
    (tmp_path / "factoryapp.py").write_text(
        textwrap.dedent(
            f"""
            import jobforge

            def make_engine():
                engine = jobforge.Engine({db!r}, workers=1)
                engine.register("hello", lambda ctx, payload: "hi " + payload)
                return engine
            """
        )
    )
    worker = cli_worker(str(tmp_path), "--app", "factoryapp:make_engine")
    worker.read_until("types checksum, hello, noop, scan, sleep")
    producer = make_engine(allow_unknown_types=True)
    assert producer.enqueue("hello", "there").wait(timeout=WAIT).result == "hi there"
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait() == 0


BAD_APPS = {
    "broken.py": "import jobforge\nraise RuntimeError('boom at import')\n",
    "started.py": (
        "import jobforge\nengine = jobforge.Engine({db!r}, workers=1)\nengine.start()\n"
    ),
    "notengine.py": "engine = 42\n",
}


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--app", "workerapp"], 2, "--app must be MODULE:ATTR"),
        (["--app", "nosuchmodule:engine"], 2, "no module named 'nosuchmodule'"),
        (["--app", "workerapp:nothing"], 2, "has no attribute 'nothing'"),
        (["--app", "notengine:engine"], 2, "must name a jobforge.Engine"),
        (["--app", "started:engine"], 2, "is already running"),
        (["--app", "broken:engine"], 1, "importing the app 'broken:engine' failed"),
        (["--app", "workerapp:engine", "--concurrency", "0"], 2, "--concurrency must be at least"),
        (["--app", "workerapp:engine", "--heartbeat", "0"], 2, "--heartbeat must be more than 0"),
        (["--concurrency", "2"], 2, "--app"),
    ],
)
def test_cli_worker_reports_a_bad_app_or_option(app, tmp_path, args, code, fragment):
    cwd, db, ran = app
    for name, text in BAD_APPS.items():
        (tmp_path / name).write_text(text.format(db=db))
    proc = subprocess.run(
        [sys.executable, "-m", "jobforge", "worker", *args], cwd=cwd, env=_env(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == code, proc.stderr
    assert fragment in proc.stderr
    if "broken" in " ".join(args):
        assert "RuntimeError: boom at import" in proc.stderr  # the user's traceback is shown


# -- engine.start(processes=N) --------------------------------------------------------------------

# Processors for the forked tests: module-level functions of this test module. Forked children
# replay them from the engine's registrations; nothing is pickled or imported.
RAN_FILE = {}


def _record(ctx, payload):
    _append(RAN_FILE["path"], f"{ctx.job_id} {os.getpid()} {ctx.attempt} {time.time()}")


def square(ctx, payload):
    _record(ctx, payload)
    return {"square": payload["x"] ** 2, "pid": os.getpid()}


def hold(ctx, payload):
    _record(ctx, payload)
    deadline = time.monotonic() + payload.get("seconds", 60)
    while time.monotonic() < deadline and not ctx.cancelled:
        time.sleep(0.01)
    return {"pid": os.getpid(), "attempt": ctx.attempt}


def crash(ctx, payload):
    _record(ctx, payload)
    if payload["how"] == "exit":
        os._exit(1)
    ctypes.string_at(0)  # SIGSEGV


@pytest.fixture
def supervised(make_engine, tmp_path):
    """An engine with square/hold/crash registered (fast heartbeat and lease); not started."""
    RAN_FILE["path"] = str(tmp_path / "ran.txt")
    engine = make_engine(workers=2, **FAST)
    engine.register("square", square, max_attempts=7, priority=2)
    engine.register("hold", hold, max_attempts=3)
    engine.register("crash", crash, max_attempts=2)
    return engine


def test_start_processes_runs_jobs_in_child_processes_only(supervised):
    engine = supervised.start(processes=2, concurrency=2)
    assert engine.running
    engine.supervisor.wait_ready(WAIT)
    pids = set(engine.supervisor.pids)
    assert len(pids) == 2 and os.getpid() not in pids
    assert len(engine.supervisor.worker_ids) == 2

    jobs = engine.enqueue_many("square", [{"x": x} for x in range(100)])
    results = [job.wait(timeout=WAIT).result for job in jobs]  # Job.wait polls the store
    assert [r["square"] for r in results] == [x * x for x in range(100)]
    assert {r["pid"] for r in results} <= pids

    engine.stop()
    assert not engine.running
    assert engine.supervisor.pids == []
    exits = engine.supervisor.exits
    assert sorted(e.pid for e in exits) == sorted(pids)
    assert all(e.returncode == 0 and e.requested and not e.restarted for e in exits)
    assert engine.supervisor.restarts == 0


def test_start_processes_is_idempotent_and_validated(supervised, make_engine):
    with pytest.raises(ValueError, match="processes must be at least 1"):
        supervised.start(processes=0)
    with pytest.raises(TypeError, match="processes must be an int"):
        supervised.start(processes=True)
    with pytest.raises(ValueError, match="app must be 'module:attr'"):
        supervised.start(processes=1, app="nocolon")
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        supervised.start(processes=1, concurrency=0)
    with pytest.raises(ValueError, match="need processes=N"):
        supervised.start(concurrency=2)
    with pytest.raises(ValueError, match="singleton"):
        make_engine(singleton=True).start(processes=2)
    assert not supervised.running

    supervised.start(processes=1)
    first = supervised.supervisor
    assert supervised.start(processes=1).supervisor is first  # idempotent
    with pytest.raises(RuntimeError, match="already runs 1 worker processes"):
        supervised.start(processes=2)
    with pytest.raises(RuntimeError, match="already runs worker processes"):
        supervised.start()
    supervised.stop()
    supervised.start()  # threads again, after the processes stopped
    with pytest.raises(RuntimeError, match="already runs worker threads"):
        supervised.start(processes=1)


def test_stop_waits_for_the_running_jobs_of_the_children(supervised):
    engine = supervised.start(processes=1)
    job = engine.enqueue("hold", {"seconds": 0.8})
    while not _lines(RAN_FILE["path"]):
        time.sleep(0.01)
    engine.stop(wait=True)
    job = job.refresh()
    assert job.status == "completed"
    assert job.attempts == 1


def test_stop_without_wait_puts_running_jobs_back_uncounted(supervised):
    engine = supervised.start(processes=2, stop_grace=10)
    jobs = [engine.enqueue("hold", {"seconds": 60}) for _ in range(2)]
    while len(_lines(RAN_FILE["path"])) < 2:
        time.sleep(0.01)
    started = time.monotonic()
    engine.stop(wait=False)
    took = time.monotonic() - started
    for job in jobs:
        job = job.refresh()
        assert (job.status, job.attempts) == ("queued", 0)
    assert all(e.returncode == 0 for e in engine.supervisor.exits), engine.supervisor.exits
    print(f"\nstop(wait=False) of 2 worker processes running jobs took {took:.2f} s")


@pytest.mark.parametrize("how", ["exit", "segfault"])
def test_a_crashing_processor_takes_down_only_its_process_and_its_job_fails_after_max_attempts(
    supervised, how
):
    engine = supervised.start(processes=2)
    engine.supervisor.wait_ready(WAIT)
    _wait_durable(engine.path, 2)
    good = engine.enqueue_many("square", [{"x": x} for x in range(50)])
    bad = engine.enqueue("crash", {"how": how})
    more = engine.enqueue_many("square", [{"x": x} for x in range(50, 100)])

    bad = bad.wait(timeout=WAIT)
    assert bad.status == "failed"
    assert bad.attempts == bad.max_attempts == 2
    assert "was lost while running the job" in bad.error
    for job in good + more:
        assert job.wait(timeout=WAIT).status == "completed"

    # Every crash took one process down; the supervisor replaced it.
    expected = -signal.SIGSEGV if how == "segfault" else 1
    crashes = [e for e in engine.supervisor.exits if e.returncode == expected]
    executions = [r for r in _lines(RAN_FILE["path"]) if r[0] == bad.id]
    assert len(crashes) == len(executions) >= 2
    assert all(e.restarted for e in crashes)
    engine.supervisor.wait_ready(WAIT)
    assert len(engine.supervisor.pids) == 2
    assert engine.supervisor.restarts >= len(crashes)
    # The job ran at least max_attempts times (more only when a claim in memory was lost with
    # its process: see test_a_poison_job_alone_on_the_file_runs_at_most_max_attempts_times).
    print(f"\n{how}: {len(executions)} executions of the crashing job (max_attempts 2), "
          f"{engine.supervisor.restarts} restarts, others completed")  # fmt: skip


def test_recovery_time_of_a_job_whose_worker_process_was_killed(supervised):
    engine = supervised.start(processes=2)
    engine.supervisor.wait_ready(WAIT)
    _wait_durable(engine.path, 2)
    job = engine.enqueue("hold", {"seconds": 0.5})
    while not _lines(RAN_FILE["path"]):
        time.sleep(0.005)
    holder = int(_lines(RAN_FILE["path"])[0][1])
    os.kill(holder, signal.SIGKILL)
    killed_at = time.time()
    done = job.wait(timeout=WAIT)
    assert done.status == "completed"
    assert done.attempts == 2
    runs = _lines(RAN_FILE["path"])
    assert [int(r[2]) for r in runs] == [1, 2]
    assert int(runs[1][1]) != holder
    recovered_in = float(runs[1][3]) - killed_at
    engine.supervisor.wait_ready(WAIT)
    replaced = [e for e in engine.supervisor.exits if e.pid == holder]
    assert replaced and replaced[0].returncode == -signal.SIGKILL and replaced[0].restarted
    print(f"\nSIGKILLed worker: its job ran again {recovered_in:.3f} s later "
          f"(heartbeat_interval {FAST['heartbeat_interval']} s, lease {FAST['lease']} s)")  # fmt: skip
    assert recovered_in < WAIT


def test_a_poison_job_alone_on_the_file_runs_at_most_max_attempts_times(supervised):
    # Worker processes claim durably even alone on the file, so a crash always leaves the
    # attempt counted. With 2 worker threads, a job claimed beside a crashing one dies with the
    # process too: its attempt is used up without a recorded run (at most once, never more).
    engine = supervised.start(processes=1)
    jobs = [engine.enqueue("crash", {"how": "segfault"}, max_attempts=1) for _ in range(6)]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not all(j.refresh().is_final for j in jobs):
        time.sleep(0.05)
    engine.stop(wait=False)
    executions = Counter(r[0] for r in _lines(RAN_FILE["path"]))
    assert all(j.refresh().status == "failed" for j in jobs), [j.status for j in jobs]
    assert all(executions[j.id] <= 1 for j in jobs), executions
    assert sum(executions.values()) >= 1


# -- processors defined in __main__ -------------------------------------------------------------

MAIN_SCRIPT = """
import json, os, sys
import jobforge

engine = jobforge.Engine(sys.argv[1], workers=2, heartbeat_interval=0.2, poll_interval=0.05)

@engine.processor("double", max_attempts=5, priority=3)
def double(ctx, payload):
    return {"value": payload * 2, "pid": os.getpid()}

@engine.processor("pipeline")
def pipeline(ctx, payload):
    # The module's engine in a forked child stands in for the child's own engine.
    child = engine.enqueue("double", payload)
    return {"child": child.id, "pid": os.getpid()}

if __name__ == "__main__":
    engine.start(processes=2)
    engine.supervisor.wait_ready(60)
    pids = engine.supervisor.pids
    results = [j.wait(timeout=60).result for j in engine.enqueue_many("double", [1, 2, 3])]
    head = engine.enqueue("pipeline", 21).wait(timeout=60)
    child = engine.wait(head.result["child"], timeout=60)
    engine.stop()
    print("RESULT " + json.dumps({
        "parent": os.getpid(), "children": pids, "results": results,
        "head_pid": head.result["pid"], "child": child.result,
        "child_options": [child.max_attempts, child.priority],
        "exits": [e.returncode for e in engine.supervisor.exits],
    }), flush=True)
"""


def test_processors_defined_in_main_run_in_forked_worker_processes(tmp_path):
    script = tmp_path / "main_script.py"
    script.write_text(MAIN_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "jobs.db")], env=_env(), cwd=str(tmp_path),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = next(li for li in proc.stdout.splitlines() if li.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    assert [r["value"] for r in out["results"]] == [2, 4, 6]
    assert {r["pid"] for r in out["results"]} <= set(out["children"])
    assert out["parent"] not in out["children"]
    assert out["head_pid"] in out["children"]
    assert out["child"]["value"] == 42
    # Enqueued inside a child: the options come from the replayed registration.
    assert out["child_options"] == [5, 3]
    assert out["exits"] == [0, 0]


# -- start(processes=N, app="module:attr") ------------------------------------------------------


def test_start_processes_with_an_app_spawns_jobforge_worker_processes(
    app, make_engine, monkeypatch
):
    cwd, db, ran = app
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("SKBUILD_EDITABLE_VERBOSE", "0")
    engine = make_engine(db, allow_unknown_types=True)
    engine.start(processes=2, app="workerapp:engine", concurrency=1)
    engine.supervisor.wait_ready(120)
    pids = set(engine.supervisor.pids)
    results = [j.wait(timeout=WAIT).result for j in engine.enqueue_many("square", [{"x": 3}] * 20)]
    assert {r["square"] for r in results} == {9}
    assert {r["pid"] for r in results} <= pids
    os.remove(ran)

    # A spawned worker killed while it runs a job: replaced, and the job runs again elsewhere.
    _wait_durable(db, 2)
    job = engine.enqueue("hold", {"seconds": 0.5})
    while not _lines(ran):
        time.sleep(0.01)
    victim = int(_lines(ran)[-1][1])
    os.kill(victim, signal.SIGKILL)
    done = job.wait(timeout=WAIT)
    assert (done.status, done.attempts) == ("completed", 2)
    assert done.result["pid"] != victim
    engine.supervisor.wait_ready(120)
    assert engine.supervisor.restarts == 1
    assert victim not in engine.supervisor.pids
    engine.stop()
    exits = engine.supervisor.exits
    assert [(e.pid, e.returncode) for e in exits if not e.requested] == [(victim, -signal.SIGKILL)]
    assert [e.returncode for e in exits if e.requested] == [0, 0]
