"""Traces of durable runs (tracing.py): `dbos_config(tracing=True)`, and the span tree an in-memory exporter sees.

One process-wide SDK tracer provider with an in-memory exporter is set here (OpenTelemetry's global provider can be
set once). Each test launches DBOS with `tracing=True`, which also turns pydantic-ai's instrumentation on; the
fixture turns it off again, and the next `DBOS(...)` without `tracing` turns DBOS's spans off.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dbos import DBOS, SetWorkflowID
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from dbos_pydantic_ai import DBOSAgent, approve_async, dbos_config, read_events
from dbos_pydantic_ai._compat import active_workflow_ids
from dbos_pydantic_ai._parking import parked_run_ids
from dbos_pydantic_ai.exceptions import UserError
from dbos_pydantic_ai.names import APPROVALS_EVENT, TRACE_EVENT
from dbos_pydantic_ai.tracing import REPLAYED
from span_tree import children, render, span_dict
from test_approvals import Scripted, pending_calls, refund_agent, start
from test_mcp import CountingServer, weather_model
from test_mcp import mcp_server as mcp_server  # a fixture

EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_PROVIDER)

FAST_POLLING = {"notification_listener_polling_interval_sec": 0.02}


@pytest.fixture
def launch_traced(database_url: str) -> Iterator[Callable[[], None]]:
    """Like `launch_dbos`, with `tracing=True`; clears the exporter; turns pydantic-ai's instrumentation off after."""
    DBOS.destroy()
    EXPORTER.clear()

    def launch() -> None:
        config = dbos_config(
            "dbos_pai_test", database_url=database_url, application_version="test", tracing=True, **FAST_POLLING
        )
        DBOS(config=config)
        DBOS.launch()

    try:
        yield launch
    finally:
        DBOS.destroy()
        Agent.instrument_all(False)


def spans_of(workflow_id: str) -> list[dict[str, Any]]:
    """The finished spans of one run (by their `dbos.workflow_id`)."""
    spans = [span_dict(s) for s in EXPORTER.get_finished_spans()]
    return [s for s in spans if s["attributes"].get("dbos.workflow_id") == workflow_id]


