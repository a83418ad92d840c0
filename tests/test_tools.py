"""Function tools in durable runs: DBOS-decorated tools, opt-in durable tools, retries, and replay order.

Every test runs on SQLite and PostgreSQL (`database_url`), and through `await durable.run()` and
`durable.run_sync()` (the latter on a worker thread, as a synchronous application would call it).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from dbos import DBOS
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from dbos_pydantic_ai import DBOSAgent, DBOSParallelExecutionMode, NotSerializableError, StepConfig
from run_modes import RunMode, run_in_mode

RETRYING: StepConfig = {"retries_allowed": True, "max_attempts": 3, "interval_seconds": 0}


run_durable = partial(run_in_mode, prompt="go")


async def steps_of(workflow_id: str) -> list[dict[str, Any]]:
    return list(await DBOS.list_workflow_steps_async(workflow_id))


async def step_names(workflow_id: str) -> list[str]:
    return [step["function_name"] for step in await steps_of(workflow_id)]


def tool_returns(message: ModelMessage) -> list[str]:
    """The tool returns of a request, in order, as `tool_name=content` (`tool_name[outcome]=...` unless a success)."""
    assert isinstance(message, ModelRequest)
    return [
        f"{part.tool_name}={part.content}"
        if part.outcome == "success"
        else f"{part.tool_name}[{part.outcome}]={part.content}"
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]


def calls_then_summary(calls: list[ToolCallPart]) -> Callable[[list[ModelMessage], AgentInfo], ModelResponse]:
    """A model that asks for `calls` at once, then answers with the tool returns it got back, in call order."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=list(calls))
        return ModelResponse(parts=[TextPart(" | ".join(tool_returns(messages[-1])))])

    return model


# --- DBOS-decorated and plain tools ---------------------------------------------------------------


@pytest.mark.parametrize("tool_kind", ["sync", "async"])
async def test_dbos_step_workflow_and_plain_tools(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, tool_kind: str
) -> None:
    """A `@DBOS.step` tool is a step of the run, a `@DBOS.workflow` tool a child workflow, a plain tool runs inline."""
    seen: dict[str, tuple[str | None, int | None]] = {}  # tool -> (workflow id, step id) while it ran

    def where(tool: str) -> None:
        seen[tool] = (DBOS.workflow_id, DBOS.step_id)

    if tool_kind == "sync":

        def lookup(sku: str) -> str:
            where("lookup")
            return f"stock({sku})=3"

        def reorder(sku: str) -> str:
            where("reorder")
            return f"reordered({sku})"

        def note(text: str) -> str:
            where("note")
            return f"noted({text})"

    else:

        async def lookup(sku: str) -> str:
            where("lookup")
            return f"stock({sku})=3"

        async def reorder(sku: str) -> str:
            where("reorder")
            return f"reordered({sku})"

        async def note(text: str) -> str:
            where("note")
            return f"noted({text})"

    step_tool = DBOS.step(name=f"{agent_name}.lookup")(lookup)
    workflow_tool = DBOS.workflow(name=f"{agent_name}.reorder")(reorder)
    calls = [
        ToolCallPart("lookup", {"sku": "A1"}, tool_call_id="c1"),
        ToolCallPart("reorder", {"sku": "A1"}, tool_call_id="c2"),
        ToolCallPart("note", {"text": "low"}, tool_call_id="c3"),
    ]
    agent = Agent(FunctionModel(calls_then_summary(calls)), name=agent_name)
    agent.tool_plain(name="lookup")(step_tool)
    agent.tool_plain(name="reorder")(workflow_tool)
    agent.tool_plain(note)
    durable = DBOSAgent(agent)
    launch_dbos()

    result = await run_durable(durable, run_mode, "wf-tools")

    assert result.output == "lookup=stock(A1)=3 | reorder=reordered(A1) | note=noted(low)"
    steps = await steps_of("wf-tools")
    names = [step["function_name"] for step in steps]
    # The step tool is one step, the workflow tool a child workflow (started, then its result read): no step
    # for the plain tool, and the tool calls recorded in the model's order.
    assert names == [
        f"{agent_name}__model.request",
        f"{agent_name}.lookup",
        f"{agent_name}.reorder",
        "DBOS.getResult",
        f"{agent_name}__model.request",
    ]
    child_id = steps[2]["child_workflow_id"]
    assert child_id is not None and child_id.startswith("wf-tools-")
    child = await DBOS.get_workflow_status_async(child_id)
    assert child is not None and child.name == f"{agent_name}.reorder" and child.status == "SUCCESS"
    assert child.output == "reordered(A1)"

    assert seen["lookup"] == ("wf-tools", steps[1]["function_id"])  # ran as that step
    assert seen["reorder"] == (child_id, None)  # ran as the child workflow's own code
    assert seen["note"] == ("wf-tools", None)  # inline in the run's workflow, in no step


