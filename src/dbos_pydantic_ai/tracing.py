"""OpenTelemetry for durable runs: DBOS's tracing switched on from `dbos_config()`, and what operators need on spans.

With pydantic-ai's instrumentation (`Agent.instrument_all()`, or `logfire.instrument_pydantic_ai()`) and DBOS's
tracing (`enable_otlp`) on, one execution of a durable run is one trace: DBOS's workflow span, pydantic-ai's
`invoke_agent` / `chat` / `execute_tool` spans, and DBOS's step span for each checkpointed call. This module adds:

- `dbos.workflow_id` on every span started inside a run (pydantic-ai's included), so one query finds a run's spans;
- `dbos.step.id` and `dbos.step.replayed` on the step spans of this library's steps (model requests, durable tools,
  MCP calls), and on the pydantic-ai span around them (`chat ...`, `execute_tool ...`), with a `dbos.step` event per
  step: a step replayed from the database after a crash says so, so no span pretends the model was called again;
- on a recovered run, a link from the new execution's workflow span to the previous execution's (its trace context
  is kept in the run's `dbos_pydantic_ai.trace` event), with `dbos_pydantic_ai.execution` counting executions;
- approval waits as span events (`approval.requested`, `approval.decided`, `approval.resolved`, `approval.parked`:
  wait id, tool call, decision, seconds waited) and stream writes as `stream.write` events with their offsets;
- an execution that ends because its run parked is not a failure: its workflow span ends OK, marked parked.

Nothing here runs unless DBOS's tracing is on; OpenTelemetry is imported only then (the `otel` extra).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import _compat
from .exceptions import UserError
from .names import TRACE_EVENT

if TYPE_CHECKING:
    from ._span_processor import RunSpanProcessor

__all__ = [
    "APPROVAL_WAIT_ID",
    "EXECUTION",
    "PARKED",
    "REPLAYED",
    "STEP_ID",
    "STEP_NAME",
    "STREAM_OFFSET",
    "STREAM_POSITION",
    "WORKFLOW_ID",
    "RunSpanProcessor",
    "check_trace_url",
    "dbos_tracing_config",
    "install",
    "trace_link",
]

WORKFLOW_ID = "dbos.workflow_id"
STEP_ID = "dbos.step.id"
STEP_NAME = "dbos.step.name"
REPLAYED = "dbos.step.replayed"
EXECUTION = "dbos_pydantic_ai.execution"
PREVIOUS_TRACE_ID = "dbos_pydantic_ai.previous_trace_id"
PARKED = "dbos_pydantic_ai.parked"
APPROVAL_WAIT_ID = "dbos_pydantic_ai.approval.wait_id"
STREAM_OFFSET = "dbos.stream.offset"
STREAM_KEY_ATTRIBUTE = "dbos.stream.key"
STREAM_POSITION = "dbos_pydantic_ai.stream.position"  # the offset `read_events()` yields for it: DBOS's offset + 1

DBOS_SCOPE = "dbos-tracer"  # the instrumentation scope DBOS 3.4 starts its spans with (`_tracer.py`)

# Set while this library's step is being started, so the processor can tell its DBOS step span from DBOS's own.
library_step: contextvars.ContextVar[bool] = contextvars.ContextVar("dbos_pai_library_step", default=False)


# --- Configuration -------------------------------------------------------------------------------------


def dbos_tracing_config(
    name: str,
    *,
    tracing: bool,
    otlp_endpoint: str | Sequence[str] | None,
    trace_attributes: Mapping[str, str] | None,
    instrument_pydantic_ai: bool,
) -> dict[str, Any]:
    """The DBOS config keys that turn its tracing on (for `dbos_config(tracing=True, ...)`), after checking that
    OpenTelemetry is installed; also instruments pydantic-ai's agents unless something already did (Logfire)."""
    if not tracing:
        if otlp_endpoint is not None or trace_attributes is not None:
            raise UserError("`otlp_endpoint` and `trace_attributes` need `tracing=True` in `dbos_config()`.")
        return {}
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as error:
        raise UserError(
            f"dbos_config(tracing=True) needs OpenTelemetry ({error.name} is missing): "
            "install it with `pip install 'dbos-pydantic-ai[otel]'`."
        ) from error
    endpoints = [otlp_endpoint] if isinstance(otlp_endpoint, str) else list(otlp_endpoint or [])
    if endpoints:
        _ensure_sdk_provider(name)
    config: dict[str, Any] = {"enable_otlp": True}
    if endpoints:
        config["otlp_traces_endpoints"] = endpoints
    if trace_attributes:
        config["otlp_attributes"] = dict(trace_attributes)
    if instrument_pydantic_ai and not _compat.pydantic_ai_instrumented():
        from pydantic_ai import Agent

        Agent.instrument_all()
    install()  # now, if a tracer provider is set (else at the first traced step), so runs' first spans are marked
    return config


