"""Workflows through real workers (three in one process, each with its own connections and worker id): a chain
runs in order, a fan-in runs once after all of its dependencies and sees their typed results, a failed
dependency cancels its dependents down the chain with the reason recorded, and cancel / pause / resume of a
parent reach every descendant."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from anchor_py import admin, queries
from anchor_py.taskcore import with_delay, with_depends_on, with_parent
from anchor_py.worker import Worker
from examples.zgen import taskgen
from tests.worker.conftest import FAST, events, task, wait_for
from tests.worker.workflow_app import WorkflowExecutor, order_fingerprint

Conn = psycopg.Connection[dict[str, Any]]
ANCHOR = str(Path(sys.executable).parent / "anchor")
PATH = "/data/words.txt"


def chunk(n: int, text: str = "one two three\n") -> taskgen.ProcessChunkParameters:
    return taskgen.ProcessChunkParameters(path=PATH, chunk=n, text=text)


MERGE = taskgen.MergeChunksParameters(path=PATH)


@pytest.fixture
def guide_db(db: Conn) -> Conn:
    tasks = taskgen.TASKS
    db.execute(queries.REGISTER_TASKS, tasks.registration())
    return db


@contextlib.asynccontextmanager
async def workers(dsn: str, executor: WorkflowExecutor, count: int = 3) -> AsyncIterator[list[Worker]]:
    started = [Worker(dsn, executor, taskgen.TASKS, FAST) for _ in range(count)]
    running = [asyncio.create_task(worker.run()) for worker in started]
    try:
        yield started
    finally:
        for worker in started:
            await worker.stop()
        await asyncio.gather(*running)


def states(db: Conn, ids: list[int]) -> list[str]:
    rows = db.execute("select id, state from anchor.tasks where id = any(%s)", (ids,)).fetchall()
    by_id = {row["id"]: row["state"] for row in rows}
    return [by_id[i] for i in ids]


def test_a_chain_runs_in_order(guide_db: Conn, dsn: str) -> None:
    runner = taskgen.TaskRunner(guide_db)
    chain = [runner.run_process_chunk(chunk(0))]
    for n in range(1, 30):
        chain.append(runner.run_process_chunk(chunk(n), with_depends_on(chain[-1])))
    assert states(guide_db, chain) == ["pending"] + ["blocked"] * 29

    async def scenario() -> None:
        async with workers(dsn, executor):
            await wait_for(lambda: task(guide_db, chain[-1])["state"] == "succeeded", 30)

    executor = WorkflowExecutor(chunk_sleep=0.01)
    asyncio.run(scenario())
    rows = [task(guide_db, task_id) for task_id in chain]
    assert [row["attempts"] for row in rows] == [1] * 30
    assert all(executor.runs[task_id] == 1 for task_id in chain)
    # each link was claimed only after the one before it had finished
    for before, after in zip(rows, rows[1:], strict=False):
        assert after["locked_at"] >= before["finished_at"], (before["id"], after["id"])
    unblocked = [e for e in events(guide_db, chain[5]) if e["kind"] == "unblocked"]
    assert len(unblocked) == 1


def test_a_fan_in_runs_once_after_all_dependencies_and_sees_their_results(guide_db: Conn, dsn: str) -> None:
    executor = WorkflowExecutor(chunk_sleep=0.005)

    async def scenario() -> taskgen.MergeChunksResult | None:
        async with (
            workers(dsn, executor),
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        ):
            runner = taskgen.AsyncTaskRunner(conn)
            flow = await runner.run_fan_out([chunk(n, "a b\n" * (n + 1)) for n in range(60)], MERGE)
            fan_out.extend(flow.task_ids)
            fan_out.append(flow.fan_in_id)
            return await runner.wait_merge_chunks(flow.fan_in_id, timeout=60)

    fan_out: list[int] = []
    result = asyncio.run(scenario())
    *chunks, merge = fan_out
    assert result is not None and result.chunks == 60
    assert result.words == sum(2 * (n + 1) for n in range(60))
    assert executor.runs[merge] == 1 and task(guide_db, merge)["attempts"] == 1
    seen = executor.seen[merge]
    assert [d.task_id for d in seen] == chunks  # ordered by task id: the fan-out's order
    assert {d.task_name for d in seen} == {"ProcessChunk"}
    assert seen[7].result == taskgen.ProcessChunkResult(chunk=7, lines=8, words=16)
    assert result.lines == order_fingerprint(seen)
    last_chunk = max(task(guide_db, c)["finished_at"] for c in chunks)
    assert task(guide_db, merge)["locked_at"] >= last_chunk


def test_a_task_without_dependencies_sees_none(guide_db: Conn, dsn: str) -> None:
    executor = WorkflowExecutor()

    async def scenario() -> None:
        async with workers(dsn, executor, count=1):
            await wait_for(lambda: task(guide_db, merge)["state"] == "succeeded", 20)

    merge = taskgen.TaskRunner(guide_db).run_merge_chunks(MERGE)
    asyncio.run(scenario())
    assert executor.seen[merge] == ()
    assert task(guide_db, merge)["result"] == {"chunks": 0, "lines": 0, "words": 0}


def show(dsn: str, task_id: int) -> str:
    result = subprocess.run([ANCHOR, "tasks", "show", str(task_id), "--dsn", dsn], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_failed_dependency_cancels_its_dependents_down_the_chain(guide_db: Conn, dsn: str) -> None:
    runner = taskgen.TaskRunner(guide_db)
    bad = runner.run_process_chunk(chunk(0, "fail"))
    good = runner.run_process_chunk(chunk(1))
    second = runner.run_process_chunk(chunk(2), with_depends_on(bad))
    third = runner.run_process_chunk(chunk(3), with_depends_on(second))
    merge = runner.run_merge_chunks(MERGE, with_depends_on(good, bad))
    executor = WorkflowExecutor()

    async def scenario() -> None:
        async with workers(dsn, executor):
            await wait_for(lambda: states(guide_db, [bad, good]) == ["failed", "succeeded"], 20)
            await asyncio.sleep(0.5)  # nothing else may run

    asyncio.run(scenario())
    assert states(guide_db, [second, third, merge]) == ["cancelled"] * 3
    assert not {second, third, merge} & set(executor.runs)
    (cancelled,) = [e for e in events(guide_db, third) if e["kind"] == "cancelled"]
    assert cancelled["details"]["dependency"] == second
    assert str(second) in task(guide_db, third)["last_error"]
    assert str(bad) in task(guide_db, merge)["last_error"]
    shown = show(dsn, third)
    assert "[cancelled]" in shown and f"dependency {second}" in shown
    assert f"depends on    {second} ProcessChunk [cancelled]" in shown
    shown_bad = show(dsn, bad)
    assert f"dependents    {second} ProcessChunk [cancelled]" in shown_bad and f"{merge} MergeChunks" in shown_bad


def build_tree(db: Conn) -> dict[str, int]:
    """A parent (delayed) with a running child, a pending child, and a merge child depending on both, which has a
    grandchild of its own."""
    runner = taskgen.TaskRunner(db)
    parent = runner.run_split_file(taskgen.SplitFileParameters(path=PATH, lines_per_chunk=1), with_delay("1h"))
    slow = runner.run_process_chunk(chunk(0, "slow"), with_parent(parent))
    later = runner.run_process_chunk(chunk(1), with_parent(parent), with_delay("1h"))
    merge = runner.run_merge_chunks(MERGE, with_parent(parent), with_depends_on(slow, later))
    grandchild = runner.run_process_chunk(chunk(2), with_parent(merge), with_delay("1h"))
    return {"parent": parent, "slow": slow, "later": later, "merge": merge, "grandchild": grandchild}


def test_cancel_of_a_parent_reaches_every_descendant(guide_db: Conn, dsn: str) -> None:
    tree = build_tree(guide_db)
    executor = WorkflowExecutor(chunk_sleep=30)

    async def scenario() -> None:
        async with workers(dsn, executor, count=1):
            await wait_for(lambda: task(guide_db, tree["slow"])["state"] == "running", 20)
            outcome = admin.cancel_task(guide_db, tree["parent"])
            assert outcome == "cancelled; descendants: 1 cancel_requested, 3 cancelled"
            await wait_for(lambda: task(guide_db, tree["slow"])["state"] == "cancelled", 20)

    asyncio.run(scenario())
    assert states(guide_db, list(tree.values())) == ["cancelled"] * 5
    assert executor.runs == {tree["slow"]: 1}


def test_pause_of_a_parent_reaches_every_descendant_and_resume_restores_each(guide_db: Conn, dsn: str) -> None:
    tree = build_tree(guide_db)
    ids = list(tree.values())
    before = states(guide_db, ids)
    assert before == ["pending", "pending", "pending", "blocked", "pending"]
    assert admin.pause_task(guide_db, tree["parent"]) == "paused; descendants: 4 paused"
    assert states(guide_db, ids) == ["paused"] * 5
    executor = WorkflowExecutor()

    async def scenario() -> None:
        async with workers(dsn, executor, count=1):
            await asyncio.sleep(1.5)  # a paused task is never claimed, even when due
            assert executor.runs == {}
            assert admin.resume_task(guide_db, tree["parent"]) == "pending; descendants: 1 blocked, 3 pending"
            await wait_for(lambda: task(guide_db, tree["slow"])["state"] == "succeeded", 20)

    asyncio.run(scenario())
    # each back where it was: the merge still waits for the delayed chunk
    assert states(guide_db, ids) == ["pending", "succeeded", "pending", "blocked", "pending"]
    assert executor.runs == {tree["slow"]: 1}
    kinds = [e["kind"] for e in events(guide_db, tree["merge"])]
    assert kinds[:2] == ["paused", "resumed"]
