"""The operator API's reads and actions (anchor_py.admin: the CLI and the dashboard)."""

# The read side of `anchor tasks|stats|workers`, the dashboard and /metrics (anchor_py/admin.py), and the
# operator actions, which go through the SQL core's own functions (never a direct UPDATE).

ADMIN_NOW = "SELECT now() AS now"

# One page of tasks, newest first, keyset-paged on id. A null filter means "any".
ADMIN_TASK_LIST = """
SELECT
    t.id,
    t.name,
    t.state,
    t.queue,
    t.priority,
    t.attempts,
    t.max_attempts,
    t.unique_tag,
    t.run_at,
    t.created_at,
    t.finished_at,
    t.locked_by,
    t.last_error
FROM anchor.tasks AS t
WHERE
    (%(states)s::text[] IS NULL OR t.state = any(%(states)s::text[]))
    AND (%(names)s::text[] IS NULL OR t.name = any(%(names)s::text[]))
    AND (%(queues)s::text[] IS NULL OR t.queue = any(%(queues)s::text[]))
    AND (%(tag)s::text IS NULL OR t.unique_tag = %(tag)s::text)
    AND (%(since)s::timestamptz IS NULL OR t.created_at >= %(since)s::timestamptz)
    AND (%(before_id)s::bigint IS NULL OR t.id < %(before_id)s::bigint)
ORDER BY t.id DESC
LIMIT %(limit)s::int
"""

ADMIN_TASK = """
SELECT
    t.id,
    t.name,
    t.params,
    t.state,
    t.queue,
    t.priority,
    t.attempts,
    t.max_attempts,
    t.retry_intervals,
    t.timeout,
    t.unique_tag,
    t.run_at,
    t.scheduled_at,
    t.locked_by,
    t.locked_at,
    t.deadline,
    t.cancel_requested,
    t.rescues,
    t.hook_attempts,
    t.last_error,
    t.created_at,
    t.finished_at,
    t.result,
    t.progress,
    now() AS read_at
FROM anchor.tasks AS t
WHERE t.id = %(id)s::bigint
"""

ADMIN_TASK_EVENTS = """
SELECT
    e.id,
    e.at,
    e.kind,
    e.attempt,
    e.worker_id,
    e.error_type,
    e.message,
    e.traceback,
    e.details
FROM anchor.task_events AS e
WHERE e.task_id = %(id)s::bigint
ORDER BY e.id
"""

# Counts per task name and state (the whole table: one pass; a scrape every 30-60 s keeps it cheap).
ADMIN_COUNTS = """
SELECT
    t.name,
    t.state,
    count(*) AS n
FROM anchor.tasks AS t
GROUP BY t.name, t.state
ORDER BY t.name, t.state
"""

# Finished tasks per minute over the last %(minutes)s minutes (the current minute included), by outcome.
ADMIN_THROUGHPUT = """
WITH bounds AS (
    SELECT date_trunc('minute', now()) - (%(minutes)s::int - 1) * interval '1 minute' AS first_minute
),

finished AS (
    SELECT
        t.state,
        date_trunc('minute', t.finished_at) AS minute,
        count(*) AS n
    FROM anchor.tasks AS t, bounds AS b
    WHERE t.state IN ('succeeded', 'failed', 'hook_failed', 'cancelled') AND t.finished_at >= b.first_minute
    GROUP BY t.state, date_trunc('minute', t.finished_at)
)

SELECT
    m.minute,
    coalesce(sum(f.n) FILTER (WHERE f.state = 'succeeded'), 0)::bigint AS succeeded,
    coalesce(sum(f.n) FILTER (WHERE f.state IN ('failed', 'hook_failed')), 0)::bigint AS failed,
    coalesce(sum(f.n) FILTER (WHERE f.state = 'cancelled'), 0)::bigint AS cancelled
FROM bounds AS b
CROSS JOIN generate_series(b.first_minute, date_trunc('minute', now()), interval '1 minute') AS m (minute)
LEFT JOIN finished AS f ON m.minute = f.minute
GROUP BY m.minute
ORDER BY m.minute
"""

