"""jobforge.notebook outside a kernel: the bars and the monitor are real ipywidgets / tqdm objects
updated by their background threads while real jobs run."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("tqdm")

from jobforge.notebook import MAX_BARS, progress  # noqa: E402


@pytest.fixture
def running(engine):
    release = threading.Event()

    @engine.processor("steps", max_attempts=1)
    def steps(ctx, payload):
        n = payload.get("n", 10)
        for i in range(n):
            if ctx.cancelled:
                return None
            ctx.progress(i + 1, total=n, message=f"step {i + 1}")
            time.sleep(payload.get("sleep", 0.02))
            if payload.get("hold") and i == n // 2:
                release.wait(30)
        if payload.get("fail"):
            raise ValueError("asked to fail")
        return n

    engine.start()
    yield engine, release
    release.set()


def test_widget_bar_follows_a_job_to_completed(running):
    engine, release = running
    job = engine.enqueue("steps", {"n": 10, "hold": True})
    bars = job.display()
    assert bars.kind == "widgets"
    deadline = time.monotonic() + 10
    while bars.bars[0].value < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0 < bars.bars[0].value < 100  # held half way: a live, partial bar
    assert "step" in bars.texts[0].value and "/ 10" in bars.texts[0].value
    release.set()
    assert bars.wait(10)
    assert bars.bars[0].value == 100
    assert bars.bars[0].bar_style == "success"
    assert bars.texts[0].value.startswith("completed")


def test_failed_job_shows_its_error_in_red(running):
    engine, _ = running
    bars = progress(engine.enqueue("steps", {"n": 2, "fail": True}))
    assert bars.wait(10)
    assert bars.bars[0].bar_style == "danger"
    assert "failed" in bars.texts[0].value and "asked to fail" in bars.texts[0].value


def test_tqdm_fallback(running):
    engine, _ = running
    bars = progress(engine.enqueue("steps", {"n": 5}), widgets=False)
    assert bars.kind == "tqdm"
    assert bars.wait(10)
    assert bars.bars[0].n == 100
    assert "completed" in bars.bars[0].postfix


def test_many_jobs_share_one_bar(running):
    engine, _ = running
    jobs = engine.enqueue_many("steps", [{"n": 1, "sleep": 0}] * (MAX_BARS + 5))
    bars = progress(jobs)
    assert bars.group and len(bars.bars) == 1
    assert bars.wait(20)
    assert bars.bars[0].value == 100
    assert f"{MAX_BARS + 5} completed" in bars.texts[0].value


def test_progress_refuses_bad_input(running):
    engine, _ = running
    with pytest.raises(ValueError, match="at least one job"):
        progress([])
    with pytest.raises(TypeError, match="jobforge.Job"):
        progress(["not a job"])
    with pytest.raises(ValueError, match="interval"):
        progress(engine.enqueue("steps", {"n": 1}), interval=0)


def test_monitor_updates_in_the_background_and_stops(running):
    engine, release = running
    held = engine.enqueue("steps", {"n": 10, "hold": True})
    engine.enqueue("steps", {"n": 1, "fail": True}).wait(10)
    monitor = engine.monitor(interval=0.05)
    try:
        deadline = time.monotonic() + 10
        while (held.id[-12:] not in monitor.widget.value or monitor.updates < 2) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        text = monitor.widget.value
        assert held.id[-12:] in text  # the running job, with its bar
        assert "asked to fail" in text  # the recent failure
        assert monitor.running and monitor.updates >= 2
    finally:
        release.set()
        monitor.stop()
    assert not monitor.running
    assert "stopped" in monitor.widget.value
    count = monitor.updates
    time.sleep(0.2)
    assert monitor.updates == count
