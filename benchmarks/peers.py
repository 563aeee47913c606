"""peers: procrastinate and pgqueuer, plus their latency scripts, from /work/shared/bench-peers.

Latency is compared in interleaved rounds (anchor-py in the same process as its client, as the peers'
scripts run, the floor, pgqueuer, procrastinate; ROUNDS times), each system's median reported.

They run in their own virtual environment (.venv-peers, created here on first use from the
scripts' requirements.txt), never as anchor-py dependencies; each script gets a scratch database
of its own and prints one JSON line, which becomes one result here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from benchmarks.harness import REPO, Context

VENV = REPO / ".venv-peers"


def peers_dir() -> Path:
    for candidate in (os.environ.get("ANCHOR_BENCH_PEERS"), REPO.parent / "shared" / "bench-peers",
                      Path("/work/shared/bench-peers")):
        if candidate and (Path(candidate) / "requirements.txt").is_file():
            return Path(candidate)
    raise RuntimeError("bench-peers scripts not found (set ANCHOR_BENCH_PEERS to their directory)")


def ensure_venv(scripts: Path) -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirements"
    wanted = (scripts / "requirements.txt").read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"# creating {VENV} for the peers (once)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(scripts / "requirements.txt")],
                   check=True)
    stamp.write_text(wanted)
    return python


def script(python: Path, path: Path, dsn: str, *args: int | float, timeout: float = 300) -> dict[str, Any]:
    done = subprocess.run([str(python), str(path), dsn, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{path.name} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def as_url(dsn: str) -> str:
    """asyncpg (pgqueuer) takes only URLs, not libpq key=value strings."""
    p = conninfo_to_dict(dsn)
    auth = quote(str(p.get("user") or "postgres")) + (f":{quote(str(p['password']))}" if p.get("password") else "")
    return f"postgresql://{auth}@{p.get('host') or '127.0.0.1'}:{p.get('port') or 5432}/{p['dbname']}"


def run(ctx: Context) -> None:
    scripts = peers_dir()
    python = ensure_venv(scripts)
    runs = [
        # (script, system, N_DRAIN, N_SINGLE, CONCURRENCY): procrastinate is slow, so it drains fewer tasks
        ("bench_procrastinate.py", "procrastinate", ctx.n(5000, 500), ctx.n(1000, 200), 50),
        ("bench_pgqueuer.py", "pgqueuer", ctx.n(20000, 2000), ctx.n(1000, 200), 100),
        ("bench_pgqueuer.py", "pgqueuer", ctx.n(20000, 2000), ctx.n(1000, 200), 200),
    ]
    for file, system, n, n_single, conc in runs:
        with ctx.scratch(f"peer_{system}", migrate=False) as dsn:
            r = script(python, scripts / file, as_url(dsn), n, n_single, conc)
        label = str(r.get("system", system))
        ctx.emit("drain", label, f"concurrency/batch {conc}", n=r["n"], per_s=r["drain_per_s"],
                 not_succeeded=r.get("not_succeeded"))
        if conc != 200:  # one single-enqueue figure per peer is enough
            ctx.emit("enqueue-single", label, "1 client", n=n_single, per_s=r["enqueue_single_per_s"])
            ctx.emit("enqueue-batch", label, "1k per call", n=n, per_s=r["enqueue_batch_per_s"])
    latency_rounds(ctx, python, scripts)


# Latency on 2 shared cores is bimodal (a run lands in a quiet or a busy stretch of the other tenants: p50
# 3 ms or 11 ms for the same code), so one run per system compares luck. Instead every system runs in each
# of ROUNDS interleaved rounds and the median of its rounds is reported, for p50, p95 and p99 separately.
ROUNDS = 3
MATCHED = f"200/s, idle worker, same process, median of {ROUNDS} interleaved rounds"


def latency_rounds(ctx: Context, python: Path, scripts: Path) -> None:
    from benchmarks import floor, latency, noop

    n = ctx.n(1000, 200)

    def anchor_py() -> dict[str, Any]:
        with ctx.scratch("latr_anchor") as dsn:
            with psycopg.connect(dsn, autocommit=True) as conn:
                noop.register(conn)
            return latency.measure_same_process(dsn, n, 200.0)

    def bare() -> dict[str, Any]:
        with ctx.scratch("latr_floor", migrate=False) as dsn:
            return floor.latency(dsn, n, 200.0)

    def peer(file: str) -> Callable[[], dict[str, Any]]:
        def measure() -> dict[str, Any]:
            with ctx.scratch("latr_peer", migrate=False) as dsn:
                return script(python, scripts / file, as_url(dsn), n, 200)
        return measure

    systems: dict[str, Callable[[], dict[str, Any]]] = {
        "anchor-py": anchor_py,
        "floor (bare SQL)": bare,
        "pgqueuer": peer("bench_pgqueuer_latency.py"),
        "procrastinate": peer("bench_procrastinate_latency.py"),
    }
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    for _ in range(ROUNDS):
        for name, measure in systems.items():
            rounds[name].append(measure())
    for name, results in rounds.items():
        metrics: dict[str, Any] = {"n": sum(int(r["n"]) for r in results), "rate_per_s": 200.0}
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            metrics[key] = sorted(float(r[key]) for r in results)[len(results) // 2]
        metrics["rounds_p50_ms"] = [r["p50_ms"] for r in results]
        metrics["rounds_p99_ms"] = [r["p99_ms"] for r in results]
        ctx.emit("latency", name, MATCHED, **metrics)
