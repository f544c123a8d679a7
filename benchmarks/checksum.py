#!/usr/bin/env python3
"""Checksum throughput (MB/s): the native ``checksum`` processor against the disk and Python.

    python benchmarks/checksum.py [--quick] [--runs 3] [--tmpdir DIR] [--json out.json] [--keep]

The same files are read by every method, in the same run, trials interleaved (median of
``--runs``): a plain Python loop of 1 MiB reads (the read baseline: what the disk, or the page
cache, gives to the same reads the processor makes) and ``cat`` into /dev/null, Python ``hashlib.sha256`` and ``xxhash.xxh3_64`` (1 MiB reads),
and a ``checksum`` job through ``jobforge.Engine`` with sha256, xxh3, and both at once (timed
from enqueue to its completion, so the job's overhead is included). Two regimes: **cold**, each
file's pages dropped from the page cache before every method (``posix_fadvise(DONTNEED)``, no
root needed; the reads come from the disk) and **warm** (the files are in the page cache: reads
cost a copy, the hash is what is left). A third set of rows hashes many small files (files/s).
MB is 10^6 bytes. The table is in run.py's format; the JSON goes to
``benchmarks/results/<date>-<commit>-checksum.json``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (run.py's table format, medians and metadata)

SIZES = {
    # (large files, MiB each, small files, bytes each)
    "full": (16, 64, 20_000, 16 * 1024),
    "quick": (4, 64, 4_000, 16 * 1024),
}
CHUNK = 1 << 20


def make_files(folder: Path, count: int, size: int, prefix: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    block = os.urandom(min(size, 8 << 20))
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{i:06d}.bin"
        with open(path, "wb") as f:
            left = size
            while left > 0:
                # A per-file prefix keeps the files distinct; the bytes themselves do not matter.
                piece = (i.to_bytes(8, "little") + block)[: min(left, len(block))]
                f.write(piece)
                left -= len(piece)
            f.flush()
            os.fsync(f.fileno())
        paths.append(str(path))
    return paths


def evict(paths: list[str]) -> None:
    """Drops the files' pages from the page cache, so the next read comes from the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths: list[str]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(CHUNK):
                pass


def m_cat(paths: list[str]) -> None:
    # xargs keeps the command line short for many small files.
    subprocess.run(
        ["xargs", "-0", "cat"], input="\0".join(paths).encode(), stdout=subprocess.DEVNULL,
        check=True,
    )  # fmt: skip


def m_read(paths: list[str]) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(view):
                pass


def _py_hash(make) -> Callable[[list[str]], None]:
    def run(paths: list[str]) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        for p in paths:
            h = make()
            with open(p, "rb", buffering=0) as f:
                while n := f.readinto(view):
                    h.update(view[:n])
            h.hexdigest()

    return run


class NativeChecksum:
    """One started engine; each call is one checksum job over all the paths."""

    def __init__(self, folder: Path) -> None:
        import jobforge

        self.engine = jobforge.Engine(str(folder / "bench.db"), workers=2)
        self.engine.start()

    def method(self, algorithms: list[str]) -> Callable[[list[str]], None]:
        def run(paths: list[str]) -> None:
            job = self.engine.enqueue("checksum", {"paths": paths, "algorithms": algorithms})
            done = job.wait(timeout=3600)
            if done.status != "completed" or done.result["errors"]:
                raise RuntimeError(f"checksum job ended {done.status}: {done.error}")

        return run

    def close(self) -> None:
        self.engine.stop()


