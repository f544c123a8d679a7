"""``python -m jobforge.examples.library_import DIR``: the reference pipeline of a media-library
import, run by the engine with native processors.

    scan (native, priority 5; 7 with --system-scan)
      -> batch_stage: one native ``stat`` job per file (priority 3, analysis)
      -> batch_checksum: native ``checksum`` jobs, each hashing ``--chunk`` files (priority 3)
      -> export: the manifest as CSV and JSON (priority 1, the user's export), run once both
         batches have ended (``depends_on``)
      -> cleanup (native, priority 10) when ``--retention`` is given

The manifest has one row per file under DIR: ``path`` (relative to DIR, ``/``-separated),
``size``, ``mtime`` (Unix seconds) and ``sha256``. Progress is drawn live in a terminal (rich);
without one, a line per finished step. Ctrl-C cancels the pipeline's jobs and exits with 130.

``run(...)`` is the same pipeline as a function (tests and benchmarks call it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import jobforge

PRIORITY_EXPORT = 1
PRIORITY_ANALYSIS = 3
PRIORITY_SCAN = 5
PRIORITY_SYSTEM_SCAN = 7
PRIORITY_CLEANUP = 10
MANIFEST_FIELDS = ("path", "size", "mtime", "sha256")


def _children(engine: jobforge.Engine, parent: str, count: int) -> list:
    """The ``count`` children of batch ``parent``, in one read (paging with ``offset`` was
    measured slower: each page sorts the batch's children again)."""
    return engine.jobs(parent=parent, limit=max(count, 1))


def make_export(engine: jobforge.Engine) -> Callable[[Any, dict], dict]:
    """The ``export`` processor of ``engine``: joins the staged files with their checksums and
    writes manifest.csv and manifest.json into ``payload["out"]`` (each written to a temporary
    file first, then renamed, so a reader never sees half a manifest)."""

    def export(ctx: Any, payload: dict) -> dict:
        root = payload["root"]
        staged = _children(engine, payload["stage_batch"], payload["files"])
        chunks = _children(engine, payload["checksum_batch"], payload["chunks"])
        ctx.stage("joining", len(staged) + len(chunks))
        digests: dict[str, str] = {}
        errors: list[dict] = []
        for job in chunks:
            ctx.check_cancelled()
            if job.status != "completed":
                errors.append({"job": job.id, "error": job.error or job.status})
                continue
            for entry in job.result["files"]:
                if "sha256" in entry:
                    digests[entry["path"]] = entry["sha256"]
                else:
                    errors.append({"path": entry["path"], "error": entry.get("error")})
            ctx.increment()
        rows = []
        prefix = os.path.join(root, "")  # scan joins names under the root as given
        for job in staged:
            if job.status != "completed":
                errors.append({"path": job.payload["path"], "error": job.error or job.status})
                continue
            r = job.result
            digest = digests.get(r["path"])
            if digest is None:
                continue  # its checksum failed: counted above
            path = r["path"]
            rel = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root)
            if os.sep != "/":
                rel = rel.replace(os.sep, "/")
            rows.append({"path": rel, "size": r["size"], "mtime": r["mtime"], "sha256": digest})
        ctx.increment(len(staged))
        rows.sort(key=lambda row: row["path"])
        ctx.stage("writing", 2)
        out = payload["out"]
        os.makedirs(out, exist_ok=True)
        csv_path = os.path.join(out, "manifest.csv")
        json_path = os.path.join(out, "manifest.json")
        tmp = csv_path + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, csv_path)
        ctx.increment()
        total_bytes = sum(row["size"] for row in rows)
        doc = {"root": root, "count": len(rows), "bytes": total_bytes, "errors": errors[:100],
               "error_count": len(errors), "files": rows}  # fmt: skip
        tmp = json_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False)
        os.replace(tmp, json_path)
        ctx.increment()
        ctx.count("files", len(rows))
        ctx.count("errors", len(errors))
        return {"csv": csv_path, "json": json_path, "count": len(rows), "bytes": total_bytes,
                "error_count": len(errors)}  # fmt: skip

    return export


def register(engine: jobforge.Engine) -> None:
    """Registers the pipeline's Python processor ``export`` on ``engine``; ``scan``, ``stat``
    (the stage step), ``checksum`` and ``cleanup`` are the engine's native ones."""
    engine.register("export", make_export(engine), max_attempts=2, retry_delay=0.5)


