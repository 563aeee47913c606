"""Where a fault lands: the worker process that is, right now, inside a given phase of its work (a claim,
an execution, a completion batch, a hook transaction), found through the database; and the connection cut
(pg_terminate_backend of worker connections).

The claim and the completion statements take a few milliseconds per row here (``SLOW_CLAIM``,
``SLOW_COMPLETE``: triggers created in the test database only), so a SIGKILL can land inside one.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tests.faults.harness import Fleet, retry_db

SLOW_CLAIM = """
create function fault_slow_claim() returns trigger language plpgsql as $$
begin
    perform pg_sleep(0.003);
    return new;
end $$;
create trigger fault_slow_claim before update on anchor.tasks for each row
when (old.state = 'pending' and new.state = 'running') execute function fault_slow_claim();
"""
SLOW_COMPLETE = """
create trigger fault_slow_complete before update on anchor.tasks for each row
when (old.state = 'running' and new.state = 'succeeded') execute function fault_slow_claim();
"""

# Every connection a worker process opens, by application_name.
WORKER_CONNECTIONS = ["anchor-worker", "anchor-hook", "anchor-listen", "anchor-heartbeat"]


def _worker_running(dsn: str, workers: Fleet, statement: str) -> int | None:
    """The worker process whose claim-pool connection is executing ``statement`` right now."""
    rows = retry_db(dsn, """
        select client_port from pg_stat_activity
        where state = 'active' and query like %s and application_name = 'anchor-worker'""",
                    (f"%{statement}%",))
    for row in rows:
        pid = workers.pids_of_backend(row["client_port"])
        if pid is not None:
            return pid
    return None


def victim_in_claim(dsn: str, workers: Fleet) -> int | None:
    return _worker_running(dsn, workers, "anchor.claim")


def victim_in_execution(dsn: str, workers: Fleet) -> int | None:
    alive = [w.pid for w in workers.alive()]
    rows = retry_db(dsn, """
        select s.pid from fault_runs s
        where s.kind = 'exec_start' and s.pid = any(%s) and s.at > clock_timestamp() - interval '2 seconds'
          and not exists (select 1 from fault_runs e where e.kind = 'exec_end' and e.task_id = s.task_id
                          and e.attempt = s.attempt and e.pid = s.pid)
        order by s.at desc limit 1""", (alive,))
    return rows[0]["pid"] if rows else None


def victim_in_completion(dsn: str, workers: Fleet) -> int | None:
    """A worker writing a completion batch, or holding executions that ended but are not written yet."""
    pid = _worker_running(dsn, workers, "anchor.complete")
    if pid is not None:
        return pid
    alive = [w.pid for w in workers.alive()]
    rows = retry_db(dsn, """
        select e.pid from fault_runs e join anchor.tasks t on t.id = e.task_id
        where e.kind = 'exec_end' and e.pid = any(%s) and e.at > clock_timestamp() - interval '2 seconds'
          and t.state = 'running' and t.locked_by = 'fault-' || e.pid and t.attempts = e.attempt
        order by e.at desc limit 1""", (alive,))
    return rows[0]["pid"] if rows else None


def victim_in_hook(dsn: str, workers: Fleet) -> int | None:
    alive = [w.pid for w in workers.alive()]
    rows = retry_db(dsn, """
        select s.pid from fault_runs s join anchor.tasks t on t.id = s.task_id
        where s.kind = 'hook_start' and s.pid = any(%s) and t.state = 'failing'
          and t.locked_by = 'fault-' || s.pid
        order by s.at desc limit 1""", (alive,))
    return rows[0]["pid"] if rows else None


VICTIM_PICKERS: dict[str, Callable[[str, Fleet], int | None]] = {
    "claim": victim_in_claim,
    "execution": victim_in_execution,
    "completion": victim_in_completion,
    "hook": victim_in_hook,
}


def cut_connections(dsn: str, rng: random.Random, at_most: int) -> dict[str, int]:
    """Terminate up to ``at_most`` worker connections chosen at random (the network cut); returns how many
    were cut, by application_name."""
    rows = retry_db(dsn, """
        select application_name as name, count(*) filter (where pg_terminate_backend(pid)) as n from (
            select pid, application_name from pg_stat_activity where application_name = any(%s)
            order by random() limit %s) as victims
        group by 1""", (WORKER_CONNECTIONS, rng.randint(1, at_most)))
    return {row["name"]: int(row["n"]) for row in rows if row["n"]}
