"""Checked by mypy in tests/test_typing.py, never run: a DBOSAgent's runs are typed like the agent's."""

from typing import assert_type

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.run import AgentRunResult

from dbos_pydantic_ai import DBOSAgent


class City(BaseModel):
    name: str


agent = DBOSAgent(Agent("test", output_type=City, name="typed"))


async def runs() -> None:
    assert_type(await agent.run("Where?"), AgentRunResult[City])
    assert_type((await agent.run("Where?")).output, City)
    assert_type(await agent.run("How many?", output_type=int), AgentRunResult[int])
    async with agent.iter("Where?") as agent_run:
        assert_type(agent_run.result, AgentRunResult[City] | None)


def sync_runs() -> None:
    assert_type(agent.run_sync("Where?"), AgentRunResult[City])
    assert_type(agent.run_sync("Name one", output_type=str).output, str)
