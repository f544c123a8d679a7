"""The dashboard's HTTP API and live feed, served by uvicorn on a real socket, over a real SQLite
file: the token guards every action, history pages by keyset, the SSE feed carries progress of
this process's jobs and of other processes' jobs, and the observer claims nothing."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from dashboard_helpers import TOKEN, DashboardProcess, EventStream, request  # noqa: E402

from jobforge.dashboard import serve  # noqa: E402
from jobforge.dashboard.queries import StoreQueries  # noqa: E402


@pytest.fixture
def served(make_engine):
    """An engine with a `steps` processor, started, and its dashboard on a free port."""
    engine = make_engine(workers=2)
    release = threading.Event()

    @engine.processor("steps", max_attempts=1)
    def steps(ctx, payload):
        n = payload.get("n", 10)
        for i in range(n):
            if ctx.cancelled:
                return None
            ctx.progress(i + 1, total=n, message=f"step {i + 1} of {n}")
            time.sleep(payload.get("sleep", 0.02))
        if payload.get("hold"):
            release.wait(30)
        if payload.get("fail"):
            raise ValueError("asked to fail")
        return {"done": n}

    engine.start()
    server = serve(engine, port=0, block=False, token=TOKEN, poll_interval=0.1)
    server.release = release
    yield engine, server, server.url.rstrip("/")
    release.set()
    server.stop()


# -- the token ------------------------------------------------------------------------------------


def test_actions_without_or_with_a_wrong_token_are_refused_and_change_nothing(served):
    engine, server, url = served
    queued = engine.enqueue("steps", {"n": 1}, delay=3600)
    failed = engine.enqueue("steps", {"n": 1, "fail": True}).wait(10)
    assert failed.status == "failed"
    before = engine.counts()
    actions = [
        ("POST", f"/api/jobs/{queued.id}/cancel", None),
        ("POST", f"/api/jobs/{failed.id}/retry", None),
        ("POST", "/api/cancel-all", None),
        ("POST", "/api/jobs", {"type": "steps", "payload": {"n": 1}}),
    ]
    for method, path, body in actions:
        status, data = request(url + path, method, body)
        assert status == 401, (path, status, data)
        assert "token" in data["error"]
        status, data = request(url + path, method, body, token="wrong-token-123456")
        assert status == 403, (path, status, data)
        assert data == {"error": "wrong dashboard token"}
    assert engine.get(queued.id).status == "queued"
    assert engine.get(failed.id).status == "failed"
    assert engine.counts() == before
    assert request(url + "/api/auth", "POST", token="wrong-token-123456")[0] == 403
    assert request(url + "/api/auth", "POST", token=TOKEN) == (200, {"ok": True})


def test_cancel_retry_and_cancel_all_with_the_token(served):
    engine, server, url = served
    running = engine.enqueue("steps", {"n": 1000, "sleep": 0.01})
    queued = engine.enqueue("steps", {"n": 1000, "sleep": 0.01}, delay=3600)
    status, data = request(url + f"/api/jobs/{queued.id}/cancel", "POST", token=TOKEN)
    assert (status, data["status"]) == (200, "cancelled")
    status, data = request(url + f"/api/jobs/{queued.id}/cancel", "POST", token=TOKEN)
    assert status == 409 and "already cancelled" in data["error"]
    status, data = request(url + f"/api/jobs/{queued.id}/retry", "POST", token=TOKEN)
    # Retried means due now: a free worker may already have picked it up.
    assert status == 200 and (data["status"], data["attempts"]) in (("queued", 0), ("running", 1))
    status, data = request(url + f"/api/jobs/{queued.id}/retry", "POST", token=TOKEN)
    assert status == 409 and "only failed, cancelled or timeout" in data["error"]
    assert request(url + "/api/jobs/no-such-id/cancel", "POST", token=TOKEN)[0] == 404
    status, data = request(url + "/api/cancel-all", "POST", token=TOKEN)
    assert status == 200 and data["cancelled"] == 2
    assert running.wait(10).status == "cancelled"
    assert engine.wait(queued.id, 10).status == "cancelled"  # retried, so queued or running


def test_enqueue_through_the_api_validates_and_writes_nothing_on_bad_input(served):
    engine, server, url = served
    before = engine.counts()["total"]
    bad = [
        ({"type": "nope", "payload": {}}, "type 'nope' is not registered"),
        ({"type": "steps", "priority": 0}, "priority must be between 1 and 10"),
        ({"type": "steps", "delay": -1}, "delay"),
        ({"type": "steps", "colour": "red"}, "unknown field(s): colour"),
        ({"payload": {}}, "type must be a non-empty string"),
        (["steps"], "JSON object"),
    ]
    for body, fragment in bad:
        status, data = request(url + "/api/jobs", "POST", body, token=TOKEN)
        assert status == 400, (body, status, data)
        assert fragment in data["error"], (fragment, data)
    req = urllib.request.Request(
        url + "/api/jobs", data=b"{not json", method="POST",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 400
    assert engine.counts()["total"] == before
    status, data = request(
        url + "/api/jobs", "POST", {"type": "steps", "payload": {"n": 2}, "priority": 3},
        token=TOKEN,
    )  # fmt: skip
    assert status == 201 and data["priority"] == 3 and data["payload"] == {"n": 2}
    assert engine.wait(data["id"], 10).result == {"done": 2}


# -- reads ----------------------------------------------------------------------------------------


def test_job_detail_has_payload_result_error_and_traceback(served):
    engine, server, url = served
    good = engine.enqueue("steps", {"n": 3}).wait(10)
    bad = engine.enqueue("steps", {"n": 1, "fail": True}).wait(10)
    status, data = request(url + f"/api/jobs/{good.id}")
    assert status == 200
    assert data["payload"] == {"n": 3} and data["result"] == {"done": 3}
    assert data["progress"] == 100 and data["status"] == "completed"
    status, data = request(url + f"/api/jobs/{bad.id}")
    assert data["status"] == "failed" and "asked to fail" in data["error"]
    assert "Traceback" in data["error_detail"] and "ValueError" in data["error_detail"]
    assert data["attempts"] == 1
    assert request(url + "/api/jobs/nope")[0] == 404


def test_history_pages_by_keyset_cover_every_job_once_newest_first(served):
    engine, server, url = served
    ids = [j.id for j in engine.enqueue_many("steps", [{"i": i} for i in range(130)], delay=3600)]
    ids += [j.id for j in engine.enqueue_many("noop", [{"i": i} for i in range(70)], delay=3600)]
    seen, cursor, pages = [], "", 0
    while True:
        status, page = request(url + f"/api/jobs?limit=30&cursor={cursor}")
        assert status == 200
        pages += 1
        seen += [j["id"] for j in page["jobs"]]
        if pages == 2:  # new jobs arriving meanwhile do not shift the pages that follow
            engine.enqueue_many("noop", [{}] * 10, delay=3600)
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    assert pages == 7
    # filters
    status, page = request(url + "/api/jobs?type=noop&limit=500")
    assert len(page["jobs"]) == 80 and {j["type"] for j in page["jobs"]} == {"noop"}
    status, page = request(url + "/api/jobs?status=queued&type=steps&limit=500")
    assert [j["id"] for j in page["jobs"]] == list(reversed(ids[:130]))
    # bad parameters
    assert request(url + "/api/jobs?status=lost")[0] == 400
    assert request(url + "/api/jobs?limit=0")[0] == 400
    assert request(url + "/api/jobs?limit=x")[0] == 400
    status, data = request(url + "/api/jobs?cursor=abc")
    assert status == 400 and "cursor" in data["error"]


def test_text_search_matches_id_prefix_message_error_and_payload(served):
    engine, server, url = served
    jobs = engine.enqueue_many("steps", [{"name": f"item-{i}"} for i in range(20)], delay=3600)
    failed = engine.enqueue("steps", {"n": 1, "fail": True}).wait(10)
    status, page = request(url + "/api/jobs?q=item-17")
    assert [j["id"] for j in page["jobs"]] == [jobs[17].id]
    status, page = request(url + f"/api/jobs?q={jobs[3].id[:30]}")
    assert jobs[3].id in [j["id"] for j in page["jobs"]]
    status, page = request(url + "/api/jobs?q=asked+to+fail")
    assert [j["id"] for j in page["jobs"]] == [failed.id]
    status, page = request(url + "/api/jobs?q=100%25")  # LIKE wildcards are literal
    assert page["jobs"] == []


def test_search_reads_a_bounded_window_and_continues_from_its_end(engine, db_path):
    target = engine.enqueue("noop", {"needle": True}, delay=3600)
    engine.enqueue_many("noop", [{"hay": i} for i in range(250)], delay=3600)
    queries = StoreQueries(db_path)
    cursor, looked = None, 0
    for _ in range(10):
        page = queries.page(search="needle", cursor=cursor, window=100, limit=10)
        if page.jobs:
            break
        assert page.searched == 100 and page.next_cursor
        looked += page.searched
        cursor = page.next_cursor
    assert [j["id"] for j in page.jobs] == [target.id]
    assert looked == 200
    queries.close()


def test_history_queries_use_the_stores_indexes(engine, db_path):
    engine.enqueue("noop", None)
    queries = StoreQueries(db_path)
    for filters, index in [
        ({}, "idx_jobs_created_at"),
        ({"status": "failed"}, "idx_jobs_status_created"),
        ({"type": "noop"}, "idx_jobs_type_created"),
    ]:
        plan = " | ".join(queries.plan(**filters))
        assert index in plan, (filters, plan)
        assert "TEMP B-TREE" not in plan, (filters, plan)
    queries.close()


def test_overview_workers_types_and_openapi(served):
    engine, server, url = served
    engine.enqueue("steps", {"n": 1}).wait(10)
    status, data = request(url + "/api/overview")
    assert data["stats"]["completed"] == 1 and data["engine_running"] is True
    status, data = request(url + "/api/workers")
    me = [w for w in data["workers"] if w["this_process"]]
    assert len(me) == 1 and me[0]["state"] == "running" and me[0]["heartbeat_age_s"] < 30
    assert me[0]["version"]
    status, data = request(url + "/api/types")
    assert {"steps", "noop", "sleep"} <= set(data["types"])
    status, spec = request(url + "/api/openapi.json")
    assert spec["openapi"].startswith("3.") and "/api/jobs/{job_id}/cancel" in spec["paths"]
    with urllib.request.urlopen(url + "/") as res:
        page = res.read().decode()
    assert "/static/app.js" in page and "http" not in page.replace("http-equiv", "")
    for asset in ("app.js", "style.css"):
        with urllib.request.urlopen(f"{url}/static/{asset}") as res:
            assert res.status == 200


def test_page_and_assets_load_nothing_from_other_hosts(served):
    _, _, url = served
    for path in ("/", "/static/app.js", "/static/style.css"):
        with urllib.request.urlopen(url + path) as res:
            text = res.read().decode()
        assert "//cdn" not in text and "https://" not in text, path


def test_requests_for_another_host_name_are_refused(served):
    _, _, url = served
    req = urllib.request.Request(url + "/api/overview", headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 400


def test_a_host_header_with_a_malformed_port_is_refused(served):
    """Only a numeric port may follow the host: 'localhost:80@attacker.example' names no
    loopback host (it was read as 'localhost')."""
    _, server, _ = served
    import http.client

    for host, status in [("localhost:80@attacker.example", 400), ("localhost:x", 400),
                         ("localhost:8765", 200), ("[::1]:8765", 200)]:  # fmt: skip
        con = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            con.putrequest("GET", "/api/overview", skip_host=True)
            con.putheader("Host", host)
            con.endheaders()
            assert con.getresponse().status == status, host
        finally:
            con.close()


# -- live feed ------------------------------------------------------------------------------------


def test_sse_carries_progress_and_the_final_state_of_this_processs_jobs(served):
    engine, server, url = served
    stream = EventStream(url)
    try:
        job = engine.enqueue("steps", {"n": 20, "sleep": 0.03})

        def progress_of(kind, data):
            return kind == "jobs" and any(u["id"] == job.id and 0 < u["progress"] < 100
                                          for u in data)  # fmt: skip

        stream.next_matching(progress_of)
        stream.next_matching(
            lambda kind, data: (
                kind == "jobs"
                and any(u["id"] == job.id and u["status"] == "completed" for u in data)
            )
        )
        kind, overview = stream.next_matching(lambda kind, data: kind == "overview")
        assert overview["stats"]["total"] >= 1
    finally:
        stream.close()


def test_observer_process_shows_another_processs_jobs_and_cancels_them(make_engine, db_path):
    worker = make_engine(workers=2)

    @worker.processor("slow", max_attempts=1)
    def slow(ctx, payload):
        for i in range(200):
            if ctx.cancelled:
                return None
            ctx.progress(i + 1, total=200, message=f"item {i + 1}")
            time.sleep(0.05)
        return "done"

    idle = worker.enqueue("slow", None, delay=3600)  # the file exists and has a queued job
    dash = DashboardProcess(db_path)
    try:
        assert dash.token == TOKEN
        url = dash.url
        # The observer claims nothing: a due job stays queued while only the dashboard runs.
        due = worker.enqueue("noop", None)
        time.sleep(1.0)
        assert worker.get(due.id).status == "queued"
        status, data = request(url + "/api/workers")
        assert [w for w in data["workers"] if w["state"] == "running"] == []

        worker.start()
        assert due.wait(10).status == "completed"
        job = worker.enqueue("slow", None)
        stream = EventStream(url)
        try:
            seen = []

            def active_with_progress(kind, data):
                if kind != "active":
                    return False
                for j in data:
                    if j["id"] == job.id and j["progress"] > 0:
                        seen.append(j["progress"])
                return len(set(seen)) >= 2  # the bar moved

            stream.next_matching(active_with_progress, timeout=30)
            assert seen == sorted(seen)
        finally:
            stream.close()
        status, data = request(url + f"/api/jobs/{job.id}/cancel", "POST", token="wrong-token")
        assert status == 403
        assert worker.get(job.id).status == "running"
        status, data = request(url + f"/api/jobs/{job.id}/cancel", "POST", token=dash.token)
        assert status == 200 and data["cancel_requested"] is True
        assert job.wait(15).status == "cancelled"
        assert worker.get(idle.id).status == "queued"
    finally:
        assert dash.stop(signal.SIGTERM) == 0
    out = json.dumps(dash.lines)
    assert "Traceback" not in out


def test_job_logs_in_the_detail_the_logs_endpoint_and_the_live_feed(served):
    engine, server, url = served

    @engine.processor("chatty")
    def chatty(ctx, payload):
        ctx.stage("load")
        for i in range(3):
            ctx.log("info", f"loaded part {i}", part=i)
        ctx.stage("check")
        ctx.log("warning", "part 2 is small", size=3)
        return None

    stream = EventStream(url)
    try:
        job = engine.enqueue("chatty", None).wait(10)
        kind, lines = stream.next_matching(
            lambda kind, data: kind == "logs" and any(line["job_id"] == job.id for line in data)
        )
        assert lines[0]["message"] == "loaded part 0" and lines[0]["context"] == {"part": 0}
    finally:
        stream.close()
    status, data = request(url + f"/api/jobs/{job.id}")
    logs = data["logs"]
    assert [line["message"] for line in logs] == [
        "loaded part 0", "loaded part 1", "loaded part 2", "part 2 is small",
    ]  # fmt: skip
    assert logs[3]["level"] == "warning" and logs[3]["stage"] == "check"
    assert logs[0]["stage"] == "load" and logs[0]["time"] > 0
    status, data = request(url + f"/api/jobs/{job.id}/logs?after={logs[1]['id']}")
    assert [line["message"] for line in data["logs"]] == ["loaded part 2", "part 2 is small"]
    assert request(url + f"/api/jobs/{job.id}/logs?after=x")[0] == 400
    assert request(url + "/api/jobs/nope/logs")[0] == 404


def test_health_and_per_type_figures(served):
    engine, server, url = served
    engine.enqueue("steps", {"n": 1}).wait(10)
    engine.enqueue("steps", {"n": 1, "fail": True}).wait(10)
    status, health = request(url + "/api/health")
    assert status == 200 and health["status"] in ("ok", "degraded", "failing")
    assert health["database"]["reachable"] is True
    status, overview = request(url + "/api/overview")
    steps = overview["types"]["steps"]
    assert steps["counts"]["completed"] == 1 and steps["counts"]["failed"] == 1


def test_engine_queries_page_by_offset_for_stores_that_are_not_a_sqlite_file(engine):
    from jobforge.dashboard.queries import EngineQueries, QueryError

    ids = [j.id for j in engine.enqueue_many("noop", [{"i": i} for i in range(25)], delay=3600)]
    queries = EngineQueries(engine)
    seen, cursor = [], None
    while True:
        page = queries.page(cursor=cursor, limit=10)
        seen += [j["id"] for j in page.jobs]
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == list(reversed(ids))
    with pytest.raises(QueryError, match="text search needs the SQLite store"):
        queries.page(search="x")
    with pytest.raises(QueryError, match="cursor"):
        queries.page(cursor="12.3")


# -- schedules and batches ------------------------------------------------------------------------


def test_schedules_api_lists_every_field_with_times_in_ms(served):
    engine, server, url = served
    status, data = request(url + "/api/schedules")
    assert status == 200 and data["schedules"] == []
    engine.schedule("nightly", "0 2 * * *", "steps", {"n": 1}, priority=9, timezone="+02:00",
                    misfire="skip")  # fmt: skip
    engine.schedule("often", "@every 1s", "steps", {"n": 1})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, data = request(url + "/api/schedules")
        often = [s for s in data["schedules"] if s["name"] == "often"][0]
        if often["last_fire_at"]:
            break
        time.sleep(0.2)
    nightly = [s for s in data["schedules"] if s["name"] == "nightly"][0]
    assert nightly == {
        "name": "nightly", "cron": "0 2 * * *", "type": "steps", "payload": {"n": 1},
        "priority": 9, "queue": "default", "timezone": "+02:00", "misfire": "skip",
        "next_fire_at": nightly["next_fire_at"], "last_fire_at": None, "last_job_id": None,
    }  # fmt: skip
    assert nightly["next_fire_at"] % 86_400_000 == 0 and nightly["next_fire_at"] > data["time"]
    assert often["last_fire_at"] and often["last_fire_at"] <= data["time"] + 1000
    assert engine.get(often["last_job_id"]).type == "steps"
    assert often["timezone"] == "UTC" and often["misfire"] == "run_once"


def test_job_detail_counts_every_child_of_a_big_batch(served):
    engine, server, url = served
    children = [("steps", {"n": i}, {"delay": 3600}) for i in range(1200)]
    parent = engine.enqueue_batch("big_batch", children)
    engine.cancel(engine.jobs(parent=parent.id, limit=1)[0].id)
    status, data = request(f"{url}/api/jobs/{parent.id}")
    assert status == 200
    assert data["children"] == {"count": 1200, "by_status": {"queued": 1199, "cancelled": 1}}


# -- safe at its edges ----------------------------------------------------------------------------


def _serve_app(app):
    """A create_app() app served by uvicorn on a real socket (port 0), on a thread."""
    import socket

    import uvicorn

    from jobforge.dashboard import DashboardServer

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False,
                            timeout_graceful_shutdown=1)  # fmt: skip
    return DashboardServer(app.state.dashboard, uvicorn.Server(config), sock, False).start()


def _get(url: str, path: str, *, host: str | None = None, token: str | None = None,
         source: str | None = None):  # fmt: skip
    """(status, headers, JSON or text) of a GET on a real socket, with the Host header and the
    client's source address chosen by the test."""
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    con = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=30,
        source_address=(source, 0) if source else None,
    )  # fmt: skip
    try:
        headers = {"Host": host or parts.netloc}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        con.request("GET", path, headers=headers)
        res = con.getresponse()
        raw = res.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        return res.status, res.headers, body
    finally:
        con.close()


