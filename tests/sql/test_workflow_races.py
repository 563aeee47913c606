"""Workflows under races, on several connections: whichever of two transactions commits first, a dependent is
never left blocked for ever, never released twice, and a child enqueued while its parent is cancelled is
cancelled too. Each race holds one transaction open while the other runs in a thread until PostgreSQL shows
it waiting for a lock, then commits the first: both orders of every pair are run."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.sql.factories import (
    WORKER,
    Conn,
    add,
    definition,
    events,
    heartbeat,
    register,
    start,
    states,
    task,
)


@pytest.fixture(autouse=True)
def definitions(db: Conn) -> None:
    register(db, definition("Step"))


@pytest.fixture
def connect(dsn: str) -> Iterator[Callable[[], Conn]]:
    """Opens more connections to the test's database (transactions left to the test), closed at the end."""
    opened: list[Conn] = []

    def open_one() -> Conn:
        conn = psycopg.connect(dsn, row_factory=dict_row)
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        conn.close()


def complete(conn: Conn, task_id: int, fence: int) -> str:
    row = conn.execute(
        "select outcome from anchor.complete_v2(array[%s]::bigint[], array[%s]::bigint[], %s)", (task_id, fence, WORKER)
    ).fetchone()
    assert row is not None
    return str(row["outcome"])


def fail(conn: Conn, task_id: int, fence: int) -> str:
    row = conn.execute("select anchor.fail_v2(%s, %s, %s, 'boom', fatal => true) as o", (task_id, fence, WORKER))
    return str(row.fetchone()["o"])  # type: ignore[index]


def finish(conn: Conn, task_id: int, fence: int, ending: str) -> str:
    return complete(conn, task_id, fence) if ending == "succeeded" else fail(conn, task_id, fence)


