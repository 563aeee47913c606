-- 0014_workflows: dependencies between tasks, parent and child tasks, pause and cancel down a tree.
--
-- Why: a task could only wait for a time. A fan-in ("merge the chunks once every chunk is processed") or a
-- chain had to be polled by the application, and a job spawning sub-jobs could not be stopped as a whole.
-- It lives in SQL so it holds for tasks enqueued from psql too, and so the step "this task finished: which
-- tasks did it unblock or doom?" runs in the transaction of whatever finished it (complete, fail, the hook
-- transaction, cancel, rescue, hand-back), without any of those functions knowing about it.
--
-- How, in short:
--   - Two new states. 'blocked': created with dependencies that have not all succeeded. 'paused': paused by
--     pause_task (itself or an ancestor). Neither is 'pending', so the claim's ready set never holds them
--     and the claim is unchanged. They leave by a plain UPDATE of state (to pending, blocked, cancelled),
--     so the BEFORE UPDATE triggers that file pending rows (0013's ready set) see them like any other.
--   - anchor.task_dependencies holds the edges, indexed both ways. A dependent counts its dependencies not
--     yet succeeded (tasks.unmet_dependencies); a dependency that has dependents carries has_dependents.
--     An AFTER UPDATE OF state trigger whose WHEN clause is false unless has_dependents is set (evaluated
--     without calling anything, so tasks nobody depends on pay nothing) counts the dependents down when
--     the task succeeds (the last one turns the dependent pending) or, when it ends failed, hook_failed or
--     cancelled, cancels the whole closure of its blocked and paused dependents in one statement (a
--     recursive query: any depth and width, no trigger recursion, no statement per task).
--   - Races. Enqueue locks its dependencies (FOR SHARE) before reading their state, so a dependency
--     finishing meanwhile either commits first (enqueue sees its final state) or waits for the enqueue to
--     commit (its trigger then sees the new edge). The count-down locks the dependent rows (in id order, as
--     every path that locks dependents) and then counts them down, so two dependencies of one fan-in
--     finishing at once in two transactions serialize on the dependent's row and count down once each; a
--     dependent cancelled meanwhile no longer matches and is left alone.
--
-- Upgrade cost: the new state check scans anchor.tasks once, and the unique-tag index is rebuilt (it holds
-- only live tasks with a tag); the new columns rewrite nothing.
--   - parent_id makes trees. cancel, pause_task and resume_task lock the subtree's live rows (repeating
--     until no new child appeared under a locked one) and change them in one transaction. A running task
--     asked to pause finishes its attempt; a BEFORE UPDATE trigger turns its next running → pending (retry,
--     hand-back, heartbeat release, rescue) into paused, so fail_v2 and the rest stay as they are.
--
-- Unique tags: every live task holds its tag, and blocked and paused are live, so the partial unique index
-- now covers them too. A task turning pending from blocked or paused therefore never meets another holder
-- of its tag (it could not be released otherwise), and a duplicate enqueue returns the blocked or paused
-- holder like a pending one.

insert into anchor.settings (name, value, description) values
('max_dependencies', '10000', 'most dependencies one task may have (enqueue depends_on)');

alter table anchor.tasks drop constraint tasks_state_check;
alter table anchor.tasks add constraint tasks_state_check check (
    state in ('pending', 'running', 'succeeded', 'failing', 'failed', 'hook_failed', 'cancelled', 'blocked', 'paused')
);

-- Adding columns without a default, or with a constant one, rewrites nothing.
-- The task whose subtree this task belongs to (null: none). No foreign key: pruning a finished parent
-- leaves its children (and their parent_id) as they are.
alter table anchor.tasks add column parent_id bigint;
-- How many of its dependencies have not succeeded yet; 0 for a task without any.
alter table anchor.tasks add column unmet_dependencies integer not null default 0;
-- Some task depends on this one: the only rows the dependency trigger runs for.
alter table anchor.tasks add column has_dependents boolean not null default false;
-- A running task asked to pause: its next running → pending becomes running → paused.
alter table anchor.tasks add column pause_requested boolean not null default false;
-- The delay a blocked task was enqueued with (no run_at given): run_at is set when it unblocks, so the
-- delay counts from then. Null once unblocked, and for every other task.
alter table anchor.tasks add column start_delay interval;

-- A task's children, for cancel, pause and resume of a subtree.
create index tasks_parent_idx on anchor.tasks (parent_id) where parent_id is not null;

-- One live task per unique tag, blocked and paused ones included (see above).
drop index anchor.tasks_unique_tag_idx;
create unique index tasks_unique_tag_idx on anchor.tasks (unique_tag)
where unique_tag is not null and state in ('pending', 'running', 'failing', 'blocked', 'paused');

-- task_id depends on depends_on. The primary key finds a task's dependencies (its results for the worker,
-- retry_now); the second index finds a task's dependents (the trigger, prune). Both go with the task.
create table anchor.task_dependencies (
    task_id bigint not null references anchor.tasks (id) on delete cascade,
    depends_on bigint not null references anchor.tasks (id) on delete cascade,
    primary key (task_id, depends_on)
);
create index task_dependencies_dependents_idx on anchor.task_dependencies (depends_on, task_id);

-- Enqueueing ------------------------------------------------------------------------------------------

-- Locks the dependencies a task is about to get and reads their state; no state transition. Ids are
-- deduplicated and sorted; unmet counts those not succeeded; doomed_* names the first that ended failed,
-- hook_failed or cancelled (null if none). Each dependency is marked has_dependents, then locked FOR
-- SHARE in id order: a dependency finishing concurrently either committed first (the read below, a new
-- statement, sees its final state) or waits for this transaction (its trigger then sees the new edge).
-- AT003 for a list that is not flat, holds null or is longer than max_dependencies; AT004 naming the
-- first id that does not exist.
create function anchor.lock_dependencies(
    p_task text,
    p_depends_on bigint[],
    out dependency_ids bigint[],
    out unmet integer,
    out doomed_id bigint,
    out doomed_name text,
    out doomed_state text
)
language plpgsql
as $$
declare
    v_max integer := (select s.value::integer from anchor.settings s where s.name = 'max_dependencies');
    v_found integer;
    v_missing bigint;
