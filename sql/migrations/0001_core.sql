-- 0001_core: the task queue itself.
--
-- Why in the database: enqueueing, claiming, retry-interval selection, unique tags, the final-failure
-- transition and crash recovery all live here, so a task enqueued from Python, from psql or from any
-- other client gets the same guarantees, and the Python worker stays a thin layer that calls these
-- functions. Every function that reads the clock takes p_now so tests control time instead of sleeping.
--
-- Error codes (SQLSTATE) raised here are stable and documented in docs/sql-api.md:
--   AT001 unknown task name          AT002 params do not match the task's schema
--   AT003 bad argument                AT004 no such task
--   AT005 transition not allowed      AT006 unique tag held by another live task

create schema if not exists anchor;

create table anchor.schema_migrations (
    version integer primary key,
    name text not null,
    checksum text not null,
    applied_at timestamptz not null default now()
);

-- The registered task definitions: the defaults every enqueue starts from.
create table anchor.task_definitions (
    name text primary key,
    description text,
    params_schema jsonb not null,
    retry_intervals interval[] not null,
    max_attempts integer not null,
    timeout interval not null,
    queue text not null,
    priority integer not null,
    on_failed boolean not null,
    cron jsonb,
    active boolean not null default true,
    updated_at timestamptz not null
);

-- One row: the version and content of the last applied registration, so an older worker restarting
-- cannot roll the definitions back.
create table anchor.task_registry (
    singleton boolean primary key default true check (singleton),
    version bigint not null,
    definitions jsonb not null,
    registered_at timestamptz not null
);

create table anchor.tasks (
    id bigint generated always as identity primary key,
    name text not null,
    params jsonb not null,
    state text not null default 'pending' check (
        state in ('pending', 'running', 'succeeded', 'failing', 'failed', 'hook_failed', 'cancelled')
    ),
    queue text not null,
    priority integer not null,
    attempts integer not null default 0,
    max_attempts integer not null check (max_attempts = -1 or max_attempts >= 1),
    retry_intervals interval[] not null,
    timeout interval not null,
    unique_tag text,
    run_at timestamptz not null,
    scheduled_at timestamptz,
    locked_by text,
    locked_at timestamptz,
    deadline timestamptz,
    cancel_requested boolean not null default false,
    rescues integer not null default 0,
    hook_attempts integer not null default 0,
    last_error text,
    created_at timestamptz not null,
    finished_at timestamptz
);

-- The claim path: due pending tasks of one queue in claim order. Stays an index scan at any table size.
create index tasks_claim_idx on anchor.tasks (queue, priority, run_at, id) where state = 'pending';
-- Rescued tasks waiting to run again: claimed one per worker at a time (see anchor.claim).
create index tasks_rescued_claim_idx on anchor.tasks (queue, priority, run_at, id)
where state = 'pending' and rescues > 0;
-- Failing tasks whose onFailed hook still has to run.
create index tasks_hook_claim_idx on anchor.tasks (queue, priority, run_at, id) where state = 'failing';
-- The earliest future run_at per queue, so an idle worker sets a timer instead of scanning.
create index tasks_next_run_idx on anchor.tasks (queue, run_at) where state = 'pending';
-- Tasks some worker holds: rescue, heartbeat and hand-back look here.
create index tasks_held_idx on anchor.tasks (locked_by) where state in ('running', 'failing');
-- One live task per unique tag; finished tasks free the tag.
create unique index tasks_unique_tag_idx on anchor.tasks (unique_tag)
where unique_tag is not null and state in ('pending', 'running', 'failing');

-- Errors and transitions. A plain success writes none.
create table anchor.task_events (
    id bigint generated always as identity primary key,
    task_id bigint not null references anchor.tasks (id) on delete cascade,
    at timestamptz not null,
    kind text not null,
    attempt integer,
    worker_id text,
    error_type text,
    message text,
    traceback text,
    details jsonb
);
create index task_events_task_idx on anchor.task_events (task_id, id);

