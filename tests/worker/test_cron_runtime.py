"""Runtime cron schedules from Python: the generated ``schedule_*`` and ``unschedule`` on both runners, bad
expressions and zones refused before anything is sent, and a runtime schedule fired once per fire time by
two cron services and by two workers running at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pydantic
import pytest
from psycopg_pool import AsyncConnectionPool

from anchor_py import queries
from anchor_py.cron import CronService
from anchor_py.cron_times import CronError
from anchor_py.runner import TaskRunnerBase
from anchor_py.taskcore import TaskContext
from anchor_py.taskspec import TaskSet, TaskSpec
from anchor_py.worker import Worker, WorkerConfig
from examples.zgen import taskgen
from tests.sql.factories import claim, complete
from tests.worker.test_cron import FAST, at, sync

Conn = psycopg.Connection[dict[str, Any]]


def register(db: Conn, tasks: TaskSet) -> None:
    db.execute(queries.REGISTER_TASKS, tasks.registration())


def schedule_row(db: Conn, name: str) -> dict[str, Any] | None:
    return db.execute("select * from anchor.cron_schedules where name = %s", (name,)).fetchone()


def schedule_count(db: Conn) -> int:
    row = db.execute("select count(*) as n from anchor.cron_schedules where source = 'runtime'").fetchone()
    assert row is not None
    return int(row["n"])


EMAIL = taskgen.SendEmailParameters(user_id=42, template_id="digest")


def test_the_sync_runner_schedules_replaces_and_unschedules(db: Conn) -> None:
    register(db, taskgen.TASKS)
    runner = taskgen.TaskRunner(db)
    assert runner.schedule_send_email("digest:user-42", "0 0 9 * * 1", EMAIL, "Europe/Berlin") == "created"
    row = schedule_row(db, "digest:user-42")
    assert row is not None
    assert (row["source"], row["task_name"], row["expression"], row["timezone"], row["params"]) == (
        "runtime",
        "SendEmail",
        "0 0 9 * * 1",
        "Europe/Berlin",
        {"userId": 42, "templateId": "digest"},
    )
    assert runner.schedule_send_email("digest:user-42", "0 0 9 * * 1", EMAIL, "Europe/Berlin") == "unchanged"
    assert runner.schedule_send_email("digest:user-42", "0 0 8 * * 1", EMAIL) == "replaced"
    assert schedule_row(db, "digest:user-42")["timezone"] == "UTC"  # type: ignore[index]
    assert runner.unschedule("digest:user-42") is True
    assert runner.unschedule("digest:user-42") is False
    assert schedule_count(db) == 0


def test_the_async_runner_schedules_and_unschedules_through_a_pool(db: Conn, dsn: str) -> None:
    register(db, taskgen.TASKS)

    async def scenario() -> tuple[str, bool, bool]:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
            runner = taskgen.AsyncTaskRunner(pool)
            order = taskgen.ProcessOrderParameters(order_id=7)
            created = await runner.schedule_process_order("orders:nightly", "0 0 3 * * *", order)
            assert schedule_row(db, "orders:nightly")["params"] == {"orderId": 7}  # type: ignore[index]
            return created, await runner.unschedule("orders:nightly"), await runner.unschedule("orders:nightly")

    assert asyncio.run(scenario()) == ("created", True, False)
    assert schedule_count(db) == 0


def test_a_yaml_schedule_cannot_be_unscheduled(db: Conn) -> None:
    register(db, taskgen.TASKS)
    with pytest.raises(psycopg.Error) as info:
        taskgen.TaskRunner(db).unschedule("DailyCleanup")
    assert info.value.sqlstate == "AT003"
    assert "comes from the cronjob of task DailyCleanup" in str(info.value)
    assert schedule_row(db, "DailyCleanup") is not None


def test_database_errors_name_the_problem(db: Conn) -> None:
    register(db, taskgen.TASKS)
    runner = taskgen.TaskRunner(db)
    with pytest.raises(psycopg.Error) as info:
        runner.schedule_send_email("SendEmail", "* * * * *", EMAIL)
    assert info.value.sqlstate == "AT003" and "is the name of a task" in str(info.value)
    with pytest.raises(psycopg.Error) as info:
        runner.schedule_send_email("x" * 300, "* * * * *", EMAIL)
    assert info.value.sqlstate == "AT003" and "over the limit of 255 bytes" in str(info.value)
    assert schedule_count(db) == 0


@pytest.mark.parametrize(
    ("expression", "timezone", "message"),
    [
        (
            "0 9 * *",
            None,
            "schedule 'bad': cron expression '0 9 * *' has 4 fields; expected six "
            "(second minute hour day-of-month month day-of-week) or five (second 0)",
        ),
        ("0 0 25 * * *", None, "schedule 'bad': cron expression '0 0 25 * * *' is invalid"),
        ("0 0 9 * * *", "Mars/Olympus", "schedule 'bad': timezone 'Mars/Olympus' is not a known time zone name"),
        ("0 0 9 * * *", "", "schedule 'bad': timezone '' is not a known time zone name"),
    ],
)
def test_a_bad_expression_or_zone_is_refused_before_anything_is_sent(
    db: Conn, dsn: str, expression: str, timezone: str | None, message: str
) -> None:
    register(db, taskgen.TASKS)
    # a closed connection: any statement sent would raise OperationalError instead of CronError
    closed = psycopg.connect(dsn)
    closed.close()
    for runner in (taskgen.TaskRunner(db), taskgen.TaskRunner(closed)):
        with pytest.raises(CronError) as info:
            runner.schedule_send_email("bad", expression, EMAIL, timezone)
        assert str(info.value).startswith(message), str(info.value)

    async def refused_async() -> str:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.close()
            with pytest.raises(CronError) as info:
                await taskgen.AsyncTaskRunner(conn).schedule_send_email("bad", expression, EMAIL, timezone)
            return str(info.value)

    assert asyncio.run(refused_async()).startswith(message)
    assert schedule_count(db) == 0


def test_params_of_another_task_are_refused_before_anything_is_sent(db: Conn) -> None:
    register(db, taskgen.TASKS)
    with pytest.raises(TypeError, match="task SendEmail takes SendEmailParameters, got ProcessOrderParameters"):
        taskgen.TaskRunner(db).schedule_send_email(
            "s", "* * * * *", taskgen.ProcessOrderParameters(order_id=1)  # type: ignore[arg-type]
        )
    with pytest.raises(TypeError, match="cron_expression must be a string, got int"):
        taskgen.TaskRunner(db).schedule_send_email("s", 5, EMAIL)  # type: ignore[arg-type]
    assert schedule_count(db) == 0


# --- once per fire time ------------------------------------------------------------------------------------


class NoParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)


class PingExecutor:
    def __init__(self) -> None:
        self.seen: list[tuple[int, datetime | None]] = []

    async def execute_ping(self, ctx: TaskContext, params: NoParams) -> None:
        self.seen.append((ctx.task_id, ctx.scheduled_at))


PING = TaskSet(
    [
        TaskSpec(
            name="Ping",
            description="no cronjob of its own: only runtime schedules fire it",
            params_model=NoParams,
            execute_method="execute_ping",
            hook_method=None,
            definition={"name": "Ping", "parameters": {"type": "object"}},
        )
    ]
)


def pings(db: Conn) -> list[dict[str, Any]]:
    return db.execute("select * from anchor.tasks where name = 'Ping' order by scheduled_at, id").fetchall()


@sync
async def test_two_cron_services_at_the_same_instant_enqueue_each_fire_time_once(dsn: str, db: Conn) -> None:
    register(db, PING)
    assert TaskRunnerBase(db).schedule("Ping", "ping:minutely", "0 * * * * *", NoParams()) == "created"
    first, second = CronService(dsn, FAST), CronService(dsn, FAST)
    await first.run_once(now=at(2024, 5, 1, 0, 0, 30))  # computes the first fire time, 00:01:00
    for minute in range(1, 6):
        now = at(2024, 5, 1, 0, minute, 0, micro=200_000)
        rounds = await asyncio.gather(first.run_once(now=now), second.run_once(now=now))
        assert sorted(len(r.enqueued) for r in rounds) == [0, 1], rounds
        # the task runs before the next fire (overlap: skip would otherwise skip it)
        (row,) = claim(db, now=now)
        assert complete(db, row["id"], row["attempt"]) == "succeeded"
    fired = [t["scheduled_at"] for t in pings(db)]
    assert fired == [at(2024, 5, 1, 0, minute, 0) for minute in range(1, 6)]
    fires = db.execute("select fire_at, outcome from anchor.cron_fires where name = 'ping:minutely'").fetchall()
    assert sorted(f["fire_at"] for f in fires) == fired and {f["outcome"] for f in fires} == {"enqueued"}


@sync
async def test_the_cron_loop_pauses_a_runtime_schedule_sql_could_not_check(dsn: str, db: Conn) -> None:
    register(db, PING)
    for name, expression, zone in (("bad:expr", "every monday", "UTC"), ("bad:zone", "0 0 9 * * 1", "Mars/Olympus"),
                                   ("good", "0 0 9 * * 1", "Europe/Berlin")):
        db.execute("select anchor.cron_upsert(%s, 'Ping', %s, '{}', %s)", (name, expression, zone))
    result = await CronService(dsn, FAST).run_once(now=at(2024, 5, 1, 12))
    assert dict(result.paused) == {
        "bad:expr": "cron expression 'every monday' has 2 fields; expected six "
        "(second minute hour day-of-month month day-of-week) or five (second 0)",
        "bad:zone": "timezone 'Mars/Olympus' is not a known time zone name (e.g. 'Europe/Berlin')",
    }
    rows = {r["name"]: r for r in db.execute("select * from anchor.cron_list_v2()").fetchall()}
    assert (rows["bad:expr"]["paused"], rows["bad:zone"]["paused"], rows["good"]["paused"]) == (True, True, False)
    assert rows["good"]["next_fire_at"] == at(2024, 5, 6, 7)  # Monday 09:00 in Berlin (CEST)


@sync
async def test_two_workers_run_a_runtime_every_second_schedule_once_per_fire_time(dsn: str, db: Conn) -> None:
    register(db, PING)
    TaskRunnerBase(db).schedule("Ping", "ping:every-second", "* * * * * *", NoParams())
    config = WorkerConfig(poll_interval=timedelta(seconds=0.5), heartbeat_interval=timedelta(seconds=0.5),
                          heartbeat_timeout=timedelta(seconds=3), concurrency=2)
    executors = [PingExecutor() for _ in range(2)]
    workers = [Worker(dsn, executor, PING, config) for executor in executors]
    runs = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        await asyncio.sleep(6)
    finally:
        for worker in workers:
            await worker.stop()
        await asyncio.wait_for(asyncio.gather(*runs), 15)
    rows = pings(db)
    fired = [t["scheduled_at"] for t in rows]
    assert 5 <= len(fired) <= 7, fired
    assert len(set(fired)) == len(fired), "no fire time twice"
    assert all(b - a == timedelta(seconds=1) for a, b in zip(fired, fired[1:], strict=False)), "no fire time skipped"
    seen = [entry for executor in executors for entry in executor.seen]
    assert len(seen) == len({task_id for task_id, _ in seen}) >= len(fired) - 1
    by_id = {t["id"]: t["scheduled_at"] for t in rows}
    assert all(scheduled == by_id[task_id] for task_id, scheduled in seen), "ctx.scheduled_at is the fire time"
    listed = db.execute("select fired_count from anchor.cron_list_v2() where name = 'ping:every-second'").fetchone()
    assert listed == {"fired_count": len(fired)}
    # the definitions the workers registered on start left the runtime schedule in place
    assert schedule_row(db, "ping:every-second")["source"] == "runtime"  # type: ignore[index]
    assert datetime.now(UTC) - fired[-1] < timedelta(seconds=5)
