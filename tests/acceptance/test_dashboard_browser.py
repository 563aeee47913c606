"""The dashboard end to end in headless Chromium (Debian's `chromium`, driven by Playwright; no browser
download): served by uvicorn on 127.0.0.1, pages load, the numbers match the database, the failed task's
traceback shows, its Retry button changes the task, and screenshots of the main pages are saved under
test-output/screenshots/."""

from __future__ import annotations

import shutil
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.sql.factories import WORKER, db_now, definition, enqueue, heartbeat, register, task

Conn = psycopg.Connection[dict[str, Any]]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-output" / "screenshots"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TRACEBACK = """Traceback (most recent call last):
  File "/app/anchor_py/worker.py", line 211, in _execute
    await executor.execute_process_payment(ctx, params)
  File "/app/shop/tasks.py", line 48, in execute_process_payment
    charge = gateway.charge(params.user_id, params.amount)
  File "/app/shop/gateway.py", line 17, in charge
    raise CardDeclined(f"card of user {user_id} declined: insufficient funds")
shop.gateway.CardDeclined: card of user 7 declined: insufficient funds"""


def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _skip_loudly(reason: str) -> None:
    message = f"\n{'!' * 78}\nSKIPPING the dashboard browser test: {reason}\n{'!' * 78}"
    print(message)
    warnings.warn(message, stacklevel=2)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        _skip_loudly("no Chromium found (apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_loudly("Python Playwright is not installed (pip install playwright; no browser download needed)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(dsn: str) -> Iterator[str]:
    """The dashboard served by uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    from anchor_py.dashboard import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(dsn), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _run(db: Conn, name: str, params: dict[str, Any], minutes_ago: float, outcome: str, **kw: Any) -> int:
    """A task enqueued, claimed and finished `minutes_ago` through the SQL core (p_now in the past)."""
    at = db_now(db) - timedelta(minutes=minutes_ago)
    task_id = enqueue(db, name, params, run_at=at - timedelta(seconds=2), p_now=at - timedelta(seconds=2))
    row = db.execute(
        "select id, attempt from anchor.claim(%s, 1, task_names => array[%s], p_now => %s) where kind = 'execute'",
        (WORKER, name, at),
    ).fetchone()
    assert row is not None and row["id"] == task_id
    if outcome == "succeeded":
        db.execute("select anchor.complete(array[%s]::bigint[], array[%s]::int[], %s, p_now => %s)",
                   (task_id, row["attempt"], WORKER, at + timedelta(seconds=1)))
    else:
        db.execute(
            "select anchor.fail(%s, %s, %s, error_message => %s, error_type => %s, error_traceback => %s, "
            "fatal => true, p_now => %s)",
            (task_id, row["attempt"], WORKER, kw.get("message"), kw.get("error_type"), kw.get("traceback"),
             at + timedelta(seconds=1)),
        )
    return task_id


@pytest.fixture
def demo(db: Conn) -> dict[str, Any]:
    """A small shop like `make demo`'s: emails, payments and reports over the last hour, a failed payment
    with its traceback, pending and running work, two live workers and a cron schedule."""
    money = {"type": "object", "properties": {"userId": {"type": "integer"}, "amount": {"type": "number"}}}
    register(
        db,
        definition("SendEmail", retry_interval="5m", parameters={
            "type": "object", "properties": {"userId": {"type": "integer"}, "templateId": {"type": "string"}}}),
        definition("ProcessPayment", retry_interval="30m", max_attempts=3, queue="payments", parameters=money),
        definition("GenerateDailyReport", queue="reports", cron={"expression": "0 0 1 * * *"},
                   parameters={"type": "object", "properties": {"date": {"type": "string"}}}),
    )
    for i in range(60):
        for k in range(1 + (i * 7) % 5):
            _run(db, "SendEmail", {"userId": i * 10 + k, "templateId": "welcome"}, 59 - i + 0.1 * k, "succeeded")
        if i % 3 == 0:
            _run(db, "ProcessPayment", {"userId": i, "amount": 19.9}, 59 - i, "succeeded")
    for i in (5, 22, 41):
        _run(db, "SendEmail", {"userId": 900 + i, "templateId": "digest"}, 59 - i, "failed",
             message="SMTP 451 temporary failure", error_type="smtplib.SMTPDataError")
    failed = _run(db, "ProcessPayment", {"userId": 7, "amount": 129.5}, 3, "failed",
                  message="card of user 7 declined: insufficient funds", error_type="shop.gateway.CardDeclined",
                  traceback=TRACEBACK)
    for i in range(4):
        enqueue(db, "SendEmail", {"userId": 2000 + i, "templateId": "welcome"})
    enqueue(db, "GenerateDailyReport", {"date": "2026-03-01"}, run_at=db_now(db) + timedelta(hours=3))
    heartbeat(db, "web-1:4242")
    heartbeat(db, WORKER)
    db.execute("select count(*) from anchor.claim('web-1:4242', 2, task_names => array['SendEmail'])")
    counts = {r["state"]: r["n"] for r in db.execute("select state, count(*) as n from anchor.tasks group by 1")}
    return {"failed": failed, "counts": counts}


