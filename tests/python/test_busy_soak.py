"""SQLITE_BUSY / "database is locked" between processes (issue 4, section 5): real processes on one
file for ~15 s: producers (enqueue and enqueue_many), two worker processes, one that cancels,
retries and queries at random, and one that opens and closes engines and runs short-lived
producer processes. No process may see an error; every job not cancelled ends completed exactly
once; nothing stays queued or running; counts() agrees with a direct count of the jobs table."""

from __future__ import annotations

import glob
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import jobforge

SOAK_SECONDS = 12.0

CHILD = textwrap.dedent(
    r'''
    import json, os, random, subprocess, sys, time, traceback

    import jobforge

    role, db, folder, index, soak = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
    deadline = time.monotonic() + soak
    rng = random.Random(f"{role}-{index}")
    name = f"{role}-{index}"

    def out(kind):
        return open(os.path.join(folder, f"{kind}-{name}.txt"), "a", buffering=1)

    SHORT_PRODUCER = """
    import sys, jobforge
    engine = jobforge.Engine(sys.argv[1], allow_unknown_types=True)
    if sys.argv[2] == "many":
        jobs = engine.enqueue_many("soak", [{"short": k} for k in range(5)])
    else:
        jobs = [engine.enqueue("soak", {"short": 0}, priority="high")]
    print(" ".join(job.id for job in jobs), flush=True)
    engine.counts()
    """

    def producer():
        ids = out("ids")
        engine = jobforge.Engine(db, allow_unknown_types=True)
        n = 0
        while time.monotonic() < deadline:
            if rng.random() < 0.5:
                jobs = [engine.enqueue("soak", {"n": n}, priority=rng.randint(1, 10))]
            else:
                jobs = engine.enqueue_many("soak", [{"n": n + k} for k in range(rng.randint(1, 40))])
            n += len(jobs)
            ids.write("".join(job.id + "\n" for job in jobs))
            time.sleep(rng.random() * 0.01)
        engine.stop()

    def worker():
        ran = out("ran")
        engine = jobforge.Engine(db, workers=3, poll_interval=0.01, retry_delay=0.01)

        @engine.processor("soak", max_attempts=3)
        def soak_job(ctx, payload):
            ctx.log("info", "running", attempt=ctx.attempt)
            if payload.get("n", 1) % 10 == 0 and ctx.attempt == 1:
                raise RuntimeError("planned failure")
            time.sleep(rng.random() * 0.002)
            # One write per successful execution: "job_id attempt".
            ran.write(f"{ctx.job_id} {ctx.attempt}\n")
            return {"ok": True}

        engine.start()
        stop_file = os.path.join(folder, "drain")
        quiet_since = None
        limit = time.monotonic() + soak + 90
        while time.monotonic() < limit:
            time.sleep(0.05)
            if not os.path.exists(stop_file):
                continue
            c = engine.counts()
            if c["queued"] == 0 and c["running"] == 0 and c["created"] == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 0.5:
                    break
            else:
                quiet_since = None
        engine.stop()

    def chaos():
        touched = out("touched")
        engine = jobforge.Engine(db, allow_unknown_types=True)
        while time.monotonic() < deadline:
            status = rng.choice([None, "queued", "running", "cancelled", "completed", "failed"])
            jobs = engine.jobs(status=status, limit=50, offset=rng.randint(0, 20))
            engine.counts()
            engine.stats()
            engine.active(limit=20)
            for job in rng.sample(jobs, min(3, len(jobs))):
                touched.write(job.id + "\n")
                action = rng.random()
                if action < 0.5:
                    engine.cancel(job.id)
                elif action < 0.9:
                    engine.retry(job.id)
                engine.logs(job.id, tail=True, limit=10)
                got = engine.get(job.id)
                assert got is not None and got.id == job.id
            time.sleep(rng.random() * 0.01)
        engine.stop()

    def churn():
        ids = out("ids")
        k = 0
        while time.monotonic() < deadline:
            k += 1
            if k % 3 == 0:
                # A short-lived producer process: opens the file, enqueues, exits.
                mode = rng.choice(["one", "many"])
                done = subprocess.run(
                    [sys.executable, "-c", SHORT_PRODUCER, db, mode],
                    capture_output=True, text=True, timeout=60,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"short-lived producer exited {done.returncode}: {done.stderr}")
                ids.write("".join(i + "\n" for i in done.stdout.split()))
                continue
            engine = jobforge.Engine(db, allow_unknown_types=True)
            job = engine.enqueue("soak", {"churn": k})
            ids.write(job.id + "\n")
            engine.counts()
            engine.jobs(limit=5)
            engine.stop()
            del engine

    try:
        {"producer": producer, "worker": worker, "chaos": chaos, "churn": churn}[role]()
    except BaseException:
        with open(os.path.join(folder, f"error-{name}.txt"), "w") as f:
            f.write(traceback.format_exc())
        sys.exit(1)
    print("CHILD-OK", flush=True)
    '''
)


