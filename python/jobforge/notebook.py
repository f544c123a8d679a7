"""Live progress in Jupyter: bars for jobs, and a monitor of the whole engine.

    from jobforge.notebook import progress
    progress(job)                 # or job.display(); a list of jobs gives one bar each
    engine.monitor()              # a table of active jobs and recent failures, kept up to date

Bars are ipywidgets (message, stage, ETA, and the final status in colour); where ipywidgets is
missing, or with ``widgets=False``, they are ``tqdm.auto`` bars (text in a terminal). Both
update from a background thread (engine events as they arrive, and a read of the store every
``interval`` seconds for jobs run by other processes), so the kernel stays free for other cells.
"""

from __future__ import annotations

import html
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

from .job import FINAL_STATUSES

if TYPE_CHECKING:
    from .engine import Engine
    from .job import Job

MAX_BARS = 25  # more jobs than this get one bar for the whole group
_BAR_STYLE = {"completed": "success", "failed": "danger", "timeout": "danger",
              "cancelled": "warning"}  # fmt: skip


def _widgets():
    try:
        import ipywidgets

        return ipywidgets
    except ImportError:
        return None


def _display(obj: Any) -> None:
    try:
        from IPython.display import display
    except ImportError:  # not in IPython: nothing to show a widget in
        return
    display(obj)


def _fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds / 3600:.1f}h"


class _Eta:
    """Seconds left for one job, from the rate of its progress since it was first seen running."""

    __slots__ = ("t0", "p0")

    def __init__(self) -> None:
        self.t0: Optional[float] = None
        self.p0 = 0.0

    def update(self, percent: float, now: float) -> Optional[float]:
        if self.t0 is None:
            self.t0, self.p0 = now, percent
            return None
        done = percent - self.p0
        elapsed = now - self.t0
        if done <= 0 or elapsed <= 0.2:
            return None
        return (100.0 - percent) * elapsed / done


def _describe(job: Job, eta: Optional[float]) -> str:
    """'42% · 1,250 / 5,000 · stage · message · ETA 12s' or the final status."""
    parts = []
    if job.status in FINAL_STATUSES:
        parts.append(job.status)
        if job.duration is not None:
            parts.append(f"in {job.duration:.2f}s")
        if job.error and job.status != "completed":
            parts.append(job.error.splitlines()[0][:120])
        elif job.message:
            parts.append(job.message)
        return " · ".join(parts)
    if job.status != "running":
        return job.status
    parts.append(f"{job.progress}%")
    if job.progress_total:
        parts.append(f"{job.progress_current:,.0f} / {job.progress_total:,.0f}")
    elif job.progress_current:
        parts.append(f"{job.progress_current:,.0f} done")
    stage = getattr(job, "stage", None)
    if stage:
        parts.append(str(stage))
    if job.message:
        parts.append(job.message)
    if eta is not None:
        parts.append(f"ETA {_fmt_seconds(eta)}")
    return " · ".join(parts)