begin
    if array_ndims(p_depends_on) > 1 then
        raise exception using errcode = 'AT003',
            message = format('task %s: depends_on must be a flat list of task ids, got %s', p_task, left(p_depends_on::text, 200));
    end if;
    if cardinality(p_depends_on) > v_max then
        raise exception using errcode = 'AT003',
            message = format('task %s: %s dependencies are over the limit of %s (anchor.settings max_dependencies)',
                p_task, cardinality(p_depends_on), v_max);
    end if;
    if array_position(p_depends_on, null) is not null then
        raise exception using errcode = 'AT003',
            message = format('task %s: depends_on must not contain null, got %s', p_task, left(p_depends_on::text, 200));
    end if;
    dependency_ids := array(select distinct d.id from unnest(p_depends_on) as d (id) order by d.id);
    update anchor.tasks t set has_dependents = true
    where t.id = any(dependency_ids) and not t.has_dependents;
    perform from anchor.tasks t where t.id = any(dependency_ids) order by t.id for share;
    select count(*), count(*) filter (where t.state <> 'succeeded') into v_found, unmet
    from anchor.tasks t where t.id = any(dependency_ids);
    if v_found < cardinality(dependency_ids) then
        select d.id into v_missing from unnest(dependency_ids) as d (id)
        where not exists (select from anchor.tasks t where t.id = d.id)
        order by d.id
        limit 1;
        raise exception using errcode = 'AT004',
            message = format('task %s: dependency %s does not exist', p_task, v_missing);
    end if;
    select t.id, t.name, t.state into doomed_id, doomed_name, doomed_state
    from anchor.tasks t
    where t.id = any(dependency_ids) and t.state in ('failed', 'hook_failed', 'cancelled')
    order by t.id
    limit 1;
end;
$$;

-- Locks a new task's parent (FOR SHARE, so a cancel or pause of it waits for this transaction or has
-- already committed) and returns the state the child inherits: 'cancelled' under a cancelled parent or a
-- running one whose cancel was requested, 'paused' under a paused one or a running one asked to pause,
-- null otherwise. No state transition. AT004 naming the parent when it does not exist.
create function anchor.lock_parent(p_task text, p_parent_id bigint)
returns text
language plpgsql
as $$
declare
    v_parent record;
begin
    select t.state, t.cancel_requested, t.pause_requested into v_parent
    from anchor.tasks t where t.id = p_parent_id
    for share;
    if not found then
        raise exception using errcode = 'AT004', message = format('task %s: parent %s does not exist', p_task, p_parent_id);
    end if;
    return case
        when v_parent.state = 'cancelled' or (v_parent.state = 'running' and v_parent.cancel_requested) then 'cancelled'
        when v_parent.state = 'paused' or (v_parent.state = 'running' and v_parent.pause_requested) then 'paused'
    end;
end;
$$;

-- Cancels tasks an enqueue has just created blocked or paused because a dependency already ended or the
-- parent is cancelled: → cancelled, with a 'cancelled' event carrying p_details and p_message as last error.
create function anchor.cancel_new_tasks(p_ids bigint[], p_now timestamptz, p_message text, p_details jsonb)
returns void
language sql
as $$
    with cancelled as (
        update anchor.tasks t set state = 'cancelled', finished_at = p_now, last_error = p_message
        where t.id = any(p_ids) and t.state in ('blocked', 'paused')
        returning t.id
    )
    insert into anchor.task_events (task_id, at, kind, attempt, message, details)
    select c.id, p_now, 'cancelled', 0, p_message, p_details from cancelled as c
$$;

-- The state a new task starts in from what lock_dependencies and lock_parent found: paused under a paused
-- parent, blocked while a dependency is unmet (a doomed one too: the caller cancels it after the insert,
-- so a unique tag still deduplicates first), else pending.
create function anchor.initial_state(p_unmet integer, p_inherited text)
returns text
language sql
immutable
as $$
    select case
        when p_inherited = 'paused' then 'paused'
        when coalesce(p_unmet, 0) > 0 or p_inherited = 'cancelled' then 'blocked'
        else 'pending'
    end
$$;

-- Inserts one task (→ pending; → blocked with dependencies not all succeeded; → paused under a paused
-- parent; → cancelled when a dependency already ended failed, hook_failed or cancelled, or the parent is
-- cancelled), or returns the id of the live task of the same name already holding its unique tag; a tag
-- held by a live task of another name raises AT006 naming that name (never its id). depends_on: ids of
-- tasks this one waits for (AT003 / AT004 as lock_dependencies); parent_id: the task it belongs to (AT004).
-- The parameters are 0010's plus the last two, so every existing call keeps working.
drop function anchor.enqueue(
    text, jsonb, timestamptz, interval, text, interval[], integer, interval, integer, text, timestamptz, timestamptz
);
create function anchor.enqueue(
    name text,
    params jsonb default '{}',
    run_at timestamptz default null,
    delay interval default null,
    unique_tag text default null,
    retry_intervals interval[] default null,
    max_attempts integer default null,
    timeout interval default null,
    priority integer default null,
    queue text default null,
    scheduled_at timestamptz default null,
    p_now timestamptz default null,
    depends_on bigint[] default null,
    parent_id bigint default null
)
returns bigint
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(enqueue.p_now);
    v_def anchor.task_definitions := anchor.definition_of(enqueue.name);
    v_dependency_ids bigint[];
    v_unmet integer := 0;
    v_doomed_id bigint;
    v_doomed_name text;
    v_doomed_state text;
    v_inherited text;
    v_state text;
    v_id bigint;
    v_holder text;
