-- 0099_trace_context: the trace context of the span that enqueued a task, so the worker's spans join its trace.
--
-- Why: with OpenTelemetry, one trace should run from a web request through the enqueue to every attempt and the
-- onFailed hook, in another process and later. The context is a propagator's carrier (W3C: {"traceparent": ...,
-- "tracestate": ...}), a few hundred bytes, kept on the task row: null for untraced tasks, so enqueue and claim
-- are unchanged and pay nothing, and it goes with the row when the pruner deletes it. The Python runners call
-- trace_tasks around enqueue in the same statement only when a span is active; SQL callers may do the same.

alter table anchor.tasks add column trace_context jsonb;

-- Records the caller's trace context with tasks it has just enqueued; returns task_ids unchanged, so it wraps
-- enqueue and enqueue_many in one statement. No state transition: only pending tasks not yet attempted and without
-- a context get it (a unique tag that returned an older live task keeps that task's own). AT003 for a context that
-- is not a JSON object of strings, or above 4 kB.
create function anchor.trace_tasks(task_ids bigint[], trace_context jsonb)
returns bigint[]
language plpgsql
as $$
#variable_conflict use_variable
begin
    if trace_context is null then
        return task_ids;
    end if;
    if jsonb_typeof(trace_context) <> 'object'
        or octet_length(trace_context::text) > 4096
        -- every value a string, as a propagator's carrier holds
        or exists (select 1 from jsonb_each(trace_context) as e where jsonb_typeof(e.value) <> 'string') then
        raise exception using errcode = 'AT003',
            message = format('tasks %s: trace_context must be a JSON object of strings of at most 4 kB, got %s',
                             task_ids, left(trace_context::text, 200));
    end if;
    update anchor.tasks as t set trace_context = trace_tasks.trace_context
    where t.id = any(task_ids) and t.trace_context is null and t.state = 'pending' and t.attempts = 0;
    return task_ids;
end;
$$;

-- The trace contexts recorded with these tasks (those that have one), for the worker's spans. Reads only.
create function anchor.trace_contexts(task_ids bigint[])
returns table (task_id bigint, trace_context jsonb)
language sql
stable
as $$
    select t.id, t.trace_context
    from anchor.tasks as t
    where t.id = any(trace_contexts.task_ids) and t.trace_context is not null;
$$;

insert into anchor.function_roles (function_name, role_name) values
('trace_tasks', 'anchor_enqueuer'),
('trace_contexts', 'anchor_worker');

select anchor.apply_privileges();