def named(spans: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return sorted((s for s in spans if s["name"].startswith(prefix)), key=lambda s: s["start"])


def one_trace(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Checks the run's spans form one tree under its workflow span; returns the workflow span."""
    assert len({s["trace_id"] for s in spans}) == 1, render(spans)
    ids = {s["span_id"] for s in spans}
    [root] = [s for s in spans if s["parent_id"] not in ids]
    assert root["scope"] == "dbos-tracer", render(spans)
    return root


# --- Configuration -------------------------------------------------------------------------------------


def test_dbos_config_turns_dbos_tracing_on_without_its_keys(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    try:
        config = dbos_config(
            "app",
            database_url=url,
            tracing=True,
            otlp_endpoint="http://collector:4318/v1/traces",
            trace_attributes={"deployment": "eu-1"},
            instrument_pydantic_ai=False,
        )
        assert config["enable_otlp"] is True  # type: ignore[typeddict-item]
        assert config["otlp_traces_endpoints"] == ["http://collector:4318/v1/traces"]  # type: ignore[typeddict-item]
        assert config["otlp_attributes"] == {"deployment": "eu-1"}  # type: ignore[typeddict-item]
        plain = dbos_config("app", database_url=url)
        assert "enable_otlp" not in plain and "otlp_traces_endpoints" not in plain
        with pytest.raises(UserError, match="tracing=True"):
            dbos_config("app", database_url=url, otlp_endpoint="http://collector:4318/v1/traces")
    finally:
        Agent.instrument_all(False)


# --- Span trees ----------------------------------------------------------------------------------------


def lookup_then_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("add", {"a": 1, "b": 2}, tool_call_id="t1")])
    return ModelResponse(parts=[TextPart("three")])


async def test_durable_run_with_a_durable_tool_is_one_marked_trace(
    agent_name: str, launch_traced: Callable[[], None]
) -> None:
    agent: Agent[None, str] = Agent(FunctionModel(lookup_then_answer), name=agent_name)

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        return a + b

    durable = DBOSAgent(agent, durable_tools=["add"])
    launch_traced()
    with SetWorkflowID("wf-traced"):
        assert (await durable.run("go")).output == "three"

    spans = spans_of("wf-traced")
    root = one_trace(spans)
    assert root["name"] == f"{agent_name}.run" and root["attributes"]["dbos_pydantic_ai.execution"] == 1
    assert all(s["attributes"]["dbos.workflow_id"] == "wf-traced" for s in spans)
    [invoke] = children(spans, root)
    assert invoke["name"].startswith("invoke_agent")
    chats, [tool] = named(spans, "chat"), named(spans, "execute_tool")
    assert [c["attributes"]["dbos.step.id"] for c in chats] == [1, 3]
    assert tool["attributes"]["dbos.step.id"] == 2 and tool["attributes"]["dbos.step.name"] == f"{agent_name}__tool.add"
    for parent, step_name in [(chats[0], "model.request"), (tool, "tool.add"), (chats[1], "model.request")]:
        assert parent["attributes"]["dbos.step.replayed"] is False
        [step] = children(spans, parent)
        assert step["name"] == f"{agent_name}__{step_name}" and step["scope"] == "dbos-tracer"
        assert step["attributes"]["dbos.step.id"] == parent["attributes"]["dbos.step.id"]
        assert step["attributes"]["dbos.step.replayed"] is False
    stored = await DBOS.get_event_async("wf-traced", TRACE_EVENT, timeout_seconds=0)
    assert stored["trace_id"] == root["trace_id"] and stored["span_id"] == root["span_id"]


async def test_a_started_run_is_a_child_of_the_callers_span(agent_name: str, launch_traced: Callable[[], None]) -> None:
    """start() and start_sync() hand the run to DBOS's event loop with the caller's context: the run's trace
    continues the span the caller was in, as `run()` does."""
    durable = DBOSAgent(Agent(TestModel(custom_output_text="done"), name=agent_name))
    launch_traced()
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request from async code") as caller:
        handle = await durable.start("go", workflow_id="wf-started")
    with tracer.start_as_current_span("request from sync code") as sync_caller:
        sync_handle = await asyncio.to_thread(durable.start_sync, "go", workflow_id="wf-started-sync")
    assert (await handle.result()).output == (await sync_handle.result()).output == "done"

    for workflow_id, span in [("wf-started", caller), ("wf-started-sync", sync_caller)]:
        root = one_trace(spans_of(workflow_id))
        assert root["trace_id"] == f"{span.get_span_context().trace_id:032x}"
        assert root["parent_id"] == f"{span.get_span_context().span_id:016x}"


async def test_replayed_steps_are_marked_and_the_model_is_not_called_again(
    agent_name: str, launch_traced: Callable[[], None]
) -> None:
    """A fork from step 3 replays steps 1-2 from the database: their spans say so, and the model is called once."""
    requests: list[int] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        requests.append(len(messages))
        return lookup_then_answer(messages, info)

    agent: Agent[None, str] = Agent(FunctionModel(model), name=agent_name)

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        return a + b

    durable = DBOSAgent(agent, durable_tools=["add"])
    launch_traced()
    with SetWorkflowID("wf-original"):
        await durable.run("go")
    assert len(requests) == 2
    handle = await DBOS.fork_workflow_async("wf-original", 3)
    assert (await handle.get_result()).output == "three"
    assert len(requests) == 3  # only the request at step 3 was sent again

    spans = spans_of(handle.workflow_id)
    one_trace(spans)
    chats, [tool] = named(spans, "chat"), named(spans, "execute_tool")
    assert [(c["attributes"]["dbos.step.id"], c["attributes"]["dbos.step.replayed"]) for c in chats] == [
        (1, True),
        (3, False),
    ]
    assert tool["attributes"]["dbos.step.replayed"] is True
    steps = named(spans, agent_name + "__")
    assert [(s["attributes"]["dbos.step.id"], s["attributes"]["dbos.step.replayed"]) for s in steps] == [
        (1, True),
        (2, True),
        (3, False),
    ]


async def test_mcp_calls_carry_their_step_numbers(
    agent_name: str, launch_traced: Callable[[], None], mcp_server: CountingServer
) -> None:
    agent: Agent[None, str] = Agent(
        weather_model(["Paris"]), name=agent_name, toolsets=[mcp_server.toolset(id="counting")]
    )
    durable = DBOSAgent(agent)
    launch_traced()
    with SetWorkflowID("wf-mcp"):
        await durable.run("weather?")

    spans = spans_of("wf-mcp")
    one_trace(spans)
    [tool] = named(spans, "execute_tool")
    [step] = children(spans, tool)
    assert step["name"] == f"{agent_name}__mcp_server__counting.call_tool"
    assert step["attributes"]["dbos.step.id"] == tool["attributes"]["dbos.step.id"]
    assert tool["attributes"]["dbos.step.replayed"] is False and step["attributes"]["dbos.step.replayed"] is False
    recorded = {s["function_id"]: s["function_name"] for s in await DBOS.list_workflow_steps_async("wf-mcp")}
    assert recorded[step["attributes"]["dbos.step.id"]] == step["name"]
    listed = named(spans, f"{agent_name}__mcp_server__counting.get_tools")
    assert listed and all(s["attributes"]["dbos.step.id"] in recorded for s in listed)


async def test_an_approval_wait_is_recorded_as_span_events(agent_name: str, launch_traced: Callable[[], None]) -> None:
    executed: list[int] = []
    durable = refund_agent(agent_name, Scripted([("refund", {"amount": 10}, "c1")]), executed)
    launch_traced()
    task = start(durable, "async", "wf-wait")
    [pending] = await pending_calls("wf-wait", 1, task)
    await approve_async("wf-wait", "c1", args_digest=pending.args_digest)
    await asyncio.wait_for(task, 60)

    spans = spans_of("wf-wait")
    one_trace(spans)
    events = {e["name"]: (s, e["attributes"]) for s in spans for e in s["events"] if e["name"].startswith("approval.")}
    assert set(events) == {"approval.requested", "approval.decided", "approval.resolved"}
    _, requested = events["approval.requested"]
    assert requested["dbos_pydantic_ai.approval.tools"] == ["refund"]
    _, decided = events["approval.decided"]
    assert decided["dbos_pydantic_ai.approval.wait_id"] == requested["dbos_pydantic_ai.approval.wait_id"]
    assert decided["dbos_pydantic_ai.approval.tool_call_id"] == "c1"
    assert decided["dbos_pydantic_ai.approval.decision"] == "approve"
    assert decided["dbos_pydantic_ai.approval.waited_seconds"] >= 0
    assert events["approval.resolved"][1]["dbos_pydantic_ai.approval.waited_seconds"] >= 0
    [tool] = named(spans, f"{agent_name}__tool.refund")
    assert tool["attributes"]["dbos.step.replayed"] is False and executed == [10]


async def test_parked_executions_end_ok_and_each_woken_one_links_to_the_last(
    agent_name: str, launch_traced: Callable[[], None]
) -> None:
    """A run that parks ends its execution with `RunParked`, which DBOS would mark as an error on the workflow span.
    It ends OK instead, marked parked, with an `approval.parked` event. Two calls decided one at a time make three
    executions: the second (woken by the first decision) parks again before any model request, and is still numbered
    and linked (its approval check is a live step), so the chain is 1 -> 2 -> 3."""
    model = Scripted([("refund", {"amount": 10}, "c1"), ("refund", {"amount": 20}, "c2")])
    durable = refund_agent(agent_name, model, [], park_after=0.2)
    launch_traced()
    handle = await durable.start("go", workflow_id="wf-parked")
    first_call, second_call = await pending_calls("wf-parked", 2, None)  # type: ignore[arg-type]

    async def until(condition: Callable[[], Any]) -> None:
        for _ in range(1200):
            if await condition():
                return
            await asyncio.sleep(0.05)
        pytest.fail(render(spans_of("wf-parked")))

    async def parked() -> bool:
        return "wf-parked" in parked_run_ids() and "wf-parked" not in active_workflow_ids()

    async def decided(call_id: str) -> bool:
        state = await DBOS.get_event_async("wf-parked", APPROVALS_EVENT, timeout_seconds=0)
        return state is not None and call_id in state["decided"]

    await until(parked)
    await approve_async("wf-parked", first_call.tool_call_id, args_digest=first_call.args_digest)
    await until(lambda: decided(first_call.tool_call_id))
    await until(parked)
    await approve_async("wf-parked", second_call.tool_call_id, args_digest=second_call.args_digest)
    await asyncio.wait_for(handle.result(), 60)

    spans = spans_of("wf-parked")
    executions = named(spans, f"{agent_name}.run")
    assert [(s["status"], s["attributes"].get("dbos_pydantic_ai.parked")) for s in executions] == [
        ("OK", True),
        ("OK", True),
        ("OK", None),
    ], render(spans)
    assert [s["attributes"].get("dbos_pydantic_ai.execution") for s in executions] == [1, 2, 3], render(spans)
    for previous, execution in itertools.pairwise(executions):
        assert execution["links"] == [{"trace_id": previous["trace_id"], "span_id": previous["span_id"]}]

    def approval_events(execution: dict[str, Any]) -> dict[str, dict[str, Any]]:
        inside = [s for s in spans if s["trace_id"] == execution["trace_id"]]
        return {e["name"]: e["attributes"] for s in inside for e in s["events"] if e["name"].startswith("approval.")}

    first_events = approval_events(executions[0])
    assert set(first_events) == {"approval.requested", "approval.parked"}
    assert first_events["approval.parked"]["dbos_pydantic_ai.approval.wait_id"] == first_call.wait_id
    assert first_events["approval.parked"]["dbos_pydantic_ai.approval.waited_seconds"] >= 0.2
    assert set(approval_events(executions[1])) == {"approval.requested", "approval.decided", "approval.parked"}
    last = [s for s in spans if s["trace_id"] == executions[2]["trace_id"]]
    [replayed, answered] = named(last, "chat ")
    assert (replayed["attributes"][REPLAYED], answered["attributes"][REPLAYED]) == (True, False)


async def test_stream_writes_are_span_events_with_their_offsets(
    agent_name: str, launch_traced: Callable[[], None], database_url: str
) -> None:
    agent: Agent[None, str] = Agent(TestModel(custom_output_text="hello traced world"), name=agent_name)
    durable = DBOSAgent(agent, stream_events=True)
    launch_traced()
    with SetWorkflowID("wf-stream"):
        await durable.run("go")

    spans = spans_of("wf-stream")
    one_trace(spans)
    writes = sorted(
        (e["attributes"]["dbos.stream.offset"], e["attributes"]["dbos_pydantic_ai.stream.position"])
        for s in spans
        for e in s["events"]
        if e["name"] == "stream.write"
    )
    assert writes and [offset for offset, _ in writes] == list(range(len(writes)))  # DBOS's offsets, each once
    read = [position async for position, _ in read_events("wf-stream", database_url=database_url)]
    assert read == [position for _, position in writes]  # each write is an event read_events() yields there


# --- The console's link ---------------------------------------------------------------------------------


async def test_the_console_links_a_traced_run_to_its_trace(
    agent_name: str, launch_traced: Callable[[], None], database_url: str
) -> None:
    from fastapi.testclient import TestClient

    from dbos_pydantic_ai.console import create_app

    agent: Agent[None, str] = Agent(TestModel(), name=agent_name)
    durable = DBOSAgent(agent)
    launch_traced()
    with SetWorkflowID("wf/linked"):
        await durable.run("go")
    [root] = [s for s in spans_of("wf/linked") if s["name"] == f"{agent_name}.run"]

    template = "https://traces.example/t/{trace_id}?run={workflow_id}"
    with TestClient(create_app(database_url, trace_url=template)) as console:
        run = (await asyncio.to_thread(console.get, "/api/runs/wf%2Flinked")).json()
    assert run["trace"] == {
        "trace_id": root["trace_id"],
        "url": f"https://traces.example/t/{root['trace_id']}?run=wf%2Flinked",
        "execution": 1,
    }
    with TestClient(create_app(database_url)) as console:
        assert "trace" not in (await asyncio.to_thread(console.get, "/api/runs/wf%2Flinked")).json()
    with pytest.raises(UserError, match=r"\{trace_id\}"):
        create_app(database_url, trace_url="https://traces.example/")


def test_an_otlp_endpoint_without_a_provider_gets_one_named_after_the_app(tmp_path: Any) -> None:
    """In a fresh process: `dbos_config` sets the SDK provider DBOS would set at launch, with the processor on it."""
    import subprocess
    import sys

    script = (
        "from opentelemetry import trace\n"
        "from dbos_pydantic_ai import dbos_config, tracing\n"
        f"dbos_config('otlp_app', database_url='sqlite:///{tmp_path / 'o.sqlite'}', tracing=True,\n"
        "            otlp_endpoint='http://127.0.0.1:9/v1/traces', instrument_pydantic_ai=False)\n"
        "provider = trace.get_tracer_provider()\n"
        "print(provider.resource.attributes['service.name'], tracing._installed_on is provider)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.split() == ["otlp_app", "True"], done.stderr


async def test_an_approval_timeout_is_a_decided_event(agent_name: str, launch_traced: Callable[[], None]) -> None:
    durable = refund_agent(agent_name, Scripted([("refund", {"amount": 10}, "c1")]), [], approval_timeout=1)
    launch_traced()
    await asyncio.wait_for(start(durable, "async", "wf-timeout"), 60)

    events = [e["attributes"] for s in spans_of("wf-timeout") for e in s["events"] if e["name"] == "approval.decided"]
    assert [(e["dbos_pydantic_ai.approval.tool_call_id"], e["dbos_pydantic_ai.approval.decision"]) for e in events] == [
        ("c1", "timed_out")
    ]
    assert events[0]["dbos_pydantic_ai.approval.waited_seconds"] >= 1
