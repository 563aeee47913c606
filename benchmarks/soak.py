"""The soak: steady enqueue and drain for a long time, looking for slow leaks.

    python -m benchmarks.soak [--minutes 10] [--rate 300] [--workers 4] [--dsn DSN]   (make soak)

Four worker processes (the real Worker, with its rescuer and cron services) run the Noop task and a
cron task firing every 2 seconds, while one client enqueues Noop tasks at a steady rate. Every
`--sample` seconds it records each worker's RSS, anchor.tasks' live and dead tuples and autovacuum
count, the pending backlog, and the enqueue -> claim latency of the tasks enqueued in the previous
window (database clock: locked_at - created_at). Each sample is one JSON line; at the end it checks:

- memory: no worker's RSS grew by more than max(10 MB, 10%) from the end of the warm-up to the end;
- dead tuples: autovacuum ran, and the dead tuples of anchor.tasks in the last third stay within what
  autovacuum keeps (20% of the live rows plus two minutes of dead versions), i.e. vacuum keeps up;
- latency: the p50 of the last third is within 2x (+5 ms) of the first third's (after warm-up),
  and the pending backlog does not grow;
- cron: the cron task fired about once per 2 seconds, never twice for one fire time.

Exit code 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from anchor_py.runner import TaskRunnerBase
from anchor_py.taskcore import TaskContext
from anchor_py.taskspec import TaskSet, TaskSpec
from benchmarks import noop
from benchmarks.harness import Context, find_server, percentile
from benchmarks.workers import start_workers

TICK_EVERY_S = 2
TICK: dict[str, Any] = {
    "name": "Tick",
    "description": "a cron task for the soak",
    "parameters": {"type": "object"},
    "retry_interval": None,
    "max_attempts": 1,
    "timeout": "1m",
    "queue": "default",
    "priority": 0,
    "on_failed": False,
    "cron": {"expression": f"*/{TICK_EVERY_S} * * * * *", "parameters": {}, "timezone": "UTC", "catch_up": 0,
             "overlap": "skip"},
}


class TickParameters(noop.NoopParameters):
    pass


SOAK_TASKS = TaskSet([
    *noop.TASKS.specs,
    TaskSpec(name="Tick", description=TICK["description"], params_model=TickParameters, execute_method="execute_tick",
             hook_method=None, definition=TICK),
])


class SoakExecutor(noop.NoopExecutor):
    async def execute_tick(self, ctx: TaskContext, params: TickParameters) -> None:
        return None


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def sender(dsn: str, rate: float, stop: threading.Event, sent: list[int]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        runner = TaskRunnerBase(conn)
        pace = time.perf_counter()
        i = 0
        while not stop.is_set():
            runner.enqueue(noop.NAME, noop.NoopParameters(i=i))
            i += 1
            sent[0] = i
            pace += 1.0 / rate
            time.sleep(max(0.0, pace - time.perf_counter()))


def sample(conn: psycopg.Connection[Any], pids: list[int], since_id: int) -> tuple[dict[str, Any], int]:
    row = conn.execute(
        "select n_live_tup, n_dead_tup, autovacuum_count, vacuum_count from pg_stat_user_tables "
        "where relid = 'anchor.tasks'::regclass").fetchone()
    assert row is not None
    top = conn.execute("select coalesce(max(id), 0) from anchor.tasks").fetchone()[0]  # type: ignore[index]
    lat = [float(r[0]) for r in conn.execute(
        "select extract(epoch from locked_at - created_at) * 1000 from anchor.tasks "
        "where id > %s and id <= %s and name = 'Noop' and locked_at is not null", (since_id, top)).fetchall()]
    pending = conn.execute("select count(*) from anchor.tasks where state = 'pending' and run_at <= now()").fetchone()
    return {
        "rss_mb": [round(rss_mb(pid), 1) for pid in pids],
        "live": row[0], "dead": row[1], "autovacuums": row[2] + row[3],
        "pending_due": pending[0] if pending else None,
        "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99), "window_tasks": len(lat),
    }, int(top)


def check(
    samples: list[dict[str, Any]], minutes: float, rate: float, ticks: tuple[int, int]
) -> list[tuple[str, bool, str]]:
    warm = max(1, len(samples) // 6)
    steady = samples[warm:]
    third = max(1, len(steady) // 3)
    first, last = steady[:third], steady[-third:]
    results = []
    workers = len(samples[0]["rss_mb"])
    for w in range(workers):
        start, end = first[0]["rss_mb"][w], samples[-1]["rss_mb"][w]
        limit = max(10.0, 0.10 * start)
        results.append((f"worker {w + 1} RSS", end - start <= limit,
                        f"{start:.1f} -> {end:.1f} MB (limit +{limit:.1f} MB)"))
    # autovacuum runs when dead > 50 + 20% of the table, checked once a minute (default naptime): so what it
    # keeps is 20% of the live rows plus about two minutes of dead versions (each task leaves two: claim, complete)
    worst_dead = max(s["dead"] for s in last)
    live = max(s["live"] for s in last)
    bound = 0.2 * live + 2 * (2 * rate * 60)
    vacuumed = samples[-1]["autovacuums"] > samples[0]["autovacuums"] or minutes < 3
    results.append(("dead tuples (last third)", worst_dead <= bound and vacuumed,
                    f"max {worst_dead} dead of {live} live, bound {bound:.0f}; "
                    f"vacuums {samples[0]['autovacuums']} -> {samples[-1]['autovacuums']}"))
    p50_first = sorted(s["p50_ms"] for s in first)[len(first) // 2]
    p50_last = sorted(s["p50_ms"] for s in last)[len(last) // 2]
    results.append(("latency drift (p50)", p50_last <= 2 * p50_first + 5,
                    f"first third {p50_first:.2f} ms, last third {p50_last:.2f} ms"))
    backlog = max(s["pending_due"] for s in last)
    results.append(("backlog stays drained", backlog <= max(1000, 5 * samples[0]["window_tasks"]),
                    f"max {backlog} due pending in the last third"))
    fired, distinct = ticks
    expected = minutes * 60 / TICK_EVERY_S
    results.append(("cron fires", fired == distinct and fired >= 0.8 * expected,
                    f"{fired} tasks for {distinct} fire times, ~{expected:.0f} expected"))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=300.0, help="Noop tasks enqueued per second")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=25)
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--dsn")
    args = parser.parse_args(argv)
    ctx = Context(server=find_server(args.dsn), quick=False, peers=False)
    samples: list[dict[str, Any]] = []
    with ctx.scratch("soak") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select anchor.register_tasks(%s::jsonb, 1)", (SOAK_TASKS.definitions_json(),))
        procs = start_workers(dsn, args.workers, concurrency=args.concurrency, soak=True)
        stop = threading.Event()
        sent = [0]
        thread = threading.Thread(target=sender, args=(dsn, args.rate, stop, sent), daemon=True)
        started = time.monotonic()
        thread.start()
        since_id = 0
        try:
            while time.monotonic() - started < args.minutes * 60:
                time.sleep(args.sample)
                figures, since_id = sample(conn, [p.process.pid for p in procs], since_id)
                figures = {"t_s": round(time.monotonic() - started), "sent": sent[0], **figures}
                samples.append(figures)
                print(json.dumps({"scenario": "soak", **figures}), flush=True)
        finally:
            stop.set()
            thread.join(10)
            for p in procs:
                p.stop()
        ticks = conn.execute("select count(*), count(distinct scheduled_at) from anchor.tasks where name = 'Tick'"
                             ).fetchone()
    if len(samples) < 3:
        print("soak: too short to judge (need at least 3 samples)", file=sys.stderr)
        return 1
    results = check(samples, args.minutes, args.rate, (int(ticks[0]), int(ticks[1])) if ticks else (0, 0))
    achieved = samples[-1]["sent"] / samples[-1]["t_s"]
    print(f"\nenqueued {samples[-1]['sent']} Noop tasks, {achieved:.0f}/s (target {args.rate:g}/s)")
    for name, ok, detail in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
