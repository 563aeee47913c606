"""The worker's statements: registration, heartbeat, the claim and every call that finishes a claim."""

# Registers the generated definitions and the task file's queue settings (TaskSet.registration()); an older
# version than the stored one is ignored. Queue pauses are not settings: registering keeps them.
REGISTER_TASKS = """
SELECT anchor.register_tasks_v2(
    definitions => %(definitions)s::jsonb, queues => %(queues)s::jsonb, version => %(version)s::bigint
)
"""

# Registers or refreshes the worker; returns ids of its running tasks whose cancel was requested.
# Refreshes the worker, hands back what it no longer holds (a claim whose reply was lost), and returns the
# ids of held tasks whose cancel was requested.
HEARTBEAT = """
SELECT anchor.heartbeat_v2(
    worker_id => %(worker_id)s::text,
    held_ids => %(held_ids)s::bigint[],
    info => %(info)s::jsonb,
    release_after => %(release_after)s::interval
)
"""

DEREGISTER_WORKER = "SELECT anchor.deregister_worker(worker_id => %(worker_id)s::text)"

# A batch of work sized to free capacity: execute and hook rows, then a wake row (earliest future run_at).
# Each claimed row carries its fence token: COMPLETE, FAIL, HAND_BACK, FINISH_FAILURE and FAIL_HOOK take it back.
# An execution also carries its dependencies' results (ctx.dependencies), read for the whole batch in one call,
# so a fan-in costs no extra round trip and a task without dependencies no extra function call.
CLAIM = """
WITH c AS MATERIALIZED (
    SELECT
        claimed.kind,
        claimed.id,
        claimed.name,
        claimed.params,
        claimed.attempt,
        claimed.hook_attempt,
        claimed.max_attempts,
        claimed.queue,
        claimed.timeout,
        claimed.deadline,
        claimed.scheduled_at,
        claimed.run_at,
        claimed.fence
    FROM anchor.claim_v2(
        worker_id => %(worker_id)s::text,
        max_tasks => %(max_tasks)s::int,
        task_names => %(task_names)s::text[],
        queues => %(queues)s::text[],
        hook_timeout => %(hook_timeout)s::interval,
        max_hook_attempts => %(max_hook_attempts)s::int
    ) AS claimed
)

SELECT
    c.kind,
    c.id,
    c.name,
    c.params,
    c.attempt,
    c.hook_attempt,
    c.max_attempts,
    c.queue,
    c.timeout,
    c.deadline,
    c.scheduled_at,
    c.run_at,
    c.fence,
    r.dependencies,
    now() AS db_now
FROM c
LEFT JOIN anchor.dependency_results_of(
    array(
        SELECT e.id FROM c AS e
        WHERE e.kind = 'execute'
    )
) AS r ON c.id = r.task_id
"""

# Successful executions, many per round trip; each comes back succeeded or stale.
COMPLETE = """
SELECT
    id,
    outcome
FROM anchor.complete_v2(
    ids => %(ids)s::bigint[], fences => %(fences)s::bigint[], worker_id => %(worker_id)s::text
)
"""

# Completions and the next claim in one statement, one round trip and one transaction. The claim's
# max_tasks counts the completed rows (the slots they free), so it runs after complete_v2 has finished; the
# ids complete_v2 refused come back as 'stale' rows after the claim's rows.
COMPLETE_AND_CLAIM = """
WITH done AS MATERIALIZED (
    SELECT
        r.id,
        r.outcome
    FROM anchor.complete_v2(
        ids => %(ids)s::bigint[], fences => %(fences)s::bigint[], worker_id => %(worker_id)s::text
    ) AS r
),

c AS MATERIALIZED (
    SELECT
        claimed.kind,
        claimed.id,
        claimed.name,
        claimed.params,
        claimed.attempt,
        claimed.hook_attempt,
        claimed.max_attempts,
        claimed.queue,
        claimed.timeout,
        claimed.deadline,
        claimed.scheduled_at,
        claimed.run_at,
        claimed.fence
    FROM (SELECT count(*)::int AS freed FROM done) AS d
    CROSS JOIN
        LATERAL anchor.claim_v2(
            worker_id => %(worker_id)s::text,
            max_tasks => %(max_tasks)s::int + d.freed,
            task_names => %(task_names)s::text[],
            queues => %(queues)s::text[],
            hook_timeout => %(hook_timeout)s::interval,
            max_hook_attempts => %(max_hook_attempts)s::int
        ) AS claimed
)

SELECT
    c.kind,
    c.id,
    c.name,
    c.params,
    c.attempt,
    c.hook_attempt,
    c.max_attempts,
    c.queue,
    c.timeout,
    c.deadline,
    c.scheduled_at,
    c.run_at,
    c.fence,
    r.dependencies,
    now() AS db_now
FROM c
LEFT JOIN anchor.dependency_results_of(
    array(
        SELECT e.id FROM c AS e
        WHERE e.kind = 'execute'
    )
) AS r ON c.id = r.task_id
UNION ALL
SELECT
    'stale' AS kind,
    done.id,
    NULL::text AS name,
    NULL::jsonb AS params,
    NULL::int AS attempt,
    NULL::int AS hook_attempt,
    NULL::int AS max_attempts,
    NULL::text AS queue,
    NULL::interval AS timeout,
    NULL::timestamptz AS deadline,
    NULL::timestamptz AS scheduled_at,
    NULL::timestamptz AS run_at,
    NULL::bigint AS fence,
    NULL::jsonb AS dependencies,
    NULL::timestamptz AS db_now
FROM done
WHERE done.outcome = 'stale'
"""

