"""The span processor that marks the spans of durable runs (see tracing.py); imports the OpenTelemetry SDK."""

from __future__ import annotations

import threading

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from .tracing import DBOS_SCOPE, REPLAYED, STEP_ID, WORKFLOW_ID, library_step

__all__ = ["RunSpanProcessor"]


class RunSpanProcessor(SpanProcessor):
    """Marks the spans of durable runs as they start (see tracing.py); exports nothing itself.

    `install()` adds one to the global tracer provider; add it yourself to a provider you build (before or after
    Logfire's `configure()`, which accepts `additional_span_processors=[RunSpanProcessor()]`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # The open workflow span of each run executing in this process, to link a recovered execution to the last.
        self._workflow_spans: dict[str, Span] = {}
        # Ids of the open workflow spans whose trace context this process stored (`tracing._announce_execution`).
        self.announced: set[int] = set()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        from dbos import DBOS

        workflow_id = DBOS.workflow_id
        if not workflow_id:
            return
        span.set_attribute(WORKFLOW_ID, workflow_id)
        scope = span.instrumentation_scope
        if scope is None or scope.name != DBOS_SCOPE:
            return
        step_id = DBOS.step_id
        if step_id is None:
            with self._lock:
                self._workflow_spans.setdefault(workflow_id, span)
        elif library_step.get():
            span.set_attribute(STEP_ID, step_id)
            span.set_attribute(REPLAYED, True)  # until the step's function runs (`StepTrace.live`)

    def on_end(self, span: ReadableSpan) -> None:
        workflow_id = span.attributes.get(WORKFLOW_ID) if span.attributes else None
        if isinstance(workflow_id, str) and span.context is not None:
            span_id = span.context.span_id  # `span` is a read-only copy of the one `on_start` saw
            with self._lock:
                started = self._workflow_spans.get(workflow_id)
                if started is not None and started.get_span_context().span_id == span_id:
                    del self._workflow_spans[workflow_id]
                    self.announced.discard(span_id)

    def workflow_span(self, workflow_id: str) -> Span | None:
        with self._lock:
            return self._workflow_spans.get(workflow_id)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
