-- 0005_operator_actions: what an operator may do to one task (CLI, dashboard, psql).
--
-- Why: cancelling, running again now and retrying a failed hook are state transitions like the worker's,
-- so they live next to them in SQL, take the row lock, and refuse (AT004, AT005, AT006) with the task id
-- and state instead of leaving a task half changed.

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