def test_live_feeds_past_the_limit_get_503_and_jobs_keep_running(make_engine):
    engine = make_engine(workers=1)
    engine.start()
    with serve(engine, port=0, block=False, token=TOKEN, max_sse_clients=3) as server:
        url = server.url.rstrip("/")
        streams = [EventStream(url) for _ in range(3)]
        try:
            for _ in range(5):
                status, headers, data = _get(url, "/api/events")
                assert status == 503, (status, data)
                assert "at most 3" in data["error"] and headers["Retry-After"]
                assert headers["Connection"] == "close"  # the refused socket is not kept
            # The process is unharmed: jobs run, other requests are served.
            assert engine.enqueue("noop", None).wait(10).status == "completed"
            assert request(url + "/api/overview")[0] == 200
            streams.pop().close()  # a slot comes back when a feed ends
            deadline = time.monotonic() + 10
            while server.dashboard.hub.clients >= 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            streams.append(EventStream(url))
            streams[-1].next_matching(lambda kind, data: kind == "overview")
        finally:
            for stream in streams:
                stream.close()


def test_create_app_refuses_a_foreign_host_and_takes_allowed_hosts(engine):
    from jobforge.dashboard import create_app

    server = _serve_app(create_app(engine, token=TOKEN))
    try:
        url = server.url.rstrip("/")
        status, _, data = _get(url, "/api/overview", host="attacker.example")
        assert status == 400 and "attacker.example" in data["error"]
        assert _get(url, "/api/overview", host=f"localhost:{server.port}")[0] == 200
        assert _get(url, "/api/overview")[0] == 200
    finally:
        server.stop()
    from jobforge import ValidationError

    for bad in ([], "jobs.example.com", [""], [3]):
        with pytest.raises(ValidationError) as err:
            create_app(engine, token=TOKEN, allowed_hosts=bad)
        assert err.value.field == "allowed_hosts"
    # Another host name means requests from elsewhere: reads then need the token by default.
    assert create_app(engine, allowed_hosts=["localhost"]).state.dashboard.token_for_reads is False
    server = _serve_app(create_app(engine, token=TOKEN, allowed_hosts=["jobs.example.com"]))
    try:
        url = server.url.rstrip("/")
        assert _get(url, "/api/overview")[0] == 400  # 127.0.0.1 was not named
        assert _get(url, "/api/overview", host="jobs.example.com")[0] == 401
        assert _get(url, "/api/overview", host="jobs.example.com", token=TOKEN)[0] == 200
    finally:
        server.stop()
    # The same on a loopback bind behind a reverse proxy that forwards another host name.
    with serve(engine, port=0, block=False, token=TOKEN, allowed_hosts=["dash.example.com"]) as s:
        url = s.url.rstrip("/")
        assert _get(url, "/api/jobs", host="dash.example.com")[0] == 401
        assert _get(url, "/api/jobs", host="dash.example.com", token=TOKEN)[0] == 200