begin
    perform anchor.check_params(v_def, enqueue.params);
    -- most calls override nothing: skip the checks then
    if num_nonnulls(
        enqueue.run_at, enqueue.delay, enqueue.unique_tag, enqueue.retry_intervals, enqueue.max_attempts,
        enqueue.timeout, enqueue.queue, enqueue.scheduled_at
    ) > 0 then
        perform anchor.check_overrides(
            enqueue.name, enqueue.run_at, enqueue.delay, enqueue.unique_tag, enqueue.retry_intervals,
            enqueue.max_attempts, enqueue.timeout, enqueue.queue
        );
        perform anchor.check_times(enqueue.name, enqueue.run_at, enqueue.scheduled_at);
    end if;
    if enqueue.depends_on is not null then
        select * into v_dependency_ids, v_unmet, v_doomed_id, v_doomed_name, v_doomed_state
        from anchor.lock_dependencies(enqueue.name, enqueue.depends_on);
    end if;
    if enqueue.parent_id is not null then
        v_inherited := anchor.lock_parent(enqueue.name, enqueue.parent_id);
    end if;
    v_state := anchor.initial_state(v_unmet, v_inherited);
    -- a few rounds at most: each round either inserts, finds the live holder of the tag, or sees the
    -- holder finish in between; a holder invisible to the caller's snapshot would loop forever
    for v_round in 1..5 loop
        insert into anchor.tasks (
            name, params, state, queue, priority, max_attempts, retry_intervals, timeout, unique_tag,
            run_at, scheduled_at, created_at, parent_id, unmet_dependencies, start_delay
        ) values (
            enqueue.name,
            enqueue.params,
            v_state,
            coalesce(enqueue.queue, v_def.queue),
            coalesce(enqueue.priority, v_def.priority),
            coalesce(enqueue.max_attempts, v_def.max_attempts),
            coalesce(enqueue.retry_intervals, v_def.retry_intervals),
            coalesce(enqueue.timeout, v_def.timeout),
            enqueue.unique_tag,
            coalesce(enqueue.run_at, v_now + coalesce(enqueue.delay, interval '0')),
            enqueue.scheduled_at,
            v_now,
            enqueue.parent_id,
            v_unmet,
            -- waiting for dependencies without a run_at of its own: the delay counts from the unblocking
            case when v_unmet > 0 and enqueue.run_at is null then coalesce(enqueue.delay, interval '0') end
        )
        on conflict (unique_tag) where unique_tag is not null and state in ('pending', 'running', 'failing', 'blocked', 'paused')
        do nothing
        returning id into v_id;
        if v_id is not null then
            if v_dependency_ids is not null then
                insert into anchor.task_dependencies (task_id, depends_on)
                select v_id, d.id from unnest(v_dependency_ids) as d (id);
            end if;
            if v_doomed_id is not null then
                perform anchor.cancel_new_tasks(
                    array[v_id], v_now,
                    format('dependency %s (%s) ended %s', v_doomed_id, v_doomed_name, v_doomed_state),
                    jsonb_build_object('dependency', v_doomed_id, 'dependency_state', v_doomed_state)
                );
            elsif v_inherited = 'cancelled' then
                perform anchor.cancel_new_tasks(
                    array[v_id], v_now, format('parent %s was cancelled', enqueue.parent_id),
                    jsonb_build_object('ancestor', enqueue.parent_id)
                );
            end if;
            return v_id;
        end if;
        select t.id, t.name into v_id, v_holder from anchor.tasks t
        where t.unique_tag = enqueue.unique_tag and t.state in ('pending', 'running', 'failing', 'blocked', 'paused');
        if v_holder is distinct from enqueue.name and v_id is not null then
            raise exception using errcode = 'AT006',
                message = format('task %s: unique tag %L is held by a live task of another name, %L', enqueue.name, enqueue.unique_tag, v_holder),
                hint = 'Unique tags are shared by all task names; prefix the tag with the task name to keep them apart.';
        end if;
        if v_id is not null then
            return v_id;
        end if;
    end loop;
    raise exception using errcode = 'AT006',
        message = format('task %s: unique tag %L is held by a live task this transaction cannot see', enqueue.name, enqueue.unique_tag),
        hint = 'Enqueue with unique tags from a READ COMMITTED transaction.';
end;
$$;

-- Inserts many tasks of one name (params: a JSON array of objects) in one statement; ids in input order.
-- With unique_tags (one per element) each goes through enqueue for its deduplication. The whole call is
-- bounded too (max_enqueue_many_bytes), not only each element. depends_on and parent_id apply to every
-- task of the call, with enqueue's states and errors (a fan-out after one task, the children of one).
drop function anchor.enqueue_many(
    text, jsonb, timestamptz, interval, text[], interval[], integer, interval, integer, text, timestamptz
);
create function anchor.enqueue_many(
    name text,
    params jsonb,
    run_at timestamptz default null,
    delay interval default null,
    unique_tags text[] default null,
    retry_intervals interval[] default null,
    max_attempts integer default null,
    timeout interval default null,
    priority integer default null,
    queue text default null,
    p_now timestamptz default null,
    depends_on bigint[] default null,
    parent_id bigint default null
)
returns bigint[]
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(enqueue_many.p_now);
    v_def anchor.task_definitions := anchor.definition_of(enqueue_many.name);
    v_max_bytes bigint := (select s.value::bigint from anchor.settings s where s.name = 'max_enqueue_many_bytes');
    v_element record;
    v_problem text;
    v_dependency_ids bigint[];
    v_unmet integer := 0;
    v_doomed_id bigint;
    v_doomed_name text;
    v_doomed_state text;
    v_inherited text;
    v_state text;
    v_ids bigint[];
