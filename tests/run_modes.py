"""Running an agent both ways a test may be parametrised over: `await agent.run()` and `agent.run_sync()`.

The `run_mode` fixture (tests/conftest.py) gives the mode; import from this module, not from a conftest,
whose module name is shared by every conftest.py of the suite.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from typing import Any, Literal

from dbos import SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.run import AgentRunResult

from dbos_pydantic_ai import DBOSAgent

RunMode = Literal["async", "sync"]


async def run_in_mode(
    agent: DBOSAgent[Any, Any] | Agent[Any, Any],
    mode: RunMode,
    workflow_id: str | None = None,
    prompt: str | None = None,
    **kwargs: Any,
) -> AgentRunResult[Any]:
    """One run (under `workflow_id` if given); `run_sync` goes to a thread, where no event loop is running."""
    with SetWorkflowID(workflow_id) if workflow_id else nullcontext():
        if mode == "async":
            return await agent.run(prompt, **kwargs)
        return await asyncio.to_thread(agent.run_sync, prompt, **kwargs)
