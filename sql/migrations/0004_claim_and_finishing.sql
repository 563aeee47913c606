-- 0004_claim_and_finishing: a worker's side of a task's life, from claim to its end.
--
-- Why: claim hands out work in batches (FOR UPDATE SKIP LOCKED) and is the only place attempts are
-- counted; complete, fail, finish_failure, fail_hook and hand_back are fenced by (id, attempt, worker), so
-- a late worker whose task has moved on gets 'stale' back and can never overwrite a newer attempt.

-- Claiming -------------------------------------------------------------------------------------------

-- Hands a worker up to max_tasks items of work: failing tasks whose hook must run (failing, leased) and
-- due pending tasks (pending → running; the only place attempts are counted); then a 'wake' row with the
-- earliest future run_at when the batch is not full, so an idle worker can set a timer.
create function anchor.claim(
    worker_id text,
    max_tasks integer,
    task_names text[] default null,
    queues text[] default null,
    hook_timeout interval default '1 minute',
    max_hook_attempts integer default 5,
    p_now timestamptz default null
)
returns table (
    kind text, id bigint, name text, params jsonb, attempt integer, hook_attempt integer, max_attempts integer,
    queue text, priority integer, timeout interval, deadline timestamptz, scheduled_at timestamptz, run_at timestamptz
)
language plpgsql
-- the statements' plans do not depend on the values: plan them once per session, not on every claim;
-- and never JIT-compile them (a generic plan's cost estimate on a large table crosses jit_above_cost,
-- and compiling costs milliseconds per claim where the claim itself costs one)
set plan_cache_mode = force_generic_plan
set jit = off
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
    v_queues text[] := coalesce(claim.queues, array(
        select distinct d.queue from anchor.task_definitions d
        where d.active and (claim.task_names is null or d.name = any(claim.task_names))
    ));
    v_claimed integer := 0;
    v_ids bigint[];
begin
    if coalesce(btrim(claim.worker_id), '') = '' then
        raise exception using errcode = 'AT003', message = 'claim: worker_id must not be empty';
    end if;
    if claim.max_tasks is null or claim.max_tasks < 1 then
        raise exception using errcode = 'AT003', message = format('claim: max_tasks must be at least 1, got %s', claim.max_tasks);
    end if;

    -- failing tasks are rare: one probe of the small failing index spares the hook claim most of the time
    if exists (
        select 1 from anchor.tasks t where t.state = 'failing' and t.locked_by is null and t.run_at <= v_now
    ) then
        -- pick and lock first, then update by primary key: a plan that cannot turn into a table scan
        v_ids := array(
            select p.id from unnest(v_queues) as q (queue)
            cross join lateral (
                select t.id, t.priority, t.run_at from anchor.tasks t
                where t.state = 'failing' and t.queue = q.queue and t.run_at <= v_now
                    and t.locked_by is null  -- not leased to a worker running the hook right now
                    and t.hook_attempts < claim.max_hook_attempts
                    and (claim.task_names is null or t.name = any(claim.task_names))
                order by t.priority, t.run_at, t.id
                limit claim.max_tasks
                for update skip locked
            ) as p
            order by p.priority, p.run_at, p.id
            limit claim.max_tasks
        );
        return query
        update anchor.tasks t set
            locked_by = claim.worker_id, locked_at = v_now, hook_attempts = t.hook_attempts + 1,
            deadline = v_now + claim.hook_timeout
        where t.id = any(v_ids)
        returning 'hook'::text, t.id, t.name, t.params, t.attempts, t.hook_attempts, t.max_attempts,
            t.queue, t.priority, t.timeout, t.deadline, t.scheduled_at, t.run_at;
        v_claimed := cardinality(v_ids);
    end if;

    if v_claimed < claim.max_tasks then
        -- A task rescued from a dead worker may be what killed it. It runs as the only such task of its
        -- worker, so a second crash points at it alone and max_rescues never fails innocent bystanders.
        v_ids := '{}';
        -- rescued tasks are rare: one probe of their small index spares the rest most of the time
        if exists (
            select 1 from anchor.tasks t where t.state = 'pending' and t.rescues > 0 and t.run_at <= v_now
        ) and not exists (
            select 1 from anchor.tasks t
            where t.locked_by = claim.worker_id and t.state = 'running' and t.rescues > 0
        ) then
            v_ids := array(
                select p.id from unnest(v_queues) as q (queue)
                cross join lateral (
                    select t.id, t.priority, t.run_at from anchor.tasks t
                    where t.state = 'pending' and t.rescues > 0 and t.queue = q.queue and t.run_at <= v_now
                        and (claim.task_names is null or t.name = any(claim.task_names))
                    order by t.priority, t.run_at, t.id
                    limit 1
                    for update skip locked
                ) as p
                order by p.priority, p.run_at, p.id
                limit 1
            );
        end if;
        v_ids := v_ids || array(
            select p.id from unnest(v_queues) as q (queue)
            cross join lateral (
                select t.id, t.priority, t.run_at from anchor.tasks t
                where t.state = 'pending' and t.rescues = 0 and t.queue = q.queue and t.run_at <= v_now
                    and (claim.task_names is null or t.name = any(claim.task_names))
                order by t.priority, t.run_at, t.id
                limit claim.max_tasks - v_claimed - cardinality(v_ids)
                for update skip locked
            ) as p
            order by p.priority, p.run_at, p.id
            limit claim.max_tasks - v_claimed - cardinality(v_ids)
        );
        return query
        update anchor.tasks t set
            state = 'running', attempts = t.attempts + 1, locked_by = claim.worker_id, locked_at = v_now,
            deadline = v_now + t.timeout
        where t.id = any(v_ids)
        returning 'execute'::text, t.id, t.name, t.params, t.attempts, null::integer, t.max_attempts,
            t.queue, t.priority, t.timeout, t.deadline, t.scheduled_at, t.run_at;
        v_claimed := v_claimed + cardinality(v_ids);
    end if;

    if v_claimed < claim.max_tasks then
        return query
        select 'wake'::text, null::bigint, null::text, null::jsonb, null::integer, null::integer, null::integer,
            null::text, null::integer, null::interval, null::timestamptz, null::timestamptz, min(n.run_at)
        from unnest(v_queues) as q (queue)
        cross join lateral (
            (select t.run_at from anchor.tasks t
                where t.state = 'pending' and t.queue = q.queue and t.run_at > v_now
                    and (claim.task_names is null or t.name = any(claim.task_names))
                order by t.run_at limit 1)
            union all
            (select t.run_at from anchor.tasks t
                where t.state = 'failing' and t.queue = q.queue and t.run_at > v_now and t.locked_by is null
                    and (claim.task_names is null or t.name = any(claim.task_names))
                order by t.run_at limit 1)
        ) as n;
    end if;
