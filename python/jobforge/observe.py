"""Observability: log lines, event streams (blocking and asyncio), health and metrics.

The engine keeps the numbers (``jobforge._core``); this module shapes them for Python: a
bounded event queue that coalesces progress for slow consumers, an iterator and an async
iterator over it, the health verdict and the Prometheus text exposition."""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import re
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Optional

from . import _json
from .job import Event

if TYPE_CHECKING:
    from .engine import Engine, Subscription

LOG_LEVELS = ("debug", "info", "warning", "error")

_log = logging.getLogger("jobforge")


class LogLine:
    """One line of a job's log. ``at`` is Unix milliseconds; ``fields`` the keyword context."""

    __slots__ = ("id", "job_id", "attempt", "at", "level", "stage", "message", "_fields_json")

    def __init__(self, record: Any) -> None:
        self.id: int = record.id
        self.job_id: str = record.job_id
        self.attempt: int = record.attempt
        self.at: int = record.at
        self.level: str = record.level
        self.stage: Optional[str] = record.stage or None
        self.message: str = record.message
        self._fields_json: str = record.fields_json

    @property
    def fields(self) -> dict:
        return _json.loads(self._fields_json) if self._fields_json else {}

    def to_dict(self) -> dict:
        keys = ("id", "job_id", "attempt", "at", "level", "stage", "message", "fields")
        return {k: getattr(self, k) for k in keys}

    def __repr__(self) -> str:
        return f"<LogLine {self.level} {self.message[:60]!r}>"


class _EventQueue:
    """The queue between the engine's delivery thread and one consumer (an ``events()`` stream
    or an ``engine.on`` callback). Bounded, so a slow consumer only hurts itself: past
    ``maxsize`` a progress event replaces its job's queued one (``coalesced``), a log event is
    dropped (the line is in the store), and lifecycle events (and a job's first progress event)
    are still kept up to ``lifecycle_limit`` events in all, then dropped too. Drops are counted (``dropped``, by type
    in ``dropped_by_type``); the first of a burst is logged at once (logger "jobforge"), and the
    consumer logs what the burst dropped when it catches up (``take_drop_report``)."""

    def __init__(
        self, maxsize: int, on_put=None, *, lifecycle_limit: Optional[int] = None,
        owner: str = "an events() stream",
    ) -> None:  # fmt: skip
        self._items: deque[Event] = deque()
        self._cond = threading.Condition()
        self._maxsize = maxsize
        self._hard_limit = max(maxsize, lifecycle_limit or maxsize)
        self._owner = owner
        self._on_put = on_put
        self.coalesced = 0
        self.dropped = 0
        self.dropped_by_type: dict[str, int] = {}
        self._unreported: dict[str, int] = {}
        self.busy = False  # a consumer thread is handling an item it took

    def _drop(self, ev: Event) -> bool:
        """Counts a dropped event; True for the first of a burst."""
        self.dropped += 1
        self.dropped_by_type[ev.type] = self.dropped_by_type.get(ev.type, 0) + 1
        first = not self._unreported
        self._unreported[ev.type] = self._unreported.get(ev.type, 0) + 1
        return first

    def put(self, ev: Event) -> None:
        drop = first = False
        with self._cond:
            size = len(self._items)
            if size >= self._maxsize:
                if ev.type == "job-progress":
                    for i in range(size - 1, -1, -1):
                        old = self._items[i]
                        if old.type == "job-progress" and old.job_id == ev.job_id:
                            self._items[i] = ev
                            self.coalesced += 1
                            return
                # One progress event per job joins the queue, like a lifecycle event.
                drop = ev.type == "job-log" or size >= self._hard_limit
            if drop:
                first = self._drop(ev)
            else:
                self._items.append(ev)
                self._cond.notify_all()
        if drop:
            if first:
                _log.warning("jobforge: %s is behind (%d events queued); dropping events until "
                             "it catches up", self._owner, size)  # fmt: skip
            return
        if self._on_put is not None:
            self._on_put()

    def take_drop_report(self) -> Optional[str]:
        """What was dropped since the last report ("3 job-log, 1 job-completed"), or None."""
        with self._cond:
            if not self._unreported:
                return None
            counts, self._unreported = self._unreported, {}
        return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))

    def get(self, timeout: Optional[float], mark_busy: bool = False) -> Optional[Event]:
        """The next event, or None when ``timeout`` seconds pass without one (releases the GIL
        while waiting; Ctrl-C interrupts the wait). ``mark_busy``: the caller handles the event
        and calls ``done()`` after."""
        with self._cond:
            if not self._items:
                self._cond.wait_for(lambda: bool(self._items), timeout)
            if not self._items:
                return None
            self.busy = mark_busy
            return self._items.popleft()

    def done(self) -> None:
        with self._cond:
            self.busy = False
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the queue is empty and no item is being handled."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self.busy, timeout)

    def empty(self) -> bool:
        with self._cond:
            return not self._items

    def after_fork(self) -> None:
        """In a forked child: a new condition (a parent thread may have held the old one)."""
        self._cond = threading.Condition()
        self.busy = False

    def get_nowait(self) -> Optional[Event]:
        with self._cond:
            return self._items.popleft() if self._items else None


