"""Enqueueing and waiting: what the runners and the waiters send (as the application, anchor_enqueuer)."""

from textwrap import indent

# One task; every argument but name and params may be null (= the definition's value).
ENQUEUE = """
SELECT anchor.enqueue(
    name => %(name)s::text,
    params => %(params)s::jsonb,
    run_at => %(run_at)s::timestamptz,
    delay => %(delay)s::interval,
    unique_tag => %(unique_tag)s::text,
    retry_intervals => %(retry_intervals)s::interval[],
    max_attempts => %(max_attempts)s::int,
    timeout => %(timeout)s::interval,
    priority => %(priority)s::int,
    queue => %(queue)s::text,
    depends_on => %(depends_on)s::bigint[],
    parent_id => %(parent_id)s::bigint
)
"""

# Many tasks of one name in one round trip; params is a JSON array, ids come back in its order.
ENQUEUE_MANY = """
SELECT anchor.enqueue_many(
    name => %(name)s::text,
    params => %(params)s::jsonb,
    run_at => %(run_at)s::timestamptz,
    delay => %(delay)s::interval,
    unique_tags => NULL::text[],
    retry_intervals => %(retry_intervals)s::interval[],
    max_attempts => %(max_attempts)s::int,
    timeout => %(timeout)s::interval,
    priority => %(priority)s::int,
    queue => %(queue)s::text,
    depends_on => %(depends_on)s::bigint[],
    parent_id => %(parent_id)s::bigint
)
"""

# A fan-out and its fan-in in one statement: the list as ENQUEUE_MANY, then one task (the fan_in_ arguments)
# depending on every id of the list and on the fan-in's own dependencies, if any.
FAN_OUT = f"""
WITH fan_out AS (
{indent(ENQUEUE_MANY.strip(), " " * 4)} AS ids
)

SELECT
    f.ids,
    anchor.enqueue(
        name => %(fan_in_name)s::text,
        params => %(fan_in_params)s::jsonb,
        run_at => %(fan_in_run_at)s::timestamptz,
        delay => %(fan_in_delay)s::interval,
        unique_tag => %(fan_in_unique_tag)s::text,
        retry_intervals => %(fan_in_retry_intervals)s::interval[],
        max_attempts => %(fan_in_max_attempts)s::int,
        timeout => %(fan_in_timeout)s::interval,
        priority => %(fan_in_priority)s::int,
        queue => %(fan_in_queue)s::text,
        depends_on => f.ids || coalesce(%(fan_in_depends_on)s::bigint[], '{{}}'),
        parent_id => %(fan_in_parent_id)s::bigint
    ) AS fan_in_id
FROM fan_out AS f
"""

# The same two, recording the caller's trace context (an OpenTelemetry propagator's carrier) with the new tasks in
# the same statement; the runners send these only while a span is active (anchor_py.tracing).
ENQUEUE_TRACED = f"""
SELECT (anchor.trace_tasks(
    task_ids => ARRAY[(
{indent(ENQUEUE.strip(), " " * 8)}
    )],
    trace_context => %(trace_context)s::jsonb
))[1]
"""

ENQUEUE_MANY_TRACED = f"""
SELECT anchor.trace_tasks(
    task_ids => (
{indent(ENQUEUE_MANY.strip(), " " * 8)}
    ),
    trace_context => %(trace_context)s::jsonb
)
"""

# The trace contexts recorded with claimed tasks; a worker sends it only while it traces (anchor_py.tracing).
TRACE_CONTEXTS = """
SELECT
    task_id,
    trace_context
FROM anchor.trace_contexts(task_ids => %(task_ids)s::bigint[])
"""

# Flags the task as waited on (its final transition then notifies anchor_outcome) and reads its outcome.
WAIT_FOR_TASK = """
SELECT
    state,
    result,
    error,
    finished_at
FROM anchor.wait_for_task(%(id)s::bigint)
"""

# The outcome of every task a process waits on, in one read (the listener's poll and its wake-up).
TASK_OUTCOMES = """
SELECT
    id,
    state,
    result,
    error,
    finished_at
FROM anchor.task_outcomes(%(ids)s::bigint[])
"""
