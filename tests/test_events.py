"""Event stream handlers in durable runs.

Model events reach the handler live from inside the model's DBOS step (`{name}__model.request_stream`);
tool events from workflow code. The handler is not wrapped by the library: a `@DBOS.step` handler is
recorded as a step of the run. A replayed model step does not deliver its events again. Tests that run
DBOS use SQLite and PostgreSQL, through `await durable.run()` and `durable.run_sync()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from dbos import DBOS
from pydantic_ai import (
    Agent,
    AgentStreamEvent,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    PartDeltaEvent,
    PartEndEvent,
    PartStartEvent,
    RunContext,
)
from pydantic_ai.messages import ModelMessage, TextPart, TextPartDelta, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from dbos_pydantic_ai import DBOSAgent
from dbos_pydantic_ai.agent import dbos_launched
from run_modes import RunMode, run_in_mode

PART_EVENTS = (PartStartEvent, PartDeltaEvent, PartEndEvent)
TOOL_EVENTS = (FunctionToolCallEvent, FunctionToolResultEvent)
ANSWER_CHUNKS = ["It is ", "sunny ", "in Paris."]


run_agent = partial(run_in_mode, prompt="Weather in Paris?")


@dataclass
class Received:
    """One event as a handler saw it: where it was (workflow, step) when the handler got it."""

    event: AgentStreamEvent
    workflow_id: str | None
    step_id: int | None


@dataclass
class WeatherModel:
    """Streams a `weather` tool call, then the answer in chunks, logging each chunk as it yields it."""

    log: list[str] = field(default_factory=list)
    requests: int = 0

    async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        self.requests += 1
        if not any(isinstance(part, ToolReturnPart) for message in messages for part in message.parts):
            yield {0: DeltaToolCall(name="weather", json_args='{"city": "Paris"}', tool_call_id="call-w")}
            return
        for chunk in ANSWER_CHUNKS:
            self.log.append(f"model yields {chunk!r}")
            yield chunk


def weather(city: str) -> str:
    """The weather in `city`."""
    return f"sunny in {city}"


def recorder(received: list[Received], log: list[str] | None = None) -> Callable[..., Any]:
    """A handler that consumes its events and records each with the DBOS workflow and step it arrived in."""

    async def handler(ctx: RunContext[None], events: AsyncIterable[AgentStreamEvent]) -> None:
        async for event in events:
            received.append(Received(event, DBOS.workflow_id, DBOS.step_id))
            if log is not None:
                log.append(f"handler got {type(event).__name__}")

    return handler


def starts_tool_call(event: AgentStreamEvent) -> bool:
    return isinstance(event, PartStartEvent) and isinstance(event.part, ToolCallPart)


def event_kinds(received: list[Received]) -> list[str]:
    return [type(item.event).__name__ for item in received]


async def step_names_by_id(workflow_id: str) -> dict[int, str]:
    return {step["function_id"]: step["function_name"] for step in await DBOS.list_workflow_steps_async(workflow_id)}


def streamed_text(received: list[Received]) -> str:
    """The answer text, rebuilt from the text part events the handler received."""
    text = ""
    for item in received:
        if isinstance(item.event, PartStartEvent) and isinstance(item.event.part, TextPart):
            text += item.event.part.content
        elif isinstance(item.event, PartDeltaEvent) and isinstance(item.event.delta, TextPartDelta):
            text += item.event.delta.content_delta
    return text


async def plain_event_kinds(mode: RunMode) -> list[str]:
    """The kinds of events, in order, that a plain (not durable) agent's handler receives for this conversation."""
    received: list[Received] = []
    agent = Agent(FunctionModel(stream_function=WeatherModel()), tools=[weather])
    await run_agent(agent, mode, event_stream_handler=recorder(received))
    return event_kinds(received)


# --- Where events are delivered -------------------------------------------------------------------


