"""Starting runs without waiting for them: `DBOSAgent.start()` / `start_sync()` and `start_run()` from any process.

A started run is the agent's own `{name}.run` workflow (one per run), at once or on a DBOS queue, followed through a
`RunHandle` (result, status, events, cancel). On a queue, a deduplication id admits one queued or running run per id
(a second start is refused, naming the active run) and priorities order the dequeue. Inputs are checked to be
storable before anything is written. SQLite and PostgreSQL each.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbos import DBOS
from dbos import error as dbos_error
from pydantic_ai import Agent, PartDeltaEvent, PartStartEvent
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, TextPartDelta, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from dbos_pydantic_ai import (
    DBOSAgent,
    NotSerializableError,
    RunAlreadyActiveError,
    RunHandle,
    runs,
    start_run,
    start_run_async,
)
from dbos_pydantic_ai._kept import KEPT_APPLICATION_NAME, KeptPerDatabase
from dbos_pydantic_ai.config import redact_url
from dbos_pydantic_ai.exceptions import DatabaseUnreachableError
from dbos_pydantic_ai.streams import DurableStreamEvent

WAIT = 60.0  # generous bound for anything that waits: never asserted as a timing
QUEUE = "agent_runs"


def prompt_of(messages: list[ModelMessage]) -> str:
    return next(str(part.content) for message in messages for part in message.parts if isinstance(part, UserPromptPart))


@dataclass
class GatedModel:
    """Answers `done: <prompt>` in chunks. A prompt with a gate holds until the gate is set.

    The model runs on the process's durable loop, not the test's: gates are thread-safe events polled with
    `asyncio.sleep`. `started` records the prompts in the order their first model request began.
    """

    gates: dict[str, threading.Event] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)

    async def _hold(self, prompt: str) -> None:
        self.started.append(prompt)
        gate = self.gates.get(prompt)
        deadline = time.monotonic() + WAIT
        while gate is not None and not gate.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def reply(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompt = prompt_of(messages)
        await self._hold(prompt)
        return ModelResponse(parts=[TextPart(f"done: {prompt}")])

    async def stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        prompt = prompt_of(messages)
        yield "done: "
        await self._hold(prompt)
        yield prompt

    def release_all(self) -> None:
        for gate in self.gates.values():
            gate.set()


def make_agent(name: str, model: GatedModel, **kwargs: Any) -> DBOSAgent[None, str]:
    return DBOSAgent(Agent(FunctionModel(model.reply, stream_function=model.stream), name=name), **kwargs)


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def register_queue(**limits: Any) -> None:
    await DBOS.register_queue_async(QUEUE, polling_interval_sec=0.05, **limits)


async def workflows() -> list[Any]:
    return await DBOS.list_workflows_async(load_input=False, load_output=False)


def text_of(events: list[DurableStreamEvent]) -> str:
    text = ""
    for event in events:
        if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
            text += event.part.content
        elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
            text += event.delta.content_delta
    return text


# --- start() and start_sync() ------------------------------------------------------------------------


async def test_start_runs_the_run_workflow_itself(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    """Without a queue: one workflow `{name}.run`, the handle's result and status."""
    model = GatedModel()
    durable = make_agent(agent_name, model)
    launch_dbos()

    handle = await durable.start("hello", workflow_id="wf-start")
    assert handle.workflow_id == "wf-start"
    result = await handle.result()
    assert result.output == "done: hello"
    status = await handle.status()
    assert status.status == "SUCCESS"
    assert status.name == f"{agent_name}.run"
    assert [w.workflow_id for w in await workflows()] == ["wf-start"]  # no wrapper workflow

    again = await durable.start("hello", workflow_id="wf-start")  # the same id: the same run, not a second one
    assert (await again.result()).output == "done: hello"
    assert model.started == ["hello"]


