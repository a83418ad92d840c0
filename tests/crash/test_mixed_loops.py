"""Every kind of durable run at once in one process, against an OpenAI-compatible HTTP server (one shared client).

A model's HTTP client belongs to the event loop that opened its connections, yet one process runs durable runs on
many loops: `await run()` on the app's loop, `run_sync()` from threads, runs that DBOS starts itself on its own loop
(queued, resumed, forked, recovered). Each kind alone passes; together they used to share the connection pool across
loops and end in `ERROR` with "is bound to a different event loop". Here they all overlap, and none may fail.
The restart case (recovered runs while new ones arrive) is in `test_mixed_loops_restart.py`.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dbos import DBOS, DBOSClient, EnqueueOptions, SetWorkflowID
from openai_server import ScriptedOpenAIServer
from pydantic_ai import Agent, RunContext
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from dbos_pydantic_ai import DBOSAgent
from dbos_pydantic_ai.serializer import JSONSerializer

SCRIPT = [{"tool_calls": [{"name": "read_prompt"}]}, {"text": "Answer to: {tool_result}"}]
EACH = 4  # runs of each kind


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    scripted = ScriptedOpenAIServer(SCRIPT).start()
    yield scripted
    scripted.close()


def expected(prompt: str) -> str:
    return f"Answer to: {prompt}"


async def wait_for_status(workflow_id: str, statuses: set[str], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = (await DBOS.get_workflow_status_async(workflow_id)).status  # type: ignore[union-attr]
        if status in statuses or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)


async def test_async_sync_queued_resumed_and_forked_runs_at_once(
    server: ScriptedOpenAIServer, agent_name: str, database_url: str, launch_dbos: Callable[[], None]
) -> None:
    model = OpenAIChatModel("gpt-test", provider=OpenAIProvider(base_url=server.base_url, api_key="test"))
    agent: Agent[None, str] = Agent(model, name=agent_name)
    held = threading.Event()  # holds the tool of the runs whose prompt starts with "hold"

    @agent.tool
    def read_prompt(ctx: RunContext[None]) -> str:
        if str(ctx.prompt).startswith("hold"):
            held.wait(60)
        return str(ctx.prompt)

    durable = DBOSAgent(agent)
    launch_dbos()
    await DBOS.register_queue_async("mixed_runs", worker_concurrency=EACH)
    prefix = uuid.uuid4().hex[:8]
    outputs: dict[str, Any] = {}

    # A run to cancel and resume: DBOS then runs it again on its own loop.
    to_resume = f"{prefix}-resumed"
    with SetWorkflowID(to_resume):
        resumed_handle = await DBOS.start_workflow_async(durable._run_workflow, "hold: resumed")
    client = DBOSClient(system_database_url=database_url, serializer=JSONSerializer())
    try:

        async def async_run(index: int) -> None:
            prompt = f"async {index}"
            with SetWorkflowID(f"{prefix}-async-{index}"):
                outputs[prompt] = (await durable.run(prompt)).output

        def sync_runs() -> None:
            for index in range(EACH):
                prompt = f"sync {index}"
                try:
                    with SetWorkflowID(f"{prefix}-sync-{index}"):
                        outputs[prompt] = durable.run_sync(prompt).output
                except Exception as error:  # recorded: the assertion shows every failure
                    outputs[prompt] = error

        def enqueue(kind: str, index: int) -> str:
            options: EnqueueOptions = {
                "queue_name": "mixed_runs",
                "workflow_name": f"{agent_name}.{kind}",
                "workflow_id": f"{prefix}-queued-{kind}-{index}",
            }
            client.enqueue(options, f"queued {kind} {index}")
            return options["workflow_id"]  # type: ignore[return-value]

        queued = [enqueue(kind, index) for kind in ("run", "run_sync") for index in range(EACH)]
        sync_thread = threading.Thread(target=sync_runs)
        sync_thread.start()
        await DBOS.cancel_workflow_async(to_resume)
        assert await wait_for_status(to_resume, {"CANCELLED"}) == "CANCELLED"
        held.set()
        await DBOS.resume_workflow_async(to_resume)
        await asyncio.gather(*(async_run(index) for index in range(EACH)))
        # Forks from the second model request: DBOS runs them on its own loop while the other runs go on.
        forked = [
            (await DBOS.fork_workflow_async(f"{prefix}-async-0", 3)).workflow_id,
            (await DBOS.fork_workflow_async(f"{prefix}-queued-run_sync-0", 3)).workflow_id,
        ]
        await asyncio.to_thread(sync_thread.join, 120)

        for workflow_id in [*queued, *forked, to_resume]:
            outputs[workflow_id] = await wait_for_status(workflow_id, {"SUCCESS", "ERROR"})
        outputs["resumed output"] = (await resumed_handle.get_result()).output
    finally:
        client.destroy()

    assert outputs == {
        **{f"async {index}": expected(f"async {index}") for index in range(EACH)},
        **{f"sync {index}": expected(f"sync {index}") for index in range(EACH)},
        **{workflow_id: "SUCCESS" for workflow_id in [*queued, *forked, to_resume]},
        "resumed output": expected("hold: resumed"),
    }
    errors = await DBOS.list_workflows_async(status="ERROR", load_input=False, load_output=False)
    assert errors == []


async def test_cancelling_a_run_cancels_its_request_on_the_durable_loop(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    """The request runs on another loop, yet cancelling the run's task stops it there too: nothing is left behind."""
    from dbos_pydantic_ai._durable_loop import durable_loop

    held = ScriptedOpenAIServer(SCRIPT, delay_turns=[0]).start()
    try:
        model = OpenAIChatModel("gpt-test", provider=OpenAIProvider(base_url=held.base_url, api_key="test"))
        durable = DBOSAgent(Agent(model, name=agent_name))
        launch_dbos()

        def tasks_on_the_durable_loop() -> set[asyncio.Task[Any]]:
            return asyncio.run_coroutine_threadsafe(_tasks_of_the_loop(), durable_loop()).result(10)

        before = tasks_on_the_durable_loop()  # earlier tests of the process may have left some: not this test's
        with SetWorkflowID(f"{agent_name}-cancelled"):
            run = asyncio.create_task(durable.run("hello"))
        deadline = time.monotonic() + 30
        while held.received(0) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert held.received(0) == 1

        def requests_left() -> set[asyncio.Task[Any]]:
            return tasks_on_the_durable_loop() - before

        assert requests_left()  # the request is in flight, on the durable loop
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        deadline = time.monotonic() + 10
        while requests_left() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert requests_left() == set()
    finally:
        held.close()


async def _tasks_of_the_loop() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]
