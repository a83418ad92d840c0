"""`run(model=...)` with a string that names no model is refused before its workflow starts, leaving no row."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from dbos import DBOS
from pydantic_ai import Agent
from pydantic_ai.exceptions import UserError
from pydantic_ai.models.test import TestModel

from dbos_pydantic_ai import DBOSAgent
from run_modes import RunMode, run_in_mode


@pytest.mark.parametrize("name", ["fast", "nosuchprovider:gpt-5", ""])
async def test_an_unknown_model_key_is_refused_before_the_workflow_starts(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, name: str
) -> None:
    durable = DBOSAgent(Agent(TestModel(), name=agent_name), models={"quick": TestModel(custom_output_text="quick")})
    launch_dbos()

    with pytest.raises(UserError) as refused:
        await run_in_mode(durable, run_mode, f"wf-{agent_name}", "Hello", model=name)

    message = str(refused.value)
    assert repr(name) in message and "registered keys: ['quick']" in message and "'openai:gpt-5'" in message
    assert await DBOS.list_workflows_async(load_input=False, load_output=False) == []


async def test_registered_keys_and_model_names_still_run(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode
) -> None:
    durable = DBOSAgent(Agent(TestModel(), name=agent_name), models={"quick": TestModel(custom_output_text="quick")})
    launch_dbos()

    assert (await run_in_mode(durable, run_mode, f"wf-{agent_name}-1", "Hello", model="quick")).output == "quick"
    # 'test' is pydantic-ai's name for TestModel: a model name, stored as given.
    assert (
        await run_in_mode(durable, run_mode, f"wf-{agent_name}-2", "Hello", model="test")
    ).output == "success (no tool calls)"
    statuses = await DBOS.list_workflows_async(status="SUCCESS", load_input=False, load_output=False)
    assert len(statuses) == 2
