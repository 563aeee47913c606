"""OpenTelemetry, when the ``otel`` extra (opentelemetry-api) is installed: the enqueuing span's context travels
with the task, so the worker's spans join the trace of the request that enqueued it.

Off costs nothing measurable: without opentelemetry-api the import below fails once, at import time, and every
function here returns at its first line; with it but no span active, an enqueue costs one context lookup.
"""

from __future__ import annotations

from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # the otel extra is not installed
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]

__all__ = ["current_trace_context"]


def current_trace_context() -> dict[str, Any] | None:
    """The active span's context as the global propagator writes it (W3C by default: traceparent, tracestate),
    or None when OpenTelemetry is not installed or no span is active."""
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, Any] = {}
    propagate.inject(carrier)
    return carrier or None
