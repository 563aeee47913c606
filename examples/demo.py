"""`make demo`: the guide's examples, end to end, on the embedded PostgreSQL (or $DATABASE_URL).

Installs the SQL core, registers the generated TASKS, enqueues the guide's example tasks (some of
them built to fail), runs a worker until every one of them is final, and prints what happened to each.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python examples/demo.py` from anywhere

from anchor_py.database import resolve_dsn  # noqa: E402
from anchor_py.logs import configure_logging  # noqa: E402
from anchor_py.migrate import install  # noqa: E402
from anchor_py.taskcore import with_retry_policy, with_timeout  # noqa: E402
from anchor_py.worker import Worker, WorkerConfig  # noqa: E402
from examples.app import SCHEMA, SLOW_ORDER_ID, Executor  # noqa: E402
from zgen import taskgen  # noqa: E402

FINAL_STATES = ("succeeded", "failed", "hook_failed", "cancelled")
# short retries and timeouts so the failing examples finish in seconds
FAST_RETRY = with_retry_policy("1s", 2)


@dataclass(frozen=True)
class DemoTask:
    id: int
    story: str


async def enqueue_examples(runner: taskgen.AsyncTaskRunner) -> list[DemoTask]:
    return [
        DemoTask(await runner.run_send_email(taskgen.SendEmailParameters(
            userId=1, templateId="welcome", variables={"name": "Ada"})), "welcome email"),
        DemoTask(await runner.run_process_payment(taskgen.ProcessPaymentParameters(userId=1, amount=50.0)),
                 "payment of 50"),
        DemoTask(await runner.run_process_payment(taskgen.ProcessPaymentParameters(userId=2, amount=-5.0)),
                 "payment of -5: FatalTaskError, hook audits"),
        DemoTask(await runner.run_process_order(taskgen.ProcessOrderParameters(orderId=1)), "order 1"),
        DemoTask(await runner.run_process_order(
            taskgen.ProcessOrderParameters(orderId=SLOW_ORDER_ID), with_timeout("1s"), FAST_RETRY),
            "slow order, timeout 1s x2, hook records"),
        DemoTask(await runner.run_send_notification(taskgen.SendNotificationParameters(
            userId=1, message="your order shipped", priority="high"), with_retry_policy("1s", 3)),
            "notification: rate-limited once"),
        DemoTask(await runner.run_delete_opaque_key(taskgen.DeleteOpaqueKeyParameters(keyID=7)), "delete key 7"),
        DemoTask(await runner.run_delete_opaque_key(taskgen.DeleteOpaqueKeyParameters(keyID=999), FAST_RETRY),
                 "delete missing key: 2 errors, hook alerts"),
    ]


HOOK_WRITES = """
select t.id,
    coalesce(
        (select 'payment_audit' from examples.payment_audit a where a.task_id = t.id),
        (select 'order_failures' from examples.order_failures o where o.task_id = t.id),
        (select 'escalations' from examples.escalations e where e.task_id = t.id),
        (select 'security_alerts' from examples.security_alerts s where s.task_id = t.id),
        '-') as hook_wrote,
    t.name, t.state, t.attempts, coalesce(t.last_error, '') as last_error
from anchor.tasks t where t.id = any(%s) order by t.id
"""


def print_table(rows: list[dict[str, Any]], stories: dict[int, str]) -> None:
    headers = ["id", "task", "story", "state", "attempts", "hook wrote", "last error"]
    table = [[str(r["id"]), r["name"], stories[r["id"]], r["state"], str(r["attempts"]), r["hook_wrote"],
              r["last_error"][:40]] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    for line in [headers, ["-" * w for w in widths], *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


async def main() -> int:
    configure_logging("WARNING")  # the failures and hooks, as the worker reports them
    dsn = resolve_dsn()
    install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("insert into examples.opaque_keys values (7) on conflict do nothing")
        conn.execute("select anchor.register_tasks(%s::jsonb, %s)",
                     (taskgen.TASKS.definitions_json(), taskgen.TASKS.version))

    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}, open=False) as pool:
        await pool.open()
        tasks = await enqueue_examples(taskgen.AsyncTaskRunner(pool))
    ids = [task.id for task in tasks]
    print(f"enqueued {len(ids)} example tasks; running a worker until they are all final...")

    worker = Worker(dsn, Executor(dsn), taskgen.TASKS, WorkerConfig(poll_interval=0.2, concurrency=8))
    runner = asyncio.create_task(worker.run())
    rows: list[dict[str, Any]] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        for _ in range(300):
            cursor = await conn.execute(HOOK_WRITES, (ids,))
            rows = await cursor.fetchall()
            if all(row["state"] in FINAL_STATES for row in rows):
                break
            await asyncio.sleep(0.1)
    await worker.stop()
    await runner
    print()
    print_table(rows, {task.id: task.story for task in tasks})
    return 0 if all(row["state"] in FINAL_STATES for row in rows) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