end;
$$;

-- Finishing ------------------------------------------------------------------------------------------

-- Marks executions done (running → succeeded), fenced by (id, attempt, worker); others come back 'stale'.
create function anchor.complete(ids bigint[], attempts integer[], worker_id text, p_now timestamptz default null)
returns table (id bigint, outcome text)
language plpgsql
set plan_cache_mode = force_generic_plan
set jit = off
as $$
#variable_conflict use_column
begin
    if cardinality(complete.ids) is distinct from cardinality(complete.attempts) then
        raise exception using errcode = 'AT003',
            message = format('complete: %s ids but %s attempts', cardinality(complete.ids), cardinality(complete.attempts));
    end if;
    return query
    with done as (
        update anchor.tasks t set state = 'succeeded', finished_at = coalesce(p_now, now()), deadline = null
        from unnest(complete.ids, complete.attempts) as c (id, attempt)
        -- id = any(ids) drives the update from the primary key, whatever the statistics say
        where t.id = any(complete.ids) and t.id = c.id and t.state = 'running' and t.attempts = c.attempt
            and t.locked_by = complete.worker_id
        returning t.id
    )
    select c.id, case when d.id is null then 'stale' else 'succeeded' end
    from unnest(complete.ids) as c (id)
    left join done as d on d.id = c.id;
end;
$$;

-- Whether the task's definition declares an onFailed hook (a removed definition has none).
create function anchor.has_failure_hook(p_name text)
returns boolean
language sql
stable
as $$
    select coalesce((select d.on_failed from anchor.task_definitions d where d.name = p_name), false)
$$;

-- Ends a failed execution, fenced by (id, attempt, worker): running → pending after the retry interval
-- ('retry'), or final when attempts are used up or the error is fatal: → failing with the hook leased to
-- this worker as hook attempt 1 ('failing'), → failed when there is no hook ('failed'); a requested cancel
-- ends it → cancelled ('cancelled'). Returns 'stale' (changing nothing) when the row has moved on.
create function anchor.fail(
    id bigint,
    attempt integer,
    worker_id text,
    error_message text default null,
    error_type text default null,
    error_traceback text default null,
    fatal boolean default false,
    record_event boolean default true,
    hook_timeout interval default '1 minute',
    p_now timestamptz default null
)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
    v_task anchor.tasks;
    v_outcome text;
