"""Bad input fuzzing (issue 4, section 6): random payloads, options, types and ids thrown at the
Python API, random text at the bindings' JSON path, random and damaged database files.

The contract: every call either works or raises a ``jobforge.JobforgeError`` or a standard
``TypeError``/``ValueError``/``OverflowError``; nothing is written on an error; nothing crashes.
Database files are opened in a child process so that a crash fails a test instead of pytest."""

from __future__ import annotations

import json
import os
import queue
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
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
    """True for a value that JSON holds exactly and that is UTF-8 text (lone surrogates are
    refused by the bindings: see test_every_json_value_python_can_encode_is_accepted)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
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
    try:
        result, error = _call(fuzz_engine.wait, job_id, timeout=0)
    except TimeoutError:
        result, error = None, TimeoutError()
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


def test_enqueue_with_a_cyclic_payload_raises_value_error_and_writes_nothing(fuzz_engine):
    before = fuzz_engine.counts()
    cyclic = {"a": [1]}
    cyclic["a"].append(cyclic)
    with pytest.raises(ValueError, match="payload"):
        fuzz_engine.enqueue("noop", cyclic)
    with pytest.raises(ValueError, match=r"payloads\[1\]"):
        fuzz_engine.enqueue_many("noop", [1, cyclic])
    assert fuzz_engine.counts() == before


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_enqueue_with_a_payload_nested_too_deep_raises_value_error_and_writes_nothing(
    fuzz_engine, depth
):
    """jobforge/_json.py ``dumps`` catches the encoder's RecursionError, then looks for the
    culprit with ``_find_culprit``, itself recursive and called outside the ``try``: its own
    RecursionError escapes ``enqueue`` instead of the documented ValueError."""
    before = fuzz_engine.counts()
    deep: list = []
    for _ in range(depth):
        deep = [deep]
    with pytest.raises(ValueError, match="payload"):
        fuzz_engine.enqueue("noop", deep)
    with pytest.raises(ValueError, match="payload"):
        fuzz_engine.enqueue_many("noop", [1, deep])
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


@pytest.mark.parametrize(
    "text",
    ["\ud800", "a\udfffb", {"k\udc80": 1}, ["ok", "\udbff"]],
    ids=["alone", "in-text", "in-key", "in-list"],
)
def test_payload_with_a_lone_surrogate_round_trips_or_is_refused_naming_the_payload(
    fuzz_engine, text
):
    """``json.dumps`` encodes a str holding a lone surrogate (as ``\\udXXX``), so it is
    JSON-serialisable; jobforge/_json.py encodes with ``ensure_ascii=False``, which leaves the
    surrogate raw, and pybind11 cannot convert that str to UTF-8: ``enqueue`` raises pybind11's
    "incompatible function arguments" TypeError that names neither the payload nor the key.
    Either the value round-trips or the error names the payload's key path."""
    assert json.loads(json.dumps(text)) == text
    before = fuzz_engine.counts()
    try:
        job = fuzz_engine.enqueue("noop", text)
    except (TypeError, ValueError) as exc:
        assert fuzz_engine.counts() == before
        message = str(exc)
        assert "incompatible function arguments" not in message, f"unhelpful error: {message}"
        assert message.startswith("payload"), f"unhelpful error: {message}"
    else:
        assert fuzz_engine.get(job.id).payload == text


@pytest.mark.parametrize("payload", [10**309, {"a": -(10**400)}], ids=["int", "nested-int"])
def test_int_beyond_double_range_round_trips_or_is_refused_naming_its_key_path(
    fuzz_engine, payload
):
    """Python's json encodes any int, and JSON's grammar has no limit on digits; the C++
    validator (nlohmann ``json::accept`` in cpp/src/engine/engine.cpp) rejects numbers beyond
    the double range and ``enqueue`` says "payload is not valid JSON" about a valid JSON text.
    Either the value round-trips or the error names where the number is."""
    before = fuzz_engine.counts()
    try:
        job = fuzz_engine.enqueue("noop", payload)
    except (TypeError, ValueError) as exc:
        assert fuzz_engine.counts() == before
        assert "not valid JSON" not in str(exc), str(exc)[:120]
    else:
        assert fuzz_engine.get(job.id).payload == payload


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
        [
            "",
            " ",
            "NaN",
            "Infinity",
            "-Infinity",
            "1e999",
            "-1e999",
            "01",
            "1.",
            ".5",
            "+1",
            "[1,]",
            '{"a":1,}',
            "'x'",
            '"\\x41"',
            '"\\u12"',
            '"a\nb"',
            '"\x00"',
            "\x00",
            "[",
            '{"a"}',
            "tru",
            "nulll",
            "[1] [2]",
            '"\\ud800"',
            '"\\udc00\\ud800"',
            "\ufeff{}",
            "[" * 500 + "]" * 500,
            '{"a":' * 300 + "1" + "}" * 300,
            "[" * 500 + "]" * 499,
        ]
    ),  # fmt: skip
)


def _python_accepts(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):
        return False


# No shrinking: a failure on a long text shrinks for minutes; the failing text is reported as is.
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]


@settings(
    max_examples=300, deadline=None, phases=NO_SHRINK, suppress_health_check=list(HealthCheck)
)
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
            assert isinstance(exc, jobforge.ValidationError), repr(exc)
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
    # Python's json accepts NaN/Infinity, huge exponents and escaped lone surrogates ("\ud800",
    # which RFC 8259 allows in its grammar but leaves undefined): refusing those is fine.
    if any(word in text for word in ("NaN", "Infinity")) or "e999" in text.lower():
        return True
    try:
        json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
        return False
    except (ValueError, RecursionError, UnicodeEncodeError):
        return True


