"""`anchor stats` (the queue at a glance) and `anchor workers list`."""

from __future__ import annotations

import argparse
from typing import Any

from anchor_py import admin
from anchor_py.cli.common import add_command_group, add_dsn_option, connect, parse_age, parse_positive
from anchor_py.cli.output import Column, format_table, pipe_safe, print_json, print_table, terminal_width
from anchor_py.defaults import HEARTBEAT_TIMEOUT
from anchor_py.formatting import format_age, format_ago, format_time

SPARK = "▁▂▃▄▅▆▇█"
SHORT_STATES = {"blocked": "BLOCK", "paused": "PAUSE", "pending": "PEND", "running": "RUN", "succeeded": "SUCC",
                "hook_failed": "HOOKF", "cancelled": "CANC"}


def _count_columns(states: list[str], short: dict[str, str]) -> list[Column]:
    columns = [Column("TASK", shrink=True, min_width=12)]
    columns += [Column(short.get(s, s.upper()), align="right") for s in states]
    return columns + [Column("TOTAL", align="right")]


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "stats",
        help="counts per task and state, throughput, queue depth, workers",
        description="The queue at a glance: tasks per name and state, finished tasks per minute over the "
        "last minutes, pending depth and the oldest due task per queue, and the workers alive.",
    )
    p.add_argument("--minutes", default="15", metavar="N", help="throughput window in minutes (default 15)")
    add_heartbeat_timeout_option(p)
    p.add_argument("--json", action="store_true", help="everything as one JSON object")
    add_dsn_option(p)
    p.set_defaults(handler=run_stats)

    workers: argparse.ArgumentParser = subparsers.add_parser(
        "workers", help="the workers and their heartbeats", description="Workers registered in the database."
    )
    sub = add_command_group(workers, "workers_command", "SUBCOMMAND")
    p = sub.add_parser("list", help="workers with heartbeat age, alive or not, running tasks",
                       description="Every worker row: when it started, its last heartbeat, whether it counts "
                       "as alive and how many tasks it is running.")
    add_heartbeat_timeout_option(p)
    p.add_argument("--json", action="store_true", help="a JSON array of workers")
    add_dsn_option(p)
    p.set_defaults(handler=run_workers)


def add_heartbeat_timeout_option(parser: argparse.ArgumentParser) -> None:
    default = format_age(HEARTBEAT_TIMEOUT.total_seconds())
    parser.add_argument("--heartbeat-timeout", default=default, metavar="AGE",
                        help=f"a worker silent longer than this counts as dead (default {default}, as the rescuer)")


def sparkline(values: list[int]) -> str:
    top = max(values, default=0)
    if top == 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, round(v / top * (len(SPARK) - 1)))] for v in values)


def stats_json(stats: admin.Stats) -> dict[str, Any]:
    return {
        "read_at": stats.read_at.isoformat(),
        "counts": stats.table(),
        "totals": stats.by_state(),
        "throughput": admin.to_json(stats.throughput),
        "finished": stats.finished,
        "finished_per_minute": round(stats.per_minute(), 3),
        "oldest_pending_age_seconds": stats.oldest_due_seconds,
        "queues": admin.to_json(stats.queues),
        "workers_alive": stats.workers_alive,
        "workers": admin.to_json(stats.workers),
    }


@pipe_safe
def run_stats(args: argparse.Namespace) -> int:
    minutes = parse_positive(args.minutes, "--minutes", 1440)
    timeout = parse_age(args.heartbeat_timeout, "--heartbeat-timeout")
    with connect(args) as conn:
        stats = admin.get_stats(conn, minutes=minutes, heartbeat_timeout=timeout)
    if args.json:
        print_json(stats_json(stats))
        return 0

    table = stats.table()
    totals = stats.by_state()
    # only the states that hold tasks (--json has them all); short headers when full ones would not fit
    shown = [s for s in admin.STATES if totals[s]] or ["pending"]
    rows: list[list[object]] = [
        [name, *(counts[s] for s in shown), sum(counts.values())] for name, counts in sorted(table.items())
    ]
    if len(rows) != 1:
        rows.append(["(all)", *(totals[s] for s in shown), sum(totals.values())])
    print("Tasks")
    full = format_table(_count_columns(shown, {}), rows, width=10_000)
    if max(len(line) for line in full.splitlines()) <= terminal_width():
        print(full)
    else:
        print_table(_count_columns(shown, SHORT_STATES), rows)
        print("  " + " ".join(f"{SHORT_STATES[s]}={s}" for s in shown if s in SHORT_STATES))

    finished = [p.total for p in stats.throughput]
    sums = {k: sum(getattr(p, k) for p in stats.throughput) for k in ("succeeded", "failed", "cancelled")}
    print()
    # the rate and the counts are over the same tasks (see admin.Stats.per_minute)
    print(f"Throughput, last {minutes} min: {stats.finished} finished, {stats.per_minute():.1f}/min")
    print(f"  succeeded {sums['succeeded']}, failed {sums['failed']}, cancelled {sums['cancelled']}")
    print(f"  per minute, oldest first: {sparkline(finished)}  (peak {max(finished, default=0)})")

    print()
    print(f"Oldest due pending task: waiting {format_age(stats.oldest_due_seconds)}")
    if stats.queues:
        print_table(
            [Column("QUEUE", shrink=True, min_width=10), Column("PENDING", align="right"),
             Column("DUE NOW", align="right"), Column("OLDEST DUE", align="right"),
             Column("RUNNING", align="right")],
            [[q.queue, q.pending, q.due, format_age(q.oldest_due_seconds), q.running] for q in stats.queues],
        )

    print()
    print(f"Workers alive: {stats.workers_alive} of {len(stats.workers)} registered")
    if stats.workers:
        print_workers(stats.workers, stats.read_at)
    return 0


def print_workers(workers: list[admin.WorkerInfo], now: Any) -> None:
    print_table(
        [Column("WORKER", shrink=True, min_width=16), Column("ALIVE"), Column("HEARTBEAT", align="right"),
         Column("STARTED", align="right"), Column("RUNNING", align="right")],
        [[w.worker_id, "yes" if w.alive else "NO", f"{format_age(w.heartbeat_age_seconds)} ago",
          format_ago(w.started_at, now), w.running] for w in workers],
    )


@pipe_safe
def run_workers(args: argparse.Namespace) -> int:
    timeout = parse_age(args.heartbeat_timeout, "--heartbeat-timeout")
    with connect(args) as conn:
        now = admin.db_now(conn)
        workers = admin.list_workers(conn, heartbeat_timeout=timeout)
    if args.json:
        print_json(admin.to_json(workers))
        return 0
    if not workers:
        print("no workers registered")
        return 0
    print_workers(workers, now)
    alive = sum(1 for w in workers if w.alive)
    print(f"{alive} of {len(workers)} alive (heartbeat within {format_age(timeout.total_seconds())}); "
          f"read at {format_time(now)} UTC")
    return 0


