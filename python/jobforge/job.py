"""``Job`` and ``Event``: Python views of the engine's records, JSON decoded on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from . import _json
from .errors import JobforgeError

if TYPE_CHECKING:
    from .engine import Engine, Subscription

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "timeout"})
ACTIVE_STATUSES = ("created", "queued", "running")
STATUSES = ("created", "queued", "running", "completed", "failed", "cancelled", "timeout")

_UNSET: Any = object()


def _decode_stored(raw: str, job_id: str, what: str) -> Any:
    """JSON read back from the store; text damaged on disk is a StoreError naming the job."""
    try:
        return _json.loads(raw)
    except (ValueError, RecursionError) as exc:
        from .errors import StoreError

        raise StoreError(f"job {job_id}: the stored {what} is not readable JSON ({exc})") from None


def _ms_or_none(value: int) -> Optional[int]:
    return value or None


class Job:
    """A job as last read from the store. ``refresh()`` re-reads it; ``wait()`` waits for its end.

    Timestamps are Unix milliseconds (``None`` when not reached yet)."""

    __slots__ = ("_engine", "_rec", "_payload", "_result")

    def __init__(self, engine: Engine, record: Any) -> None:
        self._engine = engine
        self._rec = record
        self._payload = _UNSET
        self._result = _UNSET

    # -- identity and options ------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._rec.id

    @property
    def type(self) -> str:
        return self._rec.type

    @property
    def status(self) -> str:
        return self._rec.status

    @property
    def priority(self) -> int:
        return self._rec.priority

    @property
    def payload(self) -> Any:
        if self._payload is _UNSET:
            self._payload = _decode_stored(self._rec.payload_json, self._rec.id, "payload")
        return self._payload

    @property
    def max_attempts(self) -> int:
        return self._rec.max_attempts

    @property
    def attempts(self) -> int:
        return self._rec.attempts

    @property
    def timeout(self) -> float:
        """Seconds a run may take before it ends ``timeout``."""
        return self._rec.timeout_ms / 1000.0

    @property
    def retry_delay(self) -> float:
        return self._rec.retry_delay_ms / 1000.0

    @property
    def backoff(self):
        """The retry backoff: ``jobforge.Fixed``, ``Linear`` or ``Exponential``."""
        from .backoff import decode

        return decode(self._rec.backoff, self._rec.retry_delay_ms)

    @property
    def parent_id(self) -> Optional[str]:
        return self._rec.parent_id

    @property
    def user_initiated(self) -> bool:
        return self._rec.user_initiated

    @property
    def queue(self) -> str:
        """The named queue the job waits in ("default" unless enqueued with ``queue=``)."""
        return self._rec.queue

    @property
    def unique_key(self) -> Optional[str]:
        return self._rec.unique_key

    # -- progress and outcome -----------------------------------------------------------------
    @property
    def progress(self) -> int:
        """Percent done, 0–100."""
        return self._rec.progress

    @property
    def progress_current(self) -> float:
        return self._rec.progress_current

    @property
    def progress_total(self) -> Optional[float]:
        return self._rec.progress_total or None

    @property
    def percent(self) -> Optional[float]:
        """Percent done (0–100) when the total is known, else None."""
        total = self._rec.progress_total
        if not total:
            return None
        return max(0.0, min(100.0, 100.0 * self._rec.progress_current / total))

    @property
    def message(self) -> str:
        return self._rec.message

    @property
    def stage(self) -> Optional[str]:
        return self._rec.stage or None

    @property
    def rate(self) -> Optional[float]:
        """Progress units per second, from recent progress (jobs running in this process), or
        the average since the start otherwise; None when unknown."""
        if self._rec.rate > 0:
            return self._rec.rate
        return None

    @property
    def eta(self) -> Optional[float]:
        """Estimated seconds left (running jobs with a known total and rate), else None."""
        return self._rec.eta_ms / 1000.0 if self._rec.eta_ms >= 0 else None

    @property
    def outcome(self) -> dict:
        """The sums of ``ctx.count(key, n)``: e.g. ``{"updates": 3, "errors": 1}``."""
        raw = self._rec.outcome_json
        return _json.loads(raw) if raw else {}

    @property
    def result(self) -> Any:
        if self._result is _UNSET:
            raw = self._rec.result_json
            self._result = None if raw is None else _decode_stored(raw, self._rec.id, "result")
        return self._result

    @property
    def error(self) -> Optional[str]:
        return self._rec.error

    @property
    def error_detail(self) -> Optional[str]:
        """The traceback of the last failed attempt, when the processor is Python."""
        return self._rec.error_detail

    @property
    def cancel_requested(self) -> bool:
        return self._rec.cancel_requested

    @property
    def is_final(self) -> bool:
        return self._rec.status in FINAL_STATUSES

    # -- timestamps ----------------------------------------------------------------------------
    @property
    def created_at(self) -> Optional[int]:
        return _ms_or_none(self._rec.created_at)

    @property
    def queued_at(self) -> Optional[int]:
        return _ms_or_none(self._rec.queued_at)

    @property
    def started_at(self) -> Optional[int]:
        return _ms_or_none(self._rec.started_at)

    @property
    def completed_at(self) -> Optional[int]:
        return _ms_or_none(self._rec.completed_at)

    @property
    def run_at(self) -> Optional[int]:
        return _ms_or_none(self._rec.run_at)

    @property
    def timeout_at(self) -> Optional[int]:
        return _ms_or_none(self._rec.timeout_at)

    @property
    def duration(self) -> Optional[float]:
        """Seconds between start and end of the last attempt, once finished."""
        if not (self._rec.started_at and self._rec.completed_at):
            return None
        return (self._rec.completed_at - self._rec.started_at) / 1000.0

    # -- actions -------------------------------------------------------------------------------
    def refresh(self) -> Job:
        """Re-reads the job from the store and returns it (self)."""
        record = self._engine._core.get(self.id)
        if record is None:
            raise JobforgeError(f"job '{self.id}' no longer exists in the store")
        self._set(record)
        return self

    def wait(self, timeout: Optional[float] = None) -> Job:
        """Blocks (without holding the GIL) until the job is final and returns it refreshed.
        Raises ``TimeoutError`` if ``timeout`` seconds pass first. On the main thread Ctrl-C
        interrupts the wait (``KeyboardInterrupt`` within 0.1 s); the job is not touched."""
        self._set(self._engine._wait_record(self.id, timeout))
        return self

    async def wait_async(self, timeout: Optional[float] = None) -> Job:
        """``await job.wait_async()`` (or ``await job``): waits for the end without blocking the
        event loop. Final events of this process wake it at once; jobs run by other processes
        are seen by polling."""
        import asyncio

        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def on_status(ev: Event) -> None:
            if ev.status in FINAL_STATUSES and not loop.is_closed():
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        # call_soon_threadsafe never blocks: called on the delivery thread itself.
        sub = self._engine._subscribe("job-status-changed", on_status, self.id, None, inline=True)
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while True:
                self.refresh()
                if self.is_final:
                    return self
                wait = 0.25
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        raise TimeoutError(
                            f"job {self.id} did not finish within {timeout} s "
                            f"(status: {self.status})"
                        )
                try:
                    await asyncio.wait_for(asyncio.shield(done), wait)
                except asyncio.TimeoutError:
                    pass
        finally:
            sub.unsubscribe()

    def __await__(self):
        return self.wait_async().__await__()

    def logs(self, level: Optional[str] = None, limit: int = 1000) -> list:
        """This job's log lines, oldest first (see ``Engine.logs``)."""
        return self._engine.logs(self.id, level=level, limit=limit)

    def cancel(self) -> bool:
        return self._engine.cancel(self.id)

    def retry(self) -> bool:
        return self._engine.retry(self.id)

    def on_progress(self, callback: Callable[[Event], Any]) -> Subscription:
        """Calls ``callback(event)`` for each progress event of this job."""
        return self._engine.on("job-progress", callback, job_id=self.id)

    def on_status(self, callback: Callable[[Event], Any]) -> Subscription:
        return self._engine.on("job-status-changed", callback, job_id=self.id)

    def display(self, **options: Any):
        """Shows a live progress bar for this job in Jupyter (ipywidgets, else tqdm) and returns
        at once; see ``jobforge.notebook.progress``."""
        from .notebook import progress

        return progress(self, **options)

    def to_dict(self) -> dict:
        keys = (
            "id type status priority payload progress progress_current progress_total percent "
            "stage message rate eta outcome "
            "result error error_detail attempts max_attempts timeout parent_id user_initiated "
            "created_at queued_at started_at completed_at run_at"
        ).split()
        return {k: getattr(self, k) for k in keys}

    def _set(self, record: Any) -> None:
        self._rec = record
        self._payload = _UNSET
        self._result = _UNSET

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        extra = f" progress={self.progress}%" if self.status == "running" else ""
        if self.error and self.status != "completed":
            extra += f" error={self.error[:60]!r}"
        return f"<Job {self.id[:8]} {self.type} {self.status}{extra}>"


