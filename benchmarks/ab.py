"""ab: checkouts compared on drain, claim and latency, in turns fine enough that the machine's drift cancels.

    python -m benchmarks.ab --tree DIR --tree DIR [--turns 30] [--rounds 5] [--dsn DSN]

Each DIR holds another checkout's ``anchor_py`` and ``sql`` (``git archive REV anchor_py sql | tar -x -C DIR``),
measured by this checkout's benchmarks, each tree on databases its own migrations built. The first tree is the
reference. A figure from a shared machine moves by 10-30% from one minute to the next, more than most changes
worth comparing, so the trees take turns, and every turn of a tree is compared with the reference's turn
beside it:

- drain: one worker process per tree (concurrency 100) stays up; each turn enqueues 5,000 no-op tasks in one
  transaction right before (no ANALYZE) and waits for them: tasks per second on the database clock (first claim
  to last completion), and the worker's and its backends' CPU per task (as the cpu scenario);
- claim: each tree's database holds due tasks (analysed, the claim-shapes baseline); a turn is 10 claims of
  100 (``anchor.claim_v2``, each completed before the next), its figure their median;
- latency: per round, enqueue -> start at 200/s from one client for 5 s, the worker in its own process, idle on
  LISTEN: p50 and p99.

Printed: each turn as a JSON line, then per tree the median of every figure, ``vs_first`` (its median against
the reference's) and ``vs_first_by_turn`` (the median of its turn-by-turn ratios), > 1 meaning better whichever
way the figure points. This is how a change is shown to cost tasks that do not use it nothing
(docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import claimshapes, cpu_per_task, latency, noop
from benchmarks.harness import REPO, Context, find_server, wait_until
from benchmarks.workers import WorkerProcess, drain_window

# (figure, True when larger is better)
FIGURES = {
    "drain_per_s": True,
    "worker_cpu_us_per_task": False,
    "server_cpu_us_per_task": False,
    "claim_ms": False,
    "latency_p50_ms": False,
    "latency_p99_ms": False,
}
DRAIN_TASKS = 5_000
CLAIMS_PER_TURN = 10

Samples = dict[str, dict[str, list[float]]]  # tree -> figure -> one value per turn (or round)


class DrainTree:
    """A tree's database and its worker process, drained turn by turn."""

    def __init__(self, conn: psycopg.Connection[Any], worker: WorkerProcess) -> None:
        self.conn = conn
        self.worker = worker
        self.done = 0

    def registered(self) -> bool:
        row = self.conn.execute("select count(*) from anchor.workers").fetchone()
        return row is not None and row[0] > 0

    def turn(self, offset: int) -> dict[str, float]:
        conn, pid = self.conn, self.worker.process.pid
        since = conn.execute("select now()").fetchone()[0]  # type: ignore[index]
        worker_before, backends_before = cpu_per_task.cpu_seconds(pid), cpu_per_task.backends(conn)
        conn.execute("select cardinality(anchor.enqueue_many(%s, %s::jsonb))",
                     (noop.NAME, noop.params_json(DRAIN_TASKS, offset)))
        self.done += DRAIN_TASKS

        def drained() -> bool:
            row = conn.execute("select count(*) from anchor.tasks where state = 'succeeded'").fetchone()
            return row is not None and row[0] >= self.done

        if not wait_until(drained, 120, 0.005):
            raise RuntimeError(f"the worker did not drain {DRAIN_TASKS} tasks within 120 s")
        worker_cpu = cpu_per_task.cpu_seconds(pid) - worker_before
        server_cpu = sum(cpu - backends_before.get(backend, 0.0)
                         for backend, cpu in cpu_per_task.backends(conn).items())
        done, seconds = drain_window(conn, since)
        return {"drain_per_s": round(done / max(seconds, 1e-9)),
                "worker_cpu_us_per_task": round(worker_cpu * 1e6 / done, 1),
                "server_cpu_us_per_task": round(server_cpu * 1e6 / done, 1)}


@contextlib.contextmanager
def drain_trees(ctx: Context, roots: dict[str, Path]) -> Iterator[dict[str, DrainTree]]:
    with contextlib.ExitStack() as stack:
        trees = {}
        for k, (tree, root) in enumerate(roots.items()):
            dsn = stack.enter_context(ctx.scratch(f"ab_drain_{k}", migrate=False))
            cpu_per_task.install(dsn, root)
            conn = stack.enter_context(psycopg.connect(dsn, autocommit=True))
            noop.register(conn)
            out = Path(tempfile.mkstemp(prefix="anchor-ab-", suffix=".json")[1])
            process = subprocess.Popen([sys.executable, "-m", "benchmarks.workerproc", dsn, "--concurrency", "100",
                                        "--out", str(out)], cwd=root)
            worker = WorkerProcess(process, out)
            stack.callback(worker.stop)
            trees[tree] = DrainTree(conn, worker)
            if not wait_until(trees[tree].registered, 30):
                raise RuntimeError(f"the worker of {tree} did not register within 30 s")
        yield trees


