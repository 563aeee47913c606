"""`anchor queues list|pause|resume` as an operator runs them (subprocesses, --json, exit codes), the dashboard's
Queues page with its pause and resume buttons, and snoozes in `anchor tasks show` and on the task page."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from anchor_py import queries
from tests.sql.factories import WORKER, claim, definition, enqueue, register

REPO = Path(__file__).resolve().parents[2]
ANCHOR = str(Path(sys.executable).parent / "anchor")
Conn = psycopg.Connection[dict[str, Any]]


def anchor(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANCHOR, *args, "--dsn", dsn], cwd=REPO, env=dict(os.environ), capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def queues(db: Conn) -> Conn:
    """Queue emails with limits from registration, queue default from a definition, queue adhoc from a task."""
    db.execute(queries.REGISTER_TASKS, {
        "definitions": json.dumps([definition("Mail", queue="emails"), definition("Job")]),
        "queues": json.dumps([{"name": "emails", "concurrency": 5, "rate_limit": {"limit": 100, "period": "1m"}}]),
        "version": 1,
    })
    enqueue(db, "Mail", {"n": 1})
    enqueue(db, "Job", {"n": 2}, queue="adhoc")
    return db


def test_list_shows_every_known_queue_with_its_limits_and_counts(dsn: str, queues: Conn) -> None:
    result = anchor(dsn, "queues", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # held: the due pending tasks a limit governs (they start as its slots and windows allow)
    assert lines[0].split() == ["QUEUE", "PAUSED", "CONCURRENCY", "RATE", "LIMIT", "PENDING", "HELD", "RUNNING",
                                "FAILING"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows == {"adhoc": ["no", "-", "-", "1", "0", "0", "0"], "default": ["no", "-", "-", "0", "0", "0", "0"],
                    "emails": ["no", "5", "100/1m", "1", "1", "0", "0"]}
    listed = json.loads(anchor(dsn, "queues", "list", "--json").stdout)
    assert [queue["name"] for queue in listed] == ["adhoc", "default", "emails"]
    assert listed[2] == {"name": "emails", "paused": False, "paused_at": None, "concurrency": 5, "rate_limit": 100,
                         "rate_period": 60.0, "pending": 1, "held": 1, "running": 0, "failing": 0}


def test_pause_and_resume_with_json_and_their_effect_on_the_claim(dsn: str, queues: Conn) -> None:
    result = anchor(dsn, "queues", "pause", "emails", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"queue": "emails", "ok": True, "outcome": "paused"}
    assert json.loads(anchor(dsn, "queues", "pause", "emails", "--json").stdout)["outcome"] == "unchanged"
    assert claim(queues, task_names=["Mail"]) == []
    listed = {queue["name"]: queue for queue in json.loads(anchor(dsn, "queues", "list", "--json").stdout)}
    assert listed["emails"]["paused"] is True and listed["emails"]["paused_at"] is not None
    assert "since " in anchor(dsn, "queues", "list").stdout
    resumed = anchor(dsn, "queues", "resume", "emails")
    assert (resumed.returncode, resumed.stdout) == (0, "queue emails: resumed\n")
    assert [row["name"] for row in claim(queues, task_names=["Mail"])] == ["Mail"]


def test_an_unknown_queue_is_refused_with_exit_4_and_pauses_nothing(dsn: str, queues: Conn) -> None:
    result = anchor(dsn, "queues", "pause", "emials")
    assert result.returncode == 4
    assert result.stderr == "anchor queues: queue 'emials' does not exist (known queues: adhoc, default, emails)\n"
    as_json = anchor(dsn, "queues", "resume", "emials", "--json")
    assert as_json.returncode == 4
    assert json.loads(as_json.stdout) == {
        "queue": "emials", "ok": False,
        "error": "queue 'emials' does not exist (known queues: adhoc, default, emails)",
    }
    assert all(not queue["paused"] for queue in json.loads(anchor(dsn, "queues", "list", "--json").stdout))


def test_usage_mistakes_and_an_unreachable_database(dsn: str, queues: Conn) -> None:
    empty = anchor(dsn, "queues", "pause", " ")
    assert (empty.returncode, empty.stderr) == (2, "anchor queues: a queue name must not be empty\n")
    assert anchor(dsn, "queues").returncode == 2  # no action: lists them
    unreachable = subprocess.run([ANCHOR, "queues", "list", "--dsn", "postgresql://127.0.0.1:1/x"], cwd=REPO,
                                 capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 3 and "Traceback" not in unreachable.stderr


def test_no_queues_at_all(dsn: str, db: Conn) -> None:
    assert anchor(dsn, "queues", "list").stdout == "anchor: no queues (register task definitions first)\n"
    assert json.loads(anchor(dsn, "queues", "list", "--json").stdout) == []


def _snoozed_task(db: Conn) -> int:
    register(db, definition("Job"))
    task_id = enqueue(db, "Job", {"n": 1})
    claim(db)
    fence = db.execute("select fence from anchor.tasks where id = %s", (task_id,)).fetchone()
    assert fence is not None
    row = db.execute("select anchor.snooze(%s, %s, %s, interval '90 seconds') as outcome",
                     (task_id, fence["fence"], WORKER)).fetchone()
    assert row == {"outcome": "snoozed"}
    return task_id


def test_tasks_show_prints_a_snooze_with_its_delay(dsn: str, db: Conn) -> None:
    task_id = _snoozed_task(db)
    result = anchor(dsn, "tasks", "show", str(task_id))
    assert result.returncode == 0, result.stderr
    assert re.search(r"snoozed  attempt 1  on worker-1  for 1m30s, until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
                     r"\(attempt given back\)", result.stdout), result.stdout
    assert "attempts      0/1" in result.stdout


starlette = pytest.importorskip("starlette")

from starlette.testclient import TestClient  # noqa: E402

from anchor_py.dashboard import create_app  # noqa: E402


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def test_dashboard_queues_page_pauses_and_resumes(dsn: str, queues: Conn) -> None:
    with TestClient(create_app(dsn)) as client:
        page = client.get("/queues")
        assert page.status_code == 200
        assert re.findall(r'<tr data-name="([^"]+)" data-paused="(\w+)"', page.text) == [
            ("adhoc", "false"), ("default", "false"), ("emails", "false")]
        assert "100 per 1m" in page.text
        token = csrf_of(page.text)
        # without the session's token nothing happens
        assert client.post("/queues/pause", data={"queue": "emails", "csrf_token": "forged"}).status_code == 403
        paused = client.post("/queues/pause", data={"queue": "emails", "csrf_token": token})
        assert "queue emails: paused" in paused.text
        assert queues.execute("select paused from anchor.queues() where name = 'emails'").fetchone() == {
            "paused": True}
        assert 'data-name="emails" data-paused="true"' in client.get("/queues").text
        client.post("/queues/resume", data={"queue": "emails", "csrf_token": token})
        assert queues.execute("select paused from anchor.queues() where name = 'emails'").fetchone() == {
            "paused": False}
        missing = client.post("/queues/pause", data={"queue": "nope", "csrf_token": token})
        assert "queue &#39;nope&#39; does not exist" in missing.text


def test_dashboard_task_page_shows_a_snooze(dsn: str, db: Conn) -> None:
    task_id = _snoozed_task(db)
    with TestClient(create_app(dsn)) as client:
        page = client.get(f"/tasks/{task_id}")
    assert page.status_code == 200
    assert re.search(r'data-kind="snoozed">.*?for 1m30s, until [0-9: -]+ · attempt given back', page.text, re.S)
