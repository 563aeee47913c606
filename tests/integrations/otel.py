"""The OpenTelemetry SDK for the tests: one in-memory exporter for the process (a tracer provider can be set
only once), and the example's definitions registered."""

from __future__ import annotations

import psycopg
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from anchor_py import queries
from examples.zgen import taskgen

EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)
TRACER = trace.get_tracer("tests")


def registered(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(queries.REGISTER_TASKS, {"definitions": taskgen.TASKS.definitions_json(),
                                              "version": taskgen.TASKS.version})
