"""Secure defaults (docs/security.md): `exec` is off unless opted in and its command gets a
minimal environment; a PostgreSQL password appears in no output, message or command line; the
SQLite files are created 0600; `db repair` keeps the file's mode and owner and refuses a schema
newer than the code. Real files, a real PostgreSQL server, real processes."""

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import postgres_base_url

import jobforge
from jobforge import db as jobforge_db

WAIT = 60  # guards against hangs only
SECRET = "S3cr3tPassw0rd"
SECRET2 = "0therS3cret"
_SCRIPT = shutil.which("jobforge", path=os.path.dirname(sys.executable))
CLI = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "jobforge"]


def _env(**extra):
    env = dict(os.environ)
    env.pop("JOBFORGE_DB", None)
    env["SKBUILD_EDITABLE_VERBOSE"] = "0"
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update(extra)
    return env


def cli(*args, cwd=None, timeout=WAIT):
    return subprocess.run(
        [*CLI, *map(str, args)], check=False, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, encoding="utf-8", env=_env(), cwd=cwd, timeout=timeout,
    )  # fmt: skip


def _user():
    return subprocess.run(
        ["psql", postgres_base_url(), "-qAtc", "select current_user"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture
def secret_url(pg_url):
    """The test schema's URL with a password in the user info and another in ?password= (the
    local server trusts the connection, so it ignores both: fine for leak tests)."""
    assert pg_url.startswith("postgresql:///")
    return pg_url.replace("postgresql:///", f"postgresql://{_user()}:{SECRET}@/", 1) + (
        f"&password={SECRET2}"
    )


def assert_no_secret(text):
    text = str(text)
    assert SECRET not in text and SECRET2 not in text, text
    # Not percent-decoded or partly shown either.
    assert SECRET[:8] not in text and SECRET2[:8] not in text, text


# -- exec is opt-in ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request, tmp_path):
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return str(tmp_path / "jobs.db")


def test_a_default_engine_has_no_exec_processor(any_db):
    engine = jobforge.Engine(any_db)
    try:
        assert "exec" not in engine.processor_types
        with pytest.raises(jobforge.UnknownJobType) as err:
            engine.enqueue("exec", {"argv": ["true"]})
        assert "allow_exec" in str(err.value)
        assert engine.jobs() == []  # nothing written
        with pytest.raises(jobforge.UnknownJobType, match="allow_exec"):
            engine.run_now("exec", {"argv": ["true"]})
    finally:
        engine.stop()


def test_exec_with_allow_exec_runs_with_a_minimal_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("JOBFORGE_TEST_SECRET", "visible")
    script = 'echo "secret=${JOBFORGE_TEST_SECRET:-none} path=${PATH:+set} mine=${MINE:-none}"'
    engine = jobforge.Engine(str(tmp_path / "jobs.db"), allow_exec=True)
    with engine:
        assert "exec" in engine.processor_types

        def run(**payload):
            job = engine.enqueue("exec", {"argv": ["sh", "-c", script], **payload}).wait(WAIT)
            assert job.status == "completed", job.error
            return job.result["stdout_tail"].strip()

        assert run() == "secret=none path=set mine=none"
        assert run(env={"MINE": "x"}) == "secret=none path=set mine=x"
        assert run(inherit_env=True) == "secret=visible path=set mine=none"
        assert run(inherit_env=False, env={"PATH": "/usr/bin:/bin"}) == (
            "secret=none path=set mine=none"
        )
    # The opt-in can pass the whole environment on by default.
    inherit = jobforge.Engine(str(tmp_path / "jobs.db"), allow_exec=True, exec_inherit_env=True)
    out = inherit.run_now("exec", {"argv": ["sh", "-c", script]})
    assert out["stdout_tail"].strip() == "secret=visible path=set mine=none"
    inherit.stop()


def test_allow_exec_is_validated_and_replayed_to_worker_engines(tmp_path):
    from jobforge.worker import worker_engine

    with pytest.raises(TypeError, match="allow_exec"):
        jobforge.Engine(str(tmp_path / "jobs.db"), allow_exec="yes")
    app = jobforge.Engine(str(tmp_path / "jobs.db"), allow_exec=True)
    child = worker_engine(app)
    assert "exec" in child.processor_types
    plain = worker_engine(jobforge.Engine(str(tmp_path / "jobs.db")))
    assert "exec" not in plain.processor_types
    for engine in (app, child, plain):
        engine.stop()


APP = """
import jobforge
engine = jobforge.Engine({db!r}, workers=1, poll_interval=0.05)
"""


def _start_worker(cwd, *args):
    return subprocess.Popen(
        [*CLI, "worker", "--app", "secapp:engine", *args], cwd=cwd, env=_env(),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _first_line(proc):
    line = proc.stderr.readline()
    assert line, "the worker exited before its start-up line"
    return line


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_cli_worker_runs_exec_only_with_allow_exec(tmp_path):
    db = str(tmp_path / "jobs.db")
    (tmp_path / "secapp.py").write_text(APP.format(db=db))
    plain = _start_worker(str(tmp_path))
    try:
        line = _first_line(plain)
        assert "types " in line and "exec" not in line.split("types ", 1)[1], line
    finally:
        _stop(plain)
    worker = _start_worker(str(tmp_path), "--allow-exec")
    try:
        line = _first_line(worker)
        assert "exec" in line.split("types ", 1)[1], line
        producer = jobforge.Engine(db, allow_unknown_types=True)
        job = producer.enqueue("exec", {"argv": ["sh", "-c", "echo ran"]}).wait(WAIT)
        assert (job.status, job.result["stdout_tail"]) == ("completed", "ran\n")
        producer.stop()
    finally:
        _stop(worker)


# -- no password anywhere ------------------------------------------------------------------------


def test_redacted_urls():
    from jobforge.engine import _redacted

    cases = {
        "postgresql://u:pw@host/db": "postgresql://u:***@host/db",
        "postgres://u:p%40w@host:5432/db?sslmode=require": "postgres://u:***@host:5432/db?sslmode=require",
        "postgresql://u@host/db?password=pw&sslmode=require": "postgresql://u@host/db?password=***&sslmode=require",
        "postgresql://host/db?sslmode=require&sslpassword=pw": "postgresql://host/db?sslmode=require&sslpassword=***",
        "postgresql://u:a@b/c@host/db": "postgresql://u:***@host/db",
        "postgresql:///test": "postgresql:///test",
        "postgresql://host:5432/db": "postgresql://host:5432/db",
        "jobs.db": "jobs.db",
        "dir/with:colon@at.db": "dir/with:colon@at.db",
    }  # fmt: skip
    for url, shown in cases.items():
        assert _redacted(url) == shown, url


def test_percent_encoded_password_parameter_names_are_redacted(pg_url):
    """libpq percent-decodes query parameter names too: ?%70assword= is a password."""
    from jobforge.engine import _redacted

    for name in ("%70assword", "p%61ssword", "%73slpassword", "PASS%57ORD"):
        assert _redacted(f"postgresql://h/db?{name}={SECRET}&x=1") == (
            f"postgresql://h/db?{name}=***&x=1"
        ), name
    engine = jobforge.Engine(pg_url + f"&%70assword={SECRET}")  # libpq takes it: it connects
    try:
        for text in (repr(engine), engine.path, json.dumps(engine.health()), engine.metrics_text()):
            assert_no_secret(text)
    finally:
        engine.close()


def test_no_password_in_repr_path_health_metrics(secret_url):
    engine = jobforge.Engine(secret_url, workers=1)
    try:
        engine.start()
        engine.enqueue("noop", {}).wait(WAIT)
        assert engine.path.startswith("postgresql://") and "***" in engine.path
        for text in (repr(engine), engine.path, json.dumps(engine.health()),
                     engine.metrics_text(), repr(engine.workers())):  # fmt: skip
            assert_no_secret(text)
    finally:
        engine.stop()


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{SECRET}@127.0.0.1:1/test",  # refused
        f"postgresql://u:{SECRET}@no-such-host.invalid/test",  # unknown host
        f"postgresql://u@127.0.0.1:1/test?password={SECRET}",
        f"postgresql://u:{SECRET}%zz@localhost/test",  # libpq quotes the bad token
        f"postgresql://u:{SECRET}@[::1/test",  # libpq quotes the whole URL
        f"postgresql://u:{SECRET}@localhost/test?password={SECRET2}&bogus=1",
    ],
)
def test_no_password_in_connect_errors(url):
    with pytest.raises(jobforge.StoreError) as err:
        jobforge.Engine(url + ("&" if "?" in url else "?") + "connect_timeout=2")
    assert "cannot connect to PostgreSQL" in str(err.value)
    assert_no_secret(str(err.value))
    proc = cli("stats", "--db", url)
    assert proc.returncode == 1, proc
    assert "cannot connect to PostgreSQL" in proc.stderr
    assert_no_secret(proc.stdout + proc.stderr)


def test_no_password_in_cli_output(secret_url):
    job_id = cli("enqueue", "noop", "--db", secret_url).stdout.strip()
    assert job_id
    outputs = [
        cli("stats", "--db", secret_url),
        cli("stats", "--json", "--db", secret_url),
        cli("list", "--db", secret_url),
        cli("show", job_id, "--db", secret_url),
        cli("show", "no-such-id", "--db", secret_url),
        cli("health", "--db", secret_url),
        cli("health", "--json", "--db", secret_url),
        cli("db", "check", "--db", secret_url),
        cli("db", "repair", "--db", secret_url),
        cli("db", "cleanup", "--older-than", "1d", "--db", secret_url),
        cli("schedule", "remove", "nope", "--db", secret_url),
    ]
    for proc in outputs:
        assert proc.stdout or proc.stderr, proc
        assert_no_secret(proc.stdout + proc.stderr)
    for action in (jobforge_db.check, jobforge_db.recount, jobforge_db.repair):
        with pytest.raises(jobforge_db.RepairError) as err:
            action(secret_url)
        assert "PostgreSQL" in str(err.value)
        assert_no_secret(str(err.value))
    assert "***" in outputs[5].stdout  # health names the store, redacted


def _cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().replace(b"\0", b" ").decode()


SUPERVISED_APP = """
import jobforge
engine = jobforge.Engine({url!r}, workers=1, poll_interval=0.05)

@engine.processor("square")
def square(ctx, payload):
    return payload["x"] ** 2
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/cmdline"), reason="needs /proc")
def test_no_password_in_worker_command_lines_or_start_up_lines(
    secret_url, tmp_path, monkeypatch, capfd
):
    (tmp_path / "secapp.py").write_text(SUPERVISED_APP.format(url=secret_url))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKBUILD_EDITABLE_VERBOSE", "0")
    monkeypatch.syspath_prepend(str(tmp_path))
    import secapp

    # Spawned `jobforge worker` processes (start(processes=N, app=...)).
    engine = jobforge.Engine(secret_url, allow_unknown_types=True)
    try:
        engine.start(processes=2, app="secapp:engine", concurrency=1)
        engine.supervisor.wait_ready(120)
        assert engine.enqueue("square", {"x": 3}).wait(WAIT).result == 9
        pids = engine.supervisor.pids
        assert len(pids) == 2
        for pid in pids:
            line = _cmdline(pid)
            assert "worker" in line
            assert_no_secret(line)
    finally:
        engine.stop()
    # Forked workers (start(processes=N) of the app's own engine).
    try:
        secapp.engine.start(processes=2)
        secapp.engine.supervisor.wait_ready(120)
        assert secapp.engine.enqueue("square", {"x": 4}).wait(WAIT).result == 16
        for pid in secapp.engine.supervisor.pids:
            assert_no_secret(_cmdline(pid))
    finally:
        secapp.engine.stop()
        sys.modules.pop("secapp", None)
    out, err = capfd.readouterr()
    assert err.count("jobforge: worker ") >= 4, err  # every start-up line, redacted
    assert "***@" in err
    assert_no_secret(out + err)

    # `jobforge worker` run by hand, with the URL on its command line: its own line is redacted.
    proc = subprocess.Popen(
        [*CLI, "worker", "--app", "secapp:engine", "--db", secret_url], cwd=tmp_path,
        env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        line = _first_line(proc)
        assert "jobforge: worker " in line and "***@" in line, line
        assert_no_secret(line)
    finally:
        _stop(proc)
    assert_no_secret(proc.stderr.read())


# A server that checks passwords for real: a private one (scram-sha-256), on a free port.
PG_BIN = "/usr/lib/postgresql/15/bin"


@pytest.fixture(scope="module")
def password_server():
    if os.geteuid() != 0 or not os.path.exists(f"{PG_BIN}/initdb"):
        pytest.skip("needs root and the PostgreSQL 15 server binaries")
    base = tempfile.mkdtemp(prefix="jobforge-pgpw-")
    shutil.chown(base, "postgres")
    data = os.path.join(base, "data")
    pwfile = os.path.join(base, "pw")
    with open(pwfile, "w") as fh:
        fh.write(SECRET + "\n")
    shutil.chown(pwfile, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd):
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True,
                       capture_output=True, timeout=120)  # fmt: skip

    run(f"{PG_BIN}/initdb", "-D", data, "-U", "postgres", "--auth=scram-sha-256",
        f"--pwfile={pwfile}")  # fmt: skip
    run(f"{PG_BIN}/pg_ctl", "-D", data, "-w", "-l", os.path.join(base, "log"), "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start")  # fmt: skip
    try:
        yield port
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", data,
                        "-m", "immediate", "stop"], capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def test_no_password_when_the_server_refuses_it(password_server):
    wrong = f"postgresql://postgres:{SECRET2}@127.0.0.1:{password_server}/postgres"
    with pytest.raises(jobforge.StoreError) as err:
        jobforge.Engine(wrong)
    assert "password authentication failed" in str(err.value)
    assert_no_secret(str(err.value))
    proc = cli("health", "--db", wrong)
    assert proc.returncode == 1 and "password authentication failed" in proc.stderr, proc
    assert_no_secret(proc.stdout + proc.stderr)
    right = f"postgresql://postgres:{SECRET}@127.0.0.1:{password_server}/postgres"
    engine = jobforge.Engine(right)
    try:
        assert engine.path == f"postgresql://postgres:***@127.0.0.1:{password_server}/postgres"
        assert_no_secret(repr(engine) + json.dumps(engine.health()) + engine.metrics_text())
    finally:
        engine.stop()


# -- file modes ----------------------------------------------------------------------------------


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_database_files_are_created_owner_only(tmp_path, umask_022):
    db = str(tmp_path / "jobs.db")
    engine = jobforge.Engine(db, workers=1)
    with engine:
        engine.enqueue("noop", {}).wait(WAIT)
        for suffix in ("", "-wal", "-shm"):
            assert os.path.exists(db + suffix), suffix
            assert _mode(db + suffix) == 0o600, (suffix, oct(_mode(db + suffix)))
    # Created by the command line too.
    other = str(tmp_path / "other.db")
    assert cli("enqueue", "noop", "--db", other).returncode == 0
    assert _mode(other) == 0o600


def test_an_existing_files_mode_is_left_as_it_is(tmp_path, umask_022):
    db = str(tmp_path / "jobs.db")
    jobforge.Engine(db).stop()
    os.chmod(db, 0o640)
    engine = jobforge.Engine(db, workers=1)
    with engine:
        engine.enqueue("noop", {}).wait(WAIT)
        assert [_mode(db + s) for s in ("", "-wal", "-shm")] == [0o640] * 3


# -- db repair -----------------------------------------------------------------------------------


def _make_db(path, jobs=3):
    engine = jobforge.Engine(path, allow_unknown_types=True)
    engine.enqueue_many("noop", [{}] * jobs)
    engine.stop()


def test_repair_keeps_the_mode_and_owner(tmp_path, umask_022):
    db = str(tmp_path / "jobs.db")
    _make_db(db)
    os.chmod(db, 0o640)
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        owner = (65534, 65534)  # nobody: the repair runs as root and must not take the file
        os.chown(db, *owner)
    report = jobforge_db.repair(db)
    assert report["copied"] == 3 and report["check"]["ok"]
    st = os.stat(db)
    assert (oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid) == (oct(0o640), *owner)
    proc = cli("db", "repair", "--db", db)
    assert proc.returncode == 0, proc.stderr
    st = os.stat(db)
    assert (oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid) == (oct(0o640), *owner)
    engine = jobforge.Engine(db, allow_unknown_types=True)  # still a working queue
    assert len(engine.jobs()) == 3
    engine.stop()


def _snapshot(folder):
    """Every file's bytes and mtime, but for an empty -wal and the -shm index a read-only
    SQLite connection makes (as `db check` does)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith("-shm") or (name.endswith("-wal") and os.path.getsize(path) == 0):
            continue
        with open(path, "rb") as fh:
            out[name] = (hashlib.sha256(fh.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return out


def test_repair_refuses_a_schema_newer_than_the_code(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    db = str(folder / "jobs.db")
    _make_db(db)
    connection = sqlite3.connect(db)
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    connection.execute(f"PRAGMA user_version = {version + 1}")
    connection.execute("ALTER TABLE jobs ADD COLUMN from_the_future TEXT")
    connection.close()
    before = _snapshot(folder)
    time.sleep(0.01)
    with pytest.raises(jobforge_db.RepairError) as err:
        jobforge_db.repair(db)
    message = str(err.value)
    assert f"schema version {version + 1}" in message and str(version) in message, message
    assert _snapshot(folder) == before
    proc = cli("db", "repair", "--db", db, "--force")
    assert proc.returncode == 1 and f"schema version {version + 1}" in proc.stderr, proc
    assert _snapshot(folder) == before


def test_no_password_in_the_dashboard(secret_url):
    import urllib.request

    pytest.importorskip("starlette")
    from jobforge.dashboard import make_server

    engine = jobforge.Engine(secret_url, workers=1)
    engine.start()
    server = make_server(engine, port=0, token="token-0123456789", poll_interval=0.2)
    server.start()
    try:
        engine.enqueue("noop", {}).wait(WAIT)
        seen = []
        for path in ("/", "/api/overview", "/api/health", "/api/workers", "/api/types"):
            with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=WAIT) as response:
                seen.append(response.read().decode())
        assert "***@" in seen[1]  # the overview names the store, redacted
        with urllib.request.urlopen(server.url.rstrip("/") + "/api/events", timeout=WAIT) as sse:
            data = b""
            while data.count(b"\n\n") < 2:  # the first snapshots
                data += sse.read1(65536)
            seen.append(data.decode())
        for text in seen:
            assert_no_secret(text)
    finally:
        server.stop()
        engine.stop()
