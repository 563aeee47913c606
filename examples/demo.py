"""`make demo`: the example web app on the embedded PostgreSQL (or $DATABASE_URL), driven by a few requests.

Starts examples/webapp (its lifespan installs the SQL core and starts the worker, as the guide's apps
do), sends the requests a user of the app would, and prints what happened to each task: successes, a
retry, a timeout, final failures whose onFailed hook wrote in the failure's own transaction, and the
requests that enqueued nothing (a rolled-back registration, an invalid enum value).

It says what it does before each step, the operator actions it takes itself included (with the `anchor`
command that does the same), shows the worker's log at INFO (retries are logged there), and keeps every
line within 120 columns: long messages are wrapped, never cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import textwrap
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python examples/demo.py` from anywhere

from anchor_py.database import resolve_dsn  # noqa: E402
from anchor_py.logs import configure_logging  # noqa: E402
from anchor_py.worker import WorkerConfig  # noqa: E402
from examples.app import SLOW_ORDER_ID  # noqa: E402
from examples.webapp.app import create_app  # noqa: E402

FINAL_STATES = ("succeeded", "failed", "hook_failed", "cancelled")
WIDTH = 120  # every line the demo prints fits a terminal this wide


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: dict[str, Any] | None
    story: str


REQUESTS = [
    Request("POST", "/users", {"email": "ada@example.com", "name": "Ada"},
            "register Ada: welcome email queued in her transaction"),
    Request("POST", "/users", {"email": "bob@example.com", "name": "Bob", "failAfterEnqueue": True},
            "register Bob, then abort: user and email roll back"),
    Request("POST", "/payments", {"userId": 1, "amount": 50}, "payment of 50"),
    Request("POST", "/payments", {"userId": 2, "amount": -5}, "payment of -5: fatal, hook audits"),
    Request("POST", "/orders", {"orderId": 1}, "order 1"),
    Request("POST", "/orders", {"orderId": SLOW_ORDER_ID, "timeout": "1s", "maxAttempts": 2},
            "slow order, 1s timeout x2, hook records"),
    Request("POST", "/notifications", {"userId": 1, "message": "your order shipped", "priority": "high"},
            "notification, rate-limited once"),
    Request("POST", "/notifications", {"userId": 1, "message": "hi", "priority": "urgent"},
            "priority 'urgent' is not in the enum"),
    Request("POST", "/keys", {"keyId": 7}, "store key 7"),
    Request("DELETE", "/keys/7", None, "delete key 7"),
    Request("DELETE", "/keys/999", None, "delete a missing key (retries; cancelled)"),
]

TASKS = """
select t.id, t.name, t.state, t.attempts, t.run_at > now() + interval '2 seconds' as waiting,
    t.run_at - now() as waits,
    coalesce(
        (select 'payment_audit' from examples.payment_audit a where a.task_id = t.id),
        (select 'order_failures' from examples.order_failures o where o.task_id = t.id),
        (select 'escalations' from examples.escalations e where e.task_id = t.id),
        (select 'security_alerts' from examples.security_alerts s where s.task_id = t.id),
        '-') as hook_wrote,
    coalesce(t.last_error, '') as last_error
from anchor.tasks t where t.id = any(%s) order by t.id
"""


def say(text: str, indent: int = 0) -> None:
    """One step of the story, wrapped to WIDTH (continuation lines indented two more)."""
    print(textwrap.fill(text, WIDTH, initial_indent=" " * indent, subsequent_indent=" " * (indent + 2)), flush=True)


class WrappedLogs(logging.Formatter):
    """The worker's log lines as `anchor worker` formats them, each wrapped to WIDTH."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        lines = self.inner.format(record).splitlines()
        return "\n".join(textwrap.fill(line, WIDTH, subsequent_indent="    ") or line for line in lines)