def test_dashboard_in_chromium(browser: Any, served: str, db: Conn, demo: dict[str, Any]) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    counts = demo["counts"]

    # overview: the state cards show the database's counts
    page.goto(served + "/")
    for state in ("pending", "running", "succeeded", "failed"):
        shown = page.locator(f'#state-cards [data-state="{state}"] .value').inner_text()
        assert int(shown.replace(",", "")) == counts.get(state, 0), state
    assert page.locator("#throughput-chart rect[fill='var(--succeeded)']").count() >= 50
    assert page.locator("#workers-table tbody tr").count() == 2
    assert page.locator("#kpi-workers").inner_text() == "2 / 2"
    page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)

    # the task list, filtered to failed tasks: exactly the database's failed tasks
    page.goto(served + "/tasks")
    page.select_option("select[name=state]", "failed")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**/tasks?state=failed**")
    ids = [int(i) for i in page.locator("#tasks-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.id)")]
    expected = [r["id"] for r in db.execute("select id from anchor.tasks where state = 'failed' order by id desc")]
    assert ids == expected and demo["failed"] in ids
    page.screenshot(path=str(SCREENSHOTS / "tasks-failed.png"), full_page=True)

    page.goto(served + "/tasks")
    assert page.locator("#tasks-table tbody tr").count() == 50
    page.click("#next-page")
    assert page.locator("#tasks-table tbody tr").count() > 0
    page.goto(served + "/tasks")
    page.screenshot(path=str(SCREENSHOTS / "tasks.png"), full_page=False)

    # the failed payment: its traceback, then Retry
    page.click(f'#tasks-table tr[data-id="{demo["failed"]}"] a >> nth=0')
    page.wait_for_url(f"**/tasks/{demo['failed']}")
    assert page.locator("#task-state").get_attribute("data-state") == "failed"
    traceback = page.locator("pre.traceback").first
    assert traceback.is_visible()
    assert "shop.gateway.CardDeclined: card of user 7 declined" in traceback.inner_text()
    assert '"amount": 129.5' in page.locator("#task-params").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "task-failed.png"), full_page=True)

    page.click("#retry-button")
    page.wait_for_url(f"**/tasks/{demo['failed']}?msg=*")
    assert page.locator("#task-state").get_attribute("data-state") == "pending"
    assert f"task {demo['failed']} is now pending" in page.locator(".flash.ok").inner_text()
    assert page.locator('#timeline li[data-kind="retried"]').count() == 1
    assert task(db, demo["failed"])["state"] == "pending"
    assert task(db, demo["failed"])["attempts"] == 0
    page.screenshot(path=str(SCREENSHOTS / "task-retried.png"), full_page=True)

    # cron: pause from the page, and the schedule is paused in the database
    page.goto(served + "/cron")
    row = page.locator('#cron-table tr[data-name="GenerateDailyReport"]')
    assert row.get_attribute("data-paused") == "false"
    row.locator("button").click()
    page.wait_for_url("**/cron?msg=*")
    assert page.locator('#cron-table tr[data-name="GenerateDailyReport"]').get_attribute("data-paused") == "true"
    assert db.execute("select paused from anchor.cron_schedules").fetchone() == {"paused": True}
    page.screenshot(path=str(SCREENSHOTS / "cron.png"), full_page=True)

    page.goto(served + "/prune")
    page.screenshot(path=str(SCREENSHOTS / "prune.png"), full_page=True)
    page.close()

    for name in ("overview", "tasks", "tasks-failed", "task-failed", "task-retried", "cron", "prune"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000, name
