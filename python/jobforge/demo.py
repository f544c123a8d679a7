"""``jobforge demo``: a short media-library pipeline that shows the engine at work.

A music library gets scanned, its new tracks analysed, playlists exported and caches cleaned, with
the priorities of a real media application (user exports 1, analysis 3, user scans 5, system scans
7, cleanup 10). Along the way one analysis hits a locked file and succeeds on its second attempt,
one export fails for good after its last attempt, and the user cancels a long system scan while it
runs. Live progress bars follow the engine's events; a summary table and ``engine.stats()`` end it.

Everything runs on a temporary SQLite file unless ``db`` is given (then the jobs stay there for
``jobforge list``/``show``). Without a terminal, progress bars give way to one log line per
lifecycle event, and nothing ever reads stdin.

``run()`` returns an exit status: 0 when every job ended as the scenario expects, 1 otherwise.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
)
from rich.table import Table
from rich.text import Text

import jobforge

DEMO_TYPES = ("scan", "analyze", "export", "cleanup", "sleep")

STATUS_STYLE = {
    "created": "dim",
    "queued": "dim",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "timeout": "magenta",
}

INCOMING = [
    "Bicep - Glue.flac",
    "Fred again.. - Delilah.flac",
    "Peggy Gou - Starry Night.mp3",
    "Floating Points - Ratio.flac",
    "Four Tet - Baby.aiff",
    "Overmono - So U Kno.flac",
    "Jamie xx - Gosh.mp3",
    "Caribou - Never Come Back.flac",
]
LOCKED_TRACK = "Four Tet - Baby.aiff"  # locked by another app on the first attempt
CAMELOT = [f"{n}{ab}" for n in range(1, 13) for ab in "AB"]
ANALYSIS_STAGES = ("decoding audio", "detecting BPM", "detecting key", "mapping structure")
CLEANUP_STEPS = (
    "pruning orphaned waveforms",
    "removing stale temp files",
    "vacuuming analysis cache",
    "compacting thumbnails",
)


def _work(ctx: Any, seconds: float) -> None:
    """Simulated work that stays responsive to cancellation (and timeouts)."""
    deadline = time.monotonic() + seconds
    while True:
        ctx.check_cancelled()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.02))


def _digest(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def register_processors(engine: jobforge.Engine, scale: float, tracked: _Tracked) -> None:
    """The demo's Python processors; ``scale`` stretches or shrinks every simulated step."""

    @engine.processor("scan", priority=5, timeout=60)
    def scan(ctx, payload):
        root = payload["root"]
        files = payload.get("files") or [f"track_{i:04d}.flac" for i in range(payload["count"])]
        step = payload.get("step", 0.1) * scale
        for index, name in enumerate(files, start=1):
            _work(ctx, step)
            ctx.progress(index, total=len(files), message=f"found {name}")
        result = {"root": root, "tracks": len(files)}
        if payload.get("analyze"):
            # A scan produces items: one analysis job per new track, children of this scan.
            children = engine.enqueue_many(
                "analyze",
                [{"track": name, "path": f"{root}/{name}"} for name in files],
                priority=3,
                parent=ctx.job_id,
            )
            tracked.add(job.id for job in children)
            result["analyze_jobs"] = len(children)
        if payload.get("then_cleanup"):
            # Post-import maintenance, queued behind the analyses at the lowest priority.
            follow_up = engine.enqueue(
                "cleanup", {"targets": ["waveforms", "temp", "cache"]}, user_initiated=False
            )
            tracked.add([follow_up.id])
            result["cleanup_job"] = follow_up.id
        return result

    @engine.processor("analyze", priority=3, timeout=60)
    def analyze(ctx, payload):
        track = payload["track"]
        total = len(ANALYSIS_STAGES)
        for index, stage in enumerate(ANALYSIS_STAGES):
            ctx.progress(index, total=total, message=stage)
            _work(ctx, 0.3 * scale)
            if index == 0 and track == LOCKED_TRACK and ctx.attempt == 1:
                raise OSError(f"{payload['path']}: file is locked by another application")
        ctx.progress(total, total=total, message="done")
        digest = _digest(track)
        return {
            "bpm": round(118 + (digest % 180) / 10, 1),
            "key": CAMELOT[digest % len(CAMELOT)],
            "energy": 4 + digest % 6,
        }

    @engine.processor("export", priority=1, timeout=60)
    def export(ctx, payload):
        target = payload["target"]
        count = payload["tracks"]
        if target.startswith("/Volumes/"):
            ctx.progress(0, total=count, message=f"checking {target}")
            _work(ctx, 0.3 * scale)
            volume = "/".join(target.split("/")[:3])
            raise OSError(f"target volume {volume} is not mounted")
        for index in range(1, count + 1):
            _work(ctx, 0.25 * scale)
            ctx.progress(index, total=count, message=f"writing track {index}/{count}")
        return {"tracks": count, "format": payload["format"], "file": target}

    @engine.processor("cleanup", priority=10, timeout=60)
    def cleanup(ctx, payload):
        for index, step in enumerate(CLEANUP_STEPS):
            ctx.progress(index, total=len(CLEANUP_STEPS), message=step)
            _work(ctx, 0.3 * scale)
        ctx.progress(len(CLEANUP_STEPS), total=len(CLEANUP_STEPS), message="done")
        return {"freed_mb": 142, "files_removed": 37}


