"""`run_sync` from several threads at once, against an OpenAI-compatible HTTP server (a shared HTTP client).

pydantic-ai's own `run_sync` gives each thread an event loop, and runs on two threads then share the provider's
connection pool across loops: one fails with "is bound to a different event loop". A durable `run_sync` runs on
the process's durable loop instead (`_durable_loop.py`), so a web server's threads, or DBOS recovering several sync
runs at once, can all run the same agent. Not a crash test: it lives here beside the scripted server it talks to.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dbos import DBOS, SetWorkflowID
from openai_server import ScriptedOpenAIServer
from pydantic_ai import Agent, RunContext
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from dbos_pydantic_ai import DBOSAgent

THREADS = 4
RUNS_PER_THREAD = 3


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    scripted = ScriptedOpenAIServer(
        [{"tool_calls": [{"name": "read_prompt"}]}, {"text": "Answer to: {tool_result}"}]
    ).start()
    yield scripted
    scripted.close()


def test_run_sync_from_several_threads_at_once(
    server: ScriptedOpenAIServer, agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    model = OpenAIChatModel("gpt-test", provider=OpenAIProvider(base_url=server.base_url, api_key="test"))
    agent: Agent[None, str] = Agent(model, name=agent_name)

    @agent.tool
    def read_prompt(ctx: RunContext[None]) -> str:
        return str(ctx.prompt)

    durable = DBOSAgent(agent)
    launch_dbos()
    outputs: dict[str, Any] = {}
    start = threading.Barrier(THREADS)

    def runs(thread: int) -> None:
        start.wait()  # all threads start together, so their runs overlap
        for index in range(RUNS_PER_THREAD):
            prompt = f"question {thread}.{index}"
            try:
                with SetWorkflowID(f"threads-{uuid.uuid4().hex[:12]}"):
                    outputs[prompt] = durable.run_sync(prompt).output
            except Exception as error:  # recorded, so the assertion shows every failure
                outputs[prompt] = error

    threads = [threading.Thread(target=runs, args=(thread,)) for thread in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert outputs == {prompt: f"Answer to: {prompt}" for prompt in outputs}
    assert len(outputs) == THREADS * RUNS_PER_THREAD
    runs_recorded = DBOS.list_workflows(name=f"{agent_name}.run_sync", status="SUCCESS", load_input=False)
    assert len(runs_recorded) == THREADS * RUNS_PER_THREAD
