-- 0018_fixed_costs: what every enqueue paid for helpers PostgreSQL planned again in each transaction.
--
-- Why: a SQL-language function that the planner cannot inline (its body reads a table or holds a sub-select)
-- is parsed and planned again in every transaction that calls it from PL/pgSQL or from a trigger's WHEN
-- clause: its plan lives in the calling expression's state, which PL/pgSQL rebuilds per transaction. A single
-- enqueue is one transaction, so it paid three such plannings (pg_stat_statements, track_planning, 3000
-- single enqueues): params_size_problem 61 us, params_shape_problem 21 us, and, since flow control, the
-- insert trigger's flow_in_use 29 us, of about 650 us per enqueue. Here the first and the last are PL/pgSQL
-- (plans kept for the session) and params_shape_problem is a single expression the planner inlines into its
-- caller. Same signatures, same results, same messages.
--
-- claim_v2 takes a worker's slot for a rescued task under a lock, as a worker may now have two claims in
-- flight, and stamps the tasks it starts with the clock at the start rather than its transaction's start (a
-- claim sent while another was completing a fan-in's last dependency stamped the fan-in as started before that
-- dependency finished). And it built its (queue, name) pairs into seven arrays with seven sorts, one per
-- array: 25-37 us per claim where 0013's two arrays took 13. One sort now. A claim of one task costs about
-- 600 us in all.

-- Whether any task name or queue has a limit: while none has, inserts call no flow-control trigger at all.
create or replace function anchor.flow_in_use()
returns boolean
language plpgsql
stable
as $$
begin
    return exists (select 1 from anchor.task_definitions d where d.concurrency_limit is not null or d.rate_limit is not null)
        or exists (select 1 from anchor.queue_settings s where s.concurrency is not null or s.rate_limit is not null);
end;
$$;

-- '$: <n> bytes is over the limit ...' when p_params is larger than anchor.settings max_params_bytes, else null.
create or replace function anchor.params_size_problem(p_params jsonb)
returns text
language plpgsql
stable
as $$
declare
    v_size integer := pg_column_size(p_params);
    v_max_size bigint := (select c.value::bigint from anchor.settings c where c.name = 'max_params_bytes');
begin
    if v_size > v_max_size then
        return format('$: %s bytes is over the limit of %s bytes (anchor.settings max_params_bytes)', v_size, v_max_size);
    end if;
    return null;
end;
$$;

-- '$: number <first 20 characters> (<n> digits) is out of range ...' for a JSON number beyond a double's range,
-- null for null. One expression, so the planner inlines it (params_shape_problem).
create function anchor.number_range_problem(p_number jsonb)
returns text
language sql
immutable
as $$
    select case when p_number is not null then format(
        '$: number %s (%s digits) is out of range: a JSON number must fit a double (at most 1.7976931348623157e308 in magnitude)',
        left(p_number::text, 20) || case when length(p_number::text) > 20 then '...' else '' end, length(p_number::text)
    ) end
$$;

-- What no worker could load from p_params: nesting deeper than 100 levels, or a number beyond a double's
-- range (quoted to 20 characters); null when neither. One expression, so the planner inlines it.
create or replace function anchor.params_shape_problem(p_params jsonb)
returns text
language sql
immutable
as $$
    select case
        when jsonb_path_exists(p_params, 'strict $.**{101}') then '$: nested deeper than 100 levels'
        else anchor.number_range_problem(
            jsonb_path_query_first(p_params, 'strict $.** ? (@.type() == "number" && @.abs() > 1.7976931348623157e308)')
        )
    end
$$;

-- A worker may have two claims in flight (one finishing while the next is sent). Its slot for a rescued task
-- is decided by one claim at a time: this takes a lock for the rest of the claim's transaction (two workers
-- whose ids share a hash only wait for each other); the other claim then sees the first one's rescued task.
create function anchor.lock_rescued_slot(p_worker_id text)
returns void
language sql
as $$
    select pg_catalog.pg_advisory_xact_lock(hashtext('anchor rescued slot ' || p_worker_id))
$$;