begin
    if jsonb_typeof(enqueue_many.params) is distinct from 'array' then
        raise exception using errcode = 'AT002',
            message = format('task %s: enqueue_many takes params as a JSON array of objects, got %s',
                enqueue_many.name, coalesce(jsonb_typeof(enqueue_many.params), 'null'));
    end if;
    if pg_column_size(enqueue_many.params) > v_max_bytes then
        raise exception using errcode = 'AT002',
            message = format('task %s: enqueue_many params of %s bytes are over the limit of %s bytes for one call (anchor.settings max_enqueue_many_bytes)',
                enqueue_many.name, pg_column_size(enqueue_many.params), v_max_bytes),
            hint = 'Split the batch into several calls.';
    end if;
    if enqueue_many.unique_tags is not null and cardinality(enqueue_many.unique_tags) <> jsonb_array_length(enqueue_many.params) then
        raise exception using errcode = 'AT003',
            message = format('task %s: %s unique_tags for %s params; give one tag per task', enqueue_many.name,
                cardinality(enqueue_many.unique_tags), jsonb_array_length(enqueue_many.params));
    end if;
    for v_element in select e.value, e.ord - 1 as index
        from jsonb_array_elements(enqueue_many.params) with ordinality as e (value, ord) loop
        v_problem := case when jsonb_typeof(v_element.value) <> 'object'
            then format('$: expected an object, got %s', jsonb_typeof(v_element.value))
            else coalesce(
                anchor.params_size_problem(v_element.value),
                anchor.params_shape_problem(v_element.value),
                anchor.params_violation(v_def.params_schema, v_element.value)
            ) end;
        if v_problem is not null then
            raise exception using errcode = 'AT002', message = format('task %s: params[%s] %s', v_def.name, v_element.index, v_problem);
        end if;
    end loop;
    perform anchor.check_overrides(
        enqueue_many.name, enqueue_many.run_at, enqueue_many.delay, null, enqueue_many.retry_intervals,
        enqueue_many.max_attempts, enqueue_many.timeout, enqueue_many.queue
    );
    perform anchor.check_times(enqueue_many.name, enqueue_many.run_at, null);

    if enqueue_many.unique_tags is not null then
        select array_agg(anchor.enqueue(
            name => enqueue_many.name, params => e.value, run_at => enqueue_many.run_at, delay => enqueue_many.delay,
            unique_tag => enqueue_many.unique_tags[e.ord], retry_intervals => enqueue_many.retry_intervals,
            max_attempts => enqueue_many.max_attempts, timeout => enqueue_many.timeout,
            priority => enqueue_many.priority, queue => enqueue_many.queue, p_now => v_now,
            depends_on => enqueue_many.depends_on, parent_id => enqueue_many.parent_id
        ) order by e.ord) into v_ids
        from jsonb_array_elements(enqueue_many.params) with ordinality as e (value, ord);
        return coalesce(v_ids, '{}');
    end if;

    if enqueue_many.depends_on is not null then
        select * into v_dependency_ids, v_unmet, v_doomed_id, v_doomed_name, v_doomed_state
        from anchor.lock_dependencies(enqueue_many.name, enqueue_many.depends_on);
    end if;
    if enqueue_many.parent_id is not null then
        v_inherited := anchor.lock_parent(enqueue_many.name, enqueue_many.parent_id);
    end if;
    v_state := anchor.initial_state(v_unmet, v_inherited);

    with inserted as (
        insert into anchor.tasks (
            name, params, state, queue, priority, max_attempts, retry_intervals, timeout, run_at, created_at,
            parent_id, unmet_dependencies, start_delay
        )
        select
            enqueue_many.name,
            e.value,
            v_state,
            coalesce(enqueue_many.queue, v_def.queue),
            coalesce(enqueue_many.priority, v_def.priority),
            coalesce(enqueue_many.max_attempts, v_def.max_attempts),
            coalesce(enqueue_many.retry_intervals, v_def.retry_intervals),
            coalesce(enqueue_many.timeout, v_def.timeout),
            coalesce(enqueue_many.run_at, v_now + coalesce(enqueue_many.delay, interval '0')),
            v_now,
            enqueue_many.parent_id,
            v_unmet,
            case when v_unmet > 0 and enqueue_many.run_at is null then coalesce(enqueue_many.delay, interval '0') end
        from jsonb_array_elements(enqueue_many.params) with ordinality as e (value, ord)
        order by e.ord
        returning id
    )
    -- identity values are assigned in insertion order, so sorting the ids restores the input order
    select array_agg(i.id order by i.id) into v_ids from inserted as i;
    v_ids := coalesce(v_ids, '{}');

    if v_dependency_ids is not null then
        insert into anchor.task_dependencies (task_id, depends_on)
        select t.id, d.id from unnest(v_ids) as t (id) cross join unnest(v_dependency_ids) as d (id);
    end if;
    if v_doomed_id is not null then
        perform anchor.cancel_new_tasks(
            v_ids, v_now,
            format('dependency %s (%s) ended %s', v_doomed_id, v_doomed_name, v_doomed_state),
            jsonb_build_object('dependency', v_doomed_id, 'dependency_state', v_doomed_state)
        );
    elsif v_inherited = 'cancelled' then
        perform anchor.cancel_new_tasks(
            v_ids, v_now, format('parent %s was cancelled', enqueue_many.parent_id),
            jsonb_build_object('ancestor', enqueue_many.parent_id)
        );
    end if;
    return v_ids;
end;
$$;

-- Records the caller's trace context with tasks it has just enqueued; returns task_ids unchanged (0011's,
-- with blocked and paused tasks among the new ones). No state transition.
create or replace function anchor.trace_tasks(task_ids bigint[], trace_context jsonb)
returns bigint[]
language plpgsql
as $$
#variable_conflict use_variable
begin
    if trace_context is null then
        return task_ids;
    end if;
    if jsonb_typeof(trace_context) <> 'object'
        or octet_length(trace_context::text) > 4096
        -- every value a string, as a propagator's carrier holds
        or exists (select 1 from jsonb_each(trace_context) as e where jsonb_typeof(e.value) <> 'string') then
        raise exception using errcode = 'AT003',
            message = format('tasks %s: trace_context must be a JSON object of strings of at most 4 kB, got %s',
                             task_ids, left(trace_context::text, 200));
    end if;
    update anchor.tasks as t set trace_context = trace_tasks.trace_context
    where t.id = any(task_ids) and t.trace_context is null and t.state in ('pending', 'blocked', 'paused')
        and t.attempts = 0;
    return task_ids;
end;
$$;

-- Dependencies finishing ------------------------------------------------------------------------------

-- Runs when a task that has dependents reaches a final state, in the transaction that put it there; its
-- clock is that task's finished_at (the finishing call's p_now). Succeeded: each blocked or paused
-- dependent counts down by one; a blocked one reaching zero → pending (run_at: now + its start_delay, or
-- the run_at it was given), with an 'unblocked' event; a paused one stays paused (resume_task decides).
-- Failed, hook_failed or cancelled: every blocked or paused task that depends on it, directly or through
-- others, → cancelled, each with a 'cancelled' event naming the dependency it was reached through.
create function anchor.settle_dependents()
returns trigger
language plpgsql
-- Every step reaches tasks by index, a few probes per task it touches; the planner, without statistics
-- (right after a bulk enqueue) or on a generic plan, would rather hash-join a sequential scan of all tasks
-- on each call: 8 ms per finished dependency at 10,000 tasks instead of 0.1. No sequential scans here.
set enable_seqscan = off
as $$
declare
    v_now timestamptz := coalesce(new.finished_at, now());