def show_logs() -> None:
    configure_logging("INFO")  # INFO: retries are logged there, failures and hooks above it
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the demo says which request it sends itself
    for handler in logging.getLogger().handlers:
        handler.setFormatter(WrappedLogs(handler.formatter or logging.Formatter()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refusal(response: httpx.Response) -> str:
    """What an error response said: its error, and each invalid field with the reason."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    if not isinstance(body, dict):
        return json.dumps(body)
    details = [f"{'.'.join(str(part) for part in d['loc'])}: {d['msg']}" for d in body.get("details", [])]
    return "; ".join([str(body.get("error", body)), *details])


async def send_requests(base_url: str) -> list[tuple[Request, int, int | None]]:
    """Each request with its HTTP status and the task id it got back (None when nothing was queued)."""
    sent = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for number, request in enumerate(REQUESTS, 1):
            body = "" if request.body is None else " " + json.dumps(request.body)
            say(f"#{number} {request.method} {request.path}{body}: {request.story}", indent=2)
            response = await client.request(request.method, request.path, json=request.body)
            reply = response.json() if response.headers.get("content-type", "").startswith("application/json") else None
            task_id = reply.get("taskId") if isinstance(reply, dict) else None
            if response.is_error:
                say(f"-> HTTP {response.status_code}, nothing queued: {refusal(response)}", indent=5)
            else:
                say(f"-> HTTP {response.status_code}, " + (f"task {task_id}" if task_id else "no task"), indent=5)
            sent.append((request, response.status_code, task_id))
    return sent


async def act_as_operator(conn: psycopg.AsyncConnection[Any], row: dict[str, Any]) -> None:
    """Moves on a task that would wait minutes for its next attempt, saying so first, as an operator would:
    the rate-limited notification is retried now, the deletion of a key that does not exist (unlimited
    attempts, 30 minutes apart) is cancelled."""
    task, waits = f"task {row['id']} ({row['name']})", f"{round(row['waits'].total_seconds() / 60)} min"
    if row["name"] == "deleteOpaqueKey":
        say(f"operator: {task} fails and retries without limit, the next time in {waits}; cancelling it:", indent=2)
        say(f"select anchor.cancel({row['id']});   -- the same from a shell: anchor tasks cancel {row['id']}",
            indent=4)
        await conn.execute("select anchor.cancel(%s)", (row["id"],))
    else:
        say(f"operator: {task} waits {waits} for its next attempt; running it now:", indent=2)
        say(f"select anchor.retry_now({row['id']});   -- the same from a shell: anchor tasks retry {row['id']}",
            indent=4)
        await conn.execute("select anchor.retry_now(%s)", (row["id"],))


async def wait_until_final(dsn: str, ids: list[int]) -> list[dict[str, Any]]:
    """Polls until every task is final, acting as an operator on the tasks that would wait minutes."""
    rows: list[dict[str, Any]] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        for _ in range(600):
            rows = await (await conn.execute(TASKS, (ids,))).fetchall()
            if all(row["state"] in FINAL_STATES for row in rows):
                break
            for row in rows:
                if row["state"] == "pending" and row["waiting"]:
                    await act_as_operator(conn, row)
            await asyncio.sleep(0.1)
    return rows


def print_table(headers: list[str], table: list[list[str]], notes: list[str]) -> None:
    """The table, each row followed by its note (a whole error message, wrapped) when it has one."""
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    print("  ".join(cell.ljust(width) for cell, width in zip(headers, widths, strict=True)).rstrip())
    print("  ".join("-" * width for width in widths))
    for row, note in zip(table, notes, strict=True):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if note:
            say(note, indent=4)


async def main() -> int:
    show_logs()
    dsn = resolve_dsn()
    say("anchor-py demo: the example web app (examples/webapp) and its worker, driven by a few requests.")
    say("1. Dropping the example's own tables (schema `examples`), so every run tells the same story; "
        "anchor.tasks keeps the tasks of earlier runs.")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists examples cascade")
    app = create_app(dsn, worker_config=WorkerConfig(poll_interval=timedelta(milliseconds=200), concurrency=8))
    port = free_port()
    say(f"2. Starting the web app on http://127.0.0.1:{port}. Its lifespan installs the SQL core (anchor install-sql), "
        "registers the task definitions (anchor register) and starts a worker in the same process "
        "(concurrency 8). Log lines below are the worker's, at INFO.")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            return 1  # uvicorn said why
        await asyncio.sleep(0.05)
    try:
        say(f"3. Sending {len(REQUESTS)} requests, as the app's users would:")
        sent = await send_requests(f"http://127.0.0.1:{port}")
        ids = [task_id for _, _, task_id in sent if task_id is not None]
        say(f"4. Waiting until the {len(ids)} queued tasks are final (retries, a timeout, onFailed hooks):")
        rows = {row["id"]: row for row in await wait_until_final(dsn, ids)}
        say("5. Stopping the web app; its worker stops with it (a task still running would be handed back).")
    finally:
        server.should_exit = True
        await serving

    say("6. What happened to each request (hook wrote: the table the onFailed hook wrote to, in the failure's "
        "own transaction):")
    table, notes = [], []
    for number, (request, status, task_id) in enumerate(sent, 1):
        row = rows.get(task_id) if task_id is not None else None
        table.append([
            f"#{number}", f"{request.method} {request.path}", str(status), str(task_id or "-"),
            row["name"] if row else "-", row["state"] if row else "nothing queued",
            str(row["attempts"]) if row else "-", row["hook_wrote"] if row else "-",
        ])
        notes.append(f"last error: {row['last_error']}" if row and row["last_error"] else "")
    print_table(["", "request", "http", "task", "name", "state", "attempts", "hook wrote"], table, notes)
    return 0 if all(row["state"] in FINAL_STATES for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
