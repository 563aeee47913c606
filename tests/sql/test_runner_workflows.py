"""The runners' workflow side: with_depends_on / with_parent reach the SQL core, run_<task>_many applies them to
every task, and run_fan_out enqueues a fan-out and its fan-in in one statement (all or nothing), sync and async."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from anchor_py import queries
from anchor_py.taskcore import InvalidOverride, with_delay, with_depends_on, with_parent, with_unique_tag
from examples.zgen import taskgen

Conn = psycopg.Connection[dict[str, Any]]


def chunks(*numbers: int) -> list[taskgen.ProcessChunkParameters]:
    return [taskgen.ProcessChunkParameters(path="f", chunk=n, text="x") for n in numbers]


MERGE = taskgen.MergeChunksParameters(path="f")


@pytest.fixture
def guide_db(db: Conn) -> Conn:
    tasks = taskgen.TASKS
    db.execute(queries.REGISTER_TASKS, tasks.registration())
    return db


def dependencies(db: Conn) -> list[tuple[int, int]]:
    rows = db.execute("select task_id, depends_on from anchor.task_dependencies order by 1, 2").fetchall()
    return [(r["task_id"], r["depends_on"]) for r in rows]


def count(db: Conn) -> int:
    row = db.execute("select count(*) as n from anchor.tasks").fetchone()
    assert row is not None
    return int(row["n"])


def test_dependencies_and_parent_reach_one_task_and_every_task_of_a_many(guide_db: Conn) -> None:
    runner = taskgen.TaskRunner(guide_db)
    parent = runner.run_split_file(taskgen.SplitFileParameters(path="f", lines_per_chunk=1))
    first = runner.run_process_chunk(chunks(0)[0], with_parent(parent))
    many = runner.run_process_chunk_many(chunks(1, 2), with_depends_on(first), with_parent(parent))
    assert dependencies(guide_db) == [(many[0], first), (many[1], first)]
    rows = guide_db.execute("select id, state, parent_id from anchor.tasks order by id").fetchall()
    assert [(r["state"], r["parent_id"]) for r in rows] == [
        ("pending", None), ("pending", parent), ("blocked", parent), ("blocked", parent)]


def test_run_fan_out_enqueues_the_list_and_a_fan_in_depending_on_all_of_it(guide_db: Conn) -> None:
    runner = taskgen.TaskRunner(guide_db)
    earlier = runner.run_process_chunk(chunks(9)[0])
    flow = runner.run_fan_out(chunks(0, 1, 2), MERGE, with_delay("1h"),
                              fan_in_overrides=[with_depends_on(earlier)])
    assert len(flow.task_ids) == 3 and flow.fan_in_id > max(flow.task_ids)
    assert dependencies(guide_db) == sorted([(flow.fan_in_id, t) for t in [*flow.task_ids, earlier]])
    row = guide_db.execute("select name, state from anchor.tasks where id = %s", (flow.fan_in_id,)).fetchone()
    assert row == {"name": "MergeChunks", "state": "blocked"}
    delayed = guide_db.execute("select count(*) as n from anchor.tasks where id = any(%s) and run_at > now()",
                               (flow.task_ids,)).fetchone()
    assert delayed == {"n": 3}  # the overrides went to the list


def test_a_refused_fan_in_leaves_nothing_behind(guide_db: Conn) -> None:
    runner = taskgen.TaskRunner(guide_db)
    with pytest.raises(psycopg.Error) as raised:
        runner.run_fan_out(chunks(0, 1), MERGE, fan_in_overrides=[with_depends_on(424242)])
    assert raised.value.sqlstate == "AT004" and "424242" in str(raised.value)
    assert count(guide_db) == 0


def test_run_fan_out_with_tx_rolls_back_with_the_callers_transaction(dsn: str, guide_db: Conn) -> None:
    with psycopg.connect(dsn) as conn:
        runner = taskgen.TaskRunner(conn)
        with pytest.raises(RuntimeError), conn.transaction():
            runner.run_fan_out_with_tx(conn, chunks(0, 1), MERGE)
            raise RuntimeError("the caller's work failed")
        with conn.transaction():
            kept = runner.run_fan_out_with_tx(conn, chunks(0), MERGE)
    assert count(guide_db) == 2 and dependencies(guide_db) == [(kept.fan_in_id, kept.task_ids[0])]


def test_the_async_runner_fans_out_too(dsn: str, guide_db: Conn) -> None:
    async def scenario() -> Any:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await taskgen.AsyncTaskRunner(conn).run_fan_out(chunks(0, 1), MERGE)

    flow = asyncio.run(scenario())
    assert dependencies(guide_db) == [(flow.fan_in_id, t) for t in flow.task_ids]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda r: r.run_fan_out([], MERGE), ValueError, "at least one task"),
        (lambda r: r.run_fan_out([*chunks(0), MERGE], MERGE), TypeError,
         "task ProcessChunk takes ProcessChunkParameters, got MergeChunksParameters"),
        (lambda r: r.run_fan_out(chunks(0), object()), TypeError, "object is not the parameters model of a task"),
        (lambda r: r.run_fan_out(chunks(0), MERGE, with_unique_tag("t")), InvalidOverride,
         "cannot apply to a list of tasks"),
        (lambda r: r.run_fan_out_with_tx(r._db, chunks(0), MERGE), ValueError, "autocommit"),
    ],
)
def test_bad_fan_outs_are_refused_before_anything_is_sent(guide_db: Conn, call: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        call(taskgen.TaskRunner(guide_db))
    assert count(guide_db) == 0
