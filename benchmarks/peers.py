"""peers: procrastinate and pgqueuer, plus their latency scripts, from /work/shared/bench-peers.

They run in their own virtual environment (.venv-peers, created here on first use from the
scripts' requirements.txt), never as anchor-py dependencies; each script gets a scratch database
of its own and prints one JSON line, which becomes one result here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
    latency_scripts = (("bench_pgqueuer_latency.py", "pgqueuer"), ("bench_procrastinate_latency.py", "procrastinate"))
    for file, system in latency_scripts:
        with ctx.scratch(f"peer_{system}_lat", migrate=False) as dsn:
            r = script(python, scripts / file, as_url(dsn), ctx.n(1000, 200), 200)
        ctx.emit("latency", system, "200/s, idle worker", n=r["n"], rate_per_s=r["rate_per_s"], p50_ms=r["p50_ms"],
                 p95_ms=r["p95_ms"], p99_ms=r["p99_ms"])
