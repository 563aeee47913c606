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
from datetime import timedelta
from pathlib import Path
from typing import Any

from anchor_py.cli.common import UsageError, add_dsn_option, dsn_from
from anchor_py.cli.register import add_taskgen_option, load_task_set
from anchor_py.durations import InvalidDuration, parse_duration
from anchor_py.logs import LOG_FORMATS, configure_logging
from anchor_py.worker import AbandonedThreadsError, DatabaseSetupError, Worker, WorkerConfig

# Exit code when too many sync executions overran their timeout: the supervisor should restart us.
EXIT_ABANDONED_THREADS = 70
# Exit code when the database cannot serve the worker until someone fixes the setup (sysexits' EX_CONFIG):
# a supervisor restarting us would only repeat the error.
EXIT_DATABASE_SETUP = 78

# The duration options, with what each sets; values such as "500ms", "20s", "1m30s" (anchor_py.durations).
_DURATION_OPTIONS = {
    "poll-interval": "look for due tasks at least this often, even without a notification",
    "heartbeat-interval": "how often the worker tells the database it is alive",
    "heartbeat-timeout": "a worker silent this long is dead: its tasks are rescued",
    "rescue-interval": "how often the rescuer looks for dead workers' tasks",
    "shutdown-grace": "on SIGTERM/SIGINT, how long running tasks may finish before they are handed back",
    "hook-timeout": "the longest an onFailed hook may run",
}


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="run a worker: claim and execute tasks until SIGTERM/SIGINT",
        description="Run tasks with the executor your factory returns. SIGTERM or SIGINT stops claiming, "
        "lets running tasks finish (up to --shutdown-grace) and hands the rest back; a second signal stops "
        "at once. While the database cannot be reached the worker retries; a problem only a person can fix "
        "exits at once.",
        epilog=f"exit codes: 0 stopped by a signal; 2 usage error; {EXIT_DATABASE_SETUP} the database cannot serve "
        "a worker until its setup changes (no such database or role, authentication failed, a malformed DSN, "
        f"the SQL core missing or older: run `anchor install-sql`); {EXIT_ABANDONED_THREADS} too many sync "
        "executions overran their timeout (restart the process).",
    )
    parser.add_argument("--app", required=True, metavar="MODULE:FACTORY",
                        help="the factory returning your executor, e.g. myapp.tasks:make_executor")
    add_taskgen_option(parser)
    add_dsn_option(parser)
    defaults = WorkerConfig()
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency,
                        help=f"tasks run at once (default {defaults.concurrency})")
    parser.add_argument("--queues", help="comma-separated queues to serve (default: those of the tasks)")
    for option, text in _DURATION_OPTIONS.items():
        default = getattr(defaults, option.replace("-", "_"))
        parser.add_argument(f"--{option}", default=default, type=str, metavar="DURATION",
                            help=f"{text} (default {_format_duration(default)})")
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
    try:
        config = WorkerConfig(
            concurrency=args.concurrency,
            queues=[q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None,
            poll_interval=_duration(args, "poll-interval"),
            heartbeat_interval=_duration(args, "heartbeat-interval"),
            heartbeat_timeout=_duration(args, "heartbeat-timeout"),
            rescue_interval=_duration(args, "rescue-interval"),
            shutdown_grace=_duration(args, "shutdown-grace"),
            hook_timeout=_duration(args, "hook-timeout"),
            hook_attempts=args.hook_attempts,
            worker_id=args.worker_id,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    tasks = load_task_set(args.taskgen)
    executor = _load_executor(args.app)
    dsn = dsn_from(args)
    worker_metrics, stop_metrics = _start_metrics(args, dsn)
    try:
        try:
            worker = Worker(dsn, executor, tasks, config, metrics=worker_metrics)
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from exc
        asyncio.run(worker.run(install_signal_handlers=True))
    except DatabaseSetupError as exc:
        print(f"anchor worker: {exc}", file=sys.stderr)
        return EXIT_DATABASE_SETUP
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


def _duration(args: argparse.Namespace, option: str) -> timedelta:
    value = getattr(args, option.replace("-", "_"))
    if isinstance(value, timedelta):  # the default
        return value
    try:
        return parse_duration(value)
    except InvalidDuration as exc:
        raise UsageError(f"--{option}: {exc.text!r} {exc.reason} (expected e.g. 500ms, 20s, 1m30s)") from None


def _format_duration(value: timedelta) -> str:
    milliseconds = round(value.total_seconds() * 1000)
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


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