begin
    if new.state = 'succeeded' then
        -- Locked first, in id order like every other path that locks dependents, so two transactions
        -- finishing dependencies of the same tasks queue up instead of deadlocking; the UPDATE after it is
        -- a new statement and counts down the rows as the transaction before it left them, so two
        -- dependencies of one task succeeding at once in two transactions count down once each, in turn.
        perform from anchor.tasks x
        where x.id in (select e.task_id from anchor.task_dependencies e where e.depends_on = new.id)
            and x.state in ('blocked', 'paused')
        order by x.id
        for update;
        with counted as (
            update anchor.tasks x set
                unmet_dependencies = x.unmet_dependencies - 1,
                state = case when x.state = 'blocked' and x.unmet_dependencies = 1 then 'pending' else x.state end,
                run_at = case
                    when x.state <> 'blocked' or x.unmet_dependencies <> 1 then x.run_at
                    when x.start_delay is null then greatest(x.run_at, v_now)
                    else v_now + x.start_delay
                end,
                start_delay = case when x.state = 'blocked' and x.unmet_dependencies = 1 then null else x.start_delay end
            from anchor.task_dependencies e
            where e.depends_on = new.id and x.id = e.task_id and x.state in ('blocked', 'paused')
            returning x.id, x.state
        )
        insert into anchor.task_events (task_id, at, kind, details)
        select c.id, v_now, 'unblocked', jsonb_build_object('dependency', new.id)
        from counted as c
        where c.state = 'pending';
        return null;
    end if;

    -- The closure in one statement, however deep or wide: no trigger recursion, no statement per task.
    -- UNION (not UNION ALL) visits each edge once, so diamonds do not multiply the work.
    with recursive doomed (id, dependency) as (
        select e.task_id, e.depends_on
        from anchor.task_dependencies e
        inner join anchor.tasks x on e.task_id = x.id
        where e.depends_on = new.id and x.state in ('blocked', 'paused')
        union
        select e.task_id, e.depends_on
        from doomed as d
        inner join anchor.task_dependencies e on d.id = e.depends_on
        inner join anchor.tasks x on e.task_id = x.id
        where x.state in ('blocked', 'paused')
    ),

    -- one row per task: the dependency it was first reached through (the lowest id, for a stable record)
    reached as (
        select distinct on (d.id)
            d.id,
            d.dependency,
            case when d.dependency = new.id then new.state else 'cancelled' end as dependency_state
        from doomed as d
        order by d.id, d.dependency
    ),

    -- in id order, as above
    locked as (
        select x.id from anchor.tasks x
        where x.id in (select r.id from reached as r) and x.state in ('blocked', 'paused')
        order by x.id
        for update
    ),

    cancelled as (
        update anchor.tasks x set
            state = 'cancelled',
            finished_at = v_now,
            last_error = format('dependency %s (%s) ended %s', r.dependency, dep.name, r.dependency_state)
        from reached as r
        inner join locked as l on r.id = l.id
        inner join anchor.tasks dep on r.dependency = dep.id
        -- re-checked on the current row: one cancelled or released meanwhile is left alone
        where x.id = r.id and x.state in ('blocked', 'paused')
        returning x.id, x.attempts, x.last_error, r.dependency, r.dependency_state
    )

    insert into anchor.task_events (task_id, at, kind, attempt, message, details)
    select
        c.id, v_now, 'cancelled', c.attempts, c.last_error,
        jsonb_build_object('dependency', c.dependency, 'dependency_state', c.dependency_state, 'cause', new.id)
    from cancelled as c;
    -- The cancelled rows that have dependents run this trigger once more each, nested: their blocked
    -- dependents are all cancelled already, so it finds nothing, except a dependent enqueued while this
    -- statement waited for its row lock (invisible to the closure above), which it cancels now.
    return null;
end;
$$;

create trigger tasks_settle_dependents after update of state on anchor.tasks
for each row
when (
    new.has_dependents and old.state is distinct from new.state
    and new.state in ('succeeded', 'failed', 'hook_failed', 'cancelled')
)
execute function anchor.settle_dependents();

-- Pausing ---------------------------------------------------------------------------------------------

-- A running task asked to pause leaves running: → paused instead of → pending (a retry, a hand-back, a
-- heartbeat release, a rescue), with a 'paused' event; to any other state as it was going to. Either way
-- the request is spent.
create function anchor.hold_paused()
returns trigger
language plpgsql
as $$
begin
    if new.state = 'pending' then
        new.state := 'paused';
        insert into anchor.task_events (task_id, at, kind, attempt, details)
        values (new.id, now(), 'paused', new.attempts, jsonb_build_object('from_state', 'running'));
    end if;
    new.pause_requested := false;
    return new;
end;
$$;

-- Named to sort first: BEFORE triggers fire in name order, and the triggers that file pending rows (the
-- ready set of 0013) must see the state this one settles.
create trigger tasks_a_hold_paused before update of state on anchor.tasks
for each row
when (old.pause_requested and old.state = 'running' and new.state is distinct from 'running')
execute function anchor.hold_paused();

-- Trees -----------------------------------------------------------------------------------------------

-- Locks (FOR UPDATE, in id order) every descendant of p_root whose state is one of p_states and returns
-- their ids, ascending. No state transition. The subtree is read again after locking until it no longer
-- changes: a child enqueued under a locked task by a transaction that committed meanwhile is found too.
create function anchor.lock_subtree(p_root bigint, p_states text[])
returns bigint[]
language plpgsql
-- a walk of the subtree by its parent index, never a scan of all tasks (see settle_dependents)
set enable_seqscan = off
as $$
declare
    v_locked bigint[];
    v_previous bigint[];
begin
    loop
        v_locked := array(
            with recursive tree (id) as (
                select c.id from anchor.tasks c where c.parent_id = p_root
                union all
                select c.id from tree inner join anchor.tasks c on tree.id = c.parent_id
            )

            select t.id from anchor.tasks t
            where t.id in (select tree.id from tree) and t.state = any(p_states)
            order by t.id
            for update of t
        );
        exit when v_locked = v_previous;
        v_previous := v_locked;
    end loop;
    return v_locked;
end;
$$;