# --- Opt-in durable tools -------------------------------------------------------------------------


@pytest.mark.parametrize("durable_tools", [True, ["stamp"]], ids=["all", "named"])
async def test_durable_tools_run_as_named_steps(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, durable_tools: bool | list[str]
) -> None:
    """`durable_tools` makes plain tools steps named `{name}__tool.{tool}`; tools it does not name stay inline."""
    step_ids: dict[str, int | None] = {}

    async def stamp(doc: str) -> str:  # async tool
        step_ids["stamp"] = DBOS.step_id
        return f"stamped {doc}"

    def archive(doc: str) -> str:  # sync tool, run on a worker thread by pydantic-ai
        step_ids["archive"] = DBOS.step_id
        return f"archived {doc}"

    calls = [ToolCallPart("stamp", {"doc": "d1"}, tool_call_id="c1"), ToolCallPart("archive", {"doc": "d1"})]
    agent = Agent(FunctionModel(calls_then_summary(calls)), name=agent_name, tools=[stamp, archive])
    durable = DBOSAgent(agent, durable_tools=durable_tools)
    launch_dbos()

    result = await run_durable(durable, run_mode, "wf-durable")

    assert result.output == "stamp=stamped d1 | archive=archived d1"
    steps = await steps_of("wf-durable")
    ids = {step["function_name"]: step["function_id"] for step in steps}
    tool_steps = [step["function_name"] for step in steps if "__tool." in step["function_name"]]
    if durable_tools is True:
        assert tool_steps == [f"{agent_name}__tool.stamp", f"{agent_name}__tool.archive"]
        assert step_ids == {"stamp": ids[f"{agent_name}__tool.stamp"], "archive": ids[f"{agent_name}__tool.archive"]}
        # A step records the tool's return value: a replay gets it back without calling the tool.
        assert [step["output"] for step in steps if "__tool." in step["function_name"]] == [
            "stamped d1",
            "archived d1",
        ]
    else:
        assert tool_steps == [f"{agent_name}__tool.stamp"]
        assert step_ids == {"stamp": ids[f"{agent_name}__tool.stamp"], "archive": None}


@pytest.mark.parametrize("tool_step_config", [None, RETRYING], ids=["default", "retrying"])
async def test_model_retry_in_durable_tool_reaches_model_and_is_not_retried_by_dbos(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, tool_step_config: StepConfig | None
) -> None:
    """`ModelRetry` from a durable tool step goes to the model as a retry prompt; DBOS never re-runs the step."""
    tool_calls: list[int] = []
    seen_by_model: list[list[str]] = []

    def book(nights: int) -> str:
        tool_calls.append(nights)
        if nights > 7:
            raise ModelRetry("At most 7 nights, please.")
        return f"booked {nights} nights"

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        seen_by_model.append(tool_returns(last))
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("book", {"nights": 10})])
        if len(messages) == 3:
            return ModelResponse(parts=[ToolCallPart("book", {"nights": 7})])
        return ModelResponse(parts=[TextPart("done")])

    agent = Agent(FunctionModel(model), name=agent_name, tools=[book])
    durable = DBOSAgent(agent, durable_tools=True, tool_step_config=tool_step_config)
    launch_dbos()

    result = await run_durable(durable, run_mode, "wf-retry")

    assert result.output == "done"
    assert tool_calls == [10, 7]  # one attempt per model request, even with retries allowed
    assert seen_by_model == [[], ["book[retried]=At most 7 nights, please."], ["book=booked 7 nights"]]
    steps = await steps_of("wf-retry")
    assert [step["function_name"] for step in steps] == [
        f"{agent_name}__model.request",
        f"{agent_name}__tool.book",
        f"{agent_name}__model.request",
        f"{agent_name}__tool.book",
        f"{agent_name}__model.request",
    ]
    # The first tool step recorded the ModelRetry itself, so a replay raises it again.
    assert isinstance(steps[1]["error"], ModelRetry) and steps[3]["output"] == "booked 7 nights"