@pytest.mark.parametrize("handler_given", ["constructor", "per-run"])
async def test_model_events_arrive_live_inside_the_model_step_and_tool_events_outside(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, handler_given: str
) -> None:
    """The handler gets model part events from inside `{name}__model.request_stream`, as the model yields them,
    and tool events from workflow code; all of them, in the same order as a plain agent's handler."""
    model = WeatherModel()
    received: list[Received] = []
    handler = recorder(received, model.log)
    constructor_received: list[Received] = []
    agent = Agent(FunctionModel(stream_function=model), name=agent_name, tools=[weather])
    if handler_given == "constructor":
        durable = DBOSAgent(agent, event_stream_handler=handler)
        run_kwargs: dict[str, Any] = {}
    else:  # the per-run handler replaces the constructor's
        durable = DBOSAgent(agent, event_stream_handler=recorder(constructor_received))
        run_kwargs = {"event_stream_handler": handler}
    launch_dbos()

    result = await run_agent(durable, run_mode, "wf-events", **run_kwargs)

    assert result.output == "".join(ANSWER_CHUNKS)
    assert constructor_received == []
    assert event_kinds(received) == await plain_event_kinds(run_mode)
    names = await step_names_by_id("wf-events")
    assert all(item.workflow_id == "wf-events" for item in received)

    part_events = [item for item in received if isinstance(item.event, PART_EVENTS)]
    assert {type(item.event) for item in part_events} == set(PART_EVENTS)
    part_steps = [item.step_id for item in part_events]
    assert None not in part_steps
    # Both model requests streamed inside their own step: the tool call's, then the answer's.
    assert sorted(set(part_steps)) == [id_ for id_, name in names.items() if name.endswith("__model.request_stream")]
    assert {names[id_] for id_ in part_steps} == {f"{agent_name}__model.request_stream"}
    assert len(set(part_steps)) == 2
    tool_call_starts = [item for item in part_events if starts_tool_call(item.event)]
    assert [item.step_id for item in tool_call_starts] == [min(part_steps)]
    assert streamed_text(received) == result.output

    tool_events = [item for item in received if isinstance(item.event, TOOL_EVENTS)]
    assert [type(item.event) for item in tool_events] == [FunctionToolCallEvent, FunctionToolResultEvent]
    assert [item.step_id for item in tool_events] == [None, None]

    # Live: the handler saw the answer's first chunk before the model had produced its last one.
    assert model.log.index("handler got PartStartEvent", model.log.index(f"model yields {ANSWER_CHUNKS[0]!r}")) < (
        model.log.index(f"model yields {ANSWER_CHUNKS[-1]!r}")
    )


# --- A handler that is itself a DBOS step -----------------------------------------------------------


