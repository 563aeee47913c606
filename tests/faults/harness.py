"""What every fault test uses: worker processes to start and SIGKILL, bulk enqueueing, waiting for the
queue to settle, and the invariant checks run on the tables afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg.rows import dict_row

from anchor_py.migrate import install
from tests.faults.app import FINAL_STATES, HOOKED, SIDE_TABLES, TASKS

REPO = Path(__file__).resolve().parent.parent.parent


def prepare_database(dsn: str) -> None:
    """The SQL core, the fault side tables and the fault TASKS in the (empty) database ``dsn``."""
    install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SIDE_TABLES)
        conn.execute("select anchor.register_tasks(%s::jsonb, %s)", (TASKS.definitions_json(), TASKS.version))


def connect(dsn: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row, application_name="fault-test")


def retry_db(dsn: str, sql: str, args: Any = None, *, attempts: int = 100) -> list[dict[str, Any]]:
    """Run one statement, retrying while the server restarts."""
    for attempt in range(attempts):
        try:
            with connect(dsn) as conn:
                cursor = conn.execute(sql, args)
                return [dict(row) for row in cursor.fetchall()] if cursor.description else []
        except psycopg.OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Fleet:
    """Worker processes (``python -m tests.faults.app``); every one is stopped in close(), even on failure."""

    dsn: str
    log_dir: Path
    concurrency: int = 8
    max_rescues: int = 5
    cron: bool = False  # the workers run the cron scheduler (CronTick fires every second)
    direct_dsn: str | None = None  # with dsn through PgBouncer: the workers' direct connection
    workers: list[Worker] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    exited: set[int] = field(default_factory=set)  # died by themselves (a crashing task, too many threads)

    def spawn(self, count: int = 1) -> list[Worker]:
        started = []
        for _ in range(count):
            log = self.log_dir / f"worker-{len(self.workers)}.log"
            process = self._start(log)
            # pids wrap around in a long run (pid_max is often 32768): one pid must mean one worker process, or the
            # records of a dead worker and of its namesake mix (worker id, executions, kills). A process
            # that got a used pid is killed before it has loaded anything, and replaced.
            while any(worker.pid == process.pid for worker in self.workers):
                process.kill()
                process.wait()
                process = self._start(log)
            worker = Worker(process, log)
            self.workers.append(worker)
            started.append(worker)
        return started

    def _start(self, log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "tests.faults.app", self.dsn, "--concurrency", str(self.concurrency),
                 "--max-rescues", str(self.max_rescues), *(["--cron"] if self.cron else []),
                 *(["--direct-dsn", self.direct_dsn] if self.direct_dsn else [])],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.process.poll() is None]

    def kill(self, pid: int) -> bool:
        """SIGKILL one worker process (the test remembers it died mid-whatever-it-was-doing)."""
        for worker in self.alive():
            if worker.pid == pid:
                self.killed.add(pid)
                os.kill(pid, signal.SIGKILL)
                worker.process.wait(10)
                return True
        return False

    def supervise(self, target: int) -> None:
        """Like a process supervisor: note workers that exited by themselves and keep ``target`` alive."""
        for worker in self.workers:
            if worker.process.poll() is not None and worker.pid not in self.killed:
                self.exited.add(worker.pid)
        missing = target - len(self.alive())
        if missing > 0:
            self.spawn(missing)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (graceful shutdown) every live worker; SIGKILL what does not stop in time."""
        for worker in self.alive():
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(max(0.1, deadline - time.monotonic()))
        for worker in self.alive():
            os.kill(worker.pid, signal.SIGKILL)
            worker.process.wait(10)

    def pids_of_backend(self, client_port: int) -> int | None:
        """The worker process that owns the TCP connection with local port ``client_port``."""
        for worker in self.alive():
            try:
                process = psutil.Process(worker.pid)
                for conn in process.net_connections(kind="tcp"):
                    if conn.laddr and conn.laddr.port == client_port:
                        return worker.pid
            except psutil.Error:
                continue
        return None

    def tail(self, lines: int = 30) -> str:
        out = []
        for worker in self.workers:
            text = worker.log.read_text(errors="replace").splitlines() if worker.log.exists() else []
            interesting = [line for line in text if "ERROR" in line or "Traceback" in line or "CRITICAL" in line]
            out.append(f"--- worker {worker.pid} (rc={worker.process.poll()}): {len(text)} lines")
            out.extend(interesting[-lines:])
        return "\n".join(out)


