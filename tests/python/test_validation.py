"""Bad input: a specific exception whose message names the field and the value, and nothing written.
Unknown ids are answered (False / None), not raised."""

import math
import random
import uuid

import pytest

import jobforge


def _assert_nothing_written(engine):
    assert engine.stats()["total"] == 0
    assert engine.jobs() == []


def test_error_types_form_the_documented_hierarchy():
    assert issubclass(jobforge.StoreError, jobforge.JobforgeError)
    assert issubclass(jobforge.UnknownJobType, jobforge.JobforgeError)
    assert issubclass(jobforge.UnknownJobType, ValueError)
    assert issubclass(jobforge.JobCancelled, jobforge.JobforgeError)
    assert issubclass(jobforge.InvalidTransition, jobforge.JobforgeError)
    assert issubclass(jobforge.JobforgeError, Exception)


def test_unknown_job_type_raises_unknown_job_type_naming_the_type(engine):
    with pytest.raises(jobforge.UnknownJobType) as caught:
        engine.enqueue("no-such-type", {"x": 1})

    assert isinstance(caught.value, ValueError)
    assert "no-such-type" in str(caught.value)
    _assert_nothing_written(engine)


def test_unknown_job_type_in_enqueue_many_raises_and_writes_nothing(engine):
    with pytest.raises(jobforge.UnknownJobType, match="no-such-type"):
        engine.enqueue_many("no-such-type", [{"x": 1}, {"x": 2}])

    _assert_nothing_written(engine)


@pytest.mark.parametrize("priority", [0, 11, -1, 100])
def test_priority_outside_1_to_10_is_rejected_naming_field_and_value(engine, priority):
    with pytest.raises(ValueError) as caught:
        engine.enqueue("noop", {}, priority=priority)

    message = str(caught.value)
    assert "priority" in message
    assert str(priority) in message
    _assert_nothing_written(engine)


@pytest.mark.parametrize("priority", [1, 10])
def test_priority_bounds_1_and_10_are_accepted(engine, priority):
    assert engine.enqueue("noop", {}, priority=priority).priority == priority


@pytest.mark.parametrize("timeout", [0, -1, -0.5])
def test_timeout_that_is_not_positive_is_rejected_naming_field_and_value(engine, timeout):
    with pytest.raises(ValueError) as caught:
        engine.enqueue("noop", {}, timeout=timeout)

    message = str(caught.value)
    assert "timeout" in message
    assert any(text in message for text in (str(timeout), f"{timeout:g}"))
    _assert_nothing_written(engine)


@pytest.mark.parametrize("max_attempts", [0, -3])
def test_max_attempts_below_one_is_rejected_naming_field_and_value(engine, max_attempts):
    with pytest.raises(ValueError) as caught:
        engine.enqueue("noop", {}, max_attempts=max_attempts)

    message = str(caught.value)
    assert "max_attempts" in message
    assert str(max_attempts) in message
    _assert_nothing_written(engine)


def test_negative_delay_is_rejected_naming_field_and_value(engine):
    with pytest.raises(ValueError) as caught:
        engine.enqueue("noop", {}, delay=-1)

    assert "delay" in str(caught.value)
    assert "-1" in str(caught.value)
    _assert_nothing_written(engine)


def test_negative_retry_delay_is_rejected_naming_field_and_value(engine):
    with pytest.raises(ValueError) as caught:
        engine.enqueue("noop", {}, retry_delay=-1)

    assert "retry_delay" in str(caught.value)
    assert "-1" in str(caught.value)
    _assert_nothing_written(engine)


@pytest.mark.parametrize("option", ["priority", "max_attempts"])
def test_non_integer_count_option_is_rejected_naming_field_and_value(engine, option):
    with pytest.raises((TypeError, ValueError)) as caught:
        engine.enqueue("noop", {}, **{option: 2.5})

    assert option in str(caught.value)
    assert "2.5" in str(caught.value)
    _assert_nothing_written(engine)


def test_unknown_parent_job_id_is_rejected_naming_the_id(engine):
    missing = str(uuid.uuid4())

    with pytest.raises(ValueError) as caught:
        engine.enqueue("noop", {}, parent=missing)

    assert missing in str(caught.value)
    _assert_nothing_written(engine)


