-- 0008_retention: finished tasks are deleted after a retention period, so anchor.tasks does not grow
-- without end.
--
-- Why: every task row stays after it finishes (a plain success writes no event, so the row is the only
-- record). A busy system finishes millions of tasks a day; without retention the table and its indexes
-- grow forever, vacuum takes longer each round and every scan that is not index-bounded slows down.
--
-- Why in small batches, one batch per call: a function runs in one transaction, so a single call that
-- deleted everything due would hold its row locks, bloat WAL and block vacuum for as long as it runs.
-- anchor.prune deletes at most batch_size rows (oldest finished first) and returns how many it deleted;
-- the pruner service (anchor_py/pruner.py) calls it again, each call its own transaction, until a call
-- returns fewer than batch_size. Rows are taken FOR UPDATE SKIP LOCKED, so a prune never waits on (or
-- blocks) an operator touching the same finished task, and two pruners never delete the same row.
--
-- Its index (tasks_finished_idx, finished states by (state, finished_at)) is in 0001_schema; without it
-- every batch would read the whole table. task_events rows go with their task (on delete cascade).

-- Deletes up to batch_size finished tasks (succeeded older than succeeded_after; failed, hook_failed and
-- cancelled older than failed_after, by finished_at) and returns how many it deleted.
create function anchor.prune(
    succeeded_after interval default '7 days',
    failed_after interval default '30 days',
    batch_size integer default 1000,
    p_now timestamptz default null
)
returns bigint
language plpgsql
set jit = off
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
    v_deleted bigint;
begin
    if prune.succeeded_after is null or prune.succeeded_after < interval '0'
        or prune.failed_after is null or prune.failed_after < interval '0' then
        raise exception using errcode = 'AT003',
            message = format('prune: retention periods must not be negative, got succeeded_after %s, failed_after %s',
                prune.succeeded_after, prune.failed_after);
    end if;
    if prune.batch_size is null or prune.batch_size < 1 then
        raise exception using errcode = 'AT003',
            message = format('prune: batch_size must be at least 1, got %s', prune.batch_size);
    end if;

    with doomed as (
        select d.id from (
            (select t.id, t.finished_at from anchor.tasks t
                where t.state = 'succeeded' and t.finished_at < v_now - prune.succeeded_after
                order by t.finished_at
                limit prune.batch_size)
            union all
            (select t.id, t.finished_at from anchor.tasks t
                where t.state in ('failed', 'hook_failed', 'cancelled') and t.finished_at < v_now - prune.failed_after
                order by t.finished_at
                limit prune.batch_size)
        ) as d
        order by d.finished_at
        limit prune.batch_size
    ), locked as (
        -- re-checked under the row lock: a task retried (retry_now) since the scan is live again, or newer
        select t.id from anchor.tasks t
        where t.id in (select doomed.id from doomed)
            and (
                (t.state = 'succeeded' and t.finished_at < v_now - prune.succeeded_after)
                or (t.state in ('failed', 'hook_failed', 'cancelled') and t.finished_at < v_now - prune.failed_after)
            )
        for update skip locked
    )
    delete from anchor.tasks t using locked
    where t.id = locked.id;
    get diagnostics v_deleted = row_count;
    return v_deleted;
end;
$$;