def _ensure_sdk_provider(service_name: str) -> None:
    """Set an SDK tracer provider named after the application when none is set yet, as DBOS would at launch, so
    this library's processor is on it before the first run starts (DBOS adds its exporters to it)."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(TracerProvider(resource=Resource({SERVICE_NAME: service_name})))


# --- The span processor (its class is in _span_processor.py, which imports the OpenTelemetry SDK) ---------------


def __getattr__(name: str) -> Any:
    """`RunSpanProcessor`, imported only when asked for: it needs the OpenTelemetry SDK (the `otel` extra)."""
    if name == "RunSpanProcessor":
        from ._span_processor import RunSpanProcessor

        return RunSpanProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_processor: RunSpanProcessor | None = None
_installed_on: Any = None


def install(provider: Any = None) -> RunSpanProcessor | None:
    """Add this library's `RunSpanProcessor` to `provider` (default: OpenTelemetry's global tracer provider), once.

    Called by itself when a durable run's step starts with tracing on; call it after replacing the global
    provider. Returns None (and does nothing) while the provider cannot take span processors (no SDK provider
    is set yet: OpenTelemetry's default proxy).
    """
    global _processor, _installed_on
    from opentelemetry import trace

    target = provider if provider is not None else trace.get_tracer_provider()
    if target is _installed_on:
        return _processor
    add = getattr(target, "add_span_processor", None)
    if add is None:
        return None
    if _processor is None:
        from ._span_processor import RunSpanProcessor

        _processor = RunSpanProcessor()
    add(_processor)
    _installed_on = target
    return _processor


def _active() -> bool:
    """Whether DBOS traces (and so this module marks spans); installs the processor when it can."""
    if not _compat.dbos_tracing_enabled():
        return False
    try:
        install()
    except ImportError:  # DBOS's flag without OpenTelemetry installed: DBOS itself would fail at its first span
        return False
    return True


# --- Steps (hooks in _steps.py) --------------------------------------------------------------------------


class StepTrace:
    """One of this library's steps being run: `live()` is called by its function (it runs only when not replayed);
    when the step returns, the span around it (pydantic-ai's `chat` or `execute_tool`) gets the step's id and
    whether it was replayed."""

    __slots__ = ("_step_id", "_token", "is_live", "name")

    def __init__(self, name: str, step_id: int | None) -> None:
        self.name = name
        self._step_id = step_id
        self.is_live = False
        self._token: contextvars.Token[bool] | None = None

    def __enter__(self) -> StepTrace:
        self._token = library_step.set(True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            library_step.reset(self._token)
        from opentelemetry import trace

        span = trace.get_current_span()
        if not span.is_recording():
            return
        step_id = self._step_id if self._step_id is not None else _compat.current_function_id()
        attributes: dict[str, Any] = {STEP_NAME: self.name, REPLAYED: not self.is_live}
        if step_id is not None:
            attributes[STEP_ID] = step_id
        span.set_attributes(attributes)
        span.add_event("dbos.step", attributes)

    async def live(self) -> None:
        """Called inside the step when its function runs: the step span is not a replay; the first live step of an
        execution links a recovered run to its previous execution."""
        from opentelemetry import trace

        self.is_live = True
        library_step.set(False)  # calls made by the step's function are not this step
        trace.get_current_span().set_attribute(REPLAYED, False)
        await _announce_execution()


def step_trace(name: str, step_id: int | None = None) -> StepTrace | None:
    """A `StepTrace` for the step `name` about to run (at `step_id` if reserved), or None when tracing is off."""
    return StepTrace(name, step_id) if _active() else None


async def announce_execution() -> None:
    """From inside a live step of this library that has no `StepTrace` (an approval check): `_announce_execution`."""
    if _active():
        await _announce_execution()


async def _announce_execution() -> None:
    """Once per execution of a run, at its first live step: link the workflow span to the previous execution's
    (read from the run's trace event) and store this execution's trace context in its place.

    Runs inside a step, where `get_event` / `set_event` take no step id of their own: the run's steps are numbered
    the same with tracing on or off.
    """
    from dbos import DBOS
    from opentelemetry.trace import SpanContext, TraceFlags

    workflow_id = DBOS.workflow_id
    if workflow_id is None or _processor is None:
        return
    span = _processor.workflow_span(workflow_id)
    context = span.get_span_context() if span is not None else None
    if span is None or context is None or context.span_id in _processor.announced:
        return
    _processor.announced.add(context.span_id)
    previous = await DBOS.get_event_async(workflow_id, TRACE_EVENT, timeout_seconds=0)
    execution = 1
    if isinstance(previous, dict) and previous.get("trace_id") != format(context.trace_id, "032x"):
        execution = int(previous.get("execution", 1)) + 1
        linked = SpanContext(
            trace_id=int(previous["trace_id"], 16),
            span_id=int(previous["span_id"], 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        span.add_link(linked, {"dbos_pydantic_ai.link": "previous_execution"})
        span.set_attribute(PREVIOUS_TRACE_ID, previous["trace_id"])
    elif isinstance(previous, dict):
        return  # this execution's context is stored already
    span.set_attribute(EXECUTION, execution)
    await DBOS.set_event_async(
        TRACE_EVENT,
        {
            "trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x"),
            "execution": execution,
            "at": time.time(),
        },
    )


# --- Approval waits (hooks in _approval_wait.py) -----------------------------------------------------------


def approval_event(name: str, wait_id: int, requested_at: float, **fields: Any) -> None:
    """An `approval.<name>` event on the current span: the wait's id, seconds since the calls were requested (from
    the recorded times, so a replay reports the real wait), and `fields` (tool call id, decision, ...)."""
    if not _active():
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    if not span.is_recording():
        return
    at = fields.pop("at", None)
    attributes: dict[str, Any] = {APPROVAL_WAIT_ID: wait_id}
    if isinstance(at, (int, float)):
        attributes["dbos_pydantic_ai.approval.waited_seconds"] = max(0.0, float(at) - requested_at)
    for key, value in fields.items():
        if isinstance(value, (str, bool, int, float)):
            attributes[f"dbos_pydantic_ai.approval.{key}"] = value
        elif isinstance(value, (list, tuple)):
            attributes[f"dbos_pydantic_ai.approval.{key}"] = [str(item) for item in value]
    span.add_event(f"approval.{name}", attributes)


def execution_parked(workflow_id: str) -> None:
    """Mark this execution's workflow span as ended by a park (`RunParked`), with status OK.

    DBOS sets ERROR on a workflow span whose function raised anything, `RunParked` included; an OpenTelemetry span
    ignores any status set after OK, so a parked execution does not count as a failed run in a backend's error rate.
    """
    if not _active() or _processor is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span = _processor.workflow_span(workflow_id)
    if span is not None and span.is_recording():
        span.set_attribute(PARKED, True)
        span.set_status(Status(StatusCode.OK))


# --- Streams (hooks in streams.py) -------------------------------------------------------------------------


class StreamTrace:
    """The stream writes of one model request step: `stream.write` events with their offsets, counted from the
    stream's last offset when the step started (nothing else writes to the run's stream while its step runs)."""

    def __init__(self, key: str, next_offset: int) -> None:
        self.key = key
        self.next_offset = next_offset

    def wrote(self, kind: str) -> None:
        from opentelemetry import trace

        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "stream.write",
                {
                    STREAM_KEY_ATTRIBUTE: self.key,
                    STREAM_OFFSET: self.next_offset,
                    STREAM_POSITION: self.next_offset + 1,
                    "dbos_pydantic_ai.event": kind,
                },
            )
        self.next_offset += 1


async def stream_trace(key: str) -> StreamTrace | None:
    """A `StreamTrace` for writes from inside the current step, or None when tracing is off."""
    from dbos import DBOS

    workflow_id = DBOS.workflow_id
    if workflow_id is None or not _active():
        return None
    last = await asyncio.to_thread(_compat.last_stream_offset, workflow_id, key)
    return StreamTrace(key, last + 1)


async def stream_write_recorded(key: str, kind: str) -> None:
    """A `stream.write` event for a write just made from workflow code (a checkpointed write: its row carries the
    write's step id, which gives its offset, on the first run and on a replay)."""
    from dbos import DBOS

    workflow_id = DBOS.workflow_id
    if workflow_id is None or not _active():
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    if not span.is_recording():
        return
    step_id = _compat.current_function_id()
    if step_id is None:
        return
    offset = await asyncio.to_thread(_compat.stream_offset_of_step, workflow_id, key, step_id)
    attributes: dict[str, Any] = {STREAM_KEY_ATTRIBUTE: key, STEP_ID: step_id, "dbos_pydantic_ai.event": kind}
    if offset is not None:
        attributes[STREAM_OFFSET] = offset
        attributes[STREAM_POSITION] = offset + 1
    span.add_event("stream.write", attributes)


# --- Links from the console (console/app.py) -----------------------------------------------------------------


def check_trace_url(template: str) -> str:
    """`template` if it is a usable trace URL template (http(s), with `{trace_id}`), else a `UserError` saying why."""
    if "{trace_id}" not in template or not template.startswith(("http://", "https://")):
        raise UserError(
            f"Trace URL template {template!r} must be an http(s) URL with `{{trace_id}}` where the trace id goes, "
            "e.g. 'https://logfire-us.pydantic.dev/ORG/PROJECT?q=trace_id%3D%27{trace_id}%27' or "
            "'http://localhost:16686/trace/{trace_id}'."
        )
    return template


def trace_link(stored: Any, template: str, workflow_id: str) -> dict[str, Any] | None:
    """The link to a run's latest traced execution, from its `dbos_pydantic_ai.trace` event (`stored`), or None
    when the run was not traced. `{trace_id}` and `{workflow_id}` in `template` are filled in."""
    if not isinstance(stored, dict) or not isinstance(stored.get("trace_id"), str):
        return None
    from urllib.parse import quote

    trace_id = stored["trace_id"]
    url = template.replace("{trace_id}", quote(trace_id, safe="")).replace("{workflow_id}", quote(workflow_id, safe=""))
    return {"trace_id": trace_id, "url": url, "execution": stored.get("execution")}
