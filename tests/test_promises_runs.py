"""Promises about a durable run's arguments (docs/limitations.md, docs/configuration.md, docs/concepts.md).

- `cancellation_token`: cancelling stops the run in its process; the run raises `RunCancelled`, its workflow ends
  as `ERROR` and is not recovered.
- `timeout=` is stored with the run's inputs and enforced (that it starts again on recovery is checked with a
  SIGKILLed worker in tests/crash/test_inputs_crash.py).
- `run(model="name")` is stored as given, and `run(capabilities=...)` is stored; a replay uses both.

A replay is made with `DBOS.fork_workflow` (the workflow runs again from its stored inputs, as on recovery);
recovery after a real crash is in tests/crash/test_inputs_crash.py. SQLite and PostgreSQL, `run` and `run_sync`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from dbos import DBOS
from pydantic_ai import Agent, CancellationToken
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import RunCancelled, RunTimedOut
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from dbos_pydantic_ai import DBOSAgent, register_types
from run_modes import RunMode, run_in_mode

WAIT = 60.0  # generous bound for anything that waits: never asserted as a timing

run_durable = partial(run_in_mode, prompt="go")


class HangingModel:
    """A model whose request hangs until cancelled; `started` is set once a request is in flight."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.calls = 0
        self.cancelled = 0

    async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.calls += 1
        self.started.set()
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return ModelResponse(parts=[TextPart("not cancelled")])


async def wait_for(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, WAIT), "the model request never started"


async def stored_inputs(workflow_id: str) -> dict[str, Any]:
    status = await DBOS.get_workflow_status_async(workflow_id)
    assert status is not None and status.input is not None
    return status.input["kwargs"]


# --- cancellation_token ---------------------------------------------------------------------------


async def test_cancellation_token_stops_the_run_which_ends_as_error_and_is_not_recovered(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode
) -> None:
    model = HangingModel()
    durable = DBOSAgent(Agent(FunctionModel(model), name=agent_name))
    launch_dbos()
    token = CancellationToken()

    run = asyncio.create_task(run_durable(durable, run_mode, "wf-cancel", cancellation_token=token))
    await wait_for(model.started)
    token.cancel()
    with pytest.raises(RunCancelled):
        await asyncio.wait_for(run, WAIT)

    assert model.cancelled == 1  # the request in flight was interrupted in this process
    status = await DBOS.get_workflow_status_async("wf-cancel")
    assert status is not None and status.status == "ERROR"
    assert "cancellation_token" not in await stored_inputs("wf-cancel")  # process-local: not stored

    # A relaunched process does not recover it: it is not PENDING.
    DBOS.destroy()
    launch_dbos()
    status = await DBOS.get_workflow_status_async("wf-cancel")  # (also gives this loop DBOS's executor again)
    assert status is not None and status.status == "ERROR"
    recovered = await asyncio.to_thread(DBOS._recover_pending_workflows, ["local"])
    assert [handle.workflow_id for handle in recovered] == []
    assert model.calls == 1


# --- timeout= ---------------------------------------------------------------------------------------


async def test_timeout_is_stored_and_enforced(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode
) -> None:
    model = HangingModel()
    durable = DBOSAgent(Agent(FunctionModel(model), name=agent_name))
    launch_dbos()

    with pytest.raises(RunTimedOut):
        await run_durable(durable, run_mode, "wf-timeout", timeout=0.5)

    assert model.calls == 1 and model.cancelled == 1
    assert (await stored_inputs("wf-timeout"))["timeout"] == 0.5
    status = await DBOS.get_workflow_status_async("wf-timeout")
    assert status is not None and status.status == "ERROR"


# --- run(model="name") and run(capabilities=...) ---------------------------------------------------


def agents_own_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("the agent's own model")])


async def test_model_name_is_stored_as_given_and_used_on_replay(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode
) -> None:
    """`model="test"` (pydantic-ai's name for its `TestModel`) is stored as that string, not as an object."""
    durable = DBOSAgent(Agent(FunctionModel(agents_own_model), name=agent_name))
    launch_dbos()

    result = await run_durable(durable, run_mode, "wf-model-name", model="test")

    assert result.output == "success (no tool calls)"  # TestModel's answer, not the agent's own model
    assert (await stored_inputs("wf-model-name"))["model"] == "test"
    handle = await DBOS.fork_workflow_async("wf-model-name", 1)  # runs the model request again
    replayed = await handle.get_result()
    assert replayed.output == "success (no tool calls)"
    assert [s["function_name"] for s in await DBOS.list_workflow_steps_async(handle.workflow_id)] == [
        f"{agent_name}__model.request"
    ]


@dataclass
class HouseStyle(AbstractCapability[Any]):
    """A per-run capability (module level, so it pickles) that adds its instructions to every request."""

    style: str

    def get_instructions(self) -> str:
        return f"Answer in the {self.style} style."


register_types(HouseStyle)  # a per-run capability is a stored input: its type must be on the allowlist


def echo_instructions(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    request = messages[-1]
    assert isinstance(request, ModelRequest)
    return ModelResponse(parts=[TextPart(f"instructions: {request.instructions}")])


async def test_capabilities_are_stored_and_used_on_replay(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode
) -> None:
    durable = DBOSAgent(Agent(FunctionModel(echo_instructions), name=agent_name))
    launch_dbos()

    result = await run_durable(durable, run_mode, "wf-capability", capabilities=[HouseStyle("pirate")])

    assert result.output == "instructions: Answer in the pirate style."
    assert (await stored_inputs("wf-capability"))["capabilities"] == [HouseStyle("pirate")]
    handle = await DBOS.fork_workflow_async("wf-capability", 1)  # the model request runs again, from stored inputs
    replayed = await handle.get_result()
    assert replayed.output == "instructions: Answer in the pirate style."
