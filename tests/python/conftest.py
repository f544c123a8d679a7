"""Shared fixtures for the jobforge Python suite.

Every test runs against a real SQLite file in its own tmp_path, real worker threads and, where it
matters, real child processes. Time limits in waits only guard against hangs; no test asserts
that something is fast.
"""

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest

import jobforge

# One behaviour suite, two stores: the tests of these modules run on a SQLite file and on a fresh
# PostgreSQL schema (their `db_path` is then a postgresql:// URL).
BOTH_STORES = {
    "test_cancel",
    "test_enqueue",
    "test_fork",
    "test_events",
    "test_lifecycle",
    "test_priority",
    "test_published_types",
    "test_queries",
    "test_recovery",
    "test_retry",
    "test_timeout",
    "test_postgres",
    "test_workflows",
}


def postgres_base_url():
    """The server of the PostgreSQL half: $JOBFORGE_TEST_POSTGRES_URL, else the local `test` db."""
    return os.environ.get("JOBFORGE_TEST_POSTGRES_URL", "postgresql:///test")


def psql(sql):
    """Runs SQL on the test server with psql (no Python driver needed); returns its output."""
    out = subprocess.run(
        ["psql", postgres_base_url(), "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr.strip()}")
    return out.stdout.strip()


def read_row(db_path, sql, params=()):
    """The first row of a query, read behind the engine's back from its SQLite file or its
    PostgreSQL schema (parameters as ? placeholders; PostgreSQL gets them inlined as literals)."""
    if db_path.startswith(("postgresql://", "postgres://")):
        for value in params:
            sql = sql.replace("?", "'" + str(value).replace("'", "''") + "'", 1)
        out = subprocess.run(
            ["psql", db_path, "-v", "ON_ERROR_STOP=1", "-qAt", "-F", "\t", "-c", sql],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        line = out.stdout.strip()
        return tuple(line.split("\t")) if line else None
    connection = sqlite3.connect(db_path, timeout=5)
    try:
        return connection.execute(sql, params).fetchone()
    finally:
        connection.close()


@pytest.fixture
def pg_url():
    """URL of a fresh PostgreSQL schema (random name), dropped with everything in it afterwards."""
    schema = f"jobforge_pytest_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    psql(f"CREATE SCHEMA {schema}")
    base = postgres_base_url()
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}&application_name={schema}"
    psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def pytest_generate_tests(metafunc):
    if "db_path" in metafunc.fixturenames and metafunc.module.__name__ in BOTH_STORES:
        metafunc.parametrize("store", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def store(request):
    """Which store `db_path` names: "sqlite" unless the module runs on both."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def db_path(tmp_path, store, request):
    """Path of a fresh (not yet existing) SQLite file, or URL of a fresh PostgreSQL schema."""
    if store == "postgres":
        return request.getfixturevalue("pg_url")
    return str(tmp_path / "jobs.db")


@pytest.fixture
def make_engine(db_path):
    """Factory for engines on `db_path` (or another path); every engine is stopped at teardown.

    Engines are created but not started, so tests can enqueue before workers run.
    retry_delay defaults to 0.05 s to keep retry tests short.
    """
    engines = []

    def make(path=None, **options):
        options.setdefault("retry_delay", 0.05)
        engine = jobforge.Engine(path or db_path, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in reversed(engines):
        engine.stop(wait=False)


@pytest.fixture
def engine(make_engine):
    """An engine with two workers on a fresh file, not started."""
    return make_engine(workers=2)


def _wait_until(predicate, timeout=5.0, interval=0.01, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def wait_until():
    """wait_until(predicate, timeout=5.0, what=...) polls until predicate() is truthy."""
    return _wait_until


class Recorder:
    """Thread-safe list of events (or anything) appended from callbacks."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items = []

    def __call__(self, item):
        with self._lock:
            self._items.append(item)

    @property
    def items(self):
        with self._lock:
            return list(self._items)

    def __len__(self):
        with self._lock:
            return len(self._items)


@pytest.fixture
def recorder():
    """A fresh Recorder factory: `rec = recorder()`."""
    return Recorder


class ChildProcess:
    """A real Python child process running `script`; its stdout is read line by line."""

    def __init__(self, script, *args):
        env = dict(os.environ)
        # The child imports jobforge exactly as this process does.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def read_until(self, prefix, timeout=60):
        """The first line starting with `prefix`; other output (e.g. build logs) is skipped.

        The timeout is generous because the child's `import jobforge` may rebuild an editable
        install first; it only guards against a hang."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"child printed no {prefix!r} line in time") from None
            if line is None:
                raise AssertionError(f"child exited before printing {prefix!r}")
            if line.startswith(prefix):
                return line

    def kill(self):
        """SIGKILL: the child dies without any chance to clean up."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        return self.process.returncode


@pytest.fixture
def spawn_child():
    """spawn_child(script, *args) starts a ChildProcess; every child is killed at teardown."""
    children = []

    def spawn(script, *args):
        child = ChildProcess(script, *args)
        children.append(child)
        return child

    yield spawn
    for child in children:
        child.kill()
        child.process.stdout.close()


@pytest.fixture(scope="session")
def private_pg():
    """A PostgreSQL server of this test run (benchmarks/pg_private.py: initdb and pg_ctl in a temp
    folder, a free port), for tests that stop or restart the server: the machine's main server is
    shared and never stopped. Skipped when the server binaries are missing."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
    import pg_private

    reason = pg_private.unavailable_reason()
    if reason:
        pytest.skip(f"needs a private PostgreSQL server: {reason}")
    server = pg_private.PrivatePostgres()
    yield server
    server.close()