-- Cancels a task and its subtree in one transaction: pending, blocked or paused → cancelled ('cancelled');
-- running → cancel requested, its worker notified, the attempt ends cancelled ('cancel_requested'). Their
-- dependents are cancelled in turn (the dependency trigger). Returns every task it changed, the root first,
-- then by id; the root again when its cancel was already requested (its worker is notified again). AT005
-- when nothing could be cancelled: the root is failing or finished and no descendant is live.
create function anchor.cancel_tree(id bigint, p_now timestamptz default null)
returns table (task_id bigint, outcome text)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(cancel_tree.p_now);
    v_root anchor.tasks := anchor.lock_task(cancel_tree.id);
    v_ids bigint[] := array[cancel_tree.id]
        || anchor.lock_subtree(cancel_tree.id, array['pending', 'blocked', 'paused', 'running']);
    v_changed bigint;
begin
    return query
    with cancelled as (
        update anchor.tasks t set state = 'cancelled', finished_at = v_now
        where t.id = any(v_ids) and t.state in ('pending', 'blocked', 'paused')
        returning t.id, t.attempts
    ),

    requested as (
        update anchor.tasks t set cancel_requested = true
        where t.id = any(v_ids) and t.state = 'running' and not t.cancel_requested
        returning t.id, t.attempts, t.locked_by
    ),

    changed as (
        select c.id, 'cancelled' as outcome, c.attempts, null as worker_id from cancelled as c
        union all
        select r.id, 'cancel_requested', r.attempts, r.locked_by from requested as r
    ),

    recorded as (
        insert into anchor.task_events (task_id, at, kind, attempt, worker_id, details)
        select c.id, v_now, c.outcome, c.attempts, c.worker_id,
            case when c.id <> cancel_tree.id then jsonb_build_object('ancestor', cancel_tree.id) end
        from changed as c
    )

    select c.id, c.outcome from (
        select c.id, c.outcome from changed as c
        -- the root's cancel was already requested: reported (and its worker notified) again, as cancel did
        union all
        select cancel_tree.id, 'cancel_requested'
        where v_root.state = 'running' and v_root.cancel_requested
    ) as c
    order by c.id <> cancel_tree.id, c.id;
    get diagnostics v_changed = row_count;

    perform pg_notify('anchor_cancel', t.id::text)
    from anchor.tasks t
    where t.id = any(v_ids) and t.state = 'running' and t.cancel_requested;

    if v_changed = 0 then
        raise exception using errcode = 'AT005',
            message = format('task %s is %s; only pending or running tasks (or blocked or paused ones, or tasks with live descendants) can be cancelled',
                cancel_tree.id, v_root.state);
    end if;
end;
$$;

-- Cancels a task and its subtree (as cancel_tree) and returns the root's outcome: 'cancelled',
-- 'cancel_requested', or 'unchanged' when the root is failing or finished and only descendants changed.
-- AT005 when nothing could be cancelled.
create or replace function anchor.cancel(id bigint, p_now timestamptz default null)
returns text
language sql
as $$
    select coalesce(
        min(c.outcome) filter (where c.task_id = cancel.id),
        min('unchanged') filter (where c.task_id is not null)
    )
    from anchor.cancel_tree(cancel.id, cancel.p_now) as c
$$;

-- Pauses a task and its subtree in one transaction: pending or blocked → paused ('paused'); running → pause
-- requested ('pause_requested': the attempt runs on; should it retry, it waits paused). Paused, failing
-- and finished tasks are left as they are. Returns every task it changed, the root first, then by id.
-- AT005 when the root is failing or finished and no descendant could be paused.
create function anchor.pause_task(id bigint, p_now timestamptz default null)
returns table (task_id bigint, outcome text)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(pause_task.p_now);
    v_root anchor.tasks := anchor.lock_task(pause_task.id);
    v_ids bigint[] := array[pause_task.id]
        || anchor.lock_subtree(pause_task.id, array['pending', 'blocked', 'running']);
    v_changed bigint;
begin
    return query
    with paused as (
        update anchor.tasks t set state = 'paused'
        from anchor.tasks as before_pause
        where t.id = any(v_ids) and t.state in ('pending', 'blocked') and before_pause.id = t.id
        returning t.id, t.attempts, before_pause.state as from_state
    ),

    requested as (
        update anchor.tasks t set pause_requested = true
        where t.id = any(v_ids) and t.state = 'running' and not t.pause_requested
        returning t.id, t.attempts, t.locked_by
    ),

    changed as (
        select p.id, 'paused' as outcome, p.attempts, null as worker_id, jsonb_build_object('from_state', p.from_state) as details
        from paused as p
        union all
        select r.id, 'pause_requested', r.attempts, r.locked_by, '{}'::jsonb from requested as r
    ),

    recorded as (
        insert into anchor.task_events (task_id, at, kind, attempt, worker_id, details)
        select c.id, v_now, c.outcome, c.attempts, c.worker_id,
            nullif(c.details || case when c.id <> pause_task.id then jsonb_build_object('ancestor', pause_task.id) else '{}' end, '{}')
        from changed as c
    )

    select c.id, c.outcome from changed as c
    order by c.id <> pause_task.id, c.id;
    get diagnostics v_changed = row_count;

    if v_changed = 0 and v_root.state not in ('pending', 'blocked', 'paused', 'running') then
        raise exception using errcode = 'AT005',
            message = format('task %s is %s; only pending, blocked or running tasks (or tasks with live descendants) can be paused',
                pause_task.id, v_root.state);
    end if;
end;
$$;

-- Resumes a paused task and its subtree in one transaction: paused → blocked while some dependency has not
-- succeeded ('blocked'), else → pending ('pending'; a task whose dependencies were met while it was paused
-- starts its delay now); running with a pause requested → the request withdrawn ('running'). Returns
-- every task it changed, the root first, then by id. AT005 when nothing in the subtree was paused.
create function anchor.resume_task(id bigint, p_now timestamptz default null)
returns table (task_id bigint, outcome text)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(resume_task.p_now);
    v_root anchor.tasks := anchor.lock_task(resume_task.id);
    v_ids bigint[] := array[resume_task.id] || anchor.lock_subtree(resume_task.id, array['paused', 'running']);
    v_changed bigint;
