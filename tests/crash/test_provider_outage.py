"""Model-provider outages, against the scripted OpenAI-compatible server with the real HTTP client.

In the middle of a run the server answers 503 and then 429 with `Retry-After`, like a provider in an incident. A
durable run waits it out with durable retries (`retries.py`): it completes, the requests recorded before the outage
are not sent again, and the attempts the server saw are the ones the run recorded, each after its backoff. A 401 fails
at once. A run whose horizon ends before the outage does is continued afterwards from its failed request.
The OpenAI SDK's own retries are off (`max_retries=0`), so every attempt the server counts is one of ours.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dbos import DBOS, SetWorkflowID
from openai import AsyncOpenAI
from openai_server import Outage, OutagePhase, ScriptedOpenAIServer
from pydantic_ai import Agent
from pydantic_ai.exceptions import (
    ModelAuthenticationError,
    ModelHTTPError,
    ModelRateLimitError,
    ModelUnavailableError,
)
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from dbos_pydantic_ai import DBOSAgent, ModelRetryPolicy, continue_run
from dbos_pydantic_ai.names import RETRY_EVENT
from dbos_pydantic_ai.retries import FailedAttempt
from run_modes import RunMode, run_in_mode

SCRIPT = [
    {"tool_calls": [{"name": "lookup", "args": {"key": "alpha"}}]},
    {"tool_calls": [{"name": "lookup", "args": {"key": "beta"}}]},
    {"text": "Done: {tool_result}"},
]
POLICY = ModelRetryPolicy(initial_interval_seconds=1.0, backoff_rate=2.0, max_interval_seconds=6.0, jitter=0.2)


def openai_model(server: ScriptedOpenAIServer) -> OpenAIChatModel:
    client = AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    return OpenAIChatModel("gpt-test", provider=OpenAIProvider(openai_client=client))


def build(server: ScriptedOpenAIServer, name: str, **kwargs: Any) -> tuple[DBOSAgent[None, str], list[str]]:
    looked_up: list[str] = []
    agent: Agent[None, str] = Agent(openai_model(server), name=name)

    @agent.tool_plain
    def lookup(key: str) -> str:
        looked_up.append(key)
        return f"value-of-{key}"

    return DBOSAgent(agent, **kwargs), looked_up


@pytest.fixture
def servers() -> Iterator[Callable[..., ScriptedOpenAIServer]]:
    started: list[ScriptedOpenAIServer] = []

    def start(outage: Outage) -> ScriptedOpenAIServer:
        server = ScriptedOpenAIServer(SCRIPT, outage=outage).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


async def attempts(workflow_id: str, agent_name: str) -> list[Any]:
    """The outputs of the run's model request steps, in order (a `FailedAttempt` or a response)."""
    steps = await DBOS.list_workflow_steps_async(workflow_id)
    return [step["output"] for step in steps if step["function_name"] == f"{agent_name}__model.request"]


