-- 0001_schema: the tables of the task queue, their indexes, and the triggers that keep them in step.
--
-- Why in the database: enqueueing, claiming, retry-interval selection, unique tags, the final-failure
-- transition, crash recovery, cron firing and retention all live in PL/pgSQL (the files after this one),
-- so a task enqueued from Python, from psql or from any other client gets the same guarantees, and the
-- Python worker stays a thin layer that calls those functions. Every function that reads the clock takes
-- p_now so tests control time instead of sleeping.
--
-- Why one file for every table: the tables are the data an upgrade must keep, so they are read in one
-- place; the functions that work on them come after, one file per topic. The triggers are here with their
-- tables (PL/pgSQL resolves the functions they call, such as cron_definition_problem, when they run).
--
-- Error codes (SQLSTATE) raised by the functions are stable and documented in docs/sql-api.md:
--   AT001 unknown task name          AT002 params do not match the task's schema
--   AT003 bad argument                AT004 no such task
--   AT005 transition not allowed      AT006 unique tag held by another live task
--   AT007 no such cron schedule

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

-- Finished tasks by state and age, so each retention batch (anchor.prune) is a short range scan rather
-- than a sequential scan of the whole table; costs one index entry when a task finishes.
create index tasks_finished_idx on anchor.tasks (state, finished_at)
where state in ('succeeded', 'failed', 'hook_failed', 'cancelled');

-- Cron schedules, one per task definition with a cron object (kept in step by a trigger below).
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

-- One row per handled fire time: the key that makes a double fire impossible (why: 0007_cron).
create table anchor.cron_fires (
    name text not null,
    fire_at timestamptz not null,
    outcome text not null check (outcome in ('enqueued', 'skipped')),
    -- the task enqueued for this fire, or (skipped) the live task of an earlier fire that blocked it
    task_id bigint,
    recorded_at timestamptz not null,
    primary key (name, fire_at)
);

-- Which role may call each API function (by name, so every overload and later _v2 twin is covered);
-- filled and applied by the roles migration.
create table anchor.function_roles (
    function_name text primary key,
    role_name text not null check (role_name in ('anchor_enqueuer', 'anchor_worker', 'anchor_admin'))
);

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