begin
    return query
    with resumed as (
        update anchor.tasks t set
            state = case when t.unmet_dependencies > 0 then 'blocked' else 'pending' end,
            run_at = case
                when t.unmet_dependencies = 0 and t.start_delay is not null then v_now + t.start_delay else t.run_at
            end,
            start_delay = case when t.unmet_dependencies = 0 then null else t.start_delay end
        where t.id = any(v_ids) and t.state = 'paused'
        returning t.id, t.state, t.attempts
    ),

    withdrawn as (
        update anchor.tasks t set pause_requested = false
        where t.id = any(v_ids) and t.state = 'running' and t.pause_requested
        returning t.id, t.attempts, t.locked_by
    ),

    changed as (
        select r.id, r.state as outcome, r.attempts, null as worker_id from resumed as r
        union all
        select w.id, 'running', w.attempts, w.locked_by from withdrawn as w
    ),

    recorded as (
        insert into anchor.task_events (task_id, at, kind, attempt, worker_id, details)
        select c.id, v_now, 'resumed', c.attempts, c.worker_id,
            jsonb_build_object('to_state', c.outcome)
            || case when c.id <> resume_task.id then jsonb_build_object('ancestor', resume_task.id) else '{}' end
        from changed as c
    )

    select c.id, c.outcome from changed as c
    order by c.id <> resume_task.id, c.id;
    get diagnostics v_changed = row_count;

    if v_changed = 0 then
        raise exception using errcode = 'AT005',
            message = format('task %s is %s and nothing under it is paused; only paused tasks (or running ones asked to pause) can be resumed',
                resume_task.id, v_root.state);
    end if;
end;
$$;

-- Operator actions ------------------------------------------------------------------------------------

