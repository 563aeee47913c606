-- 0017_core_costs: the hot functions reach tasks by index whatever the table held when a session planned them.
--
-- Why: a worker's session plans the statements of claim_v2 and complete_v2 once (force_generic_plan) and
-- keeps those plans for its life, and PL/pgSQL keeps the other functions' generic plans the same way. A
-- worker that starts while the table is empty or small (a fresh deploy, a drained queue) gets plans in which
-- a sequential scan is the cheapest way to an id list, and keeps reading the whole table on every claim and
-- completion as the table grows, until autovacuum happens to invalidate the plans: a claim of 100 over 30k
-- rows took 35 ms instead of 2, and a worker in a steady stream of new tasks fell behind and never caught
-- up. With sequential scans off inside these functions every plan reaches its rows through an index (the
-- primary key for id lists, the claim indexes for the pick), which is the right plan at any size: they
-- touch a batch, never a table.
--
-- complete_v2, hand_back_v2 and record_results matched the rows they update to the (id, fence) pairs they were
-- given with a join. The generic plan expects 10 pairs and picks a nested loop that rescans the whole pair list
-- for every row: 100 x 100 comparisons and 100 unnests per batch of 100, 6.6 of complete_v2's 7.6 ms
-- (auto_explain) and half its CPU. complete_v2 and hand_back_v2 now look each row's fence up by its position
-- in the id list (array_position, no join, so no join order for a plan to get wrong); record_results, which
-- changes no state and so fires no trigger, hashes the list with nested loops off. (Nested loops off on a
-- function that changes state would also bind the triggers it fires: the workflows trigger then hash-joined
-- a fan-in's whole dependency list once per completed dependency, 2 s per batch of 100 instead of 20 ms.)
-- Backend CPU per task, drain of 20k, two interleaved rounds: complete_v2 43 -> 22 us, complete + claim in
-- one statement 76 -> 57 us.

-- hand_back_v2 and record_results also reach their rows by primary key only, as complete_v2 does since
-- 0013: written as plain equalities, state and locked_by matched tasks_held_idx, and a generic plan on a
-- table never analysed could scan every task the worker holds once per id.

alter function anchor.claim_v2(text, integer, text[], text[], interval, integer, timestamptz) set enable_seqscan = off;

-- Marks executions done (running → succeeded), fenced by (id, fence, worker); others come back 'stale', and so
-- does an id given twice (the execution succeeds once). Outcomes in input order. 0013's contract; each row's
-- fence is now found by its id's position in the list instead of a join with the unnested pairs.
create or replace function anchor.complete_v2(ids bigint[], fences bigint[], worker_id text, p_now timestamptz default null)
returns table (id bigint, outcome text)
language plpgsql
set plan_cache_mode = force_generic_plan
set jit = off
set enable_seqscan = off
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
        -- only id = any(ids) may reach an index (see 0013); an id given twice is checked against its first fence
        where t.id = any(complete_v2.ids)
            and t.fence = complete_v2.fences[array_position(complete_v2.ids, t.id)]
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

-- Gives unfinished executions back (running → pending, the attempt not spent; running → cancelled when a
-- cancel was requested), fenced by (id, fence, worker); others come back 'stale'. Outcomes in input order.
create or replace function anchor.hand_back_v2(ids bigint[], fences bigint[], worker_id text, p_now timestamptz default null)
returns table (id bigint, outcome text)
language plpgsql
set enable_seqscan = off
set jit = off
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(hand_back_v2.p_now);
begin
    if cardinality(hand_back_v2.ids) is distinct from cardinality(hand_back_v2.fences) then
        raise exception using errcode = 'AT003',
            message = format('hand_back: %s ids but %s fences', cardinality(hand_back_v2.ids), cardinality(hand_back_v2.fences));
    end if;
    return query
    with returned as (
        update anchor.tasks t set
            state = case when t.cancel_requested then 'cancelled' else 'pending' end,
            attempts = t.attempts - (not t.cancel_requested)::integer,
            run_at = v_now, locked_by = null, deadline = null,
            finished_at = case when t.cancel_requested then v_now end
        -- only id = any(ids) may reach an index (see complete_v2): IS NOT DISTINCT FROM is the same test
        -- here (worker_id is checked not null) but keeps tasks_held_idx out of the plan
        where t.id = any(hand_back_v2.ids)
            and t.fence = hand_back_v2.fences[array_position(hand_back_v2.ids, t.id)]
            and t.state is not distinct from 'running'
            and t.locked_by is not distinct from hand_back_v2.worker_id and hand_back_v2.worker_id is not null
        returning t.id, t.state, t.attempts
    ),

    recorded as (
        insert into anchor.task_events (task_id, at, kind, attempt, worker_id)
        select
            r.id,
            v_now,
            case r.state when 'cancelled' then 'cancelled' else 'handed_back' end,
            case r.state when 'cancelled' then r.attempts end,
            hand_back_v2.worker_id
        from returned as r
    )

    select c.id, case when c.first then coalesce(r.state, 'stale') else 'stale' end
    from (
        select u.id, u.ord, row_number() over (partition by u.id order by u.ord) = 1 as first
        from unnest(hand_back_v2.ids) with ordinality as u (id, ord)
    ) as c
    left join returned as r on c.id = r.id
    order by c.ord;
end;
$$;

-- Stores the results of executions a worker is about to complete, in the transaction of complete_v2 and
-- before it; fenced by (id, fence, worker) on running rows. Outcomes in input order: 'recorded', 'stale'
-- (the row has moved on; nothing stored) or 'too_large' (over max_result_bytes; nothing stored).
create or replace function anchor.record_results(ids bigint[], fences bigint[], results jsonb[], worker_id text)
returns table (id bigint, outcome text)
language plpgsql
set enable_seqscan = off
set enable_nestloop = off
set jit = off
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
        -- only id = any(ids) may reach an index (see hand_back_v2)
        where t.id = any(record_results.ids) and t.id = g.id and not g.too_large and t.fence = g.fence
            and t.state is not distinct from 'running'
            and t.locked_by is not distinct from record_results.worker_id and record_results.worker_id is not null
        returning t.id
    )

    select g.id, case when g.too_large then 'too_large' when s.id is not null then 'recorded' else 'stale' end
    from given as g
    left join (select distinct d.id from stored as d) as s on g.id = s.id
    order by g.ord;
end;
$$;

-- create or replace dropped the SECURITY DEFINER and search_path of complete_v2, hand_back_v2 and record_results
select anchor.apply_privileges();
