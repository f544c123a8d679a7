"""An engine across ``os.fork()``: gunicorn --preload, multiprocessing's fork start method.

Every scenario runs in a Python child process of its own (the one that forks), so a deadlocked
grandchild is killed by a timeout instead of hanging the suite, and each forked child ends the
way such children end in real life: through the interpreter's normal exit (gunicorn workers),
or ``os._exit`` (multiprocessing). Both stores.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

# Forks children at random moments while the parent's engine is busy: two threads enqueue, two
# workers run jobs that report progress, so the writer thread is often mid-commit and engine
# mutexes are often held. Each child uses the parent's engine object (enqueue, get, jobs, wait
# for its own job after starting it) and ends through the interpreter's normal exit. The parent
# waits for each child with a deadline and reports "hung" for one it had to kill.
BUSY_FORKS = textwrap.dedent(
    """
    import os, random, signal, sys, threading, time, traceback
    import jobforge

    db, seed, forks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    engine = jobforge.Engine(db, workers=2)

    @engine.processor("work")
    def work(ctx, payload):
        for i in range(3):
            ctx.progress(i, total=3)
        return payload

    engine.start()
    stop = threading.Event()

    def produce():
        while not stop.is_set():
            engine.enqueue_many("work", [{"n": i} for i in range(5)])
            engine.enqueue("work", {"n": 0})

    producers = [threading.Thread(target=produce) for _ in range(2)]
    for t in producers:
        t.start()
    rng = random.Random(seed)
    children = []
    for index in range(forks):
        time.sleep(rng.uniform(0, 0.03))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ids = [engine.enqueue("work", {"child": index}).id for _ in range(30)]
                ids += [j.id for j in engine.enqueue_many("work", [{"child": index}] * 30)]
                assert engine.get(ids[0]) is not None
                assert len(engine.jobs(type="work", limit=5)) == 5
                engine.counts()
                if index % 2 == 0:
                    engine.start()  # the child's own workers
                    job = engine.enqueue("work", {"mine": index})
                    assert job.wait(timeout=20).status == "completed"
                for i in ids:  # one short write each: lines of processes never interleave
                    os.write(1, f"id {i}\\n".encode())
                code = 0
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
            sys.exit(code)  # the interpreter's normal exit: atexit, module teardown
        children.append(pid)
    stop.set()
    for t in producers:
        t.join()
    failed = 0
    for pid in children:
        deadline = time.monotonic() + 15
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    print("child", pid, "exit", code, flush=True)
                    failed += 1
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                print("child", pid, "hung", flush=True)
                failed += 1
                break
            time.sleep(0.01)
    engine.stop()
    print("parent done", failed, flush=True)
    """
)


def run_script(script, *args, timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def child_ids(stdout):
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("id ")]


@pytest.mark.parametrize("seed", [1, 2])
def test_parent_engine_works_in_children_forked_while_it_is_busy(db_path, seed):
    out = run_script(BUSY_FORKS, db_path, seed, 6)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "parent done 0" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
    ids = child_ids(out.stdout)
    assert len(ids) == 6 * 60
    assert len(set(ids)) == len(ids)


# Children that each build an engine of their own, after the parent drew ids in this thread:
# they inherit the id generator's state; the random parts must still differ.
OWN_ENGINES = textwrap.dedent(
    """
    import os, sys
    import jobforge

    db = sys.argv[1]
    engine = jobforge.Engine(db, workers=1)
    engine.enqueue("noop")
    pids = []
    for index in range(4):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                mine = jobforge.Engine(db, workers=1)
                for _ in range(200):
                    os.write(1, f"id {mine.enqueue('noop').id}\\n".encode())
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for _ in range(200):
        os.write(1, f"id {engine.enqueue('noop').id}\\n".encode())
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    print("codes", codes, flush=True)
    """
)


def test_children_with_engines_of_their_own_draw_distinct_ids(db_path):
    out = run_script(OWN_ENGINES, db_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "codes [0, 0, 0, 0]" in out.stdout, out.stderr[-3000:]
    ids = child_ids(out.stdout)
    assert len(ids) == 5 * 200
    # Not only the ids: their random parts (the last 64 bits) too, whatever the clock did.
    assert len({i[19:] for i in ids}) == len(ids)


# multiprocessing with the fork start method: pool workers enqueue through the module's engine.
MULTIPROCESSING = textwrap.dedent(
    """
    import multiprocessing, sys
    import jobforge

    engine = jobforge.Engine(sys.argv[1], workers=2)
    engine.start()

    def enqueue_some(index):
        return [engine.enqueue("noop", {"index": index}).id for _ in range(50)]

    if __name__ == "__main__":
        engine.enqueue("noop")
        with multiprocessing.get_context("fork").Pool(3) as pool:
            ids = [i for chunk in pool.map(enqueue_some, range(6)) for i in chunk]
        found = sum(engine.get(i) is not None for i in ids)
        print("ids", len(ids), len(set(ids)), found, flush=True)
        engine.stop()
    """
)


def test_multiprocessing_fork_pool_enqueues_through_the_parent_engine(db_path):
    out = run_script(MULTIPROCESSING, db_path, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ids 300 300 300" in out.stdout, out.stdout + out.stderr[-3000:]


# A thread inside SQLite's random-number generator (its static PRNG mutex held: randomblob) while
# the main thread forks; each child then opens the file, which takes that mutex. The store's
# pthread_atfork handlers hold SQLite's static mutexes across the fork, so none is left locked.
PRNG_HELD = textwrap.dedent(
    """
    import os, signal, sqlite3, sys, threading, time
    import jobforge

    db = sys.argv[1]
    engine = jobforge.Engine(db, workers=1)  # the store (and its fork handlers) exist from here
    stop = threading.Event()

    def spin():
        connection = sqlite3.connect(":memory:", check_same_thread=False)
        while not stop.is_set():
            connection.execute("select randomblob(2000000)").fetchone()

    spinner = threading.Thread(target=spin)
    spinner.start()
    hung = 0
    for _ in range(15):
        time.sleep(0.003)
        pid = os.fork()
        if pid == 0:
            signal.alarm(5)  # a hang ends by SIGALRM
            jobforge.Engine(db, workers=1).enqueue("noop")
            os._exit(0)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        hung += code != 0
    stop.set()
    spinner.join()
    print("hung", hung, flush=True)
    """
)


def test_fork_while_another_thread_holds_a_sqlite_mutex_leaves_none_locked(tmp_path):
    out = run_script(PRNG_HELD, tmp_path / "jobs.db")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "hung 0" in out.stdout, out.stdout + out.stderr[-2000:]


# Event subscriptions made before the fork deliver in the child once, for the child's commits;
# one made in the child too.
SUBSCRIPTIONS = textwrap.dedent(
    """
    import os, sys
    import jobforge

    engine = jobforge.Engine(sys.argv[1], workers=1)
    old = []
    engine.on("job-queued", lambda ev: old.append(ev.job_id))
    engine.enqueue("noop")
    engine.flush_events()
    pid = os.fork()
    if pid == 0:
        new = []
        engine.on("job-queued", lambda ev: new.append(ev.job_id))
        job = engine.enqueue("noop")
        engine.flush_events()
        print("child", old[1:] == [job.id], new == [job.id], flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    """
)


def test_event_subscriptions_deliver_once_in_a_forked_child(db_path):
    out = run_script(SUBSCRIPTIONS, db_path, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "child True True" in out.stdout, out.stdout + out.stderr[-2000:]


# A processor that forks (multiprocessing.Process with the fork start method passes ``ctx`` to the
# child without pickling): the child's ctx calls raise one clear error rather than touching the
# parent's job state, whose locks a parent thread may hold.
CTX_IN_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import jobforge

    engine = jobforge.Engine(sys.argv[1], workers=1)

    @engine.processor("forks")
    def forks(ctx, payload):
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)
            code = 3
            try:
                ctx.progress(1, total=2)
            except jobforge.JobforgeError as exc:
                code = 0 if "forked child" in str(exc) else 2
            os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    with engine:
        print("child exit", engine.enqueue("forks").wait(timeout=30).result, flush=True)
    """
)


def test_processor_context_used_in_a_forked_child_raises_a_clear_error(db_path):
    out = run_script(CTX_IN_CHILD, db_path, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "child exit 0" in out.stdout, out.stdout + out.stderr[-2000:]
