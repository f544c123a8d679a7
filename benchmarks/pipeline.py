#!/usr/bin/env python3
"""The reference pipeline (jobforge.examples.library_import) against plain Python, in files/s.

    python benchmarks/pipeline.py [--files 100000] [--runs 3] [--workers N] [--tmpdir DIR]

Generates a tree of ``--files`` small files (0-2 KiB, random bytes) in 100 nested folders, then,
trials interleaved, median of ``--runs``:

- **jobforge**: ``library_import.run``: a native ``scan``, a batch of one native ``stat`` job
  per file, a batch of native ``checksum`` jobs (256 files each), and the ``export`` job writing
  manifest.csv and manifest.json; timed from the start of the engine on a new SQLite file to
  the manifest on disk (every job stored, run and finished durably);
- **plain Python**: one thread, ``os.walk`` + ``os.stat`` + ``hashlib.sha256`` of each file's bytes
  + the same manifest (CSV and JSON, sorted), written the same way.

Both read the files from the page cache (the tree was just written, and the baseline reads it
the same number of times): this measures the work, not the disk. The two manifests are compared
after the first trial. files/s = files / wall seconds.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

from jobforge.examples import library_import


def make_tree(root: str, files: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    dirs = []
    for a in range(10):
        for b in range(10):
            d = os.path.join(root, f"artist{a:02d}", f"album{b:02d}")
            os.makedirs(d)
            dirs.append(d)
    total = 0
    for i in range(files):
        data = rng.randbytes(rng.randrange(0, 2048))
        with open(os.path.join(dirs[i % len(dirs)], f"track{i:06d}.flac"), "wb") as f:
            f.write(data)
        total += len(data)
    return total


def baseline(root: str, out: str) -> int:
    """The same work in one thread of plain Python."""
    rows = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            st = os.stat(path)
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            rows.append({"path": rel, "size": st.st_size, "mtime": st.st_mtime_ns / 1e9,
                         "sha256": h.hexdigest()})  # fmt: skip
    rows.sort(key=lambda r: r["path"])
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "manifest.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=library_import.MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    doc = {"root": root, "count": len(rows), "bytes": sum(r["size"] for r in rows),
           "errors": [], "error_count": 0, "files": rows}  # fmt: skip
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False)
    return len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="jobforge-pipeline-", dir=args.tmpdir)
    try:
        root = os.path.join(work, "library")
        t0 = time.perf_counter()
        size = make_tree(root, args.files)
        print(f"tree: {args.files:,} files, {size / 1e6:.1f} MB in 100 folders "
              f"(made in {time.perf_counter() - t0:.1f}s)", flush=True)  # fmt: skip
        times: dict[str, list[float]] = {"jobforge": [], "python": []}
        for trial in range(args.runs):
            db = os.path.join(work, f"jobs{trial}.db")
            out_j = os.path.join(work, f"out-j{trial}")
            outcome = library_import.run(root, db=db, out=out_j, workers=args.workers,
                                         progress=False)  # fmt: skip
            if not outcome.ok or outcome.manifest["count"] != args.files:
                print(f"pipeline failed: {outcome}", file=sys.stderr)
                return 1
            times["jobforge"].append(outcome.seconds)
            steps = [("scan", outcome.scan), ("stage", outcome.stage_batch),
                     ("checksum", outcome.checksum_batch), ("export", outcome.export)]  # fmt: skip
            print("  steps: " + ", ".join(f"{n} {j.duration:.2f}s" for n, j in steps), flush=True)
            out_p = os.path.join(work, f"out-p{trial}")
            t = time.perf_counter()
            baseline(root, out_p)
            times["python"].append(time.perf_counter() - t)
            print(f"trial {trial + 1}: jobforge {outcome.seconds:.2f}s, "
                  f"python {times['python'][-1]:.2f}s", flush=True)  # fmt: skip
            if trial == 0:
                with open(os.path.join(out_j, "manifest.csv"), "rb") as a, \
                        open(os.path.join(out_p, "manifest.csv"), "rb") as b:  # fmt: skip
                    if a.read() != b.read():
                        print("the two manifest.csv files differ", file=sys.stderr)
                        return 1
            os.remove(db)
        j = args.files / statistics.median(times["jobforge"])
        p = args.files / statistics.median(times["python"])
        print(f"jobforge pipeline ({outcome_workers(args.workers)} workers): {j:,.0f} files/s")
        print(f"plain Python, 1 thread:          {p:,.0f} files/s")
        print(f"ratio jobforge / python:         {j / p:.2f}  (median of {args.runs})")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def outcome_workers(workers):
    return workers or max(2, os.cpu_count() or 2)


if __name__ == "__main__":
    sys.exit(main())
