"""OpenTelemetry, when the ``otel`` extra (opentelemetry-api) is installed: the enqueuing span's context travels
with the task, and the worker opens a span per execution and per hook in that trace.

- Enqueue: while a span is active, the runners record its context (the global propagator's carrier: W3C
  ``traceparent``/``tracestate`` by default) in ``anchor.tasks.trace_context``, in the enqueue's own statement.
- Worker: ``anchor.execute <Task>`` and ``anchor.hook <Task>`` spans (kind CONSUMER), children of the enqueuing
  span, with the task's id, name, attempt, queue and outcome; an exception is recorded on the span. The span is
  the current one while the executor runs, so the executor's own spans nest under it.

Off costs nothing measurable: without opentelemetry-api the import below fails once, at import time; with it but
no SDK configured (the API's default provider records nothing), ``worker_spans()`` returns None and the worker
neither reads trace contexts nor opens spans; with no span active, an enqueue costs one context lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # the otel extra is not installed
    otel_context = None  # type: ignore[assignment]
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]

__all__ = ["TaskSpan", "WorkerSpans", "current_trace_context", "worker_spans"]

TRACER_NAME = "anchor_py"


def current_trace_context() -> dict[str, Any] | None:
    """The active span's context as the global propagator writes it, or None when OpenTelemetry is not installed
    or no span is active."""
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, Any] = {}
    propagate.inject(carrier)
    return carrier or None


def worker_spans() -> WorkerSpans | None:
    """The worker's span factory, or None when OpenTelemetry is not installed or no SDK is configured (the API's
    default provider is a proxy until the application sets one: configure the SDK before starting the worker)."""
    if trace is None or isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None
    return WorkerSpans(trace.get_tracer(TRACER_NAME))


class TaskSpan:
    """One execution's or one hook's span. ``end(outcome)`` closes it once the worker knows the outcome (after
    reporting it); later calls do nothing, so a catch-all ``end`` in a ``finally`` is safe."""

    __slots__ = ("_ended", "_span")

    def __init__(self, span: Any) -> None:
        self._span = span
        self._ended = False

    def enter(self) -> object:
        """Make the span the current one (asyncio tasks and threads started after this inherit it); returns the
        token for ``leave``."""
        return otel_context.attach(trace.set_span_in_context(self._span))

    @staticmethod
    def leave(token: object) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]

    def record_failure(self, details: Mapping[str, Any]) -> None:
        """The error the worker reports (``error_type``, ``error_message``, ``error_traceback``), as the
        semantic conventions' exception event, and an error status."""
        attributes = {"exception.type": str(details.get("error_type")),
                      "exception.message": str(details.get("error_message"))}
        if details.get("error_traceback"):
            attributes["exception.stacktrace"] = str(details["error_traceback"])
        self._span.add_event("exception", attributes)
        self._span.set_status(trace.Status(trace.StatusCode.ERROR, attributes["exception.type"]))

    def end(self, outcome: str) -> None:
        if self._ended:
            return
        self._ended = True
        self._span.set_attribute("anchor.task.outcome", outcome)
        self._span.end()


class WorkerSpans:
    """Opens the worker's spans with one tracer."""

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer

    def start(
        self, operation: str, task_name: str, task_id: int, attempt: int, queue: str,
        trace_context: Mapping[str, Any] | None, hook_attempt: int | None = None,
    ) -> TaskSpan:
        """``anchor.<operation> <task_name>``, a child of the enqueuing span when ``trace_context`` holds one
        (else the root of a trace of its own: never a child of whatever happens to be current in the worker)."""
        root = otel_context.Context()
        parent = propagate.extract(trace_context, context=root) if trace_context else root
        attributes: dict[str, Any] = {
            "anchor.task.id": task_id, "anchor.task.name": task_name, "anchor.task.attempt": attempt,
            "anchor.task.queue": queue, "messaging.system": "anchor", "messaging.operation": "process",
        }
        if hook_attempt is not None:
            attributes["anchor.task.hook_attempt"] = hook_attempt
        span = self._tracer.start_span(f"anchor.{operation} {task_name}", context=parent,
                                       kind=trace.SpanKind.CONSUMER, attributes=attributes)
        return TaskSpan(span)
