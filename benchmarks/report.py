"""The readable end of a run: every result as a table row, then the issue-6 targets as ratios."""

from __future__ import annotations

from typing import Any

from benchmarks.harness import Result


def _find(results: list[Result], scenario: str, system_prefix: str, variant_prefix: str = "") -> list[Result]:
    return [r for r in results if r.scenario == scenario and r.system.startswith(system_prefix)
            and r.variant.startswith(variant_prefix)]


def _best(results: list[Result], key: str, *, low: bool = False) -> Result | None:
    have = [r for r in results if isinstance(r.metrics.get(key), (int, float))]
    if not have:
        return None
    return (min if low else max)(have, key=lambda r: r.metrics[key])


def targets(results: list[Result]) -> list[tuple[str, str, bool | None]]:
    """(target, measured ratio text, met?) for each issue-6 target the run has the numbers for."""
    rows: list[tuple[str, str, bool | None]] = []

    def ratio(name: str, ours: Result | None, theirs: Result | None, key: str, need: float, *, low: bool = False,
              what: str = "") -> None:
        if ours is None or theirs is None:
            rows.append((name, "not measured in this run", None))
            return
        a, b = float(ours.metrics[key]), float(theirs.metrics[key])
        value = (b / a) if low else (a / b)
        met = value >= need
        rows.append((name, f"{value:.2f}x ({a:g} vs {b:g} {what})".rstrip(), met))

    drain1 = next(iter(_find(results, "drain", "anchor-py", "Worker, 1 process")), None)
    floor_drains = _find(results, "drain", "floor", "batch 100")
    # the floor drain run next to the Worker's (benchmarks/drain.py) when the run has it
    floor_drain = next(iter([r for r in floor_drains if "Worker" in r.variant] or floor_drains), None)
    ratio("drain >= 0.6x floor (batch 100)", drain1, floor_drain, "per_s", 0.6, what="tasks/s")
    ratio("drain >= 2x pgqueuer best", drain1, _best(_find(results, "drain", "pgqueuer"), "per_s"), "per_s", 2.0,
          what="tasks/s")
    ratio("drain >= 20x procrastinate best", drain1, _best(_find(results, "drain", "procrastinate"), "per_s"),
          "per_s", 20.0, what="tasks/s")
    single = next(iter(_find(results, "enqueue-single", "anchor-py", "1 client, run_")), None)
    ratio("enqueue-single (1 client) >= 0.9x floor", single,
          next(iter(_find(results, "enqueue-single", "floor", "1 client")), None), "per_s", 0.9, what="/s")
    # latency: the interleaved rounds (same topology for everyone) when the run has them
    matched = [r for r in results if r.scenario == "latency" and "interleaved" in r.variant]
    lat_pool = matched or results
    lat = next(iter(_find(lat_pool, "latency", "anchor-py", "200/s")), None)
    peers = [r for r in lat_pool if r.scenario == "latency" and r.system.split()[0] in ("pgqueuer", "procrastinate")]
    for key in ("p50_ms", "p99_ms"):
        best = _best(peers, key, low=True)
        ratio(f"latency {key[:3]} better than best peer", lat, best, key, 1.0, low=True, what="ms")
        if rows[-1][2] is not None and lat is not None and best is not None:
            rows[-1] = (rows[-1][0] + f" ({best.system})", *rows[-1][1:])
    floor_lat = next(iter(_find(lat_pool, "latency", "floor")), None)
    if lat is not None and floor_lat is not None:
        a, b = float(lat.metrics["p50_ms"]), float(floor_lat.metrics["p50_ms"])
        rows.append(("latency p50 within 2x floor", f"{a / b:.2f}x ({a:g} vs {b:g} ms)", a <= 2 * b))
    else:
        rows.append(("latency p50 within 2x floor", "not measured in this run", None))
    backlog = next(iter(_find(results, "backlog", "anchor-py", "drain")), None)
    if backlog is not None and drain1 is not None:
        a, b = float(backlog.metrics["per_s"]), float(drain1.metrics["per_s"])
        rows.append(("backlog drain within 20% of empty", f"{a / b:.2f}x ({a:g} vs {b:g} tasks/s)", a >= 0.8 * b))
    else:
        rows.append(("backlog drain within 20% of empty", "not measured in this run", None))
    return rows


def _cell(value: Any) -> str:
    return "" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def print_report(results: list[Result], *, elapsed: float, load: tuple[float, float, float]) -> None:
    columns = ["per_s", "p50_ms", "p95_ms", "p99_ms", "n"]
    header = ["scenario", "system", "variant", *columns, "other"]
    rows = []
    for r in results:
        other = ", ".join(f"{k}={_cell(v)}" for k, v in r.metrics.items() if k not in columns)
        rows.append([r.scenario, r.system, r.variant, *(_cell(r.metrics.get(c)) for c in columns), other])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)))
    print()
    print("targets, ratios measured in this run:")
    for name, text, met in targets(results):
        mark = {True: "MET   ", False: "MISSED", None: "  -   "}[met]
        print(f"  {mark}  {name}: {text}")
    print(f"\nran in {elapsed:.0f}s; load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