class _Tracked:
    """Ids of the jobs this demo created (the scan processor adds its children from a worker)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: list[str] = []

    def add(self, ids) -> None:
        with self._lock:
            self._ids.extend(ids)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._ids)


def label(job: jobforge.Job) -> str:
    """What a demo job works on, in a few words (its type aside)."""
    payload = job.payload if isinstance(job.payload, dict) else {}
    if job.type == "scan":
        return str(payload.get("root", "?"))
    if job.type == "analyze":
        return str(payload.get("track", "?"))
    if job.type == "export":
        return f"{payload.get('playlist', '?')} → {payload.get('format', '?')}"
    if job.type == "cleanup":
        return "library caches"
    if job.type == "sleep":
        return f"{payload.get('seconds', '?')} s (native C++)"
    return str(payload)[:40]


def outcome(job: jobforge.Job) -> str:
    """The result (or the error) of a finished demo job, in a few words."""
    if job.status == "completed":
        r = job.result
        if not isinstance(r, dict):
            return "" if r is None else str(r)
        if job.type == "scan":
            extra = f" → {r['analyze_jobs']} analyze jobs" if "analyze_jobs" in r else ""
            return f"{r.get('tracks')} tracks{extra}"
        if job.type == "analyze":
            return f"{r.get('bpm')} BPM, key {r.get('key')}, energy {r.get('energy')}"
        if job.type == "export":
            return f"{r.get('tracks')} tracks → {r.get('file')}"
        if job.type == "cleanup":
            return f"freed {r.get('freed_mb')} MB, {r.get('files_removed')} files"
        if job.type == "sleep":
            return f"slept {r.get('slept')} s"
        return str(r)
    if job.status == "cancelled":
        where = f" ({job.message})" if job.message else ""
        return f"cancelled at {job.progress}%{where}"
    return job.error or job.status


@dataclass
class _Row:
    label: str
    type: str
    priority: int
    task: TaskID | None = None


@dataclass
class _View:
    """Progress bars on a terminal, one log line per lifecycle event elsewhere."""

    console: Console
    quiet: bool
    engine: jobforge.Engine
    t0: float
    rows: dict[str, _Row] = field(default_factory=dict)
    progress: Progress | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.console.is_terminal and not self.quiet:
            self.progress = Progress(
                TextColumn("{task.description}", table_column=_column(min_width=30)),
                TextColumn("[dim]p{task.fields[priority]}"),
                BarColumn(bar_width=24),
                TaskProgressColumn(),
                TextColumn("{task.fields[status]}", table_column=_column(min_width=9)),
                _ElapsedColumn(),
                TextColumn("[dim]{task.fields[message]}"),
                console=self.console,
                refresh_per_second=12,
            )

    def start(self) -> None:
        if self.progress is not None:
            self.progress.start()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()

    def say(self, text: str, notable: bool = True) -> None:
        """Logs a line: every lifecycle event without a terminal, notable ones above the bars."""
        if self.quiet or (self.progress is not None and not notable):
            return
        stamp = f"[dim]{time.monotonic() - self.t0:5.2f}s[/]"
        target = self.progress.console if self.progress is not None else self.console
        target.print(f"{stamp}  {text}", highlight=False)

    def _row(self, job_id: str) -> _Row | None:
        row = self.rows.get(job_id)
        if row is None:
            job = self.engine.get(job_id)
            if job is None:
                return None
            row = _Row(label(job), job.type, job.priority)
            if self.progress is not None:
                row.task = self.progress.add_task(
                    escape(f"{job.type:<8}{row.label}"), total=100, start=False, priority=job.priority,
                    status=_styled("queued"), message="",
                )  # fmt: skip
            self.rows[job_id] = row
        return row

    def handle(self, ev: jobforge.Event) -> None:
        self.counts[ev.type] = self.counts.get(ev.type, 0) + 1
        if ev.job_type not in DEMO_TYPES or ev.type == "job-status-changed":
            return
        row = self._row(ev.job_id)
        if row is None:
            return
        name = f"{row.type} {escape(row.label)} [dim](p{row.priority})[/]"
        error = escape(ev.error or "")
        bar = self.progress
        if ev.type == "job-queued":
            self.say(f"[dim]queued   [/] {name}", notable=False)
        elif ev.type == "job-started":
            if bar is not None and row.task is not None:
                # The clock runs from the first start, retries included.
                bar.start_task(row.task)
                bar.update(row.task, completed=0, status=_styled("running"), message="")
            self.say(f"[cyan]started  [/] {name} (attempt {ev.attempt})", notable=False)
        elif ev.type == "job-progress":
            if bar is not None and row.task is not None:
                bar.update(row.task, completed=ev.progress, message=escape(ev.message))
        elif ev.type == "job-retry":
            if bar is not None and row.task is not None:
                bar.update(row.task, status=_styled("retrying", "yellow"), message=error)
            self.say(f"[yellow]retry    [/] {name}: attempt {ev.attempt} failed ({error})")
        elif ev.type in ("job-completed", "job-failed", "job-cancelled", "job-timeout"):
            if bar is not None and row.task is not None:
                done = {"completed": 100} if ev.status == "completed" else {}
                why = error if ev.status in ("failed", "timeout") else escape(ev.message)
                bar.update(row.task, status=_styled(ev.status), message=why, **done)
                bar.stop_task(row.task)
            detail = f": {error}" if error and ev.status != "cancelled" else ""
            if ev.status == "cancelled":
                detail = f" at {ev.progress}%"
            style = STATUS_STYLE.get(ev.status, "")
            self.say(f"[{style}]{ev.status:<9}[/] {name}{detail}", ev.status != "completed")


class _ElapsedColumn(ProgressColumn):
    """Seconds since the job first started (retries included), to a tenth."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed  # frozen once the task is stopped (the job ended)
        return Text("" if elapsed is None else f"{elapsed:5.1f}s", style="progress.elapsed")


