"""Parked runs: a started run that waits for a decision leaves memory after `park_after`, and comes back for it.

Parked, a run executes nowhere (DBOS's own count of active workflows does not list it), stays PENDING and records
nothing. A decision, or its deadline, brings it back through DBOS's queue: the replay sends no recorded model request
again, runs no finished tool again, and the wake does not count as a recovery. A run a caller awaits never parks.
Decisions racing the park, two calls decided one at a time, both databases, FunctionModel and the OpenAI client
against a local server.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from crash.openai_server import ScriptedOpenAIServer
from dbos_pydantic_ai import ApprovalRejected, DBOSAgent, _parking, approval_args_digest, approve
from dbos_pydantic_ai._approval_table import launched_decisions
from dbos_pydantic_ai._compat import active_workflow_ids, recovery_attempts
from dbos_pydantic_ai._parking import parked_run_ids
from dbos_pydantic_ai.names import APPROVALS_EVENT
from test_approvals_inbox import backend_connections

PARK_AFTER = 0.3
WAIT_SECONDS = 60.0


class CountingModel:
    """Asks for a refund per call id in `calls` (all in one response), then answers with the tools' results.
    Counts the requests it served: a replay must not send a recorded one again."""

    def __init__(self, calls: tuple[str, ...] = ("c1",)) -> None:
        self.calls = calls
        self.requests = 0
        self._lock = threading.Lock()

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        with self._lock:
            self.requests += 1
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        returns = [part for part in last.parts if isinstance(part, ToolReturnPart)]
        if returns:
            return ModelResponse(parts=[TextPart(", ".join(str(part.content) for part in returns))])
        return ModelResponse(parts=[ToolCallPart("refund", {"amount": 10}, tool_call_id=c) for c in self.calls])


SCRIPT = [{"tool_calls": [{"name": "refund", "args": {"amount": 10}}]}, {"text": "done: {tool_result}"}]


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    server = ScriptedOpenAIServer(SCRIPT).start()
    try:
        yield server
    finally:
        server.close()


def refund_agent(agent_name: str, model: Model, executed: list[str | None], **options: Any) -> DBOSAgent[None, str]:
    agent: Agent[None, str] = Agent(model, name=agent_name)

    @agent.tool_plain(requires_approval=True)
    def refund(amount: int) -> str:
        """Refund the customer."""
        executed.append(DBOS.workflow_id)
        return f"refunded {amount}"

    options.setdefault("park_after", PARK_AFTER)
    return DBOSAgent(agent, approvals="wait", durable_tools=["refund"], **options)


async def value_of(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def eventually(condition: Callable[[], Any], what: str, seconds: float = WAIT_SECONDS) -> Any:
    give_up = time.monotonic() + seconds
    while not (value := await value_of(condition())):
        if time.monotonic() > give_up:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


async def pending_call_ids(workflow_id: str) -> list[str]:
    state = await DBOS.get_event_async(workflow_id, APPROVALS_EVENT, timeout_seconds=0)
    if state is None or state["status"] != "waiting":
        return []
    return [call["tool_call_id"] for call in state["calls"] if call["tool_call_id"] not in state["decided"]]


def parked(workflow_id: str) -> bool:
    return workflow_id in parked_run_ids() and workflow_id not in active_workflow_ids()


async def approve_refund(workflow_id: str, tool_call_id: str) -> None:
    digest = approval_args_digest("refund", {"amount": 10})
    await asyncio.to_thread(approve, workflow_id, tool_call_id, args_digest=digest)


async def step_count(workflow_id: str) -> int:
    return len(await DBOS.list_workflow_steps_async(workflow_id))


@pytest.mark.parametrize("model_kind", ["function", "openai"])
async def test_a_parked_run_leaves_memory_and_a_decision_brings_it_back(
    agent_name: str,
    launch_dbos: Callable[[], None],
    server: ScriptedOpenAIServer,
    model_kind: str,
) -> None:
    counting = CountingModel()
    model: Model = (
        FunctionModel(counting)
        if model_kind == "function"
        else OpenAIChatModel("gpt-test", provider=OpenAIProvider(base_url=server.base_url, api_key="x"))
    )
    executed: list[str | None] = []
    durable = refund_agent(agent_name, model, executed)
    launch_dbos()

    handle = await durable.start("go", workflow_id="wf-park")
    await eventually(lambda: parked("wf-park"), "the run to park")
    status = await handle.status()
    assert status.status == "PENDING"
    steps_when_parked = await step_count("wf-park")
    await asyncio.sleep(1.5)  # parked: nothing is recorded, nothing runs
    assert await step_count("wf-park") == steps_when_parked
    assert parked("wf-park")

    await approve_refund("wf-park", (await pending_call_ids("wf-park"))[0])
    result = await asyncio.wait_for(handle.result(), WAIT_SECONDS)

    assert "refunded 10" in result.output
    assert executed == ["wf-park"]  # the tool ran once
    if model_kind == "function":
        assert counting.requests == 2  # the recorded first request was not sent again
    else:
        assert [(turn, stats.received) for turn, stats in server.stats().items()] == [(0, 1), (1, 1)]
    assert recovery_attempts(await handle.status()) == 1  # woken, not recovered
    assert "wf-park" not in parked_run_ids()


async def test_two_calls_decided_one_at_a_time_park_twice(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    counting = CountingModel(calls=("c1", "c2"))
    executed: list[str | None] = []
    durable = refund_agent(agent_name, FunctionModel(counting), executed)
    launch_dbos()

    handle = await durable.start("go", workflow_id="wf-two")
    await eventually(lambda: parked("wf-two"), "the run to park")
    await approve_refund("wf-two", "c1")

    # Woken by c1, the run carries the decision into its state and parks again, waiting for c2.
    async def parked_again() -> bool:
        return await pending_call_ids("wf-two") == ["c2"] and parked("wf-two")

    await eventually(parked_again, "the run to park again")
    await approve_refund("wf-two", "c2")
    result = await asyncio.wait_for(handle.result(), WAIT_SECONDS)

    assert result.output == "refunded 10, refunded 10"
    assert executed == ["wf-two", "wf-two"]
    assert counting.requests == 2
    assert recovery_attempts(await handle.status()) == 1


async def test_the_deadline_wakes_a_parked_run_and_times_its_call_out(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    executed: list[str | None] = []
    durable = refund_agent(agent_name, FunctionModel(CountingModel()), executed, approval_timeout=2.0)
    launch_dbos()

    handle = await durable.start("go", workflow_id="wf-deadline")
    await eventually(lambda: parked("wf-deadline"), "the run to park")
    result = await asyncio.wait_for(handle.result(), WAIT_SECONDS)

    assert "No decision on this tool call arrived within 2 seconds" in result.output
    assert executed == []


@pytest.mark.timeout(300)
async def test_decisions_racing_the_park_are_all_carried_out(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    """Twenty runs park after 0.2 s; each is approved at a random moment from 0 to 0.6 s after it asked: before
    the park, while it parks, or once parked. Every run finishes, its tool run exactly once."""
    runs = 20
    executed: list[str | None] = []
    durable = refund_agent(agent_name, FunctionModel(CountingModel()), executed, park_after=0.2)
    launch_dbos()
    rng = random.Random(12)

    handles = [await durable.start("go", workflow_id=f"wf-race-{i}") for i in range(runs)]

    async def decide(workflow_id: str) -> None:
        calls = await eventually(lambda: pending_call_ids(workflow_id), f"{workflow_id} to ask")
        await asyncio.sleep(rng.uniform(0.0, 0.6))
        await approve_refund(workflow_id, calls[0])

    await asyncio.gather(*(decide(handle.workflow_id) for handle in handles))
    outputs = [(await asyncio.wait_for(handle.result(), WAIT_SECONDS)).output for handle in handles]

    assert outputs == ["refunded 10"] * runs
    assert sorted(executed, key=str) == sorted((handle.workflow_id for handle in handles), key=str)


async def test_a_run_its_caller_awaits_never_parks(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    executed: list[str | None] = []
    durable = refund_agent(agent_name, FunctionModel(CountingModel()), executed, park_after=0.1)
    launch_dbos()

    with SetWorkflowID("wf-awaited"):
        task = asyncio.create_task(durable.run("go"))
    await eventually(lambda: pending_call_ids("wf-awaited"), "the run to ask")
    await asyncio.sleep(1.0)
    assert not task.done()  # still waiting in its caller's task
    assert "wf-awaited" not in parked_run_ids()
    await approve_refund("wf-awaited", "c1")

    assert (await asyncio.wait_for(task, WAIT_SECONDS)).output == "refunded 10"


@pytest.mark.parametrize("park_after", [-1, "soon", True, timedelta(seconds=-1)])
def test_park_after_must_be_a_duration(agent_name: str, park_after: Any) -> None:
    agent: Agent[None, str] = Agent(FunctionModel(CountingModel()), name=agent_name)
    with pytest.raises(UserError, match=r"`park_after` must be a number of seconds \(0 or more\).*pass None to keep"):
        DBOSAgent(agent, approvals="wait", park_after=park_after)


@pytest.mark.parametrize("approval_timeout", [0, timedelta(0), -1, "soon", True])
def test_approval_timeout_must_be_a_positive_duration(agent_name: str, approval_timeout: Any) -> None:
    """Zero is refused here (it is a valid `park_after`): a deadline at the start would time out every call unseen."""
    agent: Agent[None, str] = Agent(FunctionModel(CountingModel()), name=agent_name)
    with pytest.raises(UserError, match=r"`approval_timeout` must be a positive number of seconds.*without a deadline"):
        DBOSAgent(agent, approvals="wait", approval_timeout=approval_timeout)


def test_durations_accept_a_timedelta(agent_name: str) -> None:
    agent: Agent[None, str] = Agent(FunctionModel(CountingModel()), name=agent_name)
    durable = DBOSAgent(agent, approvals="wait", park_after=timedelta(minutes=2), approval_timeout=timedelta(hours=1))
    assert (durable._park_after, durable._approval_timeout) == (120.0, 3600.0)


async def test_park_after_zero_parks_at_once_and_never_parks_over_its_decision(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    """With `park_after=0` a run parks as soon as it waits. Woken, it parks again only if the decisions table holds no
    row for a pending call, the waker's own test: so it reads the decision that woke it instead of parking over it."""
    executed: list[str | None] = []
    durable = refund_agent(agent_name, FunctionModel(CountingModel(calls=("c1", "c2"))), executed, park_after=0)
    launch_dbos()

    handle = await durable.start("go", workflow_id="wf-zero")
    await eventually(lambda: parked("wf-zero"), "the run to park")
    await approve_refund("wf-zero", "c1")

    async def parked_again() -> bool:
        return await pending_call_ids("wf-zero") == ["c2"] and parked("wf-zero")

    await eventually(parked_again, "the run to park again, waiting for c2")
    await approve_refund("wf-zero", "c2")

    assert (await asyncio.wait_for(handle.result(), WAIT_SECONDS)).output == "refunded 10, refunded 10"
    assert executed == ["wf-zero", "wf-zero"]


