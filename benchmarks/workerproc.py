"""One benchmark worker process: the real anchor_py Worker running the Noop executor.

    python -m benchmarks.workerproc DSN --concurrency 100 [--stop-after N] [--metrics] [--soak | --flow]
        [--done-at N --done-file PATH] [--latency-file PATH] --out result.json

Runs until SIGTERM, or until it has executed N tasks; then writes what it measured (executions,
the wall-clock time of the N-th execution, enqueue -> start latencies, peak RSS) as JSON to --out.
``--done-at N`` touches ``--done-file`` after N executions and runs on (its connections stay open, so their
backends' CPU can still be read).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import time
from datetime import timedelta
from pathlib import Path

from anchor_py.worker import Worker, WorkerConfig
from benchmarks.noop import TASKS, NoopExecutor


async def run(args: argparse.Namespace) -> dict[str, object]:
    tasks = TASKS
    executor = NoopExecutor()
    if args.soak:
        from benchmarks.soak import SOAK_TASKS, SoakExecutor

        tasks, executor = SOAK_TASKS, SoakExecutor()
    elif args.flow:
        from benchmarks.flow import FLOW_TASKS

        tasks = FLOW_TASKS
    config = WorkerConfig(concurrency=args.concurrency, poll_interval=timedelta(seconds=args.poll_interval))
    metrics = None
    if args.metrics:
        from anchor_py.metrics import WorkerMetrics

        metrics = WorkerMetrics()  # recorded, not served: what recording costs is the question
    worker = Worker(args.dsn, executor, tasks=tasks, config=config, metrics=metrics)
    result: dict[str, object] = {"t_done": None}
    stopper: list[asyncio.Task[None]] = []

    def on_count(count: int) -> None:
        if args.done_at and count == args.done_at:
            Path(args.done_file).touch()
        if args.stop_after and count == args.stop_after:
            result["t_done"] = time.time()
            stopper.append(asyncio.get_running_loop().create_task(worker.stop()))

    executor.on_count = on_count
    if args.latency_file:  # each latency as it is measured, one per line (benchmarks.ab reads them turn by turn)
        latency_file = open(args.latency_file, "a", encoding="utf-8")  # noqa: SIM115 (open for the run)

        written = 0

        def on_count_and_latency(count: int) -> None:
            nonlocal written
            if len(executor.latencies_ms) > written:
                latency_file.writelines(f"{value}\n" for value in executor.latencies_ms[written:])
                latency_file.flush()
                written = len(executor.latencies_ms)
            on_count(count)

        executor.on_count = on_count_and_latency
    await worker.run(install_signal_handlers=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(
        executed=executor.count,
        cpu_s=usage.ru_utime + usage.ru_stime,
        latencies_ms=executor.latencies_ms,
        max_rss_kb=usage.ru_maxrss,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--stop-after", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--done-at", type=int, default=0, help="touch --done-file after this many executions")
    parser.add_argument("--done-file", default="")
    parser.add_argument("--latency-file", default="", help="append each enqueue -> start latency (ms) to this file")
    parser.add_argument("--metrics", action="store_true", help="record Prometheus metrics (as --metrics-port does)")
    parser.add_argument("--soak", action="store_true", help="run the soak task set (Noop + a cron task)")
    parser.add_argument("--flow", action="store_true", help="run the flow task set (Noop + a per-key limited twin)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(run(args))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