@pytest.mark.parametrize(
    "text", ["x" + "é" * 100, "[" + "€" * 30, '"' + "😀" * 40], ids=["e-acute", "euro", "emoji"]
)
def test_malformed_raw_payload_with_non_ascii_text_raises_validation_error(fuzz_engine, text):
    """cpp/src/engine/engine.cpp (job validation) quotes ``payload_json.substr(0, 80)`` in the
    message: 80 bytes, which can cut a multi-byte UTF-8 character in two. The bindings then
    cannot decode the message and Python gets a UnicodeDecodeError instead of the
    ValidationError."""
    before = fuzz_engine.counts()
    with pytest.raises(jobforge.ValidationError, match="payload"):
        fuzz_engine._core.enqueue("noop", text)
    assert fuzz_engine.counts() == before


def test_raw_payload_nested_deeper_than_python_can_decode_is_refused_or_readable(fuzz_engine):
    """The bindings accept JSON of any depth, but ``Job.payload`` decodes it with Python's
    json, which raises RecursionError past ~1000 levels, and a Python processor of that job
    fails with that RecursionError. Either the store refuses such a payload (ValueError naming
    the payload) or reading it back must work."""
    text = "[" * 5000 + "]" * 5000
    before = fuzz_engine.counts()
    try:
        record = fuzz_engine._core.enqueue("noop", text)
    except jobforge.ValidationError as exc:
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
                engine.check_integrity()
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
        self._spawn()

    def _spawn(self):
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
        """ "OK", "ERR <exception class>", "BAD <exception>", "HANG" or "CRASH ..."; after a
        crash or a hang a fresh child takes over."""
        try:
            self.process.stdin.write(path + "\n")
            self.process.stdin.flush()
            line = self._next(timeout)
        except BrokenPipeError:
            line = None
        if line is not None and line != "HANG":
            return line[len("DONE ") :]
        if line is None:
            code = self.process.wait(10)
            verdict = f"CRASH exit {code}: {self.process.stderr.read()[-600:]}"
        else:
            verdict = "HANG"
        self.close()
        self._spawn()
        return verdict

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


def _assert_no_bad(results, also=()):
    bad = [(name, verdict) for name, verdict in results if not verdict.startswith(("OK", "ERR"))]
    assert not bad, f"{len(bad)} of {len(results)} files: {bad[:10]}"
    for _, verdict in results:
        if verdict.startswith("ERR"):
            name = verdict.split()[1]
            assert name in {
                "StoreError", "JobforgeError", "InvalidTransition", "ValidationError", *also,
            }, verdict  # fmt: skip


@settings(max_examples=40, deadline=None, phases=NO_SHRINK, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(
    st.binary(max_size=9000),
    st.binary(min_size=100, max_size=9000).map(lambda b: b"SQLite format 3\x00" + b[16:]),
))  # fmt: skip
def test_random_bytes_as_a_database_raise_a_store_error_or_work(opener, tmp_path_factory, data):
    folder = str(tmp_path_factory.mktemp("randomdb"))
    results: list = []
    _check_opened(opener, folder, "random.db", data, results)
    _assert_no_bad(results)


@settings(max_examples=60, deadline=None, phases=NO_SHRINK, suppress_health_check=list(HealthCheck))
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
    # A damaged payload or result text: see test_payload_damaged_on_disk_raises_a_store_error.
    _assert_no_bad(results, also=("JSONDecodeError",))


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
            _check_opened(
                opener, str(tmp_path), f"header-{offset}-{value}.db", bytes(data), results
            )
    # A hot journal or WAL beside the file that is garbage.
    for suffix in ("-wal", "-journal", "-shm"):
        base = tmp_path / f"side{suffix.replace('-', '_')}.db"
        (tmp_path / (base.name + suffix)).write_bytes(os.urandom(33000))
        _check_opened(opener, str(tmp_path), base.name, real_database, results)
    _assert_no_bad(results)


@pytest.mark.parametrize("user_version", [-1, -2, -65530, -1694695930])
def test_database_with_a_negative_schema_version_raises_a_store_error(
    opener, real_database, tmp_path, user_version
):
    """cpp/src/store/sqlite_store.cpp ``migrate()`` reads ``PRAGMA user_version`` and runs
    ``kMigrations[v - 1]`` for v from version + 1: a negative version (one flipped bit in header
    bytes 60..63) indexes before the array. Observed: executes garbage as SQL (a
    UnicodeDecodeError for -1, -2), SIGBUS (-65530), SIGSEGV (-1694695930)."""
    path = tmp_path / "negative.db"
    path.write_bytes(real_database)
    con = sqlite3.connect(str(path))
    con.execute(f"PRAGMA user_version = {user_version}")
    con.commit()
    con.close()
    results = [("negative.db", opener.open(str(path)))]
    assert results[0][1] == "ERR StoreError", results


@pytest.mark.parametrize("column", ["payload", "result"])
def test_payload_or_result_damaged_on_disk_raises_a_store_error(tmp_path, column):
    """A bit flipped in a row's JSON text (found by the damaged-copies test above): reading
    ``job.payload`` / ``job.result`` raises Python's json.JSONDecodeError from
    jobforge/job.py (``_json.loads``), not a jobforge StoreError naming the job."""
    path = str(tmp_path / "jobs.db")
    engine = jobforge.Engine(path)
    job = engine.enqueue("noop", {"a": 1})
    con = sqlite3.connect(path)
    con.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", ('{"a": 1', job.id))
    con.commit()
    con.close()
    with pytest.raises(jobforge.StoreError, match=job.id):
        getattr(engine.get(job.id), column)  # noqa: B018
    engine.stop()
