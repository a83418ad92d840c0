"""Resumable event streams: `DBOSAgent(stream_events=True)` records a run's events in a DBOS stream.

A reader (`read_events`) follows the run live, from this process or another one with only the database
URL, starts late or at an offset, and sees a retried model request's abandoned attempt marked
`Superseded`, so the text it assembles equals the run's result. `run_stream()`/`run_stream_events()` are
durable runs read from that stream; `dbos-pydantic-ai tail` prints it. SQLite and PostgreSQL each.
The crash case (SIGKILL mid-answer, relaunch, reconnect) is in tests/crash/test_stream_crash.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent, FunctionToolCallEvent, FunctionToolResultEvent, PartDeltaEvent, PartStartEvent
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import (
    FinalResultEvent,
    ModelMessage,
    ModelResponse,
    TextPart,
    TextPartDelta,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.run import AgentRunResult, AgentRunResultEvent
from typer.testing import CliRunner

from dbos_pydantic_ai import DBOSAgent, EventLog, ModelRequestStarted, Superseded, read_events
from dbos_pydantic_ai.cli import app
from dbos_pydantic_ai.streams import DurableStreamEvent

WAIT = 60.0  # generous bound for anything that waits: never asserted as a timing
ANSWER = ["The ", "weather ", "in Paris ", "is sunny."]
FULL_ANSWER = "".join(ANSWER)

Pairs = list[tuple[int, DurableStreamEvent]]


def weather(city: str) -> str:
    """The weather in `city`."""
    return f"sunny in {city}"


@dataclass
class WeatherModel:
    """Streams a `weather` call, then the answer in chunks. `gate`: hold after the first chunk until it is set.

    The model runs on the process's durable loop, not the test's, so the gate is a thread-safe event that the model
    polls rather than an asyncio one.

    `fail_first`: the first answer attempt streams two chunks, then fails (a DBOS retry runs it again).
    """

    gate: threading.Event | None = None
    fail_first: bool = False
    answer_attempts: int = 0
    gate_timed_out: bool = False
    seen: list[str] = field(default_factory=list)

    async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        if not any(isinstance(part, ToolReturnPart) for message in messages for part in message.parts):
            yield {0: DeltaToolCall(name="weather", json_args='{"city": "Paris"}', tool_call_id="call-w")}
            return
        self.answer_attempts += 1
        if self.fail_first and self.answer_attempts == 1:
            yield ANSWER[0]
            yield ANSWER[1]
            raise RuntimeError("connection reset mid-answer")
        for index, chunk in enumerate(ANSWER):
            yield chunk
            if index == 0 and self.gate is not None:
                deadline = time.monotonic() + WAIT
                while not self.gate.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                self.gate_timed_out = not self.gate.is_set()


def streaming_agent(name: str, model: WeatherModel, **kwargs: Any) -> DBOSAgent[None, str]:
    agent = Agent(FunctionModel(stream_function=model), name=name, tools=[weather])
    return DBOSAgent(agent, stream_events=True, **kwargs)


async def wait_for_workflow(workflow_id: str) -> None:
    """Until the workflow exists (a run started in a task creates it a moment later)."""
    for _ in range(int(WAIT / 0.02)):
        if await DBOS.get_workflow_status_async(workflow_id) is not None:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"workflow {workflow_id} never started")


async def read_all(workflow_id: str, **kwargs: Any) -> Pairs:
    return [pair async for pair in read_events(workflow_id, **kwargs)]


def text_of(events: list[DurableStreamEvent]) -> str:
    """All streamed text, concatenated: repeated text would show up here."""
    text = ""
    for event in events:
        if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
            text += event.part.content
        elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
            text += event.delta.content_delta
    return text


def log_of(pairs: Pairs) -> EventLog:
    log = EventLog()
    for offset, event in pairs:
        log.add(offset, event)
    return log


def recorded_responses(result: AgentRunResult[Any]) -> list[list[Any]]:
    """The run's model responses, as (kind, content) per part, to compare with what a reader assembled."""
    return [
        [simple_part(part) for part in message.parts]
        for message in result.all_messages()
        if isinstance(message, ModelResponse)
    ]


def simple_part(part: Any) -> tuple[str, Any]:
    if isinstance(part, TextPart):
        return ("text", part.content)
    if isinstance(part, ToolCallPart):
        return ("tool-call", (part.tool_name, part.args_as_dict()))
    return (type(part).__name__, None)