class _Stream:
    """A subscription feeding a bounded ``_EventQueue``; ended by ``close()``, by leaving a
    ``with`` block, or when the stream is collected."""

    def __init__(
        self,
        engine: Engine,
        event: str,
        job_id: Optional[str],
        job_type: Optional[str],
        timeout: Optional[float],
        maxsize: int,
        on_put=None,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize!r}")
        # Lifecycle events (above all each final state) are kept well past maxsize.
        self._queue = _EventQueue(maxsize, on_put, lifecycle_limit=max(1000, 10 * maxsize))
        self._timeout = timeout
        self._closed = False
        # The queue's put never blocks: called on the delivery thread itself.
        self._sub: Subscription = engine._subscribe(event, self._queue.put, job_id, job_type,
                                                    inline=True)  # fmt: skip

    @property
    def coalesced(self) -> int:
        """Progress events replaced by a newer one because the consumer fell behind."""
        return self._queue.coalesced

    @property
    def dropped(self) -> int:
        """Events dropped because the consumer fell behind (see ``_EventQueue``)."""
        return self._queue.dropped

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sub.unsubscribe()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class EventStream(_Stream):
    """``for event in engine.events(timeout=5): ...`` — events as they are committed. Iteration
    ends when ``timeout`` seconds pass with no event (never, with ``timeout=None``) or after
    ``close()``. Use it as a context manager, or close it, to end the subscription."""

    def __init__(
        self,
        engine: Engine,
        event: str = "*",
        *,
        job_id: Optional[str] = None,
        job_type: Optional[str] = None,
        timeout: Optional[float] = None,
        maxsize: int = 10_000,
    ) -> None:
        super().__init__(engine, event, job_id, job_type, timeout, maxsize)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        if self._closed:
            raise StopIteration
        ev = self._queue.get(self._timeout)
        if ev is None:
            self.close()
            raise StopIteration
        report = self._queue.take_drop_report()
        if report is not None:
            _log.warning("jobforge: an events() stream fell behind; it dropped %s", report)
        return ev

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _weak_call(ref: weakref.WeakMethod):
    def call() -> None:
        method = ref()
        if method is not None:
            method()

    return call


class AsyncEventStream(_Stream):
    """``async for event in engine.aevents(): ...`` — the same stream for asyncio. Events are
    handed to the loop with ``call_soon_threadsafe``; nothing blocks the loop, so it works in a
    running Jupyter kernel."""

    def __init__(
        self,
        engine: Engine,
        event: str = "*",
        *,
        job_id: Optional[str] = None,
        job_type: Optional[str] = None,
        timeout: Optional[float] = None,
        maxsize: int = 10_000,
    ) -> None:
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._ready: Optional[asyncio.Event] = None
        # Weakly: the subscription holds the queue, and a stream dropped without close() must
        # still be collected (and unsubscribe in __del__).
        super().__init__(engine, event, job_id, job_type, timeout, maxsize,
                         on_put=_weak_call(weakref.WeakMethod(self._wake)))  # fmt: skip

    def _wake(self) -> None:
        # One hop to the loop per wait, not per event: while `ready` is set, the consumer has
        # not cleared it yet and will read the queue (the item is queued before this call).
        loop, ready = self._loop, self._ready
        if loop is not None and ready is not None and not ready.is_set() and not loop.is_closed():
            loop.call_soon_threadsafe(ready.set)

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._ready = asyncio.Event()
        assert self._ready is not None
        while not self._closed:
            ev = self._queue.get_nowait()
            if ev is not None:
                return ev
            self._ready.clear()
            ev = self._queue.get_nowait()  # one may have arrived before the clear
            if ev is not None:
                return ev
            try:
                await asyncio.wait_for(self._ready.wait(), self._timeout)
            except asyncio.TimeoutError:
                self.close()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


