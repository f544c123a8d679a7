"""Helpers shared by the dashboard tests: a real `jobforge dashboard` process, HTTP calls and an
SSE reader, all on real sockets."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

TOKEN = "test-token-0123456789"


def console_script() -> list[str]:
    """The installed `jobforge` console script next to this interpreter (else -m jobforge)."""
    script = os.path.join(os.path.dirname(sys.executable), "jobforge")
    if os.path.exists(script):
        return [script]
    found = shutil.which("jobforge")
    return [found] if found else [sys.executable, "-m", "jobforge"]


def env(**extra) -> dict:
    out = dict(os.environ)
    out.pop("JOBFORGE_DB", None)
    out.pop("JOBFORGE_DASHBOARD_TOKEN", None)
    out["SKBUILD_EDITABLE_VERBOSE"] = "0"
    out["PYTHONIOENCODING"] = "utf-8"
    out.update(extra)
    return out


class DashboardProcess:
    """`jobforge dashboard --db PATH --port 0` in a child process; knows its URL and token."""

    def __init__(self, db: str, *extra: str, token: str = TOKEN, cwd: str | None = None) -> None:
        args = [*console_script(), "dashboard", "--db", db, "--port", "0", "--poll", "0.2"]
        if token:
            args += ["--token", token]
        self.process = subprocess.Popen(
            [*args, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
            cwd=cwd,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 120  # the first import may rebuild an editable install
        self.url = self.token = None
        while self.url is None or self.token is None:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(
                    f"dashboard exited ({self.process.wait()}): {self.process.stderr.read()}"
                )
            self.lines.append(line.rstrip("\n"))
            if line.startswith("jobforge dashboard on "):
                self.url = line.split()[3].rstrip("/")
            elif line.startswith("action token: "):
                self.token = line.split(": ", 1)[1].strip()
            if time.monotonic() > deadline:
                raise AssertionError("dashboard printed no URL in time")

    def stop(self, sig=signal.SIGTERM, timeout=20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            for stream in (self.process.stdout, self.process.stderr):
                stream.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def request(url: str, method: str = "GET", body=None, token: str | None = None):
    """(status, decoded JSON body) of one HTTP request; errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


class EventStream:
    """Reads /api/events on a thread; `next_matching(pred)` returns (kind, data) pairs."""

    def __init__(self, url: str) -> None:
        self._response = urllib.request.urlopen(url + "/api/events", timeout=30)
        assert self._response.headers["Content-Type"].startswith("text/event-stream")
        self.events: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        kind, data = None, []
        try:
            for raw in self._response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and kind:
                    self.events.put((kind, json.loads("\n".join(data))))
                    kind, data = None, []
        except (OSError, ValueError, AttributeError):
            pass  # closed by close() from the test's thread (http.client then has no socket)
        self.events.put(None)

    def next_matching(self, predicate, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching server-sent event in time")
            try:
                item = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if item is None:
                raise AssertionError("the event stream ended")
            if predicate(*item):
                return item

    def close(self) -> None:
        self._response.close()
