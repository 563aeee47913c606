-- 0005_heartbeat_v2: a worker's heartbeat says which tasks it really holds.
--
-- Why: when a claim commits but its reply never reaches the worker (a network cut, pg_terminate_backend,
-- a server restart between commit and reply), the claimed tasks stay running under a worker that keeps
-- heartbeating, so rescue would only take them at deadline + grace: an hour with the default timeout.
-- heartbeat_v2 takes the ids the worker holds (executions in flight, hooks it runs, completions not yet
-- flushed) and hands back every other task locked by it that was claimed more than release_after ago,
-- long enough that no claim reply can still be on its way. heartbeat (v1) stays for workers of the
-- previous release during a rolling deploy.

-- Refreshes the worker like heartbeat(); running tasks it does not hold → pending with the attempt given
-- back (→ cancelled when a cancel was requested), failing leases it does not hold → released with the
-- hook attempt given back; each with a 'handed_back' event. Returns its cancel-requested task ids.
create function anchor.heartbeat_v2(
    worker_id text,
    held_ids bigint[],
    info jsonb default null,
    release_after interval default '30 seconds',
    p_now timestamptz default null
)
returns bigint[]
language plpgsql
as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
    v_cancel_ids bigint[];
begin
    if heartbeat_v2.held_ids is null then
        raise exception using errcode = 'AT003',
            message = format('heartbeat_v2: held_ids must be an array (empty when worker %s holds nothing)', heartbeat_v2.worker_id);
    end if;
    v_cancel_ids := anchor.heartbeat(heartbeat_v2.worker_id, heartbeat_v2.info, v_now);

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

    return array(select c from unnest(v_cancel_ids) as c where c = any(heartbeat_v2.held_ids));
end;
$$;

insert into anchor.function_roles (function_name, role_name) values ('heartbeat_v2', 'anchor_worker');
select anchor.apply_privileges();
