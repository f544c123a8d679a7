"""Bad input fuzzing (issue 4, section 6): random payloads, options, types and ids thrown at the
Python API, random text at the bindings' JSON path, random and damaged database files.

The contract: every call either works or raises a ``jobforge.JobforgeError`` or a standard
``TypeError``/``ValueError``/``OverflowError``; nothing is written on an error; nothing crashes.
Database files are opened in a child process so that a crash fails a test instead of pytest."""

from __future__ import annotations

import json
import math
import os
import queue
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jobforge

ALLOWED = (jobforge.JobforgeError, TypeError, ValueError, OverflowError)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies --------------------------------------------------------------------------------


class Custom:
    def __repr__(self) -> str:
        return "<Custom>"


class Unreprable:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


# Text with anything Python strings can hold: lone surrogates, NUL, astral planes.
any_text = st.text(st.characters(codec=None, categories=None), max_size=40)
huge_ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**300]),
)
any_floats = st.floats(allow_nan=True, allow_infinity=True)
json_scalars = st.one_of(
    st.none(), st.booleans(), huge_ints, st.floats(allow_nan=False, allow_infinity=False), any_text
)
# Strictly JSON values: what json.loads(json.dumps(v)) gives back equal.
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(any_text, children, max_size=5)
    ),
    max_leaves=25,
)
weird_scalars = st.one_of(
    json_scalars,
    any_floats,
    st.binary(max_size=20),
    st.builds(Custom),
    st.just(object()),
    st.just(Ellipsis),
    st.just(1j),
    st.sets(st.integers(), max_size=3),
    st.frozensets(st.integers(), max_size=3),
)
weird_keys = st.one_of(any_text, st.integers(), any_floats, st.none(), st.booleans(), st.binary())
any_values = st.recursive(
    weird_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children),
        st.dictionaries(weird_keys, children, max_size=5),
    ),
    max_leaves=25,
)
option_values = st.one_of(
    st.none(),
    st.booleans(),
    huge_ints,
    st.integers(min_value=-3, max_value=12),
    any_floats,
    st.floats(min_value=-1, max_value=5),
    any_text,
    st.sampled_from(["urgent", "high", "normal", "low", "maintenance", "1", ""]),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.just(object()),
)
OPTION_NAMES = ("priority", "max_attempts", "timeout", "delay", "retry_delay", "backoff")
id_values = st.one_of(
    any_text,
    st.uuids().map(str),
    st.none(),
    huge_ints,
    st.binary(max_size=40),
    any_floats,
    st.just(object()),
    st.lists(any_text, max_size=2),
)
type_values = st.one_of(
    st.sampled_from(["noop", "sleep", "fuzz"]), any_text, st.none(), st.integers(), st.binary()
)


@st.composite
def backoffs(draw):
    kind = draw(st.sampled_from([jobforge.Fixed, jobforge.Linear, jobforge.Exponential]))
    args = draw(st.lists(option_values, min_size=0, max_size=2))
    kwargs = {}
    if kind is jobforge.Exponential:
        for name in ("factor", "max", "jitter"):
            if draw(st.booleans()):
                kwargs[name] = draw(option_values)
    return kind, args, kwargs


@st.composite
def options(draw):
    chosen = draw(st.lists(st.sampled_from(OPTION_NAMES), unique=True, max_size=len(OPTION_NAMES)))
    opts = {}
    for name in chosen:
        if name == "backoff" and draw(st.booleans()):
            kind, args, kwargs = draw(backoffs())
            try:
                opts[name] = kind(*args, **kwargs)
            except ALLOWED:
                opts[name] = None
        else:
            opts[name] = draw(option_values)
    # Never hold a job back for long: a started engine must still be able to drain it.
    return opts


# -- engines -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_engine(tmp_path_factory):
    """An engine that is never started: calls only read and write the store."""
    path = str(tmp_path_factory.mktemp("fuzz") / "jobs.db")
    engine = jobforge.Engine(path, workers=1, retry_delay=0.01)
    engine.register("fuzz", lambda ctx, payload: None)
    seed = engine.enqueue("fuzz", {"seed": True})
    done = engine.enqueue("noop", None)
    engine.cancel(done.id)
    engine._known_ids = [seed.id, done.id]
    yield engine
    engine.stop(wait=False)


