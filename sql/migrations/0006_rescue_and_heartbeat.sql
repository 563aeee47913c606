-- 0006_rescue_and_heartbeat: how the queue notices workers that are gone, and takes their work back.
--
-- Why: a worker may die (SIGKILL, OOM, a lost machine) or hang while holding tasks. Workers heartbeat
-- into anchor.workers; rescue gives the tasks of a worker that stopped heartbeating (or whose deadline
-- plus a grace passed) back to the queue. The heartbeat also says which tasks the worker really holds:
-- when a claim commits but its reply never reaches the worker (a network cut, pg_terminate_backend, a
-- server restart between commit and reply), the claimed tasks would stay running under a worker that
-- keeps heartbeating until deadline + grace, an hour with the default timeout. heartbeat_v2 takes the
-- ids the worker holds (executions in flight, hooks it runs, completions not yet flushed) and hands back
-- every other task locked by it that was claimed more than release_after ago, long enough that no claim
-- reply can still be on its way.
--
-- The heartbeat timeout (20 seconds, release_after and rescue's heartbeat_timeout) is the default of
-- anchor_py.defaults.HEARTBEAT_TIMEOUT, which the worker, the rescuer and the dashboard share.

-- Registers or refreshes the worker; running tasks it does not hold → pending with the attempt given back
-- (→ cancelled when a cancel was requested), failing leases it does not hold → released with the hook
-- attempt given back; each with a 'handed_back' event. Returns the held tasks whose cancel was requested
-- (a fallback for a missed anchor_cancel notification).
create function anchor.heartbeat_v2(
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
    v_now timestamptz := coalesce(p_now, now());
begin
    if coalesce(btrim(heartbeat_v2.worker_id), '') = '' then
        raise exception using errcode = 'AT003', message = 'heartbeat_v2: worker_id must not be empty';
    end if;
    if heartbeat_v2.held_ids is null then
        raise exception using errcode = 'AT003',
            message = format('heartbeat_v2: held_ids must be an array (empty when worker %s holds nothing)', heartbeat_v2.worker_id);
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
            and t.locked_at < v_now - heartbeat_v2.release_after
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