# --- Live, late, from an offset -------------------------------------------------------------------


async def test_live_reader_sees_deltas_while_the_model_is_still_answering(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    """The model holds its answer after the first chunk until the reader has seen that chunk."""
    gate = threading.Event()
    model = WeatherModel(gate=gate)
    durable = streaming_agent(agent_name, model)
    launch_dbos()
    workflow_id = f"live-{uuid.uuid4().hex[:8]}"

    async def run() -> AgentRunResult[str]:
        with SetWorkflowID(workflow_id):
            return await durable.run("Weather in Paris?")

    task = asyncio.create_task(run())
    await wait_for_workflow(workflow_id)
    pairs: Pairs = []
    status_when_first_chunk_seen = None
    async for offset, event in read_events(workflow_id):
        pairs.append((offset, event))
        if not gate.is_set() and text_of([event]) == ANSWER[0]:
            status_when_first_chunk_seen = (await DBOS.get_workflow_status_async(workflow_id)).status  # type: ignore[union-attr]
            gate.set()
    result = await asyncio.wait_for(task, WAIT)

    assert not model.gate_timed_out, "the reader never saw the first chunk while the model was answering"
    assert status_when_first_chunk_seen == "PENDING"
    events = [event for _, event in pairs]
    assert text_of(events) == result.output == FULL_ANSWER
    kinds = [type(event).__name__ for event in events]
    assert kinds.count("ModelRequestStarted") == 2
    assert kinds.count("FunctionToolCallEvent") == kinds.count("FunctionToolResultEvent") == 1
    assert "FinalResultEvent" in kinds and "Superseded" not in kinds
    assert log_of(pairs).text() == result.output
    assert [[simple_part(p) for p in parts] for parts in log_of(pairs).responses()] == recorded_responses(result)


async def test_late_reader_and_readers_from_an_offset(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    """A reader that starts after the run ended gets every event; one from an offset gets exactly the rest."""
    durable = streaming_agent(agent_name, WeatherModel())
    launch_dbos()
    workflow_id = f"late-{uuid.uuid4().hex[:8]}"
    with SetWorkflowID(workflow_id):
        result = await durable.run("Weather in Paris?")

    pairs = await read_all(workflow_id)
    offsets = [offset for offset, _ in pairs]
    assert offsets == sorted(set(offsets)) and offsets[0] >= 1
    events = [event for _, event in pairs]
    assert text_of(events) == FULL_ANSWER
    call = next(e for e in events if isinstance(e, FunctionToolCallEvent))
    returned = next(e for e in events if isinstance(e, FunctionToolResultEvent))
    assert (call.part.tool_name, call.part.args_as_dict()) == ("weather", {"city": "Paris"})
    assert returned.part.content == "sunny in Paris"
    assert [[simple_part(p) for p in parts] for parts in log_of(pairs).responses()] == recorded_responses(result)

    for index in (0, len(pairs) // 2, len(pairs) - 2, len(pairs) - 1):
        assert await read_all(workflow_id, from_offset=pairs[index][0]) == pairs[index + 1 :]
    assert await read_all(workflow_id, from_offset=0) == pairs


async def test_a_run_without_stream_events_records_nothing(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    async def ignore(ctx: Any, events: Any) -> None:
        async for _ in events:
            pass

    agent = Agent(FunctionModel(stream_function=WeatherModel()), name=agent_name, tools=[weather])
    durable = DBOSAgent(agent, event_stream_handler=ignore)  # streams its model requests, records nothing
    launch_dbos()
    workflow_id = f"plain-{uuid.uuid4().hex[:8]}"
    with SetWorkflowID(workflow_id):
        await durable.run("Weather in Paris?")
    assert await read_all(workflow_id) == []
    steps = [step["function_name"] for step in await DBOS.list_workflow_steps_async(workflow_id)]
    assert not any("Stream" in name for name in steps)


async def test_sync_runs_record_their_events_too(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    durable = streaming_agent(agent_name, WeatherModel())
    launch_dbos()
    workflow_id = f"sync-{uuid.uuid4().hex[:8]}"

    def run() -> AgentRunResult[str]:
        with SetWorkflowID(workflow_id):
            return durable.run_sync("Weather in Paris?")

    result = await asyncio.to_thread(run)
    pairs = await read_all(workflow_id)
    assert log_of(pairs).text() == text_of([e for _, e in pairs]) == result.output == FULL_ANSWER
    steps = [step["function_name"] for step in await DBOS.list_workflow_steps_async(workflow_id)]
    assert steps.count(f"{agent_name}__model.request_stream") == 2
    assert steps[-1] == "DBOS.closeStream"


# --- Another process ------------------------------------------------------------------------------

READER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta
    from dbos_pydantic_ai import read_events

    async def main(workflow_id, url, from_offset):
        async for offset, event in read_events(workflow_id, database_url=url, from_offset=from_offset):
            text = ""
            if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                text = event.part.content
            elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                text = event.delta.content_delta
            print(json.dumps({"offset": offset, "kind": type(event).__name__, "text": text}), flush=True)
        print(json.dumps({"end": True}), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


async def test_reader_in_another_process_with_only_the_database_url(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    """A separate Python process, given only the URL, follows the run live: the model waits until it saw a chunk."""
    gate = threading.Event()
    model = WeatherModel(gate=gate)
    durable = streaming_agent(agent_name, model)
    launch_dbos()
    workflow_id = f"remote-{uuid.uuid4().hex[:8]}"

    async def run() -> AgentRunResult[str]:
        with SetWorkflowID(workflow_id):
            return await durable.run("Weather in Paris?")

    task = asyncio.create_task(run())
    await wait_for_workflow(workflow_id)
    reader = await asyncio.create_subprocess_exec(
        sys.executable, "-c", READER_SCRIPT, workflow_id, database_url, "0", stdout=asyncio.subprocess.PIPE
    )
    lines: list[dict[str, Any]] = []
    try:
        assert reader.stdout is not None
        while True:
            raw = await asyncio.wait_for(reader.stdout.readline(), WAIT)
            assert raw, f"the reader process exited early after {lines}"
            line = json.loads(raw)
            lines.append(line)
            if line.get("text") == ANSWER[0]:
                gate.set()  # the other process saw the first chunk while the model holds the rest
            if line.get("end"):
                break
        assert await asyncio.wait_for(reader.wait(), WAIT) == 0
    finally:
        if reader.returncode is None:
            reader.kill()
            await reader.wait()
    result = await asyncio.wait_for(task, WAIT)

    assert not model.gate_timed_out
    remote = lines[:-1]
    assert "".join(line["text"] for line in remote) == result.output == FULL_ANSWER
    local = await read_all(workflow_id)
    assert [(line["offset"], line["kind"]) for line in remote] == [(o, type(e).__name__) for o, e in local]

    # And from an offset, in another process: exactly what follows it.
    middle = local[len(local) // 2][0]
    rest = await asyncio.create_subprocess_exec(
        sys.executable, "-c", READER_SCRIPT, workflow_id, database_url, str(middle), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(rest.communicate(), WAIT)
    tail = [json.loads(line) for line in out.decode().splitlines()][:-1]
    assert [line["offset"] for line in tail] == [o for o, _ in local if o > middle]


# --- Retries --------------------------------------------------------------------------------------


async def test_a_retried_model_request_is_marked_superseded(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    """DBOS retries the answer step after it failed mid-stream: its partial text is superseded, never doubled."""
    model = WeatherModel(fail_first=True)
    durable = streaming_agent(
        agent_name, model, model_step_config={"retries_allowed": True, "max_attempts": 3, "interval_seconds": 0.05}
    )
    launch_dbos()
    workflow_id = f"retry-{uuid.uuid4().hex[:8]}"
    with SetWorkflowID(workflow_id):
        result = await durable.run("Weather in Paris?")
    assert model.answer_attempts == 2
    assert result.output == FULL_ANSWER

    pairs = await read_all(workflow_id)
    events = [event for _, event in pairs]
    # Both attempts are in the stream: the abandoned one's text, then the retry's.
    assert text_of(events) == ANSWER[0] + ANSWER[1] + FULL_ANSWER
    superseded = [(offset, e) for offset, e in pairs if isinstance(e, Superseded)]
    assert len(superseded) == 1
    marker_offset, marker = superseded[0]
    started = [(offset, e) for offset, e in pairs if isinstance(e, ModelRequestStarted)]
    answer_start_offset, answer_start = started[-1]
    assert marker.step_id == answer_start.step_id
    assert marker.discard_from == answer_start_offset  # the abandoned attempt's start marker
    abandoned = [e for offset, e in pairs if marker.discard_from <= offset < marker_offset]
    assert text_of(abandoned) == ANSWER[0] + ANSWER[1]

    log = log_of(pairs)
    surviving = [event for _, event in log.events]
    assert text_of(surviving) == result.output  # no duplicated text once the marker is applied
    assert log.text() == result.output
    assert [[simple_part(p) for p in parts] for parts in log.responses()] == recorded_responses(result)
    # A reader that had seen the abandoned text reconnects after it and still drops it.
    reconnected = log_of([pair for pair in pairs if pair[0] <= marker.discard_from])
    for pair in await read_all(workflow_id, from_offset=marker.discard_from):
        reconnected.add(*pair)
    assert reconnected.events == log.events


# --- run_stream_events() and run_stream() ---------------------------------------------------------


async def test_run_stream_events_is_a_durable_run(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    durable = streaming_agent(agent_name, WeatherModel())
    launch_dbos()
    workflow_id = f"events-{uuid.uuid4().hex[:8]}"
    with SetWorkflowID(workflow_id):
        async with durable.run_stream_events("Weather in Paris?") as stream:
            events = [event async for event in stream]

    assert stream.workflow_id == workflow_id
    assert isinstance(events[-1], AgentRunResultEvent) and events[-1].result.output == FULL_ANSWER
    assert stream.result is not None and stream.result.output == FULL_ANSWER
    assert text_of(events[:-1]) == FULL_ANSWER
    assert any(isinstance(e, FunctionToolResultEvent) for e in events) and any(
        isinstance(e, FinalResultEvent) for e in events
    )
    status = await DBOS.get_workflow_status_async(workflow_id)
    assert status is not None and status.status == "SUCCESS" and status.name == f"{agent_name}.run"
    assert stream.offset == (await read_all(workflow_id))[-1][0]


async def test_run_stream_is_a_durable_run(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    durable = streaming_agent(agent_name, WeatherModel())
    launch_dbos()
    async with durable.run_stream("Weather in Paris?") as streamed:
        texts = [text async for text in streamed.stream_text()]
        output = await streamed.get_output()
        with pytest.raises(UserError, match="cumulative"):
            async for _ in streamed.stream_text(delta=True):
                pass

    assert output == FULL_ANSWER and texts[-1] == FULL_ANSWER
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    status = await DBOS.get_workflow_status_async(streamed.workflow_id)
    assert status is not None and status.status == "SUCCESS" and status.name == f"{agent_name}.run"


async def test_run_stream_is_refused_inside_a_workflow(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    durable = streaming_agent(agent_name, WeatherModel())

    @DBOS.workflow(name=f"{agent_name}.outer")
    async def outer() -> None:
        durable.run_stream_events("Weather in Paris?")

    launch_dbos()
    with pytest.raises(UserError, match="run_stream_events"):
        await outer()


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_tail_prints_text_and_tool_calls(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    durable = streaming_agent(agent_name, WeatherModel())
    launch_dbos()
    workflow_id = f"tail-{uuid.uuid4().hex[:8]}"
    with SetWorkflowID(workflow_id):
        durable.run_sync("Weather in Paris?")

    runner = CliRunner()
    shown = runner.invoke(app, ["tail", workflow_id, "--database-url", database_url])
    assert shown.exit_code == 0, shown.output
    assert FULL_ANSWER in shown.output
    assert '[tool call] weather({"city":"Paris"})' in shown.output
    assert "[tool result] weather: sunny in Paris" in shown.output
    assert shown.output.index("[tool result]") < shown.output.index(FULL_ANSWER)

    pairs = asyncio.run(read_all(workflow_id, database_url=database_url))
    after_tools = next(o for o, e in pairs if isinstance(e, FunctionToolResultEvent))
    rest = runner.invoke(
        app, ["tail", workflow_id, "--from-offset", str(after_tools)], env={"DBOS_SYSTEM_DATABASE_URL": database_url}
    )
    assert rest.exit_code == 0, rest.output
    assert FULL_ANSWER in rest.output and "[tool" not in rest.output

    missing = runner.invoke(app, ["tail", "no-such-run", "--database-url", database_url])
    assert missing.exit_code == 2 and "no-such-run" in missing.output
