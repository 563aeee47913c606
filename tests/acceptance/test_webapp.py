"""The example web app (examples/webapp/) under uvicorn, driven over HTTP with httpx against a real database.

The worker runs in the app's lifespan; each test checks what happened to the tasks its requests enqueued,
in the database: successes, a retry, failures whose onFailed hook wrote its row, a timeout, the
transactional enqueue of RegisterUser (a rollback takes the task with it), the enum check, and the cron
task ProcessDailyReports fired with an injected clock.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

REPO = Path(__file__).resolve().parents[2]
FINAL = {"succeeded", "failed", "hook_failed", "cancelled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def webapp(dsn: str) -> Iterator[httpx.Client]:
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": dsn, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.webapp.app:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/cron").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the web app did not start:\n{process.communicate()[0]}")
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            output = process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0]
        print(output)


def ok(response: httpx.Response) -> Any:
    """The JSON of a successful response; otherwise fail with the status and body (not a bare JSONDecodeError)."""
    request = response.request
    assert response.status_code < 400, f"{request.method} {request.url}: {response.status_code} {response.text}"
    return response.json()


def wait_for(client: httpx.Client, task_id: int, states: set[str] = FINAL, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = ok(client.get(f"/tasks/{task_id}"))
        if task["state"] in states or time.monotonic() > deadline:
            return task
        time.sleep(0.1)


def rows(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(query, args).fetchall()


def test_register_user_sends_the_welcome_email_in_the_same_transaction(webapp: httpx.Client, dsn: str) -> None:
    response = webapp.post("/users", json={"email": "ada@example.com", "name": "Ada"})
    assert response.status_code == 201, response.text
    created = response.json()
    task = wait_for(webapp, created["taskId"])
    assert (task["name"], task["state"], task["params"]["userId"]) == ("SendEmail", "succeeded", created["userId"])
    assert rows(dsn, "select user_id, template_id from examples.emails_sent where task_id = %s", created["taskId"]) == [
        {"user_id": created["userId"], "template_id": "welcome"}
    ]

    # a registration that fails after enqueueing rolls back: no user, no task
    response = webapp.post("/users", json={"email": "bob@example.com", "name": "Bob", "failAfterEnqueue": True})
    assert response.status_code == 500
    assert rows(dsn, "select id from examples.users where email = 'bob@example.com'") == []
    assert rows(dsn, "select count(*) as n from anchor.tasks where name = 'SendEmail'") == [{"n": 1}]

    assert webapp.post("/users", json={"email": "ada@example.com", "name": "Ada"}).status_code == 409


def test_failed_payment_runs_its_hook_which_audits_in_the_failure_transaction(webapp: httpx.Client, dsn: str) -> None:
    good = ok(webapp.post("/payments", json={"userId": 1, "amount": 50.0}))["taskId"]
    bad = ok(webapp.post("/payments", json={"userId": 2, "amount": -5.0}))["taskId"]
    assert wait_for(webapp, good)["state"] == "succeeded"
    failed = wait_for(webapp, bad)
    assert failed["state"] == "failed"
    assert [e["kind"] for e in failed["events"]] == ["error", "failed"]
    assert "FatalTaskError" in failed["events"][0]["error_type"]
    audit = webapp.get("/payments/audit").json()
    assert [(row["task_id"], row["user_id"]) for row in audit] == [(bad, 2)]
    # strict params: a string is not a number, and nothing is queued
    assert webapp.post("/payments", json={"userId": "1", "amount": 5}).status_code == 422


def test_order_with_a_timeout_fails_and_its_hook_records_it(webapp: httpx.Client, dsn: str) -> None:
    fast = webapp.post("/orders", json={"orderId": 1}).json()["taskId"]
    slow = webapp.post("/orders", json={"orderId": 1000, "timeout": "1s", "maxAttempts": 1}).json()["taskId"]
    assert wait_for(webapp, fast)["state"] == "succeeded"
    started = time.monotonic()
    task = wait_for(webapp, slow)
    assert time.monotonic() - started < 10
    assert task["state"] == "failed"
    assert task["events"][0]["error_type"] == "anchor.TaskTimeout"
    assert rows(dsn, "select order_id from examples.order_failures where task_id = %s", slow) == [{"order_id": 1000}]
    assert webapp.post("/orders", json={"orderId": 2, "timeout": "soon"}).status_code == 400


def test_notification_priority_is_an_enum(webapp: httpx.Client, dsn: str) -> None:
    response = webapp.post("/notifications", json={"userId": 1, "message": "hi", "priority": "urgent"})
    assert response.status_code == 422
    assert rows(dsn, "select count(*) as n from anchor.tasks") == [{"n": 0}]
    low = webapp.post("/notifications", json={"userId": 1, "message": "hi", "priority": "low"}).json()["taskId"]
    high = webapp.post("/notifications", json={"userId": 1, "message": "now", "priority": "high"}).json()["taskId"]
    assert wait_for(webapp, low)["state"] == "succeeded"
    # high priority is rate-limited on its first try: retried later, no error event recorded
    task = wait_for(webapp, high, states={"pending"} | FINAL)
    deadline = time.monotonic() + 10
    while task["attempts"] < 1 and time.monotonic() < deadline:
        task = wait_for(webapp, high, states={"pending"} | FINAL)
    assert (task["state"], task["attempts"], task["events"]) == ("pending", 1, [])


def test_delete_opaque_key_succeeds_or_retries(webapp: httpx.Client, dsn: str) -> None:
    assert webapp.post("/keys", json={"keyId": 7}).status_code == 201
    deleted = ok(webapp.delete("/keys/7"))["taskId"]
    missing = ok(webapp.delete("/keys/999"))["taskId"]
    assert wait_for(webapp, deleted)["state"] == "succeeded"
    assert rows(dsn, "select key_id from examples.opaque_keys") == []
    deadline = time.monotonic() + 20
    task = wait_for(webapp, missing, states={"pending"} | FINAL)
    while not task["events"] and time.monotonic() < deadline:
        time.sleep(0.1)
        task = wait_for(webapp, missing, states={"pending"} | FINAL)
    # an ordinary error: recorded, retried after the task's interval (30m)
    assert task["state"] == "pending" and task["attempts"] == 1
    assert task["events"][0]["error_type"] == "LookupError"
    assert webapp.delete("/keys/abc").status_code == 400


def test_daily_reports_fire_on_cron_with_the_date_filled(webapp: httpx.Client, dsn: str) -> None:
    from anchor_py.cron import CronService

    schedules = {s["name"]: s for s in webapp.get("/cron").json()}
    assert schedules["ProcessDailyReports"]["expression"] == "0 0 1 * * *"

    async def fire() -> None:
        service = CronService(dsn)
        await service.run_once()  # computes the next fire time if no worker's cron loop has yet
        (next_fire,) = rows(dsn, "select next_fire_at from anchor.cron_schedules where name = 'ProcessDailyReports'")
        # an injected clock: half a second after the next 01:00 UTC
        await service.run_once(now=next_fire["next_fire_at"] + timedelta(milliseconds=500))

    asyncio.run(fire())
    (task,) = rows(dsn, "select id, params, scheduled_at from anchor.tasks where name = 'ProcessDailyReports'")
    assert task["scheduled_at"].hour == 1 and task["params"] == {"date": task["scheduled_at"].date().isoformat()}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select anchor.retry_now(%s)", (task["id"],))  # due now rather than at tomorrow's 01:00
    assert wait_for(webapp, task["id"])["state"] == "succeeded"
    assert rows(dsn, "select report_date from examples.daily_reports") == [{"report_date": task["scheduled_at"].date()}]


def test_a_web_request_creates_moves_and_removes_a_users_runtime_schedule(webapp: httpx.Client, dsn: str) -> None:
    put = webapp.put("/users/42/digest", json={"hour": 9, "timezone": "Europe/Berlin"})
    assert (put.status_code, put.json()) == (200, {"schedule": "created"})
    moved = webapp.put("/users/42/digest", json={"hour": 8, "timezone": "Europe/Berlin"})
    assert moved.json() == {"schedule": "replaced"}
    schedules = {s["name"]: s for s in webapp.get("/cron").json()}
    assert {k: schedules["digest:user-42"][k] for k in ("source", "task_name", "expression", "timezone")} == {
        "source": "runtime", "task_name": "SendEmail", "expression": "0 0 8 * * 1", "timezone": "Europe/Berlin"
    }
    assert schedules["ProcessDailyReports"]["source"] == "yaml"
    bad = webapp.put("/users/42/digest", json={"hour": 25})
    assert bad.status_code == 400 and "schedule 'digest:user-42': cron expression '0 0 25 * * 1'" in bad.json()["error"]
    bad_zone = webapp.put("/users/42/digest", json={"timezone": "Mars/Olympus"})
    assert bad_zone.status_code == 400 and "'Mars/Olympus' is not a known time zone" in bad_zone.json()["error"]
    (row,) = rows(dsn, "select expression from anchor.cron_schedules where name = 'digest:user-42'")
    assert row == {"expression": "0 0 8 * * 1"}, "a refused change leaves the schedule as it was"
    assert webapp.delete("/users/42/digest").json() == {"deleted": True}
    assert webapp.delete("/users/42/digest").json() == {"deleted": False}
    assert rows(dsn, "select name from anchor.cron_schedules where source = 'runtime'") == []
