"""The campaign's report, read from the tables once the queue settled: the invariants (none lost, all final,
no attempt executed twice, every duplicate execution explained by a death, every failed hooked task's hook
committed exactly once, every cron fire time enqueued once) and the recovery times.

A duplicate execution is an execution whose outcome the queue never recorded (so the task ran again). It
is explained when a death landed between its start and the task's next execution: the SIGKILL of its own
worker process, that process exiting by itself, a PostgreSQL restart, or a connection cut.

Recovery after a kill: from the SIGKILL until every task the dead worker held (held at the kill, or rescued
from it later) is running in another worker, or is final. Recovery after a restart: from the server
accepting connections again until the first task completes.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tests.faults.aim import VICTIM_PICKERS
from tests.faults.harness import Fleet, connect, table_problems, unaccounted_executions

if TYPE_CHECKING:
    from tests.faults.campaign import FaultLog

# Per killed worker: the phases its death is seen to have interrupted, from what it left behind (a kill
# "landed" in a phase when its victim was inside it just before the SIGKILL; these are its traces). A claim:
# tasks it claimed but never started were rescued from it (a claim killed before its commit rolls back
# and leaves none). An execution: one it started never ended. A completion batch: an execution it ended
# was not written when it died (rescued from it later, or still held at the kill and written afterwards by
# its backend: the statement was in flight). A hook: a hook it began never committed.
_LANDED = """
select
    exists (select 1 from anchor.task_events e
            where e.kind = 'rescued' and e.worker_id = %(worker_id)s and e.details ->> 'from_state' = 'running'
              and not exists (select 1 from fault_runs s where s.pid = %(pid)s and s.kind = 'exec_start'
                              and s.task_id = e.task_id and s.attempt = e.attempt)) as claim,
    exists (select 1 from fault_runs s where s.pid = %(pid)s and s.kind = 'exec_start'
              and not exists (select 1 from fault_runs x where x.pid = %(pid)s and x.kind = 'exec_end'
                              and x.task_id = s.task_id and x.attempt = s.attempt)) as execution,
    exists (select 1 from fault_runs x join anchor.tasks t on t.id = x.task_id
            where x.pid = %(pid)s and x.kind = 'exec_end'
              and (exists (select 1 from anchor.task_events e where e.task_id = x.task_id and e.attempt = x.attempt
                               and e.kind = 'rescued' and e.worker_id = %(worker_id)s)
                   or (t.id = any(%(held)s) and t.state = 'succeeded' and t.attempts = x.attempt))) as completion,
    exists (select 1 from fault_runs h where h.pid = %(pid)s and h.kind = 'hook_start'
              and not exists (select 1 from hook_log l where l.task_id = h.task_id and l.pid = %(pid)s)) as hook
