"""Flow-control limits with real workers: worker processes (`anchor worker`) and in-process Workers against a
real PostgreSQL. Limits are checked on what the database records (task states sampled while running, claim
times) and on what the executor recorded (start and end of each execution, by the database clock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from anchor_py.worker import WorkerConfig
from tests.worker.conftest import NO_POLL, Db, flow_enqueue, run_worker_until, states, wait_until_done

REPO = Path(__file__).resolve().parents[2]
ANCHOR = str(Path(sys.executable).parent / "anchor")


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of the intervals that overlap at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                   key=lambda edge: (edge[0], edge[1]))  # an end before a start at the same instant
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def recorded(db: Db, name: str) -> list[dict[str, Any]]:
    return db.execute("select * from flow_runs where name = %s order by started_at", (name,)).fetchall()


@pytest.fixture
def worker_processes(dsn: str) -> Iterator[list[subprocess.Popen[str]]]:
    """Two `anchor worker` processes of concurrency 10 running the flow tasks."""
    processes = [
        subprocess.Popen(
            [ANCHOR, "worker", "--app", "tests.worker.flowapp:make_executor", "--taskgen", "tests.worker.flowapp",
             "--dsn", dsn, "--concurrency", "10", "--poll-interval", "200ms"],
            cwd=REPO, env={**os.environ, "ANCHOR_TEST_DSN": dsn}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    try:
        yield processes
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                _, stderr = process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
            assert process.returncode == 0, stderr[-3000:]


class RunningSampler:
    """Counts the running tasks of a queue every few milliseconds, on a thread of its own."""

    def __init__(self, dsn: str, sql: str, args: tuple[Any, ...]) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(dsn, sql, args), daemon=True)

    def _run(self, dsn: str, sql: str, args: tuple[Any, ...]) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(sql, args).fetchone()
                assert row is not None
                self.samples.append(int(row[0]))
                time.sleep(0.005)

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_queue_limit_of_3_holds_across_two_worker_processes_of_10(
    dsn: str, flow_db: Db, worker_processes: list[subprocess.Popen[str]]
) -> None:
    ids = flow_enqueue(flow_db, "QueueLimited", [f"k{n}" for n in range(30)], sleep=0.15)
    with RunningSampler(dsn, "select count(*) from anchor.tasks where queue = 'limited' and state = 'running'",
                        ()) as sampler:
        wait_until_done(flow_db, ids, 60)
    # sampled while running: never more than 3, and the limit was used, not just respected by idleness
    assert max(sampler.samples) == 3, sorted(set(sampler.samples))
    runs = recorded(flow_db, "QueueLimited")
    assert len(runs) == 30
    assert most_at_once([(run["started_at"], run["ended_at"]) for run in runs]) == 3
    # both processes took part: the limit is shared, not per process
    assert len({run["worker_pid"] for run in runs}) == 2


def test_a_per_key_limit_of_1_runs_each_key_alone_and_keys_side_by_side(
    flow_db: Db, worker_processes: list[subprocess.Popen[str]]
) -> None:
    keys = [f"account-{n}" for n in range(4)]
    ids = flow_enqueue(flow_db, "PerKey", [key for _ in range(5) for key in keys], sleep=0.1)
    wait_until_done(flow_db, ids, 60)
    runs = recorded(flow_db, "PerKey")
    assert len(runs) == 20
    for key in keys:
        mine = [(run["started_at"], run["ended_at"]) for run in runs if run["key"] == key]
        assert len(mine) == 5 and most_at_once(mine) == 1, key
    # different keys overlapped: all four ran at once at some instant
    assert most_at_once([(run["started_at"], run["ended_at"]) for run in runs]) == 4


def test_a_later_key_is_not_held_up_by_an_earlier_keys_backlog(dsn: str, flow_db: Db) -> None:
    """1,000 due tasks of key A, then 10 of key B (limit 5 per key, one worker of 10 slots): B's ten all start
    before more than 25 of A's have started (2.5% of A's backlog). Without fairness they would start last."""
    a_ids = flow_enqueue(flow_db, "Fair", ["A"] * 1000, sleep=0.02)
    b_ids = flow_enqueue(flow_db, "Fair", ["B"] * 10, sleep=0.02)
    run_worker_until(dsn, WorkerConfig(concurrency=10, services=[]),
                     lambda: states(flow_db, b_ids).get("succeeded") == 10, 60)
    row = flow_db.execute(
        "select count(*) as n from anchor.tasks where id = any(%s) and attempts > 0"
        " and locked_at <= (select max(locked_at) from anchor.tasks where id = any(%s))",
        (a_ids, b_ids),
    ).fetchone()
    assert row is not None and row["n"] <= 25, f"{row} of A's tasks started before B's last one"


def test_a_rate_limit_is_never_exceeded_in_any_window_and_the_worker_wakes_for_the_next_one(
    dsn: str, flow_db: Db
) -> None:
    """5 starts per second, 17 tasks due at once, a worker of 10 slots that never polls: every sliding window of
    1 s holds at most 5 claim times, and the held tasks start when their window opens (the claim's wake time),
    so the 17 take about 3 s, not a poll interval."""
    ids = flow_enqueue(flow_db, "Rated", [f"r{n}" for n in range(17)])
    elapsed = run_worker_until(dsn, NO_POLL, lambda: states(flow_db, ids).get("succeeded") == 17, 20)
    starts = [row["locked_at"] for row in flow_db.execute(
        "select locked_at from anchor.tasks where id = any(%s) order by locked_at", (ids,)).fetchall()]
    for index, start in enumerate(starts):
        in_window = [other for other in starts[index:] if other < start + timedelta(seconds=1)]
        assert len(in_window) <= 5, f"{len(in_window)} starts within 1s of {start}"
    # 17 at 5 per second: the last group starts 3 s after the first; waking late would take the 60 s poll
    assert 2.9 <= (starts[-1] - starts[0]).total_seconds() < 5, starts
    assert elapsed < 10


def test_a_slot_freed_by_another_claimer_wakes_a_waiting_worker_at_once(dsn: str, flow_db: Db) -> None:
    """Single allows one running task. Another claimer (here: the SQL API, as another worker would) holds the
    slot; this worker, which never polls, starts the next task within 1.5 s of the slot being freed."""
    first, second = flow_enqueue(flow_db, "Single", ["first", "second"])
    flow_db.execute("select anchor.heartbeat_v2('other-worker', '{}'::bigint[], '{}'::jsonb, '1 hour')")
    held = flow_db.execute("select id, fence from anchor.claim_v2('other-worker', 5, array['Single'])"
                           " where kind = 'execute'").fetchall()
    assert [row["id"] for row in held] == [first]
    freed: list[float] = []

    def second_done() -> bool:
        if not freed and time.monotonic() - began > 2:
            # the worker has been up for 2 s and claimed nothing: the slot is taken
            assert states(flow_db, [second]) == {"pending": 1}
            flow_db.execute("select * from anchor.complete_v2(array[%s]::bigint[], array[%s]::bigint[],"
                            " 'other-worker')", (first, held[0]["fence"]))
            freed.append(time.monotonic())
        return bool(freed) and states(flow_db, [second]) == {"succeeded": 1}

    began = time.monotonic()
    run_worker_until(dsn, NO_POLL, second_done, 10)
    assert time.monotonic() - freed[0] < 1.5, "the freed slot did not wake the worker"
