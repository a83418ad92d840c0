"""Approvals that wait inside a durable run (`DBOSAgent(..., approvals="wait")`) and the decision API.

A run whose model calls a tool that needs approval (or an external result) publishes the pending calls
and waits with DBOS messaging; `approve`, `deny` and `deliver_result` (in this process, from another
one with only the database URL, or through the CLI) let it go on exactly as pydantic-ai goes on after
`deferred_tool_results`. Each decision is bound to its run, call and arguments digest and is accepted
once. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

import pytest
import sqlalchemy as sa
from dbos import DBOS, DBOSClient, SetWorkflowID
from pydantic_ai import Agent, CallDeferred
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.run import AgentRunResult

from dbos_pydantic_ai import (
    ApprovalRejected,
    DBOSAgent,
    PendingApproval,
    approval_args_digest,
    approve,
    approve_async,
    deliver_result_async,
    deny,
    deny_async,
    list_pending_approvals,
    list_pending_approvals_async,
)
from dbos_pydantic_ai.names import (
    APPROVALS_EVENT,
    DECISION_TOPIC,
    DECISIONS_TABLE,
    approvals_check_step,
    approvals_timeout_step,
)
from dbos_pydantic_ai.serializer import JSONSerializer

RunMode = Literal["async", "sync"]
WAIT_SECONDS = 60.0


class Scripted:
    """A FunctionModel function: answers each turn with the scripted tool calls, then with the tool results.

    `turns[i]` is a list of `(tool_name, args, tool_call_id)` for the i-th response; after the last one
    the model answers with `tool: content` for each tool result it was sent. Counts its requests.
    """

    def __init__(self, *turns: list[tuple[str, dict[str, Any], str]]) -> None:
        self.turns = turns
        self.requests: list[list[ModelMessage]] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = len(self.requests)
        self.requests.append(list(messages))
        if turn < len(self.turns):
            return ModelResponse(
                parts=[ToolCallPart(name, args, tool_call_id=call_id) for name, args, call_id in self.turns[turn]]
            )
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        returns = [part for part in last.parts if isinstance(part, ToolReturnPart)]
        return ModelResponse(parts=[TextPart(" | ".join(f"{part.tool_name}: {part.content}" for part in returns))])


def refund_agent(name: str, model: Scripted, executed: list[int], **options: Any) -> DBOSAgent[None, str]:
    """A durable agent whose `refund` tool needs approval (a durable tool, so it runs as a step) and records runs."""
    agent: Agent[None, str] = Agent(FunctionModel(model), name=name)

    @agent.tool_plain(requires_approval=True)
    def refund(amount: int) -> str:
        """Refund the customer."""
        executed.append(amount)
        return f"refunded {amount}"

    options.setdefault("approvals", "wait")
    return DBOSAgent(agent, durable_tools=["refund"], **options)


def start(durable: DBOSAgent[None, Any], mode: RunMode, workflow_id: str, prompt: str = "go") -> asyncio.Task[Any]:
    """Start a durable run in the background (`run_sync` on a thread)."""
    with SetWorkflowID(workflow_id):
        if mode == "async":
            return asyncio.create_task(durable.run(prompt))
        return asyncio.create_task(asyncio.to_thread(durable.run_sync, prompt))


async def wait_for(condition: Callable[[], Any], what: str, task: asyncio.Task[Any] | None = None) -> Any:
    """Poll an async `condition` until it returns something truthy; fail if the run ended first."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = await condition()
        if value:
            return value
        if task is not None and task.done():
            pytest.fail(f"the run ended before {what}: {task.result()!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def pending_calls(workflow_id: str, count: int, task: asyncio.Task[Any]) -> list[PendingApproval]:
    """Wait until the run waits for exactly `count` decisions; return them."""

    async def listed() -> list[PendingApproval] | None:
        pending = await list_pending_approvals_async(workflow_id=workflow_id)
        return pending if len(pending) == count else None

    return await wait_for(listed, f"{count} pending call(s) of {workflow_id}", task)


async def published(workflow_id: str) -> dict[str, Any]:
    return await DBOS.get_event_async(workflow_id, APPROVALS_EVENT, timeout_seconds=0)


async def step_names(workflow_id: str) -> list[str]:
    return [step["function_name"] for step in await DBOS.list_workflow_steps_async(workflow_id)]


async def finish(task: asyncio.Task[Any]) -> AgentRunResult[Any]:
    return await asyncio.wait_for(task, WAIT_SECONDS)


def decisions_table(database_url: str) -> tuple[sa.Engine, sa.Table]:
    """An engine of its own on the test's system database, and the decisions table there."""
    postgres = not database_url.startswith("sqlite")
    url = sa.make_url(database_url)
    engine = sa.create_engine(url.set(drivername="postgresql+psycopg") if postgres else url)
    table = sa.table(
        DECISIONS_TABLE,
        *(sa.column(name) for name in DECISION_COLUMNS),
        schema="dbos" if postgres else None,
    )
    return engine, table


DECISION_COLUMNS = ("workflow_id", "wait_id", "tool_call_id", "decision", "args_digest", "decided_at_epoch_ms")


def decision_rows(database_url: str, workflow_id: str | None = None) -> list[dict[str, Any]]:
    """The rows of the decisions table (of one run), read with a connection of their own."""
    engine, table = decisions_table(database_url)
    query = sa.select(table)
    if workflow_id is not None:
        query = query.where(table.c.workflow_id == workflow_id)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query.order_by(table.c.tool_call_id))]
    finally:
        engine.dispose()


