"""Starting benchmark worker processes (benchmarks.workerproc) and timing a drain from the database clock."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.harness import REPO, wait_until


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    out: Path

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        try:
            result: dict[str, Any] = json.loads(self.out.read_text())
        except (OSError, ValueError):
            result = {}
        self.out.unlink(missing_ok=True)
        return result


def start_workers(
    dsn: str, count: int, *, concurrency: int = 100, stop_after: int = 0, soak: bool = False, metrics: bool = False,
    flow: bool = False,
) -> list[WorkerProcess]:
    """Starts `count` worker processes and returns once all have registered (heartbeat row present)."""
    procs = []
    for _ in range(count):
        out = Path(tempfile.mkstemp(prefix="anchor-bench-", suffix=".json")[1])
        command = [sys.executable, "-m", "benchmarks.workerproc", dsn, "--concurrency", str(concurrency),
                   "--stop-after", str(stop_after), "--out", str(out), *(["--soak"] if soak else []),
                   *(["--metrics"] if metrics else []), *(["--flow"] if flow else [])]
        procs.append(WorkerProcess(subprocess.Popen(command, cwd=REPO), out))
    with psycopg.connect(dsn, autocommit=True) as conn:
        def registered() -> bool:
            row = conn.execute("select count(*) from anchor.workers").fetchone()
            return row is not None and row[0] >= count

        if not wait_until(registered, 30, 0.05):
            for p in procs:
                p.stop(5)
            raise RuntimeError("benchmark workers did not register within 30 s")
    return procs


def drain_window(conn: psycopg.Connection[Any], since: Any) -> tuple[int, float]:
    """(tasks finished after `since`, seconds from their first claim to their last completion), database clock."""
    row = conn.execute(
        "select count(*), extract(epoch from max(finished_at) - min(locked_at)) from anchor.tasks "
        "where state = 'succeeded' and finished_at > %s", (since,)).fetchone()
    assert row is not None
    return int(row[0]), float(row[1] or 0.0)


def nothing_left(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("select not exists (select 1 from anchor.tasks where state = 'pending') "
                       "and not exists (select 1 from anchor.tasks where state = 'running')").fetchone()
    return bool(row and row[0])


# A drain that has not finished by then is stopped and reported as incomplete (rate over what did finish),
# so one pathological run cannot push `make bench` past its 10 minutes.
DRAIN_LIMIT_S = 90.0


def drain_with_workers(
    dsn: str, n: int, processes: int, concurrency: int = 100, metrics: bool = False, flow: bool = False
) -> dict[str, Any]:
    """n pending Noop tasks are in the table (vacuumed, analysed); start the workers and time until all succeeded.
    ``flow``: the workers run benchmarks.flow's task set (Noop and its per-key limited twin)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        since = conn.execute("select now()").fetchone()[0]  # type: ignore[index]
        procs = start_workers(dsn, processes, concurrency=concurrency, metrics=metrics, flow=flow)
        try:
            finished = wait_until(lambda: nothing_left(conn), DRAIN_LIMIT_S, 0.1)
        finally:
            results = [p.stop() for p in procs]
        done, seconds = drain_window(conn, since)
    rss = max((r.get("max_rss_kb", 0) for r in results), default=0)
    cpu = sum(r.get("cpu_s", 0.0) for r in results)
    extra = {} if finished else {"incomplete": f"stopped after {DRAIN_LIMIT_S:g}s, {done} of {n} done"}
    return {"n": done, "processes": processes, "concurrency": concurrency, "per_s": round(done / max(seconds, 1e-9)),
            **extra,
            "worker_cpu_us_per_task": round(cpu * 1e6 / max(done, 1)), "worker_max_rss_mb": round(rss / 1024, 1)}