async def test_dbos_step_handler_is_recorded_as_a_step_per_call(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode
) -> None:
    """The library does not wrap the handler: a `@DBOS.step` handler called from workflow code is one step of the
    run per call, and it is called once per tool event (iterating a tool node's events drives its tools, which
    must not run inside the handler's step); called from inside a model step it is a plain call."""
    calls: list[tuple[int | None, list[str]]] = []  # (DBOS step id during the call, kinds of events consumed)

    @DBOS.step(name=f"{agent_name}.on_events")
    async def on_events(ctx: RunContext[None], events: AsyncIterable[AgentStreamEvent]) -> None:
        calls.append((DBOS.step_id, [type(event).__name__ async for event in events]))

    model = WeatherModel()
    agent = Agent(FunctionModel(stream_function=model), name=agent_name, tools=[weather])
    durable = DBOSAgent(agent, event_stream_handler=on_events)
    launch_dbos()

    result = await run_agent(durable, run_mode, "wf-step-handler")

    assert result.output == "".join(ANSWER_CHUNKS)
    steps = await DBOS.list_workflow_steps_async("wf-step-handler")
    names = {step["function_id"]: step["function_name"] for step in steps}
    handler_steps = [id_ for id_, name in names.items() if name == f"{agent_name}.on_events"]
    calls_as_own_step = [kinds for step_id, kinds in calls if names.get(step_id) == f"{agent_name}.on_events"]
    calls_in_model_step = [
        kinds for step_id, kinds in calls if names.get(step_id) == f"{agent_name}__model.request_stream"
    ]
    assert len(calls) == len(calls_as_own_step) + len(calls_in_model_step)  # no call outside any step
    assert len(handler_steps) == len(calls_as_own_step) >= 1
    assert sorted(step_id for step_id, _ in calls if step_id in handler_steps) == handler_steps  # one step per call
    assert ["FunctionToolCallEvent"] in calls_as_own_step and ["FunctionToolResultEvent"] in calls_as_own_step
    assert all(len(kinds) == 1 for kinds in calls_as_own_step)
    assert len(calls_in_model_step) == 2 and all(
        kinds and kinds[0] == "PartStartEvent" for kinds in calls_in_model_step
    )
    # Every event the plain agent would give the handler was consumed, each exactly once.
    assert sorted(kind for _, kinds in calls for kind in kinds) == sorted(await plain_event_kinds(run_mode))

    # A replay of the whole run (a fork after its last step) delivers nothing: every handler step is recorded.
    calls.clear()
    requests_before = model.requests
    handle = await DBOS.fork_workflow_async("wf-step-handler", len(steps) + 1)
    assert (await handle.get_result()).output == result.output
    assert calls == [] and model.requests == requests_before


async def test_dbos_step_handler_leaves_durable_and_step_tools_outside_its_steps(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode
) -> None:
    """With a `@DBOS.step` handler, durable tools and `@DBOS.step` tools are still steps of the run, not calls
    nested inside a handler step; the run replays completely."""
    handled: list[str] = []

    @DBOS.step(name=f"{agent_name}.on_events")
    async def on_events(ctx: RunContext[None], events: AsyncIterable[AgentStreamEvent]) -> None:
        handled.extend([type(event).__name__ async for event in events])

    @DBOS.step(name=f"{agent_name}.forecast")
    def forecast(city: str) -> str:
        """A DBOS step tool."""
        return f"dry in {city}"

    class TwoToolsModel(WeatherModel):
        async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
            self.requests += 1
            if self.requests == 1:
                yield {
                    0: DeltaToolCall(name="weather", json_args='{"city": "Paris"}', tool_call_id="call-w"),
                    1: DeltaToolCall(name="forecast", json_args='{"city": "Paris"}', tool_call_id="call-f"),
                }
                return
            yield "done"

    model = TwoToolsModel()
    agent = Agent(FunctionModel(stream_function=model), name=agent_name, tools=[weather, forecast])
    durable = DBOSAgent(agent, event_stream_handler=on_events, durable_tools=["weather"])
    launch_dbos()

    result = await run_agent(durable, run_mode, "wf-step-handler-tools")

    assert result.output == "done"
    names = list((await step_names_by_id("wf-step-handler-tools")).values())
    assert f"{agent_name}__tool.weather" in names and f"{agent_name}.forecast" in names
    assert names.count(f"{agent_name}.on_events") == handled.count("FunctionToolCallEvent") * 2
    handle = await DBOS.fork_workflow_async("wf-step-handler-tools", len(names) + 1)
    assert (await handle.get_result()).output == "done" and model.requests == 2


async def test_run_with_only_a_per_run_handler_replays_without_it(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode
) -> None:
    """A run streamed because of a per-run handler records `request_stream` steps; re-executed without the
    caller (as after a crash), it must stream again to replay them, and does."""
    model = WeatherModel()
    received: list[Received] = []
    agent = Agent(FunctionModel(stream_function=model), name=agent_name, tools=[weather])
    durable = DBOSAgent(agent)  # no handler of its own
    launch_dbos()

    result = await run_agent(durable, run_mode, "wf-per-run-only", event_stream_handler=recorder(received))
    names = await step_names_by_id("wf-per-run-only")
    assert list(names.values()) == [f"{agent_name}__model.request_stream"] * 2

    received.clear()
    handle = await DBOS.fork_workflow_async("wf-per-run-only", max(names))  # runs without the caller's handler
    assert (await handle.get_result()).output == result.output
    assert model.requests == 3 and received == []