"""
# For one kill: when each task the dead worker held ran elsewhere (its next execution or hook began in
# another process) or became final (a statement in flight at the kill may commit a completion dated a few
# ms before it: the kill's moment then); null while neither happened.
_KILL_RECOVERY = """
with held as (
    select e.task_id from anchor.task_events e where e.kind = 'rescued' and e.worker_id = %(worker_id)s
    union
    select unnest(%(held)s::bigint[])
)
select h.task_id, extract(epoch from least(
    (select min(r.at) from fault_runs r where r.task_id = h.task_id and r.kind in ('exec_start', 'hook_start')
        and r.pid <> %(pid)s and r.at > to_timestamp(%(at)s)),
    (select greatest(t.finished_at, to_timestamp(%(at)s)) from anchor.tasks t
        where t.id = h.task_id and t.finished_at is not null)
))::float8 as back
from held h
"""


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """count, p50, p99 and max (nearest rank), in seconds rounded to ms."""
    ordered = sorted(values)

    def rank(p: float) -> float | None:
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 3) if ordered else None

    return {"count": len(ordered), "p50": rank(50), "p99": rank(99), "max": rank(100)}


def _explain(execution: dict[str, Any], log: FaultLog, exited: set[int], end: float) -> str | None:
    """The death that landed during ``execution`` (before the task's next execution began), if any."""
    start = execution["at"].timestamp()
    until = execution["next_at"].timestamp() if execution["next_at"] is not None else end
    # a process dies once, so its kill ends every execution it ran (one that the server recorded a few ms
    # after the SIGKILL was sent had been started before it)
    if any(k["pid"] == execution["pid"] and k["at"] <= until for k in log.kills):
        return "kill"
    if execution["pid"] in exited:
        return "worker exited"
    if any(r["down_at"] <= until and r["back_at"] >= start for r in log.restarts):
        return "restart"
    if any(start <= c["at"] <= until for c in log.cuts):
        return "cut"
    return None


def analyse(dsn: str, log: FaultLog, ids: dict[str, list[int]], unacknowledged: list[int],
            fl: Fleet) -> dict[str, Any]:
    problems: list[str] = []
    with connect(dsn) as conn:
        late = [r["id"] for r in conn.execute(
            "select id from anchor.tasks where name <> 'CronTick' and (params ->> 'n')::int = any(%s)",
            (unacknowledged,))]
        cron = [r["id"] for r in conn.execute("select id from anchor.tasks where name = 'CronTick'")]
        enqueued = sorted({i for group in ids.values() for i in group} | set(late))
        table, found = table_problems(conn, enqueued + cron)
        problems += found
        lost = len(set(enqueued) - {r["id"] for r in conn.execute("select id from anchor.tasks")})
        cron_twice = conn.execute("""
            select scheduled_at, count(*) as n from anchor.tasks where name = 'CronTick'
            group by 1 having count(*) > 1 limit 10""").fetchall()
        if cron_twice:
            problems.append(f"a cron fire time enqueued more than once: {[dict(r) for r in cron_twice]}")
        hook_commits = {f"{r['commits']} commit(s)": r["n"] for r in conn.execute("""
            select commits, count(*) as n from (
                select t.id, count(h.task_id) as commits from anchor.tasks t left join hook_log h on h.task_id = t.id
                where t.name in ('Fails', 'SyncFails') and t.state = 'failed' group by t.id) as c
            group by 1 order by 1""")}
        hook_failed = conn.execute(
            "select count(*) as n from anchor.tasks where state = 'hook_failed'").fetchone()["n"]  # type: ignore[index]
        end = conn.execute("select extract(epoch from clock_timestamp())::float8 as now").fetchone()["now"]  # type: ignore[index]
        duplicates: dict[str, int] = {}
        not_by_kill: list[dict[str, Any]] = []  # the rare ones, listed in the report to be looked at
        for execution in unaccounted_executions(conn):
            why = _explain(execution, log, fl.exited, end) or "unexplained"
            duplicates[why] = duplicates.get(why, 0) + 1
            if why != "kill":
                not_by_kill.append({k: str(v) if isinstance(v, datetime) else v for k, v in execution.items()}
                                   | {"explained_by": why})
        unexplained = [e for e in not_by_kill if e["explained_by"] == "unexplained"]
        if unexplained:
            problems.append(f"{len(unexplained)} duplicate executions no death explains: {unexplained[:10]}")
        kill_recovery: list[float] = []
        kills_holding_nothing = 0
        unrecovered = []
        for kill in log.kills:
            arguments = {"worker_id": f"fault-{kill['pid']}", "held": kill["held"], "pid": kill["pid"],
                         "at": kill["at"]}
            rows = conn.execute(_KILL_RECOVERY, arguments).fetchall()
            traces = conn.execute(_LANDED, arguments).fetchone()
            assert traces is not None
            kill["tasks"] = len(rows)
            kill["interrupted"] = [phase for phase in VICTIM_PICKERS if traces[phase]]
            if not rows:
                kills_holding_nothing += 1
            elif any(r["back"] is None for r in rows):
                unrecovered.append(kill["pid"])
            else:
                kill["recovery_s"] = round(max(r["back"] for r in rows) - kill["at"], 3)
                kill_recovery.append(kill["recovery_s"])
        if unrecovered:
            problems.append(f"tasks of killed workers never ran elsewhere: workers {unrecovered[:10]}")
        restart_recovery = []
        for restart in log.restarts:
            first = conn.execute("""
                select extract(epoch from min(finished_at))::float8 as at from anchor.tasks
                where state = 'succeeded' and finished_at >= to_timestamp(%s)""", (restart["back_at"],)).fetchone()
            assert first is not None
            if first["at"] is None:
                problems.append(f"no task completed after the restart at {restart['back_at']}")
            else:
                restart["recovery_s"] = round(first["at"] - restart["back_at"], 3)
                restart_recovery.append(first["at"] - restart["back_at"])
    kills_by_phase = {phase: {"landed": 0, "traces": 0} for phase in VICTIM_PICKERS}
    for kill in log.kills:
        kills_by_phase[kill["phase"]]["landed"] += 1
        kills_by_phase[kill["phase"]]["traces"] += kill["phase"] in kill["interrupted"]
    for phase, missed in log.kills_without_victim.items():
        kills_by_phase[phase]["no_victim_found"] = missed
    restarts_by_mode: dict[str, int] = {}
    for restart in log.restarts:
        restarts_by_mode[restart["mode"]] = restarts_by_mode.get(restart["mode"], 0) + 1
    cuts: dict[str, int] = {}
    for cut in log.cuts:
        for name, n in cut["cut"].items():
            cuts[name] = cuts.get(name, 0) + n
    return {
        "tasks_enqueued": {kind: len(set(group)) for kind, group in ids.items()} | {
            "acknowledgement_lost_but_committed": len(late), "cron_fired": len(cron),
            "total": len(enqueued) + len(cron)},
        "unique_tag_enqueues_deduplicated": len(ids["unique"]) - len(set(ids["unique"])),
        "executions": table.executions,
        "by_state": table.by_state,
        "rescued": table.rescued,
        "kills": {"requested": len(log.kills) + sum(log.kills_without_victim.values()),
                  "landed": len(log.kills), "by_phase": kills_by_phase,
                  "holding_no_task": kills_holding_nothing},
        "workers_exited_by_themselves": len(fl.exited),
        "restarts": {"landed": len(log.restarts), "by_mode": restarts_by_mode},
        "cuts": {"rounds": len(log.cuts), "connections_cut": cuts},
        "tasks_lost": lost,
        "hook_commits_per_failed_hooked_task": hook_commits,
        "hook_failed": hook_failed,
        "duplicate_executions": {"total": sum(duplicates.values()), "explained_by": duplicates,
                                 "not_by_a_kill": not_by_kill[:50]},
        "recovery_after_kill_s": percentiles(kill_recovery),
        "recovery_after_restart_s": percentiles(restart_recovery),
        "injection_cycle_s": {"kill": percentiles([k["cycle_s"] for k in log.kills]),
                              "restart": percentiles([r["cycle_s"] for r in log.restarts])},
        "restart_log": log.restarts,
        "kill_log": log.kills,
        "cut_log": log.cuts,
        "problems": problems,
    }


def print_table(report: dict[str, Any]) -> None:
    """The report as a two-column table."""
    rows: list[tuple[str, str]] = [
        ("config", ", ".join(f"{k}={v}" for k, v in report["config"].items())),
        ("duration (s)", ", ".join(f"{k} {v}" for k, v in report["seconds"].items())),
        ("tasks enqueued", ", ".join(f"{k} {v}" for k, v in report["tasks_enqueued"].items())),
        ("executions", str(report["executions"])),
        ("final states", ", ".join(f"{k} {v}" for k, v in report["by_state"].items())),
        ("worker processes", f"{report['workers_started']} started, "
                             f"{report['workers_exited_by_themselves']} exited by themselves"),
        ("kills landed", f"{report['kills']['landed']} of {report['kills']['requested']}"
                         f" ({report['kills']['holding_no_task']} held no task)"),
    ]
    for phase, counts in report["kills"]["by_phase"].items():
        rows.append((f"  in {phase}", ", ".join(f"{k} {v}" for k, v in counts.items())))
    rows += [
        ("restarts landed", ", ".join(f"{k} {v}" for k, v in report["restarts"]["by_mode"].items()) or "0"),
        ("connections cut", ", ".join(f"{k} {v}" for k, v in report["cuts"]["connections_cut"].items()) or "0"),
        ("tasks rescued", str(report["rescued"])),
        ("tasks lost (must be 0)", str(report["tasks_lost"])),
        ("hook commits per failed task", ", ".join(f"{k}: {v} tasks" for k, v in
                                                   report["hook_commits_per_failed_hooked_task"].items()) or "-"),
        ("tasks hook_failed", str(report["hook_failed"])),
        ("duplicate executions", f"{report['duplicate_executions']['total']} ("
         + (", ".join(f"{k} {v}" for k, v in report["duplicate_executions"]["explained_by"].items()) or "none")
         + ")"),
    ]
    for what in ("kill", "restart"):
        stats = report[f"recovery_after_{what}_s"]
        rows.append((f"recovery after {what} (s)",
                     f"p50 {stats['p50']}, p99 {stats['p99']}, max {stats['max']} (n={stats['count']})"))
    for what, stats in report["injection_cycle_s"].items():
        rows.append((f"{what} cycle (s)", f"p50 {stats['p50']}, p99 {stats['p99']}, max {stats['max']}"))
    rows.append(("invariants", "all held" if not report["problems"] else "FAILED"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for problem in report["problems"]:
        print(f"  - {problem}")