-- claim_v2 as 0014 left it (with 0017's enable_seqscan = off), but: the (queue, name) pairs sorted once, not seven
-- times (one per array built from them); the rescued slot decided under anchor.lock_rescued_slot; the tasks it
-- starts stamped with the clock at their start.
-- Hands a worker up to max_tasks items of work: failing tasks whose hook must run (failing, leased; paused
-- queues included) and pending tasks (pending → running; the only place attempts are counted): ready ones from
-- the ready set, held ones of limited pairs as their limits allow (anchor.flow_start); paused queues start
-- nothing. Then a 'wake' row with the earliest future run_at or rate-token time when the batch is not full.
-- Every claimed row takes a new fence token (fence + 1).
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
set enable_seqscan = off
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
    -- the (queue, name) pairs served in queues not paused, as two parallel arrays: each pair is one range of
    -- the claim indexes; split into the pairs whose tasks use no limit (ready set) and those that do (held)
    v_pair_queues text[];
    v_pair_names text[];
    v_ready_queues text[];
    v_ready_names text[];
    v_flow_queues text[];
    v_flow_names text[];
    -- the queues served that are not paused
    v_run_queues text[];
    -- the pairs that have ready work, and how many tasks to take from each
    v_busy_queues text[];
    v_busy_names text[];
    v_takes integer[];
    v_want integer;
    v_claimed integer := 0;
    v_ids bigint[];
    v_flow_ids bigint[] := '{}';
    v_flow_wake timestamptz;
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
    -- the aggregates read the pairs in the subquery's order: one sort per claim instead of one per aggregate
    -- (the order only makes claims repeatable; flow_start locks its scopes in id order whatever it is given)
    select coalesce(array_agg(p.queue), '{}'), coalesce(array_agg(p.name), '{}'),
        coalesce(array_agg(p.queue) filter (where not p.limited), '{}'),
        coalesce(array_agg(p.name) filter (where not p.limited), '{}'),
        coalesce(array_agg(p.queue) filter (where p.limited), '{}'),
        coalesce(array_agg(p.name) filter (where p.limited), '{}'),
        coalesce(array_agg(distinct p.queue), '{}')
    into v_pair_queues, v_pair_names, v_ready_queues, v_ready_names, v_flow_queues, v_flow_names, v_run_queues
    from (
        select q.queue, n.name,
            s.concurrency is not null or s.rate_limit is not null
                or d.concurrency_limit is not null or d.rate_limit is not null as limited
        from (select distinct u.queue from unnest(v_queues) as u (queue)) as q
        cross join (select distinct u.name from unnest(v_names) as u (name)) as n
        left join anchor.queue_settings s on s.name = q.queue
        left join anchor.task_definitions d on d.name = n.name
        where s.paused is not true  -- a paused queue starts nothing: its pairs are not read at all
        order by q.queue, n.name
    ) as p;

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
        -- scheduled tasks that have come due join the ready set, or are held when they use a limit (one probe
        -- per pair when none has); a task another claimer is moving right now is skipped: that claimer moves it
        update anchor.tasks t set waiting_for = case when t.flow_key is not null then 'limit' end
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
        ) then
            perform anchor.lock_rescued_slot(claim_v2.worker_id);
            if not exists (
                select 1 from anchor.tasks t
                where t.locked_by = claim_v2.worker_id and t.state = 'running' and t.rescues > 0
            ) then
                v_ids := array(
                    select p.id from unnest(v_run_queues) as q (queue)
                    cross join lateral (
                        select t.id, t.priority, t.run_at from anchor.tasks t
                        where t.state = 'pending' and t.rescues > 0 and t.queue = q.queue and t.run_at <= v_now
                            and t.name = any(v_names)
                            and t.flow_key is null  -- a rescued task that uses a limit starts under its limits
                        order by t.priority, t.run_at, t.id
                        limit 1
                        for update skip locked
                    ) as p
                    order by p.priority, p.run_at, p.id
                    limit 1
                );
            end if;
        end if;
        v_want := claim_v2.max_tasks - v_claimed - cardinality(v_ids);

        -- held tasks of limited pairs first: their limits bound them, so they cannot crowd out the rest
        if cardinality(v_flow_queues) > 0 and v_want > 0 then
            select f.started, f.wake, f.started_at into v_flow_ids, v_flow_wake, v_now
            from anchor.flow_start(
                claim_v2.worker_id, v_want, v_flow_queues, v_flow_names, v_now, claim_v2.p_now is not null
            ) as f;
            v_want := v_want - cardinality(v_flow_ids);
        end if;

        -- How many to take from each pair. One pair: all of them. Several: the first v_want ready tasks
        -- across the pairs in claim order, read without locking, tell each pair's share; locking happens
        -- below, per pair, so no row is locked that the claim does not take.
        if cardinality(v_ready_queues) = 1 then
            v_busy_queues := v_ready_queues;
            v_busy_names := v_ready_names;
            v_takes := array[v_want];
        else
            select coalesce(array_agg(s.queue), '{}'), coalesce(array_agg(s.name), '{}'), coalesce(array_agg(s.n), '{}')
            into v_busy_queues, v_busy_names, v_takes
            from (
                select f.queue, f.name, count(*)::integer as n
                from (
                    select c.queue, c.name
                    from unnest(v_ready_queues, v_ready_names) as c (queue, name)
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
        -- they start now, after the pick saw them: a task another transaction released (a fan-in's last
        -- dependency completing) after this claim began starts after that transaction's time, not before it.
        -- A test's fixed clock (p_now) stays as given.
        if claim_v2.p_now is null then
            v_now := greatest(v_now, clock_timestamp());
        end if;
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

        if cardinality(v_flow_ids) > 0 then
            -- started by anchor.flow_start above (in its own statements, so its counts saw them)
            return query
            select 'execute'::text, t.id, t.name, t.params, t.attempts, null::integer, t.max_attempts,
                t.queue, t.priority, least(t.timeout, anchor.longest_duration()), t.deadline,
                case when t.scheduled_at between v_now - interval '100 years' and v_now + interval '100 years' then t.scheduled_at end,
                greatest(t.run_at, v_now - interval '100 years'), t.fence
            from anchor.tasks t
            where t.id = any(v_flow_ids)
            order by t.priority, t.run_at, t.id;
            v_claimed := v_claimed + cardinality(v_flow_ids);
        end if;
    end if;

    if v_claimed < claim_v2.max_tasks then
        return query
        select 'wake'::text, null::bigint, null::text, null::jsonb, null::integer, null::integer, null::integer,
            null::text, null::integer, null::interval, null::timestamptz, null::timestamptz,
            -- at most 100 years ahead: a run_at written before the bounds may be 'infinity'; the next rate
            -- token of a held group counts as a run_at
            least(min(n.run_at), v_flow_wake, v_now + interval '100 years'), null::bigint
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


-- create or replace dropped claim_v2's SECURITY DEFINER and search_path; the new helper is callable by the
-- installing role only, as every internal function
select anchor.apply_privileges();
