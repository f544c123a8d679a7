"""Worker processes: ``jobforge worker --app module:attr`` and ``Engine.start(processes=N)``.

A worker process is an ordinary engine on the shared SQLite file whose processors are replayed
from the application's engine (``Engine.register`` records every registration with its options).
Several processes on one file claim durably, so a crash loses nothing that was committed: the
dead process's running jobs are taken back by the live ones (see docs/workers.md).

Two ways to get one:

- ``jobforge worker --app mymodule:engine``: imports the module (the current directory is on
  ``sys.path``), builds its own engine with the app engine's options and processors, and runs it
  until SIGTERM/SIGINT (``serve``). The app's engine object is never started.
- ``engine.start(processes=N)``: a ``Supervisor`` thread in the calling process forks N children
  (each builds a fresh engine, replays the processors, and ``serve``s), or with ``app=`` spawns
  N ``python -m jobforge worker`` processes, and restarts one that crashes.

Signals understood by a worker process: SIGTERM or SIGINT stops it after its running jobs
finished (a second one exits at once: its running jobs are taken back by the other workers,
their attempt counted); SIGQUIT stops it at once: running jobs are asked to stop and go back to
the queue, their attempt not counted.
"""

from __future__ import annotations

import _imp
import ctypes
import errno
import gc
import importlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("jobforge")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Set by a Supervisor for the ``jobforge worker`` processes it spawns: the fd of a pipe on which
# the worker reports "ready <worker id>" and "stopping", and the supervisor's pid.
ENV_NOTIFY_FD = "JOBFORGE_SUPERVISOR_FD"
ENV_SUPERVISOR_PID = "JOBFORGE_SUPERVISOR_PID"
# The database of a spawned worker: in its environment (readable by its user only), not on its
# command line, which every user of the host can read (a PostgreSQL URL may hold a password).
ENV_WORKER_DB = "JOBFORGE_WORKER_DB"

# What a worker process answers: SIGTERM/SIGINT stop it after its running jobs, SIGQUIT now.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class AppError(ValueError):
    """``--app`` does not name an importable jobforge engine."""


# -- the app ------------------------------------------------------------------------------------


def _absolute_db(path: str) -> str:
    """A SQLite path made absolute (children may start elsewhere); a PostgreSQL URL unchanged."""
    from .engine import _is_postgres_url

    return path if _is_postgres_url(path) else os.path.abspath(path)