@pytest.fixture(scope="module")
def echo_engine(tmp_path_factory):
    """A started engine whose processor returns the payload it received."""
    path = str(tmp_path_factory.mktemp("echo") / "jobs.db")
    engine = jobforge.Engine(path, workers=2, retry_delay=0.01, poll_interval=0.01)
    received = {}

    @engine.processor("echo", max_attempts=1)
    def echo(ctx, payload):
        received[ctx.job_id] = payload
        return payload

    engine.start()
    engine._received = received
    yield engine
    engine.stop(wait=False)


def _call(fn, *args, **kwargs):
    """Runs one API call; returns (result, error). An error outside ALLOWED fails the test."""
    try:
        return fn(*args, **kwargs), None
    except ALLOWED as exc:
        # The message must be printable: the user will read it.
        str(exc)
        return None, exc


def _is_json_value(value) -> bool:
    try:
        return json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError, RecursionError):
        return False


# -- the Python API ----------------------------------------------------------------------------


@FUZZ
@given(job_type=type_values, payload=any_values, opts=options())
def test_enqueue_succeeds_or_raises_a_documented_error_and_writes_nothing_on_error(
    fuzz_engine, job_type, payload, opts
):
    before = fuzz_engine.counts()
    job, error = _call(fuzz_engine.enqueue, job_type, payload, **opts)
    after = fuzz_engine.counts()
    if error is not None:
        assert after == before, f"{error!r} but counts changed"
        return
    assert after["total"] == before["total"] + 1
    assert after["queued"] == before["queued"] + 1
    assert job.type == job_type
    stored = fuzz_engine.get(job.id)
    assert stored is not None and stored.status == "queued"
    assert 1 <= stored.priority <= 10
    assert stored.max_attempts >= 1
    assert stored.timeout > 0
    assert json.loads(json.dumps(stored.payload)) == stored.payload


@FUZZ
@given(
    job_type=type_values,
    payloads=st.one_of(st.lists(any_values, max_size=6), any_values),
    opts=options(),
)
def test_enqueue_many_is_all_or_nothing_under_random_input(fuzz_engine, job_type, payloads, opts):
    before = fuzz_engine.counts()
    jobs, error = _call(fuzz_engine.enqueue_many, job_type, payloads, **opts)
    after = fuzz_engine.counts()
    if error is not None:
        assert after == before, f"{error!r} but counts changed"
        return
    assert after["total"] == before["total"] + len(jobs)
    assert len({job.id for job in jobs}) == len(jobs)
    for job in jobs:
        assert fuzz_engine.get(job.id).status == "queued"


@FUZZ
@given(
    job_id=id_values,
    known=st.booleans(),
    status=st.one_of(st.none(), st.sampled_from(jobforge.STATUSES), any_text, st.integers()),
    job_type=st.one_of(st.none(), type_values),
    limit=option_values,
    offset=option_values,
    level=st.one_of(st.none(), st.sampled_from(["debug", "info", "warning", "error"]), any_text),
    since=option_values,
    tail=st.booleans(),
)
def test_queries_and_control_with_random_ids_and_arguments(
    fuzz_engine, job_id, known, status, job_type, limit, offset, level, since, tail
):
    if known:
        job_id = random.choice(fuzz_engine._known_ids)
    before = fuzz_engine.counts()
    _call(fuzz_engine.get, job_id)
    _call(fuzz_engine.jobs, status=status, type=job_type, parent=job_id, limit=limit, offset=offset)
    _call(fuzz_engine.jobs, status=status, type=job_type, limit=limit, offset=offset)
    _call(fuzz_engine.logs, job_id, level=level, since=since, limit=limit, after=offset, tail=tail)
    assert fuzz_engine.counts() == before
    # The engine is not started: wait may only time out, or refuse the id / the timeout.
    result, error = _call(fuzz_engine.wait, job_id, timeout=0)
    assert error is not None or result.is_final
    cancelled, error = _call(fuzz_engine.cancel, job_id)
    assert error is not None or isinstance(cancelled, bool)
    retried, error = _call(fuzz_engine.retry, job_id)
    assert error is not None or isinstance(retried, bool)
    if not known:
        # Random ids match no job (a uuid4 is never a jobforge id): nothing may change.
        assert not cancelled and not retried
        assert fuzz_engine.counts() == before


@FUZZ
@given(job_id=id_values, timeout=option_values)
def test_wait_with_random_ids_and_timeouts(fuzz_engine, job_id, timeout):
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0.05:
        timeout = 0.05  # a known queued job would be waited for that long
    if timeout is None:
        return  # unbounded wait on a job that never runs: not a bad input
    try:
        fuzz_engine.wait(job_id, timeout=timeout)
    except (*ALLOWED, TimeoutError):
        pass


