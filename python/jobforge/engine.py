"""The Pythonic face of the engine: processors as decorators, jobs as objects, events as
callbacks. Behaviour lives in the C++ engine (``jobforge._core``); this module converts
arguments, names errors in Python terms and fans events out to Python subscribers."""

from __future__ import annotations

import atexit
import datetime
import logging
import math
import os
import signal
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Union

from . import _core, _json
from . import workflows as _workflows
from ._processors import make_adapter
from .backoff import BackoffSpec, Exponential, Fixed, Linear
from .errors import JobforgeError, ValidationError
from .job import STATUSES, Event, Job

if TYPE_CHECKING:
    from .worker import Supervisor

log = logging.getLogger("jobforge")

PRIORITIES = {"urgent": 1, "high": 3, "normal": 5, "low": 7, "maintenance": 10}

EVENT_TYPES = frozenset(
    {
        "job-created", "job-queued", "job-started", "job-progress", "job-log", "job-retry",
        "job-completed", "job-failed", "job-cancelled", "job-timeout", "job-status-changed", "*",
    }
)  # fmt: skip

PathLike = Union[str, "os.PathLike[str]"]


def _is_postgres_url(path: str) -> bool:
    """A PostgreSQL store ("postgresql://..." or "postgres://..."), not a SQLite file."""
    return path.startswith(("postgresql://", "postgres://"))


def _redacted(path: str) -> str:
    """The path for display: a PostgreSQL URL's passwords (user info, ``password=``,
    ``sslpassword=``) replaced by ***; a file path unchanged."""
    return _core.redact_url(path)


_live_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_abandoned_after_fork: list[Any] = []  # see Engine._stand_in_for


class _CoreAfterFork:
    """An engine's C++ core in a child forked from the process that made it, until first use.

    The parent's core is never called in the child: its threads do not exist there, its SQLite
    and libpq connections belong to the parent, and a mutex one of its threads held at the fork
    stays locked. On first use the engine opens a core of its own (see Engine._reopen_after_fork);
    ``running`` and ``stop`` need none."""

    __slots__ = ("_engine",)
    running = False

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def stop(self, wait: bool = True) -> None:
        pass  # nothing of the parent's engine runs here

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine._reopen_after_fork(), name)


def _after_fork_in_child() -> None:
    for engine in list(_live_engines):
        engine._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _stop_live_engines() -> None:
    # Worker threads must not outlive the interpreter; running jobs go back to the queue.
    for engine in list(_live_engines):
        try:
            engine.stop(wait=False)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


# The longest time any option may be: ~31,700 years, far from int64 milliseconds (2.9e8 years) so
# that "now + delay" never overflows either.
_MAX_SECONDS = 1e12


def _seconds_to_ms(field: str, value: Optional[float]) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{field} must be a number of seconds, got {type(value).__name__} {value!r}"
        )
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{field} must be a finite number of seconds, got {value!r}")
    if value > _MAX_SECONDS:
        raise ValidationError(f"{field} must be at most {_MAX_SECONDS:g} seconds, got {value!r}",
                              field)  # fmt: skip
    if value < -_MAX_SECONDS:
        raise ValidationError(f"{field} must be 0 or more seconds, got {value!r}", field)
    ms = value * 1000.0
    # Round away from zero so a tiny positive value stays positive and a negative one negative.
    return int(math.ceil(ms)) if ms >= 0 else int(math.floor(ms))


def _backoff(retry_delay: Optional[float], backoff: Optional[BackoffSpec]):
    """(retry_delay_ms, backoff text) from the two ways of saying it."""
    if backoff is None:
        return _seconds_to_ms("retry_delay", retry_delay), None
    if not isinstance(backoff, (Fixed, Linear, Exponential)):
        raise TypeError(
            f"backoff must be jobforge.Fixed, Linear or Exponential, got {type(backoff).__name__}"
        )
    if retry_delay is not None:
        raise ValueError("give either retry_delay or backoff, not both (backoff carries the delay)")
    return _seconds_to_ms("backoff", backoff.base), backoff.encode()


