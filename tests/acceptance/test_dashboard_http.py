"""The dashboard app over HTTP (Starlette's TestClient): pages, CSRF on actions, token and basic auth,
mounting under a prefix, pruning, cron pause/resume/delete, and the Prometheus endpoint."""

from __future__ import annotations

import base64
import re
import socket
import urllib.request
from typing import Any

import psycopg
import pytest

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Mount  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from anchor_py.dashboard import create_app  # noqa: E402
from anchor_py.metrics import WorkerMetrics, start_metrics_server  # noqa: E402
from tests.sql.factories import (  # noqa: E402
    claim,
    definition,
    enqueue,
    heartbeat,
    register,
    register_state_tasks,
    task,
    task_in_state,
)

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def tasks(db: Conn) -> dict[str, int]:
    register_state_tasks(db)
    return {state: task_in_state(db, state) for state in
            ("pending", "running", "succeeded", "failing", "failed", "hook_failed", "cancelled")}


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def test_pages_render_with_the_numbers_of_the_database(dsn: str, db: Conn, tasks: dict[str, int]) -> None:
    with TestClient(create_app(dsn)) as client:
        home = client.get("/")
        assert home.status_code == 200
        for state in ("pending", "failed", "hook_failed"):
            assert re.search(rf'data-state="{state}">\s*<div class="label">[^<]*</div>\s*'
                             rf'<div class="value" data-count="1">', home.text)
        assert 'id="throughput-chart"' in home.text
        # the rate and the count are of the same four tasks, all finished this minute
        rate = re.search(r'id="kpi-rate">([0-9.]+)<', home.text)
        assert rate and float(rate.group(1)) > 0
        assert re.search(r'<div class="v">4</div><div class="l">finished in the window</div>', home.text)

        listing = client.get("/tasks", params={"state": "failed"})
        assert listing.status_code == 200
        assert re.findall(r'<tr data-id="(\d+)"', listing.text) == [str(tasks["failed"])]

        detail = client.get(f"/tasks/{tasks['failed']}")
        assert detail.status_code == 200 and 'data-state="failed"' in detail.text
        assert "Held by" not in detail.text  # only a running task is held
        assert "Held by" in client.get(f"/tasks/{tasks['running']}").text
        assert client.get("/tasks/987654").status_code == 404
        assert client.get("/tasks/abc").status_code == 404
        assert client.get("/tasks", params={"state": "bogus"}).status_code == 400
        assert client.get("/tasks", params={"since": "soon"}).status_code == 400
        assert client.get("/cron").status_code == 200
        assert client.get("/prune").status_code == 200


def test_actions_need_the_session_csrf_token(dsn: str, db: Conn, tasks: dict[str, int]) -> None:
    failed = tasks["failed"]
    with TestClient(create_app(dsn)) as client:
        # no token, then a token that is not this session's: refused, task unchanged
        assert client.post(f"/tasks/{failed}/retry").status_code == 403
        assert client.post(f"/tasks/{failed}/retry", data={"csrf_token": "forged"}).status_code == 403
        assert task(db, failed)["state"] == "failed"

        token = csrf_of(client.get(f"/tasks/{failed}").text)
        assert client.cookies.get("anchor_csrf") == token
        done = client.post(f"/tasks/{failed}/retry", data={"csrf_token": token}, follow_redirects=False)
        assert done.status_code == 303 and done.headers["location"].startswith(f"/tasks/{failed}?msg=")
        assert task(db, failed)["state"] == "pending"

        # a refusal comes back as an error message on the task page
        refused = client.post(f"/tasks/{tasks['succeeded']}/retry", data={"csrf_token": token})
        assert refused.status_code == 200 and "only pending, failed, hook_failed or cancelled" in refused.text

        client.post(f"/tasks/{tasks['pending']}/cancel", data={"csrf_token": token})
        assert task(db, tasks["pending"])["state"] == "cancelled"
        client.post(f"/tasks/{tasks['hook_failed']}/retry-hook", data={"csrf_token": token})
        assert task(db, tasks["hook_failed"])["state"] == "failing"

    # another browser session (no cookie) cannot replay the token
    with TestClient(create_app(dsn)) as other:
        assert other.post(f"/tasks/{tasks['cancelled']}/retry", data={"csrf_token": token}).status_code == 403
    assert task(db, tasks["cancelled"])["state"] == "cancelled"