def test_a_non_loopback_bind_needs_allowed_hosts_and_the_token_for_reads(make_engine):
    from jobforge import ValidationError

    engine = make_engine()
    with pytest.raises(ValidationError, match="allowed_hosts") as err:
        serve(engine, host="0.0.0.0", port=0, block=False)
    assert err.value.field == "allowed_hosts"
    job = engine.enqueue("noop", {"secret": "s3"}, delay=3600)
    with serve(engine, host="0.0.0.0", port=0, block=False, token=TOKEN,
               allowed_hosts=["127.0.0.1"]) as server:  # fmt: skip
        url = f"http://127.0.0.1:{server.port}"
        for path in ("/api/overview", "/api/jobs", f"/api/jobs/{job.id}", "/api/events",
                     "/api/workers", "/api/openapi.json"):  # fmt: skip
            status, _, data = _get(url, path)
            assert status == 401 and "token" in data["error"], (path, status, data)
            assert _get(url, path, token="wrong-token-0123456789")[0] == 403
        status, _, data = _get(url, f"/api/jobs/{job.id}", token=TOKEN)
        assert status == 200 and data["payload"] == {"secret": "s3"}
        assert _get(url, "/", host="evil.example")[0] == 400
        assert _get(url, "/")[0] == 200  # the page itself holds no data; it asks for the token
        with urllib.request.urlopen(f"{url}/api/events?token={TOKEN}", timeout=10) as res:
            assert res.status == 200


