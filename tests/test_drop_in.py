"""Where a durable agent must behave like the pydantic-ai agent it replaces (and like pydantic-ai's own integration).

- a sync run from a sync tool of another run is refused, never left to hang, threads or no threads;
- `realtime()` and `model_request_stream()` are refused inside a workflow, where a replay could not reproduce them;
- `durable.model` is the durable model: `model_request(durable.model, ...)` in a workflow is a checkpointed step.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent, RunContext, _utils
from pydantic_ai.direct import model_request, model_request_stream
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelRequest
from pydantic_ai.models.test import TestModel

from dbos_pydantic_ai import DBOSAgent, DBOSModel
from run_modes import RunMode, run_in_mode

pytestmark = pytest.mark.timeout(60)  # a regression here is a hang


@pytest.mark.parametrize("threads", ["threads", "no threads"])
async def test_a_sync_run_inside_a_sync_tool_is_refused(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, threads: str
) -> None:
    inner = DBOSAgent(Agent(TestModel(), name=f"{agent_name}_inner"))
    outer_agent = Agent(TestModel(call_tools=["ask_inner"]), name=f"{agent_name}_outer")

    @outer_agent.tool_plain
    def ask_inner(question: str) -> str:
        return inner.run_sync(question).output

    outer = DBOSAgent(outer_agent)
    launch_dbos()

    with pytest.raises(UserError, match=r"cannot be used inside a synchronous tool"):
        if threads == "threads":
            await run_in_mode(outer, run_mode, f"{agent_name}-nested", "Hi")
        else:
            with _utils.disable_threads():  # the tool runs inline, on the run's own loop
                await run_in_mode(outer, run_mode, f"{agent_name}-nested", "Hi")
    inner_runs = await DBOS.list_workflows_async(name=f"{agent_name}_inner.run_sync", load_input=False)
    assert inner_runs == []


async def test_a_sync_run_from_an_async_tool_of_a_sync_run_is_refused(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    """The outer run_sync runs on the durable loop; a run_sync from its async tool would block that loop on itself."""
    inner = DBOSAgent(Agent(TestModel(), name=f"{agent_name}_inner"))
    outer_agent = Agent(TestModel(call_tools=["ask_inner"]), name=f"{agent_name}_outer")

    @outer_agent.tool_plain
    async def ask_inner(question: str) -> str:
        return inner.run_sync(question).output

    outer = DBOSAgent(outer_agent)
    launch_dbos()

    with pytest.raises(UserError, match=r"would wait for itself forever.*await agent.run"):
        await run_in_mode(outer, "sync", f"{agent_name}-nested", "Hi")


async def test_realtime_is_refused_inside_a_workflow(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    durable = DBOSAgent(Agent(TestModel(), name=agent_name))
    opened: list[object] = []

    @DBOS.workflow(name=f"{agent_name}.talk")
    async def talk() -> None:
        opened.append(durable.realtime("openai:gpt-realtime"))

    launch_dbos()
    with pytest.raises(UserError, match=r"`realtime\(\)` cannot run inside a DBOS workflow"):
        await talk()
    assert opened == []


async def test_durable_model_makes_direct_requests_steps_in_a_workflow(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    durable = DBOSAgent(Agent(TestModel(custom_output_text="direct answer"), name=agent_name))
    messages = [ModelRequest.user_text_prompt("Hi")]

    @DBOS.workflow(name=f"{agent_name}.direct")
    async def direct() -> str:
        response = await model_request(durable.model, messages)  # type: ignore[arg-type]
        return response.text or ""

    @DBOS.workflow(name=f"{agent_name}.direct_stream")
    async def direct_stream() -> None:
        async with model_request_stream(durable.model, messages):  # type: ignore[arg-type]
            pass

    launch_dbos()
    assert isinstance(durable.model, DBOSModel) and durable.model is durable.model
    with SetWorkflowID(f"{agent_name}-direct"):
        assert await direct() == "direct answer"
    steps = await DBOS.list_workflow_steps_async(f"{agent_name}-direct")
    assert [step["function_name"] for step in steps] == [f"{agent_name}__model.request"]

    with pytest.raises(UserError, match=r"`model_request_stream\(\)` cannot run durably inside a DBOS workflow"):
        await direct_stream()
    # Outside a workflow the durable model is the plain model.
    assert (await model_request(durable.model, messages)).text == "direct answer"  # type: ignore[arg-type]


async def test_a_run_still_works_with_its_own_tools(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    agent = Agent(TestModel(), name=agent_name)

    @agent.tool
    def echo(ctx: RunContext[None], text: str) -> str:
        return text

    durable = DBOSAgent(agent)
    launch_dbos()
    assert "echo" in (await durable.run("Hi")).output
