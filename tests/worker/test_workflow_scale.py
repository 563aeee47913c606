"""Workflows at size, through three `anchor worker` processes: a 10,000-wide fan-out with its fan-in, and a
1,000-deep chain, each within a stated bound (generous for a shared 2-core machine: on a quiet one the fan-out
takes a few seconds and the chain ~10 ms per link).

The bounds: the 10,000 chunks and the fan-in finish within 120 s of the workers starting; the chain's 1,000
links within 120 s (unblocking a link wakes the workers at once, so a link never waits for a poll)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from anchor_py import queries
from anchor_py.taskcore import with_depends_on
from examples.zgen import taskgen

Conn = psycopg.Connection[dict[str, Any]]
REPO = Path(__file__).resolve().parents[2]
ANCHOR = str(Path(sys.executable).parent / "anchor")
BOUND_S = 120.0


@pytest.fixture
def guide_db(db: Conn) -> Conn:
    tasks = taskgen.TASKS
    db.execute(queries.REGISTER_TASKS, tasks.registration())
    return db


@contextmanager
def worker_processes(dsn: str, count: int = 3) -> Iterator[None]:
    procs = [
        subprocess.Popen(
            [ANCHOR, "worker", "--app", "tests.worker.workflow_app:make_executor", "--taskgen", "examples.zgen.taskgen",
             "--dsn", dsn, "--concurrency", "50", "--poll-interval", "1s", "--log-level", "WARNING"],
            cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            _, stderr = proc.communicate(timeout=30)
            assert proc.returncode == 0, stderr
            assert "Traceback" not in stderr, stderr


def wait_until(db: Conn, sql: str, timeout: float) -> float:
    """Seconds until `sql` returned true; fails past `timeout`."""
    started = time.monotonic()
    while not db.execute(sql).fetchone()["done"]:  # type: ignore[index]
        assert time.monotonic() - started < timeout, f"not done within {timeout:g}s: {sql}"
        time.sleep(0.2)
    return time.monotonic() - started


def test_a_10000_wide_fan_out_and_its_fan_in(guide_db: Conn, dsn: str) -> None:
    flow = taskgen.TaskRunner(guide_db).run_fan_out(
        [taskgen.ProcessChunkParameters(path="big", chunk=n, text=f"word {n}\n") for n in range(10_000)],
        taskgen.MergeChunksParameters(path="big"),
    )
    assert len(flow.task_ids) == 10_000
    with worker_processes(dsn):
        wait_until(guide_db, f"select state = 'succeeded' as done from anchor.tasks where id = {flow.fan_in_id}",
                   BOUND_S)
    merge = guide_db.execute("select * from anchor.tasks where id = %s", (flow.fan_in_id,)).fetchone()
    assert merge is not None and merge["attempts"] == 1
    assert (merge["result"]["chunks"], merge["result"]["words"]) == (10_000, 20_000)
    chunks = guide_db.execute(
        "select count(*) filter (where state = 'succeeded') as ok, max(finished_at) as last, "
        "count(distinct locked_by) as workers from anchor.tasks where id = any(%s)", (flow.task_ids,)).fetchone()
    assert chunks is not None and chunks["ok"] == 10_000
    assert merge["locked_at"] >= chunks["last"]
    assert chunks["workers"] >= 2  # the work was shared


def test_a_1000_deep_chain(guide_db: Conn, dsn: str) -> None:
    runner = taskgen.TaskRunner(guide_db)
    chain = [runner.run_process_chunk(taskgen.ProcessChunkParameters(path="chain", chunk=0, text="x\n"))]
    for n in range(1, 1000):
        params = taskgen.ProcessChunkParameters(path="chain", chunk=n, text="x\n")
        chain.append(runner.run_process_chunk(params, with_depends_on(chain[-1])))
    with worker_processes(dsn):
        wait_until(guide_db, f"select state = 'succeeded' as done from anchor.tasks where id = {chain[-1]}", BOUND_S)
    out_of_order = guide_db.execute(
        "select count(*) as n from anchor.tasks t join anchor.tasks p on p.id = t.id - 1 "
        "where t.id = any(%s) and t.id > %s and (t.locked_at < p.finished_at or t.attempts <> 1)",
        (chain, chain[0]),
    ).fetchone()
    assert out_of_order is not None and out_of_order["n"] == 0
    assert guide_db.execute("select count(*) as n from anchor.tasks where state = 'succeeded'").fetchone() == {
        "n": 1000}