class _Follower:
    """Refreshes a set of jobs on a background thread until all are final; calls ``render``."""

    def __init__(self, engine: Engine, ids: list[str], interval: float) -> None:
        self._engine = engine
        self._ids = ids
        self._interval = interval
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self.finished = threading.Event()
        self._subscription = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        watched = set(self._ids)
        wake = self._wake

        def on_event(ev) -> None:
            if ev.job_id in watched:
                wake.set()

        # Events of this process wake the thread at once; others are read every interval.
        # Setting an Event never blocks: called on the delivery thread itself.
        self._subscription = self._engine._subscribe("*", on_event, None, None, inline=True)
        self._thread = threading.Thread(target=self._run, name="jobforge-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                jobs = [self._engine.get(i) for i in self._ids]
                jobs = [j for j in jobs if j is not None]
                self.render(jobs)
                if all(j.is_final for j in jobs):
                    break
                self._wake.wait(self._interval)
                self._wake.clear()
                # Events come in bursts: a short pause lets one render cover several.
                time.sleep(0.05)
        finally:
            if self._subscription is not None:
                self._subscription.unsubscribe()
            self.finished.set()

    def render(self, jobs: list[Job]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Blocks until every job is final (and the bars show it); False on timeout."""
        return self.finished.wait(timeout)


class ProgressDisplay(_Follower):
    """Live bars for one job or several; returned by ``progress()``."""

    def __init__(
        self,
        engine: Engine,
        jobs: list[Job],
        *,
        interval: float = 0.5,
        widgets: Optional[bool] = None,
    ) -> None:
        super().__init__(engine, [j.id for j in jobs], interval)
        self.jobs = jobs
        self.group = len(jobs) > MAX_BARS
        ipywidgets = _widgets() if widgets is not False else None
        if widgets and ipywidgets is None:
            raise ImportError("widgets=True needs ipywidgets: pip install 'jobforge[notebook]'")
        self.kind = "widgets" if ipywidgets is not None else "tqdm"
        self._etas = {j.id: _Eta() for j in jobs}
        self._lock = threading.Lock()
        self.bars: list[Any] = []
        self.texts: list[Any] = []
        labels = [f"{len(jobs)} jobs"] if self.group else [f"{j.type} {j.id[-8:]}" for j in jobs]
        if self.kind == "widgets":
            rows = []
            for label in labels:
                bar = ipywidgets.FloatProgress(
                    value=0, min=0, max=100, description=label,
                    style={"description_width": "initial"},
                    layout=ipywidgets.Layout(width="45%"),
                )  # fmt: skip
                text = ipywidgets.HTML(value="")
                self.bars.append(bar)
                self.texts.append(text)
                rows.append(ipywidgets.HBox([bar, text]))
            self.widget = ipywidgets.VBox(rows)
            _display(self.widget)
        else:
            from tqdm.auto import tqdm

            self.widget = None
            total = len(jobs) if self.group else 100
            for label in labels:
                self.bars.append(
                    tqdm(
                        total=total,
                        desc=label,
                        unit="job" if self.group else "%",
                        bar_format=None
                        if self.group
                        else "{desc}: {percentage:3.0f}%|{bar}| {postfix}",
                    )  # fmt: skip
                )
        self.start()

    def render(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        with self._lock:
            if self.group:
                self._render_group(jobs)
            else:
                for index, job in enumerate(jobs):
                    eta = None
                    if job.status == "running":
                        eta = getattr(job, "eta", None)
                        if eta is None:
                            eta = self._etas[job.id].update(job.progress, now)
                    self._render_one(index, job, _describe(job, eta))
            self.jobs = jobs

    def _render_one(self, index: int, job: Job, text: str) -> None:
        final = job.status in FINAL_STATUSES
        value = 100.0 if job.status == "completed" else float(job.progress)
        if self.kind == "widgets":
            bar = self.bars[index]
            bar.value = value
            bar.bar_style = _BAR_STYLE.get(job.status, "info" if final else "")
            self.texts[index].value = html.escape(text)
        else:
            bar = self.bars[index]
            bar.n = value
            bar.set_postfix_str(text, refresh=False)
            bar.refresh()
            if final:
                bar.close()

    def _render_group(self, jobs: list[Job]) -> None:
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.status] = counts.get(job.status, 0) + 1
        finished = sum(n for s, n in counts.items() if s in FINAL_STATUSES)
        running = [j for j in jobs if j.status == "running"]
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if running:
            summary += f" · {running[0].message}" if running[0].message else ""
        bad = counts.get("failed", 0) + counts.get("timeout", 0)
        if self.kind == "widgets":
            self.bars[0].value = 100.0 * finished / max(1, len(jobs))
            if finished == len(jobs):
                self.bars[0].bar_style = "danger" if bad else "success"
            self.texts[0].value = html.escape(summary)
        else:
            bar = self.bars[0]
            bar.n = finished
            bar.set_postfix_str(summary, refresh=False)
            bar.refresh()
            if finished == len(jobs):
                bar.close()

    def _ipython_display_(self) -> None:
        # Shown when created; as a cell's last value it adds nothing more.
        return None

    def __repr__(self) -> str:
        return f"<jobforge progress of {len(self._ids)} job(s), {self.kind}>"


def progress(
    job_or_jobs: Union[Job, Iterable[Job]],
    *,
    interval: float = 0.5,
    widgets: Optional[bool] = None,
) -> ProgressDisplay:
    """Shows live progress bars for a job or several (a list, or a batch's children) and
    returns at once; the bars update on a background thread until every job is final.
    ``.wait(timeout)`` blocks until then. More than 25 jobs get one bar for the group.
    ``widgets=False`` forces tqdm bars; ``True`` requires ipywidgets."""
    from .job import Job

    jobs = [job_or_jobs] if isinstance(job_or_jobs, Job) else list(job_or_jobs)
    if not jobs:
        raise ValueError("progress() needs at least one job")
    for job in jobs:
        if not isinstance(job, Job):
            raise TypeError(f"progress() takes jobforge.Job objects, got {type(job).__name__}")
    engines = {id(j._engine) for j in jobs}
    if len(engines) != 1:
        raise ValueError("progress() shows jobs of one engine at a time")
    if not interval > 0:
        raise ValueError(f"interval must be more than 0 seconds, got {interval!r}")
    return ProgressDisplay(jobs[0]._engine, jobs, interval=interval, widgets=widgets)


# -- the monitor ----------------------------------------------------------------------------------

_MONITOR_CSS = """<style>
.jf-mon{font:12px/1.35 system-ui,sans-serif}.jf-mon table{border-collapse:collapse;margin:4px 0}
.jf-mon td,.jf-mon th{padding:2px 8px;text-align:left;border-bottom:1px solid #e5e7eb}
.jf-mon .bar{width:140px;height:10px;background:#e5e7eb;border-radius:2px;overflow:hidden}
.jf-mon .bar div{height:100%;background:#2f6fdb}.jf-mon .bad{color:#c0392b}
.jf-mon .dim{color:#6b7280}.jf-mon code{font-size:11px}</style>"""


class Monitor:
    """A live table of the engine's active jobs and recent failures; ``engine.monitor()``.

    Runs on a daemon thread that re-reads the store every ``interval`` seconds (so it shows jobs
    of every process on the file) and rewrites one widget; ``stop()`` ends it. It never blocks
    the kernel: other cells run while it updates."""

    def __init__(
        self,
        engine: Engine,
        *,
        interval: float = 1.0,
        active: int = 20,
        failures: int = 5,
        widgets: Optional[bool] = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be more than 0 seconds, got {interval!r}")
        self._engine_ref = weakref.ref(engine)
        self.interval = interval
        self.active_limit = active
        self.failure_limit = failures
        self.updates = 0
        self._stop = threading.Event()
        ipywidgets = _widgets() if widgets is not False else None
        if ipywidgets is not None:
            self.widget = ipywidgets.HTML(value=self.render_html())
            _display(self.widget)
            self._handle = None
        else:
            self.widget = None
            self._handle = None
            try:
                from IPython.display import HTML, display

                self._handle = display(HTML(self.render_html()), display_id=True)
            except ImportError:
                pass
        self._thread = threading.Thread(target=self._run, name="jobforge-monitor", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def snapshot(self) -> dict:
        """What the monitor shows, as data: stats, active jobs, recent failures."""
        engine = self._engine_ref()
        if engine is None:
            return {"stats": {}, "active": [], "failures": []}
        return {
            "stats": engine.stats(),
            "active": engine.jobs(status="running", limit=self.active_limit),
            "failures": engine.jobs(status="failed", limit=self.failure_limit),
        }

    def render_html(self) -> str:
        snap = self.snapshot()
        stats = snap["stats"]
        counts = " · ".join(
            f"{s} <b>{stats.get(s, 0):,}</b>"
            for s in ("queued", "running", "completed", "failed", "cancelled", "timeout")
        )
        rows = []
        now_ms = time.time() * 1000
        for job in snap["active"]:
            took = (now_ms - job.started_at) / 1000 if job.started_at else 0
            rows.append(
                f"<tr><td><code>{html.escape(job.id[-12:])}</code></td>"
                f"<td>{html.escape(job.type)}</td>"
                f"<td><div class='bar'><div style='width:{job.progress}%'></div></div></td>"
                f"<td>{job.progress}%</td><td>{html.escape(job.message or '')}</td>"
                f"<td class='dim'>{_fmt_seconds(took)}</td></tr>"
            )
        active = (
            "<table><tr><th>job</th><th>type</th><th>progress</th><th></th><th>message</th>"
            "<th>running</th></tr>" + "".join(rows) + "</table>"
            if rows
            else "<p class='dim'>no job is running</p>"
        )
        failed = []
        for job in snap["failures"]:
            failed.append(
                f"<tr><td><code>{html.escape(job.id[-12:])}</code></td>"
                f"<td>{html.escape(job.type)}</td>"
                f"<td class='bad'>{html.escape((job.error or '').splitlines()[0][:160] if job.error else '')}</td>"
                f"<td class='dim'>{job.attempts}/{job.max_attempts}</td></tr>"
            )
        failures = "<table>" + "".join(failed) + "</table>" if failed else "<p class='dim'>none</p>"
        stamp = time.strftime("%H:%M:%S")
        state = "live" if not self._stop.is_set() else "stopped"
        return (
            f"{_MONITOR_CSS}<div class='jf-mon'><div>{counts} "
            f"<span class='dim'>· {state}, {stamp}</span></div>"
            f"<b>active</b>{active}<b>recent failures</b>{failures}</div>"
        )

    def _show(self, text: str) -> None:
        if self.widget is not None:
            self.widget.value = text
        elif self._handle is not None:
            from IPython.display import HTML

            self._handle.update(HTML(text))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._engine_ref() is None:
                break
            try:
                self._show(self.render_html())
                self.updates += 1
            except Exception:  # noqa: BLE001 - a failed read is shown at the next tick
                continue
        try:
            self._show(self.render_html())
        except Exception:  # noqa: BLE001
            pass

    def stop(self) -> None:
        """Stops updating (the last table stays, marked stopped)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)

    def _ipython_display_(self) -> None:
        return None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<jobforge monitor every {self.interval:g}s, {state}>"


def monitor(engine: Engine, **options: Any) -> Monitor:
    """See ``Engine.monitor``."""
    return Monitor(engine, **options)


__all__ = ["progress", "ProgressDisplay", "Monitor", "monitor"]