def _column(min_width: int):
    from rich.table import Column

    return Column(min_width=min_width, no_wrap=True)


def _styled(status: str, style: str | None = None) -> str:
    return f"[{style or STATUS_STYLE.get(status, '')}]{status}[/]"


def _make_console() -> Console:
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=140)
    return console


def run(
    db: str | None = None,
    *,
    fast: bool = False,
    quiet: bool = False,
    workers: int = 4,
    console: Console | None = None,
) -> int:
    """Runs the demo; returns 0 when every job ended as expected, else 1."""
    console = console or _make_console()
    if db is not None:
        return _run(os.path.abspath(db), fast, quiet, workers, console, keep=True)
    with tempfile.TemporaryDirectory(prefix="jobforge-demo-") as folder:
        return _run(os.path.join(folder, "demo.db"), fast, quiet, workers, console, keep=False)


def _run(path: str, fast: bool, quiet: bool, workers: int, console: Console, keep: bool) -> int:
    scale = 0.25 if fast else 1.0
    engine = jobforge.Engine(path, workers=workers, retry_delay=0.4 * scale)
    tracked = _Tracked()
    register_processors(engine, scale, tracked)
    events: queue.Queue[jobforge.Event] = queue.Queue()
    engine.on("*", events.put)

    if not quiet:
        console.rule("[bold]jobforge demo: a media library at work")
        where = "" if keep else " (temporary)"
        console.print(f"database [bold]{path}[/]{where} · {workers} workers", highlight=False)
        console.print(
            "priorities: export 1 · analyze 3 · scan 5 · system scan 7 · cleanup 10 (1 runs first)",
            highlight=False,
        )

    t0 = time.monotonic()
    t0_ms = int(time.time() * 1000)
    view = _View(console, quiet, engine, t0)
    view.start()
    try:
        ids = _pipeline(engine, view, events, tracked, scale)
    except KeyboardInterrupt:
        view.say("[yellow]interrupted: cancelling the remaining jobs")
        engine.abort_all()
        engine.stop(wait=False)
        return 130
    finally:
        view.stop()
    elapsed = time.monotonic() - t0

    jobs = sorted(
        (j for j in (engine.get(i) for i in tracked.ids()) if j is not None),
        key=lambda j: (j.created_at or 0, j.id),
    )
    console.print(_summary(jobs, t0_ms, elapsed))
    console.print(_stats_table(engine.stats()))
    if not quiet:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(view.counts.items()))
        total = sum(view.counts.values())
        console.print(f"[dim]{total} events delivered: {counts}", highlight=False)
    checks = _checks(jobs, ids["usb"], ids["nas"])
    for ok, text, required in checks:
        mark = "[green]✓[/]" if ok else ("[red]✗[/]" if required else "[yellow]·[/]")
        note = "" if required else " [dim](informational)[/]"
        console.print(f"{mark} {text}{note}", highlight=False)
    status = 0 if all(ok for ok, _, required in checks if required) else 1
    if keep:
        console.print(f"[dim]jobs kept in {path}; inspect them with:", highlight=False)
        for command in ("list", f"show {ids['incoming']}", f"list --parent {ids['incoming']}"):
            console.print(f"  jobforge --db {path} {command}", highlight=False, soft_wrap=True)
    engine.close()
    return status