# --- Replays --------------------------------------------------------------------------------------


async def test_replayed_model_steps_do_not_deliver_their_events_again(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode
) -> None:
    """Re-executing the run from its last model request: the first request replays silently, the last streams again.
    Tool events come from workflow code, so a plain (non-step) handler gets them again."""
    model = WeatherModel()
    received: list[Received] = []
    agent = Agent(FunctionModel(stream_function=model), name=agent_name, tools=[weather])
    durable = DBOSAgent(agent, event_stream_handler=recorder(received))  # a fork runs without the caller
    launch_dbos()

    result = await run_agent(durable, run_mode, "wf-replay")
    original = event_kinds(received)
    names = await step_names_by_id("wf-replay")
    assert list(names.values()) == [f"{agent_name}__model.request_stream"] * 2
    last_model_step = max(names)

    async def re_execute(start_step: int, how: str) -> tuple[str, list[Received]]:
        received.clear()
        if how == "fork":
            handle = await DBOS.fork_workflow_async("wf-replay", start_step)
        else:  # rewind: the same workflow id runs again from `start_step`
            handle = await DBOS.rewind_workflow_async("wf-replay", start_step=start_step)
        assert (await handle.get_result()).output == result.output
        return handle.workflow_id, list(received)

    for how in ("fork", "rewind"):
        requests_before = model.requests
        workflow_id, replay = await re_execute(last_model_step, how)
        assert model.requests == requests_before + 1  # only the last model request ran again
        part_events = [item for item in replay if isinstance(item.event, PART_EVENTS)]
        # No event of the replayed first response (the tool call); the answer's events once, from its step.
        assert not any(starts_tool_call(item.event) for item in replay)
        assert streamed_text(replay) == result.output
        assert {item.step_id for item in part_events} == {last_model_step}
        assert all(item.workflow_id == workflow_id for item in replay)
        assert [type(item.event) for item in replay if isinstance(item.event, TOOL_EVENTS)] == [
            FunctionToolCallEvent,
            FunctionToolResultEvent,
        ]
        assert len(replay) < len(original)
        if how == "rewind":
            assert workflow_id == "wf-replay"

    # Re-executed after its last step, the run replays every model step and streams nothing.
    requests_before = model.requests
    _, replay = await re_execute(last_model_step + 1, "fork")
    assert model.requests == requests_before
    assert not any(isinstance(item.event, PART_EVENTS) for item in replay)
    assert event_kinds(replay) == ["FunctionToolCallEvent", "FunctionToolResultEvent"]


# --- Without DBOS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("handler_given", ["constructor", "per-run"])
async def test_without_dbos_handler_sees_the_plain_agents_events(
    agent_name: str, run_mode: RunMode, handler_given: str
) -> None:
    """Without a launched DBOS, the durable agent's handler receives exactly what the plain agent's does."""
    assert not dbos_launched()
    received: list[Received] = []
    agent = Agent(FunctionModel(stream_function=WeatherModel()), name=agent_name, tools=[weather])
    if handler_given == "constructor":
        durable = DBOSAgent(agent, event_stream_handler=recorder(received))
        result = await run_agent(durable, run_mode)
    else:
        durable = DBOSAgent(agent)
        result = await run_agent(durable, run_mode, event_stream_handler=recorder(received))

    assert result.output == "".join(ANSWER_CHUNKS)
    kinds = event_kinds(received)
    assert kinds == await plain_event_kinds(run_mode)
    assert {"PartStartEvent", "PartDeltaEvent", "FunctionToolCallEvent", "FunctionToolResultEvent"} <= set(kinds)
    assert all(item.workflow_id is None and item.step_id is None for item in received)
