"""The soak scenario (benchmarks/soak.py, `make soak`: 10 minutes) in a short version for the suite.

Invariant (what benchmarks.soak checks and exits non-zero on): under a steady enqueue rate, with workers
and a cron schedule running, no worker's RSS grows beyond its bound, the enqueue -> claim latency does
not drift, the backlog stays drained and the cron task fires once per fire time. The dead-tuple check
needs a few minutes (autovacuum's naptime) and only counts in the long version (3 minutes; `make soak`
runs the full 10). It runs against the fault
tests' private server, in a subprocess group that is killed whatever happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.faults.harness import REPO
from tests.faults.pgcluster import ThrowawayPostgres


def run_soak(server: ThrowawayPostgres, *args: str, timeout: float) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.soak", "--dsn", server.dsn(), *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = output.decode(errors="replace")
    print(text[-3000:])
    assert process.returncode == 0, f"soak failed (exit {process.returncode}):\n{text[-3000:]}"


@pytest.mark.timeout(150)
def test_soak_short(fault_server: ThrowawayPostgres) -> None:
    """Invariant (short): 24 s at 40 tasks/s with 2 workers and a cron task: no RSS growth past the bound,
    no latency drift, backlog drained, cron fires once per fire time."""
    run_soak(fault_server, "--minutes", "0.4", "--rate", "40", "--workers", "2", "--concurrency", "5",
             "--sample", "3", timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_soak_3_minutes(fault_server: ThrowawayPostgres) -> None:
    """Invariant (long): 3 minutes at 100 tasks/s with 4 workers and a cron task: the same checks, plus
    dead tuples of anchor.tasks stay within what autovacuum clears (autovacuum must have run)."""
    run_soak(fault_server, "--minutes", "3", "--rate", "100", "--workers", "4", "--concurrency", "10",
             "--sample", "10", timeout=330)