async def test_a_run_rides_through_30_seconds_of_503_then_429(
    servers: Callable[..., ScriptedOpenAIServer], agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    server = servers(Outage(from_turn=1, phases=(OutagePhase(503, 15), OutagePhase(429, 15, retry_after=8))))
    durable, looked_up = build(server, agent_name, model_retry=POLICY)
    launch_dbos()
    workflow_id = f"outage-{uuid.uuid4().hex[:8]}"

    with SetWorkflowID(workflow_id):
        result = await durable.run("Look up alpha and beta.")

    assert result.output == "Done: value-of-beta"
    stats = server.stats()
    assert stats[0].received == 1  # recorded before the outage: not sent again
    recorded = await attempts(workflow_id, agent_name)
    failures = [outcome for outcome in recorded if isinstance(outcome, FailedAttempt)]
    assert len(recorded) == 3 + len(failures)  # one step per attempt, and three requests that answered
    assert len(failures) == len(stats[1].failed_at) == stats[1].received - 1 >= 5
    assert all(isinstance(failure.error, ModelUnavailableError | ModelRateLimitError) for failure in failures)
    limited = [failure for failure in failures if isinstance(failure.error, ModelRateLimitError)]
    assert limited and all(failure.retry_after == 8 for failure in limited)  # the 429's Retry-After was read
    # Each attempt came no sooner than its recorded backoff allowed (or the provider's Retry-After asked).
    for index, (failure, next_seen) in enumerate(zip(failures, [*stats[1].failed_at[1:], None], strict=True)):
        assert failure.attempt == index + 1
        delay = POLICY.delay(failure, seed=f"{workflow_id}:{failure.first_step_id}:{failure.attempt}")
        assert delay >= min(POLICY.initial_interval_seconds * 2**index, POLICY.max_interval_seconds) * 0.8
        if failure.retry_after is not None:
            assert delay >= failure.retry_after
        if next_seen is not None:
            assert next_seen - stats[1].failed_at[index] >= delay - 0.05
    assert looked_up == ["alpha", "beta"]
    state = await DBOS.get_event_async(workflow_id, RETRY_EVENT, timeout_seconds=0)
    assert state["state"] == "recovered" and state["attempt"] == len(failures)


async def test_a_short_outage_in_every_run_mode(
    servers: Callable[..., ScriptedOpenAIServer], agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode
) -> None:
    server = servers(Outage(from_turn=1, phases=(OutagePhase(502, 2.5),)))
    durable, _ = build(server, agent_name, model_retry=POLICY)
    launch_dbos()

    result = await run_in_mode(durable, run_mode, f"short-{uuid.uuid4().hex[:8]}", "Look up alpha and beta.")

    assert result.output == "Done: value-of-beta"
    assert server.stats()[0].received == 1 and len(server.stats()[1].failed_at) >= 2


async def test_an_authentication_error_fails_at_once(
    servers: Callable[..., ScriptedOpenAIServer], agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    server = servers(Outage(from_turn=1, phases=(OutagePhase(401, 3600),)))
    durable, _ = build(server, agent_name, model_retry=POLICY)
    launch_dbos()
    workflow_id = f"auth-{uuid.uuid4().hex[:8]}"

    started = time.monotonic()
    with pytest.raises(ModelAuthenticationError) as failed, SetWorkflowID(workflow_id):
        await durable.run("Look up alpha and beta.")

    assert isinstance(failed.value, ModelHTTPError) and failed.value.status_code == 401
    assert server.stats()[1].received == 1  # no second attempt
    assert time.monotonic() - started < POLICY.initial_interval_seconds * 10  # no backoff was waited for
    assert (await DBOS.get_workflow_status_async(workflow_id)).status == "ERROR"  # type: ignore[union-attr]


async def test_a_run_past_its_horizon_is_continued_after_the_outage_from_its_failed_request(
    servers: Callable[..., ScriptedOpenAIServer], agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    server = servers(Outage(from_turn=1, phases=(OutagePhase(503, 6),)))
    short = ModelRetryPolicy(horizon_seconds=2, initial_interval_seconds=0.5, max_interval_seconds=1, jitter=0)
    durable, looked_up = build(server, agent_name, model_retry=short)
    launch_dbos()
    workflow_id = f"horizon-{uuid.uuid4().hex[:8]}"

    with pytest.raises(ModelUnavailableError), SetWorkflowID(workflow_id):
        await durable.run("Look up alpha and beta.")
    assert (await DBOS.get_workflow_status_async(workflow_id)).status == "ERROR"  # type: ignore[union-attr]
    gave_up = await DBOS.get_event_async(workflow_id, RETRY_EVENT, timeout_seconds=0)
    assert gave_up["state"] == "gave_up"
    failed_requests = len(server.stats()[1].failed_at)
    steps_before = await DBOS.list_workflow_steps_async(workflow_id)
    last_failed_step = [step["function_id"] for step in steps_before if isinstance(step["output"], FailedAttempt)][-1]

    await asyncio.sleep(max(0.0, server.stats()[1].failed_at[0] + 6.2 - time.time()))  # the outage is over
    assert await asyncio.to_thread(continue_run, workflow_id) == last_failed_step

    result = await (await DBOS.retrieve_workflow_async(workflow_id)).get_result()
    assert result.output == "Done: value-of-beta"
    recorded = await attempts(workflow_id, agent_name)
    assert [isinstance(outcome, FailedAttempt) for outcome in recorded] == [
        False,
        *[True] * (failed_requests - 1),
        False,
        False,
    ]
    stats = server.stats()
    assert stats[0].received == 1  # the first request was not sent again
    assert stats[1].received == failed_requests + 1
    assert looked_up.count("alpha") == 2  # a plain tool is workflow code: the continued run replays it


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbos_pydantic_ai", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


async def test_the_cli_shows_the_retry_state_and_continues_a_run_cancelled_during_the_outage(
    servers: Callable[..., ScriptedOpenAIServer], agent_name: str, database_url: str, launch_dbos: Callable[[], None]
) -> None:
    """An operator watches a run wait out an outage, cancels it, and continues it once the provider is back.

    The horizon is far away, so the run is still waiting whenever the (slow to start) CLI looks at it.
    """
    # Long enough to outlast two CLI calls beside three other pytest workers (8 s did not, once, in CI).
    outage_seconds = 20
    server = servers(Outage(from_turn=1, phases=(OutagePhase(503, outage_seconds),)))
    policy = ModelRetryPolicy(initial_interval_seconds=1.5, max_interval_seconds=2, jitter=0)
    durable, _ = build(server, agent_name, model_retry=policy)
    launch_dbos()
    workflow_id = f"cli-{uuid.uuid4().hex[:8]}"
    with SetWorkflowID(workflow_id):
        await DBOS.start_workflow_async(durable._run_workflow, "Look up alpha and beta.")
    while not server.stats().get(1) or not server.stats()[1].failed_at:
        await asyncio.sleep(0.05)

    waiting = await asyncio.to_thread(cli, "runs", "retry-state", workflow_id, "--database-url", database_url)
    assert waiting.returncode == 0, waiting.stderr
    assert re.search(r"waiting after attempt \d+, next try at 20", waiting.stdout), waiting.stdout
    assert "Last error: ModelUnavailableError" in waiting.stdout

    refused = await asyncio.to_thread(cli, "runs", "continue", workflow_id, "--database-url", database_url)
    assert refused.returncode == 1 and "is PENDING" in refused.stderr  # it retries by itself

    await DBOS.cancel_workflow_async(workflow_id)
    assert (await DBOS.get_workflow_status_async(workflow_id)).status == "CANCELLED"  # type: ignore[union-attr]
    await asyncio.sleep(max(0.0, server.stats()[1].failed_at[0] + outage_seconds + 0.2 - time.time()))  # it is over

    continued = await asyncio.to_thread(cli, "runs", "continue", workflow_id, "--database-url", database_url)
    assert continued.returncode == 0, continued.stderr
    assert f"Run {workflow_id} continues from step" in continued.stdout
    result = await (await DBOS.retrieve_workflow_async(workflow_id)).get_result()
    assert result.output == "Done: value-of-beta"
    assert server.stats()[0].received == 1
    recovered = await asyncio.to_thread(cli, "runs", "retry-state", workflow_id, "--database-url", database_url)
    assert "recovered after attempt" in recovered.stdout
