"""The enqueue side of OpenTelemetry (anchor_py.tracing): a task enqueued while a span is active carries that
span's W3C context in anchor.tasks.trace_context, through each runner path; without a span it carries none."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from anchor_py import tracing
from examples.zgen import taskgen
from tests.integrations.otel import registered

EMAIL = taskgen.SendEmailParameters(user_id=1, template_id="welcome")


def contexts(dsn: str) -> list[Any]:
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute("select trace_context from anchor.tasks order by id").fetchall()]


def traceparent(span: trace.Span) -> dict[str, str]:
    context = span.get_span_context()
    return {"traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"}


def test_each_sync_runner_path_records_the_active_span(
    dsn: str, sdk_tracing: tuple[Tracer, InMemorySpanExporter]
) -> None:
    tracer, _ = sdk_tracing
    registered(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        runner = taskgen.TaskRunner(conn)
        runner.run_send_email(EMAIL)  # no span: nothing recorded
        with tracer.start_as_current_span("POST /users") as span:
            runner.run_send_email(EMAIL)
            runner.run_send_email_many([EMAIL, EMAIL])
            conn.autocommit = False
            with conn.transaction():
                runner.run_send_email_with_tx(conn, EMAIL)
    assert contexts(dsn) == [None] + [traceparent(span)] * 4


def test_the_async_runner_records_the_active_span(
    dsn: str, sdk_tracing: tuple[Tracer, InMemorySpanExporter]
) -> None:
    tracer, _ = sdk_tracing
    registered(dsn)

    async def enqueue() -> dict[str, str]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            with tracer.start_as_current_span("POST /users") as span:
                await taskgen.AsyncTaskRunner(conn).run_send_email(EMAIL)
                await taskgen.AsyncTaskRunner(conn).run_send_email_many([EMAIL])
            return traceparent(span)

    expected = asyncio.run(enqueue())
    assert contexts(dsn) == [expected, expected]


def test_without_an_sdk_nothing_is_recorded_and_the_worker_opens_no_spans(dsn: str) -> None:
    registered(dsn)
    assert tracing.worker_spans() is None  # the API's default provider: OpenTelemetry off
    with psycopg.connect(dsn, autocommit=True) as conn:
        taskgen.TaskRunner(conn).run_send_email(EMAIL)
    assert contexts(dsn) == [None]