# -- health ----------------------------------------------------------------------------------

_INTEGRITY_TTL = 60.0


def health(
    engine: Engine,
    *,
    integrity: bool = True,
    max_wait: float = 300.0,
    max_error_rate: float = 0.5,
    detail: Optional[dict] = None,
    max_write_failure: float = 60.0,
) -> dict:
    """The engine's health: ``status`` is "ok", "degraded" or "failing", with ``reasons``.
    ``detail``: ``stats_detail()`` already read by the caller (not read again).
    ``max_write_failure``: seconds of failing writes (disk full) after which it is "failing"."""
    now_ms = int(time.time() * 1000)
    reasons: list[str] = []
    failing = False
    result: dict[str, Any] = {"checked_at": now_ms, "path": engine.path}
    try:
        if detail is None:
            detail = engine._core.stats_detail()
        workers = engine._core.worker_list()
        reachable = True
    except Exception as exc:  # noqa: BLE001 - any store error means unreachable
        result.update(
            status="failing",
            reasons=[f"database unreachable: {exc}"],
            database={"reachable": False, "integrity": None},
            workers=[],
        )
        return result
    check = None
    if integrity:
        cached = getattr(engine, "_integrity_cache", None)
        if cached is None or time.monotonic() - cached[0] > _INTEGRITY_TTL:
            cached = (time.monotonic(), engine._core.integrity_check())
            engine._integrity_cache = cached
        check = cached[1]
        if check != "ok":
            failing = True
            reasons.append(f"integrity check failed: {check}")
    result["database"] = {"reachable": reachable, "integrity": check}
    # This process's store: writes it keeps and retries (disk full; server unreachable).
    store = engine._core.store_health()
    result["store"] = store
    if store != "ok":
        reasons.append(f"store {store}")
        since = _failing_since(store)
        if since is not None and now_ms - since > max_write_failure * 1000:
            failing = True

    lease_ms = int(1000 * float(engine._config.get("lease", 30.0)))
    live = []
    for w in workers:
        age = max(0, now_ms - w["heartbeat_at"])
        alive = w["state"] == "running" and age <= lease_ms
        live.append({**w, "alive": alive, "heartbeat_age": age / 1000.0})
    result["workers"] = live
    alive_count = sum(1 for w in live if w["alive"])
    due = detail["due"]
    oldest = detail["oldest_due_age_ms"] / 1000.0
    result["queue"] = {"queued": detail["queued_total"], "due": due, "oldest_due_age": oldest}
    if due and not alive_count:
        reasons.append(f"{due} job(s) due and no live worker")
    unserved: list[str] = []
    if due:
        # Types with due jobs that no live worker publishes (docs/workers.md): nothing runs them.
        queued_types = [n for n, t in detail["types"].items() if t["counts"].get("queued")]
        try:
            unserved = sorted(engine._core.unserved_types(queued_types)) if queued_types else []
        except Exception:  # noqa: BLE001 - a store error is reported by the checks above
            unserved = []
        if unserved:
            names = ", ".join(f"'{n}'" for n in unserved[:5])
            more = f" and {len(unserved) - 5} more" if len(unserved) > 5 else ""
            reasons.append(f"due jobs of type(s) no live worker serves: {names}{more}")
    result["queue"]["unserved_types"] = unserved
    if due and oldest > max_wait:
        reasons.append(f"oldest due job has waited {oldest:.0f} s (more than {max_wait:g} s)")
    rates = {}
    for name, t in detail["types"].items():
        ended = t["completed"] + t["failed"] + t["timeout"] + t["retried"]
        rates[name] = t["error_rate"]
        if ended >= 10 and t["error_rate"] > max_error_rate:
            reasons.append(f"type '{name}': {t['error_rate']:.0%} of attempts failed recently")
    result["error_rates"] = rates
    dead = [w["id"] for w in live if w["state"] == "running" and not w["alive"]]
    if dead:
        reasons.append(f"{len(dead)} worker(s) stopped heartbeating: {', '.join(dead[:3])}")
    result["status"] = "failing" if failing else ("degraded" if reasons else "ok")
    result["reasons"] = reasons
    return result