@contextlib.contextmanager
def fleet(dsn: str, log_dir: Path, **kwargs: Any) -> Iterator[Fleet]:
    workers = Fleet(dsn, log_dir, **kwargs)
    try:
        yield workers
    finally:
        workers.stop(timeout=10)


def enqueue(dsn: str, name: str, params: list[dict[str, Any]], **overrides: Any) -> list[int]:
    args = "".join(f", {key} => %({key})s" for key in overrides)
    ids: list[int] = []
    with connect(dsn) as conn:
        for start in range(0, len(params), 1000):
            row = conn.execute(
                f"select anchor.enqueue_many(%(name)s, %(params)s::jsonb{args}) as ids",
                {"name": name, "params": json.dumps(params[start:start + 1000]), **overrides},
            ).fetchone()
            assert row is not None
            ids.extend(row["ids"])
    return ids


def mixed_workload(dsn: str, total: int, rng: random.Random, fail_share: float = 0.2,
                   hook_ms: int = 20) -> list[int]:
    """``total`` tasks: async and sync successes, and async and sync always-failing tasks with a hook."""
    names = {"Ok": [], "SyncOk": [], "Fails": [], "SyncFails": []}  # type: dict[str, list[dict[str, Any]]]
    for n in range(total):
        failing = rng.random() < fail_share
        name = ("SyncFails" if rng.random() < 0.4 else "Fails") if failing else (
            "SyncOk" if rng.random() < 0.3 else "Ok")
        names[name].append({"n": n, "sleep_ms": rng.choice([0, 0, 1, 5, 20, 50]), "hook_ms": hook_ms})
    ids: list[int] = []
    for name, params in names.items():
        if params:
            ids.extend(enqueue(dsn, name, params))
    return ids


def unfinished(dsn: str) -> int:
    rows = retry_db(dsn, "select count(*) as n from anchor.tasks where state <> all(%s)", (list(FINAL_STATES),))
    return int(rows[0]["n"])


def wait_settled(dsn: str, timeout: float, fleet: Fleet | None = None, workers: int = 0) -> float:
    """Wait until every task is in a final state (keeping ``workers`` alive); returns the seconds taken.
    A queue that does not settle is a hang: the assertion shows where the tasks are stuck."""
    started = time.monotonic()
    while True:
        if fleet is not None and workers:
            fleet.supervise(workers)
        left = unfinished(dsn)
        if left == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            stuck = retry_db(dsn, """
                select state, locked_by, count(*) as n, min(run_at) as run_at, max(attempts) as attempts,
                    max(hook_attempts) as hook_attempts
                from anchor.tasks where state <> all(%s) group by 1, 2 order by 3 desc limit 10
            """, (list(FINAL_STATES),))
            detail = fleet.tail() if fleet is not None else ""
            raise AssertionError(f"hang: {left} tasks not final after {timeout}s: {stuck}\n{detail}")
        time.sleep(0.3)


@dataclass
class Report:
    """What the run did, for the test output (pytest -s or on failure)."""

    tasks: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    executions: int = 0
    reexecuted_after_death: int = 0
    killed_in_execution: int = 0
    killed_in_hook: int = 0
    rescued: int = 0


