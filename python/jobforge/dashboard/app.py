"""The dashboard's server: a Starlette app with a JSON API, Server-Sent Events and the static page.

Where the live data comes from:

- events of this process's engine (``engine.on("*")``): immediate, when the dashboard runs in
  the process that runs the jobs (``serve(engine)``, or ``jobforge dashboard --app``);
- a watcher that reads the store every ``poll_interval`` seconds (per-status counters, the
  running jobs with their progress, throughput from the counters): this is how jobs run by
  other processes on the same file reach the page. Their progress reaches the store about once
  a second per job (the engine's progress flush), so their bars move at that pace.

Both feed one hub that coalesces updates per job and sends each SSE client at most ten messages
a second, however many events the engine produces.

Actions that change state (enqueue, cancel, retry, cancel all) need the token: header
``Authorization: Bearer TOKEN`` (or ``X-Jobforge-Token: TOKEN``). Missing: 401; wrong: 403;
either way nothing changes. With ``token_for_reads`` (a server reachable from elsewhere: a
non-loopback address, or an allowed host that is not a loopback name) every ``/api`` request
needs it. Past AUTH_FAILURES wrong tokens from one address within AUTH_WINDOW
seconds, that address gets 429 until the window has passed.

Every request must name an allowed host (``Host`` header: the loopback names by default; DNS
rebinding), every answer carries the security headers below, and at most ``max_sse_clients``
live feeds are open at once (503 past that).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, Optional, Union

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import ValidationError
from ..job import FINAL_STATUSES, STATUSES
from .queries import QueryError, open_queries

log = logging.getLogger("jobforge.dashboard")

STATIC = Path(__file__).with_name("static")
ACTIVE_LIMIT = 100  # running jobs sent in each snapshot
FLUSH_INTERVAL = 0.1  # seconds between coalesced job updates to the clients
CLIENT_QUEUE = 256  # messages buffered per SSE client; past that, the oldest are dropped
THROUGHPUT_WINDOW = 10.0  # seconds over which throughput is averaged
HISTORY_SAMPLES = 120  # throughput samples kept for the sparkline
TYPE_STATS_TTL = 2.0  # seconds the per-type figures of engine.stats() are reused
MIN_TOKEN_LENGTH = 16
MAX_SSE_CLIENTS = 100  # live feeds open at once (each holds a socket); past it: 503
AUTH_FAILURES = 10  # wrong tokens from one client address within AUTH_WINDOW seconds...
AUTH_WINDOW = 60.0  # ...after which that address gets 429 until the window has passed
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_ID = (1 << 63) - 1  # cursors and log ids are SQLite integers
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
     b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]  # fmt: skip


def _json(value: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(value, status_code=status)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def job_summary(job) -> dict:
    """A job as the active table shows it (no payload or result)."""
    return {
        "id": job.id,
        "type": job.type,
        "status": job.status,
        "priority": job.priority,
        "progress": job.progress,
        "progress_current": job.progress_current,
        "progress_total": job.progress_total,
        "message": job.message,
        "error": job.error,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "parent_id": job.parent_id,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "run_at": job.run_at,
        "cancel_requested": job.cancel_requested,
        "stage": job.stage,
        "rate": job.rate,
        "eta": job.eta,
    }


def job_detail(job) -> dict:
    from ..cli import job_json

    return job_json(job)


def log_line(line) -> dict:
    """A log line (``engine.logs`` or a job-log event) as the page shows it."""
    data = line if isinstance(line, dict) else line.to_dict()
    return {
        "id": data.get("id"),
        "job_id": data.get("job_id"),
        "attempt": data.get("attempt"),
        "time": data.get("at"),
        "level": data.get("level"),
        "stage": data.get("stage"),
        "message": data.get("message"),
        "context": data.get("fields") or {},
    }


def _event_update(ev) -> dict:
    """An engine event as a job update for the page."""
    return {
        "id": ev.job_id,
        "type": ev.job_type,
        "status": ev.status,
        "progress": ev.progress,
        "progress_current": ev.progress_current,
        "progress_total": ev.progress_total,
        "message": ev.message,
        "error": ev.error,
        "attempts": ev.attempt,
        "stage": ev.stage,
        "rate": ev.rate,
        "eta": ev.eta,
        "event": ev.type,
        "timestamp": ev.timestamp,
    }


class _Client:
    __slots__ = ("queue", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(CLIENT_QUEUE)
        self.loop = loop

    def offer(self, message: str) -> None:  # on the event loop
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()  # a newer snapshot supersedes the oldest message
        self.queue.put_nowait(message)


class Hub:
    """Fans coalesced updates out to the SSE clients. Thread-safe ``update``; the rest runs on
    the server's event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, dict] = {}
        self._logs: list[dict] = []
        self._clients: set[_Client] = set()
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.last: dict[str, str] = {}  # last message of each kind, for clients that join

    def update(self, job: dict) -> None:
        """Records the latest state of one job (any thread); sent at the next flush."""
        with self._lock:
            previous = self._pending.get(job["id"])
            # A final state is never replaced by a late progress update of the same job.
            if (
                previous
                and previous.get("status") in FINAL_STATUSES
                and job.get("status") not in FINAL_STATUSES
            ):
                return
            self._pending[job["id"]] = job

    def log(self, line: dict) -> None:
        """Queues a log line of a job (any thread); sent at the next flush. Past a thousand
        lines between flushes the oldest are dropped: the page re-reads a job's logs anyway."""
        with self._lock:
            self._logs.append(line)
            if len(self._logs) > 1000:
                del self._logs[:-1000]

    def connect(self) -> _Client:
        client = _Client(asyncio.get_running_loop())
        self._clients.add(client)
        return client

    def disconnect(self, client: _Client) -> None:
        self._clients.discard(client)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def broadcast(self, kind: str, data: Any, *, keep: bool = False) -> None:
        message = f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        if keep:
            self.last[kind] = message
        for client in list(self._clients):
            client.offer(message)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            logs, self._logs = self._logs, []
        if pending and self._clients:
            self.broadcast("jobs", list(pending.values()))
        if logs and self._clients:
            self.broadcast("logs", logs)