-- Limits an operator may change (update anchor.settings set value = ... where name = ...). A table, not
-- a session setting: a session setting is any caller's to change, so it could not bind the app's role.
create table anchor.settings (
    name text primary key,
    value text not null,
    description text not null
);
insert into anchor.settings (name, value, description) values
('max_params_bytes', '1048576', 'largest params document enqueue accepts, in bytes (pg_column_size)');

create table anchor.workers (
    worker_id text primary key,
    info jsonb,
    started_at timestamptz not null,
    last_heartbeat timestamptz not null
);

-- Durations ------------------------------------------------------------------------------------------

-- Parses one duration ('500ms', '5s', '30m', '1h30m', '1.5h'); null when the text is not one.
-- Exact in microseconds (half away from zero); the Python twin is anchor_py.durations.
create function anchor.try_parse_duration(p_text text)
returns interval
language plpgsql
immutable
as $$
declare
    v_text text := btrim(p_text);
    v_part text[];
    v_micros numeric := 0;
begin
    if v_text is null or v_text !~ '^([0-9]+(\.[0-9]+)?(h|ms|m|s))+$' then
        return null;
    end if;
    for v_part in select regexp_matches(v_text, '([0-9]+(?:\.[0-9]+)?)(h|ms|m|s)', 'g') loop
        v_micros := v_micros + v_part[1]::numeric * case v_part[2]
            when 'h' then 3600000000
            when 'm' then 60000000
            when 's' then 1000000
            else 1000
        end;
    end loop;
    v_micros := round(v_micros);
    -- zero is not a duration, and 100000h keeps every value far inside interval and timedelta range
    if v_micros <= 0 or v_micros > 360000000000000 then
        return null;
    end if;
    return v_micros::bigint * interval '1 microsecond';
end;
$$;

-- Parses one duration or raises AT003 naming the bad text.
create function anchor.parse_duration(p_text text)
returns interval
language plpgsql
immutable
as $$
declare
    v_value interval := anchor.try_parse_duration(p_text);
begin
    if v_value is null then
        raise exception using
            errcode = 'AT003',
            message = format('%L is not a duration', p_text),
            hint = 'Use a number and a unit (h, m, s, ms), e.g. 500ms, 5s, 30m, 1h30m; it must be above zero.';
    end if;
    return v_value;
end;
$$;

-- Parses a comma-separated backoff list ('1m,2m,4m'); null when any entry is not a duration.
create function anchor.try_parse_intervals(p_text text)
returns interval[]
language sql
immutable
as $$
    select case when bool_and(v.value is not null) then array_agg(v.value order by e.ord) end
    from unnest(string_to_array(p_text, ',')) with ordinality as e (entry, ord)
    cross join lateral (select anchor.try_parse_duration(e.entry) as value) as v
$$;

-- Parses a backoff list or raises AT003 naming the bad text.
create function anchor.parse_intervals(p_text text)
returns interval[]
language plpgsql
immutable
as $$
declare
    v_value interval[] := anchor.try_parse_intervals(p_text);
begin
    if v_value is null then
        raise exception using
            errcode = 'AT003',
            message = format('%L is not a duration or a comma-separated list of durations', p_text),
            hint = 'Examples: 30m, or 1m,2m,4m,8m (retry k waits the k-th entry; the last repeats).';
    end if;
    return v_value;
end;
$$;

-- The backoff rule, in one place: retry k waits entry k of the list; past its end the last entry repeats.
create function anchor.retry_interval(intervals interval[], retry integer)
returns interval
language sql
immutable
as $$
    select coalesce(intervals[least(greatest(retry, 1), cardinality(intervals))], interval '0')
$$;

-- Parameter validation ------------------------------------------------------------------------------

-- The first problem that makes p_schema unusable ('<path>: <problem>'), or null. Only the JSON Schema
-- keywords the generator supports are allowed, so Python and SQL validation can never disagree.
create function anchor.schema_problem(p_schema jsonb, p_path text default '$')
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
    if p_schema ? 'required' and jsonb_typeof(p_schema -> 'required') <> 'array' then
        return format('%s.required: must be an array of property names', p_path);
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