def check_invariants(dsn: str, enqueued: list[int], dead_pids: set[int], *,
                     no_duplicates: bool = False) -> Report:
    """The invariants every fault test proves, checked on the tables; raises listing every violation.

    1. none lost: every enqueued id is in anchor.tasks, and nothing else is;
    2. all final: every task is succeeded, failed, hook_failed or cancelled;
    3. no attempt runs twice: each (task, attempt) has at most one execution;
    4. a task runs more than once only when its worker died during that execution: every execution
       is accounted for (it is the attempt that succeeded, or its failure is recorded as an error
       event of that attempt), or it ran in a worker process that then died (SIGKILL or crash);
       with ``no_duplicates`` (no worker died) every execution must be accounted for;
    5. the hook of every finally-failed task committed exactly once: a hooked task that is `failed`
       has exactly one hook_log row, any other task none (hook_failed: its hook never committed).
    """
    with connect(dsn) as conn:
        report, problems = table_problems(conn, enqueued)
        unaccounted = unaccounted_executions(conn)
        dead = [r for r in unaccounted if r["pid"] in dead_pids]
        duplicates = [r for r in unaccounted if r["pid"] not in dead_pids]
        report.reexecuted_after_death = len(dead)
        if duplicates and not no_duplicates:
            problems.append(
                f"{len(duplicates)} executions neither recorded as an outcome nor interrupted by their worker's "
                f"death (a duplicate execution without a crash): {duplicates[:10]}")
        if no_duplicates and unaccounted:
            problems.append(f"executions whose outcome was lost although no worker died: {unaccounted[:10]}")
        report.killed_in_execution = conn.execute("""
            select count(*) as n from fault_runs s where s.kind = 'exec_start' and s.pid = any(%s)
              and not exists (select 1 from fault_runs e where e.kind = 'exec_end' and e.task_id = s.task_id
                              and e.attempt = s.attempt and e.pid = s.pid)""",
            (list(dead_pids),)).fetchone()["n"]  # type: ignore[index]
        report.killed_in_hook = conn.execute("""
            select count(*) as n from fault_runs s where s.kind = 'hook_start' and s.pid = any(%s)
              and not exists (select 1 from hook_log h where h.task_id = s.task_id and h.pid = s.pid)""",
            (list(dead_pids),)).fetchone()["n"]  # type: ignore[index]
    if problems:
        raise AssertionError("invariants violated:\n- " + "\n- ".join(problems) + f"\n{report}")
    print(report)
    return report


def table_problems(conn: psycopg.Connection[dict[str, Any]], enqueued: list[int]) -> tuple[Report, list[str]]:
    """Invariants 1, 2, 3 and 5 of check_invariants (everything but the accounting of executions)."""
    problems: list[str] = []
    report = Report(tasks=len(enqueued))
    ids = [row["id"] for row in conn.execute("select id from anchor.tasks order by id")]
    lost = sorted(set(enqueued) - set(ids))
    extra = sorted(set(ids) - set(enqueued))
    if lost:
        problems.append(f"lost tasks: {len(lost)} (e.g. {lost[:10]})")
    if extra:
        problems.append(f"tasks nobody enqueued: {extra[:10]}")
    report.by_state = {row["state"]: row["n"] for row in conn.execute(
        "select state, count(*) as n from anchor.tasks group by 1 order by 1")}
    not_final = {s: n for s, n in report.by_state.items() if s not in FINAL_STATES}
    if not_final:
        problems.append(f"tasks not in a final state: {not_final}")
    twice = conn.execute("""
        select task_id, attempt, count(*) as n from fault_runs where kind = 'exec_start'
        group by 1, 2 having count(*) > 1 order by 1 limit 10""").fetchall()
    if twice:
        problems.append(f"an attempt executed more than once: {[dict(r) for r in twice]}")
    report.executions = conn.execute(
        "select count(*) as n from fault_runs where kind = 'exec_start'").fetchone()["n"]  # type: ignore[index]
    hooks = conn.execute("""
        select t.id, t.name, t.state, count(h.task_id) as hooks
        from anchor.tasks t left join hook_log h on h.task_id = t.id
        group by t.id
        having count(h.task_id) <> case when t.state = 'failed' and t.name = any(%s) then 1 else 0 end
        order by t.id limit 10""", (list(HOOKED),)).fetchall()
    if hooks:
        problems.append(f"hooks not committed exactly once with the final failure: {[dict(r) for r in hooks]}")
    report.rescued = conn.execute(
        "select count(*) as n from anchor.task_events where kind = 'rescued'").fetchone()["n"]  # type: ignore[index]
    return report, problems


def unaccounted_executions(conn: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
    """Executions whose outcome the queue never recorded (neither the attempt that succeeded nor an error
    event of their attempt): each ran again later. With when it started (``at``) and when the same task's
    next execution started (``next_at``, null if none)."""
    return [dict(row) for row in conn.execute("""
        select r.task_id, r.attempt, r.pid, r.at, t.name, t.state, t.attempts,
            (select min(n.at) from fault_runs n where n.kind = 'exec_start' and n.task_id = r.task_id
                and n.at > r.at) as next_at
        from fault_runs r join anchor.tasks t on t.id = r.task_id
        where r.kind = 'exec_start'
          and not (t.state = 'succeeded' and r.attempt = t.attempts)
          and not exists (select 1 from anchor.task_events e
                          where e.task_id = r.task_id and e.attempt = r.attempt and e.kind = 'error')
        order by r.task_id""")]