def test_token_guard(dsn: str, db: Conn) -> None:
    with TestClient(create_app(dsn, token="s3cret")) as client:
        assert client.get("/").status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.get("/", params={"token": "wrong"}).status_code == 401
        first = client.get("/tasks", params={"token": "s3cret", "state": "failed"}, follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/tasks?state=failed"
        assert client.get("/").status_code == 200  # the cookie now
    with TestClient(create_app(dsn, token="s3cret")) as api:
        assert api.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_basic_auth_guard(dsn: str, db: Conn) -> None:
    with TestClient(create_app(dsn, basic_auth="ops:pw")) as client:
        denied = client.get("/")
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Basic")
        good = base64.b64encode(b"ops:pw").decode()
        bad = base64.b64encode(b"ops:nope").decode()
        assert client.get("/", headers={"Authorization": f"Basic {bad}"}).status_code == 401
        assert client.get("/", headers={"Authorization": f"Basic {good}"}).status_code == 200


def test_mounted_inside_another_app_links_carry_the_prefix(dsn: str, db: Conn, tasks: dict[str, int]) -> None:
    host = Starlette(routes=[Mount("/ops/anchor", app=create_app(dsn))])
    with TestClient(host) as client:
        page = client.get("/ops/anchor/tasks")
        assert page.status_code == 200
        assert f'href="/ops/anchor/tasks/{tasks["failed"]}"' in page.text
        token = csrf_of(client.get(f"/ops/anchor/tasks/{tasks['failed']}").text)
        done = client.post(f"/ops/anchor/tasks/{tasks['failed']}/retry", data={"csrf_token": token},
                           follow_redirects=False)
        assert done.headers["location"].startswith(f"/ops/anchor/tasks/{tasks['failed']}?")
        assert task(db, tasks["failed"])["state"] == "pending"


def test_cron_pause_and_resume(dsn: str, db: Conn) -> None:
    register(db, definition("Nightly", cron={"expression": "0 0 2 * * *"}))
    with TestClient(create_app(dsn)) as client:
        token = csrf_of(client.get("/cron").text)
        client.post("/cron/Nightly/pause", data={"csrf_token": token})
        assert db.execute("select paused from anchor.cron_schedules").fetchone() == {"paused": True}
        assert 'data-paused="true"' in client.get("/cron").text
        client.post("/cron/Nightly/resume", data={"csrf_token": token})
        assert db.execute("select paused from anchor.cron_schedules").fetchone() == {"paused": False}
        assert "no cron schedule" in client.post("/cron/Missing/pause", data={"csrf_token": token}).text.lower()


def test_cron_page_shows_the_source_and_deletes_only_runtime_schedules(dsn: str, db: Conn) -> None:
    register(db, definition("Nightly", cron={"expression": "0 0 2 * * *"}), definition("Job"))
    db.execute("select anchor.cron_upsert('job:hourly', 'Job', '0 0 * * * *', '{\"n\": 1}')")
    with TestClient(create_app(dsn)) as client:
        page = client.get("/cron").text
        assert 'data-name="Nightly" data-source="yaml"' in page
        assert 'data-name="job:hourly" data-source="runtime"' in page
        assert page.count("/delete") == 1 and "/cron/job%3Ahourly/delete" in page
        token = csrf_of(page)
        refused = client.post("/cron/Nightly/delete", data={"csrf_token": token}).text
        assert "cannot be deleted" in refused
        client.post("/cron/job:hourly/delete", data={"csrf_token": token})
        names = [r["name"] for r in db.execute("select name from anchor.cron_schedules").fetchall()]
        assert names == ["Nightly"]


def test_prune_from_the_dashboard(dsn: str, db: Conn, tasks: dict[str, int]) -> None:
    with TestClient(create_app(dsn)) as client:
        token = csrf_of(client.get("/prune").text)
        bad = client.post("/prune", data={"csrf_token": token, "succeeded_after": "a while"})
        assert "is not a period" in bad.text
        # "1ms": everything finished so far is older than that
        done = client.post("/prune", data={"csrf_token": token, "succeeded_after": "1ms", "failed_after": ""})
        assert "deleted 1 finished task in " in done.text
    left = {r["state"] for r in db.execute("select state from anchor.tasks")}
    assert "succeeded" not in left and {"failed", "cancelled", "hook_failed"} <= left


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_endpoint(dsn: str, db: Conn, tasks: dict[str, int]) -> None:
    enqueue(db, "Job", {"n": 1}, queue="mail")
    heartbeat(db, "w-2")
    with TestClient(create_app(dsn)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    values = metric_values(response.text)
    assert values[("anchor_database_up", ())] == 1
    assert values[("anchor_tasks", (("name", "Job"), ("state", "failed")))] == 1
    assert values[("anchor_tasks", (("name", "Job"), ("state", "succeeded")))] == 1
    assert values[("anchor_queue_depth", (("queue", "mail"),))] == 1
    assert values[("anchor_queue_due", (("queue", "mail"),))] == 1
    assert values[("anchor_queue_running", (("queue", f"queue-running-{tasks['running'] - 1}"),))] == 1
    assert values[("anchor_workers_alive", ())] == 2
    assert ("anchor_queue_oldest_pending_age_seconds", (("queue", "mail"),)) in values


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_worker_metrics_server_serves_recorded_values(dsn: str, db: Conn) -> None:
    register(db, definition("Job"))
    enqueue(db, "Job", {"n": 1})
    claim(db)
    metrics = WorkerMetrics()
    metrics.record_claim(3)
    metrics.record_execution("Job", "succeeded", 0.02)
    metrics.record_execution("Job", "retry", 1.5)
    port = free_port()
    stop = start_metrics_server(port, metrics=metrics, dsn=dsn)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            values = metric_values(response.read().decode())
    finally:
        stop()
    assert values[("anchor_worker_executions_total", (("name", "Job"), ("outcome", "succeeded")))] == 1
    assert values[("anchor_worker_execution_duration_seconds_count", (("name", "Job"), ("outcome", "retry")))] == 1
    assert values[("anchor_worker_execution_duration_seconds_sum", (("name", "Job"), ("outcome", "retry")))] == 1.5
    assert values[("anchor_worker_claim_batch_size_sum", ())] == 3
    assert values[("anchor_tasks", (("name", "Job"), ("state", "running")))] == 1