-- Whether p_text is a calendar date 'YYYY-MM-DD' (year 1..9999), checked without raising.
create function anchor.is_iso_date(p_text text)
returns boolean
language sql
immutable
as $$
    select coalesce((
        select m[1]::int >= 1 and m[2]::int between 1 and 12 and m[3]::int between 1 and extract(
            day from make_date(m[1]::int, m[2]::int, 1) + interval '1 month - 1 day'
        )
        from regexp_match(p_text, '^([0-9]{4})-([0-9]{2})-([0-9]{2})$') as m
        where m[1]::int >= 1 and m[2]::int between 1 and 12
    ), false)
$$;

-- Whether p_text is an RFC 3339 date-time with an offset ('2026-01-31T09:30:00Z', '...+08:00').
create function anchor.is_iso_datetime(p_text text)
returns boolean
language sql
immutable
as $$
    select coalesce((
        select anchor.is_iso_date(m[1]) and m[2]::int <= 23 and m[3]::int <= 59 and m[4]::int <= 59
            and (m[5] is null or m[5]::int <= 23) and (m[6] is null or m[6]::int <= 59)
        from regexp_match(
            p_text,
            '^([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?(?:[Zz]|[+-]([0-9]{2}):([0-9]{2}))$'
        ) as m
    ), false)
$$;

-- The first way p_value breaks p_schema ('<json path>: <problem>'), or null when it fits.
-- A null value for a property that is not required counts as absent.
create function anchor.params_violation(p_schema jsonb, p_value jsonb, p_path text default '$')
returns text
language plpgsql
immutable
as $$
declare
    v_type text := p_schema ->> 'type';
    v_actual text := jsonb_typeof(p_value);
    v_number numeric;
    v_text text;
    v_key text;
    v_problem text;
    v_item record;
