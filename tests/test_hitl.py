"""Human in the loop: deferred tool calls end a durable run, and a second durable run continues it.

A run whose model asks for a tool that needs approval (or whose result comes from outside) ends with
`DeferredToolRequests`. The application later starts a new durable run with the first run's messages
and the answers (`DeferredToolResults`); that run executes or skips the tools and asks the model again,
without repeating the first run's model requests. Every test runs on SQLite and PostgreSQL, through
`await durable.run()` and `durable.run_sync()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from dbos import DBOS
from pydantic_ai import (
    Agent,
    ApprovalRequired,
    CallDeferred,
    DeferredToolRequests,
    DeferredToolResults,
    RunContext,
    ToolDenied,
)
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.run import AgentRunResult

from dbos_pydantic_ai import DBOSAgent, StepConfig
from run_modes import RunMode, run_in_mode

RETRYING: StepConfig = {"retries_allowed": True, "max_attempts": 3, "interval_seconds": 0}


async def step_names(workflow_id: str) -> list[str]:
    return [step["function_name"] for step in await DBOS.list_workflow_steps_async(workflow_id)]


class ToolThenAnswer:
    """A FunctionModel function: calls `tool` once, then answers with what the tool returned. Counts its calls."""

    def __init__(self, tool: str, args: dict[str, Any]) -> None:
        self.tool = tool
        self.args = args
        self.requests: list[list[ModelMessage]] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.requests.append(list(messages))
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        returns = [part for part in last.parts if isinstance(part, ToolReturnPart)]
        if not returns:
            return ModelResponse(parts=[ToolCallPart(self.tool, self.args, tool_call_id="call-1")])
        return ModelResponse(parts=[TextPart(f"{returns[0].outcome}: {returns[0].content}")])


def deferred(result: AgentRunResult[Any]) -> DeferredToolRequests:
    assert isinstance(result.output, DeferredToolRequests), result.output
    return result.output


# --- requires_approval=True -----------------------------------------------------------------------


@pytest.mark.parametrize("durable_tools", [False, True], ids=["inline-tool", "durable-tool"])
async def test_approval_required_tool_ends_run_then_approved_continuation_runs_it(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, durable_tools: bool
) -> None:
    """The run ends with the call awaiting approval; the approved continuation runs the tool once."""
    deleted: list[str] = []
    model = ToolThenAnswer("delete_file", {"path": "/tmp/report.txt"})
    agent = Agent(FunctionModel(model), name=agent_name, output_type=[str, DeferredToolRequests])

    @agent.tool_plain(requires_approval=True)
    def delete_file(path: str) -> str:
        deleted.append(path)
        return f"deleted {path}"

    durable = DBOSAgent(agent, durable_tools=durable_tools)
    launch_dbos()

    first = await run_in_mode(durable, run_mode, "wf-ask", "Clean up the report")
    requests = deferred(first)
    assert [(call.tool_name, call.args) for call in requests.approvals] == [
        ("delete_file", {"path": "/tmp/report.txt"})
    ]
    assert requests.calls == [] and deleted == [] and len(model.requests) == 1
    assert await step_names("wf-ask") == [f"{agent_name}__model.request"]

    call_id = requests.approvals[0].tool_call_id
    second = await run_in_mode(
        durable,
        run_mode,
        "wf-approved",
        message_history=first.all_messages(),
        deferred_tool_results=DeferredToolResults(approvals={call_id: True}),
    )

    assert second.output == "success: deleted /tmp/report.txt"
    assert deleted == ["/tmp/report.txt"]
    # One new model request: the first run's request was not made again.
    assert len(model.requests) == 2
    tool_step = [f"{agent_name}__tool.delete_file"] if durable_tools else []
    assert await step_names("wf-approved") == [*tool_step, f"{agent_name}__model.request"]
    # The continuation's history holds the first run's messages, then the tool's result and the answer.
    assert second.all_messages()[: len(first.all_messages())] == first.all_messages()


@pytest.mark.parametrize(
    ("denial", "message"),
    [
        (False, "The tool call was denied."),
        (ToolDenied("Deleting reports is not allowed."), "Deleting reports is not allowed."),
    ],
    ids=["false", "tool-denied"],
)
async def test_denied_tool_is_not_run_and_model_sees_the_denial(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, denial: bool | ToolDenied, message: str
) -> None:
    """A denial skips the tool and hands the model the denial message as the tool's result."""
    deleted: list[str] = []
    model = ToolThenAnswer("delete_file", {"path": "/tmp/report.txt"})
    agent = Agent(FunctionModel(model), name=agent_name, output_type=[str, DeferredToolRequests])

    @agent.tool_plain(requires_approval=True)
    def delete_file(path: str) -> str:
        deleted.append(path)
        return f"deleted {path}"

    durable = DBOSAgent(agent)
    launch_dbos()

    first = await run_in_mode(durable, run_mode, "wf-ask", "Clean up the report")
    call_id = deferred(first).approvals[0].tool_call_id
    second = await run_in_mode(
        durable,
        run_mode,
        "wf-denied",
        message_history=first.all_messages(),
        deferred_tool_results=DeferredToolResults(approvals={call_id: denial}),
    )

    assert second.output == f"denied: {message}"
    assert deleted == []
    last_request = model.requests[-1][-1]
    assert isinstance(last_request, ModelRequest)
    assert [(part.tool_call_id, part.content) for part in last_request.parts if isinstance(part, ToolReturnPart)] == [
        (call_id, message)
    ]
    assert len(model.requests) == 2
    assert await step_names("wf-denied") == [f"{agent_name}__model.request"]