@dataclass
class Outcome:
    """What ``run`` returns: the jobs, the export's result and the wall time."""

    scan: jobforge.Job
    stage_batch: Optional[jobforge.Job] = None
    checksum_batch: Optional[jobforge.Job] = None
    export: Optional[jobforge.Job] = None
    cleanup: Optional[jobforge.Job] = None
    seconds: float = 0.0
    files: int = 0
    manifest: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.export is not None and self.export.status == "completed"


class _Display:
    """Live bars (rich) for each step, from the jobs' stored progress; in a terminal only."""

    def __init__(self, engine: jobforge.Engine, enabled: bool, console: Console) -> None:
        self.engine = engine
        self.console = console
        self.live = enabled and console.is_terminal
        self.lines = enabled and not self.live  # no terminal: a line per finished step
        self.tasks: dict[str, Any] = {}
        self.progress = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not self.live,
            refresh_per_second=8,
        )

    def __enter__(self) -> _Display:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def follow(self, label: str, job: jobforge.Job, total: Optional[float] = None) -> jobforge.Job:
        """Draws ``job``'s progress until it is final; returns it refreshed."""
        task = self.progress.add_task(label, total=total, note="queued")
        while True:
            job = job.refresh()
            current = job.progress_current
            note = job.message or job.status
            if job.is_final:
                done = job.progress_total or current or total or 1
                self.progress.update(task, total=done, completed=done, note=job.status)
                break
            self.progress.update(task, total=job.progress_total or total, completed=current,
                                 note=note)  # fmt: skip
            time.sleep(0.1)
        if self.lines:
            self.console.print(f"{label}: {job.status} in {job.duration or 0:.2f}s")
        return job

    def follow_many(self, items: list[tuple[str, jobforge.Job]]) -> list[jobforge.Job]:
        """Like ``follow`` for several jobs at once (the two batches run side by side)."""
        tasks = [self.progress.add_task(label, total=None, note="queued") for label, _ in items]
        jobs = [job for _, job in items]
        reported = [False] * len(jobs)
        while True:
            for i, job in enumerate(jobs):
                if reported[i]:
                    continue
                job = jobs[i] = job.refresh()
                self.progress.update(tasks[i], total=job.progress_total or None,
                                     completed=job.progress_current,
                                     note=job.message or job.status)  # fmt: skip
                if job.is_final:
                    reported[i] = True
                    self.progress.update(tasks[i], note=job.status)
                    if self.lines:
                        self.console.print(f"{items[i][0]}: {job.status} "
                                           f"in {job.duration or 0:.2f}s")  # fmt: skip
            if all(reported):
                return jobs
            time.sleep(0.1)


def run(
    root: str,
    *,
    db: Optional[str] = None,
    out: str = ".",
    workers: Optional[int] = None,
    chunk: int = 256,
    system_scan: bool = False,
    retention: Optional[float] = None,
    hidden: bool = True,
    progress: bool = True,
    console: Optional[Console] = None,
) -> Outcome:
    """Runs the pipeline on ``root`` and returns its ``Outcome``. ``db`` None: a temporary
    SQLite file, removed at the end. ``chunk``: files per checksum job."""
    if not os.path.isdir(root):
        raise ValueError(f"DIR must be a directory, got {root!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    if retention is not None and retention <= 0:
        raise ValueError(f"retention must be more than 0 seconds, got {retention!r}")
    root = os.path.abspath(root)
    out = os.path.abspath(out)
    console = console or Console(stderr=True)
    tmpdir = None
    if db is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="jobforge-import-")
        db = os.path.join(tmpdir.name, "jobs.db")
    options: dict[str, Any] = {"workers": workers or max(2, os.cpu_count() or 2)}
    if retention is not None:
        options.update(retention=retention, cleanup_interval=max(retention, 60.0))
    started = time.perf_counter()
    try:
        with jobforge.Engine(db, **options) as engine:
            register(engine)
            outcome = _pipeline(engine, root, out, chunk, system_scan, retention, hidden,
                                progress, console)  # fmt: skip
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    outcome.seconds = time.perf_counter() - started
    return outcome


