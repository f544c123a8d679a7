"""The dashboard as a person uses it: Debian's headless Chromium, driven by Playwright, on the real
`jobforge dashboard` process, while this test process runs the jobs on the same SQLite file.

The page's Content-Security-Policy forbids eval: conditions given to wait_for_function are
functions ("() => ..."), which Playwright does not evaluate from a string in the page.

Needs `chromium` (scripts/setup.sh installs it) and the `playwright` package; Playwright's own
browser download is never used (there is none to fetch offline): the system browser is launched
by path.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

pytest.importorskip("starlette")
sync_api = pytest.importorskip("playwright.sync_api")

from dashboard_helpers import DashboardProcess  # noqa: E402

CHROMIUM = os.environ.get("JOBFORGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (scripts/setup.sh)"
)


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            browser.close()


def _progress(page, job_id):
    bar = page.locator(f'#active tr[data-id="{job_id}"] .bar')
    return int(bar.get_attribute("data-progress") or 0)


def test_page_shows_a_python_job_moving_and_cancels_it(browser, make_engine, db_path, tmp_path):
    engine = make_engine(workers=2)

    @engine.processor("render", max_attempts=1)
    def render(ctx, payload):
        for i in range(600):
            if ctx.cancelled:
                return None
            ctx.progress(i + 1, total=600, message=f"frame {i + 1} of 600")
            time.sleep(0.05)
        return {"frames": 600}

    engine.start()
    engine.enqueue("noop", {"warm": True}).wait(10)  # creates the file, one finished job
    dash = DashboardProcess(db_path)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # The page must live within its Content-Security-Policy (no inline script or style).
        page.on("console", lambda msg: "Content Security Policy" in msg.text
                and errors.append(msg.text))  # fmt: skip
        response = page.goto(f"{dash.url}/#token={dash.token}")
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        page.wait_for_selector("body[data-ready]")
        page.wait_for_selector("#live.on")
        assert page.locator("#token-state").inner_text(timeout=5000) in ("✓", "")

        # A job enqueued from Python appears in the active table and its bar moves.
        job = engine.enqueue("render", {"scene": "intro"})
        row = page.locator(f'#active tr[data-id="{job.id}"]')
        row.wait_for(timeout=20_000)
        page.wait_for_function(
            """id => {
                const bar = document.querySelector(`#active tr[data-id="${id}"] .bar`);
                return bar && Number(bar.dataset.progress) > 0;
            }""",
            arg=job.id,
            timeout=20_000,
        )
        first = _progress(page, job.id)
        page.wait_for_function(
            """([id, first]) => {
                const bar = document.querySelector(`#active tr[data-id="${id}"] .bar`);
                return bar && Number(bar.dataset.progress) > first;
            }""",
            arg=[job.id, first],
            timeout=20_000,
        )
        assert _progress(page, job.id) > first
        assert "frame" in row.inner_text()
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        # A wrong token is refused and the job keeps running.
        page.fill("#token", "not-the-token-at-all")
        page.click("#token-form button")
        page.wait_for_function(
            "() => document.querySelector('#token-state').textContent.includes('wrong')"
        )
        row.locator("button.danger").click()
        page.wait_for_function(
            "() => document.querySelector('#toast').textContent.includes('refused')"
        )
        time.sleep(0.5)
        assert engine.get(job.id).status == "running"
        assert not engine.get(job.id).cancel_requested

        # With the right token, cancel from the page cancels it.
        page.fill("#token", dash.token)
        page.click("#token-form button")
        page.wait_for_function("() => document.querySelector('#token-state').textContent === '✓'")
        row.locator("button.danger").click()
        assert job.wait(15).status == "cancelled"
        row.wait_for(state="detached", timeout=10_000)

        # The history shows it, and its detail opens with payload and status.
        page.select_option("#f-status", "cancelled")
        hist = page.locator(f'#history tr[data-id="{job.id}"]')
        hist.wait_for(timeout=10_000)
        hist.click()
        page.wait_for_selector("#detail[open]")
        page.wait_for_function(
            "() => document.querySelector('#d-payload').textContent.includes('intro')"
        )
        assert "cancelled" in page.locator("#d-title").inner_text()
        assert errors == []
    finally:
        assert dash.stop(signal.SIGTERM) == 0


def test_enqueue_from_the_page_runs_in_the_python_worker(browser, make_engine, db_path):
    engine = make_engine(workers=1)

    @engine.processor("greet")
    def greet(ctx, payload):
        return f"hello {payload['name']}"

    engine.start()
    engine.enqueue("greet", {"name": "warm-up"}).wait(10)
    dash = DashboardProcess(db_path)
    try:
        page = browser.new_page()
        page.goto(f"{dash.url}/#token={dash.token}")
        page.wait_for_selector("body[data-ready]")
        page.select_option("#e-type", "greet")
        page.fill("#e-payload", '{"name": "browser"}')
        page.click("#enqueue button[type=submit]")
        page.wait_for_function(
            "() => document.querySelector('#enqueue-state').textContent.startsWith('enqueued')"
        )
        job_id = page.locator("#enqueue-state").inner_text().split()[1]
        jobs = [j for j in engine.jobs(type="greet") if j.id == job_id]
        assert len(jobs) == 1
        assert jobs[0].wait(10).result == "hello browser"
    finally:
        assert dash.stop(signal.SIGTERM) == 0


def test_schedules_panel_lists_schedules_and_their_fires(browser, make_engine, db_path):
    engine = make_engine(workers=1, poll_interval=0.05)
    engine.schedule("nightly-report", "30 6 * * mon-fri", "noop", {"report": True},
                    timezone="+02:00", misfire="skip")  # fmt: skip
    engine.start()
    engine.enqueue("noop", {"warm": True}).wait(10)
    dash = DashboardProcess(db_path)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{dash.url}/#token={dash.token}")
        page.wait_for_selector("body[data-ready]")
        row = page.locator('#schedules tr[data-name="nightly-report"]')
        row.wait_for(timeout=10_000)
        cells = [c.inner_text() for c in row.locator("td").all()]
        assert cells[0:3] == ["nightly-report", "30 6 * * mon-fri", "noop"]
        assert "(in " in cells[3] and cells[4] == "never"
        assert cells[5:] == ["+02:00", "skip"]
        assert page.locator("#schedules-empty").is_hidden()

        # A schedule added while the page is open appears, and its fires show as last fire.
        engine.schedule("heartbeat", "@every 1s", "noop", {"beat": True})
        beat = page.locator('#schedules tr[data-name="heartbeat"]')
        beat.wait_for(timeout=15_000)
        page.wait_for_function(
            """() => {
                const tr = document.querySelector('#schedules tr[data-name="heartbeat"]');
                return tr && tr.children[4].textContent.includes("ago");
            }""",
            timeout=20_000,
        )
        assert engine.jobs(type="noop", limit=1000)
        assert errors == []
    finally:
        assert dash.stop(signal.SIGTERM) == 0


def test_page_on_a_non_loopback_address_reads_with_the_token(browser, make_engine, db_path):
    engine = make_engine(workers=1)
    engine.start()
    done = engine.enqueue("noop", {"warm": True}).wait(10)
    dash = DashboardProcess(db_path, "--host", "0.0.0.0", "--allowed-host", "127.0.0.1")
    try:
        port = dash.url.rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: "Content Security Policy" in msg.text
                and errors.append(msg.text))  # fmt: skip
        # Without the token the page loads but reads nothing; with it everything is there.
        page.goto(url + "/")
        page.wait_for_function("() => document.querySelector('#toast').textContent.length > 0")
        assert page.locator("body[data-ready]").count() == 0
        page.fill("#token", dash.token)
        page.click("#token-form button")
        page.wait_for_selector("body[data-ready]", timeout=20_000)
        page.wait_for_selector("#live.on", timeout=20_000)  # the live feed takes ?token=
        page.locator(f'#history tr[data-id="{done.id}"]').wait_for(timeout=10_000)
        assert errors == []
    finally:
        assert dash.stop(signal.SIGTERM) == 0