# --- ApprovalRequired raised by the tool ------------------------------------------------------------


@pytest.mark.parametrize("durable_tools", [False, True], ids=["inline-tool", "durable-tool"])
async def test_tool_raising_approval_required(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, durable_tools: bool
) -> None:
    """A tool that raises `ApprovalRequired` defers its call (not retried by DBOS as a durable step), with metadata;
    approved, the continuation runs it again with `ctx.tool_call_approved` set."""
    attempts: list[tuple[int, bool]] = []
    model = ToolThenAnswer("transfer", {"amount": 5000})
    agent = Agent(FunctionModel(model), name=agent_name, output_type=[str, DeferredToolRequests])

    @agent.tool
    def transfer(ctx: RunContext[None], amount: int) -> str:
        attempts.append((amount, ctx.tool_call_approved))
        if amount > 1000 and not ctx.tool_call_approved:
            raise ApprovalRequired(metadata={"reason": "large transfer", "amount": amount})
        return f"sent {amount}"

    durable = DBOSAgent(agent, durable_tools=durable_tools, tool_step_config=RETRYING)
    launch_dbos()

    first = await run_in_mode(durable, run_mode, "wf-ask", "Pay the invoice")
    requests = deferred(first)
    call_id = requests.approvals[0].tool_call_id
    assert requests.metadata == {call_id: {"reason": "large transfer", "amount": 5000}}
    assert attempts == [(5000, False)]  # ApprovalRequired is control flow: DBOS did not retry the step
    if durable_tools:
        steps = await DBOS.list_workflow_steps_async("wf-ask")
        assert [step["function_name"] for step in steps] == [
            f"{agent_name}__model.request",
            f"{agent_name}__tool.transfer",
        ]
        assert isinstance(steps[1]["error"], ApprovalRequired)
        assert steps[1]["error"].metadata == {"reason": "large transfer", "amount": 5000}
    else:
        assert await step_names("wf-ask") == [f"{agent_name}__model.request"]

    second = await run_in_mode(
        durable,
        run_mode,
        "wf-approved",
        message_history=first.all_messages(),
        deferred_tool_results=DeferredToolResults(approvals={call_id: True}),
    )

    assert second.output == "success: sent 5000"
    assert attempts == [(5000, False), (5000, True)]
    assert len(model.requests) == 2
    tool_step = [f"{agent_name}__tool.transfer"] if durable_tools else []
    assert await step_names("wf-approved") == [*tool_step, f"{agent_name}__model.request"]


# --- CallDeferred: the result comes from outside -------------------------------------------------


@pytest.mark.parametrize("durable_tools", [False, True], ids=["inline-tool", "durable-tool"])
async def test_tool_raising_call_deferred_gets_its_result_from_the_continuation(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, durable_tools: bool
) -> None:
    """A `CallDeferred` call ends the run; the value supplied later reaches the model as the tool's result."""
    started: list[str] = []
    model = ToolThenAnswer("background_check", {"person": "Ada"})
    agent = Agent(FunctionModel(model), name=agent_name, output_type=[str, DeferredToolRequests])

    @agent.tool_plain
    def background_check(person: str) -> str:
        started.append(person)
        raise CallDeferred(metadata={"ticket": f"BC-{person}"})

    durable = DBOSAgent(agent, durable_tools=durable_tools, tool_step_config=RETRYING)
    launch_dbos()

    first = await run_in_mode(durable, run_mode, "wf-ask", "Check Ada")
    requests = deferred(first)
    assert [(call.tool_name, call.args) for call in requests.calls] == [("background_check", {"person": "Ada"})]
    assert requests.approvals == []
    call_id = requests.calls[0].tool_call_id
    assert requests.metadata == {call_id: {"ticket": "BC-Ada"}}
    assert started == ["Ada"] and len(model.requests) == 1
    if durable_tools:
        steps = await DBOS.list_workflow_steps_async("wf-ask")
        assert steps[-1]["function_name"] == f"{agent_name}__tool.background_check"
        assert isinstance(steps[-1]["error"], CallDeferred)

    second = await run_in_mode(
        durable,
        run_mode,
        "wf-result",
        message_history=first.all_messages(),
        deferred_tool_results=DeferredToolResults(calls={call_id: "clear record"}),
    )

    assert second.output == "success: clear record"
    assert started == ["Ada"]  # the supplied result stands in for the tool: it does not run again
    assert len(model.requests) == 2
    assert await step_names("wf-result") == [f"{agent_name}__model.request"]