@pytest.mark.parametrize(
    ("option", "value"), [("workers", 0), ("workers", -2), ("retry_delay", -1)]
)
def test_bad_engine_option_is_rejected_naming_field_and_value(db_path, option, value):
    with pytest.raises(ValueError) as caught:
        jobforge.Engine(db_path, **{option: value})

    assert option in str(caught.value)
    assert str(value) in str(caught.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [("timeout", 0), ("max_attempts", 0), ("priority", 11), ("retry_delay", -1)],
)
def test_bad_processor_option_is_rejected_naming_field_and_value(engine, option, value):
    with pytest.raises(ValueError) as caught:

        @engine.processor("misconfigured", **{option: value})
        def misconfigured(ctx, payload):
            return None

    assert option in str(caught.value)
    assert str(value) in str(caught.value)


def test_payload_that_is_not_json_serialisable_raises_type_error_naming_the_key_path(engine):
    with pytest.raises(TypeError) as caught:
        engine.enqueue("noop", {"a": [1, object()]})

    assert 'payload["a"][1]' in str(caught.value)
    _assert_nothing_written(engine)


def test_payload_with_a_set_deep_inside_names_the_nested_key_path(engine):
    with pytest.raises(TypeError) as caught:
        engine.enqueue("noop", {"outer": {"inner": {1, 2}}})

    assert 'payload["outer"]["inner"]' in str(caught.value)
    _assert_nothing_written(engine)


@pytest.mark.parametrize("bad_number", [math.nan, math.inf, -math.inf])
def test_payload_with_nan_or_infinity_is_rejected(engine, bad_number):
    with pytest.raises((ValueError, TypeError)) as caught:
        engine.enqueue("noop", {"x": bad_number})

    assert "payload" in str(caught.value)
    _assert_nothing_written(engine)


@pytest.mark.parametrize("payload", [[1, 2, 3], 42, 2.5, "text", True, {"k": None}, []])
def test_json_serialisable_payload_of_any_json_type_is_accepted(engine, payload):
    job = engine.enqueue("noop", payload)

    assert job.payload == payload
    assert engine.get(job.id).payload == payload


def test_enqueue_many_with_one_bad_payload_writes_none_of_them(engine):
    payloads = [{"i": 0}, {"i": 1}, {"i": object()}, {"i": 3}]

    with pytest.raises(TypeError, match=r'payloads\[2\]\["i"\] is not JSON-serialisable'):
        engine.enqueue_many("noop", payloads)

    _assert_nothing_written(engine)


def test_enqueue_many_names_nan_and_takes_generators_and_non_ascii_text(engine):
    with pytest.raises(ValueError, match=r"payloads\[1\]\[0\] is not JSON-serialisable"):
        engine.enqueue_many("noop", [[1], [float("nan")]])
    _assert_nothing_written(engine)

    jobs = engine.enqueue_many("noop", ({"i": i, "s": "é😀"[: i % 3]} for i in range(5)))
    assert [engine.get(j.id).payload for j in jobs] == [
        {"i": i, "s": "é😀"[: i % 3]} for i in range(5)
    ]


def test_enqueue_many_with_bad_option_writes_nothing(engine):
    engine.enqueue("noop", {})

    with pytest.raises(ValueError, match="priority"):
        engine.enqueue_many("noop", [{"i": 0}, {"i": 1}], priority=0)

    assert engine.stats()["total"] == 1


def test_bad_input_after_good_jobs_leaves_the_good_jobs_untouched(engine):
    good = engine.enqueue("noop", {"keep": True})

    with pytest.raises(ValueError):
        engine.enqueue("noop", {}, priority=11)

    assert engine.stats()["total"] == 1
    assert [job.id for job in engine.jobs()] == [good.id]


def test_database_in_a_missing_folder_raises_a_jobforge_error_naming_the_path(tmp_path):
    missing_folder = tmp_path / "no" / "such" / "folder"
    path = str(missing_folder / "jobs.db")

    with pytest.raises(jobforge.JobforgeError) as caught:
        jobforge.Engine(path)

    assert str(missing_folder) in str(caught.value)
    assert not missing_folder.exists()


def test_file_that_is_not_sqlite_raises_store_error_and_is_left_unchanged(tmp_path):
    path = tmp_path / "not-a-database.db"
    garbage = random.Random(1234).getrandbits(8 * 8192).to_bytes(8192, "little")
    path.write_bytes(garbage)

    with pytest.raises(jobforge.StoreError):
        jobforge.Engine(str(path))

    assert path.read_bytes() == garbage


def test_get_of_unknown_id_returns_none(engine):
    assert engine.get(str(uuid.uuid4())) is None
    assert engine.get("not-a-job-id") is None


def test_cancel_and_retry_of_unknown_ids_return_false(engine):
    unknown = str(uuid.uuid4())

    assert engine.cancel(unknown) is False
    assert engine.retry(unknown) is False
    _assert_nothing_written(engine)