async def test_ordinary_exception_in_durable_tool_is_retried_per_config(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode
) -> None:
    """With `tool_step_config` allowing retries, DBOS re-runs a durable tool that raised an ordinary error."""
    attempts: list[float] = []

    def flaky_charge(amount: float) -> str:
        attempts.append(amount)
        if len(attempts) < 3:
            raise ConnectionError("payment gateway unreachable")
        return f"charged {amount}"

    calls = [ToolCallPart("flaky_charge", {"amount": 9.5})]
    agent = Agent(FunctionModel(calls_then_summary(calls)), name=agent_name, tools=[flaky_charge])
    durable = DBOSAgent(agent, durable_tools=["flaky_charge"], tool_step_config=RETRYING)
    launch_dbos()

    result = await run_durable(durable, run_mode, "wf-flaky")

    assert result.output == "flaky_charge=charged 9.5"
    assert attempts == [9.5, 9.5, 9.5]  # two failures, then success on the third and last allowed attempt
    steps = await steps_of("wf-flaky")
    tool_steps = [step for step in steps if step["function_name"] == f"{agent_name}__tool.flaky_charge"]
    assert len(tool_steps) == 1 and tool_steps[0]["output"] == "charged 9.5" and tool_steps[0]["error"] is None


async def test_ordinary_exception_in_durable_tool_without_retries_fails_the_run(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode
) -> None:
    """Without a retry policy a durable tool runs once: its error fails the run and is recorded on the step."""
    attempts: list[float] = []

    def flaky_charge(amount: float) -> str:
        attempts.append(amount)
        raise ConnectionError("payment gateway unreachable")

    calls = [ToolCallPart("flaky_charge", {"amount": 9.5})]
    agent = Agent(FunctionModel(calls_then_summary(calls)), name=agent_name, tools=[flaky_charge])
    durable = DBOSAgent(agent, durable_tools=True)
    launch_dbos()

    with pytest.raises(ConnectionError, match="payment gateway unreachable"):
        await run_durable(durable, run_mode, "wf-fail")

    assert attempts == [9.5]
    steps = await steps_of("wf-fail")
    assert steps[-1]["function_name"] == f"{agent_name}__tool.flaky_charge"
    assert isinstance(steps[-1]["error"], ConnectionError)
    status = await DBOS.get_workflow_status_async("wf-fail")
    assert status is not None and status.status == "ERROR"


# --- Parallel tool calls: replay order --------------------------------------------------------------


@pytest.fixture(params=["parallel_ordered_events", "sequential"])
def parallel_execution_mode(request: pytest.FixtureRequest) -> DBOSParallelExecutionMode:
    """How the durable run executes the tool calls of one model response."""
    return request.param


