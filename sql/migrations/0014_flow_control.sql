-- 0014_flow_control: concurrency limits, fair keyed groups, rate limits, paused queues, snooze and retry jitter,
-- enforced in the SQL core so they hold for every worker, every process and every enqueue path.
--
-- Why: a worker's `concurrency` bounds one process only. Protecting an external API or a tenant's share meant
-- running and sizing dedicated workers by hand. Now a task declares `concurrency {limit, key}` and
-- `rate_limit {limit, period, key}`, a queue declares `concurrency` and `rate_limit`, and the claim obeys them.
--
-- How it fits the claim's ready set (0013). A task is "limited" when its definition or its queue has a limit;
-- it then carries flow_key, its group: the JSON text of its key parameter's value, or '' when the task has no
-- key. Pending limited tasks that are due wait with waiting_for = 'limit' (never in the ready index) in
-- tasks_limit_idx, by (queue, name, flow_key, priority, run_at, id). An insert trigger sets both, and is skipped
-- by its WHEN clause while no limit exists at all; any later move to pending (retry, hand-back, snooze, rescue,
-- retry_now, a workflow's release) goes through set_waiting_for, which holds a task that has a flow_key. Tasks
-- that use no limit keep flow_key null: the triggers' WHEN clauses keep every flow function away from them, and
-- the claim runs no extra statement for them (its pairs query tells limited pairs apart in the same statement).
--
-- The claim starts limited tasks itself, under locks on the scope rows of the limits involved (anchor.flow_scopes:
-- one per limited queue and per limited task name), taken in one order by every claimer, so two claimers never
-- decide on the same limit at once and never deadlock. Under the lock it counts what runs (the running limited
-- tasks of the queue, the name or the group: small partial indexes, at most `limit` entries each) and the rate
-- tokens left (a ring of the last `limit` start times per rate scope, anchor.flow_starts: a start is allowed when
-- the start `limit` places back is at least `period` old, so no window of `period` ever holds more than `limit`
-- starts), and starts at most that many. Nothing is counted down on completion: a finished task simply stops
-- being counted, so complete, fail, hand-back, snooze, rescue and cancel need no change and no lock; a trigger on
-- limited tasks leaving `running` only sends NOTIFY anchor_tasks (payload: the queue) so claimers come at once.
--
-- Keyed groups are served round robin from a cursor kept on the name's scope row: one probe per group finds
-- the next group with held tasks, a group at its limit costs that probe and a count of its running tasks, never
-- a read of its backlog, and one key's backlog never delays another key. The claim's cost grows with the number
-- of groups it looks at, not with the tasks they hold.
--
-- Paused queues (anchor.queue_settings.paused) are left out of the claim's (queue, name) pairs before any task
-- index is read; their failing tasks' hooks still run. Snooze gives the attempt back. Jitter spreads retries:
-- fail_v2 and rescue take their retry wait from anchor.retry_wait. prune also forgets stale keyed rate rings.

-- Queue settings: limits come from registration, the pause from operators (registration never touches it).
create table anchor.queue_settings (
    name text primary key,
    concurrency integer check (concurrency between 1 and 1000000),
    rate_limit integer check (rate_limit between 1 and 1000000),
    rate_period interval check (rate_period between interval '1 second' and interval '100000 hours'),
    paused boolean not null default false,
    paused_at timestamptz,
    updated_at timestamptz not null,
    constraint queue_settings_rate_check check ((rate_limit is null) = (rate_period is null))
);

comment on table anchor.queue_settings is
'Per-queue limits (set by anchor.register_tasks_v2) and the operator''s pause (anchor.pause_queue / resume_queue).';

-- The rows claimers lock to decide on a limit, and the state of its rate ring.
--   kind 'queue': owner = the queue; 'task': owner = the task name (its unkeyed limits, and the lock and
--   round-robin cursor of its keyed groups); 'key': owner = the task name, key = the group (keyed rate rings).
create table anchor.flow_scopes (
    id bigint generated always as identity primary key,
    kind text not null check (kind in ('queue', 'task', 'key')),
    owner text not null,
    key text not null default '',
    -- rate ring: starts recorded so far, and the ring's size (the rate limit it was built for)
    pos bigint not null default 0,
    ring_size integer,
    -- where the next claim's round starts: for a 'task' scope the keyed group served last, for a 'queue'
    -- scope the task name served last
    cursor text,
    constraint flow_scopes_scope_key unique (kind, owner, key)
);

-- The last ring_size start times of a rate scope: slot pos % ring_size holds the oldest of them.
create table anchor.flow_starts (
    scope_id bigint not null references anchor.flow_scopes (id) on delete cascade,
    slot integer not null,
    at timestamptz not null,
    primary key (scope_id, slot)
);

alter table anchor.task_definitions
add column concurrency_limit integer,
add column concurrency_key text,
add column rate_limit integer,
add column rate_period interval,
add column rate_key text,
add column retry_jitter double precision not null default 0;

alter table anchor.task_registry add column queues jsonb;

-- null: the task uses no limit; otherwise its group within its name ('' when the name has no key)
alter table anchor.tasks add column flow_key text;

alter table anchor.tasks drop constraint tasks_waiting_for_check;
alter table anchor.tasks add constraint tasks_waiting_for_check check (waiting_for in ('time', 'limit'));

-- Held tasks of each group in the order the group starts them; the claim probes it once per group.
create index tasks_limit_idx on anchor.tasks (queue, name, flow_key, priority, run_at, id)
where state = 'pending' and waiting_for = 'limit';

-- What runs, per name and group and per queue: the counts a limit is checked against (limited tasks only).
-- Each predicate carries a term only its own counts state (names and queues are never empty, so `> ''` holds
-- for every row): with the same predicate, a generic plan may count a group by reading the whole queue index.
create index tasks_flow_running_idx on anchor.tasks (name, flow_key)
where state = 'running' and flow_key is not null and name > '';
create index tasks_flow_queue_running_idx on anchor.tasks (queue)
where state = 'running' and flow_key is not null and queue > '';

-- A task's group from its params: the JSON text of the key parameter's value (so 1 and "1" differ, and a missing
-- value is 'null'), hashed when long so it stays a small index entry; '' for a task without a key.
create function anchor.flow_group(p_params jsonb, p_key text)
returns text
language sql
immutable
as $$
    select case
        when p_key is null then ''
        when octet_length(coalesce(p_params -> p_key, 'null')::text) > 200
            then 'md5:' || md5(coalesce(p_params -> p_key, 'null')::text)
        else coalesce(p_params -> p_key, 'null')::text
    end
$$;

-- A task's flow_key under the current settings: null when neither its definition nor its queue has a limit.
create function anchor.flow_key_of(p_name text, p_queue text, p_params jsonb)
returns text
language sql
stable
as $$
    select case
        when d.concurrency_limit is not null or d.rate_limit is not null or s.concurrency is not null or s.rate_limit is not null
            then anchor.flow_group(p_params, coalesce(d.concurrency_key, d.rate_key))
    end
    from (select 1) as one
    left join anchor.task_definitions as d on d.name = p_name
    left join anchor.queue_settings as s on s.name = p_queue
$$;

-- The problem with one limit object of a definition or queue (`label` is its path), or null.
-- p_params: the definition's parameters schema when a key is allowed, null when not (queues).
create function anchor.limit_problem(p_label text, p_value jsonb, p_with_period boolean, p_key_allowed boolean, p_params jsonb)
returns text
language plpgsql
immutable
as $$
declare
    v_key text;
    v_number numeric;
    v_type jsonb;
begin
    if jsonb_typeof(p_value) is distinct from 'object' then
        return format('%s: %s must be an object', p_label, coalesce(p_value::text, 'null'));
    end if;
    select k into v_key from jsonb_object_keys(p_value) as k
    where k not in ('limit', 'period', 'key')
        or (k = 'period' and not p_with_period) or (k = 'key' and not p_key_allowed)
    limit 1;
    if v_key is not null then
        return format('%s.%s: unknown key', p_label, v_key);
    end if;
    if jsonb_typeof(p_value -> 'limit') is distinct from 'number' then
        return format('%s.limit: %s must be a whole number from 1 to 1000000', p_label, coalesce((p_value -> 'limit')::text, 'missing'));
    end if;
    v_number := (p_value ->> 'limit')::numeric;
    if scale(v_number) > 0 or v_number not between 1 and 1000000 then
        return format('%s.limit: %s must be a whole number from 1 to 1000000', p_label, p_value -> 'limit');
    end if;
    if p_with_period then
        if jsonb_typeof(p_value -> 'period') is distinct from 'string'
            or anchor.try_parse_duration(p_value ->> 'period') is null
            or anchor.try_parse_duration(p_value ->> 'period') < interval '1 second' then
            return format('%s.period: %s must be a duration from 1s to 100000h', p_label, coalesce((p_value -> 'period')::text, 'missing'));
        end if;
    end if;
    if p_value ? 'key' then
        if jsonb_typeof(p_value -> 'key') is distinct from 'string' or btrim(p_value ->> 'key') = ''
            or octet_length(p_value ->> 'key') > 255 then
            return format('%s.key: %s must be the name of a top-level parameter', p_label, left((p_value -> 'key')::text, 60));
        end if;
        if not coalesce(p_params -> 'properties' ? (p_value ->> 'key'), false) then
            return format('%s.key: %s is not a top-level parameter of the task', p_label, p_value -> 'key');
        end if;
        v_type := p_params -> 'properties' -> (p_value ->> 'key') -> 'type';
        -- a group is one value: a key parameter is a string, number, integer or boolean (or one of those or null)
        if v_type is not null and exists (
            select 1 from jsonb_array_elements(case jsonb_typeof(v_type) when 'array' then v_type else jsonb_build_array(v_type) end) as t
            where t not in ('"string"', '"integer"', '"number"', '"boolean"', '"null"')
        ) then
            return format('%s.key: parameter %s has type %s; a key must be a string, number, integer or boolean', p_label, p_value -> 'key', v_type);
        end if;
    end if;
    return null;
end;
$$;

-- The problem with a definition's flow-control keys (concurrency, rate_limit, retry_jitter), or null.
create function anchor.flow_definition_problem(p_def jsonb)
returns text
language plpgsql
immutable
as $$
declare
    v_problem text;
    v_params jsonb := coalesce(p_def -> 'parameters', '{"type": "object"}');
begin
    if coalesce(jsonb_typeof(p_def -> 'concurrency'), 'null') <> 'null' then
        v_problem := anchor.limit_problem('concurrency', p_def -> 'concurrency', false, true, v_params);
        if v_problem is not null then
            return v_problem;
        end if;
    end if;
    if coalesce(jsonb_typeof(p_def -> 'rate_limit'), 'null') <> 'null' then
        v_problem := anchor.limit_problem('rate_limit', p_def -> 'rate_limit', true, true, v_params);
        if v_problem is not null then
            return v_problem;
        end if;
    end if;
    -- one group per task: when both limits are keyed they name the same parameter
    if p_def -> 'concurrency' ? 'key' and p_def -> 'rate_limit' ? 'key'
        and p_def -> 'concurrency' -> 'key' <> p_def -> 'rate_limit' -> 'key' then
        return format('rate_limit.key: %s must be the same parameter as concurrency.key (%s): a task has one group key',
            p_def -> 'rate_limit' -> 'key', p_def -> 'concurrency' -> 'key');
    end if;
    if coalesce(jsonb_typeof(p_def -> 'retry_jitter'), 'null') <> 'null'
        and (jsonb_typeof(p_def -> 'retry_jitter') <> 'number' or (p_def ->> 'retry_jitter')::numeric not between 0 and 1) then
        return format('retry_jitter: %s must be a number from 0 to 1', p_def -> 'retry_jitter');
    end if;
    return null;
end;
$$;

-- As 0010's, with the flow-control keys (concurrency, rate_limit, retry_jitter) known and checked.
create or replace function anchor.definition_problem(p_def jsonb)
returns text
language plpgsql
immutable
as $$
declare
    v_key text;
    v_problem text;
    v_number numeric;
begin
    select k into v_key from jsonb_object_keys(p_def) as k
    where k not in (
        'name', 'description', 'parameters', 'retry_interval', 'max_attempts', 'timeout', 'queue', 'priority',
        'on_failed', 'cron', 'concurrency', 'rate_limit', 'retry_jitter'
    )
    limit 1;
    if v_key is not null then
        return format('%s: unknown key', v_key);
    end if;
    v_problem := anchor.schema_problem(coalesce(p_def -> 'parameters', '{"type": "object"}'), 'parameters');
    if v_problem is not null then
        return v_problem;
    end if;
    if coalesce(jsonb_typeof(p_def -> 'retry_interval'), 'null') <> 'null'
        and anchor.try_parse_intervals(p_def ->> 'retry_interval') is null then
        return format('retry_interval: %s is not a duration or a comma-separated list of durations', p_def -> 'retry_interval');
    end if;
    if p_def ? 'timeout' and anchor.try_parse_duration(p_def ->> 'timeout') is null then
        return format('timeout: %s is not a duration', p_def -> 'timeout');
    end if;
    if p_def ? 'max_attempts' then
        if jsonb_typeof(p_def -> 'max_attempts') <> 'number' then
            return format('max_attempts: %s must be -1 (unlimited) or a whole number >= 1', p_def -> 'max_attempts');
        end if;
        v_number := (p_def ->> 'max_attempts')::numeric;
        if scale(v_number) > 0 or (v_number <> -1 and v_number < 1) or v_number > 2147483647 then
            return format('max_attempts: %s must be -1 (unlimited) or a whole number >= 1', p_def -> 'max_attempts');
        end if;
    end if;
    if p_def ? 'priority' then
        if jsonb_typeof(p_def -> 'priority') <> 'number' then
            return format('priority: %s must be a whole number', p_def -> 'priority');
        end if;
        v_number := (p_def ->> 'priority')::numeric;
        if scale(v_number) > 0 or v_number not between -2147483648 and 2147483647 then
            return format('priority: %s must be a whole number', p_def -> 'priority');
        end if;
    end if;
    if p_def ? 'queue' and (jsonb_typeof(p_def -> 'queue') <> 'string' or btrim(p_def ->> 'queue') = '') then
        return format('queue: %s must be a non-empty string', p_def -> 'queue');
    end if;
    if p_def ? 'on_failed' and jsonb_typeof(p_def -> 'on_failed') <> 'boolean' then
        return format('on_failed: %s must be true or false', p_def -> 'on_failed');
    end if;
    if coalesce(jsonb_typeof(p_def -> 'cron'), 'null') not in ('object', 'null') then
        return format('cron: %s must be an object or null', p_def -> 'cron');
    end if;
    return anchor.flow_definition_problem(p_def);
end;
$$;

-- The problem with one entry of register_tasks_v2's queues, or null.
create function anchor.queue_definition_problem(p_queue jsonb)
returns text
language plpgsql
immutable
as $$
declare
    v_key text;
    v_number numeric;
begin
    select k into v_key from jsonb_object_keys(p_queue) as k where k not in ('name', 'concurrency', 'rate_limit') limit 1;
    if v_key is not null then
        return format('%s: unknown key', v_key);
    end if;
    if octet_length(p_queue ->> 'name') > 255 then
        return format('name: %s... of %s bytes is over the limit of 255 bytes', left(p_queue ->> 'name', 40), octet_length(p_queue ->> 'name'));
    end if;
    if coalesce(jsonb_typeof(p_queue -> 'concurrency'), 'null') <> 'null' then
        if jsonb_typeof(p_queue -> 'concurrency') <> 'number' then
            return format('concurrency: %s must be a whole number from 1 to 1000000', p_queue -> 'concurrency');
        end if;
        v_number := (p_queue ->> 'concurrency')::numeric;
        if scale(v_number) > 0 or v_number not between 1 and 1000000 then
            return format('concurrency: %s must be a whole number from 1 to 1000000', p_queue -> 'concurrency');
        end if;
    end if;
    if coalesce(jsonb_typeof(p_queue -> 'rate_limit'), 'null') <> 'null' then
        return anchor.limit_problem('rate_limit', p_queue -> 'rate_limit', true, false, null);
    end if;
    return null;
end;
$$;

-- Recomputes flow_key (and 'limit' holding) of the unfinished tasks of the given names and queues after their
-- limits changed: tasks that gained a limit are held, tasks that lost every limit go back to the ready set. No
-- state changes. Reads the whole table (a registration that changes limits is rare; one that changes none skips
-- this).
create function anchor.flow_reflow(p_names text[], p_queues text[])
returns void
language plpgsql
as $$
begin
    update anchor.tasks t set
        flow_key = f.flow_key,
        -- only the ready/held distinction changes: a task waiting for its time keeps waiting for it
        waiting_for = case
            when t.state = 'pending' and (t.waiting_for is null or t.waiting_for = 'limit')
                then case when f.flow_key is not null then 'limit' end
            else t.waiting_for
        end
    from (
        select x.id, anchor.flow_key_of(x.name, x.queue, x.params) as flow_key
        from anchor.tasks as x
        -- every task not finished: whatever state a task waits in, it becomes pending with the right group
        where x.state not in ('succeeded', 'failed', 'hook_failed', 'cancelled')
            and (x.name = any(p_names) or x.queue = any(p_queues))
    ) as f
    where t.id = f.id and t.flow_key is distinct from f.flow_key;
end;
$$;

-- Stores the task definitions and, unless queues is null, the queue limits (queues not listed lose theirs; the
-- pause is never touched). As register_tasks (0010) otherwise: 'applied', 'unchanged' or 'ignored_older'. When
-- limits change, the live tasks of the names and queues concerned are re-grouped (anchor.flow_reflow).
create function anchor.register_tasks_v2(
    definitions jsonb, queues jsonb default '[]', version bigint default 0, p_now timestamptz default null
)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(register_tasks_v2.p_now);
    v_registry anchor.task_registry;
    v_def record;
    v_where text;
    v_key text;
    v_problem text;
    v_queues jsonb;
    v_before jsonb;
    v_after jsonb;
    v_names text[];
    v_changed_queues text[];
begin
    if jsonb_typeof(register_tasks_v2.definitions) is distinct from 'array' then
        raise exception using errcode = 'AT003', message = 'register_tasks: definitions must be a JSON array of task definitions';
    end if;
    if register_tasks_v2.queues is not null and jsonb_typeof(register_tasks_v2.queues) <> 'array' then
        raise exception using errcode = 'AT003',
            message = format('register_tasks: queues must be a JSON array of queue settings, got %s', left(register_tasks_v2.queues::text, 60));
    end if;
    if register_tasks_v2.version is null or register_tasks_v2.version not between 0 and 999999999999 then
        raise exception using errcode = 'AT003',
            message = format('register_tasks: version %s must be a whole number from 0 to 999999999999', coalesce(register_tasks_v2.version::text, 'null')),
            hint = 'A counter, a date like 20261202 or a Unix time all fit.';
    end if;

    for v_def in select e.value as d, e.ord - 1 as index
        from jsonb_array_elements(register_tasks_v2.definitions) with ordinality as e (value, ord) loop
        v_where := format('definitions[%s]', v_def.index);
        if jsonb_typeof(v_def.d) <> 'object' or jsonb_typeof(v_def.d -> 'name') is distinct from 'string'
            or btrim(v_def.d ->> 'name') = '' then
            raise exception using errcode = 'AT003', message = format('register_tasks: %s must be an object with a non-empty "name"', v_where);
        end if;
        v_problem := coalesce(anchor.definition_bounds_problem(v_def.d), anchor.definition_problem(v_def.d));
        if v_problem is not null then
            raise exception using errcode = 'AT003',
                message = format('register_tasks: %s (%s).%s', v_where, left(v_def.d ->> 'name', 255), v_problem);
        end if;
    end loop;

    select d ->> 'name' into v_key from jsonb_array_elements(register_tasks_v2.definitions) as d
    group by d ->> 'name' having count(*) > 1 limit 1;
    if v_key is not null then
        raise exception using errcode = 'AT003', message = format('register_tasks: task %L is defined more than once', v_key);
    end if;

    for v_def in select e.value as d, e.ord - 1 as index
        from jsonb_array_elements(coalesce(register_tasks_v2.queues, '[]')) with ordinality as e (value, ord) loop
        v_where := format('queues[%s]', v_def.index);
        if jsonb_typeof(v_def.d) <> 'object' or jsonb_typeof(v_def.d -> 'name') is distinct from 'string'
            or btrim(v_def.d ->> 'name') = '' then
            raise exception using errcode = 'AT003', message = format('register_tasks: %s must be an object with a non-empty "name"', v_where);
        end if;
        v_problem := anchor.queue_definition_problem(v_def.d);
        if v_problem is not null then
            raise exception using errcode = 'AT003',
                message = format('register_tasks: %s (%s).%s', v_where, left(v_def.d ->> 'name', 255), v_problem);
        end if;
    end loop;

    select q ->> 'name' into v_key from jsonb_array_elements(coalesce(register_tasks_v2.queues, '[]')) as q
    group by q ->> 'name' having count(*) > 1 limit 1;
    if v_key is not null then
        raise exception using errcode = 'AT003', message = format('register_tasks: queue %L is listed more than once', v_key);
    end if;

    -- serialise registrations so the version comparison and the upsert see one consistent registry
    perform pg_advisory_xact_lock(hashtext('anchor.register_tasks'));
    select * into v_registry from anchor.task_registry;
    if found and v_registry.version > register_tasks_v2.version then
        return 'ignored_older';
    end if;
    -- queues null (register_tasks): the stored queue settings stay as they are
    v_queues := coalesce(register_tasks_v2.queues, v_registry.queues);
    if v_registry.version = register_tasks_v2.version and v_registry.definitions = register_tasks_v2.definitions
        and v_registry.queues is not distinct from v_queues then
        return 'unchanged';
    end if;

    -- what decides each name's and queue's grouping, before: compared with after to re-group only what changed
    v_before := anchor.flow_settings();

    insert into anchor.task_definitions as t (
        name, description, params_schema, retry_intervals, max_attempts, timeout, queue, priority, on_failed, cron, active, updated_at,
        concurrency_limit, concurrency_key, rate_limit, rate_period, rate_key, retry_jitter
    )
    select
        d ->> 'name',
        d ->> 'description',
        coalesce(d -> 'parameters', '{"type": "object"}'),
        case when d ->> 'retry_interval' is null then '{}' else anchor.parse_intervals(d ->> 'retry_interval') end,
        -- no retry policy means one attempt; a retry policy without maxAttempts retries forever
        coalesce((d ->> 'max_attempts')::int, case when d ->> 'retry_interval' is null then 1 else -1 end),
        case when d ->> 'timeout' is null then interval '1 hour' else anchor.parse_duration(d ->> 'timeout') end,
        coalesce(d ->> 'queue', 'default'),
        coalesce((d ->> 'priority')::int, 0),
        coalesce((d ->> 'on_failed')::boolean, false),
        nullif(d -> 'cron', 'null'),
        true,
        v_now,
        (d -> 'concurrency' ->> 'limit')::int,
        d -> 'concurrency' ->> 'key',
        (d -> 'rate_limit' ->> 'limit')::int,
        anchor.try_parse_duration(d -> 'rate_limit' ->> 'period'),
        d -> 'rate_limit' ->> 'key',
        coalesce((d ->> 'retry_jitter')::double precision, 0)
    from jsonb_array_elements(register_tasks_v2.definitions) as d
    on conflict (name) do update set
        description = excluded.description,
        params_schema = excluded.params_schema,
        retry_intervals = excluded.retry_intervals,
        max_attempts = excluded.max_attempts,
        timeout = excluded.timeout,
        queue = excluded.queue,
        priority = excluded.priority,
        on_failed = excluded.on_failed,
        cron = excluded.cron,
        active = true,
        updated_at = excluded.updated_at,
        concurrency_limit = excluded.concurrency_limit,
        concurrency_key = excluded.concurrency_key,
        rate_limit = excluded.rate_limit,
        rate_period = excluded.rate_period,
        rate_key = excluded.rate_key,
        retry_jitter = excluded.retry_jitter;

    update anchor.task_definitions t set active = false, updated_at = v_now
    where t.active and not exists (
        select 1 from jsonb_array_elements(register_tasks_v2.definitions) as d where d ->> 'name' = t.name
    );

    if register_tasks_v2.queues is not null then
        insert into anchor.queue_settings as s (name, concurrency, rate_limit, rate_period, updated_at)
        select q ->> 'name', (q ->> 'concurrency')::int, (q -> 'rate_limit' ->> 'limit')::int,
            anchor.try_parse_duration(q -> 'rate_limit' ->> 'period'), v_now
        from jsonb_array_elements(register_tasks_v2.queues) as q
        order by q ->> 'name'
        on conflict (name) do update set
            concurrency = excluded.concurrency, rate_limit = excluded.rate_limit, rate_period = excluded.rate_period,
            updated_at = excluded.updated_at
        where (s.concurrency, s.rate_limit, s.rate_period) is distinct from (excluded.concurrency, excluded.rate_limit, excluded.rate_period);
        -- registration is declarative for limits: a queue no longer listed has none
        update anchor.queue_settings s set concurrency = null, rate_limit = null, rate_period = null, updated_at = v_now
        where (s.concurrency is not null or s.rate_limit is not null) and not exists (
            select 1 from jsonb_array_elements(register_tasks_v2.queues) as q where q ->> 'name' = s.name
        );
    end if;

    -- every limited queue and name has its scope row, which claimers lock to decide on its limits
    insert into anchor.flow_scopes (kind, owner)
    select 'queue', s.name from anchor.queue_settings s where s.concurrency is not null or s.rate_limit is not null
    union all
    select 'task', d.name from anchor.task_definitions d where d.concurrency_limit is not null or d.rate_limit is not null
    on conflict (kind, owner, key) do nothing;

    v_after := anchor.flow_settings();
    if v_after is distinct from v_before then
        select coalesce(array_agg(k) filter (where k like 'task:%'), '{}'), coalesce(array_agg(k) filter (where k like 'queue:%'), '{}')
        into v_names, v_changed_queues
        from (
            select k from jsonb_object_keys(v_before || v_after) as k
            where v_before -> k is distinct from v_after -> k
        ) as c;
        perform anchor.flow_reflow(
            array(select substr(n, 6) from unnest(v_names) as n),
            array(select substr(q, 7) from unnest(v_changed_queues) as q)
        );
    end if;

    insert into anchor.task_registry (singleton, version, definitions, registered_at, queues)
    values (true, register_tasks_v2.version, register_tasks_v2.definitions, v_now, v_queues)
    on conflict (singleton) do update set
        version = excluded.version, definitions = excluded.definitions, registered_at = excluded.registered_at,
        queues = excluded.queues;
    return 'applied';
end;
$$;

-- What decides how tasks are grouped: per limited name its key parameter, per limited queue true; a change in
-- this object is what makes registration re-group live tasks.
create function anchor.flow_settings()
returns jsonb
language sql
stable
as $$
    select coalesce(jsonb_object_agg(k, v), '{}') from (
        select 'task:' || d.name as k, to_jsonb(coalesce(d.concurrency_key, d.rate_key, '')) as v
        from anchor.task_definitions d where d.concurrency_limit is not null or d.rate_limit is not null
        union all
        select 'queue:' || s.name, 'true'::jsonb
        from anchor.queue_settings s where s.concurrency is not null or s.rate_limit is not null
    ) as f
$$;

-- The 0.1 registration: the definitions (flow-control keys included) as register_tasks_v2, the queue settings
-- left as they are (a client that does not know queues never clears their limits).
create or replace function anchor.register_tasks(definitions jsonb, version bigint default 0, p_now timestamptz default null)
returns text
language sql
as $$
    select anchor.register_tasks_v2(definitions, null, version, p_now)
$$;

-- Sets waiting_for from the row: 'time' for a pending task whose run_at is in the future, 'limit' for a due
-- pending task that uses a limit, null otherwise. As 0013's, plus 'limit': any writer that makes a limited task
-- pending (retry, hand-back, snooze, rescue, retry_now, a workflow's release) holds it for the claim's limits.
create or replace function anchor.set_waiting_for()
returns trigger
language plpgsql
as $$
begin
    new.waiting_for := case
        when new.state <> 'pending' then null
        when new.run_at > now() then 'time'
        when new.flow_key is not null then 'limit'
    end;
    return new;
end;
$$;

-- Whether any task name or queue has a limit: while none has, inserts call no flow-control trigger at all.
create function anchor.flow_in_use()
returns boolean
language sql
stable
as $$
    select exists (select 1 from anchor.task_definitions d where d.concurrency_limit is not null or d.rate_limit is not null)
        or exists (select 1 from anchor.queue_settings s where s.concurrency is not null or s.rate_limit is not null)
$$;

-- After an insert statement (while some limit exists), the new tasks that use a limit get their group and, when
-- due and pending, are held.
create function anchor.flow_mark_inserted()
returns trigger
language plpgsql
as $$
begin
    update anchor.tasks t set
        flow_key = f.flow_key,
        waiting_for = case when t.state = 'pending' and t.waiting_for is null then 'limit' else t.waiting_for end
    from (
        select n.id, anchor.flow_key_of(n.name, n.queue, n.params) as flow_key from new_rows as n
    ) as f
    where t.id = f.id and f.flow_key is not null;
    return null;
end;
$$;

-- the WHEN clause runs in the executor: without limits an insert pays one probe of each small settings table
-- and no trigger function call
create trigger tasks_flow_insert after insert on anchor.tasks
referencing new table as new_rows
for each statement when (anchor.flow_in_use())
execute function anchor.flow_mark_inserted();

-- NOTIFY anchor_tasks (payload: the queue) when a limited task stops running: its slot is free, so the
-- claimers of its queue look again at once instead of at their next poll.
create function anchor.notify_flow_slot()
returns trigger
language plpgsql
as $$
begin
    perform pg_notify('anchor_tasks', new.queue);
    return null;
end;
$$;

create trigger tasks_flow_slot_freed after update of state on anchor.tasks
for each row
when (old.state = 'running' and new.state <> 'running' and new.flow_key is not null)
execute function anchor.notify_flow_slot();

-- A retry wait spread by up to +/- jitter of itself (0 <= jitter <= 1), so tasks that failed together do not
-- all retry together; no jitter returns the wait unchanged.
create function anchor.jittered(p_wait interval, p_jitter double precision)
returns interval
language sql
volatile
as $$
    select case
        when coalesce(p_jitter, 0) <= 0 then p_wait
        else least(p_wait * (1 + p_jitter * (2 * random() - 1)), anchor.longest_duration())
    end
$$;

-- The wait before retry number `retry` of a task of `p_name`: its backoff entry (anchor.retry_interval) with the
-- definition's retry_jitter applied.
create function anchor.retry_wait(p_name text, p_intervals interval[], p_retry integer)
returns interval
language sql
volatile
as $$
    select anchor.jittered(
        anchor.retry_interval(p_intervals, p_retry),
        (select d.retry_jitter from anchor.task_definitions d where d.name = p_name)
    )
$$;

-- As 0010's fail_v2 (running → pending | failing | failed | cancelled, fenced), with the retry wait jittered.
create or replace function anchor.fail_v2(
    id bigint,
    fence bigint,
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
    v_now timestamptz := anchor.clock(fail_v2.p_now);
    v_task anchor.tasks;
    v_outcome text;
begin
    if fail_v2.hook_timeout is null or fail_v2.hook_timeout <= interval '0' or fail_v2.hook_timeout > anchor.longest_duration() then
        raise exception using errcode = 'AT003',
            message = format('fail: task %s: hook_timeout must be above zero and at most 100000 hours, got %s', fail_v2.id, fail_v2.hook_timeout);
    end if;
    select * into v_task from anchor.tasks t where t.id = fail_v2.id for update;
    if not found or v_task.state <> 'running' or v_task.fence is distinct from fail_v2.fence
        or v_task.locked_by is distinct from fail_v2.worker_id then
        return 'stale';
    end if;

    v_outcome := case
        when v_task.cancel_requested then 'cancelled'
        when fail_v2.fatal or (v_task.max_attempts <> -1 and v_task.attempts >= v_task.max_attempts) then
            case when anchor.has_failure_hook(v_task.name) then 'failing' else 'failed' end
        else 'retry'
    end;

    update anchor.tasks t set
        state = case v_outcome when 'retry' then 'pending' else v_outcome end,
        run_at = case v_outcome
            when 'retry' then v_now + anchor.retry_wait(t.name, t.retry_intervals, t.attempts)
            else t.run_at end,
        -- a failing task keeps its lock: the hook is leased to this worker, which runs it right away
        locked_by = case when v_outcome = 'failing' then t.locked_by end,
        hook_attempts = t.hook_attempts + (v_outcome = 'failing')::integer,
        deadline = case when v_outcome = 'failing' then v_now + fail_v2.hook_timeout end,
        last_error = case when fail_v2.record_event then fail_v2.error_message else t.last_error end,
        finished_at = case when v_outcome in ('failed', 'cancelled') then v_now end
    where t.id = fail_v2.id;

    if fail_v2.record_event or v_outcome <> 'retry' then
        insert into anchor.task_events (task_id, at, kind, attempt, worker_id, error_type, message, traceback, details)
        values (
            fail_v2.id, v_now, case when fail_v2.record_event then 'error' else v_outcome end, v_task.attempts, fail_v2.worker_id,
            fail_v2.error_type, fail_v2.error_message, fail_v2.error_traceback,
            jsonb_build_object('outcome', v_outcome, 'fatal', fail_v2.fatal)
        );
    end if;
    return v_outcome;
end;
$$;

-- As 0010's rescue (running → pending | failing | failed | cancelled, failing → failing | hook_failed, for tasks
-- of dead workers or past their deadline), with the retry wait jittered.
create or replace function anchor.rescue(
    heartbeat_timeout interval default '20 seconds',
    deadline_grace interval default '30 seconds',
    max_rescues integer default 5,
    max_hook_attempts integer default 5,
    p_now timestamptz default null
)
returns table (id bigint, outcome text)
language plpgsql
set jit = off
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(rescue.p_now);
    v_timeout interval := anchor.at_least_unless_admin(
        rescue.heartbeat_timeout, anchor.interval_setting('worker_min_heartbeat_timeout')
    );
    v_grace interval := anchor.at_least_unless_admin(rescue.deadline_grace, interval '0');
    v_task anchor.tasks;
    v_reason text;
    v_outcome text;
    v_error text;
begin
    if not pg_try_advisory_xact_lock(hashtext('anchor.rescue')) then
        return;
    end if;

    for v_task in
        select * from anchor.tasks t
        where t.state in ('running', 'failing') and t.locked_by is not null
            and (not anchor.worker_alive(t.locked_by, v_timeout, v_now)
                or t.deadline + v_grace < v_now)
        order by t.id
        for update skip locked
    loop
        v_reason := case when anchor.worker_alive(v_task.locked_by, v_timeout, v_now)
            then 'deadline passed' else 'worker stopped heartbeating' end;
        begin
            if v_task.state = 'running' then
                v_outcome := case
                    when v_task.cancel_requested then 'cancelled'
                    when v_task.rescues + 1 >= rescue.max_rescues
                        or (v_task.max_attempts <> -1 and v_task.attempts >= v_task.max_attempts) then
                        case when anchor.has_failure_hook(v_task.name) then 'failing' else 'failed' end
                    else 'pending'
                end;
                update anchor.tasks t set
                    state = v_outcome,
                    rescues = t.rescues + 1,
                    run_at = case v_outcome
                        when 'pending' then v_now + anchor.retry_wait(t.name, t.retry_intervals, t.attempts)
                        else v_now end,
                    locked_by = null,
                    deadline = null,
                    last_error = format('rescued: %s (worker %s)', v_reason, v_task.locked_by),
                    finished_at = case when v_outcome in ('failed', 'cancelled') then v_now end
                where t.id = v_task.id;
            else
                v_outcome := case when v_task.hook_attempts >= rescue.max_hook_attempts then 'hook_failed' else 'failing' end;
                update anchor.tasks t set
                    state = v_outcome, locked_by = null, deadline = null, run_at = v_now,
                    finished_at = case when v_outcome = 'hook_failed' then v_now end
                where t.id = v_task.id;
            end if;
        exception when others then
            -- this row alone: its changes are rolled back to the block's start, the others go on
            get stacked diagnostics v_error = message_text;
            v_outcome := 'failed';
            v_reason := format('%s; rescue could not recover the task: %s', v_reason, v_error);
            update anchor.tasks t set
                state = 'failed', rescues = t.rescues + 1, locked_by = null, deadline = null, finished_at = v_now,
                last_error = format('rescued: %s (worker %s)', v_reason, v_task.locked_by)
            where t.id = v_task.id;
        end;
        insert into anchor.task_events (task_id, at, kind, attempt, worker_id, message, details)
        values (v_task.id, v_now, 'rescued', v_task.attempts, v_task.locked_by, v_reason,
            jsonb_build_object('from_state', v_task.state, 'outcome', v_outcome));
        id := v_task.id;
        outcome := v_outcome;
        return next;
    end loop;
end;
$$;

-- Forgets up to p_limit keyed rate rings whose every start is at least their period old (such a ring allows
-- every start, as a missing one does), so keys seen once do not keep rows forever. Skips the names whose scope a
-- claimer holds right now. Returns how many it forgot.
create function anchor.flow_forget(p_now timestamptz, p_limit integer)
returns integer
language plpgsql
as $$
declare
    v_count integer;
begin
    with stale as (
        select k.id, k.owner from anchor.flow_scopes k
        left join anchor.task_definitions d on d.name = k.owner
        where k.kind = 'key'
            and not exists (
                select 1 from anchor.flow_starts f
                where f.scope_id = k.id and f.at > p_now - coalesce(d.rate_period, interval '0')
            )
        limit p_limit
    ), owners as (
        -- the name's lock, as claimers take it: a claim using one of these rings right now keeps it
        select o.owner from anchor.flow_scopes o
        where o.kind = 'task' and o.key = '' and o.owner in (select stale.owner from stale)
        for update skip locked
    )
    delete from anchor.flow_scopes k using stale
    where k.id = stale.id and stale.owner in (select owners.owner from owners);
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

-- As 0010's prune (deletes finished tasks past their retention, batch_size at a time), and forgets stale keyed
-- rate rings (anchor.flow_forget) in the same pass.
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

-- Puts a running execution back to sleep (running → pending at now + delay, or → cancelled when a cancel was
-- requested), fenced like complete_v2; the attempt is given back (attempts - 1), so a snooze never uses up the
-- retry budget, and a 'snoozed' event records the delay. Its limit slot frees as it stops running.
create function anchor.snooze(id bigint, fence bigint, worker_id text, delay interval, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(snooze.p_now);
    v_task anchor.tasks;
begin
    if snooze.delay is null or snooze.delay <= interval '0' or snooze.delay > anchor.longest_duration() then
        raise exception using errcode = 'AT003',
            message = format('snooze: task %s: delay must be above zero and at most 100000 hours, got %s', snooze.id, coalesce(snooze.delay::text, 'null'));
    end if;
    select * into v_task from anchor.tasks t where t.id = snooze.id for update;
    if not found or v_task.state <> 'running' or v_task.fence is distinct from snooze.fence
        or v_task.locked_by is distinct from snooze.worker_id then
        return 'stale';
    end if;
    if v_task.cancel_requested then
        update anchor.tasks t set state = 'cancelled', locked_by = null, deadline = null, finished_at = v_now
        where t.id = snooze.id;
        insert into anchor.task_events (task_id, at, kind, attempt, worker_id)
        values (snooze.id, v_now, 'cancelled', v_task.attempts, snooze.worker_id);
        return 'cancelled';
    end if;
    update anchor.tasks t set
        state = 'pending', attempts = t.attempts - 1, run_at = v_now + snooze.delay, locked_by = null, deadline = null
    where t.id = snooze.id;
    insert into anchor.task_events (task_id, at, kind, attempt, worker_id, details)
    values (snooze.id, v_now, 'snoozed', v_task.attempts, snooze.worker_id, jsonb_build_object(
        'delay', snooze.delay::text,
        'delay_seconds', extract(epoch from snooze.delay),
        'run_at', v_now + snooze.delay
    ));
    return 'snoozed';
end;
$$;

-- The problem with a queue name given to pause_queue / resume_queue, raised as AT003.
create function anchor.check_queue_name(p_function text, p_queue text)
returns void
language plpgsql
immutable
as $$
begin
    if p_queue is null or btrim(p_queue) = '' then
        raise exception using errcode = 'AT003', message = format('%s: queue must be a non-empty name, got %L', p_function, p_queue);
    end if;
    if octet_length(p_queue) > 255 then
        raise exception using errcode = 'AT003',
            message = format('%s: queue %L... of %s bytes is over the limit of 255 bytes', p_function, left(p_queue, 40), octet_length(p_queue));
    end if;
end;
$$;

-- Pauses a queue: no claim starts its tasks until resume_queue (running ones finish, failure hooks still run,
-- its tasks stay pending). Any name can be paused, known or not. Returns 'paused', or 'unchanged' if it was.
create function anchor.pause_queue(queue text, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(pause_queue.p_now);
    v_changed boolean;
begin
    perform anchor.check_queue_name('pause_queue', pause_queue.queue);
    insert into anchor.queue_settings as s (name, paused, paused_at, updated_at)
    values (pause_queue.queue, true, v_now, v_now)
    on conflict (name) do update set paused = true, paused_at = v_now, updated_at = v_now
    where not s.paused
    returning true into v_changed;
    return case when v_changed then 'paused' else 'unchanged' end;
end;
$$;

-- Resumes a paused queue and wakes its workers at once (NOTIFY anchor_tasks, payload: the queue). Returns
-- 'resumed', or 'unchanged' if it was not paused.
create function anchor.resume_queue(queue text, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(resume_queue.p_now);
    v_changed boolean;
begin
    perform anchor.check_queue_name('resume_queue', resume_queue.queue);
    update anchor.queue_settings s set paused = false, paused_at = null, updated_at = v_now
    where s.name = resume_queue.queue and s.paused
    returning true into v_changed;
    perform pg_notify('anchor_tasks', resume_queue.queue);
    return case when v_changed then 'resumed' else 'unchanged' end;
end;
$$;

-- One row per known queue (with settings, the queue of an active definition, or holding live tasks): its pause,
-- its limits and its live tasks by state (held: pending tasks waiting for a limit). Reads the live tasks only.
create function anchor.queues()
returns table (
    name text, paused boolean, paused_at timestamptz, concurrency integer, rate_limit integer, rate_period interval,
    pending bigint, held bigint, running bigint, failing bigint
)
language sql
stable
as $$
    with counts as (
        select t.queue,
            count(*) filter (where t.state = 'pending') as pending,
            count(*) filter (where t.state = 'pending' and t.waiting_for = 'limit') as held,
            count(*) filter (where t.state = 'running') as running,
            count(*) filter (where t.state = 'failing') as failing
        from anchor.tasks t
        where t.state in ('pending', 'running', 'failing')
        group by t.queue
    ), known as (
        select s.name from anchor.queue_settings s
        union
        select d.queue from anchor.task_definitions d where d.active
        union
        select c.queue from counts c
    )
    select k.name, coalesce(s.paused, false), s.paused_at, s.concurrency, s.rate_limit, s.rate_period,
        coalesce(c.pending, 0), coalesce(c.held, 0), coalesce(c.running, 0), coalesce(c.failing, 0)
    from known k
    left join anchor.queue_settings s on s.name = k.name
    left join counts c on c.queue = k.name
    order by k.name
$$;

-- Rate tokens a scope has now, up to p_want: how many of the next starts would each find the start `limit`
-- places back at least `period` old. The ring holds start times in order, so those slots are a prefix. A ring
-- built for another limit (the limit changed) starts over empty. Caller holds the scope's lock.
create function anchor.flow_tokens(p_scope bigint, p_limit integer, p_period interval, p_at timestamptz, p_want integer)
returns integer
language plpgsql
as $$
declare
    v_pos bigint;
    v_size integer;
begin
    if p_want <= 0 then
        return 0;
    end if;
    select s.pos, s.ring_size into v_pos, v_size from anchor.flow_scopes s where s.id = p_scope;
    if v_size is distinct from p_limit then
        delete from anchor.flow_starts f where f.scope_id = p_scope;
        update anchor.flow_scopes s set pos = 0, ring_size = p_limit where s.id = p_scope;
        v_pos := 0;
    end if;
    return (
        select count(*)::integer
        from generate_series(0, least(p_want, p_limit) - 1) as g (i)
        left join anchor.flow_starts f on f.scope_id = p_scope and f.slot = ((v_pos + g.i) % p_limit)::integer
        -- a slot never written, or holding a start at least a period ago
        where f.at is null or f.at <= p_at - p_period
    );
end;
$$;

-- Records p_count starts at p_at in a scope's rate ring (over its oldest slots). Caller holds the scope's lock.
create function anchor.flow_record_starts(p_scope bigint, p_limit integer, p_count integer, p_at timestamptz)
returns void
language plpgsql
as $$
declare
    v_pos bigint;
begin
    if p_count <= 0 then
        return;
    end if;
    update anchor.flow_scopes s set pos = s.pos + p_count where s.id = p_scope returning s.pos - p_count into v_pos;
    insert into anchor.flow_starts (scope_id, slot, at)
    select p_scope, ((v_pos + g.i) % p_limit)::integer, p_at from generate_series(0, p_count - 1) as g (i)
    on conflict (scope_id, slot) do update set at = excluded.at;
end;
$$;

-- When a rate scope's next token comes once p_used more starts at p_at are recorded: a period after the start
-- that will then be the oldest of its ring.
create function anchor.flow_next_token(p_scope bigint, p_limit integer, p_period interval, p_used integer, p_at timestamptz)
returns timestamptz
language sql
stable
as $$
    select case
        when p_used >= p_limit then p_at + p_period
        else (
            select f.at + p_period
            from anchor.flow_scopes s
            inner join anchor.flow_starts f on f.scope_id = s.id and f.slot = ((s.pos + p_used) % p_limit)::integer
            where s.id = p_scope
        )
    end
$$;

-- Locks up to p_take held tasks of one group, in claim order (the caller starts them); returns their ids.
create function anchor.flow_pick(p_queue text, p_name text, p_group text, p_take integer, p_at timestamptz)
returns bigint[]
language sql
as $$
    select array(
        select h.id from anchor.tasks h
        where h.state = 'pending' and h.waiting_for = 'limit' and h.queue = p_queue and h.name = p_name
            and h.flow_key = p_group
            and h.run_at <= p_at  -- always true outside tests that move the clock back (p_now)
        order by h.priority, h.run_at, h.id
        limit greatest(p_take, 0)
        for update skip locked
    )
$$;

-- The claim's flow-control step: starts up to p_want held tasks of the limited (queue, name) pairs, as many as
-- every limit involved allows (queue concurrency and rate, the name's, each keyed group's), keyed groups round
-- robin. Returns the started ids, the earliest time a rate-held group gets a token (for the wake row), and the
-- start time used. Locks the pairs' scope rows for the rest of the claim's transaction.
create function anchor.flow_start(
    p_worker text, p_want integer, p_queues text[], p_names text[], p_now timestamptz, p_fixed_clock boolean,
    out started bigint[], out wake timestamptz, out started_at timestamptz
)
language plpgsql
set plan_cache_mode = force_generic_plan
set jit = off
as $$
declare
    v_pair record;
    v_want integer := p_want;
    v_cap integer;
    v_tokens integer;
    v_group_cap integer;
    v_ids bigint[];
    v_group text;
    v_next text;
    v_last text;
    v_wrapped boolean;
    v_key_param text;
    v_key_scope bigint;
    -- what the pair starts: the ids, and per keyed rate ring how many
    v_pair_ids bigint[];
    v_key_scopes bigint[];
    v_key_counts integer[];
begin
    started := '{}';
    -- every claimer locks the same rows in the same order: decisions on a limit never overlap, and never deadlock
    perform 1 from anchor.flow_scopes s
    where s.key = '' and ((s.kind = 'queue' and s.owner = any(p_queues)) or (s.kind = 'task' and s.owner = any(p_names)))
    order by s.id
    for update;
    started_at := p_now;

    for v_pair in
        select c.queue, c.name, s.concurrency as q_limit, s.rate_limit as q_rate, s.rate_period as q_period, qs.id as q_scope,
            d.concurrency_limit, d.concurrency_key, d.rate_limit, d.rate_period, d.rate_key, ts.id as t_scope, ts.cursor
        from unnest(p_queues, p_names) as c (queue, name)
        left join anchor.queue_settings s on s.name = c.queue
        left join anchor.flow_scopes qs on qs.kind = 'queue' and qs.owner = c.queue and qs.key = ''
        left join anchor.task_definitions d on d.name = c.name
        left join anchor.flow_scopes ts on ts.kind = 'task' and ts.owner = c.name and ts.key = ''
        -- the names of a limited queue round robin too: those after the one served last come first
        order by c.queue, c.name <= coalesce(qs.cursor, ''), c.name
    loop
        exit when v_want <= 0;
        -- a limit whose scope row is missing cannot be decided safely: its tasks wait (registration creates it)
        continue when (v_pair.q_limit is not null or v_pair.q_rate is not null) and v_pair.q_scope is null;
        continue when (v_pair.concurrency_limit is not null or v_pair.rate_limit is not null) and v_pair.t_scope is null;
        -- Tasks of this pair found in the ready set join their group: a task enqueued in a transaction that
        -- committed after the registration that gave its name or queue a first limit was neither grouped by the
        -- insert trigger (no limit yet in its snapshot) nor by the registration's re-grouping (not committed
        -- yet). One probe of the ready index when there is none.
        update anchor.tasks t set flow_key = anchor.flow_key_of(t.name, t.queue, t.params), waiting_for = 'limit'
        where t.id = any(array(
            select r.id from anchor.tasks r
            where r.state = 'pending' and r.waiting_for is null and r.rescues = 0
                and r.queue = v_pair.queue and r.name = v_pair.name
            order by r.priority, r.run_at, r.id
            limit 1000
            for update skip locked
        ));
        -- nothing held for this pair: one probe (in the index's order, so a generic plan that expects many
        -- held rows still reads the index rather than the table)
        continue when (
            select t.flow_key from anchor.tasks t
            where t.state = 'pending' and t.waiting_for = 'limit' and t.queue = v_pair.queue and t.name = v_pair.name
            order by t.flow_key
            limit 1
        ) is null;

        v_cap := v_want;
        if v_pair.q_limit is not null then
            v_cap := least(v_cap, v_pair.q_limit - (
                select count(*) from anchor.tasks t
                where t.state = 'running' and t.queue = v_pair.queue and t.flow_key is not null and t.queue > ''
            ));
        end if;
        -- the name's unkeyed limits (a keyed limit is per group, below)
        if v_pair.concurrency_limit is not null and v_pair.concurrency_key is null and v_cap > 0 then
            v_cap := least(v_cap, v_pair.concurrency_limit - (
                select count(*) from anchor.tasks t
                where t.state = 'running' and t.name = v_pair.name and t.flow_key is not null and t.name > ''
            ));
        end if;
        -- Rate tokens are checked at a time read under the lock, so times follow lock order across claimers
        -- (the rings rely on it); the starts are recorded at a later read (below), which only makes the check
        -- stricter. Tests pass their own clock.
        if not p_fixed_clock then
            started_at := greatest(started_at, clock_timestamp());
        end if;
        if v_pair.q_rate is not null and v_cap > 0 then
            v_tokens := anchor.flow_tokens(v_pair.q_scope, v_pair.q_rate, v_pair.q_period, started_at, v_cap);
            if v_tokens < v_cap then
                v_cap := v_tokens;
                wake := least(wake, anchor.flow_next_token(v_pair.q_scope, v_pair.q_rate, v_pair.q_period, v_tokens, started_at));
            end if;
        end if;
        if v_pair.rate_limit is not null and v_pair.rate_key is null and v_cap > 0 then
            v_tokens := anchor.flow_tokens(v_pair.t_scope, v_pair.rate_limit, v_pair.rate_period, started_at, v_cap);
            if v_tokens < v_cap then
                v_cap := v_tokens;
                wake := least(wake, anchor.flow_next_token(v_pair.t_scope, v_pair.rate_limit, v_pair.rate_period, v_tokens, started_at));
            end if;
        end if;
        continue when v_cap <= 0;

        v_key_param := coalesce(v_pair.concurrency_key, v_pair.rate_key);
        v_key_scopes := '{}';
        v_key_counts := '{}';
        if v_key_param is null then
            v_pair_ids := anchor.flow_pick(v_pair.queue, v_pair.name, '', v_cap, started_at);
        else
            -- keyed groups round robin: from the group after the one served last, wrapping around once
            v_pair_ids := '{}';
            v_group := v_pair.cursor;
            v_wrapped := false;
            v_last := null;
            loop
                exit when v_cap <= 0;
                -- the next group with held tasks: one index probe, whatever its backlog
                v_next := (
                    select t.flow_key from anchor.tasks t
                    where t.state = 'pending' and t.waiting_for = 'limit' and t.queue = v_pair.queue and t.name = v_pair.name
                        and t.flow_key > coalesce(v_group, '')  -- '' sorts first; keyed groups are never ''
                    order by t.flow_key
                    limit 1
                );
                if v_next is null then
                    -- past the last group: wrap around once to the groups up to the cursor
                    exit when v_wrapped or v_pair.cursor is null;
                    v_wrapped := true;
                    v_group := null;
                    continue;
                end if;
                -- back past where the round began: every group has been looked at
                exit when v_wrapped and v_next > v_pair.cursor;
                v_group := v_next;
                v_group_cap := v_cap;
                if v_pair.concurrency_key is not null then
                    v_group_cap := least(v_group_cap, v_pair.concurrency_limit - (
                        select count(*) from anchor.tasks t
                        where t.state = 'running' and t.name = v_pair.name and t.flow_key = v_group and t.name > ''
                    ));
                end if;
                v_key_scope := null;
                if v_pair.rate_key is not null and v_group_cap > 0 then
                    -- created by the claim, under the name's lock, so no other claimer creates it at once
                    select s.id into v_key_scope from anchor.flow_scopes s where s.kind = 'key' and s.owner = v_pair.name and s.key = v_group;
                    if v_key_scope is null then
                        insert into anchor.flow_scopes (kind, owner, key) values ('key', v_pair.name, v_group) returning id into v_key_scope;
                    end if;
                    v_tokens := anchor.flow_tokens(v_key_scope, v_pair.rate_limit, v_pair.rate_period, started_at, v_group_cap);
                    if v_tokens < v_group_cap then
                        v_group_cap := v_tokens;
                        wake := least(wake, anchor.flow_next_token(v_key_scope, v_pair.rate_limit, v_pair.rate_period, v_tokens, started_at));
                    end if;
                end if;
                if v_group_cap > 0 then
                    v_ids := anchor.flow_pick(v_pair.queue, v_pair.name, v_group, v_group_cap, started_at);
                    if cardinality(v_ids) > 0 then
                        v_pair_ids := v_pair_ids || v_ids;
                        v_cap := v_cap - cardinality(v_ids);
                        v_last := v_group;
                        if v_key_scope is not null then
                            v_key_scopes := v_key_scopes || v_key_scope;
                            v_key_counts := v_key_counts || cardinality(v_ids);
                        end if;
                    end if;
                end if;
            end loop;
            if v_last is not null then
                update anchor.flow_scopes s set cursor = v_last where s.id = v_pair.t_scope;
            end if;
        end if;
        continue when cardinality(v_pair_ids) = 0;

        -- Start them all in one statement, at a time read after every count above: a task that stopped running
        -- before a count saw it stopped before these starts, and the rate rings record exactly these times.
        if not p_fixed_clock then
            started_at := greatest(started_at, clock_timestamp());
        end if;
        update anchor.tasks t set
            state = 'running', attempts = t.attempts + 1, locked_by = p_worker, locked_at = started_at,
            deadline = started_at + least(t.timeout, anchor.longest_duration()), fence = t.fence + 1
        where t.id = any(v_pair_ids);
        if v_pair.q_rate is not null then
            perform anchor.flow_record_starts(v_pair.q_scope, v_pair.q_rate, cardinality(v_pair_ids), started_at);
        end if;
        if v_pair.rate_limit is not null and v_pair.rate_key is null then
            perform anchor.flow_record_starts(v_pair.t_scope, v_pair.rate_limit, cardinality(v_pair_ids), started_at);
        end if;
        perform anchor.flow_record_starts(k.scope, v_pair.rate_limit, k.n, started_at)
        from unnest(v_key_scopes, v_key_counts) as k (scope, n);
        if v_pair.q_scope is not null then
            update anchor.flow_scopes s set cursor = v_pair.name where s.id = v_pair.q_scope;
        end if;
        v_want := v_want - cardinality(v_pair_ids);
        started := started || v_pair_ids;
    end loop;
end;
$$;

-- Hands a worker up to max_tasks items of work: failing tasks whose hook must run (failing, leased; paused
-- queues included) and pending tasks (pending → running; the only place attempts are counted): ready ones from
-- the ready set, held ones of limited pairs as their limits allow (anchor.flow_start); paused queues start
-- nothing. Then a 'wake' row with the earliest future run_at or rate-token time when the batch is not full.
-- Every claimed row takes a new fence token (fence + 1). As 0013's otherwise: same signature, same rows.
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
    select coalesce(array_agg(p.queue order by p.queue, p.name), '{}'), coalesce(array_agg(p.name order by p.queue, p.name), '{}'),
        coalesce(array_agg(p.queue order by p.queue, p.name) filter (where not p.limited), '{}'),
        coalesce(array_agg(p.name order by p.queue, p.name) filter (where not p.limited), '{}'),
        coalesce(array_agg(p.queue order by p.queue, p.name) filter (where p.limited), '{}'),
        coalesce(array_agg(p.name order by p.queue, p.name) filter (where p.limited), '{}'),
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
        ) and not exists (
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

insert into anchor.function_roles (function_name, role_name) values
('register_tasks_v2', 'anchor_worker'),
('snooze', 'anchor_worker'),
('pause_queue', 'anchor_admin'),
('resume_queue', 'anchor_admin'),
('queues', 'anchor_admin');

-- create or replace dropped the SECURITY DEFINER and search_path of the functions replaced here
select anchor.apply_privileges();