@contextlib.contextmanager
def claim_databases(ctx: Context, roots: dict[str, Path], turns: int) -> Iterator[dict[str, psycopg.Connection[Any]]]:
    """Each tree's database with enough due tasks for every turn (analysed)."""
    with contextlib.ExitStack() as stack:
        conns = {}
        for k, (tree, root) in enumerate(roots.items()):
            dsn = stack.enter_context(ctx.scratch(f"ab_claim_{k}", migrate=False))
            cpu_per_task.install(dsn, root)
            conn = stack.enter_context(psycopg.connect(dsn, autocommit=True))
            claimshapes.register(conn)
            conn.execute("select anchor.heartbeat_v2('bench', '{}')")
            claimshapes.insert(conn, (turns * CLAIMS_PER_TURN + 10) * 100)
            conn.execute("vacuum analyze anchor.tasks")
            conns[tree] = conn
        yield conns


def latency_round(ctx: Context, root: Path) -> dict[str, float]:
    with ctx.scratch("ab_latency", migrate=False) as dsn:
        cpu_per_task.install(dsn, root)
        with psycopg.connect(dsn, autocommit=True) as conn:
            noop.register(conn)
        result = latency.measure(dsn, 1000, 200.0, 1, root=root)
    return {"latency_p50_ms": result["p50_ms"], "latency_p99_ms": result["p99_ms"]}


def measure(ctx: Context, roots: dict[str, Path], turns: int, rounds: int) -> Samples:
    samples: Samples = {tree: {figure: [] for figure in FIGURES} for tree in roots}

    def record(kind: str, turn: int, tree: str, figures: dict[str, float]) -> None:
        for figure, value in figures.items():
            samples[tree][figure].append(value)
        print(json.dumps({kind: turn, "tree": tree, "load": round(os.getloadavg()[0], 2), **figures}), flush=True)

    with drain_trees(ctx, roots) as trees:
        for turn in range(turns):
            for tree, drain in trees.items():
                record("drain turn", turn, tree, drain.turn(turn * DRAIN_TASKS))
    with claim_databases(ctx, roots, turns) as conns:
        for turn in range(turns):
            for tree, conn in conns.items():
                claim_ms = statistics.median(claimshapes.claim_times(conn, CLAIMS_PER_TURN))
                record("claim turn", turn, tree, {"claim_ms": round(claim_ms, 3)})
    for round_ in range(rounds):
        for tree, root in roots.items():
            record("latency round", round_, tree, latency_round(ctx, root))
    return samples


def _better(mine: float, reference: float, up: bool) -> float:
    """mine against reference, > 1 when mine is better whichever way the figure points."""
    return mine / reference if up else reference / mine


def compare(samples: Samples) -> list[dict[str, Any]]:
    """Per tree: the median of each figure, against the reference's median and turn by turn."""
    reference = next(iter(samples.values()))
    summary = []
    for tree, figures in samples.items():
        median = {figure: statistics.median(values) for figure, values in figures.items()}
        summary.append({
            "tree": tree,
            "median": median,
            "vs_first": {figure: round(_better(median[figure], statistics.median(reference[figure]), up), 3)
                         for figure, up in FIGURES.items()},
            "vs_first_by_turn": {
                figure: round(statistics.median(
                    _better(mine, ref, up) for mine, ref in zip(figures[figure], reference[figure], strict=True)
                ), 3)
                for figure, up in FIGURES.items()
            },
        })
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", required=True,
                        help="a checkout's anchor_py and sql (repeatable; the first is the reference)")
    parser.add_argument("--turns", type=int, default=30, help="drain and claim turns per tree")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds per tree")
    parser.add_argument("--dsn")
    args = parser.parse_args()
    ctx = Context(server=find_server(args.dsn), quick=False, peers=False)
    roots = {str(tree): cpu_per_task.tree_root(tree) for tree in args.tree}
    try:
        samples = measure(ctx, roots, args.turns, args.rounds)
    finally:
        for root in roots.values():
            if root != REPO:
                shutil.rmtree(root, ignore_errors=True)
    for line in compare(samples):
        print(json.dumps(line))


if __name__ == "__main__":
    main()
