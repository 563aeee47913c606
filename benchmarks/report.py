"""The readable end of a run: every result as a table row, then the targets as ratios."""

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
    """(target, measured ratio text, met?) for each target the run has the numbers for."""
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

    def first(scenario: str, system: str, variant: str) -> Result | None:
        return next(iter(_find(results, scenario, system, variant)), None)

    drain1 = first("drain", "anchor-py", "Worker, 1 process, concurrency 100")
    floor_drains = _find(results, "drain", "floor", "batch 100")
    # the floor drain run next to the Worker's (benchmarks/drain.py) when the run has it
    floor_drain = next(iter([r for r in floor_drains if "Worker" in r.variant] or floor_drains), None)
    idealised = next(iter(r for r in _find(results, "drain", "anchor-py", "Worker, 1 process")
                          if "idealised" in r.variant), None)
    ratio("drain after a bulk enqueue >= 0.9x the analysed table's", drain1, idealised, "per_s", 0.9, what="tasks/s")
    sql = first("drain", "anchor-py", "SQL claim+complete, batch 100, no Worker")
    ratio("SQL core drain >= 0.8x floor", sql, floor_drain, "per_s", 0.8, what="tasks/s")
    ratio("Worker drain >= 0.6x floor (batch 100)", drain1, floor_drain, "per_s", 0.6, what="tasks/s")
    ratio("Worker drain >= 2x pgqueuer best", drain1, _best(_find(results, "drain", "pgqueuer"), "per_s"), "per_s",
          2.0, what="tasks/s")
    ratio("Worker drain >= 20x procrastinate best", drain1,
          _best(_find(results, "drain", "procrastinate"), "per_s"), "per_s", 20.0, what="tasks/s")
    shapes = _find(results, "claim-shapes", "anchor-py")
    base = first("claim-shapes", "anchor-py", "baseline")
    worst = next(iter(reversed([r for r in shapes if "cumulative" in r.variant])), None)
    for key in ("p50_ms", "buffers"):
        if base is not None and worst is not None:
            a, b = float(worst.metrics[key]), float(base.metrics[key])
            rows.append((f"claim {key} with every shape within 20% of the baseline", f"{a / b:.2f}x ({a:g} vs {b:g})",
                         a <= 1.2 * b))
    single = first("enqueue-single", "anchor-py", "1 client, run_")
    ratio("enqueue-single (1 client) >= 0.9x floor INSERT + NOTIFY", single,
          first("enqueue-single", "floor", "1 client, INSERT + NOTIFY"), "per_s", 0.9, what="/s")
    ratio("enqueue-batch >= pgqueuer's", first("enqueue-batch", "anchor-py", "run_"),
          _best(_find(results, "enqueue-batch", "pgqueuer"), "per_s"), "per_s", 1.0, what="/s")
    # latency: the interleaved rounds (same topology for everyone) when the run has them
    matched = [r for r in results if r.scenario == "latency" and "interleaved" in r.variant]
    lat_pool = matched or results
    lat = next(iter(_find(lat_pool, "latency", "anchor-py", "200/s")), None)
    peers = [r for r in lat_pool if r.scenario == "latency" and r.system.split()[0] in ("pgqueuer", "procrastinate")]
    best = _best(peers, "p99_ms", low=True)
    ratio("latency p99 better than best peer" + (f" ({best.system})" if best else ""), lat, best, "p99_ms", 1.0,
          low=True, what="ms")
    floor_lat = next(iter(_find(lat_pool, "latency", "floor")), None)
    ratio("latency p50 within 1.5x floor", floor_lat, lat, "p50_ms", 1 / 1.5, what="ms (floor vs ours)")
    steady90 = first("steady", "anchor-py", "90%")
    floor90 = first("steady", "floor", "90%")
    ratio("steady 90%: p99 within 5x the floor's at the same rate", floor90, steady90, "p99_ms", 0.2,
          what="ms (floor vs ours)")
    backlog = first("backlog", "anchor-py", "drain")
    if backlog is not None and drain1 is not None:
        a, b = float(backlog.metrics["per_s"]), float(drain1.metrics["per_s"])
        rows.append(("backlog drain within 20% of empty", f"{a / b:.2f}x ({a:g} vs {b:g} tasks/s)", a >= 0.8 * b))
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
