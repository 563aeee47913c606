-- 0002_cron: cron schedules stored in the database, fired once per fire time by any number of workers.
--
-- Why in the database: every worker runs the cron loop, on any number of machines, so the schedule
-- state (next fire time, paused, last fire) must be shared and each fire time must produce exactly one
-- task however many loops wake for it. A schedule is taken FOR UPDATE SKIP LOCKED, its task enqueued and
-- its next fire time advanced in one transaction.
--
-- Why next fire times come from the caller: cron expressions are evaluated in Python only (croniter,
-- seconds first, in UTC unless the schedule names a timezone), so the SQL never has a second cron parser
-- that could disagree. The firing function takes the fire times and the next fire time as arguments,
-- fenced by the next fire time the caller read, so a stale caller changes nothing.
--
-- Why a separate anchor.cron_fires table (primary key (name, fire_at)) as the once-per-fire-time key,
-- rather than a unique index on tasks (name, scheduled_at):
--   * anchor.enqueue takes scheduled_at from any client; a unique index on tasks would make ordinary
--     enqueues with the same scheduled_at fail, and purging old tasks would silently drop the guard;
--   * a fire skipped because the previous task is still live (overlap: skip) has no task row, yet it must
--     be recorded exactly once too;
--   * adding a unique index to anchor.tasks in a migration would lock and scan the biggest table, and
--     fail on existing rows that happen to share (name, scheduled_at).
-- cron_fires is small: each firing prunes the schedule's records older than a day (the fence on
-- next_fire_at already rules out re-firing such old times; the key guards the race window).
--
-- Schedules follow the task definitions through a trigger on anchor.task_definitions, so
-- anchor.register_tasks (0001) stays as it is: a definition with a cron object gets a schedule; a changed
-- expression or timezone makes the next cron loop recompute the next fire time (notified on channel
-- anchor_cron, so sleeping loops on other workers wake up); a removed, deactivated or cron-less definition
-- loses its schedule.
--
-- Error codes added here (0001's header lists AT001..AT006):
--   AT007 no such cron schedule

create table anchor.cron_schedules (
    name text primary key references anchor.task_definitions (name) on delete cascade,
    expression text not null,
    -- an IANA zone name; fire times are computed in it (Python side), stored in UTC
    timezone text not null,
    params jsonb not null,
    -- 0: a run of missed fires yields one task for the latest; N: up to the latest N, oldest first
    catch_up integer not null check (catch_up >= 0),
    overlap text not null check (overlap in ('skip', 'allow')),
    -- null: not computed yet (new schedule, changed expression, resumed); the next cron loop computes it
    next_fire_at timestamptz,
    paused boolean not null default false,
    paused_at timestamptz,
    -- the latest fire time handled (enqueued or skipped) and the task of the latest enqueued one,
    -- which overlap: skip checks
    last_fired_at timestamptz,
    last_task_id bigint,
    last_error text,
    last_error_at timestamptz,
    fired_count bigint not null default 0,
    skipped_count bigint not null default 0,
    missed_count bigint not null default 0,
    created_at timestamptz not null,
    updated_at timestamptz not null
);

-- The cron loop's query: unpaused schedules in next-fire order (nulls = compute now).
create index cron_schedules_due_idx on anchor.cron_schedules (next_fire_at nulls first) where not paused;

-- One row per handled fire time: the key that makes a double fire impossible (see the header).
create table anchor.cron_fires (
    name text not null,
    fire_at timestamptz not null,
    outcome text not null check (outcome in ('enqueued', 'skipped')),
    -- the task enqueued for this fire, or (skipped) the live task of an earlier fire that blocked it
    task_id bigint,
    recorded_at timestamptz not null,
    primary key (name, fire_at)
);

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

-- Keeps anchor.cron_schedules in step with anchor.task_definitions (row trigger, any change):
-- active definition with a cron object → schedule inserted or updated (a changed expression or timezone
-- resets next_fire_at to null = recompute; pause state and history stay); deleted, inactive or cron-less
-- → schedule deleted. A malformed cron object raises AT003 naming the task, so registration fails loudly.
create function anchor.sync_cron_schedule()
returns trigger
language plpgsql
as $$
declare
    v_problem text;
    v_now timestamptz;
begin
    if tg_op = 'DELETE' then
        delete from anchor.cron_schedules s where s.name = old.name;
        return null;
    end if;
    if not new.active or new.cron is null or new.cron = 'null'::jsonb then
        delete from anchor.cron_schedules s where s.name = new.name;
        return null;
    end if;
    v_problem := anchor.cron_definition_problem(new.cron);
    if v_problem is not null then
        raise exception using errcode = 'AT003', message = format('task %s: %s', new.name, v_problem);
    end if;
    v_now := new.updated_at;
    insert into anchor.cron_schedules as s (
        name, expression, timezone, params, catch_up, overlap, created_at, updated_at
    ) values (
        new.name,
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
    where (s.expression, s.timezone, s.params, s.catch_up, s.overlap)
    is distinct from (excluded.expression, excluded.timezone, excluded.params, excluded.catch_up, excluded.overlap);
    return null;
end;
$$;

create trigger task_definitions_sync_cron after insert or update or delete on anchor.task_definitions
for each row execute function anchor.sync_cron_schedule();

-- Wakes sleeping cron loops (channel anchor_cron, payload: schedule name) when a schedule needs its next
-- fire time computed now: new, changed expression or timezone, resumed.
create function anchor.notify_cron_change()
returns trigger
language plpgsql
as $$
begin
    perform pg_notify('anchor_cron', new.name);
    return null;
end;
$$;

create trigger cron_schedules_notify after insert or update of next_fire_at, paused on anchor.cron_schedules
for each row when (new.next_fire_at is null and not new.paused)
execute function anchor.notify_cron_change();

-- Schedules that exist before this migration (definitions registered under 0001) get theirs now; a
-- malformed cron object cannot abort the upgrade, so that schedule starts paused with the problem recorded.
insert into anchor.cron_schedules (
    name, expression, timezone, params, catch_up, overlap, paused, paused_at, last_error, last_error_at,
    created_at, updated_at
)
with existing as (
    select
        d.name,
        d.cron,
        anchor.cron_definition_problem(d.cron) as problem
    from anchor.task_definitions as d
    where d.active and d.cron is not null and d.cron <> 'null'::jsonb
)

select
    e.name,
    coalesce(nullif(btrim(e.cron ->> 'expression'), ''), '(missing)') as expression,
    coalesce(e.cron ->> 'timezone', 'UTC') as timezone,
    case when jsonb_typeof(e.cron -> 'parameters') = 'object' then e.cron -> 'parameters' else '{}' end as params,
    case when e.problem is null then coalesce((e.cron ->> 'catch_up')::integer, 0) else 0 end as catch_up,
    case when e.problem is null then coalesce(e.cron ->> 'overlap', 'skip') else 'skip' end as overlap,
    e.problem is not null as paused,
    case when e.problem is not null then now() end as paused_at,
    e.problem as last_error,
    case when e.problem is not null then now() end as last_error_at,
    now() as created_at,
    now() as updated_at
from existing as e;

-- The schedule row, locked, or AT007 naming the missing schedule.
create function anchor.lock_cron_schedule(p_name text)
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
            hint = 'Schedules come from task definitions with a cronjob; see anchor cron list.';
    end if;
    return v_schedule;
end;
$$;

-- The cron loop's first step, inside its transaction: locks (FOR UPDATE SKIP LOCKED, so concurrent loops
-- split the work) up to max_schedules unpaused schedules that are due (next_fire_at <= now) or need their
-- next fire time computed (null), with what the caller needs to plan the fires. Changes nothing.
create function anchor.cron_take_due(max_schedules integer default 100, p_now timestamptz default null)
returns table (
    name text, expression text, timezone text, params jsonb, params_schema jsonb, catch_up integer,
    overlap text, next_fire_at timestamptz, db_now timestamptz
)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
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
-- next_fire_at is still expected_next_fire_at, changes nothing and returns one 'stale' row.
create function anchor.cron_fire(
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
    v_now timestamptz := coalesce(p_now, now());
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
create function anchor.cron_fail(name text, error_message text, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
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

-- Operator pause: → paused (idempotent). Fire times passing while paused are neither fired nor caught up.
create function anchor.cron_pause(name text, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
    v_schedule anchor.cron_schedules := anchor.lock_cron_schedule(cron_pause.name);
begin
    if not v_schedule.paused then
        update anchor.cron_schedules s set paused = true, paused_at = v_now, updated_at = v_now
        where s.name = v_schedule.name;
    end if;
    return 'paused';
end;
$$;

-- Resume: paused → active (idempotent), error cleared, next fire time recomputed from now (so the paused
-- stretch is not caught up as missed fires); sleeping cron loops are notified.
create function anchor.cron_resume(name text, p_now timestamptz default null)
returns text
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
    v_schedule anchor.cron_schedules := anchor.lock_cron_schedule(cron_resume.name);
begin
    if v_schedule.paused then
        update anchor.cron_schedules s set
            paused = false, paused_at = null, next_fire_at = null, last_error = null, last_error_at = null,
            updated_at = v_now
        where s.name = v_schedule.name;
    end if;
    return 'resumed';
end;
$$;

-- All schedules, by name, for `anchor cron list` and dashboards.
create function anchor.cron_list()
returns table (
    name text, expression text, timezone text, params jsonb, catch_up integer, overlap text,
    next_fire_at timestamptz, last_fired_at timestamptz, last_task_id bigint, paused boolean,
    paused_at timestamptz, last_error text, fired_count bigint, skipped_count bigint, missed_count bigint
)
language sql
stable
as $$
    select
        s.name, s.expression, s.timezone, s.params, s.catch_up, s.overlap, s.next_fire_at, s.last_fired_at,
        s.last_task_id, s.paused, s.paused_at, s.last_error, s.fired_count, s.skipped_count, s.missed_count
    from anchor.cron_schedules s
    order by s.name
$$;

-- When the cron loop should next look: the earliest next_fire_at of the unpaused schedules (a schedule
-- still to be computed counts as now; null when there are none), with the clock it was read on so the
-- caller sleeps a duration measured on the database clock.
create function anchor.cron_next_wake(p_now timestamptz default null)
returns table (wake_at timestamptz, db_now timestamptz)
language sql
stable
as $$
    select min(coalesce(s.next_fire_at, coalesce(p_now, now()))), coalesce(p_now, now())
    from anchor.cron_schedules s
    where not s.paused
$$;