def _pipeline(
    engine: jobforge.Engine,
    view: _View,
    events: queue.Queue[jobforge.Event],
    tracked: _Tracked,
    scale: float,
) -> dict[str, str]:
    """Queues the scenario, starts the workers, cancels the NAS scan mid-way and returns once
    every job of the demo has ended (the engine stopped, every event shown)."""
    # Everything is queued before the workers start, so priorities decide the start order.
    friday = engine.enqueue(
        "export",
        {"playlist": "Friday set", "format": "rekordbox", "tracks": 12,
         "target": "~/Music/Exports/friday-set.xml"},
    )  # fmt: skip
    usb = engine.enqueue(
        "export",
        {"playlist": "Warm-up", "format": "m3u", "tracks": 20,
         "target": "/Volumes/DJ-USB/warm-up.m3u"},
        max_attempts=2,
    )  # fmt: skip
    incoming = engine.enqueue(
        "scan",
        {"root": "~/Music/Incoming", "files": INCOMING, "step": 0.25, "analyze": True,
         "then_cleanup": True},
    )  # fmt: skip
    nas = engine.enqueue(
        "scan",
        {"root": "/Volumes/NAS/Archive", "count": 60, "step": 0.1, "analyze": False},
        priority=7,
        user_initiated=False,
    )
    native = engine.enqueue("sleep", {"seconds": round(2.0 * scale, 2)})
    tracked.add(j.id for j in (friday, usb, incoming, nas, native))
    engine.start()

    cancel_sent = False
    deadline = time.monotonic() + 60 * max(scale, 0.5)
    while True:
        _drain(events, view)
        if not cancel_sent:
            current = engine.get(nas.id)
            if current is None or current.is_final:
                cancel_sent = True  # too late: the checks report it
            elif current.status == "running" and current.progress >= 25:
                # The user changes their mind: the running scan sees ctx.cancelled.
                accepted = engine.cancel(nas.id)
                view.say(
                    f"[bold yellow]user     [/] cancels scan {nas.payload['root']} "
                    f"at {current.progress}%: engine.cancel() → {accepted}"
                )
                cancel_sent = True
        jobs = [engine.get(i) for i in tracked.ids()]
        if all(j is not None and j.is_final for j in jobs) and incoming.refresh().is_final:
            break
        if time.monotonic() > deadline:
            view.say("[red]the demo did not finish in time; cancelling the remaining jobs")
            engine.abort_all()
            break
        time.sleep(0.05)
    engine.stop(wait=True)
    engine.flush_events()
    _drain(events, view)
    return {"incoming": incoming.id, "usb": usb.id, "nas": nas.id}