def timed(fn: Callable[[list[str]], None], paths: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of fn(paths): this process's CPU (the engine's threads
    included) plus that of children it waited for (cat)."""
    import resource

    def cpu() -> float:
        me, kids = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    fn(paths)
    return time.perf_counter() - t0, max(cpu() - c0, 1e-9)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 MB and 4,000 small files")
    ap.add_argument("--runs", type=int, default=3, help="trials per figure (median; default 3)")
    ap.add_argument("--tmpdir", default=None, help="where the files go (the disk you care about)")
    ap.add_argument("--json", dest="json_out", default=None, help="where to write the JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    try:
        import xxhash
    except ImportError:
        ap.error("needs the xxhash package (pip install xxhash; it is in the test extra)")
    mode = "quick" if args.quick else "full"
    n_large, mib, n_small, small_size = SIZES[mode]
    tmp = Path(tempfile.mkdtemp(prefix="jobforge-checksum-bench-", dir=args.tmpdir))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=bench.ROOT).stdout.strip() or "unknown"  # fmt: skip
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "cpp", "bindings", "python"],
                                capture_output=True, text=True, cwd=bench.ROOT).stdout.strip())  # fmt: skip
    meta = {
        "commit": commit, "dirty": dirty, "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "store": "sqlite", "workers": 2, "cores": os.cpu_count(), "mode": mode, "runs": args.runs,
        "loadavg": os.getloadavg(), "tmpdir": str(tmp),
    }  # fmt: skip
    rows: list[dict] = []
    raw: dict[str, list[float]] = {}
    native = None
    try:
        bench.log(
            f"writing {n_large} × {mib} MiB and {n_small:,} × {small_size // 1024} KiB in {tmp}"
        )
        large = make_files(tmp / "large", n_large, mib << 20, "large")
        small = make_files(tmp / "small", n_small, small_size, "small")
        large_mb = n_large * (mib << 20) / 1e6
        native = NativeChecksum(tmp)
        methods: dict[str, Callable[[list[str]], None]] = {
            "cat": m_cat,
            "read": m_read,
            "hashlib sha256": _py_hash(hashlib.sha256),
            "xxhash xxh3": _py_hash(xxhash.xxh3_64),
            "native sha256": native.method(["sha256"]),
            "native xxh3": native.method(["xxh3"]),
            "native sha256+xxh3": native.method(["sha256", "xxh3"]),
        }
        for regime in ("cold", "warm"):
            for trial in range(args.runs):
                for name, fn in methods.items():
                    if regime == "cold":
                        evict(large)
                    else:
                        warm(large)
                    seconds, cpu = timed(fn, large)
                    raw.setdefault(f"{regime} {name}", []).append(large_mb / seconds)
                    raw.setdefault(f"{regime} {name} cpu", []).append(large_mb / cpu)
                bench.log(f"{regime} trial {trial + 1}/{args.runs} done")
        small_methods = {
            "read": m_read,
            "hashlib sha256": methods["hashlib sha256"],
            "native sha256": methods["native sha256"],
        }
        warm(small)
        for trial in range(args.runs):
            for name, fn in small_methods.items():
                t0 = time.perf_counter()
                fn(small)
                raw.setdefault(f"small {name}", []).append(n_small / (time.perf_counter() - t0))
            bench.log(f"small-file trial {trial + 1}/{args.runs} done")
    finally:
        if native is not None:
            native.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    med = {k: bench.median(v) for k, v in raw.items()}

    def row(workload, what, key, unit, base_what, base_key, target="", goal=None):
        figure, base = med[key], med.get(base_key) if base_key else None
        ratio = figure / base if base else None
        rows.append({
            "workload": workload, "what": what, "figure": figure, "unit": unit,
            "baseline_what": base_what, "baseline": base, "ratio": ratio, "target": target,
            "met": None if goal is None or ratio is None else ratio >= goal, "note": "",
        })  # fmt: skip

    size_note = f"{n_large} × {mib} MiB"
    for regime, label in (("cold", "C1"), ("warm", "C2")):
        # The read baseline: the same 1 MiB reads the checksum processor makes, no hashing.
        read = f"{regime} read"
        row(label, f"read loop (1 MiB reads), {regime}, {size_note}", read, "MB/s", "", None)
        row(label, "cat", f"{regime} cat", "MB/s", "read loop, same files", read)
        row(label, "hashlib sha256", f"{regime} hashlib sha256", "MB/s", "read loop", read)
        row(label, "xxhash xxh3 (Python)", f"{regime} xxhash xxh3", "MB/s", "read loop", read)
        goal = 0.9 if regime == "cold" else None
        target = "≥ 0.90 × read (disk-limited)" if regime == "cold" else ""
        for algo in ("sha256", "xxh3", "sha256+xxh3"):
            row(label, f"checksum job, {algo}", f"{regime} native {algo}", "MB/s",
                "read loop", read, target, goal)  # fmt: skip
        row(label, "checksum job sha256 vs hashlib", f"{regime} native sha256", "MB/s",
            "hashlib sha256", f"{regime} hashlib sha256")  # fmt: skip
        # Per CPU-second: what each costs, whatever share of the 2 cores other work took.
        for name, base in (("native sha256", "hashlib sha256"), ("native xxh3", "xxhash xxh3")):
            row(label, f"  {name.replace('native', 'checksum job,')}, per CPU-second",
                f"{regime} {name} cpu", "MB/cpu-s", f"{base}, per CPU-second",
                f"{regime} {base} cpu")  # fmt: skip
        row(label, "  read loop, per CPU-second", f"{regime} read cpu", "MB/cpu-s", "", None)
    row("C3", f"checksum job sha256, {n_small:,} × 16 KiB (warm)", "small native sha256",
        "files/s", "hashlib loop, same files", "small hashlib sha256")  # fmt: skip
    row("C3", "Python read loop, same files", "small read", "files/s", "", None)
    rows[0]["note"] = (
        "cold: every file's pages are dropped (posix_fadvise DONTNEED) before each method, so "
        "every method reads the disk; warm: all in the page cache. MB/cpu-s: MB per CPU-second "
        "(user + system), the cost whatever share of the shared cores each method got"
    )
    text = bench.render(meta, rows).replace("jobforge benchmarks", "jobforge checksum benchmark", 1)
    print(text)
    out = (
        Path(args.json_out)
        if args.json_out
        else bench.RESULTS / f"{_dt.date.today().isoformat()}-{commit}-checksum.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows, "raw": raw, "table": text}, indent=1))
    bench.log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