def test_enqueue_with_a_cyclic_or_deep_payload_raises_value_error_and_writes_nothing(fuzz_engine):
    before = fuzz_engine.counts()
    cyclic = {"a": [1]}
    cyclic["a"].append(cyclic)
    deep = []
    for _ in range(100_000):
        deep = [deep]
    for payload in (cyclic, deep):
        with pytest.raises(ValueError, match="payload"):
            fuzz_engine.enqueue("noop", payload)
        with pytest.raises(ValueError, match="payload"):
            fuzz_engine.enqueue_many("noop", [1, payload])
    assert fuzz_engine.counts() == before


def test_payload_object_whose_repr_raises_still_gets_the_documented_type_error(fuzz_engine):
    """jobforge/_json.py ``_short`` calls ``repr()`` on the offending value to build the message;
    a value whose ``__repr__`` raises makes ``enqueue`` raise that exception instead of the
    documented TypeError naming the key path."""
    before = fuzz_engine.counts()
    with pytest.raises(TypeError, match=r'payload\["a"\]'):
        fuzz_engine.enqueue("noop", {"a": Unreprable()})
    assert fuzz_engine.counts() == before


# -- round trip --------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(payloads=st.lists(json_values, min_size=1, max_size=4), many=st.booleans())
def test_accepted_json_payload_comes_back_equal_from_get_and_into_the_processor(
    echo_engine, payloads, many
):
    if many:
        jobs, error = _call(echo_engine.enqueue_many, "echo", payloads)
        if error is not None:
            assert not all(_is_json_value(p) for p in payloads), error
            return
    else:
        jobs = []
        for payload in payloads:
            job, error = _call(echo_engine.enqueue, "echo", payload)
            if error is None:
                jobs.append(job)
            else:
                assert not _is_json_value(payload), error
        payloads = [job.payload for job in jobs]
    for job, payload in zip(jobs, payloads):
        assert echo_engine.get(job.id).payload == payload
        done = echo_engine.wait(job.id, timeout=10)
        assert done.status == "completed", done.error
        assert echo_engine._received[job.id] == payload
        assert done.result == payload


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=json_values)
def test_every_json_value_python_can_encode_is_accepted(fuzz_engine, payload):
    """A value ``json.dumps`` encodes is JSON-serialisable: jobforge must take it (the docs only
    refuse what is not JSON-serialisable). Lone surrogates are the hard case: JSON escapes them
    as \\udXXX, but they are not UTF-8."""
    job = fuzz_engine.enqueue("noop", payload)
    assert fuzz_engine.get(job.id).payload == payload


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", {"k\udc80": 1}])
def test_payload_with_a_lone_surrogate_round_trips_or_is_refused_naming_the_payload(
    fuzz_engine, text
):
    before = fuzz_engine.counts()
    try:
        job = fuzz_engine.enqueue("noop", text)
    except (TypeError, ValueError) as exc:
        assert fuzz_engine.counts() == before
        assert "payload" in str(exc), f"unhelpful error: {exc}"
    else:
        assert fuzz_engine.get(job.id).payload == text


# -- the bindings' JSON path -------------------------------------------------------------------