FAIL = """
SELECT anchor.fail_v2(
    id => %(id)s::bigint,
    fence => %(fence)s::bigint,
    worker_id => %(worker_id)s::text,
    error_message => %(error_message)s::text,
    error_type => %(error_type)s::text,
    error_traceback => %(error_traceback)s::text,
    fatal => %(fatal)s::boolean,
    record_event => %(record_event)s::boolean,
    hook_timeout => %(hook_timeout)s::interval
)
"""

# The executor raised SnoozeTask: pending again at now + delay, the attempt given back; fenced like COMPLETE.
# Returns snoozed, stale, or cancelled (a cancel was requested while it ran).
SNOOZE = """
SELECT anchor.snooze(
    id => %(id)s::bigint, fence => %(fence)s::bigint, worker_id => %(worker_id)s::text, delay => %(delay)s::interval
)
"""

# Run inside the hook's transaction: failing -> failed, committed together with the hook's writes.
FINISH_FAILURE = """
SELECT anchor.finish_failure_v2(
    id => %(id)s::bigint, fence => %(fence)s::bigint, worker_id => %(worker_id)s::text
)
"""

FAIL_HOOK = """
SELECT anchor.fail_hook_v2(
    id => %(id)s::bigint,
    fence => %(fence)s::bigint,
    worker_id => %(worker_id)s::text,
    error_message => %(error_message)s::text,
    error_type => %(error_type)s::text,
    error_traceback => %(error_traceback)s::text,
    max_hook_attempts => %(max_hook_attempts)s::int
)
"""

HAND_BACK = """
SELECT
    id,
    outcome
FROM anchor.hand_back_v2(
    ids => %(ids)s::bigint[], fences => %(fences)s::bigint[], worker_id => %(worker_id)s::text
)
"""

RESCUE = """
SELECT
    id,
    outcome
FROM anchor.rescue(
    heartbeat_timeout => %(heartbeat_timeout)s::interval,
    deadline_grace => %(deadline_grace)s::interval,
    max_rescues => %(max_rescues)s::int,
    max_hook_attempts => %(max_hook_attempts)s::int,
    p_now => %(now)s::timestamptz
)
"""

# Ends a hook connection whose (sync) hook overran its timeout: the server rolls its transaction back and
# releases the task's row lock, even though the thread running the hook cannot be stopped.
TERMINATE_BACKEND = "SELECT pg_terminate_backend(%(pid)s::int)"

LISTEN_TASKS = "LISTEN anchor_tasks"
LISTEN_CANCEL = "LISTEN anchor_cancel"

# Whether any work is due now for these task names (Worker.run_until_empty). Tasks held back by a limit count
# (they start when a slot or a rate window frees); those of a paused queue do not (nothing starts them until an
# operator resumes it), but a paused queue's hooks still run.
DUE_COUNT = """
SELECT count(*) FROM anchor.tasks AS t
WHERE
    t.name = any(%(task_names)s::text[])
    AND t.run_at <= now()
    AND (t.state = 'pending' OR (t.state = 'failing' AND t.locked_by IS NULL))
    AND NOT (
        t.state = 'pending'
        AND EXISTS (
            SELECT FROM anchor.queue_settings AS q
            WHERE q.name = t.queue AND q.paused
        )
    )
"""

# The results of a completion batch, sent ahead of COMPLETE in its transaction (only when some task of the
# batch returned one); outcomes recorded, stale or too_large.
RECORD_RESULTS = """
SELECT
    id,
    outcome
FROM anchor.record_results(
    ids => %(ids)s::bigint[],
    fences => %(fences)s::bigint[],
    results => %(results)s::jsonb[],
    worker_id => %(worker_id)s::text
)
"""

# A running execution's progress document, fenced by its claim; false when the task has moved on.
SET_PROGRESS = """
SELECT anchor.set_progress(
    id => %(id)s::bigint,
    fence => %(fence)s::bigint,
    worker_id => %(worker_id)s::text,
    progress => %(progress)s::jsonb
)
"""

# The stored size of a large result when it is over max_result_bytes, else null.
RESULT_OVERSIZE = """
SELECT anchor.result_oversize(%(result)s::jsonb)
"""
