"""Dashboard benchmark: page load time and API response times with 1,000,000 jobs in the file.

    python benchmarks/dashboard.py [--jobs N] [--runs N] [--screenshot docs/dashboard.png]

Builds (or reuses, with --keep) a SQLite file with N jobs of mixed status and type, starts the real
`jobforge dashboard` process on it as an observer, runs a few live jobs from this process so the
page has moving bars, then measures:

- every API endpoint the page uses, median and p95 of --runs requests after a warm-up;
- history pages deep in the file (keyset: page 200 costs what page 1 costs);
- a text search that matches nothing (bounded by the search window);
- the page load in headless Chromium (Debian's `chromium`, driven by Playwright): from navigation
  to the page's "ready" mark (HTML, CSS, JS and the five API calls of the first paint), with a
  cold cache each time.

Prints a table and writes benchmarks/results/dashboard-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("email", "resize", "report", "sync")


def _search_window() -> int:
    from jobforge.dashboard.queries import SEARCH_WINDOW

    return SEARCH_WINDOW


SEARCH_WINDOW = _search_window()


def log(text: str) -> None:
    print(f"[dashboard-bench] {text}", file=sys.stderr, flush=True)


def build_file(path: Path, n: int) -> None:
    """N jobs of four types through the engine's enqueue_many, then a mix of statuses in SQL
    (the store's triggers keep the per-type counters in step)."""
    import jobforge

    t0 = time.perf_counter()
    engine = jobforge.Engine(str(path), allow_unknown_types=True)
    chunk = 2_500  # types interleave by chunk; set at enqueue so the per-type counters agree
    for k in range(0, n, chunk):
        engine.enqueue_many(
            TYPES[(k // chunk) % len(TYPES)],
            [{"i": i, "path": f"/data/{i}.bin"} for i in range(k, min(n, k + chunk))],
        )
    engine.close()
    del engine
    log(f"enqueued {n:,} jobs in {time.perf_counter() - t0:.1f} s")
    con = sqlite3.connect(str(path))
    with con:
        # One job every 100 ms over the last N/10 seconds; statuses in a fixed mix, no running
        # rows (a running row without a live owner would be recovered when the file is opened).
        con.execute(f"""
            UPDATE jobs SET
              created_at = created_at - ({n} - rowid) * 100,
              status = CASE WHEN rowid % 20 < 12 THEN 'completed'
                            WHEN rowid % 20 < 14 THEN 'failed'
                            WHEN rowid % 20 < 15 THEN 'cancelled'
                            WHEN rowid % 20 < 16 THEN 'timeout'
                            ELSE 'queued' END
        """)
        con.execute("""
            UPDATE jobs SET attempts = 1, started_at = created_at + 40,
              completed_at = created_at + 40 + (rowid % 97) * 13,
              progress = CASE status WHEN 'completed' THEN 100 ELSE (rowid % 90) END,
              progress_message = 'processed ' || (rowid % 1000) || ' items',
              result = CASE WHEN status = 'completed' THEN '{"ok":true,"bytes":' || rowid || '}' END,
              error = CASE status WHEN 'failed' THEN 'ValueError: bad input in row ' || (rowid % 5000)
                                  WHEN 'timeout' THEN 'timed out after 300 s'
                                  WHEN 'cancelled' THEN 'cancelled' END
            WHERE status <> 'queued'
        """)
        con.execute("UPDATE jobs SET run_at = created_at, queued_at = created_at")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("ANALYZE")
    con.close()
    from jobforge import db as jobforge_db

    jobforge_db.recount(str(path))  # the statuses were set by hand: count them
    log(
        f"file ready: {n:,} jobs, {path.stat().st_size / 1e6:.0f} MB, {time.perf_counter() - t0:.1f} s"
    )


def start_dashboard(path: Path) -> tuple[subprocess.Popen, str, str]:
    env = dict(os.environ, SKBUILD_EDITABLE_VERBOSE="0")
    env.pop("JOBFORGE_DASHBOARD_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobforge", "dashboard", "--db", str(path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=env,
    )  # fmt: skip
    url = token = None
    while url is None or token is None:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"dashboard exited: {proc.stderr.read()}")
        if line.startswith("jobforge dashboard on "):
            url = line.split()[3].rstrip("/")
        elif line.startswith("action token: "):
            token = line.split(": ", 1)[1].strip()
    return proc, url, token


def timed_get(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as res:
        body = res.read()
    return (time.perf_counter() - t0) * 1000, body


def measure(url: str, runs: int) -> dict:
    times = []
    timed_get(url)  # warm-up
    for _ in range(runs):
        ms, _ = timed_get(url)
        times.append(ms)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p95_ms": times[min(len(times) - 1, int(0.95 * len(times)))],
    }


def cursor_at_depth(url: str, query: str, pages: int) -> str:
    cursor = ""
    for _ in range(pages):
        _, body = timed_get(f"{url}/api/jobs?{query}&limit=50&cursor={cursor}")
        cursor = json.loads(body)["next_cursor"]
    return cursor


def page_load(url: str, token: str, runs: int, screenshot: str | None) -> dict:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("JOBFORGE_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        log("no chromium: page load not measured")
        return {}
    loads, ready, in_browser = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            for k in range(runs + 1):
                context = browser.new_context(viewport={"width": 1440, "height": 1000})
                page = context.new_page()
                t0 = time.perf_counter()
                page.goto(f"{url}/#token={token}")
                page.wait_for_selector("body[data-ready]", timeout=60_000)
                total = (time.perf_counter() - t0) * 1000
                if k:  # the first is a warm-up of the browser process
                    loads.append(total)
                    ready.append(float(page.evaluate("() => document.body.dataset.ready")))
                    in_browser.append(float(page.evaluate("() => document.body.dataset.readyAt")))
                if k == runs and screenshot:
                    page.wait_for_selector("#live.on")
                    page.wait_for_selector("#active tbody tr")
                    time.sleep(2.5)  # a few live updates, bars part-way
                    page.screenshot(path=screenshot)
                    log(f"screenshot: {screenshot}")
                context.close()
        finally:
            browser.close()
    return {
        "navigation_to_ready_median_ms": statistics.median(loads),
        "navigation_to_ready_max_ms": max(loads),
        "first_api_calls_median_ms": statistics.median(ready),
        "in_browser_navigation_to_ready_median_ms": statistics.median(in_browser),
    }


def live_jobs(path: Path, stop: threading.Event) -> threading.Thread:
    """A worker engine in this process with a few long jobs, so the page has moving bars."""
    import jobforge

    engine = jobforge.Engine(str(path), workers=6, allow_unknown_types=True)

    @engine.processor("render")
    def render(ctx, payload):
        total = payload["frames"]
        for i in range(total):
            if ctx.cancelled or stop.is_set():
                return None
            ctx.progress(i + 1, total=total, message=f"frame {i + 1} of {total}")
            time.sleep(payload["step"])
        return {"frames": total}

    engine.start()
    for k in range(6):
        engine.enqueue("render", {"frames": 400 + 150 * k, "step": 0.05 + 0.01 * k}, priority=1)

    def keep():
        stop.wait()
        engine.stop(wait=False)

    thread = threading.Thread(target=keep, daemon=True)
    thread.start()
    return thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20, help="requests per endpoint (20)")
    parser.add_argument("--loads", type=int, default=5, help="page loads (5)")
    parser.add_argument("--file", help="database file to build or reuse (default: a temp file)")
    parser.add_argument("--keep", action="store_true", help="reuse --file if it exists")
    parser.add_argument("--screenshot", help="save a screenshot of the page here")
    args = parser.parse_args()

    tmp = None
    if args.file:
        path = Path(args.file)
    else:
        tmp = tempfile.mkdtemp(prefix="jobforge-dash-bench-")
        path = Path(tmp) / "jobs.db"
    if not (args.keep and path.exists()):
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        build_file(path, args.jobs)

    stop = threading.Event()
    live = live_jobs(path, stop)
    proc, url, token = start_dashboard(path)
    rows: list[tuple[str, dict]] = []
    try:
        time.sleep(1.0)
        _, body = timed_get(f"{url}/api/jobs?limit=1&status=failed")
        some_id = json.loads(body)["jobs"][0]["id"]
        deep = cursor_at_depth(url, "x=1", 200)
        # The last page: a cursor just after the 51st-oldest job (what "older" reaches at the end).
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        created, rowid = con.execute(
            "SELECT created_at, rowid FROM jobs ORDER BY created_at, rowid LIMIT 1 OFFSET 50"
        ).fetchone()
        con.close()
        deepest = f"{created}.{rowid}"
        deep_failed = cursor_at_depth(url, "status=failed", 200)
        endpoints = [
            ("overview (counts, throughput)", "/api/overview"),
            ("active jobs", "/api/active"),
            ("history, first page of 50", "/api/jobs?limit=50"),
            ("history, page 201 (10,000 jobs deep)", f"/api/jobs?limit=50&cursor={deep}"),
            (f"history, last page ({args.jobs:,} deep)", f"/api/jobs?limit=50&cursor={deepest}"),
            ("history, status=failed", "/api/jobs?limit=50&status=failed"),
            (
                "history, status=failed, page 201",
                f"/api/jobs?limit=50&status=failed&cursor={deep_failed}",
            ),
            ("history, type=report", "/api/jobs?limit=50&type=report"),
            ("history, status+type", "/api/jobs?limit=50&status=completed&type=email"),
            ("history, search (match)", "/api/jobs?limit=50&q=row+4242"),
            (
                f"history, search (no match, {SEARCH_WINDOW:,} rows)",
                "/api/jobs?limit=50&q=zzz-nothing",
            ),
            ("job detail", f"/api/jobs/{some_id}"),
            ("workers", "/api/workers"),
            ("types", "/api/types"),
        ]
        for label, path_q in endpoints:
            rows.append((label, measure(url + path_q, args.runs)))
            log(f"{label}: {rows[-1][1]['median_ms']:.2f} ms")
        load = page_load(url, token, args.loads, args.screenshot)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        stop.set()
        live.join(30)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"\njobforge dashboard, {args.jobs:,} jobs, commit {commit}, {os.cpu_count()} cores, "
        f"{args.runs} requests per endpoint (after a warm-up), {args.loads} page loads\n"
    )
    print(f"{'request':44} {'median':>9} {'p95':>9}")
    print(f"{'-' * 44} {'-' * 9} {'-' * 9}")
    for label, m in rows:
        print(f"{label:44} {m['median_ms']:7.2f}ms {m['p95_ms']:7.2f}ms")
    if load:
        print(
            f"{'page load, navigation to ready (cold cache)':44} "
            f"{load['navigation_to_ready_median_ms']:7.1f}ms "
            f"{load['navigation_to_ready_max_ms']:7.1f}ms (max)"
        )
        print(
            f"{'  same, by the browser clock':44} "
            f"{load['in_browser_navigation_to_ready_median_ms']:7.1f}ms"
        )
        print(
            f"{'  of which the first five API calls':44} {load['first_api_calls_median_ms']:7.1f}ms"
        )
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"dashboard-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "jobs": args.jobs, "commit": commit, "cores": os.cpu_count(),
                "machine": platform.platform(), "requests": dict(rows), "page_load": load,
            },
            indent=2,
        )
    )  # fmt: skip
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
