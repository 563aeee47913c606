"""OpenTelemetry across a real worker (anchor_py.tracing, the SDK's in-memory exporter): one trace runs from a
(simulated) web request's span through the enqueue, each execution (a retried failure, then the final one) and
the onFailed hook; the executor's own spans nest under the execution's span, in an async executor and in a
plain ``def`` executor's thread; exceptions are recorded on the spans."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import psycopg
from opentelemetry.sdk.trace import ReadableSpan, Tracer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from anchor_py import TaskContext
from anchor_py.taskcore import with_retry_policy
from anchor_py.worker import Worker, WorkerConfig
from examples.zgen import taskgen
from tests.integrations.otel import registered


class TracedExecutor:
    """SendNotification always fails (its hook escalates); SendEmail, a plain def, succeeds; each opens a span of
    its own inside."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    async def execute_send_notification(self, ctx: TaskContext, params: taskgen.SendNotificationParameters) -> None:
        with self.tracer.start_as_current_span("push.deliver"):
            raise ConnectionError(f"push service down (attempt {ctx.attempt})")

    async def on_send_notification_failed(
        self, ctx: TaskContext, task_id: int, params: taskgen.SendNotificationParameters,
        tx: psycopg.AsyncConnection[Any],
    ) -> None:
        with self.tracer.start_as_current_span("escalate"):
            await tx.execute("select 1")

    def execute_send_email(self, ctx: TaskContext, params: taskgen.SendEmailParameters) -> None:
        with self.tracer.start_as_current_span("smtp.send"):
            pass


def run_worker_until(dsn: str, tracer: Tracer, done: str) -> None:
    async def main() -> None:
        worker = Worker(dsn, TracedExecutor(tracer), taskgen.TASKS, WorkerConfig(poll_interval=timedelta(seconds=0.2)))
        running = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 30
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while (await (await conn.execute(done)).fetchone()) != (True,):
                assert time.monotonic() < deadline and not running.done(), "the worker did not finish the tasks"
                await asyncio.sleep(0.1)
        await worker.stop()
        await running

    asyncio.run(main())


def spans_named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return sorted((s for s in exporter.get_finished_spans() if s.name.startswith(prefix)),
                  key=lambda s: s.start_time or 0)


def test_one_trace_from_the_request_through_retries_to_the_hook(
    dsn: str, sdk_tracing: tuple[Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = sdk_tracing
    registered(dsn)
    with tracer.start_as_current_span("POST /notifications") as request, \
            psycopg.connect(dsn, autocommit=True) as conn:
        task_id = taskgen.TaskRunner(conn).run_send_notification(
            taskgen.SendNotificationParameters(user_id=7, message="hello"), with_retry_policy("1s", 2))
        email_id = taskgen.TaskRunner(conn).run_send_email(taskgen.SendEmailParameters(user_id=7, template_id="hi"))
    run_worker_until(dsn, tracer, f"select bool_and(state in ('failed', 'succeeded')) from anchor.tasks "
                          f"where id in ({task_id}, {email_id})")

    trace_id = request.get_span_context().trace_id
    request_span_id = request.get_span_context().span_id
    executions = spans_named(exporter, "anchor.execute SendNotification")
    assert [(s.attributes or {}).get("anchor.task.attempt") for s in executions] == [1, 2]
    assert [(s.attributes or {}).get("anchor.task.outcome") for s in executions] == ["retry", "failing"]
    for span in executions:
        assert span.kind == SpanKind.CONSUMER
        assert span.context.trace_id == trace_id and span.parent and span.parent.span_id == request_span_id
        assert dict(span.attributes or {}) | {"anchor.task.attempt": 0, "anchor.task.outcome": ""} == {
            "anchor.task.id": task_id, "anchor.task.name": "SendNotification", "anchor.task.queue": "default",
            "anchor.task.attempt": 0, "anchor.task.outcome": "", "messaging.system": "anchor",
            "messaging.operation": "process",
        }
        assert span.status.status_code == StatusCode.ERROR
        [event] = [e for e in span.events if e.name == "exception"]
        assert (event.attributes or {})["exception.type"].endswith("ConnectionError")
        assert "push service down" in str((event.attributes or {})["exception.message"])
    # the executor's own spans nest under their execution's span
    deliveries = spans_named(exporter, "push.deliver")
    assert [d.parent.span_id if d.parent else None for d in deliveries] == [
        e.context.span_id for e in executions]

    [hook] = spans_named(exporter, "anchor.hook SendNotification")
    assert hook.context.trace_id == trace_id and hook.parent and hook.parent.span_id == request_span_id
    assert (hook.attributes or {})["anchor.task.outcome"] == "failed"  # committed with the failure
    [escalate] = spans_named(exporter, "escalate")
    assert escalate.parent and escalate.parent.span_id == hook.context.span_id

    [email] = spans_named(exporter, "anchor.execute SendEmail")
    assert (email.attributes or {})["anchor.task.outcome"] == "succeeded"
    assert email.context.trace_id == trace_id and email.status.status_code != StatusCode.ERROR
    [smtp] = spans_named(exporter, "smtp.send")  # a plain def executor, in the worker's thread
    assert smtp.parent and smtp.parent.span_id == email.context.span_id


def test_a_task_enqueued_outside_any_span_starts_a_trace_of_its_own(
    dsn: str, sdk_tracing: tuple[Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = sdk_tracing
    registered(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        email_id = taskgen.TaskRunner(conn).run_send_email(taskgen.SendEmailParameters(user_id=7, template_id="hi"))
    run_worker_until(dsn, tracer, f"select state = 'succeeded' from anchor.tasks where id = {email_id}")
    [email] = spans_named(exporter, "anchor.execute SendEmail")
    assert email.parent is None and (email.attributes or {})["anchor.task.id"] == email_id