def _failing_since(store_health: str) -> Optional[int]:
    """Unix ms of "writes failing since <UTC time>" in a store's health, else None."""
    m = re.search(r"writes failing since (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", store_health)
    if not m:
        return None
    at = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%SZ")
    return int(at.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)


# -- Prometheus text exposition (format 0.0.4) -------------------------------------------------


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                body = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
                self.lines.append(f"{name}{{{body}}} {_number(value)}")
            else:
                self.lines.append(f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def metrics_text(engine: Engine) -> str:
    """The engine's figures in the Prometheus text format, for a scrape endpoint."""
    detail = engine._core.stats_detail()
    local = engine._core.local_stats()
    h = health(engine, integrity=False, detail=detail)
    out = _Exposition()
    types = detail["types"]
    out.family(
        "jobforge_jobs", "gauge", "Jobs in the store by type and status.",
        [({"type": t, "status": s}, n) for t, v in types.items() for s, n in v["counts"].items()
         if n],
    )  # fmt: skip
    out.family("jobforge_queue_depth", "gauge", "Queued jobs, due or delayed.",
               [({}, detail["queued_total"])])  # fmt: skip
    out.family("jobforge_jobs_due", "gauge", "Queued jobs that are due now.", [({}, detail["due"])])
    out.family("jobforge_oldest_due_age_seconds", "gauge",
               "How long the oldest due job has waited.",
               [({}, detail["oldest_due_age_ms"] / 1000.0)])  # fmt: skip
    window = detail["window_ms"] / 1000.0
    for stat, key, help_text in (
        ("mean", "mean_run_ms", "Mean run time"),
        ("p50", "p50_run_ms", "Median run time"),
        ("p95", "p95_run_ms", "95th percentile run time"),
    ):
        out.family(
            f"jobforge_job_run_seconds_{stat}", "gauge",
            f"{help_text} of attempts that ended in the last {window:g} s, by type.",
            [({"type": t}, v[key] / 1000.0) for t, v in types.items() if v["runs"]],
        )  # fmt: skip
    out.family("jobforge_job_error_ratio", "gauge",
               f"Failed, timed-out and retried attempts among those ended in the last {window:g} s.",
               [({"type": t}, v["error_rate"]) for t, v in types.items()])  # fmt: skip
    rate_window = detail["rate_window_ms"] / 1000.0
    out.family("jobforge_jobs_created_per_second", "gauge",
               f"Jobs created per second over the last {rate_window:g} s.",
               [({"type": t}, v["created_per_s"]) for t, v in types.items()])  # fmt: skip
    out.family("jobforge_jobs_completed_per_second", "gauge",
               f"Jobs completed per second over the last {rate_window:g} s.",
               [({"type": t}, v["completed_per_s"]) for t, v in types.items()])  # fmt: skip
    workers = h.get("workers", [])
    out.family("jobforge_workers_alive", "gauge", "Worker engines with a recent heartbeat.",
               [({}, sum(1 for w in workers if w["alive"]))])  # fmt: skip
    out.family("jobforge_worker_heartbeat_age_seconds", "gauge",
               "Seconds since each registered worker's last heartbeat.",
               [({"worker": w["id"], "hostname": w["hostname"]}, w["heartbeat_age"])
                for w in workers])  # fmt: skip
    out.family("jobforge_health", "gauge", "1 for the current health status of this engine.",
               [({"status": s}, 1 if h["status"] == s else 0)
                for s in ("ok", "degraded", "failing")])  # fmt: skip
    out.family("jobforge_engine_running_jobs", "gauge", "Jobs running in this process.",
               [({}, local["running"])])  # fmt: skip
    out.family("jobforge_engine_worker_threads", "gauge", "Worker threads of this engine.",
               [({}, local["workers"])])  # fmt: skip
    out.family("jobforge_progress_writes_total", "counter",
               "Progress updates this process wrote to the store.",
               [({}, local["progress_writes"])])  # fmt: skip
    out.family("jobforge_log_lines_total", "counter", "Job log lines written by this process.",
               [({}, local["log_lines"])])  # fmt: skip
    out.family("jobforge_events_coalesced_total", "counter",
               "Progress events replaced by a newer one for a slow subscriber.",
               [({}, local["events_coalesced"])])  # fmt: skip
    out.family("jobforge_events_dropped_total", "counter",
               "Job log events dropped for a slow subscriber (the lines are in the store).",
               [({}, local["events_dropped"])])  # fmt: skip
    return out.text()
