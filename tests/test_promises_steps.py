"""Promises of docs/concepts.md#retries-and-errors about exceptions leaving a step.

- An exception that DBOS could not rebuild as it was becomes `StepFailedError` (type name and message kept), on
  the first run too, so the first run and a replay take the same branch.
- `SkipModelRequest` (and the other control-flow exceptions) are recorded and re-raised, never retried.

A replay is made with `DBOS.fork_workflow`, which runs the workflow again with its stored inputs and the steps
before `start_step` taken from the database, as recovery does. SQLite and PostgreSQL, `run` and `run_sync`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from dbos import DBOS
from pydantic_ai import Agent
from pydantic_ai.exceptions import SkipModelRequest
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from dbos_pydantic_ai import DBOSAgent, StepConfig, StepFailedError
from run_modes import RunMode, run_in_mode

RETRYING: StepConfig = {"retries_allowed": True, "max_attempts": 3, "interval_seconds": 0}

run_durable = partial(run_in_mode, prompt="go")


class GatewayError(Exception):
    """Pickles, but cannot be rebuilt: its `__init__` needs two arguments and its pickle passes one."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status


async def steps_of(workflow_id: str) -> list[dict[str, Any]]:
    return list(await DBOS.list_workflow_steps_async(workflow_id))


async def replay(workflow_id: str, start_step: int) -> Any:
    """Run the workflow again from `start_step`, the steps before it replayed from the database."""
    handle = await DBOS.fork_workflow_async(workflow_id, start_step)
    return await handle.get_result()


@pytest.mark.parametrize("where", ["tool", "model"])
async def test_an_exception_that_cannot_be_rebuilt_is_step_failed_error_on_first_run_and_replay(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, where: str
) -> None:
    """A durable tool or a model request raising `GatewayError` raises `StepFailedError` both times, not
    `GatewayError` first and DBOS's `TypeError` on the replay; the step is not executed again by the replay."""
    executions: list[str] = []

    def charge(amount: int) -> str:
        executions.append("tool")
        raise GatewayError(503, "payment gateway busy")

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if where == "model":
            executions.append("model")
            raise GatewayError(503, "payment gateway busy")
        return ModelResponse(parts=[ToolCallPart("charge", {"amount": 5})])

    agent = Agent(FunctionModel(model), name=agent_name, tools=[charge])
    durable = DBOSAgent(agent, durable_tools=True)
    launch_dbos()

    with pytest.raises(StepFailedError) as first:
        await run_durable(durable, run_mode, "wf-unrebuildable")
    assert first.value.type_name == f"{__name__}.GatewayError"
    assert first.value.message == "503: payment gateway busy"
    assert executions == [where]
    failed_step = (await steps_of("wf-unrebuildable"))[-1]
    assert failed_step["function_name"] == f"{agent_name}__{'tool.charge' if where == 'tool' else 'model.request'}"

    with pytest.raises(StepFailedError) as replayed:
        await replay("wf-unrebuildable", failed_step["function_id"] + 1)
    assert (replayed.value.type_name, replayed.value.message) == (first.value.type_name, first.value.message)
    assert executions == [where]  # the failed step came back from the database


async def test_skip_model_request_is_recorded_and_never_retried(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode
) -> None:
    """A model that answers with `SkipModelRequest` inside the request step: the agent uses its response, DBOS
    does not retry the step even with retries allowed, and a replay gets the same answer without the model.

    (Only a plain request: pydantic-ai itself does not accept `SkipModelRequest` from a streaming model.)
    """
    calls: list[int] = []
    skipped = ModelResponse(parts=[TextPart("answer from the cache")])

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(len(messages))
        raise SkipModelRequest(skipped)

    durable = DBOSAgent(Agent(FunctionModel(model), name=agent_name), model_step_config=RETRYING)
    launch_dbos()

    result = await run_durable(durable, run_mode, "wf-skip")

    assert result.output == "answer from the cache"
    assert calls == [1]  # one attempt, though the step may be retried
    [step] = await steps_of("wf-skip")
    assert step["function_name"] == f"{agent_name}__model.request"
    assert isinstance(step["error"], SkipModelRequest) and step["error"].response.parts == skipped.parts

    replayed = await replay("wf-skip", 2)
    assert replayed.output == "answer from the cache"
    assert calls == [1]