def load_app(spec: str) -> Engine:
    """The engine named by ``"module:attr"`` (attr may be dotted; an ``Engine`` or a callable
    without arguments returning one). The current directory is put on ``sys.path`` first."""
    from .engine import Engine

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppError(f"--app must be MODULE:ATTR, e.g. mymodule:engine; got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the app's own module being missing is a usage error; a missing import inside it
        # is a bug of the module and keeps its traceback.
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppError(
                f"cannot import '{module_name}' (--app {spec}): no module named '{exc.name}' "
                f"in {cwd} or on sys.path"
            ) from None
        raise
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppError(
                f"module '{module_name}' has no attribute '{attr}' (--app {spec})"
            ) from None
    if not isinstance(target, Engine) and callable(target):
        target = target()
    if not isinstance(target, Engine):
        raise AppError(
            f"--app {spec} must name a jobforge.Engine or a function returning one, "
            f"got {type(target).__name__}"
        )
    return target


def replay_processors(source: Engine, target: Engine) -> list[str]:
    """Registers every processor of ``source`` in ``target``, with the options it was registered
    with; returns their types. Reads only Python state of ``source`` (safe in a forked child)."""
    for job_type, (fn, options) in source._registrations.items():
        target.register(job_type, fn, **options)
    for name, (max_concurrent, max_size) in getattr(source, "_queue_limits", {}).items():
        target.queue(name, max_concurrent=max_concurrent, max_size=max_size)
    for job_type, (capsule, options) in source._native_registrations.items():
        target.register_native(job_type, capsule, **options)
    return [*source._registrations, *source._native_registrations]


def worker_engine(
    app: Engine,
    *,
    db: Optional[str] = None,
    concurrency: Optional[int] = None,
    heartbeat: Optional[float] = None,
    lease: Optional[float] = None,
    allow_exec: bool = False,
) -> Engine:
    """A new, unstarted engine that works ``db`` (default: the app's file) like ``app`` does:
    the same options and processors, ``concurrency`` worker threads (default: the app's).
    ``allow_exec``: the ``exec`` processor too, even if the app did not opt in."""
    from .engine import Engine

    config = dict(app._config)
    if allow_exec:
        config["allow_exec"] = True
    if heartbeat is not None:
        config["heartbeat_interval"] = heartbeat
    if lease is not None:
        config["lease"] = lease
    # Worker processes claim durably even when alone on the file: a job that crashes its process
    # must leave its attempt behind, or a poison job would run again forever.
    config["claim_in_memory"] = False
    engine = Engine(db or app._url, workers=concurrency or app._workers, **config)
    replay_processors(app, engine)
    return engine


# -- one worker process ---------------------------------------------------------------------------


def _stderr_line(text: str) -> None:
    # os.write, not sys.stderr: in a forked child another thread of the parent may have held the
    # stream's lock at the fork.
    try:
        os.write(2, (text.rstrip("\n") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def _notify(fd: Optional[int], message: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, (message + "\n").encode())
    except OSError:
        pass  # the supervisor is gone; the parent-death signal will follow


def serve(
    engine: Engine,
    *,
    notify_fd: Optional[int] = None,
    write: Callable[[str], None] = _stderr_line,
) -> int:
    """Runs ``engine`` as this process's worker until a signal stops it; returns the exit code
    (0 after a requested stop). Must run in the main thread (it installs signal handlers).

    SIGTERM/SIGINT: ``stop(wait=True)``; a second one while running jobs finish: exit at once
    (``os._exit(130)``; the C++ engine cannot turn a waiting stop into an immediate one, and the
    jobs still running are taken back by the other workers). SIGQUIT: ``stop(wait=False)``."""
    requests: list[int] = []

    def on_signal(signum, frame):  # runs in the main thread, between bytecodes
        requests.append(signum)

    watched = _STOP_SIGNALS
    previous = {sig: signal.signal(sig, on_signal) for sig in watched}
    try:
        engine.start()
        types = ", ".join(engine.processor_types)
        write(
            f"jobforge: worker {engine.worker_id} on {engine.path}: types {types} "
            f"(concurrency {engine._workers}, pid {os.getpid()})"
        )
        _notify(notify_fd, f"ready {engine.worker_id}")
        # A forked worker starts with these signals blocked (see _zygote_main): one that came
        # early is delivered now, to the handler. The engine's threads keep them blocked.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
        stopper: Optional[threading.Thread] = None
        handled = 0
        while True:
            while handled < len(requests):
                signum = requests[handled]
                handled += 1
                name = signal.Signals(signum).name
                if stopper is None and signum == signal.SIGQUIT:
                    _notify(notify_fd, "stopping")
                    write(f"jobforge: worker {engine.worker_id}: {name}, stopping now")
                    engine.stop(wait=False)
                    return EXIT_OK
                if stopper is None:
                    _notify(notify_fd, "stopping")
                    write(
                        f"jobforge: worker {engine.worker_id}: {name}, stopping after the running "
                        "jobs (signal again to exit at once)"
                    )
                    stopper = threading.Thread(
                        target=_stop_quietly, args=(engine,), name="jobforge-stop", daemon=True
                    )
                    stopper.start()
                    continue
                write(
                    f"jobforge: worker {engine.worker_id}: {name} again, exiting now; its running "
                    "jobs go back to the queue when another worker notices (attempt counted)"
                )
                os._exit(EXIT_INTERRUPTED)
            if stopper is not None and not stopper.is_alive():
                return EXIT_OK
            time.sleep(0.05)  # a signal interrupts the sleep; its handler runs at once
    finally:
        for sig, handler in previous.items():
            try:
                signal.signal(sig, handler)
            except (TypeError, ValueError):
                pass


def _stop_quietly(engine: Engine) -> None:
    try:
        engine.stop(wait=True)
    except Exception:  # noqa: BLE001 - reported, the process still exits
        _stderr_line("jobforge: stopping the worker failed:\n" + traceback.format_exc())


# -- parent death ---------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _resolve_prctl() -> Optional[Callable[..., int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _resolve_prctl()  # resolved at import: a forked child must not call dlopen/dlsym


def die_with_parent(sig: int, parent_pid: int) -> bool:
    """Asks the kernel to send ``sig`` to this process when the thread that started it ends
    (Linux); False if that parent is already gone."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    return os.getppid() == parent_pid


# -- the supervisor -------------------------------------------------------------------------------


@dataclass
class ChildExit:
    """How one worker process ended."""

    pid: int
    returncode: int  # negative: killed by that signal
    ran: float  # seconds it lived
    requested: bool  # it was asked to stop (by the supervisor, or by a signal someone sent it)
    restarted: bool  # the supervisor started another in its place
    # It had reported ready. One stopped before (SIGTERM during its start-up, before its handlers
    # exist) dies of the signal's default action: harmless, it had claimed nothing.
    ready: bool = True

    @property
    def reason(self) -> str:
        if self.returncode < 0:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"killed by signal {-self.returncode}"
        return f"exit code {self.returncode}"


class _ZygoteStale(Exception):
    """Every worker forked from this zygote failed to start: fork a new one from the parent."""


class _Slot:
    """One worker process place in a _Pool."""

    __slots__ = (
        "index", "pid", "popen", "notify", "buffer", "started", "ready", "stopping", "fails",
        "next_start", "retired",
    )  # fmt: skip

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid: Optional[int] = None
        self.popen: Optional[subprocess.Popen] = None
        self.notify: Optional[int] = None
        self.buffer = b""
        self.started = 0.0
        self.ready = False
        self.stopping = False  # the child said it was asked to stop
        self.fails = 0
        self.next_start = 0.0
        self.retired = False


class _Pool:
    """N worker processes, restarted when they crash, stopped on request. Single-threaded: it runs
    in the supervisor thread (app mode) or in the zygote process (fork mode), and tells what
    happens through ``report(kind, fields)``."""

    MAX_RESTART_DELAY = 5.0

    def __init__(
        self,
        processes: int,
        start_child: Callable[[int], tuple[int, Optional[subprocess.Popen]]],
        report: Callable[[str, dict], None],
        *,
        restart_delay: float,
        stop_grace: float,
        startup_timeout: float,
        give_up_when_stale: bool,
    ) -> None:
        self.slots = [_Slot(i) for i in range(processes)]
        self.start_child = start_child  # start_child(notify_fd) -> (pid, Popen or None)
        self.report = report
        self.restart_delay = restart_delay
        self.stop_grace = stop_grace
        self.startup_timeout = startup_timeout
        self.give_up_when_stale = give_up_when_stale
        self.failed_starts = 0  # in a row, all slots together

    def notify_fds(self) -> list[int]:
        return [s.notify for s in self.slots if s.notify is not None]

    def run(self, control_fd: int, stop_mode: Callable[[], Optional[str]]) -> None:
        """Keeps the processes running until stop_mode() returns "wait" or "now", then stops them
        (SIGTERM and wait, or SIGQUIT and SIGKILL after stop_grace)."""
        while True:
            mode = stop_mode()
            if mode is not None:
                break
            now = time.monotonic()
            for slot in self.slots:
                if slot.pid is None:
                    if not slot.retired and now >= slot.next_start:
                        self._spawn(slot)
                    continue
                self._reap(slot, stopping=False)
                if slot.pid is not None and not slot.ready:
                    if now - slot.started > self.startup_timeout:
                        self._log(
                            f"worker process {slot.pid} not ready after "
                            f"{self.startup_timeout:g} s; killing it"
                        )
                        self._signal(slot, signal.SIGKILL)
                        self._reap(slot, stopping=False, block=True)
            if self.give_up_when_stale and self.failed_starts >= 2 * len(self.slots):
                raise _ZygoteStale()
            self._wait_io(control_fd, 0.05)
        self._shutdown(mode, control_fd, stop_mode)

    def _shutdown(self, mode: str, control_fd: int, stop_mode: Callable[[], Optional[str]]):
        sent = mode
        for slot in self.slots:
            self._signal(slot, signal.SIGTERM if mode == "wait" else signal.SIGQUIT)
        deadline = None if mode == "wait" else time.monotonic() + self.stop_grace
        while any(slot.pid is not None for slot in self.slots):
            if sent == "wait" and stop_mode() == "now":
                # stop(wait=False) after stop(wait=True): they are stopping already, and the
                # engine cannot hurry a waiting stop; a second signal makes them exit at once.
                sent = "now"
                deadline = time.monotonic() + self.stop_grace
                for slot in self.slots:
                    self._signal(slot, signal.SIGTERM)
            if deadline is not None and time.monotonic() > deadline:
                for slot in self.slots:
                    if slot.pid is not None:
                        self._log(
                            f"worker process {slot.pid} still running {self.stop_grace:g} s "
                            "after the stop request; killing it"
                        )
                        self._signal(slot, signal.SIGKILL)
                deadline = None
            for slot in self.slots:
                self._reap(slot, stopping=True)
            self._wait_io(control_fd, 0.05)

    def _log(self, message: str) -> None:
        self.report("log", dict(message="jobforge: " + message))

    def kill_all(self) -> None:
        for slot in self.slots:
            self._signal(slot, signal.SIGKILL)
            self._reap(slot, stopping=True, block=True)

    def close(self) -> None:
        for slot in self.slots:
            self._close_notify(slot)

    # -- one child -----------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        try:
            pid, popen = self.start_child(write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        slot.pid, slot.popen, slot.notify, slot.buffer = pid, popen, read_fd, b""
        slot.started = time.monotonic()
        slot.ready = slot.stopping = False
        self.report("spawn", dict(slot=slot.index, pid=pid))

    def _signal(self, slot: _Slot, sig: int) -> None:
        if slot.pid is not None:
            try:
                os.kill(slot.pid, sig)
            except ProcessLookupError:
                pass

    def _reap(self, slot: _Slot, *, stopping: bool, block: bool = False) -> None:
        if slot.pid is None:
            return
        if slot.popen is not None:
            code = slot.popen.wait() if block else slot.popen.poll()
            if code is None:
                return
        else:
            try:
                pid, status = os.waitpid(slot.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                pid, status = slot.pid, 0
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
        self._read_notify(slot)
        self._close_notify(slot)
        now = time.monotonic()
        ran = now - slot.started
        # Restarted unless we stopped it, or it stopped cleanly because someone signalled it.
        restart = not stopping and not (slot.stopping and code == 0)
        if not slot.ready and not stopping:
            self.failed_starts += 1
        delay = 0.0
        if restart:
            # Only a child that dies before it is ready backs off (a crash loop at start); one
            # that worked is replaced at once: its jobs' attempts are counted, so a job that
            # kills every process running it still ends failed after max_attempts.
            slot.fails = slot.fails + 1 if not slot.ready else 1
            delay = min(self.MAX_RESTART_DELAY, self.restart_delay * 2 ** (slot.fails - 1))
            slot.next_start = now + delay
        elif not stopping:
            slot.retired = True
        self.report(
            "exit",
            dict(slot=slot.index, pid=slot.pid, returncode=code, ran=ran,
                 requested=stopping or slot.stopping, restarted=restart, delay=delay,
                 ready=slot.ready),
        )  # fmt: skip
        slot.pid, slot.popen, slot.ready = None, None, False

    def _close_notify(self, slot: _Slot) -> None:
        if slot.notify is not None:
            try:
                os.close(slot.notify)
            except OSError:
                pass
            slot.notify = None

    def _read_notify(self, slot: _Slot) -> None:
        while slot.notify is not None:
            try:
                chunk = os.read(slot.notify, 4096)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return
            if not chunk:
                return
            slot.buffer += chunk
            *lines, slot.buffer = slot.buffer.split(b"\n")
            for line in lines:
                word, _, rest = line.decode("utf-8", "replace").partition(" ")
                if word == "ready" and not slot.ready:
                    slot.ready = True
                    self.failed_starts = 0
                    self.report("ready", dict(slot=slot.index, pid=slot.pid, worker_id=rest))
                elif word == "stopping":
                    slot.stopping = True

    def _wait_io(self, control_fd: int, timeout: float) -> None:
        fds = [control_fd, *self.notify_fds()]
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        for slot in self.slots:
            if slot.notify is not None and slot.notify in readable:
                self._read_notify(slot)


def _drain(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return data
        except OSError:
            return data
        if not chunk:
            return data
        data += chunk


class Supervisor:
    """N worker processes on the file of ``engine``, restarted when they crash.

    Made by ``Engine.start(processes=N)``. A child that exits with a non-zero code or by a signal
    (or with 0 without having been asked to stop) is restarted after ``restart_delay`` seconds,
    doubled for each child in a row that died before it was ready, at most 5 s. A
    child that stopped because someone signalled it is not restarted. One that does not report
    ready within ``startup_timeout`` seconds (default 10 forked, 120 spawned) is killed and
    restarted.

    Forked workers (no ``app``) come from a *zygote*: one child forked from this process when
    ``start`` runs, single-threaded, that never opens the database; it forks, reaps and restarts
    the workers. Forking a process whose other threads use SQLite is unsafe (a mutex or a WAL
    lock another thread held at that instant stays held in the child); the zygote confines that
    to one fork, made while ``start`` runs (the store holds SQLite's global mutexes across every
    fork with ``pthread_atfork`` handlers). If workers forked
    from it keep failing to start, a new zygote is forked. With ``app``, the supervisor thread
    spawns ``python -m jobforge worker`` processes itself (fresh interpreters, no such issue).
    """

    def __init__(
        self,
        engine: Engine,
        processes: int,
        *,
        app: Optional[str] = None,
        concurrency: Optional[int] = None,
        restart_delay: float = 0.1,
        stop_grace: float = 10.0,
        startup_timeout: Optional[float] = None,
    ) -> None:
        from .engine import _int_option

        if isinstance(processes, bool) or not isinstance(processes, int):
            raise TypeError(f"processes must be an int, got {type(processes).__name__}")
        _int_option("processes", processes)  # a ValidationError beyond 32 bits
        if concurrency is not None:
            _int_option("concurrency", concurrency)
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        if concurrency is not None:
            if isinstance(concurrency, bool) or not isinstance(concurrency, int):
                raise TypeError(f"concurrency must be an int, got {type(concurrency).__name__}")
            if concurrency < 1:
                raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if app is not None and (not isinstance(app, str) or ":" not in app):
            raise ValueError(f"app must be 'module:attr', got {app!r}")
        if startup_timeout is None:
            startup_timeout = 10.0 if app is None else 120.0
        for name, value in (("restart_delay", restart_delay), ("stop_grace", stop_grace),
                            ("startup_timeout", startup_timeout)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be 0 or more seconds, got {value!r}")
        if app is None and not hasattr(os, "fork"):
            raise ValueError("this platform cannot fork: pass app='module:attr'")
        if processes > 1 and engine._config.get("singleton"):
            raise ValueError("a singleton engine cannot run in several processes")
        self.engine = engine
        self.processes = processes
        self.app = app
        self.concurrency = concurrency or engine._workers
        self.restart_delay = float(restart_delay)
        self.stop_grace = float(stop_grace)
        self.startup_timeout = float(startup_timeout)
        self.restarts = 0
        self.exits: list[ChildExit] = []
        self.zygotes = 0  # forked so far (fork mode)
        self._children = [dict(pid=None, worker_id=None, ready=False, spawns=0, retired=False,
                               started=0.0) for _ in range(processes)]  # fmt: skip
        self._lock = threading.Condition()
        self._stop_mode: Optional[str] = None  # "wait" or "now"
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread: Optional[threading.Thread] = None
        self._started = threading.Event()
        self._start_error: Optional[BaseException] = None
        self._done = False

    # -- public --------------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the supervisor thread; returns once the first fork (the zygote) is done, so it
        happens while the caller is here rather than while it goes on using the database."""
        if self._thread is not None:
            return
        # Children are started from the supervisor thread: Linux's parent-death signal fires when
        # the thread that forked a child ends, and this thread lives as long as they do.
        self._thread = threading.Thread(target=self._main, name="jobforge-supervisor", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def stop(self, wait: bool = True) -> None:
        """SIGTERM to every child and wait for all (wait=True), or SIGQUIT and SIGKILL to those
        still alive after ``stop_grace`` seconds (wait=False)."""
        with self._lock:
            if self._stop_mode is None or (not wait and self._stop_mode == "wait"):
                self._stop_mode = "wait" if wait else "now"
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._done

    @property
    def pids(self) -> list[int]:
        """Pids of the worker processes alive now."""
        with self._lock:
            return [c["pid"] for c in self._children if c["pid"] is not None]

    @property
    def worker_ids(self) -> list[str]:
        """Engine worker ids (as in the ``workers`` table) of the ready children."""
        with self._lock:
            return [c["worker_id"] for c in self._children if c["pid"] and c["worker_id"]]

    def children(self) -> list[dict[str, Any]]:
        """One dict per place: pid (None while restarting), worker_id, ready, restarts, retired."""
        with self._lock:
            return [
                dict(pid=c["pid"], worker_id=c["worker_id"], ready=c["ready"],
                     restarts=max(0, c["spawns"] - 1), retired=c["retired"])
                for c in self._children
            ]  # fmt: skip

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Blocks until every place has a live child that reported ready; raises TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not all(c["retired"] or (c["pid"] and c["ready"]) for c in self._children):
                if self._done:
                    raise RuntimeError("the supervisor has stopped")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(
                        f"worker processes not ready within {timeout} s: {self.children()}"
                    )
                self._lock.wait(0.1 if left is None else min(left, 0.1))

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<jobforge.Supervisor {self.processes} processes {state} pids={self.pids}>"

    # -- state, from the pool's reports --------------------------------------------------------
    def _apply(self, kind: str, f: dict) -> None:
        if kind == "log":
            log.warning("%s", f["message"])
            return
        with self._lock:
            child = self._children[f["slot"]]
            if kind == "spawn":
                if child["spawns"]:
                    self.restarts += 1
                child.update(pid=f["pid"], worker_id=None, ready=False, started=time.monotonic())
                child["spawns"] += 1
            elif kind == "ready":
                child.update(ready=True, worker_id=f["worker_id"] or None)
            elif kind == "exit":
                exit_info = ChildExit(
                    f["pid"],
                    f["returncode"],
                    f["ran"],
                    f["requested"],
                    f["restarted"],
                    f.get("ready", True),
                )
                self.exits.append(exit_info)
                child.update(pid=None, ready=False)
                if not f["restarted"] and not f["requested"]:
                    child["retired"] = True
            self._lock.notify_all()
        if kind != "exit":
            return
        if f["restarted"]:
            log.warning(
                "jobforge: worker process %d %s after %.1f s; restarting it in %.1f s",
                exit_info.pid, exit_info.reason, exit_info.ran, f["delay"],
            )  # fmt: skip
        elif f["requested"] and not self._stop_mode:
            log.info(
                "jobforge: worker process %d was stopped by a signal (%s); not restarting it",
                exit_info.pid, exit_info.reason,
            )  # fmt: skip

    def _stop_requested(self) -> Optional[str]:
        with self._lock:
            return self._stop_mode

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # -- the supervisor thread -----------------------------------------------------------------
    def _main(self) -> None:
        try:
            if self.app is None:
                self._run_zygotes()
            else:
                self._run_spawned()
        except BaseException as exc:  # noqa: BLE001 - reported; children die with this thread
            if not self._started.is_set():
                self._start_error = exc
            else:
                log.exception("jobforge: the worker supervisor failed")
        finally:
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            with self._lock:
                self._done = True
                self._lock.notify_all()
            self._started.set()

    def _run_spawned(self) -> None:
        pool = self._pool(self._popen, self._apply, give_up_when_stale=False)
        self._started.set()
        try:
            pool.run(self._wake_r, self._stop_requested_and_drain)
        except BaseException:
            pool.kill_all()
            raise
        finally:
            pool.close()

    def _stop_requested_and_drain(self) -> Optional[str]:
        _drain(self._wake_r)
        return self._stop_requested()

    def _pool(self, start_child, report, *, give_up_when_stale: bool) -> _Pool:
        return _Pool(
            self.processes, start_child, report, restart_delay=self.restart_delay,
            stop_grace=self.stop_grace, startup_timeout=self.startup_timeout,
            give_up_when_stale=give_up_when_stale,
        )  # fmt: skip

    def _popen(self, notify_fd: int) -> tuple[int, subprocess.Popen]:
        env = dict(os.environ)
        paths = [p for p in sys.path if p]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env[ENV_NOTIFY_FD] = str(notify_fd)
        env[ENV_SUPERVISOR_PID] = str(os.getpid())
        env[ENV_WORKER_DB] = _absolute_db(self.engine._url)
        command = [
            sys.executable, "-m", "jobforge", "worker", "--app", str(self.app),
            "--concurrency", str(self.concurrency),
        ]  # fmt: skip
        # A session of its own: Ctrl-C in a terminal reaches this process, which stops them.
        popen = subprocess.Popen(
            command, env=env, pass_fds=(notify_fd,), start_new_session=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return popen.pid, popen

    # -- fork mode: zygotes --------------------------------------------------------------------
    def _run_zygotes(self) -> None:
        failures = 0
        while True:
            pid, command_w, status_r = self._fork_zygote()
            self.zygotes += 1
            self._started.set()
            code = self._watch_zygote(pid, command_w, status_r)
            with self._lock:
                # Its workers died with it (parent-death signal): nobody will report them.
                lost = [c for c in self._children if c["pid"] is not None]
                for child in lost:
                    self.exits.append(
                        ChildExit(child["pid"], -signal.SIGKILL,
                                  time.monotonic() - child["started"], False, True)
                    )  # fmt: skip
                    child.update(pid=None, ready=False)
                self._lock.notify_all()
            if self._stop_requested() is not None:
                return
            failures += 1
            delay = min(_Pool.MAX_RESTART_DELAY, self.restart_delay * 2 ** (failures - 1))
            why = ("its workers kept failing to start" if code == _ZYGOTE_STALE
                   else f"it ended ({ChildExit(pid, code, 0, False, True).reason})")  # fmt: skip
            log.warning("jobforge: forking a new worker zygote in %.1f s: %s", delay, why)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and self._stop_requested() is None:
                select.select([self._wake_r], [], [], max(0.0, deadline - time.monotonic()))
                _drain(self._wake_r)
            if self._stop_requested() is not None:
                return

    def _fork_zygote(self) -> tuple[int, int, int]:
        command_r, command_w = os.pipe()
        status_r, status_w = os.pipe()
        parent_pid = os.getpid()
        close_in_child = [self._wake_r, self._wake_w, command_w, status_r]
        # The import lock first (fork takes it too): a thread importing a module that opens a
        # database must not wait for a SQLite mutex held here while we wait for its import.
        acquire_import_lock = getattr(_imp, "acquire_lock", None)
        release_import_lock = getattr(_imp, "release_lock", None)
        if acquire_import_lock is not None:
            acquire_import_lock()
        # SQLite's global mutexes are held across the fork by the store's pthread_atfork handlers.
        try:
            pid = os.fork()
        except BaseException:
            if release_import_lock is not None:
                release_import_lock()
            for fd in (command_r, command_w, status_r, status_w):
                os.close(fd)
            raise
        if release_import_lock is not None:
            release_import_lock()
        if pid:
            os.close(command_r)
            os.close(status_w)
            os.set_blocking(status_r, False)
            return pid, command_w, status_r
        # The zygote. Never return from here, and end with os._exit: no destructor or atexit
        # handler may run on the parent's objects (its engine owns SQLite connections and C++
        # threads that this process does not have).
        code = EXIT_FAILURE
        try:
            gc.freeze()  # objects inherited from the parent are never collected here
            for fd in close_in_child:
                os.close(fd)
            os.setpgid(0, 0)  # Ctrl-C in a terminal reaches the parent only; it stops us
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if die_with_parent(signal.SIGKILL, parent_pid):
                code = _zygote_main(self, command_r, status_w)
        except BaseException:  # noqa: BLE001 - the parent sees the exit code
            _stderr_line("jobforge: worker zygote failed:\n" + traceback.format_exc())
        finally:
            os._exit(code)

    def _watch_zygote(self, pid: int, command_w: int, status_r: int) -> int:
        """Mirrors the zygote's reports and passes stop requests on; returns its exit code."""
        buffer = b""
        sent: Optional[str] = None
        kill_at: Optional[float] = None
        try:
            while True:
                mode = self._stop_requested()
                if mode is not None and mode != sent:
                    try:
                        os.write(command_w, f"stop {mode}\n".encode())
                    except OSError:
                        pass
                    sent = mode
                    if mode == "now":
                        kill_at = time.monotonic() + self.stop_grace + 5.0
                if kill_at is not None and time.monotonic() > kill_at:
                    os.kill(pid, signal.SIGKILL)  # its workers follow (parent-death signal)
                    kill_at = None
                select.select([status_r, self._wake_r], [], [], 0.1)
                _drain(self._wake_r)
                buffer += _drain(status_r)
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    kind, fields = json.loads(line)
                    self._apply(kind, fields)
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    buffer += _drain(status_r)
                    for line in buffer.split(b"\n"):
                        if line.strip():
                            kind, fields = json.loads(line)
                            self._apply(kind, fields)
                    return os.waitstatus_to_exitcode(status)
        finally:
            os.close(command_w)
            os.close(status_r)


_ZYGOTE_STALE = 3


def _zygote_main(supervisor: Supervisor, command_r: int, status_w: int) -> int:
    """The zygote: a single-threaded copy of the parent that forks the workers."""
    zygote_pid = os.getpid()
    commands = [b""]
    mode: list[Optional[str]] = [None]

    def report(kind: str, fields: dict) -> None:
        os.write(status_w, json.dumps([kind, fields]).encode() + b"\n")

    def stop_mode() -> Optional[str]:
        data = _drain(command_r)
        if data:
            commands[0] += data
            *lines, commands[0] = commands[0].split(b"\n")
            for line in lines:
                word = line.decode().split()[-1]
                if mode[0] is None or word == "now":
                    mode[0] = word
        return mode[0]

    os.set_blocking(command_r, False)
    pool = supervisor._pool(None, report, give_up_when_stale=True)

    def fork_worker(notify_fd: int) -> tuple[int, None]:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
        finally:
            if os.getpid() == zygote_pid:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if pid:
            return pid, None
        # A worker: stop signals stay blocked until serve() has its handlers, so a stop request
        # that comes while it starts is handled, not fatal.
        code = EXIT_FAILURE
        try:
            for fd in (command_r, status_w, *pool.notify_fds()):
                os.close(fd)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if die_with_parent(signal.SIGKILL, zygote_pid):
                code = _forked_worker(supervisor.engine, supervisor.concurrency, notify_fd)
        except BaseException:  # noqa: BLE001 - the zygote sees the exit code
            _stderr_line("jobforge: worker process failed:\n" + traceback.format_exc())
        finally:
            os._exit(code)

    pool.start_child = fork_worker
    try:
        pool.run(command_r, stop_mode)
    except _ZygoteStale:
        pool.kill_all()
        return _ZYGOTE_STALE
    except BaseException:
        pool.kill_all()
        raise
    return EXIT_OK


def _forked_worker(app: Engine, concurrency: int, notify_fd: int) -> int:
    """The body of a forked worker: a fresh engine with the app's processors, served until a
    signal stops it. The app's engine object then forwards to it (Engine._stand_in_for)."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)  # blocked until serve() handles them
    engine = worker_engine(app, concurrency=concurrency)
    app._stand_in_for(engine)
    return serve(engine, notify_fd=notify_fd)


__all__ = ["Supervisor", "ChildExit", "AppError", "load_app", "replay_processors",
           "worker_engine", "serve"]  # fmt: skip
