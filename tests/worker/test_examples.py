"""`make demo` (examples/demo.py): the example web app, driven by requests, runs the guide's examples end
to end with its worker, and prints what happened to each task."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[2]


def test_demo_drives_the_web_app_and_shows_each_outcome(dsn: str, db: psycopg.Connection[dict[str, Any]]) -> None:
    result = subprocess.run(
        [sys.executable, "examples/demo.py"], cwd=REPO, env={**os.environ, "DATABASE_URL": dsn},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = sorted(
        (row["name"], row["state"], row["attempts"])
        for row in db.execute("select name, state, attempts from anchor.tasks").fetchall()
    )
    assert outcomes == sorted([
        ("SendEmail", "succeeded", 1),  # Ada's; Bob's registration rolled back with its task
        ("ProcessPayment", "succeeded", 1),
        ("ProcessPayment", "failed", 1),  # FatalTaskError: no retry
        ("ProcessOrder", "succeeded", 1),
        ("ProcessOrder", "failed", 2),  # timed out twice
        ("SendNotification", "succeeded", 2),  # rate-limited once, without an error event
        ("deleteOpaqueKey", "succeeded", 1),
        ("deleteOpaqueKey", "cancelled", 1),  # a missing key retries every 30 min: the demo cancels it
    ])
    assert [r["email"] for r in db.execute("select email from examples.users").fetchall()] == ["ada@example.com"]
    # every final failure's hook committed its write with it, exactly once
    failed = {row["name"]: row["id"] for row in db.execute(
        "select name, id from anchor.tasks where state = 'failed'").fetchall()}
    assert db.execute("select task_id, note from examples.payment_audit").fetchall() == [
        {"task_id": failed["ProcessPayment"], "note": "payment failed permanently; refund issued"}
    ]
    assert [r["task_id"] for r in db.execute("select task_id from examples.order_failures").fetchall()] == [
        failed["ProcessOrder"]
    ]
    notification_events = db.execute(
        "select e.kind from anchor.task_events e join anchor.tasks t on t.id = e.task_id "
        "where t.name = 'SendNotification' and e.kind = 'error'"
    ).fetchall()
    assert notification_events == []
    # the outcome table names each request, its HTTP status and what its task did
    for expected in ("POST /users", "500", "422", "nothing queued", "payment_audit", "order_failures",
                     "timed out after 1s"):
        assert expected in result.stdout
    assert result.stdout.count(" succeeded ") == 5 and result.stdout.count(" failed ") == 2
    # it says what it does, its own operator actions too, with the CLI command doing the same
    assert "select anchor.retry_now(" in result.stdout and "anchor tasks retry " in result.stdout
    assert "select anchor.cancel(" in result.stdout and "anchor tasks cancel " in result.stdout
    # the rate-limited retry shows in the log, error messages are whole, and every line fits 120 columns
    assert "SendNotification attempt 1 failed" in result.stderr and "-> retry" in result.stderr
    assert "deleting opaque key 999 failed: no such key" in result.stdout
    assert max(len(line) for line in (result.stdout + result.stderr).splitlines()) <= 120
