"""The `jobforge` command line, run for real: the installed `jobforge` console script (or
`python -m jobforge` where it is not installed) in a subprocess (no TTY, stdin closed) against a
SQLite file in tmp_path. Exit codes: 0 ok, 1 operational failure, 2 usage or
bad input, 3 not found."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

COMMANDS = [
    "demo",
    "stats",
    "list",
    "show",
    "logs",
    "health",
    "enqueue",
    "cancel",
    "retry",
    "worker",
    "dashboard",
    "db",
    "schedule",
    "run",
    "schedule list",
    "schedule add",
    "schedule remove",
    "db cleanup",
]
TIMEOUT = 120  # guards against hangs only
_SCRIPT = shutil.which("jobforge", path=os.path.dirname(sys.executable))
CLI = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "jobforge"]


def _env(**extra):
    env = dict(os.environ)
    env.pop("JOBFORGE_DB", None)
    # The editable install may print "Running cmake --build ..." on stdout at import; keep
    # stdout the command's own so JSON output can be parsed.
    env["SKBUILD_EDITABLE_VERBOSE"] = "0"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


def jobforge(*args, env=None, timeout=TIMEOUT):
    return subprocess.run(
        [*CLI, *map(str, args)],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env or _env(),
        timeout=timeout,
    )


def ok(*args, **kwargs):
    proc = jobforge(*args, **kwargs)
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


def as_json(*args, **kwargs):
    return json.loads(ok(*args, "--json", **kwargs).stdout)


def assert_one_line_error(proc, code, *fragments):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("jobforge: error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "jobs.db")


# -- help and usage -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_of_every_command(command):
    args = ["--help"] if command is None else [*command.split(), "--help"]
    proc = ok(*args)
    expected = "usage: jobforge" if command is None else f"usage: jobforge {command}"
    assert proc.stdout.startswith(expected)
    if command is None:
        for name in COMMANDS:
            assert name.split()[0] in proc.stdout
        assert "Exit codes" in proc.stdout


def test_no_command_prints_help_and_exits_2():
    proc = jobforge()
    assert proc.returncode == 2
    assert "usage: jobforge" in proc.stderr


def test_unknown_option_is_a_usage_error(db):
    proc = jobforge("list", "--db", db, "--colour")
    assert proc.returncode == 2
    assert "unrecognized arguments: --colour" in proc.stderr


def test_no_database_given_is_a_usage_error():
    assert_one_line_error(jobforge("stats"), 2, "--db", "JOBFORGE_DB")


# -- demo -------------------------------------------------------------------------------------------


def test_demo_runs_without_tty_and_prints_a_summary():
    proc = ok("demo", "--fast")
    out = proc.stdout
    assert "Summary" in out
    for status in ("completed", "failed", "cancelled"):
        assert status in out
    assert "engine.stats()" in out
    assert "✗" not in out  # every expectation of the scenario held
    assert "retry: 'Four Tet - Baby.aiff'" in out
    assert "Traceback" not in proc.stderr


def test_demo_keeps_its_jobs_with_db(db):
    proc = ok("demo", "--fast", "--quiet", "--db", db)
    assert "completed" in proc.stdout
    assert "(attempt 1)" not in proc.stdout  # --quiet: no event log
    jobs = as_json("list", "--db", db, "--limit", 100)
    by_status = {}
    for job in jobs:
        by_status.setdefault(job["status"], []).append(job)
    assert {j["type"] for j in jobs} == {"scan", "analyze", "export", "cleanup", "sleep"}
    assert len(by_status["failed"]) == 1 and by_status["failed"][0]["attempts"] == 2
    assert len(by_status["cancelled"]) == 1 and by_status["cancelled"][0]["type"] == "scan"
    retried = [j for j in jobs if j["type"] == "analyze" and j["attempts"] == 2]
    assert len(retried) == 1 and retried[0]["status"] == "completed"
    stats = as_json("stats", "--db", db)
    assert stats["total"] == len(jobs)
    assert stats["queued"] == stats["running"] == 0
    # The analyses are children of the scan that found them.
    scan = next(j for j in by_status["completed"] if j["type"] == "scan")
    children = as_json("list", "--db", db, "--parent", scan["id"])
    assert len(children) == scan["result"]["analyze_jobs"] == 8


def test_demo_ignores_jobforge_db_from_the_environment(tmp_path):
    db = tmp_path / "real-queue.db"
    ok("demo", "--fast", "--quiet", env=_env(JOBFORGE_DB=str(db)))
    assert not db.exists()


# -- enqueue, list, show, cancel, retry ------------------------------------------------------------


def test_enqueue_list_show_cancel_retry(db):
    payload = {"path": "/music/a.flac", "tags": ["bpm", "key"]}
    proc = ok(
        "enqueue", "analyze", "--db", db, "--payload", json.dumps(payload), "--priority", 3,
        "--max-attempts", 2, "--timeout", 30,
    )  # fmt: skip
    job_id = proc.stdout.strip()
    assert len(job_id) == 36 and proc.stderr == ""

    listed = as_json("list", "--db", db)
    assert [j["id"] for j in listed] == [job_id]
    assert listed[0]["status"] == "queued"
    assert as_json("list", "--db", db, "--status", "completed") == []
    assert [j["id"] for j in as_json("list", "--db", db, "--type", "analyze")] == [job_id]

    shown = as_json("show", job_id, "--db", db)
    assert shown["id"] == job_id
    assert shown["type"] == "analyze"
    assert shown["payload"] == payload
    assert (shown["priority"], shown["max_attempts"], shown["timeout"]) == (3, 2, 30.0)
    assert shown["status"] == "queued" and shown["is_final"] is False

    human = ok("show", job_id, "--db", db).stdout
    assert job_id in human and "/music/a.flac" in human
    assert job_id in ok("list", "--db", db).stdout

    proc = ok("cancel", job_id, "--db", db)
    assert f"cancelled {job_id}" in proc.stdout
    assert as_json("show", job_id, "--db", db)["status"] == "cancelled"

    # A finished job cannot be cancelled again: an operational failure, not a usage error.
    assert_one_line_error(jobforge("cancel", job_id, "--db", db), 1, job_id, "cancelled")

    assert as_json("retry", job_id, "--db", db)["status"] == "queued"
    assert_one_line_error(jobforge("retry", job_id, "--db", db), 1, "queued")

    stats = as_json("stats", "--db", db)
    assert stats["total"] == 1 and stats["queued"] == 1
    assert "queued" in ok("stats", "--db", db).stdout


def test_database_from_environment_and_global_db_option(db):
    job_id = ok("enqueue", "noop", env=_env(JOBFORGE_DB=db)).stdout.strip()
    assert as_json("show", job_id, env=_env(JOBFORGE_DB=db))["type"] == "noop"
    # --db before the command works too and wins over the environment.
    assert json.loads(ok("--db", db, "stats", "--json").stdout)["total"] == 1
    other = os.path.join(os.path.dirname(db), "other.db")
    proc = jobforge("--db", other, "stats", env=_env(JOBFORGE_DB=db))
    assert proc.returncode == 3


def test_enqueue_options_reach_the_job(db, tmp_path):
    parent = ok("enqueue", "batch", "--db", db).stdout.strip()
    payload_file = tmp_path / "payload.json"
    payload_file.write_text('{"seconds": 0.5}', encoding="utf-8")
    job = as_json(
        "enqueue", "sleep", "--db", db, "--payload", f"@{payload_file}", "--priority", "urgent",
        "--delay", 60, "--retry-delay", 2.5, "--parent", parent,
    )  # fmt: skip
    assert job["payload"] == {"seconds": 0.5}
    assert job["priority"] == 1
    assert job["parent_id"] == parent
    assert job["retry_delay"] == 2.5
    assert job["run_at"] - job["created_at"] >= 59_000
    assert as_json("show", parent, "--db", db)["payload"] is None  # default payload is null


# -- errors and exit codes --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "cancel", "retry"])
def test_unknown_id_exits_3(db, command):
    ok("enqueue", "noop", "--db", db)
    missing = "01a20000-0000-7000-8000-000000000000"
    assert_one_line_error(jobforge(command, missing, "--db", db), 3, missing)


@pytest.mark.parametrize("command", ["stats", "list", "show", "cancel", "retry"])
def test_missing_database_exits_3_and_is_not_created(tmp_path, command):
    db = tmp_path / "absent.db"
    args = (
        [command, "01a20000-0000-7000-8000-000000000000"]
        if command in ("show", "cancel", "retry")
        else [command]
    )
    assert_one_line_error(jobforge(*args, "--db", db), 3, str(db), "does not exist")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("payload", ['{"path": "a.jpg",}', "{path: 1}", "not json", ""])
def test_malformed_payload_exits_2_and_writes_nothing(tmp_path, payload):
    db = tmp_path / "jobs.db"
    proc = jobforge("enqueue", "resize", "--db", db, "--payload", payload)
    assert_one_line_error(proc, 2, "--payload", "not valid JSON")
    assert proc.stdout == ""
    assert not db.exists()


def test_unreadable_payload_file_exits_2(db, tmp_path):
    missing = tmp_path / "nope.json"
    assert_one_line_error(
        jobforge("enqueue", "x", "--db", db, "--payload", f"@{missing}"), 2, "nope.json"
    )


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--priority", "0", "priority must be between 1 and 10"),
        ("--priority", "11", "priority must be between 1 and 10"),
        ("--max-attempts", "0", "max_attempts"),
        ("--timeout", "-1", "timeout"),
        ("--delay", "-5", "delay"),
    ],
)
def test_bad_option_values_exit_2_and_write_nothing(db, option, value, fragment):
    ok("enqueue", "x", "--db", db)
    proc = jobforge("enqueue", "x", "--db", db, option, value)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert as_json("stats", "--db", db)["total"] == 1


@pytest.mark.parametrize("args", [["--priority", "soon"], ["--delay", "later"], ["--limit", "-1"]])
def test_unparsable_option_values_are_argparse_errors(db, args):
    command = "list" if args[0] == "--limit" else "enqueue"
    extra = [] if command == "list" else ["x"]
    proc = jobforge(command, *extra, "--db", db, *args)
    assert proc.returncode == 2
    assert f"argument {args[0]}" in proc.stderr


def test_not_a_database_is_an_operational_failure(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not SQLite\n" * 100)
    proc = jobforge("stats", "--db", bogus)
    assert_one_line_error(proc, 1, "not a database")
    debug = jobforge("stats", "--db", bogus, "--debug")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "StoreError" in debug.stderr


def test_missing_folder_for_enqueue_is_an_operational_failure(tmp_path):
    proc = jobforge("enqueue", "x", "--db", tmp_path / "no" / "such" / "jobs.db")
    assert_one_line_error(proc, 1, "does not exist")


# -- across processes -------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys, time, jobforge
    engine = jobforge.Engine(sys.argv[1], workers=1)

    @engine.processor("loop")
    def loop(ctx, payload):
        while True:
            ctx.progress(50, message="looping")
            ctx.check_cancelled()
            time.sleep(0.01)

    engine.start()
    job = engine.wait(sys.argv[2], timeout=60)
    engine.stop()
    print(job.status, flush=True)
    """
)


