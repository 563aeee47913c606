-- 0007_cron: cron schedules stored in the database, fired once per fire time by any number of workers.
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
-- Schedules follow the task definitions through a trigger on anchor.task_definitions (0001_schema), so
-- anchor.register_tasks knows nothing of cron: a definition with a cron object gets a schedule; a changed
-- expression or timezone makes the next cron loop recompute the next fire time (notified on channel
-- anchor_cron, so sleeping loops on other workers wake up); a removed, deactivated or cron-less definition
-- loses its schedule.
--
-- The tables (anchor.cron_schedules, anchor.cron_fires) and the triggers are in 0001_schema; the check of
-- a definition's cron object (anchor.cron_definition_problem) is with registration in 0003.

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
