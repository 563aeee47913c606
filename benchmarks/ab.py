"""ab: checkouts compared on drain, claim and latency, in turns fine enough that the machine's drift cancels.

    python -m benchmarks.ab --tree DIR --tree DIR [--turns 30] [--dsn DSN]

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
- latency: again one worker process per tree stays up, idle on LISTEN; each turn enqueues 100 tasks at 200/s
  from one client (plain SQL): enqueue -> start p50 and p99 of the turn.

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
from benchmarks.harness import REPO, Context, find_server, percentile, wait_until
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
LATENCY_TASKS = 100
CLAIMS_PER_TURN = 10

Samples = dict[str, dict[str, list[float]]]  # tree -> figure -> one value per turn (or round)


class TreeWorker:
    """A tree's database with one worker process of that tree (concurrency 100) running on it, turn by turn."""

    def __init__(self, dsn: str, conn: psycopg.Connection[Any], worker: WorkerProcess, latency_file: Path) -> None:
        self.dsn = dsn
        self.conn = conn
        self.worker = worker
        self.latency_file = latency_file
        self.done = 0
        self.latencies_read = 0

    def registered(self) -> bool:
        row = self.conn.execute("select count(*) from anchor.workers").fetchone()
        return row is not None and row[0] > 0

    def drained(self) -> bool:
        row = self.conn.execute("select count(*) from anchor.tasks where state = 'succeeded'").fetchone()
        return row is not None and row[0] >= self.done

    def drain_turn(self, offset: int) -> dict[str, float]:
        """DRAIN_TASKS enqueued in one statement, then drained: rate and CPU per task."""
        conn, pid = self.conn, self.worker.process.pid
        since = conn.execute("select now()").fetchone()[0]  # type: ignore[index]
        worker_before, backends_before = cpu_per_task.cpu_seconds(pid), cpu_per_task.backends(conn)
        conn.execute("select cardinality(anchor.enqueue_many(%s, %s::jsonb))",
                     (noop.NAME, noop.params_json(DRAIN_TASKS, offset)))
        self.done += DRAIN_TASKS
        if not wait_until(self.drained, 120, 0.005):
            raise RuntimeError(f"the worker did not drain {DRAIN_TASKS} tasks within 120 s")
        worker_cpu = cpu_per_task.cpu_seconds(pid) - worker_before
        server_cpu = sum(cpu - backends_before.get(backend, 0.0)
                         for backend, cpu in cpu_per_task.backends(conn).items())
        done, seconds = drain_window(conn, since)
        return {"drain_per_s": round(done / max(seconds, 1e-9)),
                "worker_cpu_us_per_task": round(worker_cpu * 1e6 / done, 1),
                "server_cpu_us_per_task": round(server_cpu * 1e6 / done, 1)}

    def latency_turn(self) -> dict[str, float]:
        """LATENCY_TASKS at 200/s from one client (plain SQL enqueue), the worker idle on LISTEN between."""
        latency.send(self.dsn, LATENCY_TASKS, 200.0, 1, through_sql=True)
        self.done += LATENCY_TASKS
        if not wait_until(self.drained, 60, 0.01):
            raise RuntimeError(f"the worker did not run {LATENCY_TASKS} tasks within 60 s")
        lines = self.latency_file.read_text().split()
        turn = [float(value) for value in lines[self.latencies_read:]]
        self.latencies_read = len(lines)
        return {"latency_p50_ms": percentile(turn, 0.5), "latency_p99_ms": percentile(turn, 0.99)}


def tree_database(stack: contextlib.ExitStack, ctx: Context, name: str, root: Path
                  ) -> tuple[str, psycopg.Connection[Any]]:
    """A scratch database migrated by the tree at ``root``, and a connection to it, both closed by ``stack``."""
    dsn = stack.enter_context(ctx.scratch(name, migrate=False))
    cpu_per_task.install(dsn, root)
    return dsn, stack.enter_context(psycopg.connect(dsn, autocommit=True))


