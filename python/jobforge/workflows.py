"""Workflows on top of the engine: batches, chains, schedules and the direct path (run_now).
The rules live in C++ (the store enforces unique keys, dependencies, batch ends, schedule fires
and limits); this module converts arguments and shapes results. See docs/workflows.md."""

from __future__ import annotations

import datetime as _dt
import re
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from . import _json

if TYPE_CHECKING:
    from .engine import Engine
    from .job import Job

BATCH_POLICIES = ("continue", "fail", "fail_fast")
MISFIRE_POLICIES = ("run_once", "skip")


def run_at_delay(run_at: Any) -> float:
    """Seconds from now until ``run_at`` (a datetime; naive means UTC), at least 0."""
    if not isinstance(run_at, _dt.datetime):
        raise TypeError(f"run_at must be a datetime, got {type(run_at).__name__} {run_at!r}")
    if run_at.tzinfo is None:
        run_at = run_at.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, (run_at - _dt.datetime.now(_dt.timezone.utc)).total_seconds())


def dependency_ids(depends_on: Any) -> list[str]:
    from .job import Job

    if isinstance(depends_on, (str, Job)):
        depends_on = [depends_on]
    ids = []
    for index, dep in enumerate(depends_on):
        if isinstance(dep, Job):
            dep = dep.id
        if not isinstance(dep, str) or not dep:
            raise TypeError(f"depends_on[{index}] must be a job id or a Job, got {dep!r}")
        ids.append(dep)
    return ids


@dataclass(frozen=True)
class Schedule:
    """A cron schedule as stored (``engine.schedules()``). Times are Unix seconds (UTC)."""

    name: str
    cron: str
    type: str
    payload: Any
    priority: Optional[int]
    timezone: str
    misfire: str
    queue: str
    next_fire_at: float
    last_fire_at: Optional[float]
    last_job_id: Optional[str]

    @classmethod
    def from_record(cls, d: dict) -> Schedule:
        return cls(
            name=d["name"], cron=d["cron"], type=d["type"], payload=_json.loads(d["payload_json"]),
            priority=d["priority"], timezone=d["timezone"], misfire=d["misfire"],
            queue=d["queue"], next_fire_at=d["next_fire_at"] / 1000.0,
            last_fire_at=d["last_fire_at"] / 1000.0 if d["last_fire_at"] else None,
            last_job_id=d["last_job_id"] or None,
        )  # fmt: skip

    @property
    def next_fire(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.next_fire_at, _dt.timezone.utc)


class Batch:
    """What ``engine.batch(...)`` yields: ``enqueue`` children inside the ``with`` block; at its
    end the parent and every child are stored in one transaction (all or none). After the block,
    ``job`` is the parent and ``children`` the children. An exception inside the block stores
    nothing."""

    def __init__(self, engine: Engine, parent: dict, on_child_failure: str) -> None:
        self._engine = engine
        self._parent = parent
        self._policy = on_child_failure
        self._children: list[dict] = []
        self.job: Optional[Job] = None
        self.children: list[Job] = []

    def enqueue(self, type: str, payload: Any = None, **options: Any) -> None:
        """Adds a child (same options as ``engine.enqueue``); stored when the block ends."""
        if self.job is not None:
            raise RuntimeError("this batch is already stored; start another with engine.batch()")
        if "parent" in options:
            raise ValueError("a batch child's parent is the batch; do not pass parent=")
        self._children.append(self._engine._spec(type, payload, **options))

    def __len__(self) -> int:
        return len(self._children)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            return
        from .job import Job

        written: list = []  # what the core stored, even if Ctrl-C lands as it returns
        try:
            self._engine._core.enqueue_batch(self._parent, self._children, self._policy, written)
            self.job = Job(self._engine, written[0])
            self.children = [Job(self._engine, r) for r in written[1:]]
        except KeyboardInterrupt as exc:
            exc.jobs = written  # first: nothing in between can be interrupted
            from .engine import _return_after_interrupt

            again = _return_after_interrupt(self._engine, written)
            if written:  # stored (the normal path may have been cut between the two)
                self.job, self.children = written[0], written[1:]
            if not again:
                raise
            # Ctrl-C again, once the batch holds its jobs (see _return_after_interrupt).
            self._engine._core.interrupt_again  # noqa: B018


Step = Union[tuple, dict, str]


def chain_specs(engine: Engine, steps: Sequence[Any]) -> tuple[list[dict], list[int]]:
    """Specs for ``engine.chain``: each step is a job ``(type, payload[, options])``, a dict
    ``{"type": ..., "payload": ..., **options}``, or a list of such run in parallel (fan-out);
    each step depends on every job of the step before it (fan-in). Returns the specs and, per
    step, where its jobs start."""
    if not steps:
        raise ValueError("chain needs at least one step")
    specs: list[dict] = []
    previous: list[int] = []
    for number, step in enumerate(steps):
        group = step if isinstance(step, list) else [step]
        if not group:
            raise ValueError(f"chain step {number} is an empty list")
        current = []
        for job in group:
            if isinstance(job, str):
                job = (job,)
            if isinstance(job, dict):
                job = dict(job)
                type_, payload = job.pop("type", None), job.pop("payload", None)
                options = job
            elif isinstance(job, tuple) and 1 <= len(job) <= 3:
                type_ = job[0]
                payload = job[1] if len(job) > 1 else None
                options = dict(job[2]) if len(job) > 2 else {}
            else:
                raise TypeError(
                    f"chain step {number} must be (type, payload[, options]), a dict or a list "
                    f"of them, got {job!r}"
                )
            spec = engine._spec(type_, payload, **options)
            if previous:
                spec["depends_on_index"] = list(previous)
            current.append(len(specs))
            specs.append(spec)
        previous = current
    return specs, previous


_RATE = re.compile(r"^\s*\d+(\.\d+)?\s*/\s*(\d*\s*(ms|s|m|h|d|sec|min|hour|day))\s*$")


def check_rate(rate: Optional[str]) -> Optional[str]:
    if rate is None:
        return None
    if not isinstance(rate, str) or not _RATE.match(rate):
        raise ValueError(f"rate must look like '10/s', '100/m', '5/h' or '1/30s', got {rate!r}")
    return rate.replace(" ", "")


class TerminalProgress:
    """run_now's progress in a terminal: one line on stderr, redrawn at most 10 times a second;
    silent when stderr is not a terminal."""

    def __init__(self, type: str, stream=None) -> None:
        self.type = type
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._drawn = False

    def __call__(self, current: float, total: float, message: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        done = total > 0 and current >= total
        if now - self._last < 0.1 and not done:
            return
        self._last = now
        if total > 0:
            pct = max(0.0, min(1.0, current / total))
            bar = "#" * int(pct * 20)
            text = f"{self.type} [{bar:<20}] {pct * 100:5.1f}%"
        else:
            text = f"{self.type} {current:,.0f} processed"
        if message:
            text += f" {message}"
        self.stream.write("\r" + text[:120].ljust(60))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def run_now(engine: Engine, type: str, payload: Any, progress: Union[bool, Callable]) -> Any:
    fn = engine._processors.get(type)
    bar = TerminalProgress(type) if progress is True else None
    callback = bar if bar is not None else (progress if callable(progress) else None)
    try:
        if fn is not None:
            # A Python processor: called here, so its own exception propagates unchanged.
            ctx = engine._core.direct_context(type, callback)
            return fn(ctx, _json.loads(_json.dumps(payload)))
        result = engine._core.run_now(type, _json.dumps(payload), callback)
        return _json.loads(result)
    finally:
        if bar is not None:
            bar.close()