class Blocked:
    """Runs `action` on its own connection in a thread, in a transaction it commits, and waits until the
    server shows that connection waiting for a lock (so the race is real, not a guess at timing)."""

    def __init__(self, db: Conn, conn: Conn, action: Callable[[Conn], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        pid = conn.info.backend_pid

        def run() -> None:
            try:
                with conn.transaction():
                    self.result = action(conn)
            except BaseException as err:  # noqa: BLE001 - handed to the test thread
                self.error = err

        self.thread = threading.Thread(target=run)
        self.thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = db.execute("select wait_event_type from pg_stat_activity where pid = %s", (pid,)).fetchone()
            if row is not None and row["wait_event_type"] == "Lock":
                return
            assert self.thread.is_alive(), f"the action did not wait for a lock: {self.error or self.result}"
            time.sleep(0.01)
        raise AssertionError("the action never waited for a lock")

    def join(self) -> Any:
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


def cancel(conn: Conn, task_id: int) -> str:
    return str(conn.execute("select anchor.cancel(%s) as o", (task_id,)).fetchone()["o"])  # type: ignore[index]


@pytest.mark.parametrize("first", ["cancel", "dependency"])
def test_a_dependency_succeeding_while_its_dependent_is_cancelled(
    db: Conn, connect: Callable[[], Conn], first: str
) -> None:
    dependency = add(db)
    dependent = add(db, depends_on=[dependency])
    fence = start(db, dependency)
    a, b = connect(), connect()
    if first == "cancel":
        assert cancel(a, dependent) == "cancelled"
        other = Blocked(db, b, lambda conn: complete(conn, dependency, fence))
        a.commit()
        assert other.join() == "succeeded"
    else:
        assert complete(a, dependency, fence) == "succeeded"
        other = Blocked(db, b, lambda conn: cancel(conn, dependent))
        a.commit()
        assert other.join() == "cancelled"
    assert states(db, dependency, dependent) == ["succeeded", "cancelled"]
    kinds = [e["kind"] for e in events(db, dependent)]
    assert kinds == (["cancelled"] if first == "cancel" else ["unblocked", "cancelled"])


@pytest.mark.parametrize("second_ending", ["succeeded", "failed"])
def test_two_dependencies_of_a_fan_in_finishing_at_once(
    db: Conn, connect: Callable[[], Conn], second_ending: str
) -> None:
    one, two = add(db), add(db)
    fan_in = add(db, depends_on=[one, two])
    fence_one, fence_two = start(db, one), start(db, two)
    a, b = connect(), connect()
    assert complete(a, one, fence_one) == "succeeded"
    other = Blocked(db, b, lambda conn: finish(conn, two, fence_two, second_ending))
    a.commit()
    other.join()
    if second_ending == "succeeded":
        assert (task(db, fan_in)["state"], task(db, fan_in)["unmet_dependencies"]) == ("pending", 0)
        assert [e["kind"] for e in events(db, fan_in)] == ["unblocked"]
    else:
        assert states(db, fan_in) == ["cancelled"]
        assert [e["details"]["dependency"] for e in events(db, fan_in)] == [two]


@pytest.mark.parametrize("ending", ["succeeded", "failed"])
@pytest.mark.parametrize("first", ["enqueue", "dependency"])
def test_enqueueing_a_dependent_while_its_dependency_finishes(
    db: Conn, connect: Callable[[], Conn], first: str, ending: str
) -> None:
    dependency = add(db)
    fence = start(db, dependency)
    a, b = connect(), connect()
    enqueue = "select anchor.enqueue('Step', depends_on => array[%s]::bigint[]) as id"
    if first == "enqueue":
        dependent = a.execute(enqueue, (dependency,)).fetchone()["id"]  # type: ignore[index]
        other = Blocked(db, b, lambda conn: finish(conn, dependency, fence, ending))
        a.commit()
        other.join()
    else:
        finish(a, dependency, fence, ending)
        other = Blocked(db, b, lambda conn: conn.execute(enqueue, (dependency,)).fetchone()["id"])  # type: ignore[index]
        a.commit()
        dependent = other.join()
    assert states(db, dependent) == ["pending" if ending == "succeeded" else "cancelled"]


@pytest.mark.parametrize("first", ["enqueue", "cancel"])
def test_a_child_enqueued_while_its_parent_is_cancelled_is_cancelled(
    db: Conn, connect: Callable[[], Conn], first: str
) -> None:
    parent = add(db)
    start(db, parent)
    a, b = connect(), connect()
    enqueue = "select anchor.enqueue('Step', parent_id => %s::bigint) as id"
    if first == "enqueue":
        child = a.execute(enqueue, (parent,)).fetchone()["id"]  # type: ignore[index]
        other = Blocked(db, b, lambda conn: cancel(conn, parent))
        a.commit()
        assert other.join() == "cancel_requested"
    else:
        assert cancel(a, parent) == "cancel_requested"
        other = Blocked(db, b, lambda conn: conn.execute(enqueue, (parent,)).fetchone()["id"])  # type: ignore[index]
        a.commit()
        child = other.join()
    assert states(db, child) == ["cancelled"]


def test_a_grandchild_enqueued_under_a_running_child_while_the_root_is_cancelled(
    db: Conn, connect: Callable[[], Conn]
) -> None:
    root = add(db)
    child = add(db, parent_id=root)
    start(db, child)
    a, b = connect(), connect()
    grandchild = a.execute("select anchor.enqueue('Step', parent_id => %s::bigint) as id", (child,)).fetchone()["id"]  # type: ignore[index]
    other = Blocked(db, b, lambda conn: cancel(conn, root))
    a.commit()
    assert other.join() == "cancelled"
    assert states(db, root, child, grandchild) == ["cancelled", "running", "cancelled"]
    assert task(db, child)["cancel_requested"]


def test_many_workers_finishing_shared_dependencies_release_each_fan_in_once(
    db: Conn, connect: Callable[[], Conn]
) -> None:
    """20 dependencies (3 of them fail), 40 fan-ins on random subsets of 5, finished by 4 connections at once
    in random order: each fan-in ends pending with one 'unblocked' event, or cancelled when one of its
    dependencies failed; none stays blocked."""
    rng = random.Random(18)
    dependencies = [add(db) for _ in range(20)]
    failing = set(rng.sample(dependencies, 3))
    fan_ins = {add(db, depends_on=(chosen := rng.sample(dependencies, 5))): set(chosen) for _ in range(40)}
    fences = {d: start(db, d) for d in dependencies}
    heartbeat(db)
    order = dependencies[:]
    rng.shuffle(order)
    errors: list[BaseException] = []

    def worker(conn: Conn, share: list[int]) -> None:
        try:
            for d in share:
                with conn.transaction():
                    finish(conn, d, fences[d], "failed" if d in failing else "succeeded")
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(connect(), order[k::4])) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for fan_in, deps in fan_ins.items():
        row = task(db, fan_in)
        if deps & failing:
            assert row["state"] == "cancelled", fan_in
        else:
            assert (row["state"], row["unmet_dependencies"]) == ("pending", 0), fan_in
            assert [e["kind"] for e in events(db, fan_in)] == ["unblocked"]


def pause(conn: Conn, task_id: int) -> list[str]:
    return [r["outcome"] for r in conn.execute("select * from anchor.pause_task(%s)", (task_id,)).fetchall()]


def resume(conn: Conn, task_id: int) -> list[str]:
    return [r["outcome"] for r in conn.execute("select * from anchor.resume_task(%s)", (task_id,)).fetchall()]


@pytest.mark.parametrize("first", ["pause", "retry"])
def test_a_pause_racing_an_attempt_that_will_retry_ends_paused(
    db: Conn, connect: Callable[[], Conn], first: str
) -> None:
    register(db, definition("Step"), definition("Flaky", max_attempts=3, retry_interval="1m"), version=2)
    task_id = add(db, "Flaky")
    fence = start(db, task_id)
    a, b = connect(), connect()
    retry = "select anchor.fail_v2(%s, %s, %s, 'flaky') as o"
    if first == "pause":
        assert pause(a, task_id) == ["pause_requested"]
        other = Blocked(db, b, lambda conn: conn.execute(retry, (task_id, fence, WORKER)).fetchone()["o"])  # type: ignore[index]
        a.commit()
        assert other.join() == "retry"
    else:
        assert a.execute(retry, (task_id, fence, WORKER)).fetchone() == {"o": "retry"}
        other = Blocked(db, b, lambda conn: pause(conn, task_id))
        a.commit()
        assert other.join() == ["paused"]
    assert (task(db, task_id)["state"], task(db, task_id)["pause_requested"]) == ("paused", False)


@pytest.mark.parametrize("first", ["resume", "dependency"])
def test_a_resume_racing_the_last_dependency_ends_pending(db: Conn, connect: Callable[[], Conn], first: str) -> None:
    dependency = add(db)
    waiting = add(db, depends_on=[dependency])
    pause(db, waiting)
    fence = start(db, dependency)
    a, b = connect(), connect()
    if first == "resume":
        assert resume(a, waiting) == ["blocked"]
        other = Blocked(db, b, lambda conn: complete(conn, dependency, fence))
        a.commit()
        assert other.join() == "succeeded"
    else:
        assert complete(a, dependency, fence) == "succeeded"
        other = Blocked(db, b, lambda conn: resume(conn, waiting))
        a.commit()
        assert other.join() == ["pending"]
    assert (task(db, waiting)["state"], task(db, waiting)["unmet_dependencies"]) == ("pending", 0)