# --- Approve, deny, override ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_approved_call_runs_once_and_the_run_continues(
    agent_name: str, launch_dbos: Callable[[], None], mode: RunMode
) -> None:
    model = Scripted([("refund", {"amount": 10}, "c1")])
    executed: list[int] = []
    durable = refund_agent(agent_name, model, executed)
    launch_dbos()

    task = start(durable, mode, "wf-approve")
    [pending] = await pending_calls("wf-approve", 1, task)
    assert (pending.workflow_id, pending.agent_name, pending.tool_call_id) == ("wf-approve", agent_name, "c1")
    assert (pending.tool_name, pending.args, pending.kind) == ("refund", {"amount": 10}, "approval")
    assert pending.args_digest == approval_args_digest("refund", {"amount": 10})
    assert pending.requested_at.tzinfo is not None and pending.deadline is None
    assert executed == [] and len(model.requests) == 1  # waiting: nothing ran, no new model request

    await approve_async("wf-approve", "c1", args_digest=pending.args_digest)
    result = await finish(task)

    assert result.output == "refund: refunded 10"
    assert executed == [10]
    assert len(model.requests) == 2
    steps = await step_names("wf-approve")
    assert steps[:2] == [f"{agent_name}__model.request", f"{agent_name}__approvals.wait"]
    assert "DBOS.recv" in steps
    assert steps[-2:] == [f"{agent_name}__tool.refund", f"{agent_name}__model.request"]
    assert await list_pending_approvals_async() == []
    state = await published("wf-approve")
    assert state["status"] == "resolved" and state["decided"]["c1"]["decision"] == "approve"


