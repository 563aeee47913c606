"""`anchor worker`: run a worker process until SIGTERM/SIGINT.

The executor comes from ``--app module:factory`` (the factory is called with no arguments and returns
the object implementing the generated ExecutorInterface); TASKS from the generated module (see
``anchor_py.cli.register.load_task_set``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anchor_py.cli.common import UsageError, add_dsn_option, dsn_from
from anchor_py.cli.register import add_taskgen_option, load_task_set
from anchor_py.logs import LOG_FORMATS, configure_logging
from anchor_py.worker import AbandonedThreadsError, Worker, WorkerConfig

# Exit code when too many sync executions overran their timeout: the supervisor should restart us.
EXIT_ABANDONED_THREADS = 70


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="run a worker: claim and execute tasks until SIGTERM/SIGINT",
        description="Run tasks with the executor your factory returns. SIGTERM or SIGINT stops claiming, "
        "lets running tasks finish (up to --shutdown-grace) and hands the rest back.",
    )
    parser.add_argument("--app", required=True, metavar="MODULE:FACTORY",
                        help="the factory returning your executor, e.g. myapp.tasks:make_executor")
    add_taskgen_option(parser)
    add_dsn_option(parser)
    defaults = WorkerConfig()
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency,
                        help=f"tasks run at once (default {defaults.concurrency})")
    parser.add_argument("--queues", help="comma-separated queues to serve (default: those of the tasks)")
    parser.add_argument("--poll-interval", type=float, default=defaults.poll_interval, metavar="SECONDS")
    parser.add_argument("--heartbeat-interval", type=float, default=defaults.heartbeat_interval, metavar="SECONDS")
    parser.add_argument("--heartbeat-timeout", type=float, default=defaults.heartbeat_timeout, metavar="SECONDS",
                        help="a worker silent this long is dead: its tasks are rescued")
    parser.add_argument("--rescue-interval", type=float, default=defaults.rescue_interval, metavar="SECONDS")
    parser.add_argument("--shutdown-grace", type=float, default=defaults.shutdown_grace, metavar="SECONDS")
    parser.add_argument("--hook-timeout", type=float, default=defaults.hook_timeout, metavar="SECONDS")
    parser.add_argument("--hook-attempts", type=int, default=defaults.hook_attempts)
    parser.add_argument("--worker-id", help="default: host-pid-random")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics of this worker on http://HOST:PORT/metrics "
                        "(needs the dashboard extra: prometheus-client)")
    parser.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                        help="address for --metrics-port (default 127.0.0.1)")
    parser.add_argument("--metrics-database", action="store_true",
                        help="also serve the database gauges (queue depth, tasks per state, workers) on the "
                        "worker's endpoint; leave off when a dashboard already serves them")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text")
    parser.add_argument("--log-level", default="INFO")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    tasks = load_task_set(args.taskgen)
    executor = _load_executor(args.app)
    try:
        config = WorkerConfig(
            concurrency=args.concurrency,
            queues=[q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None,
            poll_interval=args.poll_interval,
            heartbeat_interval=args.heartbeat_interval,
            heartbeat_timeout=args.heartbeat_timeout,
            rescue_interval=args.rescue_interval,
            shutdown_grace=args.shutdown_grace,
            hook_timeout=args.hook_timeout,
            hook_attempts=args.hook_attempts,
            worker_id=args.worker_id,
        )
        dsn = dsn_from(args)
        worker_metrics, stop_metrics = _start_metrics(args, dsn)
        worker = Worker(dsn, executor, tasks, config, metrics=worker_metrics)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from exc
    try:
        asyncio.run(worker.run(install_signal_handlers=True))
    except AbandonedThreadsError:
        # those threads cannot be stopped and would keep the interpreter from exiting
        logging.shutdown()
        os._exit(EXIT_ABANDONED_THREADS)
    finally:
        if stop_metrics is not None:
            stop_metrics()
    if worker.abandoned_threads:
        logging.shutdown()
        os._exit(0)
    return 0


def _start_metrics(args: argparse.Namespace, dsn: str) -> tuple[Any, Callable[[], None] | None]:
    """With --metrics-port: the worker's metric objects and the function stopping their HTTP server."""
    if args.metrics_port is None:
        return None, None
    if not 0 <= args.metrics_port <= 65535:
        raise UsageError(f"--metrics-port must be a TCP port (0-65535), got {args.metrics_port}")
    try:
        from anchor_py import metrics
    except ImportError as exc:
        raise UsageError(f"--metrics-port needs prometheus-client: pip install 'anchor-py[dashboard]' ({exc})") from exc
    try:
        stop = metrics.start_metrics_server(args.metrics_port, addr=args.metrics_host,
                                            dsn=dsn if args.metrics_database else None)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}") from exc
    logging.getLogger("anchor_py.worker").info(
        "metrics on http://%s:%s/metrics", args.metrics_host, args.metrics_port)
    return metrics.WORKER, stop


def _load_executor(app: str) -> object:
    module_name, _, attribute = app.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--app must look like module:factory, got {app!r}")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise UsageError(f"{module_name} has no callable {attribute!r}")
    return factory()
