"""Durable model retries (retries.py) with pydantic-ai's own models, on both databases.

The HTTP side (real client, 503/429/401, SIGKILL during the backoff) is in tests/crash/test_provider_outage.py and
test_outage_crash.py; here: a streamed request that breaks midway is retried and superseded in the run's event stream,
the policy's choices, and the switches that turn it off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.exceptions import (
    ModelAuthenticationError,
    ModelConnectionError,
    ModelHTTPError,
    ModelQuotaExceededError,
    ModelRateLimitError,
    ModelServerError,
    UnexpectedModelBehavior,
    UserError,
)
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, DeltaToolCalls, FunctionModel

from dbos_pydantic_ai import DBOSAgent, EventLog, ModelRetryPolicy, StepConfig, Superseded, is_transient, read_events
from dbos_pydantic_ai.retries import FailedAttempt

FAST = ModelRetryPolicy(initial_interval_seconds=0.05, max_interval_seconds=0.1, jitter=0)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ModelRateLimitError("m", "429", retry_after=3), True),
        (ModelServerError("m", "500"), True),
        (ModelConnectionError("m", "reset", phase="read"), True),
        (ModelHTTPError(503, "m"), True),
        (ModelHTTPError(408, "m"), True),
        (ModelHTTPError(400, "m"), False),
        (ModelHTTPError.for_category(ModelAuthenticationError, status_code=401, model_name="m"), False),
        (ModelQuotaExceededError("m", "402"), False),
        (UnexpectedModelBehavior("refused"), False),
        (ConnectionResetError("reset"), True),
        (ValueError("a bug"), False),
    ],
)
def test_what_is_transient(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"horizon_seconds": 0}, "horizon_seconds"),
        ({"initial_interval_seconds": -1}, "initial_interval_seconds"),
        ({"backoff_rate": 0.5}, "backoff_rate"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_a_bad_policy_is_refused_with_the_field_named(kwargs: dict[str, float], named: str) -> None:
    with pytest.raises(UserError, match=named):
        ModelRetryPolicy(**kwargs)


def test_model_retry_takes_a_policy(agent_name: str) -> None:
    with pytest.raises(UserError, match="ModelRetryPolicy or None"):
        DBOSAgent(Agent(FunctionModel(lambda m, i: None), name=agent_name), model_retry=900)  # type: ignore[arg-type]


def breaking_stream(calls: list[int]) -> Callable[[list[ModelMessage], AgentInfo], AsyncIterator[str | DeltaToolCalls]]:
    """Streams 'Hello, wor' and breaks off (a transient error) the first time; the whole answer the second time."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        calls.append(len(calls) + 1)
        yield "Hello, "
        yield "wor"
        if len(calls) == 1:
            raise ModelConnectionError("function", "the stream broke off", phase="read")
        yield "ld!"

    return stream


async def test_a_streamed_request_that_breaks_off_is_retried_and_superseded_in_the_stream(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    calls: list[int] = []
    agent = Agent(FunctionModel(stream_function=breaking_stream(calls)), name=agent_name)
    durable = DBOSAgent(agent, stream_events=True, model_retry=FAST)
    launch_dbos()

    async with durable.run_stream("Hi") as streamed:
        result = await streamed.get_result()
    workflow_id = streamed.workflow_id

    assert result.output == "Hello, world!"
    assert calls == [1, 2]
    log = EventLog()
    superseded = []
    async for offset, event in read_events(workflow_id):
        log.add(offset, event)
        if isinstance(event, Superseded):
            superseded.append(event)
    assert len(superseded) == 1
    assert log.text() == "Hello, world!"  # the broken attempt's "Hello, wor" was dropped
    steps = await DBOS.list_workflow_steps_async(workflow_id)
    attempts = [s["output"] for s in steps if s["function_name"] == f"{agent_name}__model.request_stream"]
    assert isinstance(attempts[0], FailedAttempt) and attempts[0].first_step_id == superseded[0].step_id


async def test_model_step_config_replaces_the_durable_retries(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    calls: list[int] = []

    def failing(messages: list[ModelMessage], info: AgentInfo) -> None:
        calls.append(1)
        raise ModelServerError("function", "down")

    durable = DBOSAgent(
        Agent(FunctionModel(failing), name=agent_name),
        model_step_config=StepConfig(retries_allowed=True, max_attempts=2, interval_seconds=0.01),
    )
    launch_dbos()
    with pytest.raises(Exception, match="exceeded its maximum of 2 retries"), SetWorkflowID(f"{agent_name}-cfg"):
        await durable.run("Hi")
    assert len(calls) == 2  # DBOS's two in-step attempts, no durable retries on top
    steps = await DBOS.list_workflow_steps_async(f"{agent_name}-cfg")
    assert [s["function_name"] for s in steps].count(f"{agent_name}__model.request") == 1


async def test_model_retry_none_fails_at_the_first_transient_error(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    calls: list[int] = []

    def failing(messages: list[ModelMessage], info: AgentInfo) -> None:
        calls.append(1)
        raise ModelServerError("function", "down")

    durable = DBOSAgent(Agent(FunctionModel(failing), name=agent_name), model_retry=None)
    launch_dbos()
    with pytest.raises(ModelServerError):
        await durable.run("Hi")
    assert calls == [1]


async def test_a_transient_error_is_retried_until_it_clears(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    calls: list[int] = []

    def flaky(messages: list[ModelMessage], info: AgentInfo) -> None:
        calls.append(1)
        if len(calls) < 4:
            raise ModelRateLimitError("function", "slow down", retry_after=0.1)
        from pydantic_ai.messages import ModelResponse, TextPart

        return ModelResponse(parts=[TextPart("fine")])  # type: ignore[return-value]

    durable = DBOSAgent(Agent(FunctionModel(flaky), name=agent_name), model_retry=FAST)
    launch_dbos()
    with SetWorkflowID(f"{agent_name}-flaky"):
        assert (await durable.run("Hi")).output == "fine"
    steps = await DBOS.list_workflow_steps_async(f"{agent_name}-flaky")
    names = [s["function_name"] for s in steps]
    assert names.count(f"{agent_name}__model.request") == 4 and names.count("DBOS.sleep") == 3