async def test_a_started_run_outlives_the_callers_event_loop(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    """start() from a loop that ends at once (asyncio.run in a thread): the run still finishes."""
    model = GatedModel(gates={"slow": threading.Event()})
    durable = make_agent(agent_name, model)
    launch_dbos()

    def caller() -> str:
        async def main() -> str:
            return (await durable.start("slow")).workflow_id

        return asyncio.run(main())  # the loop closes, cancelling its tasks, while the run waits at the gate

    workflow_id = await asyncio.to_thread(caller)
    await until(lambda: model.started == ["slow"], "the run to start")
    model.release_all()
    assert (await RunHandle(workflow_id).result()).output == "done: slow"


async def test_started_runs_wait_without_a_thread_each(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    """start() makes the run a task on DBOS's event loop, as a dequeued run is: twenty runs held at their model request
    do not hold twenty threads (`DBOS.start_workflow` gave every async run an executor thread for its whole life)."""
    prompts = [f"held {index}" for index in range(20)]
    model = GatedModel(gates={prompt: threading.Event() for prompt in prompts})
    durable = make_agent(agent_name, model)
    launch_dbos()
    assert (await (await durable.start("warm-up")).result()).output == "done: warm-up"

    before = threading.active_count()
    handles = [await durable.start(prompt) for prompt in prompts]
    await until(lambda: len(model.started) == 1 + len(prompts), "every run to reach its model request")
    added = threading.active_count() - before
    model.release_all()
    assert [(await handle.result()).output for handle in handles] == [f"done: {prompt}" for prompt in prompts]
    assert added < len(prompts) // 2, f"{added} more threads while {len(prompts)} started runs wait"


def test_start_sync_on_a_queue(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    """start_sync(queue=...) enqueues the run workflow; a listening worker (this process) runs it."""
    model = GatedModel()
    durable = make_agent(agent_name, model)
    launch_dbos()
    DBOS.register_queue(QUEUE, polling_interval_sec=0.05)

    handle = durable.start_sync("queued", queue=QUEUE)
    assert handle.result_sync().output == "done: queued"
    status = handle.status_sync()
    assert (status.status, status.queue_name, status.name) == ("SUCCESS", QUEUE, f"{agent_name}.run")


@pytest.mark.parametrize("through", ["launched DBOS", "database URL"])
async def test_cancel_a_started_run(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str, through: str
) -> None:
    """cancel() stops a running run and keeps a queued one from ever starting, in-process or through a client."""
    model = GatedModel(gates={"running": threading.Event()})
    durable = make_agent(agent_name, model)
    launch_dbos()
    await register_queue(worker_concurrency=1)
    try:
        running = await durable.start("running", queue=QUEUE)
        await until(lambda: model.started == ["running"], "the first run to reach the model")
        queued = await durable.start("queued", queue=QUEUE)
        url = database_url if through == "database URL" else None
        for handle in (
            RunHandle(queued.workflow_id, database_url=url),
            RunHandle(running.workflow_id, database_url=url),
        ):
            await handle.cancel()
            assert (await handle.status()).status == "CANCELLED"
            with pytest.raises(dbos_error.DBOSAwaitedWorkflowCancelledError):
                await handle.result()
    finally:
        model.release_all()
    await asyncio.sleep(0.3)  # several queue polls: the cancelled queued run must not start
    assert model.started == ["running"]


async def test_events_of_a_started_run(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    """With stream_events=True the handle follows the run live; without, events() says how to get them."""
    model = GatedModel(gates={"tell me": threading.Event()})
    durable = make_agent(agent_name, model, stream_events=True)
    plain = make_agent(f"{agent_name}_plain", GatedModel())
    launch_dbos()

    handle = await durable.start("tell me")
    events: list[DurableStreamEvent] = []

    async def read() -> None:
        async for _, event in handle.events():
            events.append(event)

    reader = asyncio.create_task(read())
    await until(lambda: text_of(events) == "done: ", "the first chunk to reach the reader")
    model.release_all()
    await asyncio.wait_for(reader, WAIT)
    assert text_of(events) == "done: tell me" == (await handle.result()).output

    plain_handle = await plain.start("quiet")
    with pytest.raises(UserError, match="stream_events=True"):
        plain_handle.events()
    assert (await plain_handle.result()).output == "done: quiet"


# --- Deduplication and priorities ----------------------------------------------------------------


async def test_deduplication_refuses_a_second_active_run_and_names_it(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    """One queued or running run per deduplication id: a second start is refused naming the active run (running or
    still queued, from this process or through the URL), nothing is written for it, and the id is free again after."""
    model = GatedModel(gates={"turn 1": threading.Event()})
    durable = make_agent(agent_name, model)
    launch_dbos()
    await register_queue(worker_concurrency=1)
    try:
        running = await durable.start("turn 1", queue=QUEUE, deduplication_id="conv-a")
        await until(lambda: model.started == ["turn 1"], "the first run to reach the model")
        queued = await durable.start("turn 1b", queue=QUEUE, deduplication_id="conv-b")
        assert (await queued.status()).status == "ENQUEUED"
        before = {w.workflow_id for w in await workflows()}

        with pytest.raises(RunAlreadyActiveError) as refused_running:
            await durable.start("turn 2", queue=QUEUE, deduplication_id="conv-a")
        assert refused_running.value.workflow_id == running.workflow_id
        assert running.workflow_id in str(refused_running.value)
        assert refused_running.value.deduplication_id == "conv-a"

        with pytest.raises(RunAlreadyActiveError) as refused_queued:
            await asyncio.to_thread(durable.start_sync, "turn 2b", queue=QUEUE, deduplication_id="conv-b")
        assert refused_queued.value.workflow_id == queued.workflow_id

        with pytest.raises(RunAlreadyActiveError) as refused_remote:
            await start_run_async(
                agent_name, "turn 2", database_url=database_url, queue=QUEUE, deduplication_id="conv-a"
            )
        assert refused_remote.value.workflow_id == running.workflow_id

        assert {w.workflow_id for w in await workflows()} == before  # nothing written for the refused starts
    finally:
        model.release_all()
    assert (await running.result()).output == "done: turn 1"
    assert (await queued.result()).output == "done: turn 1b"
    after = await durable.start("turn 2", queue=QUEUE, deduplication_id="conv-a")  # the id is free again
    assert (await after.result()).output == "done: turn 2"
    assert model.started == ["turn 1", "turn 1b", "turn 2"]


async def test_deduplication_inside_a_workflow(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    """From a workflow of the user's, the started run is a child; a duplicate is refused naming the first."""
    model = GatedModel(gates={"first": threading.Event()})
    durable = make_agent(agent_name, model)

    @DBOS.workflow(name=f"{agent_name}_fan_out")
    async def fan_out() -> tuple[str, str | None]:
        first = await durable.start("first", queue=QUEUE, deduplication_id="conv")
        try:
            await durable.start("second", queue=QUEUE, deduplication_id="conv")
        except RunAlreadyActiveError as error:
            return first.workflow_id, error.workflow_id
        return first.workflow_id, "not refused"

    launch_dbos()
    await register_queue(worker_concurrency=1)
    try:
        first_id, named = await fan_out()
    finally:
        model.release_all()
    assert named == first_id
    assert (await RunHandle(first_id).result()).output == "done: first"
    assert model.started == ["first"]


async def test_priorities_on_a_concurrency_one_queue(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    """Behind a running run, the high-priority run (enqueued last) runs before the low-priority one."""
    model = GatedModel(gates={"blocker": threading.Event()})
    durable = make_agent(agent_name, model)
    launch_dbos()
    await register_queue(global_concurrency=1)
    try:
        blocker = await durable.start("blocker", queue=QUEUE)
        await until(lambda: model.started == ["blocker"], "the blocker to run")
        low = await durable.start("low", queue=QUEUE, priority=10)
        high = await durable.start("high", queue=QUEUE, priority=1)
    finally:
        model.release_all()
    for handle in (blocker, low, high):
        await handle.result()
    assert model.started == ["blocker", "high", "low"]


# --- start_run() from a process without the agents -----------------------------------------------


async def test_start_run_from_a_process_with_only_the_database_url(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    """A separate process enqueues a run of agent NAME, reads its events, waits for its result and its status."""
    model = GatedModel()
    make_agent(agent_name, model)  # stream_events is asked for by the starter
    launch_dbos()
    await register_queue(worker_concurrency=2)

    script = textwrap.dedent(
        """
        import asyncio, sys
        from pydantic_ai.messages import PartDeltaEvent, PartStartEvent
        from dbos_pydantic_ai import start_run

        name, url, queue = sys.argv[1:4]
        handle = start_run(name, "from afar", database_url=url, queue=queue, stream_events=True, priority=5)

        async def text():
            parts = []
            async for _, event in handle.events():
                if isinstance(event, PartStartEvent):
                    parts.append(event.part.content)
                elif isinstance(event, PartDeltaEvent):
                    parts.append(event.delta.content_delta)
            return "".join(parts)

        print(handle.workflow_id)
        print(asyncio.run(text()))
        print(handle.result_sync().output)
        status = handle.status_sync()
        print(status.status, status.queue_name, status.priority)
        """
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, agent_name, database_url, QUEUE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    workflow_id, events_text, output, status = done.stdout.strip().splitlines()
    assert (events_text, output, status) == ("done: from afar", "done: from afar", f"SUCCESS {QUEUE} 5")
    mine = await DBOS.get_workflow_status_async(workflow_id)
    assert mine is not None and mine.name == f"{agent_name}.run"
    assert model.started == ["from afar"]


async def test_start_run_needs_a_registered_queue(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    make_agent(agent_name, GatedModel())
    launch_dbos()
    with pytest.raises(UserError, match="needs `queue=`"):
        await start_run_async(agent_name, "x", database_url=database_url, queue=None)  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"DBOS\.register_queue"):
        await start_run_async(agent_name, "x", database_url=database_url, queue="nobody_listens")
    assert await workflows() == []


def kept_connection_pids(database_url: str) -> set[int]:
    """The server processes of the connections this process keeps on the test's PostgreSQL database."""
    checker = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with checker.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = :n"
                ),
                {"n": KEPT_APPLICATION_NAME},
            )
            return {int(pid) for (pid,) in rows}
    finally:
        checker.dispose()


async def test_start_run_and_handles_by_url_keep_one_client(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    """Twenty starts, status reads and cancels by `database_url` (a web app's requests) go through one kept client.
    On PostgreSQL one server process serves them all, where a client per call connected twenty times, and a
    connection the server closed meanwhile (a restart, an idle timeout) is replaced, not handed out broken."""
    make_agent(agent_name, GatedModel())
    launch_dbos()
    on_postgres = not database_url.startswith("sqlite")
    await DBOS.register_queue_async(QUEUE, polling_interval_sec=3600)  # nothing is dequeued: only starts count
    seen: set[int] = set()
    clients: set[int] = set()
    for i in range(20):
        handle = await start_run_async(agent_name, f"run {i}", database_url=database_url, queue=QUEUE)
        by_url = RunHandle(handle.workflow_id, database_url=database_url)
        assert (await by_url.status()).status == "ENQUEUED"
        await asyncio.to_thread(by_url.cancel_sync)
        assert (await asyncio.to_thread(by_url.status_sync)).status == "CANCELLED"
        clients.add(id(runs._kept_clients.get(database_url)))
        if on_postgres:
            seen |= kept_connection_pids(database_url)
    assert len(clients) == 1
    if not on_postgres:
        return  # SQLite: the kept engine opens the file at each use; there is no server connection to keep
    assert len(seen) == 1, seen

    checker = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with checker.connect() as connection:
        connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": seen.pop()})
    checker.dispose()
    handle = await asyncio.to_thread(start_run, agent_name, "after", database_url=database_url, queue=QUEUE)
    assert (await RunHandle(handle.workflow_id, database_url=database_url).status()).status == "ENQUEUED"


async def test_start_run_on_an_unreachable_database_names_it_and_keeps_nothing(agent_name: str, tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'nowhere.sqlite'}"
    closed_port = "postgresql://postgres@127.0.0.1:1/nothing"
    for url in (missing, closed_port):
        with pytest.raises(DatabaseUnreachableError, match=re.escape(redact_url(url))):
            await start_run_async(agent_name, "x", database_url=url, queue=QUEUE)
        with pytest.raises(DatabaseUnreachableError):
            await RunHandle("wf-x", database_url=url).status()
    assert not (tmp_path / "nowhere.sqlite").exists()  # not created by the attempt
    assert all(key[1] not in (missing, closed_port) for key in runs._kept_clients._kept)


def test_a_database_slow_to_open_does_not_hold_up_the_others() -> None:
    """`KeptPerDatabase` opens outside its lock: a URL whose connect hangs (an unreachable host) does not block a
    call on another URL; and of two threads opening one URL at once, the first kept is the one everybody gets."""
    slow_may_finish = threading.Event()
    opened: list[str] = []

    def open_one(url: str) -> object:
        if url == "slow":
            assert slow_may_finish.wait(WAIT)
        opened.append(url)
        return object()

    kept: KeptPerDatabase[object] = KeptPerDatabase(open_one)
    results: dict[str, object] = {}
    slow = threading.Thread(target=lambda: results.update(slow=kept.get("slow")))
    slow.start()
    fast = kept.get("fast")  # returns while "slow" is still opening
    assert opened == ["fast"] and slow.is_alive()

    second = threading.Thread(target=lambda: results.update(second=kept.get("slow")))
    second.start()
    slow_may_finish.set()
    slow.join(WAIT)
    second.join(WAIT)
    assert opened.count("slow") == 2  # both opened; one was kept
    assert results["slow"] is results["second"] is kept.get("slow")
    assert kept.get("fast") is fast


# --- Refused before anything is written ----------------------------------------------------------


async def test_bad_starts_are_refused_with_nothing_written(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    model = GatedModel()
    durable = make_agent(agent_name, model)
    launch_dbos()
    await register_queue()
    lock = threading.Lock()

    with pytest.raises(NotSerializableError, match=r"`deps\.lock`"):
        await durable.start("x", deps=Holder(lock))
    with pytest.raises(NotSerializableError, match=r"`deps\.lock`"):
        await asyncio.to_thread(durable.start_sync, "x", queue=QUEUE, deps=Holder(lock))
    with pytest.raises(NotSerializableError, match=r"`deps\.lock`"):
        await asyncio.to_thread(start_run, agent_name, "x", database_url=database_url, queue=QUEUE, deps=Holder(lock))

    async def handler(ctx: Any, events: Any) -> None:
        pass

    with pytest.raises(UserError, match="does not take `event_stream_handler`"):
        await durable.start("x", event_stream_handler=handler)
    with pytest.raises(UserError, match="needs a queue"):
        await durable.start("x", priority=3)
    with pytest.raises(UserError, match="priority=0"):
        await durable.start("x", queue=QUEUE, priority=0)
    with pytest.raises(UserError, match=r"DBOS\.register_queue"):
        await durable.start("x", queue="nobody_listens")
    with pytest.raises(UserError, match="model"):
        await start_run_async(agent_name, "x", database_url=database_url, queue=QUEUE, model=durable.model)

    assert await workflows() == []
    assert model.started == []


@dataclass
class Holder:
    lock: Any
