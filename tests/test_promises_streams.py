"""Promises of docs/streams.md and docs/migrating.md about event streams that no other test checks.

- A `stream_events` run that fails still closes its stream, and `run_stream_events` raises the run's error.
- Deltas merged while a write is in flight keep the text (and tool arguments) exact.
- A reader started before the run exists gets `DBOSNonExistentWorkflowError`, from this process or with a URL.
- `node.stream()` inside `iter()` in a workflow yields no part events; the response is complete (migrating.md).

That the stored `stream_events` flag outlives a changed agent needs two processes: tests/crash/test_inputs_crash.py.
SQLite and PostgreSQL each.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from dbos import DBOS, SetWorkflowID
from dbos._error import DBOSNonExistentWorkflowError
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelResponse,
    PartDeltaEvent,
    PartEndEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ToolCallPart,
    ToolCallPartDelta,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.run import AgentRunResultEvent

from dbos_pydantic_ai import DBOSAgent, EventLog, read_events
from dbos_pydantic_ai.streams import DurableStreamEvent

Pairs = list[tuple[int, DurableStreamEvent]]


async def read_all(workflow_id: str, **kwargs: Any) -> Pairs:
    return [pair async for pair in read_events(workflow_id, **kwargs)]


def text_of(events: list[Any]) -> str:
    text = ""
    for event in events:
        if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
            text += event.part.content
        elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
            text += event.delta.content_delta
    return text


def has_tool_return(messages: list[ModelMessage]) -> bool:
    return any(isinstance(part, ToolReturnPart) for message in messages for part in message.parts)


# --- A failing run ----------------------------------------------------------------------------------


async def test_a_failing_run_closes_its_stream_and_run_stream_events_raises_its_error(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    async def failing(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield "Half an answer, "
        yield "then "
        raise RuntimeError("provider exploded mid-answer")

    durable = DBOSAgent(Agent(FunctionModel(stream_function=failing), name=agent_name), stream_events=True)
    launch_dbos()
    workflow_id = f"failing-{uuid.uuid4().hex[:8]}"

    seen: list[Any] = []
    with pytest.raises(RuntimeError, match="provider exploded mid-answer"), SetWorkflowID(workflow_id):
        async with durable.run_stream_events("go") as events:
            async for event in events:
                seen.append(event)

    assert text_of(seen) == "Half an answer, then "  # what was streamed before the failure came through
    assert not any(isinstance(event, AgentRunResultEvent) for event in seen)
    status = await DBOS.get_workflow_status_async(workflow_id)
    assert status is not None and status.status == "ERROR"
    steps = [step["function_name"] for step in await DBOS.list_workflow_steps_async(workflow_id)]
    assert steps == [f"{agent_name}__model.request_stream", "DBOS.closeStream"]  # closed by the run itself
    assert text_of([event for _, event in await read_all(workflow_id)]) == "Half an answer, then "


# --- Merged deltas ------------------------------------------------------------------------------------

# Chunks that are easy to get wrong when concatenated: multi-byte characters, whitespace, quotes, escapes.
TEXT_CHUNKS = [c for i in range(60) for c in (f"{i}", " ", "é", "日本", "🙂", "\n", '"', "\\", "\t")]
ARGUMENT = "".join(TEXT_CHUNKS[:200])


async def chunky(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    """A tool call whose JSON arguments stream in small pieces, then a long answer in tiny chunks, fast."""
    if not has_tool_return(messages):
        args = json.dumps({"note": ARGUMENT})
        yield {0: DeltaToolCall(name="keep", tool_call_id="call-1")}
        for start in range(0, len(args), 3):
            yield {0: DeltaToolCall(json_args=args[start : start + 3])}
            await asyncio.sleep(0)
        return
    for chunk in TEXT_CHUNKS:
        yield chunk
        await asyncio.sleep(0)  # let the writer run: deltas queue while its write is in flight


def keep(note: str) -> str:
    """Keep a note."""
    return f"kept {len(note)} characters"


async def test_merged_deltas_keep_text_and_arguments_exact(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    durable = DBOSAgent(Agent(FunctionModel(stream_function=chunky), name=agent_name, tools=[keep]), stream_events=True)
    launch_dbos()
    workflow_id = f"merged-{uuid.uuid4().hex[:8]}"
    with SetWorkflowID(workflow_id):
        result = await durable.run("go")
    assert result.output == "".join(TEXT_CHUNKS)

    pairs = await read_all(workflow_id)
    events = [event for _, event in pairs]
    text_deltas = [e for e in events if isinstance(e, PartDeltaEvent) and isinstance(e.delta, TextPartDelta)]
    args_deltas = [e for e in events if isinstance(e, PartDeltaEvent) and isinstance(e.delta, ToolCallPartDelta)]
    assert len(text_deltas) < len(TEXT_CHUNKS) - 1  # some were merged: fewer writes than chunks ...
    assert text_of(events) == result.output  # ... and the text is exact
    assert args_deltas  # the arguments streamed as deltas too

    log = EventLog()
    for pair in pairs:
        log.add(*pair)
    assert log.text() == result.output
    [call_parts, text_parts] = log.responses()
    [call] = call_parts
    assert isinstance(call, ToolCallPart) and call.tool_name == "keep" and call.args_as_dict() == {"note": ARGUMENT}
    assert [part.content for part in text_parts if isinstance(part, TextPart)] == [result.output]
    recorded_call = result.all_messages()[1].parts[0]
    assert isinstance(recorded_call, ToolCallPart) and recorded_call.args_as_dict() == {"note": ARGUMENT}


# --- A reader before the run --------------------------------------------------------------------------


async def answer(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    yield "an answer"


async def test_a_reader_started_before_the_run_exists_gets_the_documented_error(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    durable = DBOSAgent(Agent(FunctionModel(stream_function=answer), name=agent_name), stream_events=True)
    launch_dbos()
    workflow_id = f"later-{uuid.uuid4().hex[:8]}"

    with pytest.raises(DBOSNonExistentWorkflowError, match=workflow_id):
        await read_all(workflow_id)  # through this process's DBOS
    with pytest.raises(DBOSNonExistentWorkflowError, match=workflow_id):
        await read_all(workflow_id, database_url=database_url)  # through a DBOSClient, as another process

    with SetWorkflowID(workflow_id):
        await durable.run("go")
    assert text_of([event for _, event in await read_all(workflow_id, database_url=database_url)]) == "an answer"


# --- node.stream() inside iter() in a workflow ----------------------------------------------------------


async def streamed_weather(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    if not has_tool_return(messages):
        yield {0: DeltaToolCall(name="weather", json_args='{"city": "Oslo"}', tool_call_id="call-w")}
        return
    for chunk in ["Cold ", "and ", "clear ", "in Oslo."]:
        yield chunk


def weather(city: str) -> str:
    """The weather in `city`."""
    return f"cold in {city}"


async def test_node_stream_inside_iter_in_a_workflow_yields_no_part_events_and_a_complete_response(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    durable = DBOSAgent(Agent(FunctionModel(stream_function=streamed_weather), name=agent_name, tools=[weather]))

    async def drive() -> tuple[list[list[str]], list[ModelResponse], str]:
        """Stream every model request node; return its events' kinds, its complete responses and the output."""
        kinds: list[list[str]] = []
        responses: list[ModelResponse] = []
        async with durable.iter("Weather in Oslo?") as agent_run:
            async for node in agent_run:
                if Agent.is_model_request_node(node):
                    async with node.stream(agent_run.ctx) as stream:
                        kinds.append([type(event).__name__ async for event in stream])
                        responses.append(stream.response)
        assert agent_run.result is not None
        return kinds, responses, agent_run.result.output

    @DBOS.workflow(name=f"{agent_name}.iterate")
    async def iterate() -> tuple[list[list[str]], list[ModelResponse], str]:
        return await drive()

    launch_dbos()
    plain_kinds, _, plain_output = await drive()  # outside a workflow: a plain run, for contrast
    assert any(kind in ("PartStartEvent", "PartDeltaEvent") for kinds in plain_kinds for kind in kinds)

    workflow_id = f"iter-{uuid.uuid4().hex[:8]}"
    with SetWorkflowID(workflow_id):
        kinds, responses, output = await iterate()

    part_events = {PartStartEvent.__name__, PartDeltaEvent.__name__, PartEndEvent.__name__}
    assert [[kind for kind in node_kinds if kind in part_events] for node_kinds in kinds] == [[], []]
    assert output == plain_output == "Cold and clear in Oslo."
    assert isinstance(responses[0].parts[0], ToolCallPart) and responses[0].parts[0].args_as_dict() == {"city": "Oslo"}
    assert [part.content for part in responses[1].parts if isinstance(part, TextPart)] == ["Cold and clear in Oslo."]
    steps = [step["function_name"] for step in await DBOS.list_workflow_steps_async(workflow_id)]
    assert steps == [f"{agent_name}__model.request_stream", f"{agent_name}__model.request_stream"]