begin
    if p_schema ? 'enum' and not exists (
        select 1 from jsonb_array_elements(p_schema -> 'enum') as e (value) where e.value = p_value
    ) then
        return format('%s: %s is not one of %s', p_path, p_value, p_schema -> 'enum');
    end if;

    if v_type = 'integer' then
        if v_actual <> 'number' then
            return format('%s: expected an integer, got %s', p_path, v_actual);
        end if;
        v_number := (p_value #>> '{}')::numeric;
        -- 1.0 is written as a fraction: strict clients (pydantic) refuse it as an integer, so do we
        if scale(v_number) > 0 then
            return format('%s: expected an integer, got %s', p_path, p_value);
        end if;
        if p_schema ->> 'format' = 'int32' and v_number not between -2147483648 and 2147483647 then
            return format('%s: %s is out of range for int32', p_path, p_value);
        end if;
        if p_schema ->> 'format' = 'int64' and v_number not between -9223372036854775808 and 9223372036854775807 then
            return format('%s: %s is out of range for int64', p_path, p_value);
        end if;
    elsif v_type = 'number' then
        if v_actual <> 'number' then
            return format('%s: expected a number, got %s', p_path, v_actual);
        end if;
        v_number := (p_value #>> '{}')::numeric;
    elsif v_type = 'boolean' and v_actual <> 'boolean' then
        return format('%s: expected a boolean, got %s', p_path, v_actual);
    elsif v_type = 'string' then
        if v_actual <> 'string' then
            return format('%s: expected a string, got %s', p_path, v_actual);
        end if;
        v_text := p_value #>> '{}';
        if (p_schema ->> 'minLength')::int > length(v_text) then
            return format('%s: shorter than minLength %s', p_path, p_schema ->> 'minLength');
        end if;
        if (p_schema ->> 'maxLength')::int < length(v_text) then
            return format('%s: longer than maxLength %s', p_path, p_schema ->> 'maxLength');
        end if;
        if p_schema ->> 'format' = 'date' and not anchor.is_iso_date(v_text) then
            return format('%s: %s is not a date (YYYY-MM-DD)', p_path, p_value);
        end if;
        if p_schema ->> 'format' = 'date-time' and not anchor.is_iso_datetime(v_text) then
            return format('%s: %s is not a date-time with an offset (RFC 3339)', p_path, p_value);
        end if;
    elsif v_type = 'array' then
        if v_actual <> 'array' then
            return format('%s: expected an array, got %s', p_path, v_actual);
        end if;
        if p_schema ? 'items' then
            for v_item in select e.value, e.ord - 1 as index
                from jsonb_array_elements(p_value) with ordinality as e (value, ord) loop
                v_problem := anchor.params_violation(p_schema -> 'items', v_item.value, format('%s[%s]', p_path, v_item.index));
                if v_problem is not null then
                    return v_problem;
                end if;
            end loop;
        end if;
    elsif v_type = 'object' then
        if v_actual <> 'object' then
            return format('%s: expected an object, got %s', p_path, v_actual);
        end if;
        select r into v_key from jsonb_array_elements_text(coalesce(p_schema -> 'required', '[]')) as r
        where coalesce(jsonb_typeof(p_value -> r), 'null') = 'null'
        limit 1;
        if v_key is not null then
            return format('%s.%s: is required', p_path, v_key);
        end if;
        for v_key in select k from jsonb_object_keys(p_value) as k order by k loop
            if p_schema -> 'properties' ? v_key then
                if jsonb_typeof(p_value -> v_key) <> 'null' then
                    v_problem := anchor.params_violation(p_schema -> 'properties' -> v_key, p_value -> v_key, p_path || '.' || v_key);
                    if v_problem is not null then
                        return v_problem;
                    end if;
                end if;
            elsif p_schema -> 'additionalProperties' = 'false'::jsonb then
                return format('%s.%s: unknown property (additionalProperties is false)', p_path, v_key);
            end if;
        end loop;
    end if;

    if v_number is not null and (p_schema ->> 'minimum')::numeric > v_number then
        return format('%s: %s is below the minimum %s', p_path, p_value, p_schema ->> 'minimum');
    end if;
    if v_number is not null and (p_schema ->> 'maximum')::numeric < v_number then
        return format('%s: %s is above the maximum %s', p_path, p_value, p_schema ->> 'maximum');
    end if;
    return null;
end;
$$;

-- Registration ---------------------------------------------------------------------------------------

-- The first problem in one task definition ('<key>: <problem>'), or null. Shape in docs/sql-api.md.
create function anchor.definition_problem(p_def jsonb)
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
        'on_failed', 'cron'
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
    return null;
end;
$$;

-- Upserts the task definitions (a JSON array, shape in docs/sql-api.md): a version older than the stored
-- one is ignored ('ignored_older'), the same version with the same content is 'unchanged', anything else is
-- 'applied'. Definitions left out of an applied registration become inactive (enqueue refuses them).
create function anchor.register_tasks(definitions jsonb, version bigint default 0, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
    v_registry anchor.task_registry;
    v_def record;
    v_where text;
    v_key text;
    v_problem text;
begin
    if jsonb_typeof(register_tasks.definitions) is distinct from 'array' then
        raise exception using errcode = 'AT003', message = 'register_tasks: definitions must be a JSON array of task definitions';
    end if;

    for v_def in select e.value as d, e.ord - 1 as index
        from jsonb_array_elements(register_tasks.definitions) with ordinality as e (value, ord) loop
        v_where := format('definitions[%s]', v_def.index);
        if jsonb_typeof(v_def.d) <> 'object' or jsonb_typeof(v_def.d -> 'name') is distinct from 'string'
            or btrim(v_def.d ->> 'name') = '' then
            raise exception using errcode = 'AT003', message = format('register_tasks: %s must be an object with a non-empty "name"', v_where);
        end if;
        v_problem := anchor.definition_problem(v_def.d);
        if v_problem is not null then
            raise exception using errcode = 'AT003',
                message = format('register_tasks: %s (%s).%s', v_where, v_def.d ->> 'name', v_problem);
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

-- The active definition of a task, or AT001 naming the unknown name.
create function anchor.definition_of(p_name text)
returns anchor.task_definitions
language plpgsql
stable
as $$
declare
    v_def anchor.task_definitions;
begin
    select * into v_def from anchor.task_definitions d where d.name = p_name and d.active;
    if not found then
        raise exception using
            errcode = 'AT001',
            message = format('unknown task %L', p_name),
            hint = 'Register the task definitions first (anchor register), or check the spelling.';
    end if;
    return v_def;
end;
$$;

-- '$: <n> bytes is over the limit' when a params document is larger than the setting max_params_bytes
-- (anchor.settings, 1 MiB by default), else null.
create function anchor.params_size_problem(p_params jsonb)
returns text
language sql
stable
as $$
    select format('$: %s bytes is over the limit of %s bytes (anchor.settings max_params_bytes)', s.size, s.max_size)
    from (
        select
            pg_column_size(p_params) as size,
            (select c.value::bigint from anchor.settings c where c.name = 'max_params_bytes') as max_size
    ) as s
    where s.size > s.max_size
$$;

-- Raises AT002 when p_params does not fit the task's parameter schema; names the task and JSON path.
create function anchor.check_params(p_def anchor.task_definitions, p_params jsonb)
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
    v_problem := coalesce(anchor.params_size_problem(p_params), anchor.params_violation(p_def.params_schema, p_params));
    if v_problem is not null then
        raise exception using errcode = 'AT002', message = format('task %s: params %s', p_def.name, v_problem);
    end if;
end;
$$;

-- Raises AT003 when a per-call override is out of range; names the task and the override.
create function anchor.check_overrides(
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
        when p_unique_tag = '' then 'unique_tag must not be empty'
        when cardinality(p_retry_intervals) = 0 then 'retry_intervals must not be empty'
        when exists (select 1 from unnest(p_retry_intervals) as i where i is null or i <= interval '0')
            then format('retry_intervals must all be above zero, got %s', p_retry_intervals)
        when p_max_attempts is not null and p_max_attempts <> -1 and p_max_attempts < 1
            then format('max_attempts must be -1 (unlimited) or at least 1, got %s', p_max_attempts)
        when p_timeout <= interval '0' then format('timeout must be above zero, got %s', p_timeout)
        when btrim(p_queue) = '' then 'queue must not be empty'
    end;
    if v_problem is not null then
        raise exception using errcode = 'AT003', message = format('task %s: %s', p_task, v_problem);
    end if;
end;
$$;

-- Inserts one task (→ pending), or returns the id of the live task already holding its unique tag.
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
    p_now timestamptz default null
)
returns bigint
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
    v_def anchor.task_definitions := anchor.definition_of(enqueue.name);
    v_id bigint;
begin
    perform anchor.check_params(v_def, enqueue.params);
    -- most calls override nothing: skip the checks then
    if num_nonnulls(
        enqueue.run_at, enqueue.delay, enqueue.unique_tag, enqueue.retry_intervals, enqueue.max_attempts,
        enqueue.timeout, enqueue.queue
    ) > 0 then
        perform anchor.check_overrides(
            enqueue.name, enqueue.run_at, enqueue.delay, enqueue.unique_tag, enqueue.retry_intervals,
            enqueue.max_attempts, enqueue.timeout, enqueue.queue
        );
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
        select t.id into v_id from anchor.tasks t
        where t.unique_tag = enqueue.unique_tag and t.state in ('pending', 'running', 'failing');
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
-- With unique_tags (one per element) each goes through enqueue for its deduplication.
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
    p_now timestamptz default null
)
returns bigint[]
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
    v_def anchor.task_definitions := anchor.definition_of(enqueue_many.name);
    v_element record;
    v_problem text;
    v_ids bigint[];
begin
    if jsonb_typeof(enqueue_many.params) is distinct from 'array' then
        raise exception using errcode = 'AT002',
            message = format('task %s: enqueue_many takes params as a JSON array of objects, got %s',
                enqueue_many.name, coalesce(jsonb_typeof(enqueue_many.params), 'null'));
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

-- NOTIFY on channel anchor_tasks (payload: the queue) when tasks become claimable now. PostgreSQL
-- delivers identical notifications of one transaction once, so a queue is notified once per transaction.

-- Inserts: one call per statement (an enqueue_many of 1000 tasks is one trigger call, not 1000).
create function anchor.notify_due_tasks()
returns trigger
language plpgsql
as $$
begin
    perform pg_notify('anchor_tasks', d.queue)
    from (
        select distinct n.queue from new_rows as n
        -- claimable: pending, or failing with its hook not leased to a worker
        where n.state in ('pending', 'failing') and n.locked_by is null and n.run_at <= now()
    ) as d;
    return null;
end;
$$;

create trigger tasks_notify_insert after insert on anchor.tasks
referencing new table as new_rows
for each statement execute function anchor.notify_due_tasks();

-- Updates (a retry due now, retry_now, a released hook lease): per row, but the WHEN clause is evaluated
-- without calling anything, so the hot updates (claim: → running, complete: → succeeded) cost nothing.
create function anchor.notify_due_task()
returns trigger
language plpgsql
as $$
begin
    if new.run_at <= now() then
        perform pg_notify('anchor_tasks', new.queue);
    end if;
    return null;
end;
$$;

create trigger tasks_notify_update after update of state, run_at, locked_by on anchor.tasks
for each row
when (new.state in ('pending', 'failing') and new.locked_by is null)
execute function anchor.notify_due_task();

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

-- Operator actions -----------------------------------------------------------------------------------

-- The task row, locked, or AT004 naming the missing id.
create function anchor.lock_task(p_id bigint)
returns anchor.tasks
language plpgsql
as $$
declare
    v_task anchor.tasks;
begin
    select * into v_task from anchor.tasks t where t.id = p_id for update;
    if not found then
        raise exception using errcode = 'AT004', message = format('task %s does not exist', p_id);
    end if;
    return v_task;
end;
$$;

-- Cancels a task: pending → cancelled ('cancelled'); running → cancel requested, its worker is notified
-- and ends the attempt as cancelled ('cancel_requested'). Other states raise AT005.
create function anchor.cancel(id bigint, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
    v_task anchor.tasks := anchor.lock_task(cancel.id);
begin
    if v_task.state = 'pending' then
        update anchor.tasks t set state = 'cancelled', finished_at = v_now where t.id = cancel.id;
        insert into anchor.task_events (task_id, at, kind, attempt) values (cancel.id, v_now, 'cancelled', v_task.attempts);
        return 'cancelled';
    elsif v_task.state = 'running' then
        if not v_task.cancel_requested then
            update anchor.tasks t set cancel_requested = true where t.id = cancel.id;
            insert into anchor.task_events (task_id, at, kind, attempt, worker_id)
            values (cancel.id, v_now, 'cancel_requested', v_task.attempts, v_task.locked_by);
        end if;
        perform pg_notify('anchor_cancel', cancel.id::text);
        return 'cancel_requested';
    end if;
    raise exception using errcode = 'AT005',
        message = format('task %s is %s; only pending or running tasks can be cancelled', cancel.id, v_task.state);
end;
$$;

-- Runs a task again now: pending → due now; failed | hook_failed | cancelled → pending with a fresh
-- attempt budget (history stays in task_events). Other states raise AT005; a unique tag now held by
-- another live task raises AT006.
create function anchor.retry_now(id bigint, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
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
    update anchor.tasks t set
        state = 'pending', attempts = 0, hook_attempts = 0, rescues = 0, cancel_requested = false,
        run_at = v_now, locked_by = null, deadline = null, finished_at = null
    where t.id = retry_now.id;
    insert into anchor.task_events (task_id, at, kind, details)
    values (retry_now.id, v_now, 'retried', jsonb_build_object('from_state', v_task.state));
    return 'pending';
end;
$$;

-- Runs a failed hook again: hook_failed → failing with a fresh hook budget, claimable now.
create function anchor.retry_hook(id bigint, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
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
    update anchor.tasks t set
        state = 'failing', hook_attempts = 0, run_at = v_now, locked_by = null, deadline = null, finished_at = null
    where t.id = retry_hook.id;
    insert into anchor.task_events (task_id, at, kind) values (retry_hook.id, v_now, 'hook_retried');
    return 'failing';
end;
$$;

-- Workers and crash recovery -------------------------------------------------------------------------

-- Registers or refreshes a worker; returns its running tasks whose cancel was requested (a fallback for
-- a missed anchor_cancel notification).
create function anchor.heartbeat(worker_id text, info jsonb default null, p_now timestamptz default null)
returns bigint[]
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
begin
    if coalesce(btrim(heartbeat.worker_id), '') = '' then
        raise exception using errcode = 'AT003', message = 'heartbeat: worker_id must not be empty';
    end if;
    insert into anchor.workers as w (worker_id, info, started_at, last_heartbeat)
    values (heartbeat.worker_id, heartbeat.info, v_now, v_now)
    on conflict (worker_id) do update set
        last_heartbeat = excluded.last_heartbeat, info = coalesce(excluded.info, w.info);
    return array(
        select t.id from anchor.tasks t
        where t.locked_by = heartbeat.worker_id and t.state = 'running' and t.cancel_requested
        order by t.id
    );
end;
$$;

-- A stopping worker leaves: its hook leases are released (claimable now, the hook attempt given back)
-- and its row is removed. Running tasks it still holds are left to rescue.
create function anchor.deregister_worker(worker_id text, p_now timestamptz default null)
returns void
language plpgsql
as $$
#variable_conflict use_column
begin
    update anchor.tasks t set
        locked_by = null, deadline = null, hook_attempts = t.hook_attempts - 1, run_at = coalesce(p_now, now())
    where t.locked_by = deregister_worker.worker_id and t.state = 'failing';
    delete from anchor.workers w where w.worker_id = deregister_worker.worker_id;
end;
$$;

-- Whether a worker counts as alive: it heartbeated within p_timeout, counting from the server's start
-- at the latest, so a database restart does not make every worker look dead.
create function anchor.worker_alive(p_worker_id text, p_timeout interval, p_now timestamptz)
returns boolean
language sql
stable
as $$
    select exists (
        select 1 from anchor.workers w
        where w.worker_id = p_worker_id
            and greatest(w.last_heartbeat, pg_postmaster_start_time()) >= p_now - p_timeout
    )
$$;

-- Recovers work held by dead or hung workers (one caller at a time does it; others return nothing):
-- running → pending after the retry interval, → failing (hook) | failed when attempts or max_rescues are
-- used up, → cancelled when a cancel was requested; failing with a dead lease → claimable again, or
-- hook_failed when its hook attempts are spent. Each with a 'rescued' event.
create function anchor.rescue(
    heartbeat_timeout interval default '30 seconds',
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
    v_now timestamptz := coalesce(p_now, now());
    v_task anchor.tasks;
    v_reason text;
    v_outcome text;
begin
    if not pg_try_advisory_xact_lock(hashtext('anchor.rescue')) then
        return;
    end if;

    for v_task in
        select * from anchor.tasks t
        where t.state in ('running', 'failing') and t.locked_by is not null
            and (not anchor.worker_alive(t.locked_by, rescue.heartbeat_timeout, v_now)
                or t.deadline + rescue.deadline_grace < v_now)
        order by t.id
        for update skip locked
    loop
        v_reason := case when anchor.worker_alive(v_task.locked_by, rescue.heartbeat_timeout, v_now)
            then 'deadline passed' else 'worker stopped heartbeating' end;
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
        insert into anchor.task_events (task_id, at, kind, attempt, worker_id, message, details)
        values (v_task.id, v_now, 'rescued', v_task.attempts, v_task.locked_by, v_reason,
            jsonb_build_object('from_state', v_task.state, 'outcome', v_outcome));
        id := v_task.id;
        outcome := v_outcome;
        return next;
    end loop;
end;
$$;
