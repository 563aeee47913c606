"""anchor_py.contrib.fastapi through the example app (examples/fastapi_app/) under uvicorn, over real HTTP, against
a real database: a request's enqueue commits with its transaction (or goes with its rollback), the worker the
lifespan started runs the tasks, and a SIGTERM to the server stops the worker cleanly (deregistered)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from tests.integrations.servers import REPO, free_port, wait_until_answers

FINAL = {"succeeded", "failed", "hook_failed", "cancelled"}


@pytest.fixture
def server(dsn: str) -> Iterator[tuple[subprocess.Popen[str], httpx.Client]]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": dsn, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_app.app:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        wait_until_answers(process, lambda: client.get("/tasks/0").status_code == 404)
        yield process, client
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
        print(process.communicate()[0])


def wait_for(client: httpx.Client, task_id: int, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        if task["state"] in FINAL or time.monotonic() > deadline:
            return task
        time.sleep(0.1)


def rows(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(query, args).fetchall()


def test_a_request_enqueues_in_its_transaction_and_the_lifespan_worker_runs_the_task(
    server: tuple[subprocess.Popen[str], httpx.Client], dsn: str
) -> None:
    _, client = server
    response = client.post("/users", json={"email": "ada@example.com", "name": "Ada"})
    assert response.status_code == 201, response.text
    created = response.json()
    assert wait_for(client, created["taskId"])["state"] == "succeeded"
    assert rows(dsn, "select user_id, template_id from examples.emails_sent") == [
        {"user_id": created["userId"], "template_id": "welcome"}
    ]


def test_a_handler_that_raises_rolls_back_its_rows_and_its_task(
    server: tuple[subprocess.Popen[str], httpx.Client], dsn: str
) -> None:
    _, client = server
    response = client.post("/users", json={"email": "bob@example.com", "name": "Bob", "fail_after_enqueue": True})
    assert response.status_code == 500
    assert rows(dsn, "select * from examples.users") == []
    assert rows(dsn, "select id from anchor.tasks where name = 'SendEmail'") == []
    # the rolled-back connection went back to the pool clean: the next request on it commits
    assert client.post("/users", json={"email": "bob@example.com", "name": "Bob"}).status_code == 201
    assert len(rows(dsn, "select id from anchor.tasks where name = 'SendEmail'")) == 1


def test_a_failed_payment_runs_its_hook_in_the_lifespan_worker(
    server: tuple[subprocess.Popen[str], httpx.Client], dsn: str
) -> None:
    _, client = server
    response = client.post("/payments", json={"userId": 7, "amount": -5.0})
    assert response.status_code == 202, response.text
    task_id = response.json()["taskId"]
    assert wait_for(client, task_id)["state"] == "failed"
    audit = client.get("/payments/audit").json()
    assert [(row["task_id"], row["user_id"], row["amount"]) for row in audit] == [(task_id, 7, -5.0)]


def test_sigterm_stops_the_worker_cleanly_with_the_app(
    server: tuple[subprocess.Popen[str], httpx.Client], dsn: str
) -> None:
    process, _ = server
    # the lifespan's worker registers with its first heartbeat, which may come a moment after the app answers
    deadline = time.monotonic() + 10
    while not rows(dsn, "select worker_id from anchor.workers") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(rows(dsn, "select worker_id from anchor.workers")) == 1
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=30)[0]
    # uvicorn re-raises the signal once it has shut down, so the process ends by SIGTERM, after a clean shutdown
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output and "Traceback" not in output
    assert rows(dsn, "select worker_id from anchor.workers") == []  # deregistered on the way out