def _int_option(field: str, value: Any, bits: int = 32) -> Optional[int]:
    """An int option as the core's C++ type (int32 or int64) holds it; bigger ones are refused
    here, naming the field, rather than by the binding's signature dump."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int, got {type(value).__name__} {value!r}")
    bound = 1 << (bits - 1)
    if value >= bound:
        raise ValidationError(f"{field} must be at most {bound - 1}, got {value}", field)
    if value < -bound:
        raise ValidationError(f"{field} must be at least {-bound}, got {value}", field)
    return value


def _workflow_config(queues, max_queue_size, misfire_grace, retention, cleanup_interval) -> dict:
    if queues is not None:
        if isinstance(queues, str):
            raise TypeError("queues must be a list of queue names, not a str")
        queues = list(queues)
        for q in queues:
            if not isinstance(q, str) or not q:
                raise ValueError(f"queues must hold non-empty str names, got {q!r}")
    size = _int_option("max_queue_size", max_queue_size, bits=64) or 0
    if size < 0:
        raise ValueError(f"max_queue_size must be 0 or more, got {max_queue_size!r}")
    grace = _seconds_to_ms("misfire_grace", misfire_grace)
    if grace is None or grace < 0:
        raise ValueError(f"misfire_grace must be 0 or more seconds, got {misfire_grace!r}")
    keep = _seconds_to_ms("retention", retention) or 0
    if keep < 0:
        raise ValueError(f"retention must be 0 or more seconds, got {retention!r}")
    every = _seconds_to_ms("cleanup_interval", cleanup_interval)
    if every is None or every < 1000:
        raise ValueError(f"cleanup_interval must be at least 1 second, got {cleanup_interval!r}")
    return dict(queues=queues or [], max_queue_size=size, misfire_grace_ms=grace,
                retention_ms=keep, cleanup_interval_ms=every)  # fmt: skip


def _processor_options(timeout, max_attempts, retry_delay, backoff, priority) -> dict[str, Any]:
    """A processor's default job options, checked, as the core's register_* calls take them."""
    timeout_ms = _seconds_to_ms("timeout", timeout)
    if timeout_ms is not None and timeout_ms <= 0:
        raise ValueError(f"timeout must be greater than 0 seconds, got {timeout!r}")
    max_attempts = _int_option("max_attempts", max_attempts)
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
    retry_ms, backoff_text = _backoff(retry_delay, backoff)
    if retry_ms is not None and retry_ms < 0:
        raise ValueError(f"retry_delay must be 0 or more seconds, got {retry_delay!r}")
    prio = _priority(priority)
    if prio is not None and not 1 <= prio <= 10:
        raise ValueError(f"priority must be between 1 and 10, got {prio}")
    return dict(timeout_ms=timeout_ms, max_attempts=max_attempts, retry_delay_ms=retry_ms,
                backoff=backoff_text, priority=prio)  # fmt: skip


def _priority(value: Any) -> Optional[int]:
    if isinstance(value, str):
        if value not in PRIORITIES:
            names = ", ".join(PRIORITIES)
            raise ValueError(f"priority must be 1..10 or one of {names}; got {value!r}")
        return PRIORITIES[value]
    return _int_option("priority", value)


# Seconds a subscription's callback thread waits without an event before it ends (the next
# event starts a new one).
_SUBSCRIBER_IDLE_EXIT = 5.0


class Subscription:
    """A handle on an event subscription; ``unsubscribe()`` ends it.

    Its callback runs on a thread of its own, fed by a bounded queue (``maxsize``; see
    ``Engine.on``): a slow or blocked callback delays only itself. ``dropped`` counts the events
    it lost for being behind (by type in ``dropped_by_type``), ``coalesced`` the progress events
    replaced by a newer one."""

    __slots__ = ("_engine", "event", "callback", "job_id", "job_type", "active", "_queue",
                 "_thread", "_start_lock", "__weakref__")  # fmt: skip

    def __init__(self, engine, event, callback, job_id, job_type, maxsize=None):
        self._engine = weakref.ref(engine)
        self.event = event
        self.callback = callback
        self.job_id = job_id
        self.job_type = job_type
        self.active = True
        # None: an internal subscriber whose callback never blocks, called on the delivery thread.
        self._queue = None
        if maxsize is not None:
            self._queue = _observe()._EventQueue(maxsize, owner=f"callback {callback!r}")
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()

    @property
    def dropped(self) -> int:
        return self._queue.dropped if self._queue is not None else 0

    @property
    def dropped_by_type(self) -> dict:
        return dict(self._queue.dropped_by_type) if self._queue is not None else {}

    @property
    def coalesced(self) -> int:
        return self._queue.coalesced if self._queue is not None else 0

    def matches(self, ev: Event) -> bool:
        return (
            (self.event == "*" or self.event == ev.type)
            and (self.job_id is None or self.job_id == ev.job_id)
            and (self.job_type is None or self.job_type == ev.job_type)
        )

    def _put(self, ev: Event) -> None:
        """On the delivery thread: queues the event for this subscriber's thread (never blocks)."""
        queue = self._queue
        if queue is None:
            try:
                self.callback(ev)
            except Exception:  # noqa: BLE001 - a subscriber never hurts the engine
                log.exception("jobforge: %s callback %r raised", ev.type, self.callback)
            return
        queue.put(ev)
        # Under the lock: a thread ending for idleness checks the queue under it too, so an event
        # put now is either seen by that thread or starts a new one.
        with self._start_lock:
            if self._thread is None and self.active:
                name = f"jobforge-events-{self.event}"
                thread = threading.Thread(target=self._run, name=name, daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        queue = self._queue
        assert queue is not None
        idle = 0.0
        while self.active:
            ev = queue.get(1.0, mark_busy=True)
            if ev is None:
                if self._engine() is None:  # the engine was collected: nothing more will come
                    return
                idle += 1.0
                if idle >= _SUBSCRIBER_IDLE_EXIT:
                    # A quiet subscription gives its thread back (one per job's on_progress
                    # would otherwise stay for ever); the next event starts another.
                    with self._start_lock:
                        if queue.empty():
                            self._thread = None
                            return
                continue
            idle = 0.0
            try:
                report = queue.take_drop_report()
                if report is not None:
                    log.warning("jobforge: callback %r fell behind its events; it dropped %s",
                                self.callback, report)  # fmt: skip
                if self.active:
                    self.callback(ev)
            except Exception:  # noqa: BLE001 - a subscriber never hurts the engine
                log.exception("jobforge: %s callback %r raised", ev.type, self.callback)
            finally:
                queue.done()

    def _after_fork(self) -> None:
        """In a forked child: the parent's delivery thread does not exist here, and a lock it
        held at the fork stays held; start afresh with the events already queued."""
        self._thread = None
        self._start_lock = threading.Lock()
        if self._queue is not None:
            self._queue.after_fork()

    def _drain(self, timeout: Optional[float] = None) -> None:
        """Blocks until the events queued so far were handled (not on this subscriber's thread)."""
        if self._queue is not None and self._thread is not threading.current_thread():
            self._queue.drain(timeout)

    def unsubscribe(self) -> None:
        engine = self._engine()
        if engine is not None:
            engine.off(self)
        self.active = False
        if self._queue is not None:
            self._queue.wake()

    def __repr__(self) -> str:
        return f"<Subscription {self.event} active={self.active}>"


class Engine:
    """A jobforge engine on one SQLite file, or on a PostgreSQL database shared by many hosts.

    >>> engine = Engine("jobs.db", workers=4)
    >>> @engine.processor("resize", timeout=30, max_attempts=3)
    ... def resize(ctx, payload):
    ...     ctx.progress(1, total=1, message="done")
    ...     return {"ok": True}
    >>> with engine:
    ...     engine.enqueue("resize", {"path": "a.jpg"}).wait().result
    {'ok': True}

    ``workers`` threads run jobs in this process. Processors may be registered before or after
    ``start()``. The native processors ``noop``, ``sleep``, ``scan``, ``stat`` and ``checksum`` are
    always registered (docs/native-processors.md); ``register_native`` adds C++ ones.
    ``exec`` (runs any command as this process's user) only with ``allow_exec=True``; its commands
    get a minimal environment unless ``exec_inherit_env=True`` (docs/security.md).

    ``path`` may be a PostgreSQL URL (``"postgresql://user@host/db"``): worker processes on every
    host then share one queue; ``pool_size`` bounds the connections this process uses for claims
    and reads (plus one writer and one listener). See docs/postgresql.md.
    """

    def __init__(
        self,
        path: PathLike = "jobs.db",
        workers: int = 4,
        *,
        retry_delay: float = 1.0,
        allow_unknown_types: bool = False,
        poll_interval: float = 0.25,
        heartbeat_interval: float = 5.0,
        lease: float = 30.0,
        progress_interval: float = 0.1,
        progress_persist_interval: float = 30.0,
        progress_persist_step: int = 10,
        stats_window: float = 3600.0,
        durability: str = "normal",
        singleton: Union[bool, str] = False,
        interrupt_grace: float = 1.0,
        claim_in_memory: bool = True,
        pool_size: int = 4,
        queues: Optional[Iterable[str]] = None,
        max_queue_size: int = 0,
        misfire_grace: float = 60.0,
        retention: Optional[float] = None,
        cleanup_interval: float = 3600.0,
        allow_exec: bool = False,
        exec_inherit_env: bool = False,
    ) -> None:
        path = os.fspath(path)
        for name, flag in (("allow_exec", allow_exec), ("exec_inherit_env", exec_inherit_env)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        wf = _workflow_config(queues, max_queue_size, misfire_grace, retention, cleanup_interval)
        if not isinstance(path, str):
            raise TypeError(f"path must be a str or path, got {type(path).__name__}")
        pool_size = _int_option("pool_size", pool_size)
        if pool_size is None or pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size!r}")
        workers = _int_option("workers", workers)
        if workers is None or workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', got {durability!r}")
        folder = os.path.dirname(os.path.abspath(path))
        if not _is_postgres_url(path) and not os.path.isdir(folder):
            raise _errors().StoreError(
                f"cannot open database '{path}': folder '{folder}' does not exist"
            )
        retry_ms = _seconds_to_ms("retry_delay", retry_delay)
        if retry_ms is None or retry_ms < 0:
            raise ValueError(f"retry_delay must be 0 or more seconds, got {retry_delay!r}")
        if singleton is True:
            singleton_role = "default"
        elif singleton is False or singleton is None:
            singleton_role = ""
        elif isinstance(singleton, str) and singleton:
            singleton_role = singleton
        else:
            raise ValueError(
                f"singleton must be a bool or a non-empty role name, got {singleton!r}"
            )
        persist_ms = _seconds_to_ms("progress_persist_interval", progress_persist_interval)
        if persist_ms is None or persist_ms < 0:
            raise ValueError(
                "progress_persist_interval must be 0 or more seconds, "
                f"got {progress_persist_interval!r}"
            )
        step = _int_option("progress_persist_step", progress_persist_step)
        if step is None or not 0 <= step <= 100:
            raise ValueError(
                f"progress_persist_step must be 0..100 percent, got {progress_persist_step!r}"
            )
        window_ms = _seconds_to_ms("stats_window", stats_window)
        if window_ms is None or window_ms < 10_000:
            raise ValueError(f"stats_window must be at least 10 seconds, got {stats_window!r}")
        grace_ms = _seconds_to_ms("interrupt_grace", interrupt_grace)
        if grace_ms is None or grace_ms < 0:
            raise ValueError(f"interrupt_grace must be 0 or more seconds, got {interrupt_grace!r}")
        self._core_options: dict[str, Any] = dict(
            workers=workers,
            retry_delay_ms=retry_ms,
            allow_unknown_types=bool(allow_unknown_types),
            poll_ms=max(1, _seconds_to_ms("poll_interval", poll_interval) or 1),
            heartbeat_ms=max(1, _seconds_to_ms("heartbeat_interval", heartbeat_interval) or 1),
            lease_ms=max(1, _seconds_to_ms("lease", lease) or 1),
            progress_event_ms=max(0, _seconds_to_ms("progress_interval", progress_interval) or 0),
            synchronous_full=durability == "full",
            singleton_role=singleton_role,
            interrupt_grace_ms=grace_ms,
            claim_in_memory=bool(claim_in_memory),
            progress_persist_ms=persist_ms,
            progress_persist_percent=step,
            stats_window_ms=window_ms,
            pool_size=pool_size,
            allow_exec=allow_exec,
            exec_inherit_env=exec_inherit_env,
            **wf,
        )
        self._core = _core.Engine(path, **self._core_options)
        self._url = path  # the real one (a PostgreSQL password included); never shown
        self._fork_lock = threading.Lock()
        self._subs_lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._core_subscription: Optional[int] = None
        self._processors: dict[str, Callable] = {}
        # What another engine needs to work this file like this one (worker processes replay it):
        # the options given here, and every processor with the options it was registered with.
        self._config: dict[str, Any] = dict(
            retry_delay=retry_delay, allow_unknown_types=allow_unknown_types,
            poll_interval=poll_interval, heartbeat_interval=heartbeat_interval, lease=lease,
            progress_interval=progress_interval, durability=durability, singleton=singleton,
            interrupt_grace=interrupt_grace, progress_persist_interval=progress_persist_interval,
            progress_persist_step=progress_persist_step, stats_window=stats_window,
            pool_size=pool_size,
            queues=queues, max_queue_size=max_queue_size, misfire_grace=misfire_grace,
            retention=retention, cleanup_interval=cleanup_interval,
            allow_exec=allow_exec, exec_inherit_env=exec_inherit_env,
        )  # fmt: skip
        self._queue_limits: dict[str, tuple[int, int]] = {}
        self._workers = workers
        self._registrations: dict[str, tuple[Callable, dict[str, Any]]] = {}
        self._native_registrations: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._supervisor: Optional[Supervisor] = None
        _live_engines.add(self)

    # -- processors ----------------------------------------------------------------------------
    def processor(
        self,
        type: str,
        *,
        timeout: Optional[float] = None,
        max_attempts: Optional[int] = None,
        retry_delay: Optional[float] = None,
        backoff: Optional[BackoffSpec] = None,
        priority: Union[int, str, None] = None,
        max_concurrent: Optional[int] = None,
        rate: Optional[str] = None,
    ) -> Callable[[Callable], Callable]:
        """Decorator registering ``fn(ctx, payload)`` as the processor of ``type``. The options
        are defaults for jobs of this type; a job's own options override them.
        ``max_concurrent`` and ``rate`` ("10/s") limit the type across every process on the
        file (docs/workflows.md)."""

        def decorator(fn: Callable) -> Callable:
            self.register(
                type, fn, timeout=timeout, max_attempts=max_attempts,
                retry_delay=retry_delay, backoff=backoff, priority=priority,
                max_concurrent=max_concurrent, rate=rate,
            )  # fmt: skip
            return fn

        return decorator

    def register(
        self,
        type: str,
        fn: Callable,
        *,
        timeout: Optional[float] = None,
        max_attempts: Optional[int] = None,
        retry_delay: Optional[float] = None,
        backoff: Optional[BackoffSpec] = None,
        priority: Union[int, str, None] = None,
        max_concurrent: Optional[int] = None,
        rate: Optional[str] = None,
    ) -> None:
        """Registers ``fn(ctx, payload)`` as the processor of ``type`` (see ``processor``)."""
        if not isinstance(type, str) or not type:
            raise ValueError(f"job type must be a non-empty str, got {type!r}")
        if not callable(fn):
            raise TypeError(f"processor for '{type}' must be callable, got {fn!r}")
        core_options = _processor_options(timeout, max_attempts, retry_delay, backoff, priority)
        max_concurrent = _int_option("max_concurrent", max_concurrent)
        if max_concurrent is not None and max_concurrent < 0:
            raise ValueError(f"max_concurrent must be 0 or more, got {max_concurrent!r}")
        self._core.register_python_processor(
            type,
            make_adapter(fn),
            **core_options,
            max_concurrent=max_concurrent,
            rate=_workflows.check_rate(rate),
        )
        self._processors[type] = fn
        self._registrations[type] = (
            fn,
            dict(timeout=timeout, max_attempts=max_attempts, retry_delay=retry_delay,
                 backoff=backoff, priority=priority, max_concurrent=max_concurrent, rate=rate),
        )  # fmt: skip

    def register_native(
        self,
        type: str,
        processor: Any,
        *,
        timeout: Optional[float] = None,
        max_attempts: Optional[int] = None,
        retry_delay: Optional[float] = None,
        backoff: Optional[BackoffSpec] = None,
        priority: Union[int, str, None] = None,
    ) -> None:
        """Registers a C++ processor built against the jobforge SDK (``jobforge/sdk.hpp``) in a
        module of its own: ``processor`` is the ``PyCapsule`` named "jobforge.processor.v1" that
        the module returns (``jobforge::sdk::processor_capsule``). Its jobs run on the worker
        threads without the GIL. The capsule's SDK version and C++ library ABI are checked first
        (``ValueError`` naming the mismatch). Options as for ``processor``; see
        docs/native-processors.md."""
        if not isinstance(type, str) or not type:
            raise ValueError(f"job type must be a non-empty str, got {type!r}")
        core_options = _processor_options(timeout, max_attempts, retry_delay, backoff, priority)
        self._core.register_native(type, processor, **core_options)
        self._native_registrations[type] = (
            processor,
            dict(timeout=timeout, max_attempts=max_attempts, retry_delay=retry_delay,
                 backoff=backoff, priority=priority),
        )  # fmt: skip

    @property
    def processor_types(self) -> list[str]:
        return sorted(self._core.processor_types())

    # -- lifecycle -----------------------------------------------------------------------------
    def start(
        self,
        processes: Optional[int] = None,
        *,
        app: Optional[str] = None,
        concurrency: Optional[int] = None,
        restart_delay: float = 0.1,
        stop_grace: float = 10.0,
    ) -> Engine:
        """Starts the dispatcher, the worker threads and maintenance. Idempotent.

        ``processes=N`` runs jobs in N worker processes instead, each with ``concurrency``
        threads (default: this engine's ``workers``), supervised from here: one that crashes is
        restarted after ``restart_delay`` s (see docs/workers.md). This process then runs no
        jobs itself: it enqueues, queries and supervises. The workers are forked (from a zygote
        forked once, here) and replay this engine's processors (register them before
        ``start``), or with ``app="module:attr"`` they are fresh
        ``python -m jobforge worker --app module:attr`` processes."""
        if processes is None:
            if app is not None or concurrency is not None:
                raise ValueError("app and concurrency need processes=N")
            if self._supervisor is not None and self._supervisor.running:
                raise RuntimeError("engine already runs worker processes; stop() it first")
            self._core.start()
            return self
        from .worker import Supervisor

        if self._supervisor is not None and self._supervisor.running:
            if self._supervisor.processes != processes:
                raise RuntimeError(
                    f"engine already runs {self._supervisor.processes} worker processes; "
                    "stop() it first"
                )
            return self
        if self._core.running:
            raise RuntimeError("engine already runs worker threads; stop() it first")
        supervisor = Supervisor(
            self, processes, app=app, concurrency=concurrency, restart_delay=restart_delay,
            stop_grace=stop_grace,
        )  # fmt: skip
        self._supervisor = supervisor
        supervisor.start()
        return self

    def stop(self, wait: bool = True) -> None:
        """Stops the engine. ``wait=True`` lets running jobs finish; ``wait=False`` asks them to
        stop and puts them back in the queue. Claimed jobs not yet started return to the queue.
        Worker processes started by ``start(processes=N)`` get SIGTERM (wait=True, no time
        limit) or SIGQUIT and SIGKILL after ``stop_grace`` seconds (wait=False)."""
        if self._supervisor is not None:
            self._supervisor.stop(wait)
        # stop(wait=False) from another thread escalates a stop(wait=True) in progress.
        if threading.current_thread() is not threading.main_thread() or not self._core.running:
            self._core.stop(wait)
            return
        # On the main thread the stop runs on a helper thread, so that Ctrl-C interrupts the
        # wait (KeyboardInterrupt within 0.1 s); the stop itself goes on, and a later
        # stop(wait=False) escalates it.
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                self._core.stop(wait)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                outcome.append(exc)

        helper = threading.Thread(target=run, name="jobforge-stop", daemon=True)
        try:
            helper.start()
        except RuntimeError:  # no new thread at interpreter shutdown (atexit)
            self._core.stop(wait)
            return
        while helper.is_alive():
            helper.join(0.1)
        if outcome:
            raise outcome[0]

    close = stop

    @property
    def running(self) -> bool:
        return self._core.running or (self._supervisor is not None and self._supervisor.running)

    @property
    def supervisor(self) -> Optional[Supervisor]:
        """The supervisor of the worker processes of ``start(processes=N)`` (the last one after
        ``stop``), else None: ``pids``, ``restarts``, ``exits``, ``wait_ready()``."""
        return self._supervisor

    def _stand_in_for(self, child: Engine) -> None:
        """In a forked worker process only: this (the parent's) engine object forwards to the
        child's engine, so module code that enqueues through it keeps working. The parent's C++
        engine is kept, never called and never freed here: its threads do not exist in the
        child, and its SQLite connections belong to the parent."""
        _abandoned_after_fork.append(self._core)
        self._core = child._core
        self._url = child._url
        self._supervisor = None
        self._subs_lock = threading.Lock()  # another thread of the parent may have held it
        self._subs = []
        self._core_subscription = None

    def _forked(self) -> None:
        """In a child of os.fork() (gunicorn --preload, multiprocessing's fork start method): the
        parent's core is set aside, unused and never freed (C++ leaks it in a child), and a core
        of the child's own is opened on first use. Locks a parent thread may have held are new."""
        _abandoned_after_fork.append(self._core)
        self._core = _CoreAfterFork(self)
        self._supervisor = None
        self._subs_lock = threading.Lock()
        self._fork_lock = threading.Lock()
        self._core_subscription = None
        for sub in self._subs:
            sub._after_fork()

    def _reopen_after_fork(self) -> Any:
        """The child's own core, opened on the same store with this engine's options,
        processors, queue limits and event subscriptions. Not started: start() it to run jobs
        in the child too."""
        with self._fork_lock:
            if not isinstance(self._core, _CoreAfterFork):
                return self._core
            core = _core.Engine(self._url, **self._core_options)
            self._core = core
            try:
                for job_type, (fn, options) in list(self._registrations.items()):
                    self.register(job_type, fn, **options)
                for job_type, (capsule, options) in list(self._native_registrations.items()):
                    self.register_native(job_type, capsule, **options)
                for name, (max_concurrent, max_size) in list(self._queue_limits.items()):
                    self.queue(name, max_concurrent=max_concurrent, max_size=max_size)
                if self._subs:
                    self._core_subscription = core.subscribe(_make_dispatcher(self))
            except BaseException:
                self._core = _CoreAfterFork(self)
                raise
            return core

    @property
    def worker_id(self) -> str:
        return self._core.worker_id

    @property
    def path(self) -> str:
        """The SQLite file, or the PostgreSQL URL with its passwords shown as ***."""
        return _redacted(self._url)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Stops the engine, letting running jobs finish. Ctrl-C (in the block, or during this
        wait) prints "waiting for N running jobs; Ctrl-C again to put them back in the queue"
        and goes on waiting; a second Ctrl-C stops at once with ``stop(wait=False)``: the running
        jobs go back to the queue, their attempt not counted. The KeyboardInterrupt then
        propagates."""
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        try:
            if interrupted:
                self._announce_interrupted_wait()
            self.stop(wait=True)
        except KeyboardInterrupt:
            if interrupted:
                self.stop(wait=False)
                raise
            # The first Ctrl-C came during the wait: say so, wait on; a second one stops.
            self._announce_interrupted_wait()
            try:
                self.stop(wait=True)
            except KeyboardInterrupt:
                self.stop(wait=False)
                raise
            raise

    def _announce_interrupted_wait(self) -> None:
        if self._supervisor is not None and self._supervisor.running:
            running = self.counts().get("running", 0)
        else:
            running = self._core.local_stats()["running"]
        if running:
            noun = "job" if running == 1 else "jobs"
            print(f"jobforge: waiting for {running} running {noun}; Ctrl-C again to put them "
                  "back in the queue", file=sys.stderr, flush=True)  # fmt: skip

    # -- enqueue -------------------------------------------------------------------------------
    def _options(
        self, priority, max_attempts, timeout, retry_delay, backoff, delay, parent, user_initiated
    ):
        delay_ms = _seconds_to_ms("delay", delay) or 0
        if parent is not None and not isinstance(parent, str):
            parent = getattr(parent, "id", parent)
            if not isinstance(parent, str):
                raise TypeError(f"parent must be a job id or a Job, got {type(parent).__name__}")
        retry_ms, backoff_text = _backoff(retry_delay, backoff)
        return dict(
            priority=_priority(priority),
            max_attempts=_int_option("max_attempts", max_attempts),
            timeout_ms=_seconds_to_ms("timeout", timeout),
            retry_delay_ms=retry_ms,
            backoff=backoff_text,
            delay_ms=delay_ms,
            parent_id=parent,
            user_initiated=bool(user_initiated),
        )

    def enqueue(
        self,
        type: str,
        payload: Any = None,
        *,
        priority: Union[int, str, None] = None,
        max_attempts: Optional[int] = None,
        timeout: Optional[float] = None,
        delay: float = 0,
        retry_delay: Optional[float] = None,
        backoff: Optional[BackoffSpec] = None,
        parent: Union[str, Job, None] = None,
        user_initiated: bool = True,
        queue: Optional[str] = None,
        unique_key: Optional[str] = None,
        unique_for: Optional[float] = None,
        depends_on: Optional[Iterable[Union[str, Job]]] = None,
        run_anyway: bool = False,
        run_at: Optional[datetime.datetime] = None,
    ) -> Job:
        """Stores a new job and returns it once it is durably committed.

        ``priority`` 1 (highest) .. 10 (lowest) or a name (urgent, high, normal, low,
        maintenance); ``timeout``, ``delay`` and ``retry_delay`` in seconds.

        Workflows (docs/workflows.md): ``queue`` names the queue; ``unique_key`` returns the
        queued or running job with that key instead of a new one (and, with ``unique_for``
        seconds, a job that ended less than that long ago); ``depends_on`` runs the job once
        those jobs completed (a failed or cancelled one cancels it, unless ``run_anyway``);
        ``run_at`` (a datetime; naive = UTC) is ``delay`` as a time."""
        written: list = []  # what the core stored, even if Ctrl-C lands as it returns
        try:
            if (queue is None and unique_key is None and unique_for is None
                    and depends_on is None and run_at is None and not run_anyway):  # fmt: skip
                opts = self._options(priority, max_attempts, timeout, retry_delay, backoff,
                                     delay, parent, user_initiated)  # fmt: skip
                record = self._core.enqueue(type, _json.dumps(payload), written=written, **opts)
                return Job(self, record)
            spec = self._spec(
                type, payload, priority=priority, max_attempts=max_attempts, timeout=timeout,
                delay=delay, retry_delay=retry_delay, backoff=backoff, parent=parent,
                user_initiated=user_initiated, queue=queue, unique_key=unique_key,
                unique_for=unique_for, depends_on=depends_on, run_anyway=run_anyway,
                run_at=run_at,
            )  # fmt: skip
            return Job(self, self._core.enqueue_specs([spec], written)[0])
        except KeyboardInterrupt as exc:
            exc.jobs = written  # first: nothing in between can be interrupted
            if not _return_after_interrupt(self, written):
                raise
            self._core.interrupt_again  # noqa: B018 - Ctrl-C again, once the caller holds the job
            return written[0]

    def _spec(
        self, type: str, payload: Any = None, *, priority=None, max_attempts=None, timeout=None,
        delay: float = 0, retry_delay=None, backoff=None, parent=None, user_initiated=True,
        queue=None, unique_key=None, unique_for=None, depends_on=None, run_anyway=False,
        run_at=None,
    ) -> dict:  # fmt: skip
        """One job as the dict ``_core.enqueue_specs`` takes (every option checked)."""
        if not isinstance(type, str):
            raise TypeError(f"job type must be a str, got {type!r}")
        if run_at is not None:
            if delay:
                raise ValueError("give either delay or run_at, not both")
            delay = _workflows.run_at_delay(run_at)
        spec = self._options(priority, max_attempts, timeout, retry_delay, backoff, delay, parent,
                             user_initiated)  # fmt: skip
        spec.update(type=type, payload_json=_json.dumps(payload))
        if queue is not None:
            if not isinstance(queue, str) or not queue:
                raise ValueError(f"queue must be a non-empty str, got {queue!r}")
            spec["queue"] = queue
        if unique_key is not None:
            if not isinstance(unique_key, str) or not unique_key:
                raise ValueError(f"unique_key must be a non-empty str, got {unique_key!r}")
            spec["unique_key"] = unique_key
        if unique_for is not None:
            if unique_key is None:
                raise ValueError("unique_for needs a unique_key")
            spec["unique_for_ms"] = _seconds_to_ms("unique_for", unique_for)
        if depends_on is not None:
            spec["depends_on"] = _workflows.dependency_ids(depends_on)
        spec["run_if_dependency_fails"] = bool(run_anyway)
        return spec

    def enqueue_many(
        self,
        type: str,
        payloads: Iterable[Any],
        *,
        priority: Union[int, str, None] = None,
        max_attempts: Optional[int] = None,
        timeout: Optional[float] = None,
        delay: float = 0,
        retry_delay: Optional[float] = None,
        backoff: Optional[BackoffSpec] = None,
        parent: Union[str, Job, None] = None,
        user_initiated: bool = True,
        queue: Optional[str] = None,
    ) -> list[Job]:
        """Stores many jobs of one type in one transaction: all of them or, on bad input, none.
        ``queue`` puts them in a named queue (docs/workflows.md)."""
        written: list = []  # what the core stored, even if Ctrl-C lands as it returns
        try:
            if queue is not None:
                specs = [
                    self._spec(
                        type, payload, priority=priority, max_attempts=max_attempts,
                        timeout=timeout, delay=delay, retry_delay=retry_delay, backoff=backoff,
                        parent=parent, user_initiated=user_initiated, queue=queue,
                    )
                    for payload in payloads
                ]  # fmt: skip
                return [Job(self, r) for r in self._core.enqueue_specs(specs, written)]
            opts = self._options(priority, max_attempts, timeout, retry_delay, backoff, delay,
                                 parent, user_initiated)  # fmt: skip
            if not isinstance(payloads, (list, tuple)):
                payloads = list(payloads)
            records = self._core.enqueue_many(type, _json.dumps_many(payloads), written=written,
                                              **opts)  # fmt: skip
            return [Job(self, r) for r in records]
        except KeyboardInterrupt as exc:
            exc.jobs = written  # first: nothing in between can be interrupted
            if not _return_after_interrupt(self, written):
                raise
            self._core.interrupt_again  # noqa: B018 - Ctrl-C again, once the caller holds the jobs
            return written

    # -- workflows (docs/workflows.md) ---------------------------------------------------------
    def batch(
        self,
        type: str,
        payload: Any = None,
        *,
        on_child_failure: str = "continue",
        **options: Any,
    ) -> _workflows.Batch:
        """A batch: ``with engine.batch("batch_analyze", {...}) as b: b.enqueue("analyze", p)``.
        The parent (no processor runs it) is ``running`` while its children run; its progress is
        children ended / total; it completes when all ended, with ``{"total": n, "completed": ..,
        "failed": ..}``. ``on_child_failure``: "continue" (complete anyway), "fail" (fail at the
        end if a child failed) or "fail_fast" (fail at once, cancel the rest). Cancelling the
        parent cancels its unfinished children. Everything is stored when the block ends."""
        if on_child_failure not in _workflows.BATCH_POLICIES:
            raise ValueError(
                f"on_child_failure must be one of {', '.join(_workflows.BATCH_POLICIES)}; "
                f"got {on_child_failure!r}"
            )
        return _workflows.Batch(self, self._spec(type, payload, **options), on_child_failure)

    def enqueue_batch(
        self,
        type: str,
        children: Iterable[Any],
        payload: Any = None,
        *,
        on_child_failure: str = "continue",
        **options: Any,
    ) -> Job:
        """Stores a batch parent and its ``children`` (``(type, payload)`` or ``(type, payload,
        options)``) in one transaction; returns the parent (see ``batch``)."""
        with self.batch(type, payload, on_child_failure=on_child_failure, **options) as b:
            for index, child in enumerate(children):
                if not isinstance(child, tuple) or not 1 <= len(child) <= 3:
                    raise TypeError(
                        f"children[{index}] must be (type, payload[, options]), got {child!r}"
                    )
                b.enqueue(child[0], child[1] if len(child) > 1 else None,
                          **(child[2] if len(child) > 2 else {}))  # fmt: skip
        assert b.job is not None
        return b.job

    def chain(self, *steps: Any) -> list[Job]:
        """Jobs that run one step after another, stored in one transaction: each step is
        ``(type, payload[, options])``, a dict with "type"/"payload"/options, or a list of them
        that run in parallel (fan-out); a step waits for every job of the step before it (fan-in).
        A failed or cancelled job cancels the rest of the chain. Returns the jobs in order."""
        specs, _ = _workflows.chain_specs(self, steps)
        written: list = []
        try:
            return [Job(self, r) for r in self._core.enqueue_specs(specs, written)]
        except KeyboardInterrupt as exc:
            exc.jobs = written  # first: nothing in between can be interrupted
            if not _return_after_interrupt(self, written):
                raise
            self._core.interrupt_again  # noqa: B018 - Ctrl-C again, once the caller holds the jobs
            return written

    def dependencies(self, job: Union[str, Job]) -> list[Job]:
        """The jobs ``job`` depends on."""
        job_id = job.id if isinstance(job, Job) else job
        return [Job(self, r) for r in self._core.dependencies(job_id)]

    def queue(self, name: str, *, max_concurrent: int = 0, max_size: int = 0) -> None:
        """Limits of a named queue: at most ``max_concurrent`` of its jobs run at once across
        every process on the file (0: no limit), and enqueue raises ``QueueFull`` once
        ``max_size`` jobs are queued in it (0: the engine's ``max_queue_size``)."""
        max_concurrent = _int_option("max_concurrent", max_concurrent) or 0
        max_size = _int_option("max_size", max_size, bits=64) or 0
        self._core.set_queue_limits(name, max_concurrent, max_size)
        self._queue_limits[name] = (max_concurrent, max_size)

    def schedule(
        self,
        name: str,
        cron: str,
        type: str,
        payload: Any = None,
        *,
        priority: Union[int, str, None] = None,
        timezone: str = "UTC",
        misfire: str = "run_once",
        queue: str = "default",
    ) -> _workflows.Schedule:
        """Creates or replaces the cron schedule ``name``: ``cron`` is 5 fields ("0 2 * * *"),
        @hourly/@daily/@weekly/@monthly/@yearly or "@every 30s". ``timezone`` is "UTC" or a
        fixed offset ("+02:00"). Each fire enqueues one job, even with several processes.
        ``misfire``: a fire missed by more than ``misfire_grace`` (nothing ran) makes one job at
        start-up ("run_once") or none ("skip"). Fired by any started engine on the file."""
        if misfire not in _workflows.MISFIRE_POLICIES:
            raise ValueError(f"misfire must be 'run_once' or 'skip', got {misfire!r}")
        record = self._core.schedule(
            name, cron, type, _json.dumps(payload), priority=_priority(priority),
            timezone=timezone, misfire=misfire, queue=queue,
        )  # fmt: skip
        return _workflows.Schedule.from_record(record)

    def unschedule(self, name: str) -> bool:
        """Deletes the schedule ``name``; False if there was none."""
        return self._core.unschedule(name)

    def schedules(self) -> list[_workflows.Schedule]:
        """Every schedule on the file, by name."""
        return [_workflows.Schedule.from_record(r) for r in self._core.schedules()]

    def cleanup(self, older_than: float) -> int:
        """Deletes finished jobs (and their logs) that ended more than ``older_than`` seconds
        ago, in small transactions; returns how many. Jobs of a batch still running stay."""
        ms = _seconds_to_ms("older_than", older_than)
        if ms is None or ms < 0:
            raise ValueError(f"older_than must be 0 or more seconds, got {older_than!r}")
        return self._core.cleanup(ms)

    def run_now(self, type: str, payload: Any = None, *, progress: Any = True) -> Any:
        """Runs the processor of ``type`` now, in this thread, without the queue and without a
        row in the store, and returns its result (raising its exception unchanged). Progress is
        drawn on stderr when it is a terminal (``progress=False``: never; a callable:
        ``progress(current, total, message)``)."""
        return _workflows.run_now(self, type, payload, progress)

    # -- queries -------------------------------------------------------------------------------
    def get(self, job_id: str) -> Optional[Job]:
        """The job with this id, or None."""
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {type(job_id).__name__}")
        record = self._core.get(job_id)
        return None if record is None else Job(self, record)

    def jobs(
        self,
        status: Optional[str] = None,
        type: Optional[str] = None,
        parent: Union[str, Job, None] = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs matching the filters, newest first."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        if isinstance(parent, Job):
            parent = parent.id
        limit = _int_option("limit", limit)
        offset = _int_option("offset", offset)
        records = self._core.jobs(status=status, type=type, parent=parent, limit=limit,
                                  offset=offset)  # fmt: skip
        return [Job(self, r) for r in records]

    def active(self, limit: int = 1000) -> list[Job]:
        """Jobs that are created, queued or running, newest first."""
        return [Job(self, r) for r in self._core.active(_int_option("limit", limit))]

    def store_health(self) -> str:
        """``"ok"``, or ``"degraded: <why>"`` while this process's store cannot write.

        A SQLite store degrades while its writes fail (disk full, I/O error): it keeps the ends
        of jobs (and their log lines, starts, progress, heartbeats) in order and retries them
        with backoff until they commit; the text says since when (``"degraded: writes failing
        since 2026-01-01T12:00:00Z (5 s): database or disk is full; 3 write(s) kept and
        retried"``); enqueue raises ``StoreError`` at once meanwhile. A PostgreSQL store
        degrades while its server is unreachable (it keeps the ends of jobs and retries them,
        reconnecting with backoff; enqueue raises ``StoreError`` after 30 s without the server)
        or out of disk (``writes failing since``, as above).
        ``health()`` counts it (failing after 60 s of failing writes). See docs/workers.md and
        docs/postgresql.md.
        """
        return self._core.store_health()

    def counts(self) -> dict[str, int]:
        """Counts of jobs: ``total`` and one per status. Kept by the store, so no scan."""
        return self._core.stats()

    def stats(self) -> dict[str, Any]:
        """``counts()`` plus, per job type (``types``): counts by status, mean/p50/p95 run time,
        error rate, created/s and completed/s; and the queue: ``queued_total``, ``due``,
        ``oldest_due_age_ms``. Run times and error rates cover the last ``stats_window`` seconds,
        rates the last minute. See docs/observability.md."""
        return self._core.stats_detail()

    def queue_stats(self) -> dict[str, int]:
        """``pending`` (due, waiting for a worker), ``active`` (running), ``concurrency`` (this
        engine's worker threads), ``delayed`` (queued for later), ``running_here``."""
        detail = self._core.stats_detail()
        local = self._core.local_stats()
        return {
            "pending": detail["due"],
            "active": detail["running"],
            "concurrency": local["workers"],
            "delayed": max(0, detail["queued_total"] - detail["due"]),
            "running_here": local["running"],
        }

    def workers(self) -> list[dict[str, Any]]:
        """Worker engines registered on the store, with their last heartbeat (Unix ms)."""
        return self._core.worker_list()

    def health(self, *, integrity: bool = True, max_wait: float = 300.0) -> dict[str, Any]:
        """``status`` "ok" / "degraded" / "failing" with ``reasons``; the database (reachable,
        integrity quick check, cached for a minute), workers with heartbeats, queue depth, error
        rates. See docs/observability.md for the rules."""
        from .observe import health

        return health(self, integrity=integrity, max_wait=max_wait)

    def check_integrity(self, *, quick: bool = False) -> dict[str, Any]:
        """SQLite's integrity check of the file (``quick``: the faster quick_check):
        ``{"ok": bool, "problems": [...], ...}``. See ``jobforge.db`` for repair."""
        from .db import check

        return check(self._url, quick=quick)

    def metrics_text(self) -> str:
        """The figures of ``stats()`` and ``health()`` in the Prometheus text format."""
        from .observe import metrics_text

        return metrics_text(self)

    def logs(
        self,
        job_id: Union[str, Job],
        level: Optional[str] = None,
        since: Optional[float] = None,
        limit: int = 1000,
        *,
        after: int = 0,
        tail: bool = False,
    ) -> list:
        """Lines of a job's log, oldest first: at ``level`` or above, logged at or after ``since``
        (Unix seconds or a datetime), with an id above ``after`` (for follow-ups); ``tail``: the
        last ``limit`` lines. Raises ``ValidationError`` for an unknown job."""
        from .observe import LogLine

        job_id = job_id.id if isinstance(job_id, Job) else job_id
        if not isinstance(job_id, str):
            raise TypeError(f"job_id must be a str, got {type(job_id).__name__}")
        since_ms = 0
        if since is not None:
            if hasattr(since, "timestamp"):
                since = since.timestamp()
            if not isinstance(since, (int, float)) or isinstance(since, bool):
                raise TypeError(f"since must be Unix seconds or a datetime, got {since!r}")
            _seconds_to_ms("since", since)  # in range
            since_ms = int(since * 1000)
        limit = _int_option("limit", limit)
        after = _int_option("after", after, bits=64)
        records = self._core.logs(job_id, level=level, since_ms=since_ms, after_id=after or 0,
                                  limit=limit, newest=bool(tail))  # fmt: skip
        return [LogLine(r) for r in records]

    def events(
        self,
        event: str = "*",
        *,
        job_id: Optional[str] = None,
        job_type: Optional[str] = None,
        timeout: Optional[float] = None,
        maxsize: int = 10_000,
    ):
        """A blocking iterator over events as they are committed (``for ev in
        engine.events(timeout=5)``); it ends after ``timeout`` seconds without an event."""
        from .observe import EventStream

        _seconds_to_ms("timeout", timeout)  # in range
        return EventStream(self, event, job_id=job_id, job_type=job_type, timeout=timeout,
                           maxsize=maxsize)  # fmt: skip

    def aevents(
        self,
        event: str = "*",
        *,
        job_id: Optional[str] = None,
        job_type: Optional[str] = None,
        timeout: Optional[float] = None,
        maxsize: int = 10_000,
    ):
        """The same as ``events`` for asyncio: ``async for ev in engine.aevents(): ...``."""
        from .observe import AsyncEventStream

        _seconds_to_ms("timeout", timeout)  # in range
        return AsyncEventStream(self, event, job_id=job_id, job_type=job_type,
                                timeout=timeout, maxsize=maxsize)  # fmt: skip

    def wait(self, job_id: str, timeout: Optional[float] = None) -> Job:
        """Waits for the job to end; see ``Job.wait``."""
        return Job(self, self._wait_record(job_id, timeout))

    def _wait_record(self, job_id: str, timeout: Optional[float]):
        timeout_ms = _seconds_to_ms("timeout", timeout)
        record = self._core.wait(job_id, timeout_ms)
        if record is None:
            current = self._core.get(job_id)
            status = current.status if current is not None else "unknown"
            raise TimeoutError(f"job {job_id} did not finish within {timeout} s (status: {status})")
        return record

    # -- control -------------------------------------------------------------------------------
    def cancel(self, job_id: Union[str, Job]) -> bool:
        """Cancels a job: a queued one at once; a running one sees ``ctx.cancelled`` and ends
        ``cancelled``. False for an unknown id or a finished job."""
        return self._core.cancel(job_id.id if isinstance(job_id, Job) else job_id)

    def retry(self, job_id: Union[str, Job]) -> bool:
        """Puts a failed, cancelled or timed-out job back in the queue with fresh attempts."""
        return self._core.retry(job_id.id if isinstance(job_id, Job) else job_id)

    def abort_all(self) -> int:
        """Cancels every queued and running job; returns how many."""
        return self._core.abort_all()

    # -- events --------------------------------------------------------------------------------
    def on(
        self,
        event: str,
        callback: Callable[[Event], Any],
        *,
        job_id: Optional[str] = None,
        job_type: Optional[str] = None,
        maxsize: int = 10_000,
    ) -> Subscription:
        """Calls ``callback(event)`` for each ``event`` ("job-status-changed", "job-progress",
        "job-completed", "job-failed", ..., or "*" for all), optionally for one job or one type.
        Events arrive after the state is committed, in commit order, on a thread of this
        subscription's own, through a queue of ``maxsize`` events: a slow or blocked callback
        delays only itself. Past ``maxsize`` queued events, a progress event replaces its job's
        queued one and any other event is dropped; drops are counted (``Subscription.dropped``,
        ``dropped_by_type``) and logged (logger "jobforge"): once when it starts dropping, and
        what it dropped when it catches up. A callback that raises is logged and stays
        subscribed."""
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ValueError(f"maxsize must be an int of at least 1, got {maxsize!r}")
        return self._subscribe(event, callback, job_id, job_type, maxsize=maxsize)

    def _subscribe(self, event, callback, job_id, job_type, *, inline=False, maxsize=10_000):
        """``on``; ``inline``: jobforge's own non-blocking callbacks, called on the delivery
        thread itself."""
        if event not in EVENT_TYPES:
            raise ValueError(
                f"event must be one of {', '.join(sorted(EVENT_TYPES))}; got {event!r}"
            )
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        sub = Subscription(self, event, callback, job_id, job_type,
                           None if inline else maxsize)  # fmt: skip
        if isinstance(self._core, _CoreAfterFork):
            self._reopen_after_fork()  # first, not under _subs_lock: it subscribes what exists
        with self._subs_lock:
            self._subs = [*self._subs, sub]
            if self._core_subscription is None:
                self._core_subscription = self._core.subscribe(_make_dispatcher(self))
        return sub

    def off(self, subscription: Subscription) -> None:
        """Ends a subscription made with ``on``."""
        subscription.active = False
        with self._subs_lock:
            self._subs = [s for s in self._subs if s is not subscription]

    def flush_events(self) -> None:
        """Blocks until every event committed so far has been delivered to the callbacks (those
        of a subscription whose callback calls this are not waited for)."""
        self._core.flush_events()
        for sub in self._subs:
            sub._drain()

    def _deliver(self, batch) -> None:
        subs = self._subs
        if not subs:
            return
        for record in batch:
            ev = None
            for sub in subs:
                if not sub.active:
                    continue
                if ev is None:
                    ev = Event(record)
                if sub.matches(ev):
                    sub._put(ev)

    # -- notebooks -----------------------------------------------------------------------------
    def monitor(self, interval: float = 1.0, *, active: int = 20, failures: int = 5, **options):
        """Shows a live table of the active jobs and the recent failures in Jupyter, rewritten
        every ``interval`` s by a background thread (the kernel stays free); ``.stop()`` ends
        it. See ``jobforge.notebook.Monitor``."""
        from .notebook import Monitor

        return Monitor(self, interval=interval, active=active, failures=failures, **options)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<jobforge.Engine {self.path!r} {state}>"


def _return_after_interrupt(engine: Engine, written: list) -> bool:
    """Called when Ctrl-C's KeyboardInterrupt was raised inside an enqueue call. ``written``
    holds what the core stored (one transaction: all of the call's jobs, or none); it becomes
    Job objects in place. True: the call returns them all the same, after reading
    ``engine._core.interrupt_again`` as its last step, which simulates the SIGINT again. That
    read runs no Python code, so the new KeyboardInterrupt is raised at the caller's next check,
    once the result is in its hands. False (raise now; the exception's ``jobs`` holds what was
    stored): nothing was stored, or SIGINT has a handler of the user's own, which must not run
    twice for one Ctrl-C."""
    if not written:
        return False
    written[:] = [Job(engine, r) for r in written]
    return (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )


def _make_dispatcher(engine: Engine):
    # The C++ side holds this callable; a weak reference lets an unused engine be collected.
    ref = weakref.ref(engine)

    def dispatch(batch) -> None:
        target = ref()
        if target is not None:
            target._deliver(batch)

    return dispatch


def _errors():
    from . import errors

    return errors


def _observe():
    from . import observe

    return observe


__all__ = ["Engine", "Subscription", "PRIORITIES", "EVENT_TYPES", "JobforgeError"]