@contextlib.contextmanager
def tree_workers(ctx: Context, roots: dict[str, Path], name: str) -> Iterator[dict[str, TreeWorker]]:
    with contextlib.ExitStack() as stack:
        trees = {}
        for k, (tree, root) in enumerate(roots.items()):
            dsn, conn = tree_database(stack, ctx, f"ab_{name}_{k}", root)
            noop.register(conn)
            out = Path(tempfile.mkstemp(prefix="anchor-ab-", suffix=".json")[1])
            latency_file = out.with_suffix(".latencies")
            latency_file.touch()
            stack.callback(latency_file.unlink, missing_ok=True)
            process = subprocess.Popen([sys.executable, "-m", "benchmarks.workerproc", dsn, "--concurrency", "100",
                                        "--latency-file", str(latency_file), "--out", str(out)], cwd=root)
            worker = WorkerProcess(process, out)
            stack.callback(worker.stop)
            trees[tree] = TreeWorker(dsn, conn, worker, latency_file)
            if not wait_until(trees[tree].registered, 30):
                raise RuntimeError(f"the worker of {tree} did not register within 30 s")
        yield trees


@contextlib.contextmanager
def claim_databases(ctx: Context, roots: dict[str, Path], turns: int) -> Iterator[dict[str, psycopg.Connection[Any]]]:
    """Each tree's database with enough due tasks for every turn (analysed)."""
    with contextlib.ExitStack() as stack:
        conns = {}
        for k, (tree, root) in enumerate(roots.items()):
            _, conn = tree_database(stack, ctx, f"ab_claim_{k}", root)
            claimshapes.register(conn)
            conn.execute("select anchor.heartbeat_v2('bench', '{}')")
            # due an hour ago or later, all due however many turns ask for (one per millisecond)
            claimshapes.insert(conn, (turns * CLAIMS_PER_TURN + 10) * 100, run_in="-1 hour")
            conn.execute("vacuum analyze anchor.tasks")
            conns[tree] = conn
        yield conns


def measure(ctx: Context, roots: dict[str, Path], turns: int) -> Samples:
    samples: Samples = {tree: {figure: [] for figure in FIGURES} for tree in roots}

    def record(kind: str, turn: int, tree: str, figures: dict[str, float]) -> None:
        for figure, value in figures.items():
            samples[tree][figure].append(value)
        print(json.dumps({kind: turn, "tree": tree, "load": round(os.getloadavg()[0], 2), **figures}), flush=True)

    with tree_workers(ctx, roots, "drain") as trees:
        for turn in range(turns):
            for tree, worker in trees.items():
                record("drain turn", turn, tree, worker.drain_turn(turn * DRAIN_TASKS))
    with claim_databases(ctx, roots, turns) as conns:
        for turn in range(turns):
            for tree, conn in conns.items():
                claim_ms = statistics.median(claimshapes.claim_times(conn, CLAIMS_PER_TURN))
                record("claim turn", turn, tree, {"claim_ms": round(claim_ms, 3)})
    with tree_workers(ctx, roots, "latency") as trees:
        for turn in range(turns):
            for tree, worker in trees.items():
                record("latency turn", turn, tree, worker.latency_turn())
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
    parser.add_argument("--turns", type=int, default=30, help="drain, claim and latency turns per tree")
    parser.add_argument("--dsn")
    args = parser.parse_args()
    ctx = Context(server=find_server(args.dsn), quick=False, peers=False)
    roots = {str(tree): cpu_per_task.tree_root(tree) for tree in args.tree}
    try:
        samples = measure(ctx, roots, args.turns)
    finally:
        for root in roots.values():
            if root != REPO:
                shutil.rmtree(root, ignore_errors=True)
    for line in compare(samples):
        print(json.dumps(line))


if __name__ == "__main__":
    main()
