-- 0013_claim_ready_set: a claim whose plan and cost depend only on the work it takes.
--
-- Why: the claim picked due pending tasks from one index per queue, (queue, priority, run_at, id), with
-- run_at <= now and the task name as filters. So every claim read past every task ahead of the first one
-- it could take: tasks scheduled for later at a higher priority (200k of them: 11x the claim's cost),
-- due tasks of names the worker does not serve (50k: 17x); and with no statistics (right after a bulk
-- enqueue, before autovacuum analyses) the generic plan took the (queue, run_at) index and sorted every
-- pending row on each claim (14x). Now the claim reads only the ready set: pending tasks that are due, one
-- index range per (queue, name) the claimer serves, in claim order, so a claim of 100 reads ~100 index
-- entries whatever else the table holds, and no other index matches its predicate, statistics or not.
--
-- The ready set. A pending task carries waiting_for (internal; its public state stays 'pending'):
--   null     ready: due, the claim takes it (tasks_claim_idx);
--   'time'   its run_at is in the future (tasks_scheduled_idx, by (queue, name, run_at)).
-- A trigger sets it whenever a row becomes pending or its run_at changes (enqueue, a retry, hand-back,
-- rescue, retry_now, cron, or any other writer), comparing run_at with now(): no function has to know.
-- The claim moves its own (queue, name)'s scheduled tasks that have come due into the ready set first
-- (River moves scheduled jobs to available in a maintenance step; here the claim does it, so a task is
-- claimable at its run_at with no extra service and no extra latency): one index probe when nothing is
-- due, at most 1000 rows per pair and claim when a crowd comes due at once (the next claims move the
-- rest, in run_at order). The same index gives the idle worker the earliest future run_at to sleep until.
--
-- What comes next fits the same rule, "the claim reads only waiting_for is null": every other reason a
-- pending task cannot start is another waiting_for value with its own index, which the claim never reads,
-- and the event that lifts the reason moves the task into the ready set.
--   'limit'    held by a concurrency limit or a keyed group: at most <limit> tasks of a group are ready or
--              running; the rest wait in (group key, priority, run_at, id) order, and complete, fail,
--              hand-back and rescue of a group's task move its next waiting task to ready (under a lock on
--              the group's row, so concurrent claimers can never exceed the limit). A group at its limit
--              has nothing in the ready set, so the claim skips it without reading its backlog.
--   'rate'     held by a rate limit: moved to ready by the claim, like 'time', when the window opens
--              (the window's next opening is what the claim reports to sleep until).
--   'blocked'  a workflow task whose dependencies have not finished: moved by their completion.
--   'paused'   a paused workflow (or task): moved by the resume.
-- A paused queue is left out of the claim's (queue, name) pairs before any index is read. The check
-- constraint below lists the values in use; each feature adds its own.
--
-- complete_v2 had the same fault in its own way: on a table never analysed its generic plan scanned every
-- task the worker holds once per completed id (10x its cost); it now reaches the table by primary key only.
--
-- Table settings: the claim no longer depends on statistics, but the ready index collects a dead entry per
-- claimed task until vacuum, so autovacuum runs at 5% of the table rather than 20% (and after inserts,
-- so a bulk load gets its visibility map and statistics without waiting for the first updates).

alter table anchor.tasks add column waiting_for text
constraint tasks_waiting_for_check check (waiting_for in ('time'));

-- Rows written before this migration: pending tasks not due yet wait for their time.
update anchor.tasks set waiting_for = 'time'
where state = 'pending' and run_at > now();

-- The claim's only read: ready tasks of one (queue, name) in claim order. Replaces (queue, priority,
-- run_at, id) over every pending row, which read past scheduled tasks and tasks of other names.
drop index anchor.tasks_claim_idx;
create index tasks_claim_idx on anchor.tasks (queue, name, priority, run_at, id)
where state = 'pending' and waiting_for is null and rescues = 0;

-- Tasks waiting for their run_at, per (queue, name): the claim moves the due ones to ready, and an idle
-- worker sleeps until the first one. Replaces (queue, run_at) over every pending row.
drop index anchor.tasks_next_run_idx;
create index tasks_scheduled_idx on anchor.tasks (queue, name, run_at)
where state = 'pending' and waiting_for = 'time';

alter table anchor.tasks set (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);

-- Sets waiting_for from the row: 'time' for a pending task whose run_at is in the future, null otherwise.
create function anchor.set_waiting_for()
returns trigger
language plpgsql
as $$
begin
    new.waiting_for := case when new.state = 'pending' and new.run_at > now() then 'time' end;
    return new;
end;
$$;

-- Inserts: only a task scheduled for later calls it; a due task is ready as inserted (the column's null),
-- so enqueueing due work costs nothing more.
create trigger tasks_waiting_for_insert before insert on anchor.tasks
for each row when (new.run_at > now())
execute function anchor.set_waiting_for();

-- Updates that make a row pending, move its run_at, or take a waiting row out of pending. The hot updates
-- (claim: ready → running, complete: running → succeeded) fail the WHEN clause and call nothing.
create trigger tasks_waiting_for_update before update of state, run_at on anchor.tasks
for each row when (new.state = 'pending' or new.waiting_for is not null)
execute function anchor.set_waiting_for();

-- Hands a worker up to max_tasks items of work: failing tasks whose hook must run (failing, leased) and
-- due pending tasks (pending → running; the only place attempts are counted); then a 'wake' row with the
-- earliest future run_at when the batch is not full, so an idle worker can set a timer. Every claimed row
-- takes a new fence token (fence + 1). Before picking, the scheduled tasks of its (queue, name) pairs that
-- have come due move to the ready set (waiting_for 'time' → null); the pick reads the ready set only.
create or replace function anchor.claim_v2(
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
    queue text, priority integer, timeout interval, deadline timestamptz, scheduled_at timestamptz, run_at timestamptz,
    fence bigint
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
    v_now timestamptz := anchor.clock(claim_v2.p_now);
    v_queues text[] := coalesce(claim_v2.queues, array(
        select distinct d.queue from anchor.task_definitions d
        where d.active and (claim_v2.task_names is null or d.name = any(claim_v2.task_names))
    ));
    -- no names given: every name a task can have (enqueue needs a definition; definitions are never deleted)
    v_names text[] := coalesce(claim_v2.task_names, array(select d.name from anchor.task_definitions d));
    -- the (queue, name) pairs served, as two parallel arrays: each pair is one range of the claim indexes
    v_pair_queues text[];
    v_pair_names text[];
    -- the pairs that have ready work, and how many tasks to take from each
    v_busy_queues text[];
    v_busy_names text[];
    v_takes integer[];
    v_want integer;
    v_claimed integer := 0;
    v_ids bigint[];
begin
    if coalesce(btrim(claim_v2.worker_id), '') = '' then
        raise exception using errcode = 'AT003', message = 'claim: worker_id must not be empty';
    end if;
    if claim_v2.max_tasks is null or claim_v2.max_tasks < 1 then
        raise exception using errcode = 'AT003', message = format('claim: max_tasks must be at least 1, got %s', claim_v2.max_tasks);
    end if;
    if claim_v2.hook_timeout is null or claim_v2.hook_timeout <= interval '0' or claim_v2.hook_timeout > anchor.longest_duration() then
        raise exception using errcode = 'AT003',
            message = format('claim: hook_timeout must be above zero and at most 100000 hours, got %s', claim_v2.hook_timeout);
    end if;
    select coalesce(array_agg(q.queue order by q.queue, n.name), '{}'), coalesce(array_agg(n.name order by q.queue, n.name), '{}')
    into v_pair_queues, v_pair_names
    from (select distinct u.queue from unnest(v_queues) as u (queue)) as q
    cross join (select distinct u.name from unnest(v_names) as u (name)) as n;

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
                    and t.hook_attempts < claim_v2.max_hook_attempts
                    and t.name = any(v_names)
                order by t.priority, t.run_at, t.id
                limit claim_v2.max_tasks
                for update skip locked
            ) as p
            order by p.priority, p.run_at, p.id
            limit claim_v2.max_tasks
        );
        return query
        update anchor.tasks t set
            locked_by = claim_v2.worker_id, locked_at = v_now, hook_attempts = t.hook_attempts + 1,
            deadline = v_now + claim_v2.hook_timeout, fence = t.fence + 1
        where t.id = any(v_ids)
        returning 'hook'::text, t.id, t.name, t.params, t.attempts, t.hook_attempts, t.max_attempts,
            t.queue, t.priority, least(t.timeout, anchor.longest_duration()), t.deadline,
            -- clamped: a time written before the bounds may be one Python cannot decode
            case when t.scheduled_at between v_now - interval '100 years' and v_now + interval '100 years' then t.scheduled_at end,
            greatest(t.run_at, v_now - interval '100 years'), t.fence;
        v_claimed := cardinality(v_ids);
    end if;

    if v_claimed < claim_v2.max_tasks then
        -- scheduled tasks that have come due join the ready set (one probe per pair when none has);
        -- a task another claimer is moving right now is skipped: that claimer moves it
        update anchor.tasks t set waiting_for = null
        where t.id = any(array(
            select s.id from unnest(v_pair_queues, v_pair_names) as c (queue, name)
            cross join lateral (
                select t.id from anchor.tasks t
                where t.state = 'pending' and t.waiting_for = 'time' and t.queue = c.queue and t.name = c.name
                    and t.run_at <= v_now
                order by t.run_at
                limit 1000
                for update skip locked
            ) as s
        ));

        -- A task rescued from a dead worker may be what killed it. It runs as the only such task of its
        -- worker, so a second crash points at it alone and max_rescues never fails innocent bystanders.
        v_ids := '{}';
        -- rescued tasks are rare: one probe of their small index spares the rest most of the time
        if exists (
            select 1 from anchor.tasks t where t.state = 'pending' and t.rescues > 0 and t.run_at <= v_now
        ) and not exists (
            select 1 from anchor.tasks t
            where t.locked_by = claim_v2.worker_id and t.state = 'running' and t.rescues > 0
        ) then
            v_ids := array(
                select p.id from unnest(v_queues) as q (queue)
                cross join lateral (
                    select t.id, t.priority, t.run_at from anchor.tasks t
                    where t.state = 'pending' and t.rescues > 0 and t.queue = q.queue and t.run_at <= v_now
                        and t.name = any(v_names)
                    order by t.priority, t.run_at, t.id
                    limit 1
                    for update skip locked
                ) as p
                order by p.priority, p.run_at, p.id
                limit 1
            );
        end if;
        v_want := claim_v2.max_tasks - v_claimed - cardinality(v_ids);

        -- How many to take from each pair. One pair: all of them. Several: the first v_want ready tasks
        -- across the pairs in claim order, read without locking, tell each pair's share; locking happens
        -- below, per pair, so no row is locked that the claim does not take.
        if cardinality(v_pair_queues) = 1 then
            v_busy_queues := v_pair_queues;
            v_busy_names := v_pair_names;
            v_takes := array[v_want];
        else
            select coalesce(array_agg(s.queue), '{}'), coalesce(array_agg(s.name), '{}'), coalesce(array_agg(s.n), '{}')
            into v_busy_queues, v_busy_names, v_takes
            from (
                select f.queue, f.name, count(*)::integer as n
                from (
                    select c.queue, c.name
                    from unnest(v_pair_queues, v_pair_names) as c (queue, name)
                    cross join lateral (
                        select t.priority, t.run_at, t.id from anchor.tasks t
                        where t.state = 'pending' and t.waiting_for is null and t.rescues = 0
                            and t.queue = c.queue and t.name = c.name and t.run_at <= v_now
                        order by t.priority, t.run_at, t.id
                        limit v_want
                    ) as p
                    order by p.priority, p.run_at, p.id
                    limit v_want
                ) as f
                group by f.queue, f.name
            ) as s;
        end if;

        v_ids := v_ids || array(
            select p.id from unnest(v_busy_queues, v_busy_names, v_takes) as c (queue, name, take)
            cross join lateral (
                select t.id, t.priority, t.run_at from anchor.tasks t
                where t.state = 'pending' and t.waiting_for is null and t.rescues = 0
                    and t.queue = c.queue and t.name = c.name
                    and t.run_at <= v_now  -- always true outside tests that move the clock back (p_now)
                order by t.priority, t.run_at, t.id
                limit c.take
                for update skip locked
            ) as p
        );
        return query
        update anchor.tasks t set
            state = 'running', attempts = t.attempts + 1, locked_by = claim_v2.worker_id, locked_at = v_now,
            -- least(): a timeout written before the bounds must not push the deadline out of range
            deadline = v_now + least(t.timeout, anchor.longest_duration()), fence = t.fence + 1
        where t.id = any(v_ids)
        returning 'execute'::text, t.id, t.name, t.params, t.attempts, null::integer, t.max_attempts,
            t.queue, t.priority, least(t.timeout, anchor.longest_duration()), t.deadline,
            case when t.scheduled_at between v_now - interval '100 years' and v_now + interval '100 years' then t.scheduled_at end,
            greatest(t.run_at, v_now - interval '100 years'), t.fence;
        v_claimed := v_claimed + cardinality(v_ids);
    end if;

    if v_claimed < claim_v2.max_tasks then
        return query
        select 'wake'::text, null::bigint, null::text, null::jsonb, null::integer, null::integer, null::integer,
            null::text, null::integer, null::interval, null::timestamptz, null::timestamptz,
            -- at most 100 years ahead: a run_at written before the bounds may be 'infinity'
            least(min(n.run_at), v_now + interval '100 years'), null::bigint
        from (
            select s.run_at from unnest(v_pair_queues, v_pair_names) as c (queue, name)
            cross join lateral (
                select t.run_at from anchor.tasks t
                where t.state = 'pending' and t.waiting_for = 'time' and t.queue = c.queue and t.name = c.name
                    and t.run_at > v_now
                order by t.run_at limit 1
            ) as s
            union all
            select f.run_at from unnest(v_queues) as q (queue)
            cross join lateral (
                select t.run_at from anchor.tasks t
                where t.state = 'failing' and t.queue = q.queue and t.run_at > v_now and t.locked_by is null
                    and t.name = any(v_names)
                order by t.run_at limit 1
            ) as f
        ) as n;
    end if;
end;
$$;

-- Marks executions done (running → succeeded), fenced by (id, fence, worker); others come back 'stale',
-- and so does an id given twice (the execution succeeds once). Outcomes in input order. The same contract
-- as before; only the fence's form changed (see the comment on the predicate).
create or replace function anchor.complete_v2(ids bigint[], fences bigint[], worker_id text, p_now timestamptz default null)
returns table (id bigint, outcome text)
language plpgsql
set plan_cache_mode = force_generic_plan
set jit = off
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(complete_v2.p_now);
begin
    if cardinality(complete_v2.ids) is distinct from cardinality(complete_v2.fences) then
        raise exception using errcode = 'AT003',
            message = format('complete: %s ids but %s fences', cardinality(complete_v2.ids), cardinality(complete_v2.fences));
    end if;
    return query
    with done as (
        update anchor.tasks t set state = 'succeeded', finished_at = v_now, deadline = null
        from unnest(complete_v2.ids, complete_v2.fences) as c (id, fence)
        -- Only id = any(ids) may reach an index, so the update is driven by the primary key whatever the
        -- statistics say. Written as plain equalities, state and locked_by also matched tasks_held_idx,
        -- and on a table never analysed (right after a bulk enqueue) the generic plan scanned every task
        -- the worker holds once per completed id: 10 ms per batch of 100 instead of 1. IS NOT DISTINCT
        -- FROM is the same test here (worker_id is checked not null) but no index can serve it.
        where t.id = any(complete_v2.ids) and t.id = c.id and t.fence = c.fence
            and t.state is not distinct from 'running'
            and t.locked_by is not distinct from complete_v2.worker_id and complete_v2.worker_id is not null
        returning t.id
    )
    select c.id, case when d.id is not null and c.first then 'succeeded' else 'stale' end
    from (
        select u.id, u.ord, row_number() over (partition by u.id order by u.ord) = 1 as first
        from unnest(complete_v2.ids) with ordinality as u (id, ord)
    ) as c
    left join done as d on d.id = c.id
    order by c.ord;
end;
$$;

-- create or replace dropped the SECURITY DEFINER and search_path of claim_v2 and complete_v2
select anchor.apply_privileges();