def _direct_counts(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        jobs = con.execute("SELECT id, status, attempts FROM jobs").fetchall()
    finally:
        con.close()
    return dict(rows), jobs


def test_processes_contending_for_one_file_never_see_busy_errors_and_lose_nothing(tmp_path):
    db = str(tmp_path / "busy.db")
    folder = str(tmp_path)
    jobforge.Engine(db, allow_unknown_types=True).stop()  # create the schema up front
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "SKBUILD_EDITABLE_VERBOSE": "0"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)

    def spawn(role, index):
        stderr = open(tmp_path / f"stderr-{role}-{index}.txt", "w")
        return subprocess.Popen(
            [sys.executable, str(script), role, db, folder, str(index), str(SOAK_SECONDS)],
            stdout=subprocess.DEVNULL, stderr=stderr, env=env,
        )  # fmt: skip

    started = time.monotonic()
    workers = [spawn("worker", i) for i in range(2)]
    others = [spawn("producer", 0), spawn("producer", 1), spawn("chaos", 0), spawn("churn", 0)]
    try:
        codes = {p.args[2] + "-" + p.args[5]: p.wait(timeout=SOAK_SECONDS + 90) for p in others}
        (tmp_path / "drain").write_text("")
        codes.update({f"worker-{i}": p.wait(timeout=120) for i, p in enumerate(workers)})
    finally:
        for p in workers + others:
            if p.poll() is None:
                p.kill()
                p.wait()
    elapsed = time.monotonic() - started

    errors = {
        os.path.basename(path): open(path).read()
        for path in glob.glob(os.path.join(folder, "error-*.txt"))
    }
    assert not errors, f"children raised: {errors}"
    assert all(code == 0 for code in codes.values()), codes
    noise = {}
    for path in glob.glob(os.path.join(folder, "stderr-*.txt")):
        text = open(path).read()
        if any(word in text.lower() for word in ("locked", "busy", "traceback", "error")):
            noise[os.path.basename(path)] = text[-3000:]
    assert not noise, f"children complained on stderr: {noise}"

    enqueued = []
    for path in glob.glob(os.path.join(folder, "ids-*.txt")):
        enqueued.extend(open(path).read().split())
    touched = set()
    for path in glob.glob(os.path.join(folder, "touched-*.txt")):
        touched.update(open(path).read().split())
    runs: dict[str, int] = {}
    for path in glob.glob(os.path.join(folder, "ran-*.txt")):
        for line in open(path).read().splitlines():
            job_id, _attempt = line.split()
            runs[job_id] = runs.get(job_id, 0) + 1

    direct, rows = _direct_counts(db)
    status = {job_id: s for job_id, s, _ in rows}
    attempts = {job_id: a for job_id, _, a in rows}
    # Nothing lost, nothing invented, nothing duplicated.
    assert len(enqueued) == len(set(enqueued)), "an id was returned twice"
    assert set(enqueued) == set(status), (
        f"lost: {len(set(enqueued) - set(status))}, unexpected: {len(set(status) - set(enqueued))}"
    )
    assert len(enqueued) > 500, f"only {len(enqueued)} jobs in {elapsed:.0f} s: too little load"
    # Drained: nothing left queued or running.
    leftover = {s: n for s, n in direct.items() if s in ("created", "queued", "running")}
    assert not leftover, f"jobs left behind: {leftover}"
    # Every job not cancelled completed; failures were planned and retried.
    not_done = {j: s for j, s in status.items() if s not in ("completed", "cancelled")}
    assert not not_done, (
        f"{len(not_done)} jobs neither completed nor cancelled: {list(not_done.items())[:5]}"
    )
    # Exactly one successful execution per completed job the chaos process never touched; a
    # touched one may have run to its end once more after a cancel raced with it and a retry.
    for job_id, s in status.items():
        if s == "completed":
            assert runs.get(job_id, 0) >= 1, f"{job_id} completed without running"
            if job_id not in touched:
                assert runs[job_id] == 1, f"{job_id} ran {runs[job_id]} times"
                assert attempts[job_id] in (1, 2), f"{job_id} took {attempts[job_id]} attempts"
        elif job_id not in touched:
            raise AssertionError(f"{job_id} is {s} though nobody cancelled it")
    assert not set(runs) - set(status), "a processor ran a job the store does not have"
    # counts() (kept by the store) agrees with a direct count of the jobs table.
    engine = jobforge.Engine(db, allow_unknown_types=True)
    try:
        counts = engine.counts()
    finally:
        engine.stop()
    expected = {s: direct.get(s, 0) for s in jobforge.STATUSES}
    expected["total"] = sum(direct.values())
    assert counts == expected
    print(
        f"busy soak: {len(enqueued)} jobs, {sum(runs.values())} executions, "
        f"{direct.get('cancelled', 0)} cancelled, {len(touched)} touched, {elapsed:.1f} s"
    )