class Event:
    """A lifecycle or progress event, delivered after the state it reports is committed."""

    __slots__ = (
        "type", "job_id", "job_type", "status", "previous_status", "progress",
        "progress_current", "progress_total", "message", "error", "attempt", "timestamp",
        "stage", "rate", "eta", "level", "log_id", "_fields_json", "_result_json", "_result",
    )  # fmt: skip

    def __init__(self, record: Any) -> None:
        self.type: str = record.type
        self.job_id: str = record.job_id
        self.job_type: str = record.job_type
        self.status: str = record.status
        self.previous_status: str = record.previous_status
        self.progress: int = record.progress
        self.progress_current: float = record.progress_current
        self.progress_total: Optional[float] = record.progress_total or None
        self.message: str = record.message
        self.error: Optional[str] = record.error
        self.attempt: int = record.attempt
        self.timestamp: int = record.timestamp
        self.stage: Optional[str] = record.stage or None
        self.rate: Optional[float] = record.rate if record.rate > 0 else None
        self.eta: Optional[float] = record.eta_ms / 1000.0 if record.eta_ms >= 0 else None
        # job-log events: the line is ``message``, at ``level``, with ``fields``.
        self.level: Optional[str] = record.level if record.type == "job-log" else None
        self.log_id: int = record.log_id
        self._fields_json: str = record.fields_json
        self._result_json: Optional[str] = record.result_json
        self._result: Any = _UNSET

    @property
    def fields(self) -> dict:
        return _json.loads(self._fields_json) if self._fields_json else {}

    @property
    def percent(self) -> Optional[float]:
        if not self.progress_total:
            return None
        return max(0.0, min(100.0, 100.0 * self.progress_current / self.progress_total))

    @property
    def result(self) -> Any:
        if self._result is _UNSET:
            raw = self._result_json
            self._result = None if raw is None else _json.loads(raw)
        return self._result

    def __repr__(self) -> str:
        detail = f" {self.progress}%" if self.type == "job-progress" else ""
        return f"<Event {self.type} {self.job_id[:8]} {self.status}{detail}>"