-- Runs a task again now: pending → due now; failed | hook_failed | cancelled → pending with a fresh attempt
-- budget (history stays in task_events), or → blocked while some of its dependencies have not succeeded
-- yet. Other states raise AT005, and so does a dependency that ended failed, hook_failed or cancelled
-- (retry that one first); a unique tag now held by another live task raises AT006.
create or replace function anchor.retry_now(id bigint, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(retry_now.p_now);
    v_task anchor.tasks := anchor.lock_task(retry_now.id);
    v_holder bigint;
    v_dependency_ids bigint[];
    v_unmet integer := 0;
    v_doomed_id bigint;
    v_doomed_name text;
    v_doomed_state text;
    v_state text;
begin
    if v_task.state = 'pending' then
        update anchor.tasks t set run_at = v_now where t.id = retry_now.id;
        return 'pending';
    end if;
    if v_task.state not in ('failed', 'hook_failed', 'cancelled') then
        raise exception using errcode = 'AT005',
            message = format('task %s is %s; only pending, failed, hook_failed or cancelled tasks can be retried', retry_now.id, v_task.state);
    end if;
    select t.id into v_holder from anchor.tasks t
    where t.unique_tag = v_task.unique_tag and t.state in ('pending', 'running', 'failing', 'blocked', 'paused');
    if v_holder is not null then
        raise exception using errcode = 'AT006',
            message = format('task %s: unique tag %L is held by live task %s', retry_now.id, v_task.unique_tag, v_holder);
    end if;
    -- a task without dependencies has no edge: one probe of the primary key
    if exists (select from anchor.task_dependencies e where e.task_id = retry_now.id) then
        select * into v_dependency_ids, v_unmet, v_doomed_id, v_doomed_name, v_doomed_state
        from anchor.lock_dependencies(
            format('%s (%s)', retry_now.id, v_task.name),
            array(select e.depends_on from anchor.task_dependencies e where e.task_id = retry_now.id)
        );
        if v_doomed_id is not null then
            raise exception using errcode = 'AT005',
                message = format('task %s: its dependency %s (%s) ended %s; retry that one first',
                    retry_now.id, v_doomed_id, v_doomed_name, v_doomed_state);
        end if;
    end if;
    v_state := case when v_unmet > 0 then 'blocked' else 'pending' end;
    begin
        update anchor.tasks t set
            state = v_state, attempts = 0, hook_attempts = 0, rescues = 0, cancel_requested = false,
            pause_requested = false, run_at = v_now, locked_by = null, deadline = null, finished_at = null,
            unmet_dependencies = v_unmet,
            start_delay = case when v_state = 'blocked' then interval '0' end
        where t.id = retry_now.id;
    exception when unique_violation then
        -- a task that committed after the check above holds the tag now
        raise exception using errcode = 'AT006',
            message = format('task %s: unique tag %L was just taken by another live task', retry_now.id, v_task.unique_tag);
    end;
    insert into anchor.task_events (task_id, at, kind, details)
    values (retry_now.id, v_now, 'retried', jsonb_build_object('from_state', v_task.state, 'to_state', v_state));
    return v_state;
end;
$$;

-- Runs a failed hook again: hook_failed → failing with a fresh hook budget, claimable now. AT006 as
-- retry_now when the task's unique tag is held by another live task (blocked and paused ones included).
create or replace function anchor.retry_hook(id bigint, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(retry_hook.p_now);
    v_task anchor.tasks := anchor.lock_task(retry_hook.id);
    v_holder bigint;
begin
    if v_task.state <> 'hook_failed' then
        raise exception using errcode = 'AT005',
            message = format('task %s is %s; only hook_failed tasks can retry their hook', retry_hook.id, v_task.state);
    end if;
    select t.id into v_holder from anchor.tasks t
    where t.unique_tag = v_task.unique_tag and t.state in ('pending', 'running', 'failing', 'blocked', 'paused');
    if v_holder is not null then
        raise exception using errcode = 'AT006',
            message = format('task %s: unique tag %L is held by live task %s', retry_hook.id, v_task.unique_tag, v_holder);
    end if;
    begin
        update anchor.tasks t set
            state = 'failing', hook_attempts = 0, run_at = v_now, locked_by = null, deadline = null, finished_at = null
        where t.id = retry_hook.id;
    exception when unique_violation then
        raise exception using errcode = 'AT006',
            message = format('task %s: unique tag %L was just taken by another live task', retry_hook.id, v_task.unique_tag);
    end;
    insert into anchor.task_events (task_id, at, kind) values (retry_hook.id, v_now, 'hook_retried');
    return 'failing';
end;
$$;

-- Reading --------------------------------------------------------------------------------------------

-- The dependencies of a task with their stored results, for the worker's fan-in (ctx.dependencies): a JSON
-- array of {"task_id", "task_name", "result"} in ascending task id order, or null when the task has none
-- (one probe of the primary key). Reads only.
create function anchor.dependency_results(task_id bigint)
returns jsonb
language sql
stable
as $$
    select jsonb_agg(
        jsonb_build_object('task_id', d.id, 'task_name', d.name, 'result', d.result) order by d.id
    )
    from anchor.task_dependencies e
    inner join anchor.tasks d on e.depends_on = d.id
    where e.task_id = dependency_results.task_id
$$;

-- dependency_results for a batch of tasks, one call per claim: a row (task_id, its dependencies' JSON array)
-- for each given task that has dependencies, none for the others. The worker's claim reads it; a batch
-- without dependencies costs one probe of the primary key per id and no function call per task (calling
-- dependency_results per claimed task made a claim of 100 over 60% slower). Reads only.
create function anchor.dependency_results_of(task_ids bigint[])
returns table (task_id bigint, dependencies jsonb)
language plpgsql
stable
-- PL/pgSQL keeps the plan for the session; a SQL function not inlined (SECURITY DEFINER) plans on every call
as $$
#variable_conflict use_column
begin
    return query
    select e.task_id, jsonb_agg(
        jsonb_build_object('task_id', d.id, 'task_name', d.name, 'result', d.result) order by d.id
    )
    from anchor.task_dependencies e
    inner join anchor.tasks d on e.depends_on = d.id
    where e.task_id = any(dependency_results_of.task_ids)
    group by e.task_id;
end;
$$;

-- A task's neighbours for the operator (CLI, dashboard): its parent, children, dependencies and dependents,
-- at most max_each (1 .. 10000) of each relation in id order, each row with the relation's total count.
-- Reads only. AT004 for an unknown id, AT003 for max_each out of range.
create function anchor.task_tree(id bigint, max_each integer default 100)
returns table (
    relation text, task_id bigint, name text, state text, created_at timestamptz, finished_at timestamptz, total bigint
)
language plpgsql
stable
as $$
#variable_conflict use_column
declare
    v_parent_id bigint;
begin
    if task_tree.max_each is null or task_tree.max_each not between 1 and 10000 then
        raise exception using errcode = 'AT003',
            message = format('task_tree: task %s: max_each must be from 1 to 10000, got %s', task_tree.id, task_tree.max_each);
    end if;
    if task_tree.id is null then
        raise exception using errcode = 'AT003', message = 'task_tree: task id must not be null';
    end if;
    select t.parent_id into v_parent_id from anchor.tasks t where t.id = task_tree.id;
    if not found then
        raise exception using errcode = 'AT004', message = format('task %s does not exist', task_tree.id);
    end if;
    return query
    select 'parent'::text, p.id, p.name, p.state, p.created_at, p.finished_at, 1::bigint
    from anchor.tasks p where p.id = v_parent_id;
    return query
    select 'child'::text, c.id, c.name, c.state, c.created_at, c.finished_at, count(*) over ()
    from anchor.tasks c where c.parent_id = task_tree.id
    order by c.id
    limit task_tree.max_each;
    return query
    select 'dependency'::text, d.id, d.name, d.state, d.created_at, d.finished_at, count(*) over ()
    from anchor.task_dependencies e
    inner join anchor.tasks d on e.depends_on = d.id
    where e.task_id = task_tree.id
    order by d.id
    limit task_tree.max_each;
    return query
    select 'dependent'::text, d.id, d.name, d.state, d.created_at, d.finished_at, count(*) over ()
    from anchor.task_dependencies e
    inner join anchor.tasks d on e.task_id = d.id
    where e.depends_on = task_tree.id
    order by d.id
    limit task_tree.max_each;
end;
$$;

-- Retention ------------------------------------------------------------------------------------------

-- Deletes up to batch_size finished tasks (succeeded older than succeeded_after; failed, hook_failed and
-- cancelled older than failed_after, by finished_at) and returns how many it deleted (0010's). A succeeded
-- task is kept while a task that depends on it is still live: that task will read its result. For a
-- non-admin caller both periods are at least worker_min_retention: a worker cannot purge recent history.
create or replace function anchor.prune(
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
    v_now timestamptz := anchor.clock(prune.p_now);
    v_succeeded_after interval := anchor.at_least_unless_admin(prune.succeeded_after, anchor.interval_setting('worker_min_retention'));
    v_failed_after interval := anchor.at_least_unless_admin(prune.failed_after, anchor.interval_setting('worker_min_retention'));
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
                where t.state = 'succeeded' and t.finished_at < v_now - v_succeeded_after
                    -- a live dependent still needs its result (has_dependents: only those look further)
                    and not (t.has_dependents and exists (
                        select from anchor.task_dependencies e
                        inner join anchor.tasks x on e.task_id = x.id
                        where e.depends_on = t.id and x.state in ('pending', 'running', 'failing', 'blocked', 'paused')
                    ))
                order by t.finished_at
                limit prune.batch_size)
            union all
            (select t.id, t.finished_at from anchor.tasks t
                where t.state in ('failed', 'hook_failed', 'cancelled') and t.finished_at < v_now - v_failed_after
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
                (t.state = 'succeeded' and t.finished_at < v_now - v_succeeded_after)
                or (t.state in ('failed', 'hook_failed', 'cancelled') and t.finished_at < v_now - v_failed_after)
            )
        for update skip locked
    )
    delete from anchor.tasks t using locked
    where t.id = locked.id;
    get diagnostics v_deleted = row_count;
    perform anchor.flow_forget(v_now, prune.batch_size);
    return v_deleted;
end;
$$;

insert into anchor.function_roles (function_name, role_name) values
('dependency_results', 'anchor_worker'),
('dependency_results_of', 'anchor_worker'),
('cancel_tree', 'anchor_admin'),
('pause_task', 'anchor_admin'),
('resume_task', 'anchor_admin'),
('task_tree', 'anchor_admin');

-- create or replace dropped the SECURITY DEFINER and search_path of the functions replaced above, and the
-- dropped enqueue and enqueue_many took their grants with them
select anchor.apply_privileges();
