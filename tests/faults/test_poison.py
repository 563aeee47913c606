"""Poison tasks next to ordinary ones: one that always raises, one whose sync code raises SystemExit in
its thread, one that hangs far past its timeout (its thread is abandoned; past max_abandoned_threads the
worker exits for its supervisor to restart it), and one that kills its worker process outright.

Invariant (checked on the tables afterwards): the poison never stalls the others: every ordinary task
succeeds, and within a bound while the poison is still being retried; every poison task ends in a final
state after a bounded number of executions (its attempts, or max_rescues for the one that kills its
worker), never hot-looping; and the general invariants hold (none lost, duplicates only after a death).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.faults.harness import check_invariants, enqueue, fleet, retry_db, wait_settled

POISON_PRIORITY = -10  # claimed before everything else


def run_poison_scenario(dsn: str, log_dir: Path, *, ordinary: int, copies: int, max_rescues: int,
                        seed: int) -> None:
    rng = random.Random(seed)
    poison: dict[str, list[int]] = {}
    # PoisonExit (SystemExit in a sync task) is left out: it takes the whole worker down (finding F1,
    # test_system_exit_in_a_task_thread_is_a_task_failure)
    for name in ("PoisonRaise", "PoisonHang", "PoisonCrash"):
        count = 1 if name == "PoisonCrash" else copies
        poison[name] = enqueue(dsn, name, [{"n": i} for i in range(count)], priority=POISON_PRIORITY)
    ok = enqueue(dsn, "Ok", [{"n": i, "sleep_ms": rng.choice([0, 1, 5])} for i in range(ordinary)])
    started = time.monotonic()
    with fleet(dsn, log_dir, concurrency=4, max_rescues=max_rescues) as fl:
        fl.spawn(2)
        ordinary_done = None
        while time.monotonic() - started < 120:
            fl.supervise(2)  # the supervisor restarts a worker that exited or crashed
            left = retry_db(dsn, "select count(*) as n from anchor.tasks where name = 'Ok' and finished_at is null")
            if left[0]["n"] == 0:
                ordinary_done = time.monotonic() - started
                break
            time.sleep(0.2)
        assert ordinary_done is not None, f"ordinary tasks stalled behind the poison:\n{fl.tail()}"
        wait_settled(dsn, 120, fl, 2)
        print(f"ordinary tasks done in {ordinary_done:.1f}s; workers exited by themselves: {len(fl.exited)}")
    all_ids = [i for ids in poison.values() for i in ids] + ok
    check_invariants(dsn, all_ids, fl.killed | fl.exited)
    rows = retry_db(dsn, """
        select t.name, t.id, t.state, t.attempts, t.rescues,
            (select count(*) from fault_runs r where r.task_id = t.id and r.kind = 'exec_start') as runs
        from anchor.tasks t where t.name like 'Poison%%' order by t.id""")
    limits = {"PoisonRaise": 3, "PoisonHang": 2, "PoisonCrash": max_rescues}
    for row in rows:
        assert row["state"] == "failed", row
        assert row["runs"] <= limits[row["name"]], f"poison executed more often than its budget: {row}"
    crash = [r for r in rows if r["name"] == "PoisonCrash"]
    assert crash and crash[0]["rescues"] == max_rescues, crash
    # every ordinary task succeeds, also those that shared a process with the crashing task (F2, fixed)
    bad = retry_db(dsn, "select id, state, rescues, last_error from anchor.tasks "
                        "where name = 'Ok' and state <> 'succeeded'")
    assert not bad, bad


@pytest.mark.timeout(300)
def test_poison_short(fault_dsn: str, log_dir: Path) -> None:
    """Invariant (short): 2 of each poison and 1 process-killing task ahead of 300 ordinary tasks on 2
    workers: the ordinary ones all succeed, the poison ends failed within its budget (max_rescues=2)."""
    run_poison_scenario(fault_dsn, log_dir, ordinary=300, copies=2, max_rescues=2, seed=4)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_poison_long(fault_dsn: str, log_dir: Path) -> None:
    """Invariant (long): 6 of each poison and 1 process-killing task ahead of 3000 ordinary tasks on 2
    workers: the ordinary ones all succeed, the poison ends failed within its budget (max_rescues=5)."""
    run_poison_scenario(fault_dsn, log_dir, ordinary=3000, copies=6, max_rescues=5, seed=14)


@pytest.mark.timeout(120)
def test_system_exit_in_a_task_thread_is_a_task_failure(fault_dsn: str, log_dir: Path) -> None:
    """Invariant: a sync task calling sys.exit() (SystemExit in its thread) is an ordinary failure of that
    attempt: the worker keeps running and the task ends failed after its 3 attempts, not handed back."""
    [task_id] = enqueue(fault_dsn, "PoisonExit", [{"n": 0}])
    with fleet(fault_dsn, log_dir, concurrency=2) as fl:
        [worker] = fl.spawn(1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            fl.supervise(1)
            state = retry_db(fault_dsn, "select state from anchor.tasks where id = %s", (task_id,))[0]["state"]
            if state == "failed":
                break
            time.sleep(0.2)
        exited = set(fl.exited)
    rows = retry_db(fault_dsn, "select state, attempts from anchor.tasks where id = %s", (task_id,))
    assert not exited, f"SystemExit in a task thread took down worker(s) {exited}; task now {rows}"
    assert rows[0]["state"] == "failed", rows
    assert worker.pid not in exited


@pytest.mark.timeout(120)
def test_bystanders_of_a_crashing_task_survive(fault_dsn: str, log_dir: Path) -> None:
    """Invariant: a task that kills its worker process is failed after max_rescues (2 here) crashes, but
    the tasks that merely ran in the same process at the time (no other work queued) still succeed."""
    enqueue(fault_dsn, "PoisonCrash", [{"n": 0}], priority=POISON_PRIORITY)
    ok = enqueue(fault_dsn, "Ok", [{"n": i, "sleep_ms": 500} for i in range(3)])
    with fleet(fault_dsn, log_dir, concurrency=4, max_rescues=2) as fl:
        fl.spawn(1)
        wait_settled(fault_dsn, 60, fl, 1)
    rows = retry_db(fault_dsn, "select id, state, rescues, last_error from anchor.tasks where id = any(%s)", (ok,))
    assert all(row["state"] == "succeeded" for row in rows), rows
