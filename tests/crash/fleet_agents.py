"""The agents module that `dbos-pydantic-ai worker fleet_agents ...` imports in tests/crash/test_worker_command.py.

Like a user's `myapp.agents`, it only creates the `DBOSAgent`; the worker command configures and launches DBOS. It
reads its settings from the environment: `FLEET_OPENAI_BASE_URL` (the scripted OpenAI server) and `FLEET_WORKDIR`
(where tool executions are recorded and gates are opened), and the worker's `DBOS_PAI_EXECUTOR_ID`.

The agent's one tool, `hold`, records `<executor id> hold <prompt>` (an fsynced line of `FLEET_WORKDIR/tools.log`),
then waits until `FLEET_WORKDIR/gate-<prompt>` or `FLEET_WORKDIR/gate-all` exists: a test holds each run in flight
by its prompt, between two recorded model requests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic_ai import Agent, RunContext
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from dbos_pydantic_ai import DBOSAgent

AGENT_NAME = "fleet_agent"
WORKDIR = Path(os.environ["FLEET_WORKDIR"])
EXECUTOR_ID = os.environ.get("DBOS_PAI_EXECUTOR_ID", "?")

model = OpenAIChatModel(
    "gpt-test", provider=OpenAIProvider(base_url=os.environ["FLEET_OPENAI_BASE_URL"], api_key="test")
)
agent: Agent[None, str] = Agent(model, name=AGENT_NAME)


def record(line: str) -> None:
    """Append a line to tools.log, fsynced (it survives the process ending right after)."""
    fd = os.open(WORKDIR / "tools.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@agent.tool
def hold(ctx: RunContext[None]) -> str:
    """Wait until the test opens this run's gate (a plain tool: a run taken over executes it again)."""
    prompt = str(ctx.prompt)
    record(f"{EXECUTOR_ID} hold {prompt}")
    while not (WORKDIR / f"gate-{prompt}").exists() and not (WORKDIR / "gate-all").exists():
        time.sleep(0.05)
    return f"held {prompt}"


durable = DBOSAgent(agent, name=AGENT_NAME)
