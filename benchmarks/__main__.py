"""The benchmark harness (`make bench`): runs the chosen scenarios, then prints the table and the target check.

    python -m benchmarks [--peers] [--only drain,latency] [--quick] [--dsn DSN] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from benchmarks import (
    backlog,
    claimshapes,
    cpu_per_task,
    drain,
    enqueue,
    floor,
    flow,
    latency,
    peers,
    results,
    retention,
    steady,
    workflows,
)
from benchmarks.harness import REPO, Context, find_server
from benchmarks.report import print_report

# In the order they run; peers only with --peers.
SCENARIOS: dict[str, Callable[[Context], None]] = {
    "floor": floor.run,
    "enqueue-single": enqueue.run_single,
    "enqueue-batch": enqueue.run_batch,
    "drain": drain.run,
    "workers": drain.run_processes,
    "flow": flow.run,
    "cpu": cpu_per_task.run,
    "steady": steady.run,
    "latency": latency.run,
    "result-latency": results.run,
    "backlog": backlog.run,
    "claim-shapes": claimshapes.run,
    "retention": retention.run,
    "workflows": workflows.run,
    "peers": peers.run,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", action="store_true",
                        help="also run procrastinate and pgqueuer (in their own venv, .venv-peers)")
    parser.add_argument("--only", help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument("--steady-seconds", type=float,
                        help="duration of each rate of the steady scenario (default 120, --quick 10)")
    parser.add_argument("--dsn", help="server to use (default: $DATABASE_URL, 127.0.0.1:5432, else embedded)")
    parser.add_argument("--out", help="also append the JSON lines to this file (default: bench-results/<time>.jsonl)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chosen = [s for s in SCENARIOS if s != "peers" or args.peers]
    if args.only:
        chosen = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in SCENARIOS]
        if unknown:
            print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
            return 2
    out_path = Path(args.out) if args.out else REPO / "bench-results" / time.strftime("bench-%Y%m%d-%H%M%S.jsonl")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ctx = Context(server=find_server(args.dsn), quick=args.quick, peers=args.peers,
                  steady_seconds=args.steady_seconds)
    started = time.monotonic()
    print(f"# server: {conninfo_to_dict(ctx.server).get('host')}:{conninfo_to_dict(ctx.server).get('port')}, "
          f"load: {os.getloadavg()[0]:.2f}, scenarios: {', '.join(chosen)}", file=sys.stderr, flush=True)
    failed: list[str] = []
    with out_path.open("a", encoding="utf-8") as out:
        ctx.out = out
        for name in chosen:
            t = time.monotonic()
            print(f"# {name} ...", file=sys.stderr, flush=True)
            try:
                SCENARIOS[name](ctx)
            except Exception as exc:  # one broken scenario must not hide the others' numbers
                failed.append(name)
                print(f"# {name} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            print(f"# {name} took {time.monotonic() - t:.0f}s", file=sys.stderr, flush=True)
    print_report(ctx.results, elapsed=time.monotonic() - started, load=os.getloadavg())
    print(f"# results appended to {out_path}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
