"""The fault campaign: many faults of every kind against real worker processes under a steady load, then
the invariants and the recovery times, measured.

    python -m tests.faults.campaign --kills 200 --restarts 5 --minutes 10 [--report PATH]

On a private PostgreSQL (the embedded wheel's binaries, tests/faults/pgcluster.py) it starts ``--workers``
worker processes (``python -m tests.faults.app --cron``), enqueues ``--rate`` tasks a second (plain,
retried, hooked and unique-tagged tasks; the workers' cron scheduler adds ``CronTick`` every second), and
spreads over ``--minutes`` minutes, in a shuffled order:

- ``--kills`` SIGKILLs, aimed in turn at a worker inside a claim, an execution, a completion batch and an
  onFailed hook transaction (tests/faults/aim.py); a supervisor starts a replacement at once;
- ``--restarts`` PostgreSQL restarts, alternately fast and immediate (crash-like: WAL recovery);
- ``--cuts`` connection cuts (pg_terminate_backend of random worker connections).

Then enqueueing stops, the queue settles, and tests/faults/campaign_report.py checks the invariants and
measures the recoveries; the report is printed as a table and written as JSON. Exits 1 when an invariant
fails.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.faults.aim import SLOW_CLAIM, SLOW_COMPLETE, VICTIM_PICKERS, cut_connections
from tests.faults.campaign_report import analyse, print_table
from tests.faults.harness import Fleet, enqueue, fleet, prepare_database, retry_db, wait_settled
from tests.faults.pgcluster import ThrowawayPostgres

PHASES = list(VICTIM_PICKERS)
# Lookups the analysis makes per killed worker, on tables the queue itself does not index that way.
ANALYSIS_INDEXES = """
create index fault_rescued_idx on anchor.task_events (worker_id, task_id) where kind = 'rescued';
"""


@dataclass(frozen=True)
class CampaignConfig:
    kills: int = 20
    restarts: int = 2
    minutes: float = 1.5
    cuts: int | None = None  # None: one cut for every four kills
    workers: int = 3
    concurrency: int = 8
    rate: float = 40.0  # tasks enqueued per second
    max_rescues: int = 10
    seed: int = 1

    @property
    def cut_count(self) -> int:
        return self.kills // 4 if self.cuts is None else self.cuts


@dataclass
class FaultLog:
    """What was injected and when (epoch seconds, the same clock as the server's timestamps)."""

    # cycle_s: how long injecting it took (finding a victim and killing it; a restart until the first task
    # completed after it), so a long campaign can be planned from a short one
    kills: list[dict[str, Any]] = field(default_factory=list)  # phase, pid, at, held (task ids), cycle_s
    kills_without_victim: dict[str, int] = field(default_factory=dict)
    restarts: list[dict[str, Any]] = field(default_factory=list)  # mode, down_at, back_at, cycle_s
    cuts: list[dict[str, Any]] = field(default_factory=list)  # at, cut (by application_name)


class SteadyEnqueuer(threading.Thread):
    """Enqueues ``rate`` tasks a second, five times a second, until stopped. Every task gets its own
    ``n``; a batch whose acknowledgement is lost (the server went away) is looked up by ``n`` afterwards,
    so a task that did commit still counts as enqueued."""

    TICK = 0.2
    # share of each kind: (kind, task names, share)
    MIX = [("plain", ("Ok", "SyncOk"), 0.45), ("retried", ("Ok", "SyncOk"), 0.15),
           ("hooked", ("Fails", "SyncFails"), 0.25), ("unique", ("Ok",), 0.15)]

    def __init__(self, dsn: str, rate: float, seed: int) -> None:
        super().__init__(name="steady-enqueuer", daemon=True)
        self.dsn = dsn
        self.rate = rate
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.ids: dict[str, list[int]] = {kind: [] for kind, _, _ in self.MIX}
        self.unacknowledged: list[int] = []  # the n of every task whose batch failed mid-way
        self.next_n = 1

    def run(self) -> None:
        owed = 0.0
        last = time.monotonic()
        while not self.stop_event.wait(self.TICK):
            now = time.monotonic()  # by the clock, not by ticks: enqueueing itself takes time
            owed, last = owed + self.rate * (now - last), now
            count, owed = int(owed), owed - int(owed)
            for kind, names, share in self.MIX:
                self._enqueue(kind, self.rng.choice(names), self._count(count, share))

    def _count(self, count: int, share: float) -> int:
        exact = count * share
        return int(exact) + (1 if self.rng.random() < exact - int(exact) else 0)

    def _enqueue(self, kind: str, name: str, count: int) -> None:
        if count == 0:
            return
        params = []
        for _ in range(count):
            task: dict[str, Any] = {"n": self.next_n, "sleep_ms": self.rng.choice([0, 0, 1, 5, 20, 50])}
            self.next_n += 1
            if kind == "hooked":
                task["hook_ms"] = 30  # holds the hook transaction open: a window for the kills aimed there
            if kind == "retried":
                task["fail_attempts"] = self.rng.choice([1, 2])
            params.append(task)
        overrides = {"unique_tags": [f"tag-{self.rng.randrange(50)}" for _ in params]} if kind == "unique" else {}
        try:
            self.ids[kind].extend(enqueue(self.dsn, name, params, **overrides))
        except psycopg.OperationalError:
            self.unacknowledged.extend(task["n"] for task in params)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


def fault_plan(config: CampaignConfig, rng: random.Random) -> list[str]:
    """The faults in the order they are injected: kills aimed at each phase in turn and cuts, shuffled,
    with the restarts (fast and immediate in turn) spread evenly among them."""
    others = [f"kill:{PHASES[i % len(PHASES)]}" for i in range(config.kills)] + ["cut"] * config.cut_count
    rng.shuffle(others)
    plan: list[str] = []
    restarts = [f"restart:{'fast' if i % 2 == 0 else 'immediate'}" for i in range(config.restarts)]
    every = len(others) / (len(restarts) + 1)
    for index, fault in enumerate(others):
        while restarts and index >= every * (config.restarts - len(restarts) + 1):
            plan.append(restarts.pop(0))
        plan.append(fault)
    return plan + restarts


class Injector:
    def __init__(self, server: ThrowawayPostgres, dsn: str, fl: Fleet, config: CampaignConfig,
                 rng: random.Random) -> None:
        self.server, self.dsn, self.fleet, self.config, self.rng = server, dsn, fl, config, rng
        self.log = FaultLog()

    def inject(self, fault: str) -> None:
        kind, _, detail = fault.partition(":")
        if kind == "kill":
            self.kill(detail)
        elif kind == "restart":
            self.restart(detail)
        else:
            self.log.cuts.append({"at": time.time(), "cut": cut_connections(self.dsn, self.rng, 4)})

    def kill(self, phase: str, patience: float = 15.0) -> None:
        """SIGKILL a worker found inside ``phase`` (waiting up to ``patience`` seconds for one)."""
        began = time.monotonic()
        give_up = began + patience
        while time.monotonic() < give_up:
            self.fleet.supervise(self.config.workers)
            pid = VICTIM_PICKERS[phase](self.dsn, self.fleet)
            at = time.time()
            if pid is not None and self.fleet.kill(pid):
                # what the dead worker held (a statement its backend was running may still commit)
                held = retry_db(self.dsn, """
                    select id from anchor.tasks where locked_by = %s and state in ('running', 'failing')""",
                                (f"fault-{pid}",))
                self.fleet.supervise(self.config.workers)  # the supervisor starts a replacement
                self.log.kills.append({"phase": phase, "pid": pid, "at": at, "held": [r["id"] for r in held],
                                       "cycle_s": round(time.monotonic() - began, 3)})
                return
            time.sleep(0.01)
        self.log.kills_without_victim[phase] = self.log.kills_without_victim.get(phase, 0) + 1

    def restart(self, mode: str) -> None:
        """Restart PostgreSQL (``mode`` shutdown, down for up to 1.5 s); then wait for the first task
        completed after it, so the next fault does not land inside this recovery."""
        began = time.monotonic()
        down_at = time.time()
        self.server.restart(mode, down_for=self.rng.uniform(0.2, 1.5))
        back_at = time.time()
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up and not retry_db(self.dsn, """
                select 1 from anchor.tasks where state = 'succeeded' and finished_at >= to_timestamp(%s)
                limit 1""", (back_at,)):
            self.fleet.supervise(self.config.workers)
            time.sleep(0.1)
        self.log.restarts.append({"mode": mode, "down_at": down_at, "back_at": back_at,
                                  "cycle_s": round(time.monotonic() - began, 3)})


def run_campaign(server: ThrowawayPostgres, dsn: str, log_dir: Path, config: CampaignConfig) -> dict[str, Any]:
    """Runs the campaign on the prepared database ``dsn`` of ``server``; returns the report (its
    ``problems`` list is empty when every invariant held)."""
    rng = random.Random(config.seed)
    retry_db(dsn, SLOW_CLAIM + SLOW_COMPLETE + ANALYSIS_INDEXES)
    plan = fault_plan(config, rng)
    interval = config.minutes * 60 / max(1, len(plan))
    enqueuer = SteadyEnqueuer(dsn, config.rate, config.seed)
    started = time.monotonic()
    with fleet(dsn, log_dir, concurrency=config.concurrency, max_rescues=config.max_rescues, cron=True) as fl:
        injector = Injector(server, dsn, fl, config, rng)
        fl.spawn(config.workers)
        enqueuer.start()
        time.sleep(2.0)  # let the workers start and claim
        for index, fault in enumerate(plan):
            due = started + 2.0 + index * interval
            while time.monotonic() < due:
                fl.supervise(config.workers)
                time.sleep(0.05)
            injector.inject(fault)
        faults_s = time.monotonic() - started
        enqueuer.stop()
        retry_db(dsn, "select anchor.cron_pause('CronTick')")
        settle_s = wait_settled(dsn, 300, fl, config.workers)
    report = analyse(dsn, injector.log, enqueuer.ids, enqueuer.unacknowledged, fl)
    report["config"] = asdict(config) | {"cuts": config.cut_count}
    report["seconds"] = {"faults": round(faults_s, 1), "settle": round(settle_s, 1),
                         "total": round(time.monotonic() - started, 1)}
    report["workers_started"] = len(fl.workers)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.campaign", description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="worker SIGKILLs, aimed at each phase in turn")
    parser.add_argument("--restarts", type=int, default=2, help="PostgreSQL restarts (fast and immediate in turn)")
    parser.add_argument("--minutes", type=float, default=1.5, help="how long the faults are spread over")
    parser.add_argument("--cuts", type=int, default=None, help="connection cuts (default: kills / 4)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=40.0, help="tasks enqueued per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=Path, default=None, help="where the JSON report goes "
                        "(default: report.json in the run's log directory)")
    args = parser.parse_args(argv)
    config = CampaignConfig(kills=args.kills, restarts=args.restarts, minutes=args.minutes, cuts=args.cuts,
                            workers=args.workers, concurrency=args.concurrency, rate=args.rate, seed=args.seed)
    log_dir = Path(tempfile.mkdtemp(prefix="anchor-campaign-"))
    server = ThrowawayPostgres()
    report: dict[str, Any] = {"problems": ["the campaign did not finish"]}
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("create database campaign")
        prepare_database(server.dsn("campaign"))
        report = run_campaign(server, server.dsn("campaign"), log_dir, config)
    finally:
        if report["problems"]:  # keep the database to look into (pg_ctl -D <pgdata> start)
            server.stop("fast")
            print(f"database kept: {server.pgdata} (port {server.port})")
        else:
            server.close()
    path = args.report or log_dir / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    print(f"\nreport: {path}\nworker logs: {log_dir}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
