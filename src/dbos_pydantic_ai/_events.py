"""The event pipeline of a durable run: which handler receives which events, and from where.

A run's `event_stream_handler` gets two kinds of events by two routes:

- **model part events** (part start, delta, end) arrive live from inside the model request step, as the provider
  streams them (`DBOSModel`'s handler, `RunHandlers.model`);
- **the other events** (tool calls and results, final result) arrive from workflow code, node by node, through
  pydantic-ai's own handler (`RunHandlers.run`), minus the part events the model step already delivered.

With `stream_events=True` both routes also write the events to the run's DBOS stream (streams.py). A recovered run
that had a per-run handler, which it no longer has, still streams its requests into a handler that drops the events,
so its recorded `request_stream` steps replay.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.messages import AgentStreamEvent, PartDeltaEvent, PartEndEvent, PartStartEvent
from pydantic_ai.tools import RunContext

from .streams import record_model_events, record_run_events
from .tools import is_dbos_function

__all__ = ["RunHandlers", "run_handlers"]


@dataclass(frozen=True)
class RunHandlers:
    """The handlers of one durable run: `model` for the model steps, `run` for pydantic-ai's run."""

    model: EventStreamHandler[Any] | None
    run: EventStreamHandler[Any] | None


def run_handlers(handler: EventStreamHandler[Any] | None, *, streamed: bool, recorded: bool) -> RunHandlers:
    """The handlers for a run whose handler is `handler`.

    Args:
        handler: The run's handler (per run or the agent's), if any.
        streamed: The run was started with a per-run handler: its model requests are streamed steps.
        recorded: The run records its events in its DBOS stream (`stream_events=True`).
    """
    if handler is None and streamed:
        handler = _ignore_events
    model_handler = record_model_events(handler) if recorded else handler
    run_handler = _tool_events_only(handler) if handler is not None else None
    if recorded:
        run_handler = record_run_events(run_handler)
    return RunHandlers(model_handler, run_handler)


async def _ignore_events(ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
    """Stands in for a per-run handler that a recovered run no longer has, so its requests still stream."""
    async for _ in events:
        pass


def _tool_events_only(handler: EventStreamHandler[Any]) -> EventStreamHandler[Any]:
    """The run's event stream handler minus model-part events, which the model step already delivered live.

    The events of a tool node are produced while its tools run: whoever iterates them drives the
    tools. A handler that is itself a DBOS step must therefore not iterate them, or the tools would
    run inside its step; it is called once per event instead (one step each), from workflow code.
    """
    per_event = is_dbos_function(handler)

    async def forward(ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
        remaining = (e async for e in events if not isinstance(e, PartStartEvent | PartDeltaEvent | PartEndEvent))
        if per_event:
            async for event in remaining:
                await handler(ctx, _one(event))
            return
        try:
            first = await anext(remaining)
        except StopAsyncIteration:
            return  # a node with nothing new for the handler: don't call it

        async def chained() -> AsyncIterator[AgentStreamEvent]:
            yield first
            async for event in remaining:
                yield event

        await handler(ctx, chained())

    return forward


async def _one(event: AgentStreamEvent) -> AsyncIterator[AgentStreamEvent]:
    yield event
