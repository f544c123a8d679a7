"""The reference pipeline (python -m jobforge.examples.library_import) on a generated tree: its
manifest must match what os.walk + os.stat + hashlib find."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import subprocess
import sys
import time

import pytest

from jobforge.examples import library_import


def make_tree(root, files=300, seed=7):
    rng = random.Random(seed)
    dirs = [root]
    for i in range(30):  # nested: each new folder goes under a random existing one
        d = os.path.join(rng.choice(dirs), f"dir{i:02d}")
        os.makedirs(d)
        dirs.append(d)
    for i in range(files):
        name = f"track {i:04d}.{rng.choice(['flac', 'mp3', 'txt'])}"
        with open(os.path.join(rng.choice(dirs), name), "wb") as f:
            f.write(rng.randbytes(rng.randrange(0, 5000)))
    os.makedirs(os.path.join(root, "empty", "deeper"))


def expected(root):
    rows = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            st = os.stat(path)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            rows[rel] = (st.st_size, st.st_mtime_ns / 1e9, digest)
    return rows


@pytest.mark.timeout(180)
def test_script_writes_a_manifest_matching_os_walk_and_hashlib(tmp_path):
    root = tmp_path / "library"
    root.mkdir()
    make_tree(str(root))
    out = tmp_path / "out"
    db = tmp_path / "jobs.db"
    proc = subprocess.run(
        [sys.executable, "-m", "jobforge.examples.library_import", str(root), "--db", str(db),
         "--out", str(out), "--workers", "3", "--chunk", "40"],
        capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "300 files" in proc.stdout
    want = expected(str(root))
    assert len(want) == 300

    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == sorted(want)
    for r in rows:
        size, mtime, digest = want[r["path"]]
        assert int(r["size"]) == size and r["sha256"] == digest
        assert abs(float(r["mtime"]) - mtime) < 1e-6

    doc = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert doc["count"] == 300 and doc["error_count"] == 0
    assert doc["bytes"] == sum(v[0] for v in want.values())
    assert {r["path"]: (r["size"], r["sha256"]) for r in doc["files"]} == {
        k: (v[0], v[2]) for k, v in want.items()
    }

    # the jobs stay in --db, with the pipeline's priorities and one stage job per file
    import jobforge

    with jobforge.Engine(str(db)) as engine:
        (scan,) = engine.jobs(type="scan")
        (stage,) = engine.jobs(type="batch_stage")
        (export,) = engine.jobs(type="export")
        assert (scan.priority, stage.priority, export.priority) == (5, 3, 1)
        assert stage.result["total"] == 300 and stage.result["completed"] == 300
        staged = engine.jobs(parent=stage, limit=1000)
        assert len(staged) == 300 and {j.type for j in staged} == {"stat"}
        sums = engine.jobs(type="checksum", limit=100)
        assert len(sums) == 8 and all(j.priority == 3 for j in sums)  # 300 files / 40 per job
        assert export.status == "completed"


def test_system_scan_and_retention_run_a_cleanup(tmp_path):
    root = tmp_path / "lib"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.bin").write_bytes(b"abc")
    (root / ".hidden").write_bytes(b"")
    outcome = library_import.run(str(root), out=str(tmp_path / "o"), system_scan=True,
                                 retention=3600, hidden=False, progress=False)  # fmt: skip
    assert outcome.ok and outcome.scan.priority == 7 and not outcome.scan.user_initiated
    assert outcome.cleanup.status == "completed" and outcome.cleanup.priority == 10
    assert outcome.manifest["count"] == 1
    sha = hashlib.sha256(b"abc").hexdigest()
    doc = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert doc["files"][0]["path"] == "a/b/x.bin" and doc["files"][0]["sha256"] == sha


def test_bad_input_names_the_value_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="DIR must be a directory"):
        library_import.run(str(tmp_path / "missing"), out=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="chunk must be at least 1, got 0"):
        library_import.run(str(tmp_path), out=str(tmp_path / "o"), chunk=0)
    assert not (tmp_path / "o").exists()


@pytest.mark.timeout(180)
def test_ctrl_c_cancels_the_pipeline_and_writes_no_manifest(tmp_path):
    import signal

    import jobforge

    root = tmp_path / "library"
    for d in range(20):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(500):
            (root / f"d{d}" / f"{i}.bin").write_bytes(b"x" * i)
    db, out = tmp_path / "jobs.db", tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobforge.examples.library_import", str(root), "--db", str(db),
         "--out", str(out), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    observer = jobforge.Engine(str(db))  # not started: reads the file, runs nothing
    try:
        deadline = time.monotonic() + 60
        while not observer.jobs(type="batch_checksum") and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        assert observer.jobs(type="batch_checksum"), "the batches were never stored"
        proc.send_signal(signal.SIGINT)  # while the batches run
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupted" in err
        assert not (out / "manifest.csv").exists()
        counts = observer.counts()
        exports = observer.jobs(type="export")
    finally:
        observer.stop()
    assert counts["queued"] == counts["running"] == counts["created"] == 0
    assert all(j.status == "cancelled" for j in exports)
    assert counts["cancelled"] > 0
