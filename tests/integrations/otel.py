"""The OpenTelemetry SDK for the tests that need it (the ``sdk_tracing`` fixture, in conftest.py): a tracer provider
exporting to memory, set as the process's global provider for one test and taken away after it, so every other test
runs with OpenTelemetry off (the API's proxy provider), as a user without an SDK does."""

from __future__ import annotations

import psycopg
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from anchor_py import queries
from examples.zgen import taskgen


def sdk_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """An SDK provider exporting to ``exporter``, set as the process's global one (until reset_global_provider)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def reset_global_provider() -> None:
    # the API lets a process set its provider once; this is what opentelemetry-test-utils' reset_trace_globals does
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace._PROXY_TRACER_PROVIDER = trace.ProxyTracerProvider()


def registered(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(queries.REGISTER_TASKS, taskgen.TASKS.registration())
