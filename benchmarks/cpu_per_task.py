"""cpu: CPU time per no-op task, of the Worker process and of the PostgreSQL backends serving it.

    python -m benchmarks --only cpu
    python -m benchmarks.cpu_per_task [--n 50000] [--rounds 3] [--tree DIR ...] [--profile]

A rate on shared cores moves with everyone else's load; the CPU a task costs hardly does. One worker process
(concurrency 100) is started on an empty table and left to settle, then n Noop tasks are enqueued in one
transaction and drained; from just before the enqueue to the last completion we take the CPU time (user +
system, from /proc) of the worker process and of every backend of the scratch database except our own
(the worker's pool, its LISTEN and heartbeat connections, its services). Start-up and imports are not
counted, so the figures are the per-task costs of the claim loop and of the SQL it sends.

``--tree DIR`` runs the worker and the migrations of another checkout (``git archive REV anchor_py sql``
unpacked in DIR) with this benchmark's driver: several trees are measured in interleaved rounds and each
gets its median, which is how two commits are compared on a busy machine. ``--profile`` runs the worker
under cProfile and prints its top functions by own time; ``--py-spy FILE`` samples it with py-spy during
the drain (``pip install py-spy``; collapsed stacks, one line per stack with its count).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import noop
from benchmarks.harness import REPO, Context, find_server, wait_until

SYSTEM = "anchor-py"
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far; 0 once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15 of proc(5))


def backends(conn: psycopg.Connection[Any]) -> dict[int, float]:
    # client backends only: an autovacuum worker's rounds depend on timing, not on the tasks
    rows = conn.execute("select pid from pg_stat_activity where datname = current_database() "
                        "and backend_type = 'client backend' and pid <> pg_backend_pid()").fetchall()
    return {pid: cpu_seconds(pid) for (pid,) in rows}


def tree_root(tree: Path | None) -> Path:
    """The directory the worker process runs in: the tree's anchor_py and sql beside our benchmarks."""
    if tree is None:
        return REPO
    root = Path(tempfile.mkdtemp(prefix="anchor-cpu-tree-"))
    for part in ("anchor_py", "sql"):
        os.symlink(tree.resolve() / part, root / part)
    os.symlink(REPO / "benchmarks", root / "benchmarks")
    return root


def measure(dsn: str, n: int, *, root: Path = REPO, profile: Path | None = None, analyse: bool = False,
            py_spy: Path | None = None) -> dict[str, Any]:
    """Drain n Noop tasks with one worker process started on the (migrated) database ``dsn``; ``analyse``:
    the table analysed in the enqueue's transaction (for schemas whose claim still depends on statistics)."""
    out = Path(tempfile.mkstemp(prefix="anchor-cpu-", suffix=".json")[1])
    done_file = out.with_suffix(".done")
    command = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []),
               "-m", "benchmarks.workerproc", dsn, "--concurrency", "100", "--out", str(out),
               "--done-file", str(done_file), "--done-at", str(n)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        noop.register(conn)
        process = subprocess.Popen(command, cwd=root)
        try:
            if not wait_until(lambda: bool(conn.execute("select count(*) from anchor.workers").fetchone()[0]), 30):
                raise RuntimeError("the benchmark worker did not register within 30 s")
            time.sleep(1.0)  # its services' first rounds
            sampler = None
            if py_spy is not None:  # attached for the drain only, sampling the worker's own CPU time
                sampler = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                            str(process.pid), "--rate", "250", "--gil", "--native", "--format", "raw",
                                            "--output", str(py_spy)], stdout=subprocess.DEVNULL)
                time.sleep(1.0)
            worker_before, backends_before = cpu_seconds(process.pid), backends(conn)
            began = time.perf_counter()
            with conn.transaction():
                for offset in range(0, n, 10_000):
                    conn.execute("select cardinality(anchor.enqueue_many('Noop', %s::jsonb))",
                                 (noop.params_json(min(10_000, n - offset), offset),))
                if analyse:
                    conn.execute("analyze anchor.tasks")
            if not wait_until(done_file.exists, 600, 0.02):
                raise RuntimeError(f"the worker did not run {n} tasks within 600 s")

            def all_succeeded() -> bool:
                row = conn.execute("select count(*) from anchor.tasks where state = 'succeeded'").fetchone()
                return row is not None and row[0] >= n

            wait_until(all_succeeded, 30, 0.01)
            seconds = time.perf_counter() - began
            worker_cpu = cpu_seconds(process.pid) - worker_before
            backends_after = backends(conn)
            server_cpu = sum(cpu - backends_before.get(pid, 0.0) for pid, cpu in backends_after.items())
            if sampler is not None:
                sampler.send_signal(signal.SIGINT)
                sampler.wait(60)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait(60)
            out.unlink(missing_ok=True)
            done_file.unlink(missing_ok=True)
    return {"n": n, "per_s": round(n / seconds), "worker_cpu_us_per_task": round(worker_cpu * 1e6 / n, 1),
            "server_cpu_us_per_task": round(server_cpu * 1e6 / n, 1)}


def run(ctx: Context) -> None:
    n = ctx.n(50_000, 5_000)
    with ctx.scratch("cpu") as dsn:
        ctx.emit("cpu", SYSTEM, "Worker, 1 process, concurrency 100, per no-op task", **measure(dsn, n))


def install(dsn: str, root: Path) -> None:
    subprocess.run([sys.executable, "-c", "import sys; from anchor_py.migrate import install; install(sys.argv[1])",
                    dsn], cwd=root, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--tree", type=Path, action="append", help="a checkout to measure (repeatable)")
    parser.add_argument("--analyse", action="store_true", help="analyse the table in the enqueue's transaction")
    parser.add_argument("--profile", action="store_true", help="run the worker under cProfile (one round)")
    parser.add_argument("--py-spy", type=Path, help="sample the worker with py-spy into this file (raw format)")
    parser.add_argument("--dsn")
    args = parser.parse_args()
    ctx = Context(server=find_server(args.dsn), quick=False, peers=False)
    trees: list[Path | None] = list(args.tree) if args.tree else [None]
    roots = {str(tree): tree_root(tree) for tree in trees}
    figures: dict[str, list[dict[str, Any]]] = {str(tree): [] for tree in trees}
    try:
        for round_ in range(args.rounds):
            for tree in trees:
                root = roots[str(tree)]
                with ctx.scratch("cpu", migrate=False) as dsn:
                    install(dsn, root)
                    profile = Path(tempfile.mkstemp(suffix=".prof")[1]) if args.profile else None
                    result = measure(dsn, args.n, root=root, profile=profile, analyse=args.analyse, py_spy=args.py_spy)
                figures[str(tree)].append(result)
                print(json.dumps({"round": round_, "tree": str(tree), "load": round(os.getloadavg()[0], 2),
                                  **result}), flush=True)
                if profile is not None:
                    import pstats

                    pstats.Stats(str(profile)).sort_stats("tottime").print_stats(40)
                    profile.unlink()
    finally:
        for root in roots.values():
            if root != REPO:
                shutil.rmtree(root, ignore_errors=True)
    for tree, results in figures.items():
        print(json.dumps({"tree": tree, "median": {
            key: statistics.median(r[key] for r in results)
            for key in ("per_s", "worker_cpu_us_per_task", "server_cpu_us_per_task")}}))


if __name__ == "__main__":
    main()
