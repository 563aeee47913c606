"""Hostile input never stops the runtime.

The SQL-level property of test_hostile_inputs, on the real runtime: whatever an application holding only
anchor_enqueuer enqueues (the same hostile params and overrides), and whatever params and next fire time a
cron schedule holds, a Worker's run_until_empty, the cron service's and the pruner's rounds and
anchor.rescue return normally; the worker runs everything that was due when it started; every enqueued task
ends final (what is left for later is driven there by drain_as_admin); and a normal task enqueued afterwards
is run by a Worker and succeeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from anchor_py import TaskContext
from anchor_py.cron import CronService
from anchor_py.pruner import Pruner
from anchor_py.taskspec import TaskSet, TaskSpec
from anchor_py.worker import Worker, WorkerConfig
from tests.fuzz.test_hostile_inputs import CALLS, FINAL, PARAMS, TIMES, drain_as_admin, try_enqueue
from tests.sql.factories import Conn, definition
from tests.sql.hostile import as_role, one

FAST = timedelta(milliseconds=200)


class AnyParams(pydantic.BaseModel):
    """Takes any JSON object: what the runtime does with the values is under test, not a schema."""

    model_config = pydantic.ConfigDict(extra="allow")


def _spec(name: str, method: str, hook: str | None, **fields: Any) -> TaskSpec:
    return TaskSpec(name=name, description=name, params_model=AnyParams, execute_method=method, hook_method=hook,
                    definition=definition(name, on_failed=hook is not None, **fields))


# the task names of test_hostile_inputs (its CALLS enqueue them), and one cron task; retries are bounded by
# the executors (they succeed from the third attempt), so a zero retry interval cannot keep a worker busy
TASKS = TaskSet([
    _spec("Job", "execute_job", None, parameters={"type": "object", "properties": {
        "n": {"type": "integer"}, "x": {"type": "number"}, "s": {"type": "string"}, "any": {},
    }}),
    _spec("Forever", "execute_forever", None, parameters={"type": "object"}, max_attempts=-1),
    _spec("Hooked", "execute_hooked", "on_hooked_failed", parameters={"type": "object"}, max_attempts=1),
    _spec("Ticking", "execute_ticking", None, parameters={"type": "object"},
          cron={"expression": "* * * * * *", "overlap": "allow"}),
])


class Executor:
    """Async and sync executions that succeed, fail and fail into a hook."""

    async def execute_job(self, ctx: TaskContext, params: AnyParams) -> None:
        pass

    async def execute_forever(self, ctx: TaskContext, params: AnyParams) -> None:
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} fails")

    def execute_hooked(self, ctx: TaskContext, params: AnyParams) -> None:
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} fails")

    async def on_hooked_failed(self, ctx: TaskContext, task_id: int, params: AnyParams, tx: Any) -> None:
        await tx.execute("select 1")

    def execute_ticking(self, ctx: TaskContext, params: AnyParams) -> None:
        pass


# what a schedule row may hold when written directly (an older release, a hand edit): any params, any next
# fire time (half of them long past, so the schedule is due and fires)
SCHEDULES = st.tuples(PARAMS, st.just("1970-01-01 00:00:00+00") | TIMES)
HUGE = "9" * 5000  # more digits than Python's int() reads (4,300)
DEEP_400 = '{"any": ' + "[" * 400 + "1" + "]" * 400 + "}"
FAR_FUTURE = datetime.now(UTC) + timedelta(days=365 * 99)


@pytest.fixture
def app(db: Conn, dsn: str) -> Iterator[Conn]:
    db.execute("select anchor.ensure_roles()")
    db.execute("select anchor.register_tasks(%s::jsonb, %s)", (TASKS.definitions_json(), TASKS.version))
    with as_role(dsn, "anchor_enqueuer") as conn:
        yield conn


def _due_now(db: Conn) -> list[int]:
    return [r["id"] for r in db.execute(
        "select id from anchor.tasks where state = 'pending' and run_at <= now() order by id").fetchall()]


async def _run_worker(dsn: str, queues: list[str]) -> None:
    # no background services: the test runs each round itself, so a failing one raises here
    config = WorkerConfig(queues=queues, concurrency=4, poll_interval=FAST, heartbeat_interval=FAST,
                          rescue_interval=FAST, shutdown_grace=timedelta(seconds=2), register_tasks=False,
                          hook_timeout=timedelta(seconds=5), services=[])
    await Worker(dsn, Executor(), TASKS, config).run_until_empty(timeout=20)


def test_no_enqueued_value_stops_the_worker_cron_pruner_or_the_next_task(db: Conn, dsn: str, app: Conn) -> None:
    @settings(max_examples=10, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(CALLS, SCHEDULES)
    # the known hostile cases, every run: numbers no Python type holds, retries without pause, deep nesting,
    # times at the edges, a schedule whose params or next fire time cannot be used
    @example([("Job", f'{{"any": {HUGE}}}', {}), ("Hooked", '{"x": 1e400}', {"max_attempts": 1}),
              ("Forever", "{}", {"retry_intervals": '{"0"}', "max_attempts": 2147483647}),
              ("Job", "{}", {"run_at": "9999-12-31 23:59:59+00"})],
             (f'{{"n": {HUGE}}}', "1970-01-01 00:00:00+00"))
    @example([("Job", DEEP_400, {"run_at": "1930-01-01 00:00:00+00"}),
              ("Forever", '{"s": "\\ud800"}', {"run_at": "2125-01-01 00:00:00+00", "timeout": "100000 hours"}),
              ("Hooked", '{"n": -0}', {"queue": "x'); drop table anchor.tasks; --", "priority": -2147483648})],
             ("[" * 150 + "]" * 150, "-infinity"))
    @example([("Job", '{"x": 1.7976931348623157e308, "n": 9223372036854775808, "any": [[[[1e-400]]]]}',
               {"timeout": "100000 hours", "priority": 2147483647, "p_now": "1930-01-01 00:00:00+00"}),
              ("Hooked", '{"s": "\\u202e\\ud83d\\ude00"}', {"max_attempts": 1, "queue": "other"})],
             ('{"x": 1e308, "s": "\\u202e"}', "1970-01-01 00:00:00+00"))
    def check(calls: list[tuple[str, str, dict[str, Any]]], schedule: tuple[str, str]) -> None:
        ids = [i for i in (try_enqueue(app, *call) for call in calls) if i is not None]
        params, next_fire_at = schedule
        # earlier examples' fires are forgotten, or the same second would be a duplicate fire, not a task
        db.execute("delete from anchor.cron_fires")
        db.execute("update anchor.cron_schedules set params = %s::jsonb, next_fire_at = %s::timestamptz,"
                   " paused = false where name = 'Ticking'", (params, next_fire_at))
        asyncio.run(CronService(dsn).run_once())
        fired = [r["id"] for r in db.execute("select id from anchor.tasks where name = 'Ticking'").fetchall()]
        queues = [r["queue"] for r in db.execute("select distinct queue from anchor.tasks").fetchall()]
        due = _due_now(db)
        asyncio.run(_run_worker(dsn, queues))
        # the worker did not stop early: everything due when it started was taken at least once
        untouched = db.execute("select id from anchor.tasks where id = any(%s) and attempts = 0"
                               " and state = 'pending'", (due,)).fetchall()
        assert not untouched, f"the worker left due tasks it never claimed: {untouched}"
        with as_role(dsn, "anchor_worker") as worker:
            worker.execute("select * from anchor.rescue()").fetchall()
        asyncio.run(CronService(dsn).run_once())
        drain_as_admin(db, queues)
        mine = ids + fired
        states = db.execute("select id, name, state from anchor.tasks where id = any(%s)", (mine,)).fetchall()
        assert len(states) == len(mine) and all(r["state"] in FINAL for r in states), states
        asyncio.run(Pruner(dsn).run_once(now=FAR_FUTURE))
        left = db.execute("select id, state from anchor.tasks where id = any(%s)", (mine,)).fetchall()
        assert not left, f"the pruner left finished tasks: {left}"

        normal = int(one(app, "select anchor.enqueue('Job', '{\"n\": 1}')"))
        asyncio.run(_run_worker(dsn, ["default"]))
        assert one(db, "select state from anchor.tasks where id = %s", (normal,)) == "succeeded"

    check()