def _pipeline(engine, root, out, chunk, system_scan, retention, hidden, progress, console):
    pipeline_jobs: list[jobforge.Job] = []
    batches: list[Any] = []
    try:
        with _Display(engine, progress, console) as display:
            # A Ctrl-C that lands in an enqueue leaves what it stored in the exception's `jobs`
            # (see the except below); a batch keeps its stored parent in `.job`.
            scan = engine.enqueue(
                "scan",
                {"paths": [root], "hidden": "include" if hidden else "skip"},
                priority=PRIORITY_SYSTEM_SCAN if system_scan else PRIORITY_SCAN,
                user_initiated=not system_scan,
            )
            pipeline_jobs.append(scan)
            scan = display.follow("scan", scan)
            outcome = Outcome(scan=scan)
            if scan.status != "completed":
                return outcome
            paths = [f["path"] for f in scan.result["files"]]
            outcome.files = len(paths)
            stage = engine.batch("batch_stage", {"root": root, "files": len(paths)},
                                 priority=PRIORITY_ANALYSIS)  # fmt: skip
            batches.append(stage)  # stage.job is set once it is stored
            with stage:
                for path in paths:
                    stage.enqueue(
                        "stat", {"path": path}, priority=PRIORITY_ANALYSIS, max_attempts=3
                    )
            chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
            sums = engine.batch("batch_checksum", {"root": root, "files": len(paths)},
                                priority=PRIORITY_ANALYSIS)  # fmt: skip
            batches.append(sums)
            with sums:
                for part in chunks:
                    sums.enqueue("checksum", {"paths": part, "algorithms": ["sha256"]},
                                 priority=PRIORITY_ANALYSIS, max_attempts=3)  # fmt: skip
            export = engine.enqueue(
                "export",
                {"root": root, "out": out, "stage_batch": stage.job.id,
                 "checksum_batch": sums.job.id, "files": len(paths), "chunks": len(chunks)},
                priority=PRIORITY_EXPORT, depends_on=[stage.job, sums.job], run_anyway=True,
            )  # fmt: skip
            pipeline_jobs.append(export)
            outcome.stage_batch, outcome.checksum_batch = display.follow_many(
                [("stage files", stage.job), ("checksum", sums.job)]
            )
            outcome.export = display.follow("export manifest", export)
            if outcome.ok:
                outcome.manifest = outcome.export.result
            if retention is not None:
                cleanup = engine.enqueue("cleanup", {"older_than_ms": int(retention * 1000)},
                                         priority=PRIORITY_CLEANUP, user_initiated=False)  # fmt: skip
                pipeline_jobs.append(cleanup)
                outcome.cleanup = display.follow("cleanup", cleanup)
            return outcome
    except KeyboardInterrupt as exc:
        stored = pipeline_jobs + [b.job for b in batches if b.job is not None]
        for job in stored + getattr(exc, "jobs", []):
            job.cancel()  # a batch parent's cancel cancels its children
        raise


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobforge.examples.library_import",
        description="Scan DIR, stage each file, checksum them and export a manifest "
        "(manifest.csv and manifest.json) with jobforge.",
    )
    parser.add_argument("dir", metavar="DIR", help="the library folder to import")
    parser.add_argument("--db", help="SQLite file for the jobs (default: a temporary one)")
    parser.add_argument("--out", default=".", help="folder for the manifest (default: .)")
    parser.add_argument("--workers", type=int, help="worker threads (default: CPUs, at least 2)")
    parser.add_argument("--chunk", type=int, default=256, help="files per checksum job (256)")
    parser.add_argument("--system-scan", action="store_true",
                        help="a system-initiated scan: priority 7 instead of 5")  # fmt: skip
    parser.add_argument("--retention", type=float, metavar="SECONDS",
                        help="delete finished jobs older than this (a cleanup job, priority 10)")  # fmt: skip
    parser.add_argument(
        "--skip-hidden", action="store_true", help="leave out names starting with ."
    )
    parser.add_argument("--no-progress", action="store_true", help="no live bars")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    try:
        outcome = run(args.dir, db=args.db, out=args.out, workers=args.workers, chunk=args.chunk,
                      system_scan=args.system_scan, retention=args.retention,
                      hidden=not args.skip_hidden, progress=not args.no_progress,
                      console=console)  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        console.print("interrupted: the pipeline's jobs were cancelled")
        return 130
    if not outcome.ok:
        failed = outcome.export or outcome.scan
        console.print(f"[red]pipeline did not complete[/red]: {failed.type} {failed.status} "
                      f"{failed.error or ''}")  # fmt: skip
        return 1
    m = outcome.manifest
    rate = outcome.files / outcome.seconds if outcome.seconds else 0.0
    print(f"{m['count']:,} files ({m['bytes']:,} bytes) in {outcome.seconds:.2f}s "
          f"({rate:,.0f} files/s), {m['error_count']} errors")  # fmt: skip
    print(f"manifest: {m['csv']}")
    print(f"          {m['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