class Throughput:
    """Jobs finished and created per second, from the store's per-status counters (so jobs of
    every process on the file count), averaged over a short window."""

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque()
        self.history: collections.deque[dict] = collections.deque(maxlen=HISTORY_SAMPLES)

    def add(self, stats: dict[str, int], now: Optional[float] = None) -> dict:
        now = time.monotonic() if now is None else now
        finished = sum(stats.get(s, 0) for s in FINAL_STATUSES)
        total = stats.get("total", 0)
        self._samples.append((now, finished, total))
        while len(self._samples) > 2 and now - self._samples[0][0] > THROUGHPUT_WINDOW:
            self._samples.popleft()
        t0, f0, c0 = self._samples[0]
        span = now - t0
        rate = {
            "finished_per_s": max(0.0, (finished - f0) / span) if span > 0 else 0.0,
            "created_per_s": max(0.0, (total - c0) / span) if span > 0 else 0.0,
        }
        self.history.append({"t": int(time.time() * 1000), **rate})
        return rate


class _Throttle:
    """Counts distinct wrong tokens per client address: past ``limit`` within ``window``
    seconds the address is refused (429) until its oldest counted failure is ``window`` seconds
    old. The same wrong token again (a page that keeps polling with it) is not a new guess.
    Other addresses are not affected; nothing ever sleeps."""

    MAX_CLIENTS = 10_000  # addresses remembered at once

    def __init__(self, limit: int = AUTH_FAILURES, window: float = AUTH_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, collections.deque[tuple[float, bytes]]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str, now: Optional[float] = None) -> float:
        """Seconds until ``client`` may try a token again (0: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            failures = self._failures.get(client)
            if not failures or len(failures) < self.limit:
                return 0.0
            return max(0.0, failures[0][0] + self.window - now)

    def failed(self, client: str, token: str, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            failures = self._failures.get(client)
            if failures is None:
                if len(self._failures) >= self.MAX_CLIENTS:  # bounded memory
                    for key in [
                        k for k, f in self._failures.items() if f[-1][0] + self.window < now
                    ]:
                        del self._failures[key]
                    while len(self._failures) >= self.MAX_CLIENTS:
                        del self._failures[next(iter(self._failures))]
                failures = self._failures[client] = collections.deque(maxlen=self.limit)
            while failures and failures[0][0] + self.window < now:
                failures.popleft()
            if any(d == digest for _, d in failures):
                return
            failures.append((now, digest))

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


def _host_name(header: str) -> str:
    """The host of a ``Host`` header, without port or IPv6 brackets, lower case."""
    host = header.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name if not rest or (rest[:1] == ":" and rest[1:].isdigit()) else host
    if host.count(":") == 1:
        name, port = host.split(":")
        return name if port.isdigit() else host  # not a port: the whole text, which no name is
    return host


def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    for pattern in allowed:
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def _normalize_hosts(hosts: Any) -> tuple[str, ...]:
    if (
        isinstance(hosts, str)
        or not hasattr(hosts, "__iter__")
        or not (hosts := list(hosts))
        or not all(isinstance(h, str) and h.strip() for h in hosts)
    ):
        raise ValidationError(
            f"allowed_hosts must be a list of host names, got {hosts!r}", field="allowed_hosts"
        )
    return tuple(_host_name(h) if h != "*" else h for h in hosts)


class _Guard:
    """ASGI middleware in front of every route: the Host check, the token for reads when
    required, and the security headers on every answer."""

    def __init__(self, app, dashboard: Dashboard) -> None:
        self.app = app
        self.dashboard = dashboard

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        d = self.dashboard
        request = Request(scope)
        host = _host_name(request.headers.get("host", ""))
        if not _host_allowed(host, d.allowed_hosts):
            refused: Optional[Response] = _error(
                400,
                f"the Host header names {host or 'nothing'!r}, not a host this dashboard "
                "serves (allowed_hosts / --allowed-host adds one)",
            )
        elif d.token_for_reads and scope["path"].startswith("/api/"):
            refused = d._check_token(request, query=scope["path"] == "/api/events")
        else:
            refused = None
        if refused is not None:
            await refused(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


class _EventStreamResponse(StreamingResponse):
    """A live feed that gives its slot back however it ends (even before its first byte)."""

    def __init__(self, content, on_close, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class Dashboard:
    """The dashboard of one engine: its API, its page and the live feed.

    ``engine`` may be running (this process runs jobs: events arrive at once) or not (an
    observer: it enqueues, cancels and reads, and claims nothing). ``token`` protects the
    actions (at least MIN_TOKEN_LENGTH characters); a random one is made when not given.
    ``allowed_hosts``: the host names requests may use (``Host`` header; default: the loopback
    names; ``"*"`` any, ``"*.example.com"`` a domain). ``token_for_reads``: every ``/api``
    request needs the token, not only the actions (default: when an allowed host is not a
    loopback name, since requests then come from elsewhere). ``max_sse_clients``: live feeds open at
    once."""

    def __init__(
        self,
        engine,
        *,
        token: Optional[str] = None,
        poll_interval: float = 0.5,
        allowed_hosts: Optional[list[str]] = None,
        max_sse_clients: int = MAX_SSE_CLIENTS,
        token_for_reads: Optional[bool] = None,
    ) -> None:
        if token is not None and (not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH):
            got = f"{len(token)} characters" if isinstance(token, str) else type(token).__name__
            raise ValidationError(
                f"token must be a str of at least {MIN_TOKEN_LENGTH} characters, got {got}",
                field="token",
            )
        if (
            isinstance(poll_interval, bool)
            or not isinstance(poll_interval, (int, float))
            or not (0 < poll_interval < math.inf)
        ):
            raise ValidationError(
                f"poll_interval must be more than 0 seconds, got {poll_interval!r}",
                field="poll_interval",
            )
        if (
            isinstance(max_sse_clients, bool)
            or not isinstance(max_sse_clients, int)
            or not 1 <= max_sse_clients <= 100_000
        ):
            raise ValidationError(
                f"max_sse_clients must be 1..100000, got {max_sse_clients!r}",
                field="max_sse_clients",
            )
        self.engine = engine
        self.token = token or secrets.token_urlsafe(18)
        self.poll_interval = poll_interval
        self.allowed_hosts = _normalize_hosts(
            LOOPBACK_HOSTS if allowed_hosts is None else allowed_hosts
        )
        self.max_sse_clients = max_sse_clients
        if token_for_reads is None:
            token_for_reads = any(h not in LOOPBACK_HOSTS for h in self.allowed_hosts)
        self.token_for_reads = bool(token_for_reads)
        self.throttle = _Throttle()
        self.queries = open_queries(engine)
        self.hub = Hub()
        self.throughput = Throughput()
        self._subscription = None
        self._types_cache: tuple[float, list[str]] = (0.0, [])
        self._type_stats: tuple[float, dict] = (-TYPE_STATS_TTL, {})
        # Set by the server that runs this app: true once it is shutting down.
        self.closing = lambda: False
        self.app = self._build_app()

    # -- feed ------------------------------------------------------------------------------
    def _on_event(self, ev) -> None:
        if ev.type == "job-log":
            self.hub.log(
                {"id": ev.log_id, "job_id": ev.job_id, "attempt": ev.attempt,
                 "time": ev.timestamp, "level": ev.level, "stage": ev.stage,
                 "message": ev.message, "context": ev.fields}
            )  # fmt: skip
        elif ev.type != "job-created":
            self.hub.update(_event_update(ev))

    def _snapshot(self) -> tuple[dict, list[dict]]:
        counts = self.engine.counts()
        running = self.engine.jobs(status="running", limit=ACTIVE_LIMIT)
        return counts, [job_summary(j) for j in running]

    def type_stats(self) -> dict:
        """Per job type: counts, run times, error rate, rates (the engine's ``stats()``),
        cached for TYPE_STATS_TTL seconds."""
        at, cached = self._type_stats
        if time.monotonic() - at > TYPE_STATS_TTL:
            cached = self.engine.stats().get("types", {})
            self._type_stats = (time.monotonic(), cached)
        return cached

    def overview(self) -> dict:
        counts = self.engine.counts()
        rate = self.throughput.add(counts)
        return self._overview(counts, rate, self.type_stats())

    def _overview(self, stats: dict, rate: dict, types: dict) -> dict:
        from .. import __version__

        return {
            "stats": stats,
            "types": types,
            "queue_depth": stats.get("queued", 0),
            "running": stats.get("running", 0),
            "throughput": rate,
            "throughput_history": list(self.throughput.history),
            "db": self.engine.path,
            "version": __version__,
            "engine_running": self.engine.running,
            "clients": self.hub.clients,
            "time": int(time.time() * 1000),
        }

    async def _watch(self) -> None:
        """Reads the store every poll_interval and flushes the hub every FLUSH_INTERVAL."""
        next_poll = 0.0
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if now >= next_poll:
                next_poll = now + self.poll_interval
                if self.hub.clients:
                    try:
                        stats, running = await asyncio.to_thread(self._snapshot)
                        types = await asyncio.to_thread(self.type_stats)
                        rate = self.throughput.add(stats)
                        overview = self._overview(stats, rate, types)
                        self.hub.broadcast("overview", overview, keep=True)
                        self.hub.broadcast("active", running, keep=True)
                    except Exception:  # noqa: BLE001 - the watcher outlives a failed read
                        log.exception("jobforge dashboard: reading the store failed")
            self.hub.flush()
            await asyncio.sleep(FLUSH_INTERVAL)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.hub.loop = asyncio.get_running_loop()
        self._subscription = self.engine.on("*", self._on_event)
        watcher = asyncio.create_task(self._watch())
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if self._subscription is not None:
                self._subscription.unsubscribe()
                self._subscription = None
            self.queries.close()

    # -- auth ------------------------------------------------------------------------------
    def _check_token(self, request: Request, *, query: bool = False) -> Optional[JSONResponse]:
        """None when the request carries the token; else the answer to send (401 none given,
        403 wrong, 429 too many wrong ones from this address). ``query``: ``?token=`` counts
        too (the live feed: a browser's EventSource cannot send headers)."""
        given = request.headers.get("x-jobforge-token")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None and query:
            given = request.query_params.get("token")
        if not given:
            return JSONResponse(
                {"error": "this needs the dashboard token (Authorization: Bearer TOKEN)"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="jobforge"'},
            )
        client = request.client.host if request.client else ""
        wait = self.throttle.retry_after(client)
        if wait > 0:
            return JSONResponse(
                {"error": f"too many wrong tokens from {client}; try again in {math.ceil(wait)} s"},
                status_code=429,
                headers={"Retry-After": str(math.ceil(wait))},
            )
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            self.throttle.failed(client, given)
            return _error(403, "wrong dashboard token")
        self.throttle.succeeded(client)
        return None

    # -- handlers (sync ones run in Starlette's thread pool; engine calls release the GIL) -----
    def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    def api_overview(self, request: Request) -> Response:
        return _json(self.overview())

    def api_active(self, request: Request) -> Response:
        _, running = self._snapshot()
        return _json({"jobs": running})

    def api_jobs(self, request: Request) -> Response:
        q = request.query_params
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            return _error(400, f"limit must be a whole number, got {q.get('limit')[:40]!r}")
        try:
            page = self.queries.page(
                status=q.get("status") or None,
                type=q.get("type") or None,
                search=q.get("q") or None,
                cursor=q.get("cursor") or None,
                limit=limit,
            )
        except QueryError as exc:
            return _error(400, str(exc))
        return _json(page.to_dict())

    def api_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        job = self.engine.get(job_id)
        if job is None:
            return _error(404, f"no job with id {job_id!r}")
        data = job_detail(job)
        counts = self.queries.children_counts(job.id)
        data["children"] = {"count": sum(counts.values()), "by_status": counts}
        data["logs"] = self._logs(job.id)
        return _json(data)

    def _logs(self, job_id: str, after: int = 0, limit: int = 500) -> list[dict]:
        return [log_line(line) for line in self.engine.logs(job_id, limit=limit, after=after)]

    def api_job_logs(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if self.engine.get(job_id) is None:
            return _error(404, f"no job with id {job_id!r}")
        text = request.query_params.get("after", "0")
        try:
            after = int(text)
            if not 0 <= after <= MAX_ID:
                raise ValueError
        except ValueError:
            return _error(
                400, f"after must be the id of the last line seen (0 or more), got {text[:40]!r}"
            )
        return _json({"logs": self._logs(job_id, after=after)})

    def api_workers(self, request: Request) -> Response:
        now = int(time.time() * 1000)
        running = self.queries.running_owner_counts()
        workers = sorted(self.engine.workers(), key=lambda w: -(w.get("started_at") or 0))
        for w in workers:
            w["running_jobs"] = running.get(w["id"], 0)
            w["heartbeat_age_s"] = round((now - (w.get("heartbeat_at") or now)) / 1000, 1)
            w["this_process"] = w["id"] == getattr(self.engine, "worker_id", None)
        return _json({"workers": workers, "time": now})

    def api_health(self, request: Request) -> Response:
        integrity = request.query_params.get("integrity", "0") not in ("0", "", "false")
        return _json(self.engine.health(integrity=integrity))

    def types(self) -> list[str]:
        """Types a job can be enqueued with here: the engine's processors and the types
        already in the store (cached for a few seconds)."""
        cached_at, cached = self._types_cache
        if time.monotonic() - cached_at > 5:
            cached = self.queries.job_types()
            self._types_cache = (time.monotonic(), cached)
        return sorted(set(self.engine.processor_types) | set(cached))

    def api_types(self, request: Request) -> Response:
        return _json(
            {"types": self.types(), "processors": self.engine.processor_types,
             "statuses": list(STATUSES)}
        )  # fmt: skip

    def api_schedules(self, request: Request) -> Response:
        from ..cli import schedule_json

        return _json({"schedules": [schedule_json(s) for s in self.engine.schedules()],
                      "time": int(time.time() * 1000)})  # fmt: skip

    async def api_enqueue(self, request: Request) -> Response:
        refused = self._check_token(request)
        if refused:
            return refused
        from .. import _core

        limit = _core.MAX_PAYLOAD_BYTES + 65536  # the payload and the other fields
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                return _error(413, f"the request body is more than {limit} bytes")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return _error(400, f"the request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object with 'type' and 'payload'")
        unknown = set(body) - {"type", "payload", "priority", "delay", "max_attempts", "timeout"}
        if unknown:
            return _error(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        job_type = body.get("type")
        if not isinstance(job_type, str) or not job_type:
            return _error(400, f"type must be a non-empty string, got {job_type!r}")
        known = await asyncio.to_thread(self.types)
        if job_type not in known:
            return _error(
                400,
                f"type {job_type!r} is not registered here and no job of that type is in the "
                f"store (known: {', '.join(known) or 'none'})",
            )
        options = {
            k: body[k] for k in ("priority", "delay", "max_attempts", "timeout") if k in body
        }
        if options.get("delay") is None:
            options.pop("delay", None)
        for field, value in options.items():
            # Numbers the engine could not hold are refused here, naming the field.
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            bound = (1 << 31) - 1 if field in ("priority", "max_attempts") else 1e12
            if not (math.isfinite(value) and abs(value) <= bound):
                return _error(400, f"{field} is out of range: {str(value)[:40]}")
        try:
            job = await asyncio.to_thread(
                self.engine.enqueue, job_type, body.get("payload"), **options
            )
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        return _json(job_detail(job), 201)

    async def api_cancel(self, request: Request) -> Response:
        refused = self._check_token(request)
        if refused:
            return refused
        job_id = request.path_params["job_id"]

        def cancel():
            job = self.engine.get(job_id)
            if job is None:
                return _error(404, f"no job with id {job_id!r}")
            if job.is_final:
                return _error(409, f"job {job_id} is already {job.status}; nothing to cancel")
            if not self.engine.cancel(job_id):
                now = self.engine.get(job_id)
                return _error(409, f"job {job_id} could not be cancelled (status: {now.status})")
            return _json(job_detail(self.engine.get(job_id)))

        return await asyncio.to_thread(cancel)

    async def api_retry(self, request: Request) -> Response:
        refused = self._check_token(request)
        if refused:
            return refused
        job_id = request.path_params["job_id"]

        def retry():
            job = self.engine.get(job_id)
            if job is None:
                return _error(404, f"no job with id {job_id!r}")
            if job.status not in ("failed", "cancelled", "timeout"):
                return _error(
                    409,
                    f"job {job_id} is {job.status}; only failed, cancelled or timeout jobs "
                    "can be retried",
                )
            if not self.engine.retry(job_id):
                now = self.engine.get(job_id)
                return _error(409, f"job {job_id} could not be retried (status: {now.status})")
            return _json(job_detail(self.engine.get(job_id)))

        return await asyncio.to_thread(retry)

    async def api_cancel_all(self, request: Request) -> Response:
        refused = self._check_token(request)
        if refused:
            return refused
        n = await asyncio.to_thread(self.engine.abort_all)
        return _json({"cancelled": n})

    async def api_auth(self, request: Request) -> Response:
        """Checks a token without changing anything (the page uses it to tell the user)."""
        refused = self._check_token(request)
        return refused or _json({"ok": True})

    async def api_events(self, request: Request) -> Response:
        if self.hub.clients >= self.max_sse_clients:
            return JSONResponse(
                {"error": f"too many live feeds open (at most {self.max_sse_clients}: "
                          "max_sse_clients / --max-sse-clients); try again later"},
                status_code=503,
                headers={"Retry-After": "5", "Connection": "close"},  # the socket is freed now
            )  # fmt: skip
        client = self.hub.connect()
        for message in self.hub.last.values():
            client.offer(message)

        async def stream():
            try:
                yield "retry: 2000\n\n"
                idle = 0.0
                # Wakes every second to end with the server (uvicorn waits for open streams).
                while not self.closing():
                    try:
                        message = await asyncio.wait_for(client.queue.get(), 1.0)
                    except asyncio.TimeoutError:
                        idle += 1.0
                        if idle >= 15:
                            idle = 0.0
                            yield ": keep-alive\n\n"
                        continue
                    idle = 0.0
                    yield message
            finally:
                self.hub.disconnect(client)

        return _EventStreamResponse(
            stream(),
            lambda: self.hub.disconnect(client),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def api_openapi(self, request: Request) -> Response:
        from .openapi import SPEC

        return _json(SPEC)

    def _build_app(self) -> Starlette:
        routes = [
            Route("/", self.index),
            Route("/api/overview", self.api_overview),
            Route("/api/active", self.api_active),
            Route("/api/jobs", self.api_jobs, methods=["GET"]),
            Route("/api/jobs", self.api_enqueue, methods=["POST"]),
            Route("/api/jobs/{job_id}", self.api_job),
            Route("/api/jobs/{job_id}/logs", self.api_job_logs),
            Route("/api/jobs/{job_id}/cancel", self.api_cancel, methods=["POST"]),
            Route("/api/jobs/{job_id}/retry", self.api_retry, methods=["POST"]),
            Route("/api/cancel-all", self.api_cancel_all, methods=["POST"]),
            Route("/api/auth", self.api_auth, methods=["POST"]),
            Route("/api/workers", self.api_workers),
            Route("/api/health", self.api_health),
            Route("/api/types", self.api_types),
            Route("/api/schedules", self.api_schedules),
            Route("/api/events", self.api_events),
            Route("/api/openapi.json", self.api_openapi),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        app = Starlette(routes=routes, lifespan=self.lifespan)
        app.state.dashboard = self
        app.add_middleware(_Guard, dashboard=self)
        return app


def create_app(
    engine,
    *,
    token: Optional[str] = None,
    poll_interval: float = 0.5,
    allowed_hosts: Optional[list[str]] = None,
    max_sse_clients: int = MAX_SSE_CLIENTS,
    token_for_reads: Optional[bool] = None,
) -> Starlette:
    """The dashboard of ``engine`` as an ASGI app (serve it with any ASGI server). It answers
    only requests for ``allowed_hosts`` (default: the loopback names): served on another
    address, name the hosts clients use: reads then need the token too (``token_for_reads``,
    default: whenever an allowed host is not a loopback name). The token (random
    when not given) is ``app.state.dashboard.token``."""
    return Dashboard(
        engine, token=token, poll_interval=poll_interval, allowed_hosts=allowed_hosts,
        max_sse_clients=max_sse_clients, token_for_reads=token_for_reads,
    ).app  # fmt: skip


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_policy(host: str, allowed_hosts: Optional[list[str]]) -> tuple[list[str], bool]:
    """(the hosts requests may name, whether reads need the token) for a server on ``host``."""
    extra = [] if allowed_hosts is None else list(_normalize_hosts(allowed_hosts))
    if _is_loopback(host):
        # Another name for a loopback address: a reverse proxy brings requests from elsewhere.
        return [*LOOPBACK_HOSTS, *extra], any(h not in LOOPBACK_HOSTS for h in extra)
    if host.strip() in ("", "0.0.0.0", "::", "[::]"):
        if not extra:
            raise ValidationError(
                f"listening on {host or 'every address'!r} needs allowed_hosts: the host names "
                "or addresses clients put in their URLs (--allowed-host NAME, repeatable; '*' "
                "accepts any)",
                field="allowed_hosts",
            )
        return extra, True
    return [_host_name(host), *extra], True


class DashboardServer:
    """A dashboard served by uvicorn on a thread (``serve(..., block=False)``)."""

    def __init__(self, dashboard: Dashboard, server, sock: socket.socket, owns_engine: bool):
        self.dashboard = dashboard
        self._server = server
        self._sock = sock
        self._owns_engine = owns_engine
        self.host, self.port = sock.getsockname()[:2]
        self._thread: Optional[threading.Thread] = None
        dashboard.closing = lambda: bool(server.should_exit)

    @property
    def token(self) -> str:
        return self.dashboard.token

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::"):  # every address: the URL names a host the server allows
            named = [h for h in self.dashboard.allowed_hosts if "*" not in h]
            host = named[0] if named else host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._sock.close()
            if self._owns_engine:
                self.dashboard.engine.close()

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(target=self.run, name="jobforge-dashboard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the dashboard server did not start")
            time.sleep(0.01)
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<jobforge dashboard {self.url}>"


def serve(
    engine_or_path: Union[Any, str, os.PathLike],
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: Optional[str] = None,
    poll_interval: float = 0.5,
    block: bool = True,
    log_level: str = "warning",
    allowed_hosts: Optional[list[str]] = None,
    max_sse_clients: int = MAX_SSE_CLIENTS,
) -> DashboardServer:
    """Serves the dashboard of an engine (or of a database file, opened as an observer that
    claims no jobs) on ``host:port`` (port 0: any free port). ``block=False`` runs the server
    on a thread and returns at once; ``.url``, ``.token`` and ``.stop()`` on the result.

    On a loopback address the dashboard answers requests for the loopback names (and
    ``allowed_hosts``). On any other address every ``/api`` request needs the token, and the
    ``Host`` must be the address itself or one of ``allowed_hosts``; a wildcard address
    (``0.0.0.0``, ``::``) needs ``allowed_hosts`` (``["*"]``: any host)."""
    server = make_server(
        engine_or_path, host=host, port=port, token=token, poll_interval=poll_interval,
        log_level=log_level, allowed_hosts=allowed_hosts, max_sse_clients=max_sse_clients,
    )  # fmt: skip
    if block:
        server.run()
        return server
    return server.start()


def make_server(
    engine_or_path: Union[Any, str, os.PathLike],
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: Optional[str] = None,
    poll_interval: float = 0.5,
    log_level: str = "warning",
    allowed_hosts: Optional[list[str]] = None,
    max_sse_clients: int = MAX_SSE_CLIENTS,
) -> DashboardServer:
    """Binds the socket and builds the server without running it (see ``serve``)."""
    import uvicorn

    from ..engine import Engine

    hosts, token_for_reads = bind_policy(host, allowed_hosts)
    owns_engine = not isinstance(engine_or_path, Engine)
    if owns_engine:
        path = os.fspath(engine_or_path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"database '{path}' does not exist")
        engine = Engine(path, allow_unknown_types=True)
    else:
        engine = engine_or_path
    try:
        dashboard = Dashboard(
            engine, token=token, poll_interval=poll_interval, allowed_hosts=hosts,
            max_sse_clients=max_sse_clients, token_for_reads=token_for_reads,
        )  # fmt: skip
    except ValueError:
        if owns_engine:
            engine.close()
        raise
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if owns_engine:
            engine.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    config = uvicorn.Config(
        dashboard.app, log_level=log_level, timeout_graceful_shutdown=1, access_log=False,
        lifespan="on", proxy_headers=False,  # the peer address, not X-Forwarded-For
    )  # fmt: skip
    return DashboardServer(dashboard, uvicorn.Server(config), sock, owns_engine)
