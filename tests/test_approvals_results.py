"""What the run does with each kind of answer, and the CLI's remaining options and exit codes.

`deliver_result` with a `ToolReturn`, a `ToolFailed` and a `ModelRetry`; the timeout of a `CallDeferred` call; an
approved tool that defers again; and `dbos-pydantic-ai approvals` with `deliver`, `--override-args`, `--run` and its
exit codes (1 refused, 2 any other error). SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from pydantic_ai import Agent, CallDeferred, DeferredToolRequests, ModelRetry, RunContext
from pydantic_ai.exceptions import ApprovalRequired, ToolFailed
from pydantic_ai.messages import ModelRequest, ToolReturn, ToolReturnPart, UserPromptPart
from pydantic_ai.models.function import FunctionModel

from dbos_pydantic_ai import DBOSAgent, approve_async, deliver_result_async
from test_approvals import Scripted, cli, decision_rows, finish, pending_calls, start


def ship_agent(name: str, model: Scripted, **options: Any) -> DBOSAgent[None, str]:
    """A durable agent whose `ship` tool is done by a warehouse system: every call is deferred (`CallDeferred`)."""
    agent: Agent[None, str] = Agent(FunctionModel(model), name=name)

    @agent.tool_plain
    def ship(order: str) -> str:
        """Ship an order; the warehouse reports back."""
        raise CallDeferred(metadata={"queue": "warehouse"})

    return DBOSAgent(agent, approvals="wait", **options)


def tool_parts(request: Any) -> list[tuple[str, Any, str]]:
    """(tool call id, content, outcome) of each tool result in a model request."""
    assert isinstance(request, ModelRequest)
    return [
        (part.tool_call_id, part.content, part.outcome) for part in request.parts if isinstance(part, ToolReturnPart)
    ]


async def test_delivered_tool_return_tool_failed_and_model_retry(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    model = Scripted(
        [("ship", {"order": "A1"}, "c1"), ("ship", {"order": "B2"}, "c2"), ("ship", {"order": "C3"}, "c3")]
    )
    durable = ship_agent(agent_name, model)
    launch_dbos()
    task = start(durable, "async", "wf-results")
    first, second, third = await pending_calls("wf-results", 3, task)
    assert [p.kind for p in (first, second, third)] == ["external"] * 3

    await deliver_result_async(
        "wf-results",
        "c1",
        args_digest=first.args_digest,
        result=ToolReturn({"parcel": "P7"}, content="Parcel P7 left the warehouse."),
    )
    await deliver_result_async("wf-results", "c2", args_digest=second.args_digest, result=ToolFailed("B2 is sold out."))
    await deliver_result_async("wf-results", "c3", args_digest=third.args_digest, result=ModelRetry("No order C3."))
    await finish(task)

    request = model.requests[1][-1]
    assert tool_parts(request) == [
        ("c1", {"parcel": "P7"}, "success"),  # a ToolReturn's value is the result ...
        ("c2", "B2 is sold out.", "failed"),  # a ToolFailed is a failed call
        ("c3", "No order C3.", "retried"),  # a ModelRetry asks the model to try again
    ]
    # ... and its content goes to the model as a user prompt of its own.
    assert [p.content for p in request.parts if isinstance(p, UserPromptPart)] == ["Parcel P7 left the warehouse."]
    assert len(model.requests) == 2


async def test_a_deferred_call_times_out_as_a_failed_call(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    model = Scripted([("ship", {"order": "A1"}, "c1")])
    durable = ship_agent(agent_name, model, approval_timeout=1.5)
    launch_dbos()

    result = await finish(start(durable, "async", "wf-deferred-timeout"))

    message = "No decision on this tool call arrived within 1.5 seconds; it was not run."
    assert result.output == f"ship: {message}"
    assert tool_parts(model.requests[1][-1]) == [("c1", message, "failed")]  # a failed call, not a denial
    assert [row["decision"] for row in decision_rows(database_url, "wf-deferred-timeout")] == ["timed_out"]


async def test_an_approved_tool_that_defers_again_ends_the_run(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    """Approved, `recheck` asks for approval again and `dispatch` defers to a system: the run ends with both."""
    model = Scripted([("recheck", {"amount": 10}, "c1"), ("dispatch", {"order": "A1"}, "c2")])
    agent: Agent[None, str | DeferredToolRequests] = Agent(
        FunctionModel(model), name=agent_name, output_type=[str, DeferredToolRequests]
    )
    ran: list[str] = []

    @agent.tool
    def recheck(ctx: RunContext[None], amount: int) -> str:
        """Needs approval, every time."""
        ran.append(f"recheck approved={ctx.tool_call_approved}")
        raise ApprovalRequired(metadata={"again": True})

    @agent.tool_plain(requires_approval=True)
    def dispatch(order: str) -> str:
        """Needs approval, then is done by another system."""
        ran.append("dispatch")
        raise CallDeferred()

    durable = DBOSAgent(agent, approvals="wait")
    launch_dbos()
    task = start(durable, "async", "wf-again")
    first, second = await pending_calls("wf-again", 2, task)
    await approve_async("wf-again", "c1", args_digest=first.args_digest)
    await approve_async("wf-again", "c2", args_digest=second.args_digest)
    result = await finish(task)

    assert isinstance(result.output, DeferredToolRequests)
    assert [call.tool_call_id for call in result.output.approvals] == ["c1"]
    assert [call.tool_call_id for call in result.output.calls] == ["c2"]
    # Once both are approved, the two calls run concurrently, in either order.
    assert ran[0] == "recheck approved=False"
    assert sorted(ran[1:]) == ["dispatch", "recheck approved=True"]
    assert len(model.requests) == 1  # the run ended without asking the model again


async def test_cli_deliver_override_args_run_filter_and_exit_codes(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    model = Scripted([("refund", {"amount": 10}, "c1"), ("ship", {"order": "A1"}, "c2")])
    agent: Agent[None, str] = Agent(FunctionModel(model), name=agent_name)
    refunded: list[int] = []

    @agent.tool_plain(requires_approval=True)
    def refund(amount: int) -> str:
        """Refund the customer."""
        refunded.append(amount)
        return f"refunded {amount}"

    @agent.tool_plain
    def ship(order: str) -> str:
        """Ship an order."""
        raise CallDeferred()

    other_model = Scripted([("refund", {"amount": 99}, "c1")])
    other_agent: Agent[None, str] = Agent(FunctionModel(other_model), name=f"{agent_name}_other")
    other_agent.tool_plain(requires_approval=True)(refund)
    durable = DBOSAgent(agent, approvals="wait", durable_tools=["refund"])
    other = DBOSAgent(other_agent, approvals="wait")
    launch_dbos()
    task = start(durable, "async", "wf-cli-a")
    other_task = start(other, "async", "wf-cli-b")
    await pending_calls("wf-cli-a", 2, task)
    await pending_calls("wf-cli-b", 1, other_task)

    async def run_cli(*args: str) -> tuple[int, str, str]:
        done = await asyncio.to_thread(cli, *args, database_url=database_url)
        return done.returncode, done.stdout, done.stderr

    code, out, err = await run_cli("list", "--json", "--run", "wf-cli-a")
    assert code == 0, err
    assert [(row["workflow_id"], row["tool_call_id"], row["kind"]) for row in json.loads(out)] == [
        ("wf-cli-a", "c1", "approval"),
        ("wf-cli-a", "c2", "external"),
    ]
    # Refused (exit 1, the reason on stderr): the wrong verb for the call's kind.
    code, _, err = await run_cli("approve", "wf-cli-a", "c2")
    assert code == 1 and "waits for a result: use deliver_result()" in err
    code, _, err = await run_cli("deliver", "wf-cli-a", "c1", "--result", '"done"')
    assert code == 1 and "waits for an approval" in err
    # Any other error (exit 2): input that is not JSON, or not an object of arguments; no such database.
    code, _, err = await run_cli("deliver", "wf-cli-a", "c2", "--result", "parcel P7")
    assert code == 2 and "--result is not JSON" in err
    code, _, err = await run_cli("approve", "wf-cli-a", "c1", "--override-args", "[5]")
    assert code == 2 and "--override-args must be a JSON object" in err
    code, _, err = await run_cli("approve", "wf-cli-a", "c1", "--database-url", "sqlite:///no-such-file.sqlite")
    assert code == 2 and "does not exist" in err
    assert refunded == [] and decision_rows(database_url) == []  # nothing was decided

    code, out, err = await run_cli("approve", "wf-cli-a", "c1", "--override-args", '{"amount": 5}')
    assert code == 0, err
    assert 'Approving refund({"amount": 10})' in out
    code, out, err = await run_cli("deliver", "wf-cli-a", "c2", "--result", '{"parcel": "P7"}')
    assert code == 0, err
    assert 'Delivering the result of ship({"order": "A1"})' in out
    result = await finish(task)

    assert refunded == [5]  # run with the edited arguments
    assert result.output == "refund: refunded 5 | ship: {'parcel': 'P7'}"
    assert tool_parts(model.requests[1][-1]) == [("c1", "refunded 5", "success"), ("c2", {"parcel": "P7"}, "success")]
    # The other run was not touched by any of this.
    code, out, err = await run_cli("list", "--json", "--run", "wf-cli-b")
    assert code == 0, err
    assert [(row["workflow_id"], row["args"]) for row in json.loads(out)] == [("wf-cli-b", {"amount": 99})]
    code, _, err = await run_cli("deny", "wf-cli-b", "c1", "--reason", "not this one")
    assert code == 0, err
    assert (await finish(other_task)).output == "refund: not this one"