valid_json_texts = json_values.map(json.dumps) | json_values.map(
    lambda v: json.dumps(v, ensure_ascii=False, indent=1)
)
garbage_texts = st.one_of(
    any_text,
    st.binary(max_size=60).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
    valid_json_texts.map(lambda s: s[: len(s) // 2]),
    valid_json_texts.map(lambda s: s + "]"),
    st.sampled_from(
        ["", " ", "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "01", "1.", ".5", "+1",
         "[1,]", '{"a":1,}', "'x'", '"\\x41"', '"\\u12"', '"a\nb"', '"\x00"', "\x00", "[",
         '{"a"}', "tru", "nulll", "[1] [2]", '"\\ud800"', '"\\udc00\\ud800"', "\ufeff{}",
         "[" * 10_000 + "]" * 10_000, '{"a":' * 3000 + "1" + "}" * 3000]
    ),  # fmt: skip
)


def _python_accepts(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):
        return False


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.one_of(valid_json_texts, garbage_texts))
def test_raw_payload_json_is_refused_naming_the_payload_or_stored_as_given(fuzz_engine, text):
    core = fuzz_engine._core
    before = fuzz_engine.counts()
    try:
        record = core.enqueue("noop", text)
    except ALLOWED as exc:
        assert fuzz_engine.counts() == before
        if isinstance(exc, TypeError):
            # pybind11 cannot pass a str that is not UTF-8 (lone surrogates) to C++.
            assert not _utf8(text)
        else:
            assert isinstance(exc, ValueError), repr(exc)
            assert "payload" in str(exc)
            assert not _python_accepts(text) or not _utf8(text) or _nonstandard(text), (
                f"valid JSON {text[:80]!r} refused: {exc}"
            )
        return
    assert fuzz_engine.counts()["total"] == before["total"] + 1
    stored = core.get(record.id)
    assert stored.payload_json == text
    # What was accepted must be readable back through the Python API.
    job = fuzz_engine.get(record.id)
    try:
        job.payload  # noqa: B018
    except ALLOWED:
        pass


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _nonstandard(text: str) -> bool:
    # Python's json accepts NaN/Infinity and huge exponents; RFC 8259 JSON has no NaN/Infinity.
    return any(word in text for word in ("NaN", "Infinity")) or "e999" in text.lower()


def test_raw_payload_nested_deeper_than_python_can_decode_is_refused_or_readable(fuzz_engine):
    """The bindings accept JSON of any depth, but ``Job.payload`` decodes it with Python's
    json, which raises RecursionError past ~1000 levels, and a Python processor of that job
    fails with that RecursionError. Either the store refuses such a payload (ValueError naming
    the payload) or reading it back must work."""
    text = "[" * 5000 + "]" * 5000
    before = fuzz_engine.counts()
    try:
        record = fuzz_engine._core.enqueue("noop", text)
    except ValueError as exc:
        assert "payload" in str(exc)
        assert fuzz_engine.counts() == before
        return
    job = fuzz_engine.get(record.id)
    try:
        job.payload  # noqa: B018
    except ALLOWED:
        pass  # a documented error is fine; RecursionError is not


# -- database files ----------------------------------------------------------------------------

OPENER = textwrap.dedent(
    """
    import gc, sys, traceback
    import jobforge

    ALLOWED = (jobforge.JobforgeError, TypeError, ValueError, OverflowError)
    print("READY", flush=True)
    for line in sys.stdin:
        path = line.rstrip("\\n")
        verdict = "OK"
        try:
            engine = jobforge.Engine(path, workers=1)
            try:
                engine.counts()
                engine.stats()
                engine.jobs(limit=50)
                engine.active()
                for job in engine.jobs(limit=5):
                    engine.get(job.id)
                    engine.logs(job.id)
                    job.payload
                    job.result
                engine._core.integrity_check()
                job = engine.enqueue("noop", {"after": "damage"})
                engine.get(job.id)
                engine.cancel(job.id)
                engine.retry(job.id)
            finally:
                engine.stop(wait=False)
                del engine
                gc.collect()
        except ALLOWED as exc:
            verdict = "ERR " + type(exc).__name__
        except BaseException as exc:
            verdict = "BAD " + type(exc).__name__ + ": " + str(exc)[:200].replace("\\n", " ")
        print("DONE " + verdict, flush=True)
    """
)


class Opener:
    """One child process that opens database files on request; a crash or a hang there is
    reported against the file that caused it."""

    def __init__(self):
        env = {**os.environ, "SKBUILD_EDITABLE_VERBOSE": "0"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.process = subprocess.Popen(
            [sys.executable, "-c", OPENER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        assert self._next(60) == "READY"

    def _pump(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _next(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return "HANG"
            if line is None or line in ("READY",) or line.startswith("DONE "):
                return line
            # anything else is noise (build logs)

    def open(self, path: str, timeout: float = 20.0) -> str:
        self.process.stdin.write(path + "\n")
        self.process.stdin.flush()
        line = self._next(timeout)
        if line is None:
            code = self.process.wait(10)
            return f"CRASH exit {code}: {self.process.stderr.read()[-2000:]}"
        if line == "HANG":
            return "HANG"
        return line[len("DONE ") :]

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture(scope="module")
def opener():
    child = Opener()
    yield child
    child.close()


@pytest.fixture(scope="module")
def real_database(tmp_path_factory):
    """The bytes of a real jobforge database (WAL checkpointed into the main file) with jobs of
    every kind: queued, completed, failed, cancelled, with logs, results and payloads."""
    folder = tmp_path_factory.mktemp("real")
    path = str(folder / "jobs.db")
    engine = jobforge.Engine(path, workers=2, retry_delay=0.01, poll_interval=0.01)

    @engine.processor("work", max_attempts=1)
    def work(ctx, payload):
        ctx.log("info", "working", n=payload["n"])
        ctx.progress(1, total=2, message="half")
        if payload["n"] % 5 == 0:
            raise RuntimeError("boom")
        return {"n": payload["n"], "text": "x" * payload["n"]}

    engine.start()
    jobs = engine.enqueue_many("work", [{"n": n, "pad": "y" * (n * 37)} for n in range(120)])
    for job in jobs:
        job.wait(timeout=20)
    engine.stop()
    engine.enqueue_many("work", [{"n": n} for n in range(40)])
    engine.cancel(engine.enqueue("noop", None, delay=100))
    del engine
    # A copy through SQLite's backup API holds every committed page in one file.
    copy = str(folder / "copy.db")
    source = sqlite3.connect(path)
    target = sqlite3.connect(copy)
    source.backup(target)
    target.execute("PRAGMA journal_mode=DELETE")
    target.close()
    source.close()
    with open(copy, "rb") as f:
        data = f.read()
    assert data.startswith(b"SQLite format 3\x00") and len(data) > 8 * 4096
    return data


def _check_opened(opener, folder, name, data, results):
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    verdict = opener.open(path)
    results.append((name, verdict))
    return verdict


def _assert_no_bad(results):
    bad = [(name, verdict) for name, verdict in results if not verdict.startswith(("OK", "ERR"))]
    assert not bad, f"{len(bad)} of {len(results)} files: {bad[:10]}"
    for _, verdict in results:
        if verdict.startswith("ERR"):
            name = verdict.split()[1]
            assert name in {
                "StoreError", "JobforgeError", "InvalidTransition", "ValueError", "TypeError",
            }, verdict  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(
    st.binary(max_size=9000),
    st.binary(min_size=100, max_size=9000).map(lambda b: b"SQLite format 3\x00" + b[16:]),
))  # fmt: skip
def test_random_bytes_as_a_database_raise_a_store_error_or_work(opener, tmp_path_factory, data):
    folder = str(tmp_path_factory.mktemp("randomdb"))
    results: list = []
    _check_opened(opener, folder, "random.db", data, results)
    _assert_no_bad(results)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    where=st.sampled_from(["header", "page1", "middle", "anywhere", "truncate", "zero_page"]),
    seed=st.integers(0, 2**32 - 1),
    flips=st.integers(1, 24),
)
def test_damaged_copies_of_a_real_database_raise_a_store_error_or_work(
    opener, real_database, tmp_path_factory, where, seed, flips
):
    rng = random.Random(seed)
    data = bytearray(real_database)
    size = len(data)
    if where == "truncate":
        data = data[: rng.randrange(0, size)]
    elif where == "zero_page":
        page = int.from_bytes(data[16:18], "big") or 65536
        start = rng.randrange(0, size // page) * page
        data[start : start + page] = bytes(page)
    else:
        low, high = {
            "header": (0, 100),
            "page1": (100, 4096),
            "middle": (size // 4, 3 * size // 4),
            "anywhere": (0, size),
        }[where]
        for _ in range(flips):
            data[rng.randrange(low, high)] ^= 1 << rng.randrange(8)
    folder = str(tmp_path_factory.mktemp("damaged"))
    results: list = []
    _check_opened(opener, folder, f"{where}-{seed}.db", bytes(data), results)
    _assert_no_bad(results)


def test_a_real_database_and_every_header_field_garbled_one_at_a_time(
    opener, real_database, tmp_path
):
    results: list = []
    assert _check_opened(opener, str(tmp_path), "intact.db", real_database, results) == "OK"
    # Each field of the 100-byte header set to 0x00, 0xFF and a random value.
    rng = random.Random(7)
    for offset in range(0, 100, 2):
        for value in (0x00, 0xFF, rng.randrange(256)):
            data = bytearray(real_database)
            data[offset] = value
            data[offset + 1] = value
            _check_opened(opener, str(tmp_path), f"header-{offset}-{value}.db", bytes(data), results)
    # A hot journal or WAL beside the file that is garbage.
    for suffix in ("-wal", "-journal", "-shm"):
        base = tmp_path / f"side{suffix.replace('-', '_')}.db"
        (tmp_path / (base.name + suffix)).write_bytes(os.urandom(33000))
        _check_opened(opener, str(tmp_path), base.name, real_database, results)
    _assert_no_bad(results)

