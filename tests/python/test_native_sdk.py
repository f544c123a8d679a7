"""The C++ SDK: examples/native_processor is built here with CMake against jobforge's installed
headers only, imported, and its processor registered into a running engine with
engine.register_native."""

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import jobforge
import jobforge.sdk

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "native_processor"


@pytest.fixture(scope="module")
def wordcount(tmp_path_factory):
    """The example module, freshly built into a temporary folder."""
    if shutil.which("cmake") is None:
        pytest.fail("cmake is needed to build the SDK example (scripts/setup.sh installs it)")
    build = tmp_path_factory.mktemp("native_processor_build")
    pybind11_dir = subprocess.run(
        [sys.executable, "-m", "pybind11", "--cmakedir"], check=True, capture_output=True, text=True
    ).stdout.strip()
    configure = [
        "cmake", "-S", str(EXAMPLE), "-B", str(build),
        f"-DJOBFORGE_INCLUDE_DIR={jobforge.sdk.get_include()}",
        f"-Dpybind11_DIR={pybind11_dir}",
        f"-DPython_EXECUTABLE={sys.executable}",
        f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={build / 'out'}",
    ]  # fmt: skip
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    for cmd in (configure, ["cmake", "--build", str(build), "-j", "2"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    sys.path.insert(0, str(build / "out"))
    try:
        import jobforge_wordcount
    finally:
        sys.path.remove(str(build / "out"))
    return jobforge_wordcount


def _text(path, lines=2000):
    text = "".join(f"line {i} has five words\n" for i in range(lines))
    path.write_text(text)
    return text


def test_example_processor_runs_jobs(engine, wordcount, tmp_path):
    text = _text(tmp_path / "book.txt")
    engine.register_native("wordcount", wordcount.processor(), timeout=60)
    assert "wordcount" in engine.processor_types
    with engine:
        done = engine.enqueue("wordcount", {"path": str(tmp_path / "book.txt")}).wait(timeout=30)
    assert done.status == "completed", done.error
    assert done.result == {
        "path": str(tmp_path / "book.txt"),
        "lines": text.count("\n"),
        "words": len(text.split()),
        "bytes": len(text.encode()),
    }
    assert done.outcome == {"lines": text.count("\n"), "words": len(text.split())}
    assert done.stage == "counting"
    assert any(line.message.startswith("wordcount: counting") for line in engine.logs(done))


def test_example_payload_is_checked_at_enqueue(engine, wordcount):
    engine.register_native("wordcount", wordcount.processor())
    with pytest.raises(ValueError, match="'path'"):
        engine.enqueue("wordcount", {"file": "x"})
    assert engine.stats()["total"] == 0


def test_example_failure_is_retried_then_fails(engine, wordcount, tmp_path):
    engine.register_native("wordcount", wordcount.processor(), max_attempts=2)
    with engine:
        done = engine.enqueue("wordcount", {"path": str(tmp_path / "missing.txt")}).wait(30)
    assert done.status == "failed"
    assert done.attempts == 2
    assert "cannot open" in done.error and "missing.txt" in done.error


def test_example_job_is_cancelled_while_running(engine, wordcount, tmp_path, wait_until):
    _text(tmp_path / "book.txt")
    engine.register_native("wordcount", wordcount.processor())
    with engine:
        job = engine.enqueue(
            "wordcount",
            {"path": str(tmp_path / "book.txt"), "chunk_bytes": 64, "pause_per_chunk": 0.01},
        )
        wait_until(lambda: job.refresh().status == "running", timeout=30, what="the job to run")
        assert engine.cancel(job)
        done = job.wait(timeout=30)
    assert done.status == "cancelled"


def test_native_registration_is_replayed_in_worker_processes(make_engine, wordcount, tmp_path):
    text = _text(tmp_path / "book.txt", lines=10)
    engine = make_engine(workers=1)
    engine.register_native("wordcount", wordcount.processor())
    engine.start(processes=1)  # this process then runs no jobs: the worker must have it
    try:
        assert not engine._core.running
        done = engine.enqueue("wordcount", {"path": str(tmp_path / "book.txt")}).wait(timeout=60)
    finally:
        engine.stop()
    assert done.status == "completed", done.error
    assert done.result["words"] == len(text.split())


def _capsule(pointer, name):
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new(pointer, name, None)


def test_register_native_refuses_what_is_not_a_processor(engine):
    with pytest.raises(TypeError, match="capsule"):
        engine.register_native("x", object())
    marker = ctypes.c_int(1)
    with pytest.raises(ValueError, match="jobforge.processor.v1"):
        engine.register_native("x", _capsule(ctypes.addressof(marker), b"someone.else"))
    assert "x" not in engine.processor_types


class _Export(ctypes.Structure):
    _fields_ = [("abi_version", ctypes.c_uint32), ("size", ctypes.c_uint32),
                ("stdlib", ctypes.c_char_p)]  # fmt: skip


def test_register_native_refuses_another_sdk_version_or_library(engine):
    name = jobforge.sdk.CAPSULE_NAME.encode()
    future = _Export(jobforge.sdk.ABI_VERSION + 1, 64, jobforge.sdk.STDLIB.encode())
    with pytest.raises(ValueError, match="SDK ABI version"):
        engine.register_native("x", _capsule(ctypes.addressof(future), name))
    if jobforge.sdk.STDLIB == "libc++":
        pytest.skip("the foreign library below is this engine's own")
    # The right version but another C++ library: the size is read from a real build below.
    foreign = _Export(jobforge.sdk.ABI_VERSION, 0, b"libc++")
    with pytest.raises(ValueError, match="ProcessorExport|C\\+\\+ library"):
        engine.register_native("x", _capsule(ctypes.addressof(foreign), name))
    assert "x" not in engine.processor_types


def test_sdk_headers_are_found():
    include = Path(jobforge.sdk.get_include())
    for header in ("sdk.hpp", "sdk_python.hpp", "processor.hpp", "errors.hpp"):
        assert (include / "jobforge" / header).is_file()
    assert os.path.isabs(include)