def test_a_token_shorter_than_16_characters_is_refused(engine):
    from jobforge import ValidationError
    from jobforge.dashboard import Dashboard, create_app

    for make in (Dashboard, create_app):
        with pytest.raises(ValidationError, match="at least 16 characters, got 15") as err:
            make(engine, token="x" * 15)
        assert err.value.field == "token"
    assert Dashboard(engine, token="x" * 16).token == "x" * 16
    with pytest.raises(ValidationError):
        serve(engine, port=0, block=False, token="fifteen-chars!!")


def test_wrong_tokens_are_throttled_per_client_address(served):
    from jobforge.dashboard.app import AUTH_FAILURES

    engine, server, url = served
    path = "/api/auth"

    def post(token, source):
        import http.client

        con = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30,
                                         source_address=(source, 0))  # fmt: skip
        try:
            con.request("POST", path, headers={"Authorization": f"Bearer {token}"})
            res = con.getresponse()
            return res.status, res.headers, json.loads(res.read())
        finally:
            con.close()

    for _ in range(3 * AUTH_FAILURES):  # the same wrong token again is not a new guess
        assert post("wrong-token-0123456789", "127.0.0.1")[0] == 403
    for i in range(AUTH_FAILURES - 1):
        assert post(f"wrong-token-{i:010d}", "127.0.0.1")[0] == 403
    status, headers, data = post("wrong-token-9999999999", "127.0.0.1")
    assert status == 429 and 0 < int(headers["Retry-After"]) <= 60, (status, data)
    # While throttled even the right token is refused from that address (no oracle)...
    assert post(TOKEN, "127.0.0.1")[0] == 429
    job = engine.enqueue("steps", {"n": 1}, delay=3600)
    status, _, data = request_from(server.port, f"/api/jobs/{job.id}/cancel", "127.0.0.1")
    assert status == 429 and engine.get(job.id).status == "queued"
    # ...and another address is not slowed at all: right token accepted, wrong one a plain 403.
    assert post(TOKEN, "127.0.0.2")[:1] == (200,)
    assert post("wrong-token-0123456789", "127.0.0.2")[0] == 403
    assert request_from(server.port, f"/api/jobs/{job.id}/cancel", "127.0.0.2")[0] == 200
    # Reads never needed the token on loopback: they are not throttled.
    assert request(url + "/api/overview")[0] == 200