async def test_parallel_tool_calls_replay_deterministically(
    agent_name: str,
    launch_dbos: Callable[[], None],
    run_mode: RunMode,
    parallel_execution_mode: DBOSParallelExecutionMode,
) -> None:
    """Several tool calls in one response record their steps in the model's order and replay identically.

    The tools sleep random small amounts, so they finish in a different order each run. Every run must still
    record durable and DBOS-step tools in the order the model asked for them. A fork from the last model
    request replays all the tool steps (none runs again, only the plain tool, which has no step), and a fork
    from the middle of the tool calls re-runs exactly the tools from that step on, at the same step numbers.
    """
    executions: Counter[str] = Counter()

    def pause() -> float:
        return random.uniform(0, 0.02)

    async def reserve(item: int) -> str:  # durable, async
        await asyncio.sleep(pause())
        executions[f"reserve:{item}"] += 1
        return f"R{item}"

    def charge(item: int) -> str:  # durable, sync
        time.sleep(pause())
        executions[f"charge:{item}"] += 1
        return f"C{item}"

    def audit(item: int) -> str:  # @DBOS.step, sync
        time.sleep(pause())
        executions[f"audit:{item}"] += 1
        return f"A{item}"

    async def score(item: int) -> str:  # @DBOS.step, async
        await asyncio.sleep(pause())
        executions[f"score:{item}"] += 1
        return f"S{item}"

    async def echo(item: int) -> str:  # plain: no step
        await asyncio.sleep(pause())
        executions[f"echo:{item}"] += 1
        return f"E{item}"

    # The model's order, with tools of every kind interleaved and two tools called twice.
    order = ["audit", "reserve", "score", "echo", "charge", "reserve", "audit", "score", "charge"]
    calls = [ToolCallPart(tool, {"item": i}, tool_call_id=f"call{i}") for i, tool in enumerate(order)]
    agent = Agent(FunctionModel(calls_then_summary(calls)), name=agent_name)
    agent.tool_plain(name="audit")(DBOS.step(name=f"{agent_name}.audit")(audit))
    agent.tool_plain(name="score")(DBOS.step(name=f"{agent_name}.score")(score))
    for tool in (reserve, charge, echo):
        agent.tool_plain(tool)
    durable = DBOSAgent(agent, durable_tools=["reserve", "charge"], parallel_execution_mode=parallel_execution_mode)
    launch_dbos()

    step_name = {
        "audit": f"{agent_name}.audit",
        "score": f"{agent_name}.score",
        "reserve": f"{agent_name}__tool.reserve",
        "charge": f"{agent_name}__tool.charge",
    }
    model_step = f"{agent_name}__model.request"
    expected_names = [model_step, *(step_name[t] for t in order if t != "echo"), model_step]
    expected_outputs = [f"{t[0].upper()}{i}" for i, t in enumerate(order) if t != "echo"]
    expected_output = " | ".join(f"{t}={t[0].upper()}{i}" for i, t in enumerate(order))

    runs = 4
    for n in range(runs):
        result = await run_durable(durable, run_mode, f"wf-par-{n}")
        assert result.output == expected_output
        steps = await steps_of(f"wf-par-{n}")
        assert [step["function_name"] for step in steps] == expected_names
        assert [step["output"] for step in steps[1:-1]] == expected_outputs
    assert all(count == runs for count in executions.values()) and len(executions) == len(order)

    # Replay every tool step: from the last model request on.
    executed_before = executions.copy()
    last_model_step = len(expected_names)
    handles = [await DBOS.fork_workflow_async(f"wf-par-{n}", last_model_step) for n in range(runs)]
    for handle in handles:
        forked = await handle.get_result()
        assert forked.output == expected_output
        assert await step_names(handle.workflow_id) == expected_names
    rerun = executions - executed_before
    assert rerun == Counter({f"echo:{order.index('echo')}": runs})  # the plain tool only: it has no step

    # Replay the first tool steps and run the rest again: they must take the same step numbers.
    start_step = 5  # model request, then audit:0, reserve:1, score:2 replayed; charge:4 on run again
    executed_before = executions.copy()
    handle = await DBOS.fork_workflow_async("wf-par-0", start_step)
    forked = await handle.get_result()
    assert forked.output == expected_output
    assert await step_names(handle.workflow_id) == expected_names
    rerun = executions - executed_before
    assert rerun == Counter({f"{t}:{i}": 1 for i, t in enumerate(order) if i >= 4 or t == "echo"})


# --- A result DBOS cannot store ----------------------------------------------------------------------


@pytest.mark.parametrize("tool_step_config", [None, RETRYING], ids=["default", "retrying"])
async def test_durable_tool_result_that_cannot_be_stored_names_the_tool_and_type(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, tool_step_config: StepConfig | None
) -> None:
    """A durable tool returning a live object fails with `NotSerializableError` naming the tool, the part of its
    result and that part's type, instead of DBOS's bare `TypeError`; the error is recorded and never retried."""
    calls: list[str] = []

    def open_handle(path: str) -> dict[str, Any]:
        calls.append(path)
        return {"path": path, "handle": threading.Lock()}

    model = calls_then_summary([ToolCallPart("open_handle", {"path": "/tmp/x"})])
    agent = Agent(FunctionModel(model), name=agent_name, tools=[open_handle])
    durable = DBOSAgent(agent, durable_tools=True, tool_step_config=tool_step_config)
    launch_dbos()

    expected = r"Durable tool `open_handle` returned a value DBOS cannot store: `result\[.handle.\]` \(a _thread\.lock"
    with pytest.raises(NotSerializableError, match=expected) as error:
        await run_durable(durable, run_mode, "wf-unstorable")
    assert "durable_tools" in str(error.value)  # says what to do
    assert calls == ["/tmp/x"]  # ran once: retrying cannot make the result storable
    steps = await steps_of("wf-unstorable")
    assert steps[-1]["function_name"] == f"{agent_name}__tool.open_handle"
    assert isinstance(steps[-1]["error"], NotSerializableError)  # what a replay raises again
    status = await DBOS.get_workflow_status_async("wf-unstorable")
    assert status is not None and status.status == "ERROR"
