"""Decisions at the deadline: a decision and the timeout never both win.

Forty runs wait with a short `approval_timeout`; each gets an approval timed from its published deadline, from 80 ms
before it to 130 ms after, half from the worker process and half through a connection of their own (the database URL).
Whatever the timing, an approval that `approve` accepted is carried out (the tool ran) and one it refused is not: the
`dbos_pai_approval_decisions` table holds exactly one row per call, the human's or the run's `timed_out`, and the run
does what that row says. SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from dbos import DBOS
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from dbos_pydantic_ai import ApprovalRejected, DBOSAgent, approval_args_digest, approve
from dbos_pydantic_ai.names import APPROVALS_EVENT, approvals_timeout_step
from test_approvals import decision_rows, finish, start, step_names

RUNS = 40
APPROVAL_TIMEOUT = 2.5
OFFSETS = [-0.080 + i * 0.210 / (RUNS - 1) for i in range(RUNS)]  # seconds from each run's deadline
TIMED_OUT_OUTPUT = "No decision on this tool call arrived within 2.5 seconds; it was not run."
# Every way a late approval may be refused: the deadline, or a run that has already resolved its wait or finished.
LATE_REASONS = ("deadline passed at", "is not waiting for a decision", "is SUCCESS, not waiting")


def refund_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Asks for one refund, then answers with the tool's result (stateless: many runs share it)."""
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    returns = [part for part in last.parts if isinstance(part, ToolReturnPart)]
    if returns:
        return ModelResponse(parts=[TextPart(str(returns[0].content))])
    return ModelResponse(parts=[ToolCallPart("refund", {"amount": 10}, tool_call_id="c1")])


@dataclass
class Attempt:
    workflow_id: str
    offset: float  # when approve() was called, in seconds after the deadline (as planned)
    called_at: float = 0.0  # ... as it happened
    accepted: bool = False
    refusal: str = ""


def approve_at_offset(attempt: Attempt, database_url: str | None) -> None:
    """Read the run's published deadline, sleep until deadline + offset, approve; record whether it was accepted."""
    give_up = time.monotonic() + 60
    while (state := DBOS.get_event(attempt.workflow_id, APPROVALS_EVENT, timeout_seconds=0)) is None:
        assert time.monotonic() < give_up, f"{attempt.workflow_id} never published its pending call"
        time.sleep(0.01)
    time.sleep(max(0.0, state["deadline"] + attempt.offset - time.time()))
    attempt.called_at = time.time() - state["deadline"]
    try:
        approve(
            attempt.workflow_id,
            "c1",
            args_digest=approval_args_digest("refund", {"amount": 10}),
            database_url=database_url,
        )
        attempt.accepted = True
    except ApprovalRejected as error:
        attempt.refusal = str(error)


@pytest.mark.timeout(300)
async def test_accepted_decisions_are_exactly_the_ones_carried_out(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    executed: list[str | None] = []
    agent: Agent[None, str] = Agent(FunctionModel(refund_model), name=agent_name)

    @agent.tool_plain(requires_approval=True)
    def refund(amount: int) -> str:
        """Refund the customer."""
        executed.append(DBOS.workflow_id)
        return f"refunded {amount}"

    durable = DBOSAgent(agent, approvals="wait", approval_timeout=APPROVAL_TIMEOUT, durable_tools=["refund"])
    launch_dbos()

    attempts = [Attempt(f"wf-deadline-{i}", offset) for i, offset in enumerate(OFFSETS)]
    tasks = [start(durable, "async", attempt.workflow_id) for attempt in attempts]
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=RUNS) as pool:
        # Half decide in the worker process, half through a connection of their own (as another process would).
        await asyncio.gather(
            *(
                loop.run_in_executor(pool, approve_at_offset, attempt, None if i % 2 else database_url)
                for i, attempt in enumerate(attempts)
            )
        )
    outputs = [(await finish(task)).output for task in tasks]
    rows = {row["workflow_id"]: (row["decision"], row["decided_at_epoch_ms"]) for row in decision_rows(database_url)}

    report = "\n".join(
        f"{a.workflow_id}: called at {a.called_at * 1000:+.0f} ms, accepted={a.accepted}, output={o!r} {a.refusal}"
        for a, o in zip(attempts, outputs, strict=True)
    )
    for attempt, output in zip(attempts, outputs, strict=True):
        ran = executed.count(attempt.workflow_id)
        assert ran == (1 if attempt.accepted else 0), report  # accepted == carried out, exactly
        assert output == ("refunded 10" if attempt.accepted else TIMED_OUT_OUTPUT), report
        assert rows[attempt.workflow_id][0] == ("approve" if attempt.accepted else "timed_out"), report
        if not attempt.accepted:
            assert any(reason in attempt.refusal for reason in LATE_REASONS), report
    assert len(rows) == RUNS
    timeout_step = approvals_timeout_step(agent_name)
    for attempt in attempts:
        if not attempt.accepted:  # refused: the run's timeout step recorded `timed_out` for it
            assert timeout_step in await step_names(attempt.workflow_id)