# Per queue (every queue of an active definition, plus any queue holding live tasks): pending tasks, how
# many are due now, the age of the oldest due one, running tasks.
ADMIN_QUEUES = """
WITH live AS (
    SELECT
        t.queue,
        count(*) FILTER (WHERE t.state = 'pending') AS pending,
        count(*) FILTER (WHERE t.state = 'pending' AND t.run_at <= now()) AS due,
        extract(EPOCH FROM now() - min(t.run_at) FILTER (WHERE t.state = 'pending' AND t.run_at <= now()))
            AS oldest_due_seconds,
        count(*) FILTER (WHERE t.state = 'running') AS running
    FROM anchor.tasks AS t
    WHERE t.state IN ('pending', 'running')
    GROUP BY t.queue
)

SELECT
    q.queue,
    l.oldest_due_seconds::float8 AS oldest_due_seconds,
    coalesce(l.pending, 0) AS pending,
    coalesce(l.due, 0) AS due,
    coalesce(l.running, 0) AS running
FROM (
    SELECT d.queue FROM anchor.task_definitions AS d
    WHERE d.active
    UNION
    SELECT live.queue FROM live
) AS q
LEFT JOIN live AS l ON q.queue = l.queue
ORDER BY q.queue
"""

# Workers with their heartbeat age; alive as anchor.worker_alive (and the rescuer) judge it.
ADMIN_WORKERS = """
SELECT
    w.worker_id,
    w.info,
    w.started_at,
    w.last_heartbeat,
    extract(EPOCH FROM now() - w.last_heartbeat)::float8 AS heartbeat_age_seconds,
    anchor.worker_alive(w.worker_id, %(timeout)s::interval, now()) AS alive,
    (
        SELECT count(*) FROM anchor.tasks AS t
        WHERE t.locked_by = w.worker_id AND t.state = 'running'
    ) AS running
FROM anchor.workers AS w
ORDER BY w.worker_id
"""

ADMIN_RETRY = "SELECT anchor.retry_now(id => %(id)s::bigint) AS outcome"
ADMIN_RETRY_HOOK = "SELECT anchor.retry_hook(id => %(id)s::bigint) AS outcome"

# Cancel, pause and resume act on a task and its live descendants in one transaction; each returns a row per
# task it changed (id, outcome).
ADMIN_CANCEL_TREE = """
SELECT
    t.task_id,
    t.outcome
FROM anchor.cancel_tree(id => %(id)s::bigint) AS t
"""

ADMIN_PAUSE = """
SELECT
    t.task_id,
    t.outcome
FROM anchor.pause_task(id => %(id)s::bigint) AS t
"""

ADMIN_RESUME = """
SELECT
    t.task_id,
    t.outcome
FROM anchor.resume_task(id => %(id)s::bigint) AS t
"""

# A task's parent, children, dependencies and dependents: at most max_each of each, with how many there are.
ADMIN_TASK_TREE = """
SELECT
    r.relation,
    r.task_id AS id,
    r.name,
    r.state,
    r.total
FROM anchor.task_tree(id => %(id)s::bigint, max_each => %(max_each)s::int) AS r
ORDER BY r.relation, r.task_id
"""

# How many tasks a prune with the same arguments would delete (the progress counter's total).
ADMIN_PRUNE_COUNT = """
SELECT
    (
        SELECT count(*) FROM anchor.tasks AS t
        WHERE t.state = 'succeeded' AND t.finished_at < now() - %(succeeded_after)s::interval
    )
    + (
        SELECT count(*) FROM anchor.tasks AS t
        WHERE
            t.state IN ('failed', 'hook_failed', 'cancelled')
            AND t.finished_at < now() - %(failed_after)s::interval
    ) AS n
"""

# Every known queue (with settings, an active definition's, or holding live tasks): paused, limits, counts.
ADMIN_QUEUE_LIST = """
SELECT
    q.name,
    q.paused,
    q.paused_at,
    q.concurrency,
    q.rate_limit,
    q.rate_period,
    q.pending,
    q.held,
    q.running,
    q.failing
FROM anchor.queues() AS q
ORDER BY q.name
"""

# Pausing stops new executions of the queue on every worker at once; running ones finish, hooks still run.
ADMIN_PAUSE_QUEUE = "SELECT anchor.pause_queue(queue => %(name)s::text) AS outcome"
ADMIN_RESUME_QUEUE = "SELECT anchor.resume_queue(queue => %(name)s::text) AS outcome"
