-- 0010_hardening: no enqueued row can stop a worker or the queue, and the roles mean what they say.
--
-- Why: an application holding only anchor_enqueuer could write rows no worker can decode (run_at
-- 'infinity', a 5000-digit integer in params), rows that make every claim, fail or rescue raise (a
-- timeout past the timestamp range), rows that retry in a hot loop (no interval), and could take a task of
-- another name through its unique tag; a worker role could purge history, lock registration out, or take
-- other workers' tasks with hostile arguments or a moved p_now; and (id, attempt, worker) could repeat, so
-- a late call of an old execution could finish a new one. This migration bounds every value where it
-- enters, makes claim and rescue robust against rows written before the bounds, gives every claim a fence
-- token that never repeats, and binds the worker role to sane arguments. The limits, in one place:
--   run_at, scheduled_at, p_now     finite and within 100 years of the server's clock
--   timeout, delay, retry entries   at most 100000 hours (as parse_duration); above zero (delay: >= 0);
--                                   retry_intervals a flat list of at most 1000 entries
--   retry waits                     at least 1 second, for every policy, default and override: a shorter
--                                   entry (or none, e.g. max_attempts -1 without retry_interval) waits 1s
--   numbers anywhere in params      at most 1.7976931348623157e308 in magnitude (what a double holds;
--                                   far inside Python's 4300-digit int limit); nesting at most 100 levels
--   unique_tag / queue              at most 1024 / 255 bytes (btree index entries); task names 255 bytes
--   enqueue_many                    the whole call at most max_enqueue_many_bytes (16 MiB)
--   register_tasks version          0 .. 999999999999 (a counter, a date like 20261202, a Unix time)
-- Roles (who calls is the role of SET ROLE, else the login; see anchor.caller_is_admin):
--   anchor_admin, a superuser or the schema owner: the full range, p_now included;
--   any other caller: p_now is ignored (the server clock), rescue's heartbeat_timeout and heartbeat_v2's
--   release_after act as at least worker_min_heartbeat_timeout (10 s), rescue's deadline_grace as at least
--   0, prune's retention periods as at least worker_min_retention (1 day), and deregister_worker leaves
--   a worker that still runs tasks alone. Smaller values are raised to the floor rather than refused, so
--   a worker configured with a short timeout keeps working. Worker ids are not secrets: a worker role can
--   still act for another worker id within these floors (separate databases keep untrusted fleets apart).
-- Unique tags stay shared by all task names: a tag held by a live task of another name raises AT006 naming
-- that name (never its id), and a race on a tag (retry_now, retry_hook) raises AT006, never a raw 23505.

insert into anchor.settings (name, value, description) values
('max_enqueue_many_bytes', '16777216', 'largest params array one enqueue_many call accepts, in bytes (pg_column_size)'),
(
    'worker_min_heartbeat_timeout', '10 seconds',
    'shortest heartbeat timeout (rescue) and release delay (heartbeat_v2) a non-admin caller gets'
),
('worker_min_retention', '1 day', 'shortest retention period prune applies for a non-admin caller');

-- The fence token: a per-task count of claims (of an execution or of a hook). It only grows (retry_now,
-- hand-back and released hook leases leave it as it is), so (id, fence) names one claim for ever. Adding
-- a column with a constant default rewrites nothing.
alter table anchor.tasks add column fence bigint not null default 0;

-- Limits ---------------------------------------------------------------------------------------------

-- The longest duration anything accepts (timeouts, delays, retry intervals), as parse_duration: every
-- deadline and retry time stays far inside the timestamp range and Python's timedelta.
create function anchor.longest_duration()
returns interval
language sql
immutable
as $$
    select interval '100000 hours'
$$;

-- Whether the role calling the API gets the full range of arguments: a superuser, the owner of the anchor
-- schema, or a member of anchor_admin. Inside the SECURITY DEFINER API current_user is the owner, so the
-- caller is the role of SET ROLE (the 'role' setting), else the login (session_user).
create function anchor.caller_is_admin()
returns boolean
language sql
stable
as $$
    select coalesce((
        select r.rolsuper
            or pg_catalog.pg_has_role(r.oid, n.nspowner, 'member')
            or coalesce(pg_catalog.pg_has_role(r.oid, a.oid, 'member'), false)
        from pg_catalog.pg_roles as r
        cross join pg_catalog.pg_namespace as n
        left join pg_catalog.pg_roles as a on a.rolname = 'anchor_admin'
        where n.nspname = 'anchor'
            and r.rolname = case pg_catalog.current_setting('role')
                when 'none' then session_user else pg_catalog.current_setting('role')
            end
    ), false)
$$;

-- The clock a call runs on: p_now when an admin gives it (tests, replays; it must be within 100 years of
-- the server's clock), else the server's. Other callers cannot move it: a future p_now would let a worker
-- rescue or prune early, a past one age another worker's heartbeat. Costs nothing when p_now is null.
create function anchor.clock(p_now timestamptz)
returns timestamptz
language plpgsql
stable
as $$
begin
    if p_now is null or not anchor.caller_is_admin() then
        return now();
    end if;
    if p_now not between now() - interval '100 years' and now() + interval '100 years' then
        raise exception using errcode = 'AT003', message = format('p_now %s is not within 100 years of now', p_now);
    end if;
    return p_now;
end;
$$;

-- p_value for an admin caller; for any other, at least p_floor (a hostile argument acts as the floor).
create function anchor.at_least_unless_admin(p_value interval, p_floor interval)
returns interval
language sql
stable
as $$
    select case when anchor.caller_is_admin() then p_value else greatest(p_value, p_floor) end
$$;

-- An interval setting of anchor.settings (the floors above).
create function anchor.interval_setting(p_name text)
returns interval
language sql
stable
as $$
    select s.value::interval from anchor.settings as s where s.name = p_name
$$;

-- Why p_value cannot be a task's time ('<label> <value> is not within ...'), or null: finite and within
-- 100 years of now, so a worker can decode it (Python's datetime ends at year 9999) and arithmetic on it
-- never leaves the timestamp range.
create function anchor.time_problem(p_label text, p_value timestamptz)
returns text
language sql
stable
as $$
    select case when not p_value between now() - interval '100 years' and now() + interval '100 years'
        then format('%s %s is not within 100 years of now', p_label, p_value) end
$$;

-- '$: <problem>' when a params document holds what a worker cannot load, else null: nesting deeper than
-- 100 levels (Python's json parser recurses) or a number beyond what a double holds (Python's json cannot
-- make an int of over 4300 digits, and PostgreSQL writes 1e400 as a 401-digit integer).
create function anchor.params_shape_problem(p_params jsonb)
returns text
language sql
immutable
as $$
    select case
        when jsonb_path_exists(p_params, 'strict $.**{101}') then '$: nested deeper than 100 levels'
        else (
            select format(
                '$: number %s (%s digits) is out of range: a JSON number must fit a double (at most 1.7976931348623157e308 in magnitude)',
                left(n.value::text, 20) || case when length(n.value::text) > 20 then '...' else '' end, length(n.value::text)
            )
            from jsonb_path_query_first(
                p_params, 'strict $.** ? (@.type() == "number" && @.abs() > 1.7976931348623157e308)'
            ) as n (value)
            where n.value is not null
        )
    end
$$;

-- The backoff rule, in one place: retry k waits entry k of the list; past its end the last entry repeats.
-- At least 1 second whatever the list says (none, or 1 microsecond, must not retry in a hot loop), and at
-- most 100000 hours (a row written before the bounds must not push run_at out of range).
create or replace function anchor.retry_interval(intervals interval[], retry integer)
returns interval
language sql
immutable
as $$
    select least(
        greatest(coalesce(intervals[least(greatest(retry, 1), cardinality(intervals))], interval '0'), interval '1 second'),
        anchor.longest_duration()
    )
$$;

-- Registration ---------------------------------------------------------------------------------------

-- The first problem that makes p_schema unusable ('<path>: <problem>'), or null. Only the JSON Schema
-- keywords the generator supports are allowed, each with the type it must have, so a stored schema can
-- never make params_violation (and so enqueue) fail with a raw error.
create or replace function anchor.schema_problem(p_schema jsonb, p_path text default '$')
returns text
language plpgsql
immutable
as $$
declare
    v_key text;
    v_problem text;
    v_type text := p_schema ->> 'type';
begin
    if jsonb_typeof(p_schema) is distinct from 'object' then
        return format('%s: a schema must be a JSON object', p_path);
    end if;
    select k into v_key from jsonb_object_keys(p_schema) as k
    where k not in (
        'type', 'properties', 'required', 'additionalProperties', 'enum', 'items', 'format',
        'minimum', 'maximum', 'minLength', 'maxLength', 'description'
    )
    limit 1;
    if v_key is not null then
        return format('%s: unsupported JSON Schema keyword %L', p_path, v_key);
    end if;
    if v_type is not null and v_type not in ('object', 'array', 'string', 'integer', 'number', 'boolean') then
        return format('%s.type: unsupported type %L', p_path, v_type);
    end if;
    if p_schema ? 'format' and p_schema ->> 'format' not in ('int32', 'int64', 'float', 'double', 'date', 'date-time') then
        return format('%s.format: unsupported format %L', p_path, p_schema ->> 'format');
    end if;
    if p_schema ? 'enum' and jsonb_typeof(p_schema -> 'enum') <> 'array' then
        return format('%s.enum: must be an array', p_path);
    end if;
    if p_schema ? 'required' and (
        jsonb_typeof(p_schema -> 'required') <> 'array'
        or exists (select 1 from jsonb_array_elements(p_schema -> 'required') as r where jsonb_typeof(r) <> 'string')
    ) then
        return format('%s.required: %s must be an array of property names', p_path, p_schema -> 'required');
    end if;
    if p_schema ? 'additionalProperties' and jsonb_typeof(p_schema -> 'additionalProperties') <> 'boolean' then
        return format('%s.additionalProperties: %s must be true or false', p_path, p_schema -> 'additionalProperties');
    end if;
    if p_schema ? 'description' and jsonb_typeof(p_schema -> 'description') <> 'string' then
        return format('%s.description: %s must be a string', p_path, p_schema -> 'description');
    end if;
    -- each CASE tests the JSON type before casting, so a malformed value cannot raise here either
    select k into v_key from unnest(array['minLength', 'maxLength']) as k
    where p_schema ? k and case when jsonb_typeof(p_schema -> k) <> 'number' then true
        else (p_schema ->> k)::numeric not between 0 and 2147483647 or scale((p_schema ->> k)::numeric) > 0 end
    limit 1;
    if v_key is not null then
        return format('%s.%s: %s must be a whole number from 0 to 2147483647', p_path, v_key, p_schema -> v_key);
    end if;
    select k into v_key from unnest(array['minimum', 'maximum']) as k
    where p_schema ? k and case when jsonb_typeof(p_schema -> k) <> 'number' then true
        else abs((p_schema ->> k)::numeric) > 1.7976931348623157e308 end
    limit 1;
    if v_key is not null then
        return format('%s.%s: %s must be a number a double can hold', p_path, v_key, p_schema -> v_key);
    end if;
    if p_schema ? 'properties' then
        if jsonb_typeof(p_schema -> 'properties') <> 'object' then
            return format('%s.properties: must be an object', p_path);
        end if;
        for v_key in select k from jsonb_object_keys(p_schema -> 'properties') as k order by k loop
            v_problem := anchor.schema_problem(p_schema -> 'properties' -> v_key, p_path || '.properties.' || v_key);
            if v_problem is not null then
                return v_problem;
            end if;
        end loop;
    end if;
    if p_schema ? 'items' then
        return anchor.schema_problem(p_schema -> 'items', p_path || '.items');
    end if;
    return null;
end;
$$;

-- The first size problem of one task definition ('<key>: <problem>'), or null; checked before the
-- definition itself, so a schema nested thousands deep is refused before anything recurses into it.
-- Names and queues go into btree indexes, whose entries must stay small.
create function anchor.definition_bounds_problem(p_def jsonb)
returns text
language sql
immutable
as $$
    select case
        when octet_length(p_def ->> 'name') > 255
            then format('name: %s... of %s bytes is over the limit of 255 bytes', left(p_def ->> 'name', 40), octet_length(p_def ->> 'name'))
        when octet_length(p_def ->> 'queue') > 255
            then format('queue: %s... of %s bytes is over the limit of 255 bytes', left(p_def ->> 'queue', 40), octet_length(p_def ->> 'queue'))
        when jsonb_path_exists(p_def -> 'parameters', 'strict $.**{65}')
            then 'parameters: nested deeper than 64 levels'
    end
$$;

-- Upserts the task definitions (a JSON array, shape in docs/sql-api.md): a version older than the stored
-- one is ignored ('ignored_older'), the same version with the same content is 'unchanged', anything else is
-- 'applied'. Definitions left out of an applied registration become inactive (enqueue refuses them). The
-- version is bounded (0 .. 999999999999), so no caller can lock every later registration out with 2^63-1.
create or replace function anchor.register_tasks(definitions jsonb, version bigint default 0, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(register_tasks.p_now);
    v_registry anchor.task_registry;
    v_def record;
    v_where text;
    v_key text;
    v_problem text;
begin
    if jsonb_typeof(register_tasks.definitions) is distinct from 'array' then
        raise exception using errcode = 'AT003', message = 'register_tasks: definitions must be a JSON array of task definitions';
    end if;
    if register_tasks.version is null or register_tasks.version not between 0 and 999999999999 then
        raise exception using errcode = 'AT003',
            message = format('register_tasks: version %s must be a whole number from 0 to 999999999999', coalesce(register_tasks.version::text, 'null')),
            hint = 'A counter, a date like 20261202 or a Unix time all fit.';
    end if;

    for v_def in select e.value as d, e.ord - 1 as index
        from jsonb_array_elements(register_tasks.definitions) with ordinality as e (value, ord) loop
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

    select d ->> 'name' into v_key from jsonb_array_elements(register_tasks.definitions) as d
    group by d ->> 'name' having count(*) > 1 limit 1;
    if v_key is not null then
        raise exception using errcode = 'AT003', message = format('register_tasks: task %L is defined more than once', v_key);
    end if;

    -- serialise registrations so the version comparison and the upsert see one consistent registry
    perform pg_advisory_xact_lock(hashtext('anchor.register_tasks'));
    select * into v_registry from anchor.task_registry;
    if found and v_registry.version > register_tasks.version then
        return 'ignored_older';
    end if;
    if found and v_registry.version = register_tasks.version and v_registry.definitions = register_tasks.definitions then
        return 'unchanged';
    end if;

    insert into anchor.task_definitions as t (
        name, description, params_schema, retry_intervals, max_attempts, timeout, queue, priority, on_failed, cron, active, updated_at
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
        v_now
    from jsonb_array_elements(register_tasks.definitions) as d
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
        updated_at = excluded.updated_at;

    update anchor.task_definitions t set active = false, updated_at = v_now
    where t.active and not exists (
        select 1 from jsonb_array_elements(register_tasks.definitions) as d where d ->> 'name' = t.name
    );

    insert into anchor.task_registry (singleton, version, definitions, registered_at)
    values (true, register_tasks.version, register_tasks.definitions, v_now)
    on conflict (singleton) do update set
        version = excluded.version, definitions = excluded.definitions, registered_at = excluded.registered_at;
    return 'applied';
end;
$$;

-- Enqueueing -----------------------------------------------------------------------------------------

-- Raises AT002 when p_params does not fit the task's parameter schema, is too large, or holds what a
-- worker cannot load; names the task and JSON path.
create or replace function anchor.check_params(p_def anchor.task_definitions, p_params jsonb)
returns void
language plpgsql
stable
as $$
declare
    v_problem text;
begin
    if jsonb_typeof(p_params) is distinct from 'object' then
        raise exception using errcode = 'AT002',
            message = format('task %s: params must be a JSON object, got %s', p_def.name, coalesce(jsonb_typeof(p_params), 'null'));
    end if;
    v_problem := coalesce(
        anchor.params_size_problem(p_params),
        anchor.params_shape_problem(p_params),
        anchor.params_violation(p_def.params_schema, p_params)
    );
    if v_problem is not null then
        raise exception using errcode = 'AT002', message = format('task %s: params %s', p_def.name, v_problem);
    end if;
end;
$$;

-- Raises AT003 when a per-call override is out of range (the limits in this file's header); names the
-- task, the override and its value.
create or replace function anchor.check_overrides(
    p_task text, p_run_at timestamptz, p_delay interval, p_unique_tag text, p_retry_intervals interval[],
    p_max_attempts integer, p_timeout interval, p_queue text
)
returns void
language plpgsql
immutable
as $$
declare
    v_problem text;
begin
    v_problem := case
        when p_run_at is not null and p_delay is not null then 'give run_at or delay, not both'
        when p_delay < interval '0' then format('delay must not be negative, got %s', p_delay)
        when p_delay > anchor.longest_duration() then format('delay must be at most 100000 hours, got %s', p_delay)
        when p_unique_tag = '' then 'unique_tag must not be empty'
        when octet_length(p_unique_tag) > 1024
            then format('unique_tag %L... of %s bytes is over the limit of 1024 bytes', left(p_unique_tag, 40), octet_length(p_unique_tag))
        when cardinality(p_retry_intervals) = 0 then 'retry_intervals must not be empty'
        when array_ndims(p_retry_intervals) > 1 then format('retry_intervals must be a flat list, got %s', p_retry_intervals)
        when cardinality(p_retry_intervals) > 1000
            then format('retry_intervals must have at most 1000 entries, got %s', cardinality(p_retry_intervals))
        when exists (select 1 from unnest(p_retry_intervals) as i where i is null or i <= interval '0')
            then format('retry_intervals must all be above zero, got %s', p_retry_intervals)
        when exists (select 1 from unnest(p_retry_intervals) as i where i > anchor.longest_duration())
            then format('retry_intervals must all be at most 100000 hours, got %s', p_retry_intervals)
        when p_max_attempts is not null and p_max_attempts <> -1 and p_max_attempts < 1
            then format('max_attempts must be -1 (unlimited) or at least 1, got %s', p_max_attempts)
        when p_timeout <= interval '0' then format('timeout must be above zero, got %s', p_timeout)
        when p_timeout > anchor.longest_duration() then format('timeout must be at most 100000 hours, got %s', p_timeout)
        when btrim(p_queue) = '' then 'queue must not be empty'
        when octet_length(p_queue) > 255
            then format('queue %L... of %s bytes is over the limit of 255 bytes', left(p_queue, 40), octet_length(p_queue))
    end;
    if v_problem is not null then
        raise exception using errcode = 'AT003', message = format('task %s: %s', p_task, v_problem);
    end if;
end;
$$;

-- Raises AT003 naming the task and the value when run_at or scheduled_at is not a time a worker can use.
create function anchor.check_times(p_task text, p_run_at timestamptz, p_scheduled_at timestamptz)
returns void
language plpgsql
stable
as $$
declare
    v_problem text := coalesce(anchor.time_problem('run_at', p_run_at), anchor.time_problem('scheduled_at', p_scheduled_at));
begin
    if v_problem is not null then
        raise exception using errcode = 'AT003', message = format('task %s: %s', p_task, v_problem);
    end if;
end;
$$;

-- Inserts one task (→ pending), or returns the id of the live task of the same name already holding its
-- unique tag; a tag held by a live task of another name raises AT006 naming that name (never its id).
create or replace function anchor.enqueue(
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
    p_now timestamptz default null
)
returns bigint
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(enqueue.p_now);
    v_def anchor.task_definitions := anchor.definition_of(enqueue.name);
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
    -- a few rounds at most: each round either inserts, finds the live holder of the tag, or sees the
    -- holder finish in between; a holder invisible to the caller's snapshot would loop forever
    for v_round in 1..5 loop
        insert into anchor.tasks (
            name, params, queue, priority, max_attempts, retry_intervals, timeout, unique_tag,
            run_at, scheduled_at, created_at
        ) values (
            enqueue.name,
            enqueue.params,
            coalesce(enqueue.queue, v_def.queue),
            coalesce(enqueue.priority, v_def.priority),
            coalesce(enqueue.max_attempts, v_def.max_attempts),
            coalesce(enqueue.retry_intervals, v_def.retry_intervals),
            coalesce(enqueue.timeout, v_def.timeout),
            enqueue.unique_tag,
            coalesce(enqueue.run_at, v_now + coalesce(enqueue.delay, interval '0')),
            enqueue.scheduled_at,
            v_now
        )
        on conflict (unique_tag) where unique_tag is not null and state in ('pending', 'running', 'failing')
        do nothing
        returning id into v_id;
        if v_id is not null then
            return v_id;
        end if;
        select t.id, t.name into v_id, v_holder from anchor.tasks t
        where t.unique_tag = enqueue.unique_tag and t.state in ('pending', 'running', 'failing');
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
-- bounded too (max_enqueue_many_bytes), not only each element.
create or replace function anchor.enqueue_many(
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
    p_now timestamptz default null
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
            priority => enqueue_many.priority, queue => enqueue_many.queue, p_now => v_now
        ) order by e.ord) into v_ids
        from jsonb_array_elements(enqueue_many.params) with ordinality as e (value, ord);
        return coalesce(v_ids, '{}');
    end if;

    with inserted as (
        insert into anchor.tasks (
            name, params, queue, priority, max_attempts, retry_intervals, timeout, run_at, created_at
        )
        select
            enqueue_many.name,
            e.value,
            coalesce(enqueue_many.queue, v_def.queue),
            coalesce(enqueue_many.priority, v_def.priority),
            coalesce(enqueue_many.max_attempts, v_def.max_attempts),
            coalesce(enqueue_many.retry_intervals, v_def.retry_intervals),
            coalesce(enqueue_many.timeout, v_def.timeout),
            coalesce(enqueue_many.run_at, v_now + coalesce(enqueue_many.delay, interval '0')),
            v_now
        from jsonb_array_elements(enqueue_many.params) with ordinality as e (value, ord)
        order by e.ord
        returning id
    )
    -- identity values are assigned in insertion order, so sorting the ids restores the input order
    select array_agg(i.id order by i.id) into v_ids from inserted as i;
    return coalesce(v_ids, '{}');
end;
$$;

-- Claiming -------------------------------------------------------------------------------------------

-- Hands a worker up to max_tasks items of work: failing tasks whose hook must run (failing, leased) and
-- due pending tasks (pending → running; the only place attempts are counted); then a 'wake' row with the
-- earliest future run_at when the batch is not full, so an idle worker can set a timer. Every claimed row
-- takes a new fence token (fence + 1), which the worker passes to complete_v2, fail_v2, hand_back_v2,
-- finish_failure_v2 and fail_hook_v2. Times and durations it returns are clamped to what a worker can
-- decode, so a row written before the bounds of this migration cannot stop a worker either.
create function anchor.claim_v2(
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
                    and (claim_v2.task_names is null or t.name = any(claim_v2.task_names))
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
                        and (claim_v2.task_names is null or t.name = any(claim_v2.task_names))
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
                    and (claim_v2.task_names is null or t.name = any(claim_v2.task_names))
                order by t.priority, t.run_at, t.id
                limit claim_v2.max_tasks - v_claimed - cardinality(v_ids)
                for update skip locked
            ) as p
            order by p.priority, p.run_at, p.id
            limit claim_v2.max_tasks - v_claimed - cardinality(v_ids)
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
        from unnest(v_queues) as q (queue)
        cross join lateral (
            (select t.run_at from anchor.tasks t
                where t.state = 'pending' and t.queue = q.queue and t.run_at > v_now
                    and (claim_v2.task_names is null or t.name = any(claim_v2.task_names))
                order by t.run_at limit 1)
            union all
            (select t.run_at from anchor.tasks t
                where t.state = 'failing' and t.queue = q.queue and t.run_at > v_now and t.locked_by is null
                    and (claim_v2.task_names is null or t.name = any(claim_v2.task_names))
                order by t.run_at limit 1)
        ) as n;
    end if;
end;
$$;

-- claim for workers of the previous release: claim_v2 without the fence column (they fence by attempt).
create or replace function anchor.claim(
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
language sql
as $$
    select c.kind, c.id, c.name, c.params, c.attempt, c.hook_attempt, c.max_attempts, c.queue, c.priority, c.timeout,
        c.deadline, c.scheduled_at, c.run_at
    from anchor.claim_v2(worker_id, max_tasks, task_names, queues, hook_timeout, max_hook_attempts, p_now) as c
$$;

-- Finishing ------------------------------------------------------------------------------------------
-- Each _v2 function is fenced by (id, fence, worker); its v1 twin (for workers of the previous release)
-- finds the fence of the claim its (id, attempt, worker) names and calls it, so both share one body.

-- The fence of the claim a v1 call names by (id, attempt or hook attempt, worker), or -1 (matches none).
create function anchor.fence_of(p_id bigint, p_state text, p_attempt integer, p_worker_id text)
returns bigint
language sql
stable
as $$
    select coalesce((
        select t.fence from anchor.tasks t
        where t.id = p_id and t.state = p_state and t.locked_by = p_worker_id
            and case p_state when 'failing' then t.hook_attempts else t.attempts end = p_attempt
    ), -1)
$$;

-- Marks executions done (running → succeeded), fenced by (id, fence, worker); others come back 'stale',
-- and so does an id given twice (the execution succeeds once). Outcomes in input order.
create function anchor.complete_v2(ids bigint[], fences bigint[], worker_id text, p_now timestamptz default null)
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
        -- id = any(ids) drives the update from the primary key, whatever the statistics say
        where t.id = any(complete_v2.ids) and t.id = c.id and t.state = 'running' and t.fence = c.fence
            and t.locked_by = complete_v2.worker_id
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

-- complete for workers of the previous release, fenced by (id, attempt, worker).
create or replace function anchor.complete(ids bigint[], attempts integer[], worker_id text, p_now timestamptz default null)
returns table (id bigint, outcome text)
language plpgsql
as $$
#variable_conflict use_column
begin
    if cardinality(complete.ids) is distinct from cardinality(complete.attempts) then
        raise exception using errcode = 'AT003',
            message = format('complete: %s ids but %s attempts', cardinality(complete.ids), cardinality(complete.attempts));
    end if;
    return query
    select r.id, r.outcome from anchor.complete_v2(
        complete.ids,
        array(
            select anchor.fence_of(c.id, 'running', c.attempt, complete.worker_id)
            from unnest(complete.ids, complete.attempts) with ordinality as c (id, attempt, ord)
            order by c.ord
        ),
        complete.worker_id,
        complete.p_now
    ) as r;
end;
$$;

-- Ends a failed execution, fenced by (id, fence, worker): running → pending after the retry interval
-- ('retry'), or final when attempts are used up or the error is fatal: → failing with the hook leased to
-- this worker as hook attempt 1 under the same fence ('failing'), → failed when there is no hook
-- ('failed'); a requested cancel ends it → cancelled ('cancelled'). 'stale' (changing nothing) otherwise.
create function anchor.fail_v2(
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
            when 'retry' then v_now + anchor.retry_interval(t.retry_intervals, t.attempts)
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

-- fail for workers of the previous release, fenced by (id, attempt, worker).
create or replace function anchor.fail(
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
language sql
as $$
    select anchor.fail_v2(
        id, anchor.fence_of(id, 'running', attempt, worker_id), worker_id, error_message, error_type, error_traceback,
        fatal, record_event, hook_timeout, p_now
    )
$$;

-- Makes a failure final: failing → failed (lock released), fenced by (id, fence, worker). Called inside
-- the transaction that runs the onFailed hook, so the state change and the hook's writes commit together;
-- the row stays locked until then, so no other worker can take the hook meanwhile.
create function anchor.finish_failure_v2(id bigint, fence bigint, worker_id text, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(finish_failure_v2.p_now);
    v_hook_attempt integer;
begin
    update anchor.tasks t set state = 'failed', finished_at = v_now, deadline = null, locked_by = null
    where t.id = finish_failure_v2.id and t.state = 'failing' and t.fence = finish_failure_v2.fence
        and t.locked_by = finish_failure_v2.worker_id
    returning t.hook_attempts into v_hook_attempt;
    if v_hook_attempt is null then
        return 'stale';
    end if;
    insert into anchor.task_events (task_id, at, kind, attempt, worker_id, details)
    values (finish_failure_v2.id, v_now, 'failed', v_hook_attempt, finish_failure_v2.worker_id,
        jsonb_build_object('hook_attempt', v_hook_attempt));
    return 'failed';
end;
$$;

-- finish_failure for workers of the previous release, fenced by (id, hook attempt, worker).
create or replace function anchor.finish_failure(id bigint, hook_attempt integer, worker_id text, p_now timestamptz default null)
returns text
language sql
as $$
    select anchor.finish_failure_v2(id, anchor.fence_of(id, 'failing', hook_attempt, worker_id), worker_id, p_now)
$$;

-- Records a hook that raised (its transaction already rolled back): failing stays failing and the hook
-- runs again after the task's retry interval (at least one second, so never a hot loop) → 'retry', or,
-- when max_hook_attempts are spent, → hook_failed. Fenced by (id, fence, worker); 'stale' otherwise.
create function anchor.fail_hook_v2(
    id bigint,
    fence bigint,
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
    v_now timestamptz := anchor.clock(fail_hook_v2.p_now);
    v_outcome text;
    v_hook_attempt integer;
begin
    update anchor.tasks t set
        state = case when t.hook_attempts >= fail_hook_v2.max_hook_attempts then 'hook_failed' else 'failing' end,
        run_at = v_now + anchor.retry_interval(t.retry_intervals, t.hook_attempts),
        locked_by = null,
        deadline = null,
        last_error = fail_hook_v2.error_message,
        finished_at = case when t.hook_attempts >= fail_hook_v2.max_hook_attempts then v_now end
    where t.id = fail_hook_v2.id and t.state = 'failing' and t.fence = fail_hook_v2.fence
        and t.locked_by = fail_hook_v2.worker_id
    returning case t.state when 'hook_failed' then 'hook_failed' else 'retry' end, t.hook_attempts
    into v_outcome, v_hook_attempt;
    if v_outcome is null then
        return 'stale';
    end if;
    insert into anchor.task_events (task_id, at, kind, attempt, worker_id, error_type, message, traceback, details)
    values (fail_hook_v2.id, v_now, 'hook_error', v_hook_attempt, fail_hook_v2.worker_id, fail_hook_v2.error_type,
        fail_hook_v2.error_message, fail_hook_v2.error_traceback, jsonb_build_object('outcome', v_outcome));
    return v_outcome;
end;
$$;

-- fail_hook for workers of the previous release, fenced by (id, hook attempt, worker).
create or replace function anchor.fail_hook(
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
language sql
as $$
    select anchor.fail_hook_v2(
        id, anchor.fence_of(id, 'failing', hook_attempt, worker_id), worker_id, error_message, error_type,
        error_traceback, max_hook_attempts, p_now
    )
$$;

-- Graceful shutdown: running → pending, due now, with the attempt given back ('pending'); a task whose
-- cancel was requested → cancelled instead ('cancelled'). Fenced by (id, fence, worker); 'stale' otherwise.
create function anchor.hand_back_v2(ids bigint[], fences bigint[], worker_id text, p_now timestamptz default null)
returns table (id bigint, outcome text)
language plpgsql
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
        from unnest(hand_back_v2.ids, hand_back_v2.fences) as c (id, fence)
        where t.id = any(hand_back_v2.ids) and t.id = c.id and t.state = 'running' and t.fence = c.fence
            and t.locked_by = hand_back_v2.worker_id
        returning t.id, t.state, t.attempts
    ), recorded as (
        insert into anchor.task_events (task_id, at, kind, attempt, worker_id)
        select r.id, v_now, case r.state when 'cancelled' then 'cancelled' else 'handed_back' end,
            case r.state when 'cancelled' then r.attempts end, hand_back_v2.worker_id
        from returned as r
    )
    select c.id, case when c.first then coalesce(r.state, 'stale') else 'stale' end
    from (
        select u.id, u.ord, row_number() over (partition by u.id order by u.ord) = 1 as first
        from unnest(hand_back_v2.ids) with ordinality as u (id, ord)
    ) as c
    left join returned as r on r.id = c.id
    order by c.ord;
end;
$$;

-- hand_back for workers of the previous release, fenced by (id, attempt, worker).
create or replace function anchor.hand_back(ids bigint[], attempts integer[], worker_id text, p_now timestamptz default null)
returns table (id bigint, outcome text)
language plpgsql
as $$
#variable_conflict use_column
begin
    if cardinality(hand_back.ids) is distinct from cardinality(hand_back.attempts) then
        raise exception using errcode = 'AT003',
            message = format('hand_back: %s ids but %s attempts', cardinality(hand_back.ids), cardinality(hand_back.attempts));
    end if;
    return query
    select r.id, r.outcome from anchor.hand_back_v2(
        hand_back.ids,
        array(
            select anchor.fence_of(c.id, 'running', c.attempt, hand_back.worker_id)
            from unnest(hand_back.ids, hand_back.attempts) with ordinality as c (id, attempt, ord)
            order by c.ord
        ),
        hand_back.worker_id,
        hand_back.p_now
    ) as r;
end;
$$;

-- Operator actions -----------------------------------------------------------------------------------

-- The task row, locked, or AT004 naming the missing id (AT003 when no id is given at all).
create or replace function anchor.lock_task(p_id bigint)
returns anchor.tasks
language plpgsql
as $$
declare
    v_task anchor.tasks;
begin
    if p_id is null then
        raise exception using errcode = 'AT003', message = 'task id must not be null';
    end if;
    select * into v_task from anchor.tasks t where t.id = p_id for update;
    if not found then
        raise exception using errcode = 'AT004', message = format('task %s does not exist', p_id);
    end if;
    return v_task;
end;
$$;

-- Runs a task again now: pending → due now; failed | hook_failed | cancelled → pending with a fresh
-- attempt budget (history stays in task_events; the fence keeps growing). Other states raise AT005; a
-- unique tag now held by another live task raises AT006, also when that task took it a moment ago.
create or replace function anchor.retry_now(id bigint, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(retry_now.p_now);
    v_task anchor.tasks := anchor.lock_task(retry_now.id);
    v_holder bigint;
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
    where t.unique_tag = v_task.unique_tag and t.state in ('pending', 'running', 'failing');
    if v_holder is not null then
        raise exception using errcode = 'AT006',
            message = format('task %s: unique tag %L is held by live task %s', retry_now.id, v_task.unique_tag, v_holder);
    end if;
    begin
        update anchor.tasks t set
            state = 'pending', attempts = 0, hook_attempts = 0, rescues = 0, cancel_requested = false,
            run_at = v_now, locked_by = null, deadline = null, finished_at = null
        where t.id = retry_now.id;
    exception when unique_violation then
        -- a task that committed after the check above holds the tag now
        raise exception using errcode = 'AT006',
            message = format('task %s: unique tag %L was just taken by another live task', retry_now.id, v_task.unique_tag);
    end;
    insert into anchor.task_events (task_id, at, kind, details)
    values (retry_now.id, v_now, 'retried', jsonb_build_object('from_state', v_task.state));
    return 'pending';
end;
$$;

-- Runs a failed hook again: hook_failed → failing with a fresh hook budget, claimable now. AT006 as
-- retry_now when the task's unique tag is held by another live task.
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
    where t.unique_tag = v_task.unique_tag and t.state in ('pending', 'running', 'failing');
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

-- Workers and crash recovery -------------------------------------------------------------------------

-- Registers or refreshes the worker (info is shown on the dashboard: bounded like params); running tasks
-- it does not hold → pending with the attempt given back (→ cancelled when a cancel was requested),
-- failing leases it does not hold → released with the hook attempt given back; each with a 'handed_back'
-- event. Returns the held tasks whose cancel was requested. For a non-admin caller release_after is at
-- least worker_min_heartbeat_timeout, so no worker can release another's claims the moment they are made.
create or replace function anchor.heartbeat_v2(
    worker_id text,
    held_ids bigint[],
    info jsonb default null,
    release_after interval default '20 seconds',
    p_now timestamptz default null
)
returns bigint[]
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(heartbeat_v2.p_now);
    v_release_after interval := anchor.at_least_unless_admin(
        heartbeat_v2.release_after, anchor.interval_setting('worker_min_heartbeat_timeout')
    );
    v_problem text;
begin
    if coalesce(btrim(heartbeat_v2.worker_id), '') = '' then
        raise exception using errcode = 'AT003', message = 'heartbeat_v2: worker_id must not be empty';
    end if;
    if heartbeat_v2.held_ids is null then
        raise exception using errcode = 'AT003',
            message = format('heartbeat_v2: held_ids must be an array (empty when worker %s holds nothing)', heartbeat_v2.worker_id);
    end if;
    v_problem := case
        when octet_length(heartbeat_v2.worker_id) > 255
            then format('worker_id of %s bytes is over the limit of 255 bytes', octet_length(heartbeat_v2.worker_id))
        when pg_column_size(heartbeat_v2.info) > 65536
            then format('info of %s bytes is over the limit of 65536 bytes', pg_column_size(heartbeat_v2.info))
        else 'info ' || anchor.params_shape_problem(heartbeat_v2.info)
    end;
    if v_problem is not null then
        raise exception using errcode = 'AT003',
            message = format('heartbeat_v2: worker %s: %s', left(heartbeat_v2.worker_id, 40), v_problem);
    end if;
    insert into anchor.workers as w (worker_id, info, started_at, last_heartbeat)
    values (heartbeat_v2.worker_id, heartbeat_v2.info, v_now, v_now)
    on conflict (worker_id) do update set
        last_heartbeat = excluded.last_heartbeat, info = coalesce(excluded.info, w.info);

    with released as (
        update anchor.tasks t set
            state = case
                when t.state = 'failing' then 'failing'
                when t.cancel_requested then 'cancelled'
                else 'pending'
            end,
            attempts = t.attempts - (t.state = 'running' and not t.cancel_requested)::integer,
            hook_attempts = t.hook_attempts - (t.state = 'failing')::integer,
            run_at = v_now,
            locked_by = null,
            deadline = null,
            finished_at = case when t.state = 'running' and t.cancel_requested then v_now end
        where t.locked_by = heartbeat_v2.worker_id
            and t.state in ('running', 'failing')
            and t.id <> all(heartbeat_v2.held_ids)
            -- a claim younger than this may still be on its way to the worker
            and t.locked_at < v_now - v_release_after
        returning t.id, t.state
    )
    insert into anchor.task_events (task_id, at, kind, worker_id, details)
    select r.id, v_now, 'handed_back', heartbeat_v2.worker_id,
        jsonb_build_object('reason', 'not held by its worker', 'outcome', r.state)
    from released as r;

    return array(
        select t.id from anchor.tasks t
        where t.locked_by = heartbeat_v2.worker_id and t.state = 'running' and t.cancel_requested
            and t.id = any(heartbeat_v2.held_ids)
        order by t.id
    );
end;
$$;

-- A stopping worker leaves: its hook leases are released (claimable now, the hook attempt given back)
-- and its row is removed. Running tasks it still holds are left to rescue. A non-admin caller cannot
-- deregister a worker that still runs tasks (a stopping worker has handed them back first): worker ids
-- are not secrets, and deregistering a busy worker would let rescue take its tasks at once.
create or replace function anchor.deregister_worker(worker_id text, p_now timestamptz default null)
returns void
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(deregister_worker.p_now);
begin
    if not anchor.caller_is_admin() and exists (
        select 1 from anchor.tasks t where t.locked_by = deregister_worker.worker_id and t.state = 'running'
    ) then
        return;
    end if;
    update anchor.tasks t set
        locked_by = null, deadline = null, hook_attempts = t.hook_attempts - 1, run_at = v_now
    where t.locked_by = deregister_worker.worker_id and t.state = 'failing';
    delete from anchor.workers w where w.worker_id = deregister_worker.worker_id;
end;
$$;

-- Recovers work held by dead or hung workers (one caller at a time does it; others return nothing):
-- running → pending after the retry interval, → failing (hook) | failed when attempts or max_rescues are
-- used up, → cancelled when a cancel was requested; failing with a dead lease → claimable again, or
-- hook_failed when its hook attempts are spent. Each with a 'rescued' event. Each row is recovered on
-- its own: a row whose recovery raises → failed with the error, and the rest are recovered all the same.
-- For a non-admin caller heartbeat_timeout is at least worker_min_heartbeat_timeout and deadline_grace
-- at least 0, so no worker can declare live workers dead.
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
                        when 'pending' then v_now + anchor.retry_interval(t.retry_intervals, t.attempts)
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

-- Retention ------------------------------------------------------------------------------------------

-- Deletes up to batch_size finished tasks (succeeded older than succeeded_after; failed, hook_failed and
-- cancelled older than failed_after, by finished_at) and returns how many it deleted. For a non-admin
-- caller both periods are at least worker_min_retention: a worker cannot purge recent history.
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
    return v_deleted;
end;
$$;

-- Cron -----------------------------------------------------------------------------------------------
-- The cron functions a worker calls run on anchor.clock like the rest: a worker cannot fire a schedule
-- early or stamp it with a time from far away. Their bodies are 0002's otherwise.

-- The cron loop's first step, inside its transaction: locks (FOR UPDATE SKIP LOCKED, so concurrent loops
-- split the work) up to max_schedules unpaused schedules that are due (next_fire_at <= now) or need their
-- next fire time computed (null), with what the caller needs to plan the fires. Changes nothing.
create or replace function anchor.cron_take_due(max_schedules integer default 100, p_now timestamptz default null)
returns table (
    name text, expression text, timezone text, params jsonb, params_schema jsonb, catch_up integer,
    overlap text, next_fire_at timestamptz, db_now timestamptz
)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(p_now);
begin
    if cron_take_due.max_schedules is null or cron_take_due.max_schedules < 1 then
        raise exception using errcode = 'AT003',
            message = format('cron_take_due: max_schedules must be at least 1, got %s', cron_take_due.max_schedules);
    end if;
    return query
    select s.name, s.expression, s.timezone, s.params, d.params_schema, s.catch_up, s.overlap, s.next_fire_at, v_now
    from anchor.cron_schedules s
    inner join anchor.task_definitions d on d.name = s.name
    where not s.paused and (s.next_fire_at is null or s.next_fire_at <= v_now)
    order by s.next_fire_at nulls first, s.name
    limit cron_take_due.max_schedules
    for update of s skip locked;
end;
$$;

-- Fires one schedule: for each of fire_times (ascending, none in the future; fire_params holds the params
-- of each, a JSON array in the same order) records the fire in cron_fires and → 'enqueued' (a task with
-- scheduled_at = the fire time) or, with overlap 'skip' while the task of the schedule's previous fire is
-- still live (pending, running, failing), → 'skipped' (nothing enqueued); a fire time already recorded →
-- 'duplicate'. Then next_fire_at := the given one. Fenced: unless the schedule is unpaused and its
-- next_fire_at is still expected_next_fire_at, changes nothing and returns one 'stale' row. The new
-- next_fire_at must be within 100 years of now (AT003), so no schedule holds a time a worker cannot decode.
create or replace function anchor.cron_fire(
    name text,
    expected_next_fire_at timestamptz,
    fire_times timestamptz[],
    fire_params jsonb,
    next_fire_at timestamptz,
    missed integer default 0,
    p_now timestamptz default null
)
returns table (fire_at timestamptz, outcome text, task_id bigint)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(p_now);
    v_schedule anchor.cron_schedules := anchor.lock_cron_schedule(cron_fire.name);
    v_blocker bigint;
    v_fire record;
    v_inserted boolean;
    v_task_id bigint;
    v_last_task_id bigint;
    v_fired integer := 0;
    v_skipped integer := 0;
    v_latest timestamptz;
begin
    if cron_fire.next_fire_at is null then
        raise exception using errcode = 'AT003',
            message = format('cron_fire %s: next_fire_at must not be null', cron_fire.name);
    end if;
    if anchor.time_problem('next_fire_at', cron_fire.next_fire_at) is not null then
        raise exception using errcode = 'AT003',
            message = format('cron_fire %s: %s', cron_fire.name, anchor.time_problem('next_fire_at', cron_fire.next_fire_at));
    end if;
    if jsonb_typeof(cron_fire.fire_params) is distinct from 'array'
        or jsonb_array_length(cron_fire.fire_params) <> coalesce(cardinality(cron_fire.fire_times), 0) then
        raise exception using errcode = 'AT003',
            message = format('cron_fire %s: fire_params must be a JSON array with one object per fire time (%s fire times), got %s',
                cron_fire.name, coalesce(cardinality(cron_fire.fire_times), 0), cron_fire.fire_params);
    end if;
    if exists (
        select 1 from unnest(cron_fire.fire_times) as f (at)
        where f.at is null or f.at > v_now or f.at >= cron_fire.next_fire_at
    ) then
        raise exception using errcode = 'AT003',
            message = format('cron_fire %s: fire times %s must not be null, in the future (now %s) or at or after next_fire_at %s',
                cron_fire.name, cron_fire.fire_times, v_now, cron_fire.next_fire_at);
    end if;
    if coalesce(cron_fire.missed, -1) < 0 then
        raise exception using errcode = 'AT003',
            message = format('cron_fire %s: missed must be >= 0, got %s', cron_fire.name, cron_fire.missed);
    end if;

    if v_schedule.paused or v_schedule.next_fire_at is distinct from cron_fire.expected_next_fire_at then
        fire_at := null;
        outcome := 'stale';
        task_id := null;
        return next;
        return;
    end if;

    -- overlap is judged against the fires before this call: catch-up fires of one call do not block
    -- each other (catch_up asked for them)
    if v_schedule.overlap = 'skip' and v_schedule.last_task_id is not null then
        select t.id into v_blocker from anchor.tasks t
        where t.id = v_schedule.last_task_id and t.state in ('pending', 'running', 'failing');
    end if;
    v_last_task_id := v_schedule.last_task_id;

    for v_fire in
        select f.at, f.ord from unnest(cron_fire.fire_times) with ordinality as f (at, ord) order by f.at
    loop
        insert into anchor.cron_fires as c (name, fire_at, outcome, task_id, recorded_at)
        values (cron_fire.name, v_fire.at, case when v_blocker is null then 'enqueued' else 'skipped' end, v_blocker, v_now)
        on conflict do nothing
        returning true into v_inserted;
        fire_at := v_fire.at;
        if v_inserted is null then
            outcome := 'duplicate';
            task_id := null;
        elsif v_blocker is not null then
            outcome := 'skipped';
            task_id := v_blocker;
            v_skipped := v_skipped + 1;
        else
            v_task_id := anchor.enqueue(
                name => cron_fire.name,
                params => cron_fire.fire_params -> (v_fire.ord::integer - 1),
                scheduled_at => v_fire.at,
                p_now => v_now
            );
            update anchor.cron_fires c set task_id = v_task_id
            where c.name = cron_fire.name and c.fire_at = v_fire.at;
            outcome := 'enqueued';
            task_id := v_task_id;
            v_last_task_id := v_task_id;
            v_fired := v_fired + 1;
        end if;
        v_inserted := null;
        v_latest := greatest(v_latest, v_fire.at);
        return next;
    end loop;

    update anchor.cron_schedules s set
        next_fire_at = cron_fire.next_fire_at,
        last_fired_at = greatest(s.last_fired_at, v_latest),
        last_task_id = v_last_task_id,
        fired_count = s.fired_count + v_fired,
        skipped_count = s.skipped_count + v_skipped,
        missed_count = s.missed_count + cron_fire.missed,
        updated_at = v_now
    where s.name = cron_fire.name;

    -- the fence on next_fire_at already rules out re-firing times this old; keep the key table small
    delete from anchor.cron_fires c where c.name = cron_fire.name and c.fire_at < v_now - interval '1 day';
end;
$$;

-- Pauses a schedule because it failed at run time (bad expression or zone, params that cannot be built
-- or do not fit the schema): → paused, the error recorded. The cron loop goes on with other schedules.
create or replace function anchor.cron_fail(name text, error_message text, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(p_now);
    v_schedule anchor.cron_schedules := anchor.lock_cron_schedule(cron_fail.name);
begin
    update anchor.cron_schedules s set
        paused = true,
        paused_at = coalesce(s.paused_at, v_now),
        last_error = cron_fail.error_message,
        last_error_at = v_now,
        updated_at = v_now
    where s.name = v_schedule.name;
    return 'paused';
end;
$$;

-- When the cron loop should next look: the earliest next_fire_at of the unpaused schedules (a schedule
-- still to be computed counts as now; null when there are none), with the clock it was read on so the
-- caller sleeps a duration measured on the database clock.
create or replace function anchor.cron_next_wake(p_now timestamptz default null)
returns table (wake_at timestamptz, db_now timestamptz)
language sql
stable
as $$
    select min(coalesce(s.next_fire_at, anchor.clock(p_now))), anchor.clock(p_now)
    from anchor.cron_schedules s
    where not s.paused
$$;

-- Roles ----------------------------------------------------------------------------------------------

-- As 0004's apply_privileges, and what its comment promised: a function_roles row covers the function of
-- that name and its versioned twins (claim → claim_v2, claim_v3, ...), each granted like the original.
create or replace function anchor.apply_privileges()
returns void
language plpgsql
as $$
declare
    v_function record;
begin
    execute 'revoke all on all functions in schema anchor from public';
    for v_function in
        select distinct p.oid::regprocedure as signature, r.role_name
        from pg_catalog.pg_proc as p
        inner join anchor.function_roles as r
            on p.proname = r.function_name or p.proname ~ ('^' || r.function_name || '_v[0-9]+$')
        where p.pronamespace = 'anchor'::regnamespace
    loop
        -- every object the functions use is schema-qualified; pg_temp last so it can never shadow them
        execute format(
            'alter function %s security definer set search_path = pg_catalog, pg_temp', v_function.signature
        );
        if exists (select 1 from pg_catalog.pg_roles where rolname = v_function.role_name) then
            execute format('grant execute on function %s to %I', v_function.signature, v_function.role_name);
        end if;
    end loop;
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'anchor_enqueuer') then
        execute 'grant usage on schema anchor to anchor_enqueuer';
    end if;
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'anchor_admin') then
        execute 'grant usage on schema anchor to anchor_admin';
        execute 'grant select, insert, update, delete on all tables in schema anchor to anchor_admin';
        execute 'grant execute on all functions in schema anchor to anchor_admin';
    end if;
end;
$$;

comment on table anchor.function_roles is
'Which role may call each API function; a row covers the function of that name and its _vN twins.';

-- listed too, so function_roles stays the one list of what each role may call
insert into anchor.function_roles (function_name, role_name) values
('claim_v2', 'anchor_worker'),
('complete_v2', 'anchor_worker'),
('fail_v2', 'anchor_worker'),
('finish_failure_v2', 'anchor_worker'),
('fail_hook_v2', 'anchor_worker'),
('hand_back_v2', 'anchor_worker');

-- create or replace dropped the SECURITY DEFINER and search_path of the functions replaced above
select anchor.apply_privileges();
