"""The guide's examples (examples/) end to end with a worker, through `make demo`'s script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_the_guides_examples_and_their_hooks(dsn: str, db: psycopg.Connection[dict[str, Any]]) -> None:
    """Done when: the guide's examples run end to end in examples/ with a worker, and `make demo`
    (examples/demo.py) installs the SQL, runs a worker, and shows each task's outcome."""
    result = subprocess.run(
        [sys.executable, "examples/demo.py"], cwd=REPO, env={**os.environ, "DATABASE_URL": dsn},
        capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = {
        (row["name"], row["state"], row["attempts"])
        for row in db.execute("select name, state, attempts from anchor.tasks").fetchall()
    }
    assert outcomes == {
        ("SendEmail", "succeeded", 1),
        ("ProcessPayment", "succeeded", 1),
        ("ProcessPayment", "failed", 1),  # FatalTaskError: no retry
        ("ProcessOrder", "succeeded", 1),
        ("ProcessOrder", "failed", 2),  # timed out twice
        ("SendNotification", "succeeded", 2),  # rate-limited once, without an error event
        ("deleteOpaqueKey", "succeeded", 1),
        ("deleteOpaqueKey", "failed", 2),
    }
    # every final failure's hook committed its write with it, exactly once
    failed = {row["name"]: row["id"] for row in db.execute(
        "select name, id from anchor.tasks where state = 'failed'").fetchall()}
    assert db.execute("select task_id, note from examples.payment_audit").fetchall() == [
        {"task_id": failed["ProcessPayment"], "note": "payment failed permanently; refund issued"}
    ]
    assert [r["task_id"] for r in db.execute("select task_id from examples.order_failures").fetchall()] == [
        failed["ProcessOrder"]
    ]
    assert [r["task_id"] for r in db.execute("select task_id from examples.security_alerts").fetchall()] == [
        failed["deleteOpaqueKey"]
    ]
    notification_events = db.execute(
        "select e.kind from anchor.task_events e join anchor.tasks t on t.id = e.task_id "
        "where t.name = 'SendNotification'"
    ).fetchall()
    assert notification_events == []
    # the outcome table
    for expected in ("payment_audit", "order_failures", "security_alerts", "timed out after 1s"):
        assert expected in result.stdout
    assert result.stdout.count("succeeded") == 5 and result.stdout.count(" failed ") == 3
