"""`make demo`: the example web app on the embedded PostgreSQL (or $DATABASE_URL), driven by a few requests.

Starts examples/webapp (its lifespan installs the SQL core and starts the worker, as the guide's apps
do), sends the requests a user of the app would, and prints what happened to each task: successes, a
retry, a timeout, final failures whose onFailed hook wrote in the failure's own transaction, and the
requests that enqueued nothing (a rolled-back registration, an invalid enum value).
"""

from __future__ import annotations

import asyncio
import socket
import sys
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
    coalesce(
        (select 'payment_audit' from examples.payment_audit a where a.task_id = t.id),
        (select 'order_failures' from examples.order_failures o where o.task_id = t.id),
        (select 'escalations' from examples.escalations e where e.task_id = t.id),
        (select 'security_alerts' from examples.security_alerts s where s.task_id = t.id),
        '-') as hook_wrote,
    coalesce(t.last_error, '') as last_error
from anchor.tasks t where t.id = any(%s) order by t.id
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def send_requests(base_url: str) -> list[tuple[Request, int, int | None]]:
    """Each request with its HTTP status and the task id it got back (None when nothing was queued)."""
    sent = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for request in REQUESTS:
            response = await client.request(request.method, request.path, json=request.body)
            task_id = response.json().get("taskId") if response.headers.get("content-type", "").startswith(
                "application/json") and isinstance(response.json(), dict) else None
            sent.append((request, response.status_code, task_id))
    return sent


async def wait_until_final(dsn: str, ids: list[int]) -> list[dict[str, Any]]:
    """Polls until every task is final. A task waiting minutes for its retry interval is moved on as an
    operator would: the rate-limited notification is retried now (anchor.retry_now), and the deletion of
    a key that does not exist (unlimited attempts, 30 min apart) is cancelled (anchor.cancel)."""
    rows: list[dict[str, Any]] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        for _ in range(600):
            rows = await (await conn.execute(TASKS, (ids,))).fetchall()
            if all(row["state"] in FINAL_STATES for row in rows):
                break
            for row in rows:
                if row["state"] == "pending" and row["waiting"]:
                    action = "cancel" if row["name"] == "deleteOpaqueKey" else "retry_now"
                    await conn.execute(f"select anchor.{action}(%s)", (row["id"],))
            await asyncio.sleep(0.1)
    return rows


def print_table(headers: list[str], table: list[list[str]]) -> None:
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    for line in [headers, ["-" * w for w in widths], *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


async def main() -> int:
    configure_logging("WARNING")  # the failures and hooks, as the worker reports them
    dsn = resolve_dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        # a fresh start for the example's own tables (the app's lifespan creates them), so a second
        # `make demo` tells the same story; anchor.tasks keeps every earlier run's tasks
        conn.execute("drop schema if exists examples cascade")
    app = create_app(dsn, worker_config=WorkerConfig(poll_interval=timedelta(milliseconds=200), concurrency=8))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            return 1  # uvicorn said why
        await asyncio.sleep(0.05)
    try:
        print(f"the example web app is serving on http://127.0.0.1:{port} with its worker; sending requests...")
        sent = await send_requests(f"http://127.0.0.1:{port}")
        ids = [task_id for _, _, task_id in sent if task_id is not None]
        rows = {row["id"]: row for row in await wait_until_final(dsn, ids)}
    finally:
        server.should_exit = True
        await serving

    print()
    table = []
    for request, status, task_id in sent:
        row = rows.get(task_id) if task_id is not None else None
        table.append([
            f"{request.method} {request.path}", str(status), request.story,
            str(task_id or "-"), row["name"] if row else "-", row["state"] if row else "nothing queued",
            str(row["attempts"]) if row else "-", row["hook_wrote"] if row else "-",
            row["last_error"][:40] if row else "",
        ])
    print_table(["request", "http", "story", "task", "name", "state", "attempts", "hook wrote", "last error"], table)
    return 0 if all(row["state"] in FINAL_STATES for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
