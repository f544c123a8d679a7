"""A Python processor that ignores ctx.cancelled is interrupted; singleton workers."""

from __future__ import annotations

import time

import pytest

import jobforge


def test_a_processor_ignoring_its_timeout_is_interrupted_after_the_grace(make_engine):
    engine = make_engine(workers=1, interrupt_grace=0.2)
    seen = {}

    @engine.processor("stubborn", timeout=0.3)
    def stubborn(ctx, payload):
        try:
            while True:  # pure Python: never looks at ctx.cancelled
                pass
        except jobforge.JobCancelled:
            seen["interrupted"] = True
            raise

    @engine.processor("next")
    def next_job(ctx, payload):
        return "ran"

    engine.start()
    begin = time.monotonic()
    job = engine.enqueue("stubborn", {}).wait(timeout=20)
    took = time.monotonic() - begin
    assert job.status == "timeout"
    assert seen == {"interrupted": True}
    assert took >= 0.5  # timeout 0.3 s + grace 0.2 s
    # The worker thread is healthy: the interruption does not leak into the next job.
    assert engine.enqueue("next", {}).wait(timeout=20).result == "ran"


def test_a_cancelled_processor_that_ignores_it_is_interrupted(make_engine, wait_until):
    engine = make_engine(workers=1, interrupt_grace=0.1)
    started = []

    @engine.processor("busy")
    def busy(ctx, payload):
        started.append(True)
        while True:
            pass

    engine.start()
    job = engine.enqueue("busy", {})
    wait_until(lambda: started, what="processor started")
    assert engine.cancel(job.id)
    assert job.wait(timeout=20).status == "cancelled"


def test_a_processor_that_catches_the_interruption_still_ends_timeout(make_engine):
    engine = make_engine(workers=1, interrupt_grace=0.1)

    @engine.processor("swallow", timeout=0.2)
    def swallow(ctx, payload):
        try:
            while True:
                pass
        except jobforge.JobCancelled:
            return "pretending all is well"

    engine.start()
    job = engine.enqueue("swallow", {}).wait(timeout=20)
    assert job.status == "timeout"
    assert job.result is None


def test_a_second_singleton_engine_is_refused_until_the_first_stops(db_path, make_engine):
    first = make_engine(singleton=True)
    second = make_engine(singleton=True)
    first.start()
    with pytest.raises(jobforge.SingletonError, match="singleton role 'default' is already held"):
        second.start()
    assert not second.running
    other_role = make_engine(singleton="reports")
    other_role.start()  # another role is free
    first.stop()
    second.start()
    assert second.running


def test_a_dead_singleton_does_not_keep_its_role(tmp_path, spawn_child, make_engine):
    db = tmp_path / "jobs.db"
    child = spawn_child(
        f"""
import jobforge, time
engine = jobforge.Engine({str(db)!r}, singleton=True)
engine.start()
print("STARTED", flush=True)
time.sleep(60)
"""
    )
    child.read_until("STARTED")
    child.kill()
    engine = make_engine(path=db, singleton=True)
    engine.start()
    assert engine.running


def test_singleton_must_be_a_bool_or_a_role_name(db_path):
    with pytest.raises(ValueError, match="singleton"):
        jobforge.Engine(db_path, singleton="")
