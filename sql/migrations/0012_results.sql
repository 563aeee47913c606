-- 0012_results: what a task returns, how far a running task has got, and an outcome someone can wait for.
--
-- Why: a task could only succeed or fail; nothing it computed came back, a long task showed nothing while
-- it ran, and a caller who needed the outcome had to poll anchor.tasks, which the enqueuer role may not
-- read. Results and progress live on the task row, so they are pruned with it. A worker stores results
-- with record_results in the transaction of complete_v2, and only for a batch where some task returned
-- something: tasks without a result pay nothing. A waiter flags the task (wait_for_task) before it reads
-- the outcome; the final transition of a flagged task sends NOTIFY anchor_outcome with the task id, and
-- tasks nobody waits for never run the trigger (its WHEN clause is evaluated without calling anything).

insert into anchor.settings (name, value, description) values
(
    'max_result_bytes', '1048576',
    'largest result or progress document a worker may store, in bytes (pg_column_size)'
);

-- Adding columns without a default (or with a constant one) rewrites nothing.
alter table anchor.tasks add column result jsonb;
alter table anchor.tasks add column progress jsonb;
alter table anchor.tasks add column waited boolean not null default false;

-- The size of p_value in bytes when it is over the setting max_result_bytes, else null.
create function anchor.result_oversize(p_value jsonb)
returns integer
language sql
stable
as $$
    select pg_column_size(p_value)
    where pg_column_size(p_value) > (select s.value::bigint from anchor.settings s where s.name = 'max_result_bytes')
$$;

-- Stores the results of executions a worker is about to complete, in the transaction of complete_v2 and
-- before it; fenced by (id, fence, worker) on running rows. Outcomes in input order: 'recorded', 'stale'
-- (the row has moved on; nothing stored) or 'too_large' (over max_result_bytes; nothing stored, the worker
-- fails that attempt instead of completing it).
create function anchor.record_results(ids bigint[], fences bigint[], results jsonb[], worker_id text)
returns table (id bigint, outcome text)
language plpgsql
as $$
#variable_conflict use_column
begin
    if cardinality(record_results.ids) is distinct from cardinality(record_results.fences)
        or cardinality(record_results.ids) is distinct from cardinality(record_results.results) then
        raise exception using errcode = 'AT003',
            message = format(
                'record_results: %s ids, %s fences and %s results',
                cardinality(record_results.ids), cardinality(record_results.fences), cardinality(record_results.results)
            );
    end if;
    return query
    with given as (
        select u.id, u.fence, u.result, u.ord, anchor.result_oversize(u.result) is not null as too_large
        from unnest(record_results.ids, record_results.fences, record_results.results)
            with ordinality as u (id, fence, result, ord)
    ),

    stored as (
        update anchor.tasks t set result = g.result
        from given as g
        -- id = any(ids) drives the update from the primary key, whatever the statistics say
        where t.id = any(record_results.ids) and t.id = g.id and not g.too_large and t.state = 'running'
            and t.fence = g.fence and t.locked_by = record_results.worker_id
        returning t.id
    )

    select g.id, case when g.too_large then 'too_large' when s.id is not null then 'recorded' else 'stale' end
    from given as g
    left join (select distinct d.id from stored as d) as s on g.id = s.id
    order by g.ord;
end;
$$;

-- Stores how far a running execution has got (progress, any JSON document), fenced by (id, fence, worker)
-- so only the current attempt's worker writes. False, changing nothing, when the row has moved on; AT003
-- naming the task when the document is over max_result_bytes. The state does not change.
create function anchor.set_progress(id bigint, fence bigint, worker_id text, progress jsonb)
returns boolean
language plpgsql
as $$
#variable_conflict use_column
declare
    v_size integer := anchor.result_oversize(set_progress.progress);
begin
    if v_size is not null then
        raise exception using errcode = 'AT003',
            message = format(
                'task %s: progress of %s bytes is over the limit (anchor.settings max_result_bytes)',
                set_progress.id, v_size
            );
    end if;
    update anchor.tasks t set progress = set_progress.progress
    where t.id = set_progress.id and t.state = 'running' and t.fence = set_progress.fence
        and t.locked_by = set_progress.worker_id;
    return found;
end;
$$;

-- The outcome of the given tasks, in input order: state, result, last error, finished_at (unknown ids
-- give no row). Read-only; what a waiter polls.
create function anchor.task_outcomes(ids bigint[])
returns table (id bigint, state text, result jsonb, error text, finished_at timestamptz)
language sql
stable
as $$
    select t.id, t.state, t.result, t.last_error, t.finished_at
    from unnest(ids) with ordinality as u (id, ord)
    inner join anchor.tasks as t on u.id = t.id
    order by u.ord
$$;

-- The outcome of one task: state, result, last error, finished_at (no row for an unknown id).
create function anchor.task_outcome(id bigint)
returns table (state text, result jsonb, error text, finished_at timestamptz)
language sql
stable
as $$
    select o.state, o.result, o.error, o.finished_at from anchor.task_outcomes(array[id]) as o
$$;

-- Starts waiting on a task: flags it waited (unless it is already final), so its final transition sends
-- NOTIFY anchor_outcome, then returns its outcome as task_outcome does. Call it after LISTEN anchor_outcome:
-- a final commit racing with the flag either waits for it (and notifies) or is seen by the outcome read.
-- A claim that meets the row locked by the flag skips it (SKIP LOCKED), so flagging a claimable task
-- notifies anchor_tasks again: the workers claim it as soon as this commits, not at their next poll.
create function anchor.wait_for_task(id bigint)
returns table (state text, result jsonb, error text, finished_at timestamptz)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_flagged record;
begin
    update anchor.tasks t set waited = true
    where t.id = wait_for_task.id and not t.waited
        and t.state not in ('succeeded', 'failed', 'hook_failed', 'cancelled')
    returning t.state, t.queue, t.run_at, t.locked_by into v_flagged;
    if v_flagged.state in ('pending', 'failing') and v_flagged.locked_by is null and v_flagged.run_at <= now() then
        perform pg_notify('anchor_tasks', v_flagged.queue);
    end if;
    return query select o.state, o.result, o.error, o.finished_at from anchor.task_outcome(wait_for_task.id) as o;
end;
$$;

-- NOTIFY anchor_outcome (payload: the task id) when a waited task reaches a final state.
create function anchor.notify_task_outcome()
returns trigger
language plpgsql
as $$
begin
    perform pg_notify('anchor_outcome', new.id::text);
    return null;
end;
$$;

create trigger tasks_notify_outcome after update of state on anchor.tasks
for each row
when (
    new.waited and old.state is distinct from new.state
    and new.state in ('succeeded', 'failed', 'hook_failed', 'cancelled')
)
execute function anchor.notify_task_outcome();

insert into anchor.function_roles (function_name, role_name) values
('task_outcome', 'anchor_enqueuer'),
('task_outcomes', 'anchor_enqueuer'),
('wait_for_task', 'anchor_enqueuer'),
('record_results', 'anchor_worker'),
('result_oversize', 'anchor_worker'),
('set_progress', 'anchor_worker');

select anchor.apply_privileges();
