"""Errors inside the final-failure transaction (anchor.finish_failure + the onFailed hook + commit):

- ``statement_timeout``: the hook's own statement runs into a (local) statement_timeout;
- ``disk_full``: the hook's write fails with SQLSTATE 53100 (a trigger on hook_log raises it);
- ``commit_disk_full``: the hook's write succeeds but the COMMIT fails with 53100 (a deferred constraint
  trigger), after finish_failure already marked the task failed inside the transaction;
- ``finish_disk_full``: anchor.finish_failure's own event insert fails with 53100, before the hook runs.

Invariant (checked on the tables): while the fault lasts no task is lost and none is marked failed without
its hook: each ends ``hook_failed`` after exactly hook_attempts (5) recorded hook errors naming the fault,
with no hook_log row; once the fault is gone and ``anchor.retry_hook`` runs, each ends ``failed`` with its
hook committed exactly once (and the general invariants hold).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.harness import check_invariants, enqueue, fleet, retry_db, wait_settled

FAULTS = """
create function fault_disk_full() returns trigger language plpgsql as $$
begin
    if exists (select 1 from public.fault_targets f where f.task_id = new.task_id and f.mode = tg_argv[0]) then
        raise exception using errcode = '53100', message = 'could not extend file: No space left on device';
    end if;
    return new;
end $$;
create trigger fault_disk_full before insert on hook_log
    for each row execute function fault_disk_full('disk_full');
create constraint trigger fault_commit_disk_full after insert on hook_log deferrable initially deferred
    for each row execute function fault_disk_full('commit_disk_full');
create trigger fault_finish_disk_full before insert on anchor.task_events
    for each row when (new.kind = 'failed') execute function fault_disk_full('finish_disk_full');
"""
MODES = ["statement_timeout", "disk_full", "commit_disk_full", "finish_disk_full"]
EXPECTED_ERROR = {
    "statement_timeout": "statement timeout",
    "disk_full": "No space left on device",
    "commit_disk_full": "No space left on device",
    "finish_disk_full": "No space left on device",
}


def run_hook_fault_scenario(dsn: str, log_dir: Path, *, per_mode: int, workers: int) -> None:
    retry_db(dsn, FAULTS)
    ids: dict[str, list[int]] = {}
    for mode in MODES:
        params = [{"n": i, "hook_ms": 0} for i in range(per_mode)]
        ids[mode] = enqueue(dsn, "Fails", params) + enqueue(dsn, "SyncFails", params)
        retry_db(dsn, "insert into fault_targets (task_id, mode) select unnest(%s::bigint[]), %s", (ids[mode], mode))
    everything = [i for group in ids.values() for i in group]
    with fleet(dsn, log_dir, concurrency=8) as fl:
        fl.spawn(workers)
        started = time.monotonic()
        wait_settled(dsn, 90, fl, workers)
        print(f"fault phase settled in {time.monotonic() - started:.1f}s")
        for mode, group in ids.items():
            rows = retry_db(dsn, """
                select t.id, t.state, t.hook_attempts,
                    (select count(*) from hook_log h where h.task_id = t.id) as hooks,
                    (select count(*) from anchor.task_events e where e.task_id = t.id and e.kind = 'hook_error'
                        and e.message like %s) as errors
                from anchor.tasks t where t.id = any(%s) order by t.id""", (f"%{EXPECTED_ERROR[mode]}%", group))
            assert len(rows) == len(group), f"{mode}: tasks lost"
            for row in rows:
                assert row["state"] == "hook_failed", f"{mode}: {row}"
                assert row["hooks"] == 0, f"{mode}: a hook_log row committed although the hook failed: {row}"
                events = retry_db(dsn, "select kind, message from anchor.task_events where task_id = %s order by id",
                                  (row["id"],))
                assert row["errors"] == 5, f"{mode}: expected 5 hook errors naming the fault: {row} {events}"
        # the fault is gone: an operator retries the hooks, each commits once with the failure
        retry_db(dsn, "delete from fault_targets")
        retry_db(dsn, "select anchor.retry_hook(id) from anchor.tasks where state = 'hook_failed'")
        wait_settled(dsn, 90, fl, workers)
    check_invariants(dsn, everything, fl.killed | fl.exited)
    states = retry_db(dsn, "select state, count(*) as n from anchor.tasks group by 1")
    assert states == [{"state": "failed", "n": len(everything)}], states


@pytest.mark.timeout(180)
def test_hook_transaction_faults_short(fault_dsn: str, log_dir: Path) -> None:
    """Invariant (short): one async and one sync hooked task per fault mode: never failed without the hook
    while the fault lasts (hook_failed after 5 recorded errors), failed with the hook exactly once after."""
    run_hook_fault_scenario(fault_dsn, log_dir, per_mode=1, workers=1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_hook_transaction_faults_long(fault_dsn: str, log_dir: Path) -> None:
    """Invariant (long): 40 async and 40 sync hooked tasks per fault mode on 2 workers: never failed
    without the hook while the fault lasts, failed with the hook exactly once after."""
    run_hook_fault_scenario(fault_dsn, log_dir, per_mode=40, workers=2)
