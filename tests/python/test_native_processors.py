"""The built-in native processors scan, checksum and exec, end to end through jobforge.Engine on
real files, directories and processes. Hashes are checked against hashlib and xxhash."""

import hashlib
import os
import re
import time

import pytest
import xxhash

import jobforge


@pytest.fixture
def engine(make_engine):
    """An engine with two workers on a fresh file, not started, that runs `exec` (opted in)."""
    return make_engine(workers=2, allow_exec=True)


def _tree(root):
    files = {
        "a.txt": b"alpha\n",
        "b.jpg": os.urandom(3 * 1024 * 1024 + 11),  # several read buffers
        "sub/c.JPG": b"",
        "sub/deeper/d.bin": os.urandom(70_000),
        ".hidden/e.txt": b"hidden",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_native_processors_are_registered(engine):
    assert {"noop", "sleep", "scan", "checksum", "exec"} <= set(engine.processor_types)


def test_scan_reports_files_with_size_and_mtime(engine, tmp_path):
    _tree(tmp_path / "tree")
    with engine:
        job = engine.enqueue("scan", {"paths": [str(tmp_path / "tree")], "extensions": ["jpg"]})
        done = job.wait(timeout=30)
    assert done.status == "completed", done.error
    expected = sorted(
        os.path.join(d, f)
        for d, _, names in os.walk(tmp_path / "tree")
        for f in names
        if f.lower().endswith(".jpg") and "/." not in d
    )
    assert sorted(f["path"] for f in done.result["files"]) == expected
    for entry in done.result["files"]:
        st = os.stat(entry["path"])
        assert entry["size"] == st.st_size
        assert entry["mtime"] == pytest.approx(st.st_mtime_ns / 1e9, abs=1e-6)
    assert done.result["skipped"]["hidden"] == 1
    assert done.outcome["files"] == 2
    assert done.progress_current == 4  # files seen: progress counts them, with no total


def test_scan_permission_error_is_logged_and_counted(engine, tmp_path):
    _tree(tmp_path / "tree")
    locked = tmp_path / "tree" / "locked"
    locked.mkdir()
    (locked / "x.txt").write_text("x")
    locked.chmod(0)
    try:
        with engine:
            done = engine.enqueue("scan", {"paths": str(tmp_path / "tree")}).wait(timeout=30)
    finally:
        locked.chmod(0o755)
    assert done.status == "completed", done.error  # never fatal
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 folder (the C++ suite covers root with another fault)")
    assert done.result["errors"] == 1
    assert done.outcome["permission_errors"] == 1
    lines = engine.logs(done)
    assert any(line.level == "warning" and line.fields.get("path") == str(locked) for line in lines)


def test_scan_missing_root_fails_without_retry(engine, tmp_path):
    with engine:
        done = engine.enqueue("scan", {"paths": str(tmp_path / "nope")}, max_attempts=3).wait(30)
    assert done.status == "failed"
    assert done.attempts == 1
    assert "'paths[0]'" in done.error and "nope" in done.error


def test_checksum_matches_hashlib_and_xxhash(engine, tmp_path, recorder):
    files = _tree(tmp_path / "tree")
    paths = [str(tmp_path / "tree" / name) for name in files]
    progress = recorder()
    engine.on("job-progress", progress)
    with engine:
        job = engine.enqueue(
            "checksum",
            {"paths": paths, "algorithms": ["sha256", "xxh3", "xxh64", "xxh128"]},
        )
        done = job.wait(timeout=60)
        engine.flush_events()
    assert done.status == "completed", done.error
    assert done.result["hashed"] == len(files)
    for entry, data in zip(done.result["files"], files.values()):
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["xxh3"] == xxhash.xxh3_64_hexdigest(data)
        assert entry["xxh64"] == xxhash.xxh64_hexdigest(data)
        assert entry["xxh128"] == xxhash.xxh128_hexdigest(data)
    total = sum(len(d) for d in files.values())
    assert done.result["bytes"] == total
    assert done.outcome["bytes"] == total
    # Progress is in bytes of the known total: in the stored progress, and in every progress
    # event that counts bytes. (A job this small may end within one progress interval: its
    # progress events are then coalesced into the final state, and none need carry bytes.)
    assert done.progress_total == total, "no progress in bytes"
    hashing = [ev for ev in progress.items if ev.job_id == job.id and ev.progress_total == total]
    assert all(0 <= ev.progress_current <= total for ev in hashing)


def test_checksum_records_unreadable_files(engine, tmp_path):
    (tmp_path / "ok").write_bytes(b"abc")
    with engine:
        done = engine.enqueue(
            "checksum", {"paths": [str(tmp_path / "missing"), str(tmp_path / "ok")]}
        ).wait(timeout=30)
    assert done.status == "completed"
    assert done.result["errors"] == 1
    assert "No such file" in done.result["files"][0]["error"]
    assert done.result["files"][1]["sha256"] == hashlib.sha256(b"abc").hexdigest()


def test_exec_streams_output_into_the_job_log(engine, tmp_path):
    script = 'echo "in $(pwd)"; echo "$GREETING"; cat; echo warn >&2'
    with engine:
        done = engine.enqueue(
            "exec",
            {
                "argv": ["sh", "-c", script],
                "cwd": str(tmp_path),
                "env": {"GREETING": "hello"},
                "stdin": "from stdin\n",
            },
        ).wait(timeout=30)
    assert done.status == "completed", done.error
    assert done.result["exit_code"] == 0
    assert done.result["stdout_tail"] == f"in {tmp_path.resolve()}\nhello\nfrom stdin\n"
    assert done.result["stderr_tail"] == "warn\n"
    lines = engine.logs(done)
    streamed = [(line.fields.get("stream"), line.message) for line in lines if line.fields]
    assert ("stdout", "hello") in streamed
    assert ("stdout", "from stdin") in streamed
    assert ("stderr", "warn") in streamed
    assert next(line for line in lines if line.message == "warn").level == "warning"


def test_exec_nonzero_exit_fails_the_attempt(engine):
    with engine:
        done = engine.enqueue(
            "exec", {"argv": ["sh", "-c", "echo broken >&2; exit 4"]}, max_attempts=2
        ).wait(timeout=30)
    assert done.status == "failed"
    assert done.attempts == 2  # an ordinary failure: retried
    assert "exited with code 4" in done.error
    assert "broken" in done.error_detail


def test_exec_missing_program_fails_for_good(engine):
    with engine:
        done = engine.enqueue("exec", {"argv": ["/no/such/tool"]}, max_attempts=3).wait(30)
    assert done.status == "failed"
    assert done.attempts == 1
    assert "'argv[0]'" in done.error


def _group_members(pgid):
    """Live (not zombie) processes in process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry))
    return members


def _start_tree(engine, tmp_path, **options):
    """An exec job whose shell ignores SIGTERM and leaves a grandchild; returns (job, pids)."""
    pids = tmp_path / "pids"
    script = f"trap '' TERM; echo $$ > {pids}.tmp; sleep 60 & echo $! >> {pids}.tmp; mv {pids}.tmp {pids}; wait"
    job = engine.enqueue("exec", {"argv": ["sh", "-c", script], "kill_grace": 0.3}, **options)
    deadline = time.monotonic() + 30
    while not pids.exists():
        assert time.monotonic() < deadline, "the command did not start"
        time.sleep(0.01)
    leader, child = (int(x) for x in pids.read_text().split())
    assert set(_group_members(leader)) >= {leader, child}
    return job, leader, child


def test_exec_cancel_kills_the_process_group(engine, tmp_path, wait_until):
    with engine:
        job, leader, child = _start_tree(engine, tmp_path)
        assert engine.cancel(job)
        done = job.wait(timeout=30)
    assert done.status == "cancelled"
    wait_until(lambda: not _group_members(leader), timeout=30, what="the process group to end")


def test_exec_timeout_kills_the_process_group(engine, tmp_path, wait_until):
    with engine:
        job, leader, child = _start_tree(engine, tmp_path, timeout=1.0)
        done = job.wait(timeout=30)
    assert done.status == "timeout"
    wait_until(lambda: not _group_members(leader), timeout=30, what="the process group to end")


@pytest.mark.parametrize(
    ("job_type", "payload", "field"),
    [
        ("exec", {"argv": "ls -l"}, "argv"),
        ("exec", {"argv": ["ls"], "env": {"A": 1}}, "env.A"),
        ("exec", {"argv": ["ls"], "tail_lines": -1}, "tail_lines"),
        ("scan", {"paths": "/tmp", "symlinks": "sometimes"}, "symlinks"),
        ("scan", {"path": "/tmp"}, "path"),
        ("checksum", {"paths": ["/tmp/x"], "algorithms": ["crc32"]}, "algorithms[0]"),
        ("checksum", None, "paths"),
    ],
)
def test_bad_payload_is_refused_at_enqueue_naming_the_field(engine, job_type, payload, field):
    with pytest.raises(ValueError, match=re.escape(f"'{field}'")):
        engine.enqueue(job_type, payload)
    assert engine.stats()["total"] == 0  # nothing written


def test_native_jobs_run_beside_python_ones(engine, tmp_path):
    (tmp_path / "f").write_bytes(b"data")

    @engine.processor("double")
    def double(ctx, payload):
        return payload * 2

    with engine:
        a = engine.enqueue("checksum", {"paths": str(tmp_path / "f"), "algorithms": "xxh3"})
        b = engine.enqueue("double", 21)
        assert b.wait(30).result == 42
        assert a.wait(30).result["files"][0]["xxh3"] == xxhash.xxh3_64_hexdigest(b"data")


def test_jobforge_exports_native_processor_types():
    assert jobforge.Engine.register_native.__doc__


# -- issue 15: blocked I/O, cancel and timeout, NUL characters ---------------------------------

BOTH_STORES = pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)


def _unblock_fifo(path):
    """Opens the FIFO's write end for a moment, so a reader blocked in open(2) on it goes on
    (without the fix, that is how the test ends instead of hanging)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def _status(engine, job):
    return engine.get(job.id).status


@BOTH_STORES
def test_checksum_of_a_fifo_fails_promptly_and_the_worker_goes_on(make_engine, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    engine = make_engine(workers=1)  # one slot: the job after it needs that worker back
    with engine:
        try:
            started = time.monotonic()
            job = engine.enqueue(
                "checksum", {"paths": str(fifo), "on_error": "fail"}, timeout=1.0, max_attempts=1
            )
            after = engine.enqueue("noop")
            done = job.wait(timeout=10)
            assert done.status == "failed", done.error
            assert time.monotonic() - started < 5
            assert str(fifo) in done.error and "not a regular file" in done.error
            assert after.wait(timeout=10).status == "completed"
        finally:
            _unblock_fifo(fifo)


@BOTH_STORES
def test_stop_without_waiting_returns_promptly_beside_a_checksum_of_a_fifo(make_engine, tmp_path):
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    engine = make_engine(workers=2)
    engine.start()
    stopper = threading.Thread(target=engine.stop, kwargs={"wait": False}, daemon=True)
    try:
        job = engine.enqueue("checksum", {"paths": [str(fifo)]})
        sleeper = engine.enqueue("sleep", {"seconds": 60})
        deadline = time.monotonic() + 10
        while _status(engine, sleeper) != "running" or _status(engine, job) == "queued":
            assert time.monotonic() < deadline, "the jobs did not start"
            time.sleep(0.01)
        stopper.start()
        stopper.join(timeout=5)
        assert not stopper.is_alive(), "stop(wait=False) did not return"
    finally:
        _unblock_fifo(fifo)
        if stopper.is_alive():
            stopper.join()
    done = engine.get(job.id)
    assert done.status in ("completed", "queued")  # done, or stopped before it and queued again
    if done.status == "completed":
        assert done.result["files"][0]["error"] == "not a regular file: a named pipe (FIFO)"
    assert engine.get(sleeper.id).status == "queued"  # back in the queue, as stop(wait=False) does


@BOTH_STORES
def test_checksum_of_a_huge_file_times_out_within_a_second(make_engine, tmp_path):
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(64 << 30)  # sparse: 64 GiB of zeros, read at memory speed (minutes to hash)
    engine = make_engine(workers=1)
    with engine:
        job = engine.enqueue("checksum", {"paths": str(huge)}, timeout=0.5, max_attempts=1)
        deadline = time.monotonic() + 10
        while _status(engine, job) == "queued":
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.005)
        started = time.monotonic()
        done = job.wait(timeout=30)
    assert done.status == "timeout"
    # The timeout, then one read buffer and the store's write (minutes to hash it all).
    assert time.monotonic() - started < 0.5 + 2.5


@BOTH_STORES
def test_exec_timeout_of_a_command_ignoring_sigterm_ends_within_the_grace(
    make_engine, tmp_path, wait_until
):
    engine = make_engine(workers=1, allow_exec=True)
    with engine:
        job, leader, child = _start_tree(engine, tmp_path, timeout=0.5, max_attempts=1)
        seen = time.monotonic()  # the command runs: the timeout is at most 0.5 s away
        done = job.wait(timeout=30)
        ended = time.monotonic() - seen
        after = engine.enqueue("noop").wait(timeout=10)
    assert done.status == "timeout"
    assert ended < 0.5 + 0.3 + 2.5  # timeout + kill_grace + polling, not the sleep's 60 s
    assert after.status == "completed"
    wait_until(lambda: not _group_members(leader), timeout=10, what="the process group to end")


@BOTH_STORES
def test_sleep_is_cancelled_promptly(make_engine, wait_until):
    engine = make_engine(workers=1)
    with engine:
        job = engine.enqueue("sleep", {"seconds": 60})
        wait_until(lambda: _status(engine, job) == "running", timeout=10, what="the sleep")
        asked = time.monotonic()
        assert engine.cancel(job)
        done = job.wait(timeout=10)
        assert time.monotonic() - asked < 2.0  # not the 60 s of the sleep
    assert done.status == "cancelled"


NUL = "secret.key\u0000.jpg"


@BOTH_STORES
@pytest.mark.parametrize(
    ("job_type", "payload", "field"),
    [
        ("scan", {"paths": NUL}, "paths"),
        ("scan", {"paths": ["/tmp", NUL]}, "paths[1]"),
        ("scan", {"paths": "/tmp", "extensions": NUL}, "extensions"),
        ("checksum", {"paths": NUL}, "paths"),
        ("checksum", {"paths": [NUL]}, "paths[0]"),
        ("checksum", {"paths": "x", "algorithms": ["sha256\u0000"]}, "algorithms[0]"),
        ("stat", {"path": NUL}, "path"),
        ("exec", {"argv": [NUL]}, "argv[0]"),
        ("exec", {"argv": ["ls", NUL]}, "argv[1]"),
        ("exec", {"argv": ["ls"], "cwd": NUL}, "cwd"),
        ("exec", {"argv": ["ls"], "env": {"A": NUL}}, "env.A"),
        ("exec", {"argv": ["ls"], "env": {NUL: "1"}}, "env"),
    ],
)
def test_string_field_with_a_nul_is_refused_at_enqueue(engine, job_type, payload, field):
    with pytest.raises(jobforge.ValidationError, match="NUL") as refused:
        engine.enqueue(job_type, payload)
    assert refused.value.field == field
    assert f"'{field}'" in str(refused.value)
    assert engine.stats()["total"] == 0  # nothing written


def test_exec_stdin_may_hold_nul_bytes(engine):
    with engine:
        done = engine.enqueue("exec", {"argv": ["wc", "-c"], "stdin": "a\u0000b"}).wait(30)
    assert done.status == "completed", done.error
    assert int(done.result["stdout_tail"]) == 3
