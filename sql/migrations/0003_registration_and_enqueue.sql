-- 0003_registration_and_enqueue: how task definitions get into the database and tasks into the queue.
--
-- Why: workers register the generated definitions (versioned, so an older worker restarting cannot roll
-- them back); every enqueue starts from its definition's defaults, checks params and per-call overrides,
-- and deduplicates on the unique tag, so a task is either inserted whole and valid (pending) or refused
-- with an error naming the task and what was wrong.

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

-- The first problem in a definition's cron object ('cron.<key>: <problem>'), or null. Shape: {"expression",
-- "parameters", "timezone", "catch_up", "overlap"}; all but expression optional.
create function anchor.cron_definition_problem(p_cron jsonb)
returns text
language plpgsql
immutable
as $$
declare
    v_key text;
    v_number numeric;
begin
    if jsonb_typeof(p_cron) is distinct from 'object' then
        return format('cron: %s must be an object', p_cron);
    end if;
    select k into v_key from jsonb_object_keys(p_cron) as k
    where k not in ('expression', 'parameters', 'timezone', 'catch_up', 'overlap')
    limit 1;
    if v_key is not null then
        return format('cron.%s: unknown key', v_key);
    end if;
    if jsonb_typeof(p_cron -> 'expression') is distinct from 'string' or btrim(p_cron ->> 'expression') = '' then
        return format('cron.expression: %s must be a non-empty string', coalesce(p_cron -> 'expression', 'null'));
    end if;
    if coalesce(jsonb_typeof(p_cron -> 'parameters'), 'null') not in ('object', 'null') then
        return format('cron.parameters: %s must be an object', p_cron -> 'parameters');
    end if;
    if coalesce(jsonb_typeof(p_cron -> 'timezone'), 'null') not in ('string', 'null') or btrim(p_cron ->> 'timezone') = '' then
        return format('cron.timezone: %s must be a time zone name such as "Europe/Berlin"', p_cron -> 'timezone');
    end if;
    if coalesce(jsonb_typeof(p_cron -> 'catch_up'), 'null') <> 'null' then
        if jsonb_typeof(p_cron -> 'catch_up') <> 'number' then
            return format('cron.catch_up: %s must be a whole number >= 0', p_cron -> 'catch_up');
        end if;
        v_number := (p_cron ->> 'catch_up')::numeric;
        if scale(v_number) > 0 or v_number < 0 or v_number > 2147483647 then
            return format('cron.catch_up: %s must be a whole number >= 0', p_cron -> 'catch_up');
        end if;
    end if;
    if coalesce(p_cron ->> 'overlap', 'skip') not in ('skip', 'allow') then
        return format('cron.overlap: %s must be "skip" or "allow"', p_cron -> 'overlap');
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