begin
    select * into v_task from anchor.tasks t where t.id = fail.id for update;
    if not found or v_task.state <> 'running' or v_task.attempts <> fail.attempt
        or v_task.locked_by is distinct from fail.worker_id then
        return 'stale';
    end if;

    v_outcome := case
        when v_task.cancel_requested then 'cancelled'
        when fail.fatal or (v_task.max_attempts <> -1 and v_task.attempts >= v_task.max_attempts) then
            case when anchor.has_failure_hook(v_task.name) then 'failing' else 'failed' end
        else 'retry'
    end;

    update anchor.tasks t set
        state = case v_outcome when 'retry' then 'pending' else v_outcome end,
        run_at = case v_outcome
            when 'retry' then v_now + anchor.retry_interval(t.retry_intervals, t.attempts)
            else t.run_at end,
        -- a failing task keeps its lock: the hook is leased to this worker, which runs it right away
        locked_by = case when v_outcome = 'failing' then t.locked_by end,
        hook_attempts = t.hook_attempts + (v_outcome = 'failing')::integer,
        deadline = case when v_outcome = 'failing' then v_now + fail.hook_timeout end,
        last_error = case when fail.record_event then fail.error_message else t.last_error end,
        finished_at = case when v_outcome in ('failed', 'cancelled') then v_now end
    where t.id = fail.id;

    if fail.record_event or v_outcome <> 'retry' then
        insert into anchor.task_events (task_id, at, kind, attempt, worker_id, error_type, message, traceback, details)
        values (
            fail.id, v_now, case when fail.record_event then 'error' else v_outcome end, fail.attempt, fail.worker_id,
            fail.error_type, fail.error_message, fail.error_traceback,
            jsonb_build_object('outcome', v_outcome, 'fatal', fail.fatal)
        );
    end if;
    return v_outcome;
end;
$$;

-- Makes a failure final: failing → failed, fenced by (id, hook attempt, worker). Called inside the
-- transaction that runs the onFailed hook, so the state change and the hook's writes commit together;
-- the row stays locked until then, so no other worker can take the hook meanwhile.
create function anchor.finish_failure(id bigint, hook_attempt integer, worker_id text, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
    v_found boolean;
begin
    update anchor.tasks t set state = 'failed', finished_at = v_now, deadline = null
    where t.id = finish_failure.id and t.state = 'failing' and t.hook_attempts = finish_failure.hook_attempt
        and t.locked_by = finish_failure.worker_id;
    v_found := found;
    if not v_found then
        return 'stale';
    end if;
    insert into anchor.task_events (task_id, at, kind, attempt, worker_id, details)
    values (finish_failure.id, v_now, 'failed', finish_failure.hook_attempt, finish_failure.worker_id,
        jsonb_build_object('hook_attempt', finish_failure.hook_attempt));
    return 'failed';
end;
$$;

-- Records a hook that raised (its transaction already rolled back): failing stays failing and the hook
-- runs again after the task's retry interval (at least one second, so never a hot loop) → 'retry', or,
-- when max_hook_attempts are spent, → hook_failed. Fenced like finish_failure; 'stale' otherwise.
create function anchor.fail_hook(
    id bigint,
    hook_attempt integer,
    worker_id text,
    error_message text default null,
    error_type text default null,
    error_traceback text default null,
    max_hook_attempts integer default 5,
    p_now timestamptz default null
)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
    v_outcome text;
begin
    update anchor.tasks t set
        state = case when t.hook_attempts >= fail_hook.max_hook_attempts then 'hook_failed' else 'failing' end,
        run_at = v_now + greatest(anchor.retry_interval(t.retry_intervals, t.hook_attempts), interval '1 second'),
        locked_by = null,
        deadline = null,
        last_error = fail_hook.error_message,
        finished_at = case when t.hook_attempts >= fail_hook.max_hook_attempts then v_now end
    where t.id = fail_hook.id and t.state = 'failing' and t.hook_attempts = fail_hook.hook_attempt
        and t.locked_by = fail_hook.worker_id
    returning case t.state when 'hook_failed' then 'hook_failed' else 'retry' end into v_outcome;
    if v_outcome is null then
        return 'stale';
    end if;
    insert into anchor.task_events (task_id, at, kind, attempt, worker_id, error_type, message, traceback, details)
    values (fail_hook.id, v_now, 'hook_error', fail_hook.hook_attempt, fail_hook.worker_id, fail_hook.error_type,
        fail_hook.error_message, fail_hook.error_traceback, jsonb_build_object('outcome', v_outcome));
    return v_outcome;
end;
$$;

-- Graceful shutdown: running → pending, due now, with the attempt given back; fenced, 'stale' otherwise.
create function anchor.hand_back(ids bigint[], attempts integer[], worker_id text, p_now timestamptz default null)
returns table (id bigint, outcome text)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
begin
    if cardinality(hand_back.ids) is distinct from cardinality(hand_back.attempts) then
        raise exception using errcode = 'AT003',
            message = format('hand_back: %s ids but %s attempts', cardinality(hand_back.ids), cardinality(hand_back.attempts));
    end if;
    return query
    with returned as (
        update anchor.tasks t set
            state = 'pending', attempts = t.attempts - 1, run_at = v_now, locked_by = null, deadline = null
        from unnest(hand_back.ids, hand_back.attempts) as c (id, attempt)
        where t.id = any(hand_back.ids) and t.id = c.id and t.state = 'running' and t.attempts = c.attempt
            and t.locked_by = hand_back.worker_id
            and not t.cancel_requested
        returning t.id
    ), recorded as (
        insert into anchor.task_events (task_id, at, kind, worker_id)
        select r.id, v_now, 'handed_back', hand_back.worker_id from returned as r
    )
    select c.id, case when r.id is null then 'stale' else 'pending' end
    from unnest(hand_back.ids) as c (id)
    left join returned as r on r.id = c.id;
end;
$$;