async def test_a_parked_run_that_is_cancelled_is_forgotten(
    agent_name: str, launch_dbos: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while parked, the run stays cancelled (nothing wakes it), and the waker's full check forgets it."""
    monkeypatch.setattr(_parking, "_FULL_CHECK_SECONDS", 1.0)
    executed: list[str | None] = []
    durable = refund_agent(agent_name, FunctionModel(CountingModel()), executed)
    launch_dbos()

    handle = await durable.start("go", workflow_id="wf-cancel")
    await eventually(lambda: parked("wf-cancel"), "the run to park")
    await handle.cancel()
    await eventually(lambda: "wf-cancel" not in parked_run_ids(), "the waker to forget the run")
    await asyncio.sleep(1.5)

    assert (await handle.status()).status == "CANCELLED"
    assert executed == []


def _held_outside_the_pool(database_url: str) -> tuple[int, int]:
    """(connections DBOS's pool has checked out, server connections to this database that its pool does not hold).

    On SQLite the second is 0: there is no server to ask. On PostgreSQL it counts anything opened beside the pool
    (the approvals share the launched DBOS's pool); a number that grows is a connection nobody closed."""
    sys_db, _ = launched_decisions()
    pool: Any = sys_db.engine.pool
    if database_url.startswith("sqlite"):
        return pool.checkedout(), 0
    return pool.checkedout(), backend_connections(database_url) - pool.checkedin() - pool.checkedout()


@pytest.mark.timeout(300)
async def test_runs_cancelled_or_decided_at_random_moments_around_the_park_lose_nothing_and_leak_nothing(
    agent_name: str,
    launch_dbos: Callable[[], None],
    database_url: str,
    server: ScriptedOpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Thirty runs over the OpenAI client park after 20 ms, so the park cancels their `recv` while it sets up,
    waits, or consumes. Each run is then approved, cancelled, or both (two deciders racing), at a random moment
    within 0.6 s: before the park, while it parks, parked, or while it is woken.

    Nothing is lost: every run ends; one approved and never cancelled finishes with its tool run once; one cancelled
    with no approval never runs its tool; no tool runs twice. Nothing leaks: DBOS's pool gets every connection back
    and no server connection is left open beside it (PostgreSQL's `pg_stat_activity`)."""
    monkeypatch.setattr(_parking, "_FULL_CHECK_SECONDS", 1.0)  # forgets cancelled runs within a second
    runs = 30
    executed: list[str | None] = []
    model = OpenAIChatModel("gpt-test", provider=OpenAIProvider(base_url=server.base_url, api_key="x"))
    durable = refund_agent(agent_name, model, executed, park_after=0.02)
    launch_dbos()
    rng = random.Random(20261130)
    # What DBOS itself keeps after launch (on PostgreSQL its LISTEN connection stays checked out): the least seen.
    samples = []
    for _ in range(5):
        samples.append(_held_outside_the_pool(database_url))
        await asyncio.sleep(0.1)
    before = (min(checked_out for checked_out, _ in samples), min(beside for _, beside in samples))

    plans = [rng.choice(["approve", "cancel", "both"]) for _ in range(runs)]
    handles = [await durable.start("go", workflow_id=f"wf-mixed-{i}") for i in range(runs)]

    async def decide(handle: Any, plan: str) -> None:
        calls = await eventually(lambda: pending_call_ids(handle.workflow_id), f"{handle.workflow_id} to ask")
        actions = []
        if plan in ("approve", "both"):
            actions.append(approve_refund(handle.workflow_id, calls[0]))
        if plan in ("cancel", "both"):
            actions.append(handle.cancel())

        async def later(action: Any) -> None:
            await asyncio.sleep(rng.uniform(0.0, 0.6))
            try:
                await action
            except ApprovalRejected as rejected:  # the cancel came first: the decision is refused, not lost
                assert plan == "both" and "is CANCELLED" in str(rejected), rejected

        await asyncio.gather(*(later(action) for action in actions))

    await asyncio.gather(*(decide(handle, plan) for handle, plan in zip(handles, plans, strict=True)))

    async def final_status(handle: Any) -> str:
        status = await eventually(
            lambda: _ended(handle), f"{handle.workflow_id} to end (cancelled or finished)", WAIT_SECONDS
        )
        return str(status)

    statuses = [await final_status(handle) for handle in handles]
    for handle, plan, status in zip(handles, plans, statuses, strict=True):
        runs_of_tool = executed.count(handle.workflow_id)
        assert runs_of_tool <= 1, (handle.workflow_id, plan, status)
        if plan == "approve":
            assert (status, runs_of_tool) == ("SUCCESS", 1), (handle.workflow_id, plan)
            assert (await handle.result()).output == "done: refunded 10"
        elif plan == "cancel":
            assert (status, runs_of_tool) == ("CANCELLED", 0), (handle.workflow_id, plan)
        else:
            assert status in ("SUCCESS", "CANCELLED"), (handle.workflow_id, plan, status)
            assert status == "CANCELLED" or runs_of_tool == 1, (handle.workflow_id, plan, status)
    assert set(plans) == {"approve", "cancel", "both"}  # the seed exercises all three

    await eventually(lambda: not any(parked(h.workflow_id) for h in handles), "no run left parked")
    await eventually(lambda: _held_outside_the_pool(database_url) == before, "every connection to be given back")


async def _ended(handle: Any) -> str | None:
    status = (await handle.status()).status
    return status if status in ("SUCCESS", "CANCELLED", "ERROR") else None


async def test_runs_decided_at_once_wake_a_few_at_a_time_oldest_first(
    agent_name: str, launch_dbos: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve parked runs decided at once: the waker wakes at most as many as leave fewer than 3 runs executing (one
    at least), oldest parked first, instead of all twelve; every run still finishes, its tool run once."""
    monkeypatch.setattr(_parking, "_WAKE_WHILE_EXECUTING_BELOW", 3)
    monkeypatch.setattr(_parking, "_MIN_WAKES_PER_LOOK", 1)
    runs = 12
    executed: list[str | None] = []
    durable = refund_agent(agent_name, FunctionModel(CountingModel()), executed)
    launch_dbos()
    handles = []
    for i in range(runs):  # parked one after the other: wf-paced-0 first
        handles.append(await durable.start("go", workflow_id=f"wf-paced-{i}"))
        await eventually(lambda i=i: parked(f"wf-paced-{i}"), f"wf-paced-{i} to park")  # type: ignore[misc]

    most_executing = 0
    sampling = True

    async def sample() -> None:
        nonlocal most_executing
        while sampling:
            most_executing = max(most_executing, len(set(active_workflow_ids()) & {h.workflow_id for h in handles}))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    calls = [(await pending_call_ids(h.workflow_id))[0] for h in handles]
    await asyncio.gather(*(approve_refund(h.workflow_id, call) for h, call in zip(handles, calls, strict=True)))
    outputs = [(await asyncio.wait_for(h.result(), WAIT_SECONDS)).output for h in handles]
    sampling = False
    await sampler

    assert outputs == ["refunded 10"] * runs
    assert sorted(executed, key=str) == sorted((h.workflow_id for h in handles), key=str)
    assert 1 <= most_executing <= 4, most_executing  # 3, and one more a late dequeue may add; not 12
    first_woken = executed[:2]
    assert set(first_woken) <= {f"wf-paced-{i}" for i in range(4)}, executed  # the oldest parked went first