def _drain(events: queue.Queue[jobforge.Event], view: _View) -> None:
    while True:
        try:
            ev = events.get_nowait()
        except queue.Empty:
            return
        view.handle(ev)


def _summary(jobs: list[jobforge.Job], t0_ms: int, elapsed: float) -> Table:
    table = Table(title=f"Summary: {len(jobs)} jobs in {elapsed:.1f} s", title_justify="left")
    table.add_column("job", no_wrap=True)
    table.add_column("type")
    table.add_column("prio", justify="right")
    table.add_column("status")
    table.add_column("tries", justify="right")
    table.add_column("start", justify="right")
    table.add_column("took", justify="right")
    table.add_column("result / error", overflow="fold")
    for job in jobs:
        start = f"+{(job.started_at - t0_ms) / 1000:.2f}s" if job.started_at else "-"
        took = f"{job.duration:.2f}s" if job.duration is not None else "-"
        table.add_row(
            Text(label(job)), job.type, str(job.priority), _styled(job.status),
            f"{job.attempts}/{job.max_attempts}", start, took, Text(outcome(job)),
        )  # fmt: skip
    return table


def _stats_table(stats: dict) -> Table:
    table = Table(title="engine.stats()", title_justify="left")
    keys = ["total", *jobforge.STATUSES]
    for key in keys:
        table.add_column(key, justify="right")
    table.add_row(*(str(stats.get(k, 0)) for k in keys))
    return table


def _checks(jobs: list[jobforge.Job], usb_id: str, nas_id: str):
    by_id = {j.id: j for j in jobs}
    locked = [j for j in jobs if j.type == "analyze" and j.payload.get("track") == LOCKED_TRACK]
    checks = []
    checks.append((all(j.is_final for j in jobs), f"all {len(jobs)} jobs ended", True))
    ok = bool(locked) and locked[0].status == "completed" and locked[0].attempts == 2
    got = f"{locked[0].status} after {locked[0].attempts} attempts" if locked else "never created"
    checks.append(
        (ok, f"retry: '{LOCKED_TRACK}' failed on attempt 1, completed on 2 ({got})", True)
    )
    usb = by_id.get(usb_id)
    ok = usb is not None and usb.status == "failed" and usb.attempts == usb.max_attempts
    got = f"{usb.status}, {usb.attempts}/{usb.max_attempts}" if usb else "missing"
    checks.append(
        (ok, f"permanent failure: USB export failed after its last attempt ({got})", True)
    )
    nas = by_id.get(nas_id)
    ok = nas is not None and nas.status == "cancelled" and nas.started_at is not None
    got = f"{nas.status} at {nas.progress}%" if nas else "missing"
    checks.append((ok, f"cancel: the NAS system scan was cancelled while running ({got})", True))
    analyses = [j for j in jobs if j.type == "analyze"]
    cleanup = [j for j in jobs if j.type == "cleanup"]
    first_try = [j for j in analyses if j.attempts == 1 and j.started_at]
    if first_try and cleanup and cleanup[0].started_at:
        # Informational: a retried analysis may legitimately start after the cleanup.
        ok = cleanup[0].started_at >= max(j.started_at for j in first_try)
        checks.append((ok, "priority: cleanup (10) started after the analyses (3)", False))
    return checks


__all__ = ["label", "outcome", "register_processors", "run"]