def test_throttle_does_not_trust_x_forwarded_for(served):
    """A client that names a new address in X-Forwarded-For for every guess is still one
    address: the server's peer address counts, not a header the client writes."""
    import http.client

    from jobforge.dashboard.app import AUTH_FAILURES

    engine, server, url = served
    statuses = []
    for i in range(AUTH_FAILURES + 2):
        con = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            con.request("POST", "/api/auth", headers={
                "Authorization": f"Bearer wrong-token-{i:010d}",
                "X-Forwarded-For": f"10.0.0.{i + 1}", "Forwarded": f"for=10.0.0.{i + 1}",
            })  # fmt: skip
            statuses.append(con.getresponse().status)
        finally:
            con.close()
    assert statuses[:AUTH_FAILURES] == [403] * AUTH_FAILURES, statuses
    assert statuses[AUTH_FAILURES:] == [429, 429], statuses


def request_from(port, path, source):
    import http.client

    con = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        con.request("POST", path, headers={"Authorization": f"Bearer {TOKEN}"})
        res = con.getresponse()
        return res.status, res.headers, json.loads(res.read())
    finally:
        con.close()


def test_every_answer_carries_the_security_headers(served):
    _, server, url = served
    for path, host in [("/", None), ("/static/app.js", None), ("/api/overview", None),
                       ("/api/jobs/nope", None), ("/api/overview", "evil.example")]:  # fmt: skip
        status, headers, _ = _get(url, path, host=host)
        csp = headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, (path, csp)
        assert "unsafe-inline" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["X-Frame-Options"] == "DENY", path


