"""ab: checkouts compared in interleaved rounds on drain, claim and latency.

    python -m benchmarks.ab --tree DIR --tree DIR [--rounds 5] [--n 50000] [--dsn DSN]

Each DIR holds another checkout's ``anchor_py`` and ``sql`` (``git archive REV anchor_py sql | tar -x -C DIR``),
measured by this checkout's benchmarks. In every round each tree, on a database its own migrations built,
measures:

- drain: the cpu scenario's (one worker process, concurrency 100, n no-op tasks enqueued in one transaction
  right before, no ANALYZE): tasks per second, and the worker's and its backends' CPU per task;
- claim: the claim-shapes baseline (60k due tasks, analysed): p50 of 100 claims of 100 (``anchor.claim_v2``),
  each completed before the next;
- latency: enqueue -> start at 200/s from one client, the worker in its own process, idle on LISTEN: p50/p99.

One figure from a shared machine moves by 10-30% from one minute to the next; rounds alternate the trees so
that drift reaches all of them alike, and each tree's median over the rounds is compared with the first
tree's. This is how a change is shown to cost tasks that do not use it nothing (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import claimshapes, cpu_per_task, latency, noop
from benchmarks.harness import REPO, Context, find_server

# (figure, True when larger is better)
FIGURES = (
    ("drain_per_s", True),
    ("worker_cpu_us_per_task", False),
    ("server_cpu_us_per_task", False),
    ("claim_p50_ms", False),
    ("latency_p50_ms", False),
    ("latency_p99_ms", False),
)


def measure(ctx: Context, root: Path, n: int) -> dict[str, float]:
    """One round of one tree: each scenario on a database of its own, migrated by the tree."""
    figures: dict[str, float] = {}
    with ctx.scratch("ab_drain", migrate=False) as dsn:
        cpu_per_task.install(dsn, root)
        drain = cpu_per_task.measure(dsn, n, root=root)
    figures["drain_per_s"] = drain["per_s"]
    figures["worker_cpu_us_per_task"] = drain["worker_cpu_us_per_task"]
    figures["server_cpu_us_per_task"] = drain["server_cpu_us_per_task"]
    with ctx.scratch("ab_claim", migrate=False) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        cpu_per_task.install(dsn, root)
        claimshapes.register(conn)
        conn.execute("select anchor.heartbeat_v2('bench', '{}')")
        claimshapes.insert(conn, 60_000)
        conn.execute("vacuum analyze anchor.tasks")
        figures["claim_p50_ms"] = claimshapes.measure(conn, 100)["p50_ms"]
    with ctx.scratch("ab_latency", migrate=False) as dsn:
        cpu_per_task.install(dsn, root)
        with psycopg.connect(dsn, autocommit=True) as conn:
            noop.register(conn)
        lat = latency.measure(dsn, 1000, 200.0, 1, root=root)
    figures["latency_p50_ms"] = lat["p50_ms"]
    figures["latency_p99_ms"] = lat["p99_ms"]
    return figures


def compare(rounds: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """Each tree's median of every figure, and its ratio to the first tree's (> 1: better, whichever way the
    figure points)."""
    medians = {tree: {key: statistics.median(r[key] for r in results) for key, _ in FIGURES}
               for tree, results in rounds.items()}
    first = next(iter(medians.values()))
    summary = []
    for tree, median in medians.items():
        better = {key: round(median[key] / first[key] if up else first[key] / median[key], 3)
                  for key, up in FIGURES if first[key] and median[key]}
        summary.append({"tree": tree, "rounds": len(rounds[tree]), "median": median, "vs_first": better})
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", required=True,
                        help="a checkout's anchor_py and sql (repeatable; the first is the reference)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=50_000, help="tasks per drain")
    parser.add_argument("--dsn")
    args = parser.parse_args()
    ctx = Context(server=find_server(args.dsn), quick=False, peers=False)
    roots = {str(tree): cpu_per_task.tree_root(tree) for tree in args.tree}
    rounds: dict[str, list[dict[str, float]]] = {str(tree): [] for tree in args.tree}
    try:
        for round_ in range(args.rounds):
            for tree, root in roots.items():
                figures = measure(ctx, root, args.n)
                rounds[tree].append(figures)
                print(json.dumps({"round": round_, "tree": tree, "load": round(os.getloadavg()[0], 2), **figures}),
                      flush=True)
    finally:
        for root in roots.values():
            if root != REPO:
                shutil.rmtree(root, ignore_errors=True)
    for line in compare(rounds):
        print(json.dumps(line))


if __name__ == "__main__":
    main()
