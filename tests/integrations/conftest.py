"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import Tracer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integrations.otel import reset_global_provider, sdk_provider


@pytest.fixture
def sdk_tracing() -> Iterator[tuple[Tracer, InMemorySpanExporter]]:
    """OpenTelemetry on for one test: a tracer of the global SDK provider, and the exporter holding every span it
    finished."""
    exporter = InMemorySpanExporter()
    provider = sdk_provider(exporter)
    try:
        yield provider.get_tracer("tests"), exporter
    finally:
        provider.shutdown()
        reset_global_provider()