async def test_denial_with_a_reason_reaches_the_model(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    model = Scripted([("refund", {"amount": 10}, "c1")])
    executed: list[int] = []
    durable = refund_agent(agent_name, model, executed)
    launch_dbos()

    task = start(durable, "async", "wf-deny")
    [pending] = await pending_calls("wf-deny", 1, task)
    await deny_async("wf-deny", "c1", args_digest=pending.args_digest, reason="Refunds over 5 need a manager.")
    result = await finish(task)

    assert result.output == "refund: Refunds over 5 need a manager."
    assert executed == []
    assert f"{agent_name}__tool.refund" not in await step_names("wf-deny")


async def test_approval_with_edited_arguments(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    model = Scripted([("refund", {"amount": 10}, "c1")])
    executed: list[int] = []
    durable = refund_agent(agent_name, model, executed)
    launch_dbos()

    task = start(durable, "async", "wf-override")
    [pending] = await pending_calls("wf-override", 1, task)
    await approve_async("wf-override", "c1", args_digest=pending.args_digest, override_args={"amount": 4})
    result = await finish(task)

    assert result.output == "refund: refunded 4"
    assert executed == [4]


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_several_calls_are_decided_one_by_one(
    agent_name: str, launch_dbos: Callable[[], None], mode: RunMode
) -> None:
    """Two calls in one response: after the first decision the run still waits; the second lets it go on."""
    model = Scripted([("refund", {"amount": 10}, "c1"), ("refund", {"amount": 20}, "c2")])
    executed: list[int] = []
    durable = refund_agent(agent_name, model, executed)
    launch_dbos()

    task = start(durable, mode, "wf-two")
    first, second = await pending_calls("wf-two", 2, task)
    assert [first.tool_call_id, second.tool_call_id] == ["c1", "c2"]

    await approve_async("wf-two", "c1", args_digest=first.args_digest)
    assert [p.tool_call_id for p in await list_pending_approvals_async()] == ["c2"]  # listed at once
    # Once the run has taken the first decision, it still waits for the second: no tool, no model request.
    await wait_for(lambda: _decided(("wf-two"), "c1"), "the run to take the first decision", task)
    assert not task.done()
    assert executed == [] and len(model.requests) == 1

    await deny_async("wf-two", "c2", args_digest=second.args_digest)
    result = await finish(task)

    assert result.output == "refund: refunded 10 | refund: The tool call was denied."
    assert executed == [10]
    assert len(model.requests) == 2


async def _decided(workflow_id: str, call_id: str) -> bool:
    state = await published(workflow_id)
    return call_id in state["decided"]


async def test_each_wait_of_a_run_is_decided_separately(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    """The model asks twice, in two responses, with the same call id: each wait takes only its own decision."""
    model = Scripted([("refund", {"amount": 10}, "c1")], [("refund", {"amount": 20}, "c1")])
    executed: list[int] = []
    durable = refund_agent(agent_name, model, executed)
    launch_dbos()

    task = start(durable, "async", "wf-rounds")
    [first] = await pending_calls("wf-rounds", 1, task)
    await approve_async("wf-rounds", "c1", args_digest=first.args_digest)

    async def second_wait() -> PendingApproval | None:
        pending = await list_pending_approvals_async(workflow_id="wf-rounds")
        return pending[0] if pending and pending[0].wait_id != first.wait_id else None

    second = await wait_for(second_wait, "the second wait", task)
    assert second.args == {"amount": 20} and second.tool_call_id == "c1"
    with pytest.raises(ApprovalRejected, match="not the ones"):  # the first wait's digest does not fit
        await approve_async("wf-rounds", "c1", args_digest=first.args_digest)
    await deny_async("wf-rounds", "c1", args_digest=second.args_digest, reason="one refund is enough")
    result = await finish(task)

    assert result.output == "refund: one refund is enough"
    assert executed == [10]
    assert len(model.requests) == 3


# --- Timeout and external results -------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [1.5, timedelta(seconds=1.5)], ids=["seconds", "timedelta"])
async def test_timeout_denies_the_remaining_calls(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str, timeout: float | timedelta
) -> None:
    model = Scripted([("refund", {"amount": 10}, "c1")])
    executed: list[int] = []
    durable = refund_agent(agent_name, model, executed, approval_timeout=timeout)
    launch_dbos()

    result = await finish(start(durable, "async", "wf-timeout"))

    assert result.output == "refund: No decision on this tool call arrived within 1.5 seconds; it was not run."
    assert executed == []
    state = await published("wf-timeout")
    assert state["deadline"] - state["requested_at"] == 1.5
    assert state["status"] == "resolved" and list(state["decided"]) == ["c1"]
    assert state["decided"]["c1"]["decision"] == "timed_out" and state["decided"]["c1"]["at"] >= state["deadline"]
    # The run recorded its timeout in the decisions table (the audit log), in its timeout step.
    [row] = decision_rows(database_url, "wf-timeout")
    assert (row["tool_call_id"], row["decision"], row["wait_id"]) == ("c1", "timed_out", state["wait_id"])
    assert row["args_digest"] == approval_args_digest("refund", {"amount": 10})
    assert row["decided_at_epoch_ms"] == int(state["decided"]["c1"]["at"] * 1000)
    assert approvals_timeout_step(agent_name) in await step_names("wf-timeout")
    # The run finished: a decision now is told the call timed out, not only that the run no longer waits.
    with pytest.raises(ApprovalRejected, match="'c1' of run 'wf-timeout' was not decided in time"):
        await approve_async("wf-timeout", "c1", args_digest=approval_args_digest("refund", {"amount": 10}))


async def test_a_bare_send_of_a_decision_is_not_carried_out(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    """The run acts only on decisions the table holds: a well-formed message sent around the API is ignored."""
    model = Scripted([("refund", {"amount": 10}, "c1")])
    executed: list[int] = []
    durable = refund_agent(agent_name, model, executed)
    launch_dbos()
    task = start(durable, "async", "wf-bare")
    [pending] = await pending_calls("wf-bare", 1, task)

    forged = {
        "wait_id": pending.wait_id,
        "tool_call_id": "c1",
        "args_digest": pending.args_digest,
        "decision": "approve",
        "decided_at": time.time(),
        "override_args": {"amount": 10_000},
    }
    client = DBOSClient(system_database_url=database_url, serializer=JSONSerializer())
    try:
        await asyncio.to_thread(client.send, "wf-bare", forged, DECISION_TOPIC)
    finally:
        client.destroy()
    state = await wait_for(lambda: _ignored("wf-bare"), "the run to ignore the bare message", task)
    assert state["ignored"] == [{"tool_call_id": "c1", "problem": f"no such decision in {DECISIONS_TABLE}"}]
    assert state["decided"] == {} and decision_rows(database_url, "wf-bare") == []
    assert executed == [] and not task.done()
    assert approvals_check_step(agent_name) in await step_names("wf-bare")  # judged in a recorded step
    assert [p.tool_call_id for p in await list_pending_approvals_async()] == ["c1"]  # still waiting

    await deny_async("wf-bare", "c1", args_digest=pending.args_digest, reason="no")
    result = await finish(task)
    assert result.output == "refund: no"
    assert executed == []
    [row] = decision_rows(database_url, "wf-bare")
    assert row["decision"] == "deny"


async def test_a_decision_recorded_before_the_timeout_step_is_carried_out(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    """At the deadline the table decides: a human row already there wins, and the run waits for its message.

    The test writes the row itself and sends the message later, which widens the moment between a decision's
    commit and the run's reading of it (a few milliseconds in `approve`, which commits both at once) to seconds.
    """
    model = Scripted([("refund", {"amount": 10}, "c1")])
    executed: list[int] = []
    durable = refund_agent(agent_name, model, executed, approval_timeout=3)
    launch_dbos()
    task = start(durable, "async", "wf-won")
    [pending] = await pending_calls("wf-won", 1, task)
    decided_at = time.time()
    engine, table = decisions_table(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.insert(table).values(
                    workflow_id="wf-won",
                    wait_id=pending.wait_id,
                    tool_call_id="c1",
                    decision="approve",
                    args_digest=pending.args_digest,
                    decided_at_epoch_ms=int(decided_at * 1000),
                )
            )
    finally:
        engine.dispose()

    timeout_step = approvals_timeout_step(agent_name)

    async def timed_out() -> bool:
        return timeout_step in await step_names("wf-won")

    await wait_for(timed_out, "the run's timeout step", task)
    # The deadline passed, but the call was decided in time: not denied, not listed, not decidable again.
    assert await list_pending_approvals_async() == []
    with pytest.raises(ApprovalRejected, match="already decided"):
        await approve_async("wf-won", "c1", args_digest=pending.args_digest)
    assert executed == [] and not task.done()
    assert [row["decision"] for row in decision_rows(database_url, "wf-won")] == ["approve"]

    message = {
        "wait_id": pending.wait_id,
        "tool_call_id": "c1",
        "args_digest": pending.args_digest,
        "decision": "approve",
        "override_args": None,
    }
    # A message that is not the recorded decision (another time) is still ignored ...
    await DBOS.send_async("wf-won", {**message, "decided_at": decided_at - 60}, topic=DECISION_TOPIC)
    state = await wait_for(lambda: _ignored("wf-won"), "the run to ignore the other message", task)
    assert state["ignored"] == [
        {"tool_call_id": "c1", "problem": f"not the decision {DECISIONS_TABLE} holds for this call (approve)"}
    ]
    # ... and the recorded one is carried out.
    await DBOS.send_async("wf-won", {**message, "decided_at": decided_at}, topic=DECISION_TOPIC)
    result = await finish(task)
    assert result.output == "refund: refunded 10"
    assert executed == [10]
    state = await published("wf-won")
    assert state["decided"] == {"c1": {"decision": "approve", "at": decided_at}}


async def test_call_deferred_result_is_delivered(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    model = Scripted([("ship", {"order": "A1"}, "c1")])
    agent: Agent[None, str] = Agent(FunctionModel(model), name=agent_name)

    @agent.tool_plain
    def ship(order: str) -> str:
        """Ship an order; a warehouse system does it and reports back."""
        raise CallDeferred(metadata={"queue": "warehouse"})

    durable = DBOSAgent(agent, approvals="wait")
    launch_dbos()

    task = start(durable, "async", "wf-external")
    [pending] = await pending_calls("wf-external", 1, task)
    assert (pending.kind, pending.tool_name, pending.metadata) == ("external", "ship", {"queue": "warehouse"})
    with pytest.raises(ApprovalRejected, match="waits for a result: use deliver_result"):
        await approve_async("wf-external", "c1", args_digest=pending.args_digest)
    await deliver_result_async("wf-external", "c1", args_digest=pending.args_digest, result="shipped as parcel P7")
    result = await finish(task)

    assert result.output == "ship: shipped as parcel P7"


# --- Rejected decisions change nothing ----------------------------------------------------------------


async def test_rejected_decisions_change_nothing(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    model = Scripted([("refund", {"amount": 10}, "c1")])
    executed: list[int] = []
    durable = refund_agent(agent_name, model, executed)

    @DBOS.workflow(name=f"{agent_name}.other")
    async def other_workflow() -> str:
        return str(await DBOS.recv_async("go", timeout_seconds=WAIT_SECONDS))

    launch_dbos()
    other = await DBOS.start_workflow_async(other_workflow)
    task = start(durable, "async", "wf-reject")
    [pending] = await pending_calls("wf-reject", 1, task)
    digest = pending.args_digest

    with pytest.raises(ApprovalRejected, match="No run 'no-such-run'"):
        await approve_async("no-such-run", "c1", args_digest=digest)
    with pytest.raises(ApprovalRejected, match="is not waiting for a decision"):
        await approve_async(other.workflow_id, "c1", args_digest=digest)
    with pytest.raises(ApprovalRejected, match="not waiting for tool call 'c9'"):
        await approve_async("wf-reject", "c9", args_digest=digest)
    with pytest.raises(ApprovalRejected, match="not the ones this decision was made on"):
        await approve_async("wf-reject", "c1", args_digest=approval_args_digest("refund", {"amount": 1000}))
    with pytest.raises(ApprovalRejected, match="waits for an approval"):
        await deliver_result_async("wf-reject", "c1", args_digest=digest, result="done")
    # A message that bypasses the API is checked by the run too: ignored, and recorded as ignored.
    await DBOS.send_async("wf-reject", {"wait_id": pending.wait_id, "tool_call_id": "c1"}, topic=DECISION_TOPIC)
    state = await wait_for(lambda: _ignored("wf-reject"), "the run to ignore the forged message", task)
    assert state["ignored"] == [{"tool_call_id": "c1", "problem": "made against different arguments"}]

    assert [p.tool_call_id for p in await list_pending_approvals_async()] == ["c1"]  # still waiting
    assert executed == [] and len(model.requests) == 1 and not task.done()

    # Two approvers race: exactly one decision is accepted.
    outcomes = await asyncio.gather(
        approve_async("wf-reject", "c1", args_digest=digest),
        deny_async("wf-reject", "c1", args_digest=digest, reason="no"),
        return_exceptions=True,
    )
    rejected = [outcome for outcome in outcomes if isinstance(outcome, ApprovalRejected)]
    assert len(rejected) == 1
    assert "already decided" in str(rejected[0])
    approved = outcomes[0] is None
    # A third decision is refused too, as already decided, however far the run got with the first: not yet read
    # (the table's row), read and moved on (its published state), or finished.
    with pytest.raises(ApprovalRejected, match=r"'c1' of run 'wf-reject' was already decided"):
        await approve_async("wf-reject", "c1", args_digest=digest)
    result = await finish(task)

    assert result.output == ("refund: refunded 10" if approved else "refund: no")
    assert executed == ([10] if approved else [])
    with pytest.raises(ApprovalRejected, match=r"'c1' of run 'wf-reject' was already decided"):  # and finished
        await approve_async("wf-reject", "c1", args_digest=digest)
    with pytest.raises(ApprovalRejected, match="is SUCCESS, not waiting"):  # a call it never asked about
        await approve_async("wf-reject", "c9", args_digest=digest)
    await DBOS.send_async(other.workflow_id, "done", topic="go")
    assert await other.get_result() == "done"


async def _ignored(workflow_id: str) -> dict[str, Any] | None:
    state = await published(workflow_id)
    return state if state["ignored"] else None


def test_options_are_checked(agent_name: str) -> None:
    agent: Agent[None, str] = Agent(FunctionModel(Scripted()), name=agent_name)
    with pytest.raises(UserError, match="approvals='maybe' is not supported"):
        DBOSAgent(agent, approvals="maybe")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="applies only to runs that wait"):
        DBOSAgent(agent, approval_timeout=10)
    with pytest.raises(UserError, match="positive number of seconds"):
        DBOSAgent(agent, approvals="wait", approval_timeout=timedelta(0))


def test_deciding_without_dbos_or_url_is_a_clear_error() -> None:
    DBOS.destroy()
    with pytest.raises(UserError, match="pass `database_url=`"):
        list_pending_approvals()
    with pytest.raises(UserError, match="pass `database_url=`"):
        approve("wf", "c1", args_digest="x")


def test_plain_run_without_dbos_ends_with_deferred_requests(agent_name: str) -> None:
    """Without a launched DBOS there is nothing durable to wait in: the agent behaves as the plain agent."""
    from pydantic_ai import DeferredToolRequests

    agent: Agent[None, Any] = Agent(
        FunctionModel(Scripted([("refund", {"amount": 10}, "c1")])),
        name=agent_name,
        output_type=[str, DeferredToolRequests],
    )

    @agent.tool_plain(requires_approval=True)
    def refund(amount: int) -> str:
        return "refunded"

    DBOS.destroy()
    result = DBOSAgent(agent, approvals="wait").run_sync("go")
    assert isinstance(result.output, DeferredToolRequests)


# --- Decisions from another process -----------------------------------------------------------------


def cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m dbos_pydantic_ai approvals ...` in a new process that knows only the database URL."""
    env = {**os.environ, "DBOS_SYSTEM_DATABASE_URL": database_url, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "dbos_pydantic_ai", "approvals", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_cli_in_another_process_lists_and_decides(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    model = Scripted([("refund", {"amount": 10}, "c1"), ("refund", {"amount": 20}, "c2")])
    executed: list[int] = []
    durable = refund_agent(agent_name, model, executed)
    launch_dbos()
    task = start(durable, "async", "wf-cli")
    await pending_calls("wf-cli", 2, task)

    listed = await asyncio.to_thread(cli, "list", "--json", database_url=database_url)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["workflow_id"], r["tool_call_id"], r["args"]) for r in rows] == [
        ("wf-cli", "c1", {"amount": 10}),
        ("wf-cli", "c2", {"amount": 20}),
    ]
    assert rows[0]["args_digest"] == approval_args_digest("refund", {"amount": 10})
    table = await asyncio.to_thread(cli, "list", "--agent", agent_name, database_url=database_url)
    assert table.returncode == 0, table.stderr
    assert "wf-cli" in table.stdout and 'refund({"amount": 20})' in table.stdout
    assert rows[1]["args_digest"][:12] in table.stdout

    wrong = await asyncio.to_thread(cli, "approve", "wf-cli", "c1", "--digest", "0" * 12, database_url=database_url)
    assert wrong.returncode == 1 and "not the ones" in wrong.stderr
    approved = await asyncio.to_thread(cli, "approve", "wf-cli", "c1", database_url=database_url)
    assert approved.returncode == 0, approved.stderr
    assert 'Approving refund({"amount": 10})' in approved.stdout
    again = await asyncio.to_thread(cli, "deny", "wf-cli", "c1", database_url=database_url)
    assert again.returncode == 1 and "already decided" in again.stderr
    denied = await asyncio.to_thread(
        cli,
        "deny",
        "wf-cli",
        "c2",
        "--reason",
        "over the limit",
        "--digest",
        rows[1]["args_digest"][:8],
        database_url=database_url,
    )
    assert denied.returncode == 0, denied.stderr
    result = await finish(task)

    assert result.output == "refund: refunded 10 | refund: over the limit"
    assert executed == [10]
    empty = await asyncio.to_thread(cli, "list", database_url=database_url)
    assert "No tool calls are waiting" in empty.stdout


async def test_python_api_with_only_the_database_url(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    """A separate process with only the URL lists the pending call and approves it with the Python API."""
    model = Scripted([("refund", {"amount": 10}, "c1")])
    executed: list[int] = []
    durable = refund_agent(agent_name, model, executed)
    launch_dbos()
    task = start(durable, "async", "wf-remote")
    await pending_calls("wf-remote", 1, task)

    script = (
        "import sys\n"
        "from dbos_pydantic_ai import approve, list_pending_approvals\n"
        "url = sys.argv[1]\n"
        "[p] = list_pending_approvals(workflow_id='wf-remote', database_url=url)\n"
        "approve(p.workflow_id, p.tool_call_id, args_digest=p.args_digest, database_url=url)\n"
        "print(p.tool_name, p.args)\n"
    )
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script, database_url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refund {'amount': 10}"
    result = await finish(task)
    assert result.output == "refund: refunded 10"
    assert executed == [10]


def test_sync_api_in_the_worker_process(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    """The sync functions work in the worker process with the launched DBOS (no URL)."""
    model = Scripted([("refund", {"amount": 10}, "c1")])
    executed: list[int] = []
    durable = refund_agent(agent_name, model, executed)
    launch_dbos()
    handle_result: list[Any] = []

    import threading

    def run() -> None:
        with SetWorkflowID("wf-sync-api"):
            handle_result.append(durable.run_sync("go"))

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while not (pending := list_pending_approvals(agent_name=agent_name)):
        assert time.monotonic() < deadline, "the run never waited"
        time.sleep(0.05)
    assert list_pending_approvals(agent_name="another-agent") == []
    deny("wf-sync-api", "c1", args_digest=pending[0].args_digest, reason="not today")
    thread.join(WAIT_SECONDS)
    assert handle_result[0].output == "refund: not today"
    assert executed == []
