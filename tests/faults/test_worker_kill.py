"""SIGKILL of worker processes at random points of a run: during a claim, during an execution and during
the final-failure transaction that runs an onFailed hook.

Invariant (checked on the tables afterwards, tests/faults/harness.check_invariants): every task ends in a
final state, none is lost, an attempt never runs twice, a task runs more than once only when its worker
died during that execution, and the hook of every finally-failed task committed exactly once.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.faults.aim import SLOW_CLAIM, VICTIM_PICKERS
from tests.faults.harness import check_invariants, fleet, mixed_workload, retry_db, unfinished, wait_settled
from tests.integrations.pgbouncer import pgbouncer


def run_kill_scenario(dsn: str, log_dir: Path, *, tasks: int, kills: int, workers: int, seed: int,
                      settle_timeout: float, pooled_dsn: str | None = None) -> None:
    """``pooled_dsn``: the workers' DSN through PgBouncer (with ``dsn`` as their direct one); the checks read
    ``dsn``."""
    rng = random.Random(seed)
    retry_db(dsn, SLOW_CLAIM)
    enqueued = mixed_workload(dsn, tasks, rng, fail_share=0.25, hook_ms=30)
    # through PgBouncer the server sees the pooler's port, not the worker's: no claim can be traced to a worker
    phases = ["execution", "hook", "random"] if pooled_dsn else ["claim", "execution", "hook", "random"]
    landed: dict[str, int] = dict.fromkeys(phases, 0)
    with fleet(pooled_dsn or dsn, log_dir, concurrency=8, direct_dsn=dsn if pooled_dsn else None) as fl:
        fl.spawn(workers)
        time.sleep(1.5)  # let them start claiming
        done = 0
        attempts = 0
        while done < kills and unfinished(dsn) > 0 and attempts < kills * 60:
            attempts += 1
            phase = phases[done % len(phases)]
            if phase == "random":
                pid: int | None = rng.choice(fl.alive()).pid if fl.alive() else None
            else:
                pid = VICTIM_PICKERS[phase](dsn, fl)
            if pid is None or not fl.kill(pid):
                time.sleep(0.02)
                continue
            landed[phase] += 1
            done += 1
            fl.supervise(workers)  # a supervisor restarts it
            time.sleep(rng.uniform(0.2, 1.0))
        wait_settled(dsn, settle_timeout, fl, workers)
        print(f"kills by phase: {landed}")
    report = check_invariants(dsn, enqueued, fl.killed | fl.exited)
    assert sum(landed.values()) >= min(kills, 2), f"too few kills landed: {landed}"
    if kills >= 8:  # the long run: every phase was hit
        assert all(landed.values()), f"a phase was never hit: {landed}"
    assert report.rescued > 0, "no task was ever rescued: the kills hit nothing"


def test_sigkill_short_through_pgbouncer(fault_dsn: str, log_dir: Path) -> None:
    """The short scenario with the workers' claims, completions, failures and heartbeats going through PgBouncer in
    transaction mode (LISTEN, hooks and the rescuer on their direct DSN): the same invariants hold. The kill aimed
    at a claim is left out (PgBouncer hides the worker's port from the server); the random kills stand in for it."""
    with pgbouncer(fault_dsn) as pooled:
        run_kill_scenario(fault_dsn, log_dir, tasks=1000, kills=4, workers=3, seed=1, settle_timeout=90,
                          pooled_dsn=pooled)


def test_sigkill_short(fault_dsn: str, log_dir: Path) -> None:
    """Invariant (short): 1000 tasks, 3 workers, 4 SIGKILLs (one each aimed at a claim, an execution, a hook
    transaction, a random moment): all final, none lost, duplicates only after a death, hooks exactly once."""
    run_kill_scenario(fault_dsn, log_dir, tasks=1000, kills=4, workers=3, seed=1, settle_timeout=90)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_5k(fault_dsn: str, log_dir: Path) -> None:
    """Invariant (long): 5000 tasks, 3 workers, 24 SIGKILLs spread over claims, executions, hook
    transactions and random moments: all final, none lost, duplicates only after a death, hooks exactly once."""
    run_kill_scenario(fault_dsn, log_dir, tasks=5000, kills=24, workers=3, seed=5, settle_timeout=240)
