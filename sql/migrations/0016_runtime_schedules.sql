-- 0014_runtime_schedules: cron schedules created at run time, stored beside the ones of the task definitions.
--
-- Why: a schedule could only come from a definition's cronjob, one per task, fixed at deploy time. An
-- application also needs schedules it creates while it runs ("send user 42 a digest every Monday at 09:00
-- in their time zone"), many per task, each with its own params. They live in the same table and are
-- fired by the same cron loop with the same once-per-fire key (anchor.cron_fires, by schedule name), so
-- every guarantee of 0007_cron holds for them; `anchor cron list|pause|resume` treat both alike.
--
-- A schedule now has a source and a task:
--   'yaml'     synced from a definition's cron object (anchor.sync_cron_schedule), named after its task;
--   'runtime'  created by anchor.cron_upsert with a name of its own, removed only by anchor.cron_delete.
-- The foreign key moves from name to task_name.
--
-- Names never collide: both kinds share the primary key (name), a YAML schedule is named after its task,
-- and a runtime schedule may not take the name of any task definition (active or not: definitions are
-- never deleted, only deactivated). The one way left, registering a new task with a cronjob whose name a
-- runtime schedule already holds, fails that registration with AT003 naming the runtime schedule, rather
-- than replacing or dropping it.
--
-- Registering never removes or changes a runtime schedule. When its task leaves the definitions (becomes
-- inactive) the schedule stays, does not fire and does not wake the cron loop, and fires again once the
-- task is registered again, from where it stood, as after an outage (the fire times missed meanwhile
-- count as missed, the latest one fires). cron_take_due and cron_next_wake are replaced to skip them,
-- cron_fire to enqueue the schedule's task rather than a task named like the schedule.
--
-- Roles: the application (anchor_enqueuer) may create, replace and delete runtime schedules, as it may
-- enqueue; a YAML schedule cannot be deleted by anyone (it follows the YAML), only paused by an admin.

alter table anchor.cron_schedules add column task_name text;
alter table anchor.cron_schedules add column source text;
update anchor.cron_schedules set task_name = name, source = 'yaml';
alter table anchor.cron_schedules alter column task_name set not null;
alter table anchor.cron_schedules alter column source set not null;
alter table anchor.cron_schedules add constraint cron_schedules_source_check
check (source in ('yaml', 'runtime'));
-- a YAML schedule is its task's; the name rule above relies on it
alter table anchor.cron_schedules add constraint cron_schedules_yaml_name_check
check (source <> 'yaml' or name = task_name);
alter table anchor.cron_schedules drop constraint cron_schedules_name_fkey;
alter table anchor.cron_schedules add constraint cron_schedules_task_name_fkey
foreign key (task_name) references anchor.task_definitions (name) on delete cascade;

-- The schedules of one task: the foreign key's cascade, and the cron loop's check that the task is active.
create index cron_schedules_task_name_idx on anchor.cron_schedules (task_name);

-- Keeps the YAML schedules in step with anchor.task_definitions (row trigger, any change): active
-- definition with a cron object → its YAML schedule inserted or updated (a changed expression or timezone
-- resets next_fire_at to null = recompute; pause state and history stay); deleted, inactive or cron-less →
-- its YAML schedule deleted. Runtime schedules are never touched. A malformed cron object, or a cronjob
-- whose schedule name (the task name) a runtime schedule holds, raises AT003 naming the task.
create or replace function anchor.sync_cron_schedule()
returns trigger
language plpgsql
as $$
declare
    v_problem text;
    v_now timestamptz;
    v_holder anchor.cron_schedules;
begin
    if tg_op = 'DELETE' then
        delete from anchor.cron_schedules s where s.name = old.name and s.source = 'yaml';
        return null;
    end if;
    if not new.active or new.cron is null or new.cron = 'null'::jsonb then
        delete from anchor.cron_schedules s where s.name = new.name and s.source = 'yaml';
        return null;
    end if;
    v_problem := anchor.cron_definition_problem(new.cron);
    if v_problem is not null then
        raise exception using errcode = 'AT003', message = format('task %s: %s', new.name, v_problem);
    end if;
    v_now := new.updated_at;
    insert into anchor.cron_schedules as s (
        name, task_name, source, expression, timezone, params, catch_up, overlap, created_at, updated_at
    ) values (
        new.name,
        new.name,
        'yaml',
        btrim(new.cron ->> 'expression'),
        coalesce(new.cron ->> 'timezone', 'UTC'),
        coalesce(nullif(new.cron -> 'parameters', 'null'), '{}'),
        coalesce((new.cron ->> 'catch_up')::integer, 0),
        coalesce(new.cron ->> 'overlap', 'skip'),
        v_now,
        v_now
    )
    on conflict (name) do update set
        expression = excluded.expression,
        timezone = excluded.timezone,
        params = excluded.params,
        catch_up = excluded.catch_up,
        overlap = excluded.overlap,
        -- only a new expression or zone changes when it fires; anything else keeps the computed time
        next_fire_at = case
            when s.expression is distinct from excluded.expression or s.timezone is distinct from excluded.timezone
                then null
            else s.next_fire_at
        end,
        updated_at = excluded.updated_at
    -- a runtime schedule holding the name is left alone (and reported below)
    where s.source = 'yaml'
        and (s.expression, s.timezone, s.params, s.catch_up, s.overlap)
        is distinct from (excluded.expression, excluded.timezone, excluded.params, excluded.catch_up, excluded.overlap);
    select * into v_holder from anchor.cron_schedules s where s.name = new.name and s.source = 'runtime';
    if found then
        raise exception using errcode = 'AT003',
            message = format('task %s: its cronjob''s schedule would be named %L, which the runtime schedule of task %s already has',
                new.name, new.name, v_holder.task_name),
            hint = format('Delete that schedule first (select anchor.cron_delete(%L)) and create it again under another name.', new.name);
    end if;
    return null;
end;
$$;

-- The params one fire of a schedule would get, for checking them when the schedule is created: p_params
-- plus every required `format: date` / `date-time` string parameter they leave out (or null), filled from
-- p_now, as the cron loop fills them from each fire time (anchor_py.cron_times.build_params). Params that
-- are not an object come back unchanged (check_params names the problem).
create function anchor.cron_sample_params(p_schema jsonb, p_params jsonb, p_now timestamptz)
returns jsonb
language sql
stable
as $$
    select case
        when jsonb_typeof(p_params) is distinct from 'object' or jsonb_typeof(p_schema -> 'required') is distinct from 'array'
            then p_params
        else p_params || coalesce((
            select jsonb_object_agg(
                r.name,
                case p_schema -> 'properties' -> r.name ->> 'format'
                    when 'date' then to_char(p_now at time zone 'UTC', 'YYYY-MM-DD')
                    else to_char(p_now at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"')
                end
            )
            from jsonb_array_elements_text(p_schema -> 'required') as r (name)
            -- given and not null: kept; only a string date or date-time can be filled
            where coalesce(jsonb_typeof(p_params -> r.name), 'null') = 'null'
                and coalesce(p_schema -> 'properties' -> r.name ->> 'type', 'string') = 'string'
                and p_schema -> 'properties' -> r.name ->> 'format' in ('date', 'date-time')
        ), '{}')
    end
$$;

-- Creates or replaces the runtime schedule `name`, which enqueues task_name with params on
-- cron_expression in timezone (UTC when null): → 'created', 'replaced' (a new expression or zone makes the
-- cron loop recompute the next fire time; a pause the cron loop made because of an error is lifted, an
-- operator's pause stays) or 'unchanged'. Checked as an enqueue is: unknown or inactive task AT001, params
-- AT002 (with the date parameters the fire time fills), bad arguments AT003 naming the schedule and value.
-- The expression and zone are only bounded here: the cron loop parses them (0007_cron) and pauses a
-- schedule that cannot fire, with the error recorded.
create function anchor.cron_upsert(
    name text,
    task_name text,
    cron_expression text,
    params jsonb default '{}',
    timezone text default null,
    p_now timestamptz default null
)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := anchor.clock(cron_upsert.p_now);
    v_def anchor.task_definitions;
    v_zone text := coalesce(cron_upsert.timezone, 'UTC');
    v_problem text;
    v_inserted boolean;
begin
    v_problem := case
        when cron_upsert.name is null or btrim(cron_upsert.name) = '' then 'name must be a non-empty string'
        when octet_length(cron_upsert.name) > 255
            then format('name %s... of %s bytes is over the limit of 255 bytes', left(cron_upsert.name, 40), octet_length(cron_upsert.name))
        when cron_upsert.name <> btrim(cron_upsert.name) or cron_upsert.name ~ '[[:cntrl:]]'
            then format('name %L must not start or end with spaces or hold control characters', cron_upsert.name)
        when cron_upsert.task_name is null then format('schedule %L: task_name must not be null', cron_upsert.name)
        when cron_upsert.cron_expression is null or btrim(cron_upsert.cron_expression) = ''
            then format('schedule %L: cron_expression must be a non-empty string, got %L', cron_upsert.name, cron_upsert.cron_expression)
        when octet_length(cron_upsert.cron_expression) > 255
            then format('schedule %L: cron_expression %s... of %s bytes is over the limit of 255 bytes',
                cron_upsert.name, left(cron_upsert.cron_expression, 40), octet_length(cron_upsert.cron_expression))
        when btrim(v_zone) = '' or octet_length(v_zone) > 255
            then format('schedule %L: timezone %L must be a time zone name such as ''Europe/Berlin''', cron_upsert.name, left(v_zone, 40))
    end;
    if v_problem is not null then
        raise exception using errcode = 'AT003', message = format('cron_upsert: %s', v_problem);
    end if;
    -- any definition, active or not: a YAML schedule is named after its task (see this file's header)
    if exists (select 1 from anchor.task_definitions d where d.name = cron_upsert.name) then
        raise exception using errcode = 'AT003',
            message = format('cron_upsert: name %L is the name of a task, which only that task''s cronjob may use', cron_upsert.name),
            hint = format('Give the runtime schedule a name of its own, such as %L.', cron_upsert.name || ':' || 'nightly');
    end if;
    v_def := anchor.definition_of(cron_upsert.task_name);
    perform anchor.check_params(v_def, anchor.cron_sample_params(v_def.params_schema, cron_upsert.params, v_now));

    insert into anchor.cron_schedules as s (
        name, task_name, source, expression, timezone, params, catch_up, overlap, created_at, updated_at
    ) values (
        cron_upsert.name, cron_upsert.task_name, 'runtime', btrim(cron_upsert.cron_expression), v_zone,
        cron_upsert.params, 0, 'skip', v_now, v_now
    )
    on conflict (name) do update set
        task_name = excluded.task_name,
        expression = excluded.expression,
        timezone = excluded.timezone,
        params = excluded.params,
        -- as anchor.cron_resume when an error pause is lifted; otherwise only a new expression or zone
        -- changes when it fires
        next_fire_at = case
            when s.paused and s.last_error is not null then null
            when s.expression is distinct from excluded.expression or s.timezone is distinct from excluded.timezone
                then null
            else s.next_fire_at
        end,
        paused = s.paused and s.last_error is null,
        paused_at = case when s.last_error is null then s.paused_at end,
        last_error = null,
        last_error_at = null,
        updated_at = excluded.updated_at
    -- a YAML schedule is never replaced (only a concurrent registration can get here: reported below)
    where s.source = 'runtime'
        and (s.task_name, s.expression, s.timezone, s.params)
        is distinct from (excluded.task_name, excluded.expression, excluded.timezone, excluded.params)
    -- xmax is 0 on a freshly inserted row version, set on one that updated an existing row
    returning s.xmax = 0 into v_inserted;
    if v_inserted is not null then
        return case when v_inserted then 'created' else 'replaced' end;
    end if;
    if exists (select 1 from anchor.cron_schedules s where s.name = cron_upsert.name and s.source = 'yaml') then
        raise exception using errcode = 'AT003',
            message = format('cron_upsert: name %L is the name of a task, which only that task''s cronjob may use', cron_upsert.name);
    end if;
    return 'unchanged';
end;
$$;

-- Deletes the runtime schedule `name` and its fire records: → 'deleted', or 'absent' when there is none
-- (so a retried request succeeds). A YAML schedule is refused with AT003: it follows the task definitions.
create function anchor.cron_delete(name text)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_source text;
begin
    -- waits for a cron loop holding the schedule (cron_take_due locks it until its round commits)
    select s.source into v_source from anchor.cron_schedules s where s.name = cron_delete.name for update;
    if not found then
        return 'absent';
    end if;
    if v_source = 'yaml' then
        raise exception using errcode = 'AT003',
            message = format('cron_delete: schedule %L comes from the cronjob of task %s and cannot be deleted', cron_delete.name, cron_delete.name),
            hint = 'Remove the cronjob from the task definitions (and register them), or pause it: anchor cron pause.';
    end if;
    delete from anchor.cron_schedules s where s.name = cron_delete.name;
    delete from anchor.cron_fires f where f.name = cron_delete.name;
    return 'deleted';
end;
$$;

-- The schedule row, locked, or AT007 naming the missing schedule (hint: runtime schedules too).
create or replace function anchor.lock_cron_schedule(p_name text)
returns anchor.cron_schedules
language plpgsql
as $$
declare
    v_schedule anchor.cron_schedules;
begin
    select * into v_schedule from anchor.cron_schedules s where s.name = p_name for update;
    if not found then
        raise exception using
            errcode = 'AT007',
            message = format('no cron schedule %L', p_name),
            hint = 'Schedules come from task definitions with a cronjob and from anchor.cron_upsert; see anchor cron list.';
    end if;
    return v_schedule;
end;
$$;

-- The cron loop's first step, inside its transaction: locks (FOR UPDATE SKIP LOCKED, so concurrent loops
-- split the work) up to max_schedules unpaused schedules of active tasks that are due (next_fire_at <= now)
-- or need their next fire time computed (null), with what the caller needs to plan the fires. Changes
-- nothing. As 0010's, joined to the definitions by task_name.
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
    -- a runtime schedule of a task no longer registered waits for the task to come back
    inner join anchor.task_definitions d on d.name = s.task_name and d.active
    where not s.paused and (s.next_fire_at is null or s.next_fire_at <= v_now)
    order by s.next_fire_at nulls first, s.name
    limit cron_take_due.max_schedules
    for update of s skip locked;
end;
$$;

-- Fires one schedule: for each of fire_times (ascending, none in the future; fire_params holds the params
-- of each, a JSON array in the same order) records the fire in cron_fires and → 'enqueued' (a task of the
-- schedule's task_name with scheduled_at = the fire time) or, with overlap 'skip' while the task of the
-- schedule's previous fire is still live (pending, running, failing, blocked, paused), → 'skipped' (nothing enqueued); a
-- fire time already recorded → 'duplicate'. Then next_fire_at := the given one. Fenced: unless the schedule
-- is unpaused and its next_fire_at is still expected_next_fire_at, changes nothing and returns one 'stale'
-- row. The new next_fire_at must be within 100 years of now (AT003). As 0010's, but enqueueing task_name.
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
        where t.id = v_schedule.last_task_id and t.state in ('pending', 'running', 'failing', 'blocked', 'paused');
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
                name => v_schedule.task_name,
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

-- When the cron loop should next look: the earliest next_fire_at of the unpaused schedules of active tasks
-- (a schedule still to be computed counts as now; null when there are none), with the clock it was read
-- on. As 0010's; a runtime schedule waiting for its task to come back must not keep the loop awake.
create or replace function anchor.cron_next_wake(p_now timestamptz default null)
returns table (wake_at timestamptz, db_now timestamptz)
language sql
stable
as $$
    select min(coalesce(s.next_fire_at, anchor.clock(p_now))), anchor.clock(p_now)
    from anchor.cron_schedules s
    inner join anchor.task_definitions d on d.name = s.task_name and d.active
    where not s.paused
$$;

-- All schedules, by name, for `anchor cron list` and dashboards: cron_list's columns plus where each
-- comes from (source 'yaml' or 'runtime'), its task, and whether that task is registered (a runtime
-- schedule of an inactive task does not fire).
create function anchor.cron_list_v2()
returns table (
    name text, source text, task_name text, task_active boolean, expression text, timezone text, params jsonb,
    catch_up integer, overlap text, next_fire_at timestamptz, last_fired_at timestamptz, last_task_id bigint,
    paused boolean, paused_at timestamptz, last_error text, fired_count bigint, skipped_count bigint,
    missed_count bigint
)
language sql
stable
as $$
    select
        s.name, s.source, s.task_name, d.active, s.expression, s.timezone, s.params, s.catch_up, s.overlap,
        s.next_fire_at, s.last_fired_at, s.last_task_id, s.paused, s.paused_at, s.last_error, s.fired_count,
        s.skipped_count, s.missed_count
    from anchor.cron_schedules s
    inner join anchor.task_definitions d on d.name = s.task_name
    order by s.name
$$;

-- cron_list_v2 is covered by cron_list's row; listed too, so function_roles stays the one list
insert into anchor.function_roles (function_name, role_name) values
('cron_upsert', 'anchor_enqueuer'),
('cron_delete', 'anchor_enqueuer'),
('cron_list_v2', 'anchor_worker');

-- create or replace dropped the SECURITY DEFINER and search_path of the functions replaced above
select anchor.apply_privileges();