def test_enqueued_job_runs_in_a_worker_process_and_is_cancelled_while_running(db):
    job_id = ok("enqueue", "loop", "--db", db).stdout.strip()
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, db, job_id],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_env(),
    )  # fmt: skip
    try:
        import time

        deadline = time.monotonic() + 60
        while as_json("show", job_id, "--db", db)["message"] != "looping":
            assert time.monotonic() < deadline, "the worker never started the job"
            assert worker.poll() is None, worker.communicate()
            time.sleep(0.05)
        assert as_json("stats", "--db", db)["running"] == 1
        running = [j["id"] for j in as_json("list", "--db", db, "--status", "running")]
        assert running == [job_id]

        proc = ok("cancel", job_id, "--db", db)
        assert "cancel" in proc.stdout
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert out.strip() == "cancelled"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    job = as_json("show", job_id, "--db", db)
    assert job["status"] == "cancelled" and job["is_final"]


def test_console_script_is_installed():
    script = shutil.which("jobforge", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the jobforge console script is not installed next to this interpreter")
    proc = subprocess.run(
        [script, "--help"], check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        env=_env(), timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: jobforge")


def test_python_dash_m_is_the_same_command_line():
    proc = subprocess.run(
        [sys.executable, "-m", "jobforge", "--help"], check=False, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, env=_env(), timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.startswith("usage: jobforge")


# -- dashboard ------------------------------------------------------------------------------------


def test_dashboard_on_a_missing_database_exits_3(tmp_path):
    missing = tmp_path / "nope.db"
    assert_one_line_error(jobforge("dashboard", "--db", missing), 3, "does not exist")
    assert not missing.exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--token", "fifteen-chars!!"], "must be at least 16 characters, got 15"),
        (["--poll", "0"], "--poll must be more than 0"),
        (["--port", "70000"], "--port must be 0..65535"),
        (["--concurrency", "2"], "--concurrency needs --app"),
    ],
)
def test_dashboard_bad_options_exit_2(db, args, fragment):
    ok("enqueue", "noop", "--db", db)
    assert_one_line_error(jobforge("dashboard", "--db", db, *args), 2, fragment)


def test_dashboard_token_from_the_environment_must_be_16_characters_too(db):
    ok("enqueue", "noop", "--db", db)
    proc = jobforge("dashboard", "--db", db, env=_env(JOBFORGE_DASHBOARD_TOKEN="x" * 15))
    assert_one_line_error(proc, 2, "JOBFORGE_DASHBOARD_TOKEN", "at least 16 characters, got 15")


def test_dashboard_on_every_address_needs_allowed_hosts(db):
    ok("enqueue", "noop", "--db", db)
    proc = jobforge("dashboard", "--db", db, "--host", "0.0.0.0", "--port", "0")
    assert_one_line_error(proc, 2, "--allowed-host")
    proc = jobforge("dashboard", "--db", db, "--max-sse-clients", "0")
    assert_one_line_error(proc, 2, "--max-sse-clients must be 1..100000, got 0")


# -- safe at its edges ----------------------------------------------------------------------------


def test_payload_from_a_device_or_fifo_is_refused_at_once(db, tmp_path):
    fifo = tmp_path / "payload.fifo"
    os.mkfifo(fifo)
    for source in ("/dev/zero", str(fifo), str(tmp_path)):
        started = time.monotonic()
        proc = jobforge("enqueue", "noop", "--db", db, "--payload", f"@{source}", timeout=60)
        assert_one_line_error(proc, 2, f"'{source}'", "not a regular file")
        assert time.monotonic() - started < 30  # no read of an endless device, no wait
    assert not os.path.exists(db)


def test_payload_file_over_the_payload_limit_is_refused_unread(db, tmp_path):
    from jobforge import _core

    big = tmp_path / "big.json"
    with open(big, "wb") as fh:  # sparse: no disk used
        fh.truncate(_core.MAX_PAYLOAD_BYTES + 1)
    proc = jobforge("enqueue", "noop", "--db", db, "--payload", f"@{big}")
    assert_one_line_error(
        proc, 2, "big.json", f"{_core.MAX_PAYLOAD_BYTES + 1} bytes",
        f"payload limit of {_core.MAX_PAYLOAD_BYTES} bytes",
    )  # fmt: skip
    assert not os.path.exists(db)
    fits = tmp_path / "fits.json"
    fits.write_text('{"ok": true}')
    job = as_json("enqueue", "noop", "--db", db, "--payload", f"@{fits}")
    assert job["payload"] == {"ok": True}


def test_terminal_escape_sequences_in_job_text_are_shown_escaped(db):
    import jobforge as jf

    nasty = "A\x1b[2JB\x1b]0;owned\x07C\rD\x9b31mE\u202eF"
    engine = jf.Engine(db, workers=1)

    @engine.processor("evil", max_attempts=1)
    def evil(ctx, payload):
        ctx.stage("st\x1b[1m")
        ctx.progress(1, total=2, message=nasty)
        ctx.log("info", nasty, **{"k\x1b[0m": nasty})
        raise ValueError(nasty)

    with engine:
        job = engine.enqueue("evil", {"text": nasty}).wait(10)
    assert job.status == "failed"
    outputs = {
        "show": ok("show", job.id, "--db", db).stdout,
        "logs": ok("logs", job.id, "--db", db).stdout,
        "list": ok("list", "--db", db).stdout,
        "show --json": ok("show", job.id, "--db", db, "--json").stdout,
        "logs --json": ok("logs", job.id, "--db", db, "--json").stdout,
    }
    for name, out in outputs.items():
        for raw in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
            assert raw not in out, (name, raw, out)
    for name in ("show", "logs", "list"):
        assert "A\\x1b[2JB" in outputs[name], (name, outputs[name])
    assert "\\x1b]0;owned\\x07C\\x0dD\\x9b31mE\\u202eF" in outputs["show"]
    assert json.loads(outputs["show --json"])["payload"] == {"text": nasty}  # same value
    assert json.loads(outputs["logs --json"])[0]["message"] == nasty
    # Types and schedule names are job text too (stats, schedule list).
    other = jf.Engine(db, allow_unknown_types=True)
    other.enqueue("t\x1b[2J", None, delay=3600)
    other.schedule("s\x1b]0;x\x07", "@daily", "t\x1b[2J", None)
    other.close()
    for args in (["stats"], ["schedule", "list"], ["list"]):
        out = ok(*args, "--db", db).stdout
        assert "\x1b" not in out and "\x07" not in out, (args, out)
        assert "t\\x1b[2J" in out, (args, out)


@pytest.mark.parametrize(
    "args, option",
    [
        (["list", "--limit", "99999999999999999999"], "--limit"),
        (["list", "--offset", "99999999999999999999"], "--offset"),
        (["logs", "some-id", "--limit", "99999999999999999999"], "--limit"),
        (["enqueue", "noop", "--priority", "99999999999999999999"], "--priority"),
        (["enqueue", "noop", "--max-attempts", "99999999999999999999"], "--max-attempts"),
        (["enqueue", "noop", "--delay", "1e300"], "--delay"),
        (["enqueue", "noop", "--timeout", "inf"], "--timeout"),
        (["enqueue", "noop", "--retry-delay", "nan"], "--retry-delay"),
        (
            ["schedule", "add", "s", "@daily", "noop", "--priority", "-99999999999999999999"],
            "--priority",
        ),
        (["db", "cleanup", "--older-than", "1e300"], "--older-than"),
        (["health", "--max-wait", "1e300"], "--max-wait"),
        (["worker", "--app", "x:y", "--concurrency", "99999999999999999999"], "--concurrency"),
        (["dashboard", "--port", "99999999999999999999"], "--port"),
        (["demo", "--workers", "99999999999999999999"], "--workers"),
    ],
)
def test_out_of_range_numbers_exit_2_naming_the_option(db, args, option):
    ok("enqueue", "noop", "--db", db)
    proc = jobforge(*args, "--db", db)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert f"argument {option}" in proc.stderr, proc.stderr
    assert "incompatible function arguments" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert as_json("stats", "--db", db)["total"] == 1


def test_dashboard_port_in_use_is_a_one_line_failure(db):
    import socket

    ok("enqueue", "noop", "--db", db)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = jobforge("dashboard", "--db", db, "--port", port)
    assert_one_line_error(proc, 1, f"cannot listen on 127.0.0.1:{port}")


def test_dashboard_with_app_runs_the_jobs_it_enqueues_and_stops_on_ctrl_c(db, tmp_path):
    import signal

    pytest.importorskip("starlette")
    from dashboard_helpers import DashboardProcess, request

    (tmp_path / "dash_app.py").write_text(
        textwrap.dedent(
            f"""
            import jobforge
            engine = jobforge.Engine({db!r}, workers=1)

            @engine.processor("shout")
            def shout(ctx, payload):
                return payload["text"].upper()
            """
        )
    )
    ok("enqueue", "noop", "--db", db)
    # The dashboard imports dash_app from its working directory.
    dash = DashboardProcess(db, "--app", "dash_app:engine", cwd=str(tmp_path))
    try:
        assert any("running jobs with dash_app:engine" in line for line in dash.lines)
        status, job = request(
            dash.url + "/api/jobs", "POST", {"type": "shout", "payload": {"text": "hi"}},
            token=dash.token,
        )  # fmt: skip
        assert status == 201
        deadline = time.monotonic() + 20
        while True:
            status, data = request(dash.url + f"/api/jobs/{job['id']}")
            if data["status"] == "completed" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert data["result"] == "HI"
    finally:
        assert dash.stop(signal.SIGINT) == 0


# -- logs and health ------------------------------------------------------------------------------


def test_logs_prints_lines_filters_by_level_and_show_includes_them(db):
    import jobforge as jf

    engine = jf.Engine(db, workers=1)

    @engine.processor("chatty")
    def chatty(ctx, payload):
        ctx.stage("load")
        ctx.log("info", "loaded", rows=3)
        ctx.log("error", "row 2 is bad", row=2)
        return None

    with engine:
        job = engine.enqueue("chatty", None).wait(10)
    text = ok("logs", job.id, "--db", db).stdout
    assert "info" in text and "[load] loaded rows=3" in text and "row 2 is bad row=2" in text
    lines = as_json("logs", job.id, "--db", db, "--level", "error")
    assert [(x["level"], x["message"], x["fields"]) for x in lines] == [
        ("error", "row 2 is bad", {"row": 2})
    ]
    assert "[load] loaded" in ok("show", job.id, "--db", db).stdout
    assert_one_line_error(jobforge("logs", "no-such-id", "--db", db), 3, "no-such-id")


def test_logs_follow_prints_new_lines_until_the_job_ends(db):
    import threading

    import jobforge as jf

    engine = jf.Engine(db, workers=1)
    go = threading.Event()

    @engine.processor("slow-talker")
    def slow_talker(ctx, payload):
        go.wait(30)
        for i in range(5):
            ctx.log("info", f"line {i}")
            time.sleep(0.1)
        return None

    with engine:
        job = engine.enqueue("slow-talker", None)
        follower = subprocess.Popen(
            [*CLI, "logs", job.id, "--db", db, "--follow", "--json"], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )  # fmt: skip
        time.sleep(0.5)
        assert follower.poll() is None  # waiting for lines of a job that has not ended
        go.set()
        out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert [json.loads(line)["message"] for line in out.splitlines()] == [
        f"line {i}" for i in range(5)
    ]


def test_health_exit_codes_ok_and_degraded(db):
    ok("enqueue", "noop", "--db", db, "--delay", "3600")
    report = as_json("health", "--db", db)
    assert report["status"] == "ok" and report["database"]["reachable"]
    ok("enqueue", "noop", "--db", db)  # due, and no worker alive to run it
    proc = jobforge("health", "--db", db, "--json")
    assert proc.returncode == 4, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "degraded"
    assert any("no live worker" in reason for reason in report["reasons"])
    proc = jobforge("health", "--db", db)
    assert proc.returncode == 4 and "degraded" in proc.stdout and "no live worker" in proc.stdout
    assert_one_line_error(jobforge("health", "--db", db, "--max-wait", "0"), 2, "--max-wait")


# -- db -------------------------------------------------------------------------------------------


def test_db_check_migrate_and_repair_of_a_damaged_file(tmp_path):
    from test_db_repair import _fill, _page_of_table, _smash

    path = str(tmp_path / "jobs.db")
    _fill(path)
    report = as_json("db", "check", "--db", path)
    assert report["ok"] is True and report["jobs"] > 0
    assert "ok:" in ok("db", "check", "--db", path, "--quick").stdout
    assert "up to date" in ok("db", "migrate", "--db", path).stdout
    _smash(path, *_page_of_table(path, "jobs"))
    proc = jobforge("db", "check", "--db", path)
    assert proc.returncode == 1 and "problem(s) found" in proc.stdout, proc.stdout
    report = as_json("db", "repair", "--db", path)
    assert report["lost"] > 0 and report["copied"] > 0 and report["check"]["ok"] is True
    assert os.path.exists(report["damaged_copy"])
    assert as_json("db", "check", "--db", path)["ok"] is True


def test_db_usage_errors(tmp_path):
    assert_one_line_error(jobforge("db"), 2, "check, migrate, recount, repair or cleanup")
    assert_one_line_error(jobforge("db", "check", "--db", tmp_path / "x.db"), 3, "does not exist")
    (tmp_path / "junk.db").write_bytes(b"this is not a database at all" * 100)
    proc = jobforge("db", "check", "--db", tmp_path / "junk.db")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_db_migrate_upgrades_a_seed_schema_file(tmp_path):
    import sqlite3

    path = str(tmp_path / "seed.db")
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE jobs (id TEXT PRIMARY KEY, type TEXT NOT NULL, status TEXT NOT NULL
          DEFAULT 'created', priority INTEGER NOT NULL DEFAULT 5, payload TEXT NOT NULL,
          progress INTEGER DEFAULT 0, result TEXT, error TEXT, attempts INTEGER DEFAULT 0,
          max_attempts INTEGER DEFAULT 3, parent_job_id TEXT, user_initiated INTEGER DEFAULT 1,
          timeout_seconds INTEGER DEFAULT 300, created_at INTEGER NOT NULL, queued_at INTEGER,
          started_at INTEGER, completed_at INTEGER, timeout_at INTEGER);
        INSERT INTO jobs (id, type, status, payload, created_at)
          VALUES ('a', 'noop', 'completed', '{}', 1);
        """
    )
    conn.close()
    report = as_json("db", "migrate", "--db", path)
    assert report["schema_version_before"] == 0 and report["schema_version"] > 0
    assert as_json("show", "a", "--db", path)["status"] == "completed"


# -- schedule -------------------------------------------------------------------------------------


def test_schedule_add_list_replace_remove(db):
    made = as_json(
        "schedule", "add", "nightly", "0 2 * * *", "noop", "--db", db, "--payload", '{"a": 1}',
        "--priority", "3", "--timezone", "+02:00", "--misfire", "skip", "--queue", "maint",
    )  # fmt: skip
    assert made["name"] == "nightly" and made["cron"] == "0 2 * * *" and made["type"] == "noop"
    assert made["payload"] == {"a": 1} and made["priority"] == 3 and made["queue"] == "maint"
    assert made["timezone"] == "+02:00" and made["misfire"] == "skip"
    assert made["last_fire_at"] is None and made["next_fire_at"] > time.time() * 1000
    # 02:00 at +02:00 is 00:00 UTC
    assert made["next_fire_at"] % 86_400_000 == 0
    out = ok("schedule", "add", "beat", "@every 30s", "ping", "--db", db).stdout
    assert out.startswith("added schedule 'beat': ping at '@every 30s' (UTC), next fire")
    listed = as_json("schedule", "list", "--db", db)
    assert [s["name"] for s in listed] == ["beat", "nightly"]
    assert listed[1] == made
    table = ok("schedule", "list", "--db", db).stdout
    for fragment in ("NAME", "NEXT FIRE", "nightly", "0 2 * * *", "+02:00", "skip", "never"):
        assert fragment in table, (fragment, table)
    out = ok("schedule", "add", "beat", "@hourly", "ping", "--db", db).stdout
    assert out.startswith("replaced schedule 'beat'")
    assert as_json("schedule", "list", "--db", db)[0]["cron"] == "@hourly"
    assert as_json("schedule", "remove", "beat", "--db", db) == {"removed": "beat"}
    assert "removed schedule 'nightly'" in ok("schedule", "remove", "nightly", "--db", db).stdout
    assert as_json("schedule", "list", "--db", db) == []
    assert "no schedules" in ok("schedule", "list", "--db", db).stdout


def test_schedule_bad_input_exits_with_one_line_and_writes_nothing(db, tmp_path):
    assert_one_line_error(jobforge("schedule", "list", "--db", db), 3, "does not exist")
    proc = jobforge("schedule", "add", "s", "* * * * *", "noop", "--db", db, "--payload", "{x")
    assert_one_line_error(proc, 2, "--payload is not valid JSON")
    assert not os.path.exists(db)  # malformed JSON: not even the file
    ok("schedule", "add", "keep", "@daily", "noop", "--db", db)
    for cron, fragment in [("61 * * * *", "61"), ("* * *", "* * *"), ("@fortnightly", "@fort")]:
        proc = jobforge("schedule", "add", "bad", cron, "noop", "--db", db)
        assert_one_line_error(proc, 2, fragment)
    proc = jobforge("schedule", "add", "bad", "@daily", "noop", "--db", db,
                    "--timezone", "Europe/Paris")  # fmt: skip
    assert_one_line_error(proc, 2, "Europe/Paris")
    proc = jobforge("schedule", "add", "bad", "@daily", "exec", "--db", db,
                    "--payload", '{"argv": "ls -l"}')  # fmt: skip
    assert_one_line_error(proc, 2, "exec: payload field 'argv'")
    assert_one_line_error(jobforge("schedule", "add", "", "@daily", "noop", "--db", db), 2, "name")
    proc = jobforge("schedule", "add", "bad", "@daily", "noop", "--db", db, "--priority", "11")
    assert_one_line_error(proc, 2, "11")
    proc = jobforge("schedule", "add", "bad", "@daily", "noop", "--db", db, "--misfire", "later")
    assert proc.returncode == 2 and "invalid choice: 'later'" in proc.stderr
    assert [s["name"] for s in as_json("schedule", "list", "--db", db)] == ["keep"]
    assert_one_line_error(
        jobforge("schedule", "remove", "nope", "--db", db), 3, "no schedule named 'nope'"
    )
    assert_one_line_error(jobforge("schedule"), 2, "list, add or remove")


def test_a_schedule_added_on_the_command_line_fires_in_an_engine(db):
    import jobforge

    ok("schedule", "add", "tick", "@every 1s", "noop", "--db", db, "--payload", '{"n": 1}')
    with jobforge.Engine(db, workers=1, poll_interval=0.05) as engine:
        deadline = time.monotonic() + 20
        while not engine.jobs(type="noop", status="completed") and time.monotonic() < deadline:
            time.sleep(0.1)
        fired = engine.jobs(type="noop", status="completed")
    assert fired and fired[0].payload == {"n": 1} and not fired[0].user_initiated
    (listed,) = as_json("schedule", "list", "--db", db)
    assert listed["last_fire_at"] is not None and listed["last_job_id"]


# -- run ------------------------------------------------------------------------------------------

_RUN_APP = """
import time

import jobforge

engine = jobforge.Engine({db!r})


@engine.processor("count")
def count(ctx, payload):
    for i in range(payload["n"]):
        ctx.progress(i + 1, total=payload["n"], message=f"item {{i + 1}}")
    return {{"counted": payload["n"]}}


@engine.processor("slow")
def slow(ctx, payload):
    open("started", "w").close()
    for i in range(600):
        ctx.progress(i + 1, total=600)
        time.sleep(0.05)


@engine.processor("boom")
def boom(ctx, payload):
    raise ValueError("bad frame 7\\nsecond line")
"""


@pytest.fixture
def run_app(tmp_path):
    (tmp_path / "runapp.py").write_text(_RUN_APP.format(db=str(tmp_path / "app.db")))
    return tmp_path


def test_run_a_native_processor_prints_its_result(tmp_path):
    import hashlib

    data = tmp_path / "data.bin"
    data.write_bytes(b"jobforge" * 1000)
    payload = json.dumps({"paths": [str(data)], "algorithms": ["sha256"]})
    out = as_json("run", "checksum", "--payload", payload)
    assert out["type"] == "checksum" and out["seconds"] >= 0
    text = json.dumps(out["result"])
    assert hashlib.sha256(data.read_bytes()).hexdigest() in text
    plain = json.loads(
        ok("run", "scan", "--payload", json.dumps({"paths": [str(tmp_path)]})).stdout
    )
    assert plain["count"] == 1 and plain["files"][0]["path"].endswith("data.bin")


def test_run_bad_input_and_failures(tmp_path):
    assert_one_line_error(jobforge("run", "nosuch"), 2, "unknown job type 'nosuch'", "checksum")
    assert_one_line_error(jobforge("run", "scan", "--payload", "[1,"), 2, "not valid JSON")
    proc = jobforge("run", "exec", "--payload", '{"argv": "ls -l"}')
    assert_one_line_error(proc, 2, "argv", "ls -l")
    proc = jobforge("run", "scan", "--payload", json.dumps({"paths": [str(tmp_path / "gone")]}))
    assert_one_line_error(proc, 1, "scan failed", "gone")
    assert proc.stdout == ""
    # A native processor's log lines go to stderr as it runs; its error is the last line.
    proc = jobforge("run", "exec", "--payload", '{"argv": ["sh", "-c", "exit 3"]}')
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert lines[-1] == 'jobforge: error: exec failed: exec: "sh" exited with code 3', lines
    assert any("started" in line for line in lines[:-1])


def test_run_a_python_processor_of_an_app(run_app):
    env = _env()
    out = subprocess.run(
        [*CLI, "run", "count", "--app", "runapp:engine", "--payload", '{"n": 5}', "--json"],
        cwd=run_app, capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["result"] == {"counted": 5}
    proc = subprocess.run(
        [*CLI, "run", "boom", "--app", "runapp:engine"],
        cwd=run_app, capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert_one_line_error(proc, 1, "boom failed: ValueError: bad frame 7 second line")
    proc = subprocess.run(
        [*CLI, "run", "boom", "--app", "runapp:engine", "--debug"],
        cwd=run_app, capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "raise ValueError" in proc.stderr
    proc = subprocess.run(
        [*CLI, "run", "scan", "--app", "runapp:nothing"],
        cwd=run_app, capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert_one_line_error(proc, 2, "no attribute 'nothing'")
    proc = subprocess.run(
        [*CLI, "run", "nosuch", "--app", "runapp:engine"],
        cwd=run_app, capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert_one_line_error(proc, 2, "unknown job type 'nosuch'", "count")


def test_run_ctrl_c_exits_130_with_one_line(run_app):
    import signal

    proc = subprocess.Popen(
        [*CLI, "run", "slow", "--app", "runapp:engine"], cwd=run_app, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (run_app / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err == "jobforge: error: interrupted\n", err


def test_run_draws_a_progress_bar_on_a_terminal(run_app):
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*CLI, "run", "count", "--app", "runapp:engine", "--payload", '{"n": 40}'],
            cwd=run_app, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
            env=_env(COLUMNS="120", TERM="xterm"),
        )  # fmt: skip
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(TIMEOUT) == 0
    finally:
        os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "count" in screen and "40/40" in screen and "100%" in screen, screen
    assert "item 40" in screen and '"counted"' in screen, screen


# -- db cleanup -----------------------------------------------------------------------------------


def test_db_cleanup_deletes_finished_jobs_older_than_the_duration(db):
    import jobforge

    with jobforge.Engine(db, workers=2) as engine:
        done = [engine.enqueue("noop", {"i": i}) for i in range(5)]
        for job in done:
            job.wait(10)
    with jobforge.Engine(db, allow_unknown_types=True) as engine:
        waiting = engine.enqueue("later", {}, delay=3600)
    assert as_json("db", "cleanup", "--older-than", "7d", "--db", db)["deleted"] == 0
    assert (
        "deleted 0 finished job(s)"
        in ok("db", "cleanup", "--older-than", "1h30m", "--db", db).stdout
    )
    time.sleep(0.05)
    report = as_json("db", "cleanup", "--older-than", "0s", "--db", db)
    assert report["deleted"] == 5 and report["older_than_s"] == 0
    assert [j["id"] for j in as_json("list", "--db", db)] == [waiting.id]


@pytest.mark.parametrize("value", ["7x", "-1d", "", "d", "7d3", "1e400"])
def test_db_cleanup_bad_durations_exit_2(db, value):
    ok("enqueue", "noop", "--db", db)
    proc = jobforge("db", "cleanup", "--older-than", value, "--db", db)
    assert proc.returncode == 2 and "--older-than" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_db_cleanup_missing_database_exits_3(tmp_path):
    proc = jobforge("db", "cleanup", "--older-than", "7d", "--db", tmp_path / "none.db")
    assert_one_line_error(proc, 3, "does not exist")
    proc = jobforge("db", "cleanup", "--db", tmp_path / "none.db")
    assert proc.returncode == 2 and "--older-than" in proc.stderr
