"""`anchor bench`: the benchmark harness (the same as `make bench` / `python -m benchmarks`).

The harness lives in the repository's `benchmarks/` package (it is not part of the wheel): run it
from a checkout. Arguments after `bench` go to the harness unchanged (see `anchor bench --help`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from anchor_py.cli.common import UsageError


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="throughput and latency benchmarks (--peers adds procrastinate and pgqueuer)",
        description="Run the benchmark harness of a repository checkout; arguments go to `python -m benchmarks`.",
    )
    parser.add_argument("--peers", action="store_true", help="also run procrastinate and pgqueuer (own venv)")
    parser.add_argument("--only", help="comma-separated scenarios (floor, enqueue-single, drain, latency, ...)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument("--dsn", help="server to use (default: $DATABASE_URL, 127.0.0.1:5432, else embedded)")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "benchmarks" / "harness.py").is_file():
        raise UsageError("the benchmark harness ships with the repository, not the wheel: run it from a checkout")
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    harness = importlib.import_module("benchmarks.harness")
    argv = [flag for flag in ("--peers", "--quick") if getattr(args, flag[2:])]
    for option in ("only", "dsn", "out"):
        if getattr(args, option):
            argv += [f"--{option}", getattr(args, option)]
    code: int = harness.main(argv)
    return code