def test_history_works_with_percent_signs_in_the_database_path(tmp_path):
    import jobforge

    folder = tmp_path / "100%25 done%"
    folder.mkdir()
    engine = jobforge.Engine(str(folder / "jobs%41.db"))
    try:
        job = engine.enqueue("noop", {"find": "me"}, delay=3600)
        with serve(engine, port=0, block=False, token=TOKEN) as server:
            url = server.url.rstrip("/")
            status, page = request(url + "/api/jobs")
            assert status == 200, page
            assert [j["id"] for j in page["jobs"]] == [job.id]
            status, page = request(url + "/api/jobs?q=me")
            assert status == 200 and [j["id"] for j in page["jobs"]] == [job.id]
    finally:
        engine.close()


def test_out_of_range_numbers_in_query_parameters_are_400_naming_the_parameter(served):
    engine, server, url = served
    job = engine.enqueue("steps", {"n": 1}, delay=3600)
    huge = "99999999999999999999"
    for path, name in [
        (f"/api/jobs?cursor={huge}.1", "cursor"),
        (f"/api/jobs?cursor=1.{huge}", "cursor"),
        ("/api/jobs?cursor=-1.5", "cursor"),
        (f"/api/jobs?cursor=o:{huge}", "cursor"),
        (f"/api/jobs?limit={huge}", "limit"),
        (f"/api/jobs/{job.id}/logs?after={huge}", "after"),
        (f"/api/jobs/{job.id}/logs?after=-1", "after"),
    ]:
        status, data = request(url + path)
        assert status == 400, (path, status, data)
        assert name in data["error"], (path, data)
    for field, value in [("priority", int(huge)), ("max_attempts", int(huge)),
                         ("delay", 1e300), ("timeout", 1e300)]:  # fmt: skip
        status, data = request(url + "/api/jobs", "POST", {"type": "steps", field: value},
                               token=TOKEN)  # fmt: skip
        assert status == 400 and field in data["error"], (field, status, data)
        assert "incompatible" not in data["error"]
    from jobforge import _core

    before = engine.counts()["total"]
    big = {"type": "steps", "payload": "x" * (_core.MAX_PAYLOAD_BYTES + 65536)}
    status, data = request(url + "/api/jobs", "POST", big, token=TOKEN)
    assert status == 413 and "more than" in data["error"]
    assert engine.counts()["total"] == before
    from jobforge.dashboard.queries import EngineQueries, QueryError

    with pytest.raises(QueryError, match="cursor"):
        EngineQueries(engine).page(cursor=f"o:{huge}")
