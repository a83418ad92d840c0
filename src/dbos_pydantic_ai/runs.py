"""Starting durable runs without waiting for them, and following them through a `RunHandle`.

`DBOSAgent.start()` / `start_sync()` start the agent's `{name}.run` workflow itself (one workflow per run), at once
or on a DBOS queue, in a process that defines the agent. `start_run()` enqueues the same workflow by name from any
process with only the database URL (a web app, a cron job); a worker that defines the agent and listens to the queue
runs it. Either way the caller gets a `RunHandle`: the run's result, status, events (with `stream_events=True`) and
cancellation, from this process or, by workflow id, from any other.

A deduplication id makes a queue hold at most one queued or running run per id (one turn per conversation, say): a
second start while the first is active is refused with `RunAlreadyActiveError`, which names the active run.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from dbos import DBOS, DBOSClient, EnqueueOptions, SetEnqueueOptions, SetWorkflowID, WorkflowHandleAsync, WorkflowStatus
from dbos import error as dbos_error
from pydantic_ai.exceptions import UserError
from pydantic_ai.run import AgentRunResult

from ._compat import dbos_launched, run_on_dbos_loop
from ._kept import KeptPerDatabase, open_kept_client
from ._serialization import ensure_serializable
from ._steps import in_workflow
from .exceptions import RunAlreadyActiveError
from .names import STREAM_EVENTS_INPUT
from .names import run_workflow as run_workflow_name
from .streams import DEFAULT_POLLING_INTERVAL_SEC, DurableStreamEvent, _open_client, new_client, read_events

__all__ = ["RunHandle", "start_run", "start_run_async"]

MIN_PRIORITY = 1
MAX_PRIORITY = 2**31 - 1
"""DBOS's bounds for a queued workflow's priority (a lower number is dequeued first)."""

_ACTIVE_STATUSES = ["ENQUEUED", "PENDING", "DELAYED"]

# Run arguments that live only in the starting process: a started run is not tied to its caller.
_LIVE_ONLY = ("event_stream_handler", "cancellation_token")

# Starting, status and cancel by `database_url` share a client per URL (`_kept.py`); a result wait opens its own.
_kept_clients: KeptPerDatabase[DBOSClient] = KeptPerDatabase(open_kept_client)


# --- Checking a start before anything is written --------------------------------------------------


@dataclass(frozen=True)
class StartOptions:
    """Where and how a run starts: the DBOS queue (None: at once, in this process) and its enqueue options."""

    queue: str | None = None
    workflow_id: str | None = None
    deduplication_id: str | None = None
    priority: int | None = None


def check_start_options(options: StartOptions, *, caller: str) -> None:
    """Refuse options DBOS would reject late (or silently ignore), with what to pass instead."""
    for name in ("queue", "workflow_id", "deduplication_id"):
        value = getattr(options, name)
        if value is not None and (not isinstance(value, str) or not value):
            raise UserError(f"{caller}({name}={value!r}): pass a non-empty string or None.")
    priority = options.priority
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise UserError(
            f"{caller}(priority={priority!r}): pass an int from {MIN_PRIORITY} (dequeued first) to {MAX_PRIORITY}, "
            "or None (dequeued before any prioritized run)."
        )
    if options.queue is None and (options.deduplication_id is not None or priority is not None):
        given = "deduplication_id" if options.deduplication_id is not None else "priority"
        raise UserError(
            f"{caller}({given}=...) needs a queue: deduplication and priorities are DBOS queue controls. "
            "Pass `queue=` (a queue registered with `DBOS.register_queue`)."
        )


def refuse_live_run_args(run_args: dict[str, Any], *, caller: str) -> None:
    """A started run may be executed, or recovered, by another process: callbacks and tokens cannot follow it."""
    for name in _LIVE_ONLY:
        if run_args.get(name) is not None:
            raise UserError(
                f"{caller}() does not take `{name}`: a started run is not tied to the caller and may run in another "
                "process, where this object does not exist. Follow the run with `handle.events()` (with "
                "`stream_events=True`) and stop it with `handle.cancel()`, or use `await agent.run(..., "
                f"{name}=...)` to run it here."
            )
    run_args.pop("infer_name", None)


def _unknown_queue(queue: str, caller: str) -> UserError:
    return UserError(
        f"{caller}(queue={queue!r}): no queue of that name is registered in this database, so no worker would ever "
        f"run the run. Register it in the workers after DBOS.launch(): `DBOS.register_queue({queue!r}, "
        "worker_concurrency=4)` (see docs/fleet.md)."
    )


def _already_active(options: StartOptions, active_id: str | None) -> RunAlreadyActiveError:
    assert options.deduplication_id is not None and options.queue is not None
    which = f"run {active_id!r}" if active_id is not None else "a run (it ended as this start was refused)"
    return RunAlreadyActiveError(
        f"Not started: {which} with deduplication id {options.deduplication_id!r} is still queued or running on queue "
        f"{options.queue!r}. Wait for it (`RunHandle({active_id!r}).result()`), cancel it, or start this run with "
        "another deduplication id.",
        workflow_id=active_id,
        deduplication_id=options.deduplication_id,
        queue=options.queue,
    )


def _active_holder(workflows: list[WorkflowStatus], deduplication_id: str) -> str | None:
    return next((w.workflow_id for w in workflows if w.deduplication_id == deduplication_id), None)


# --- Starting in a process that defines the agent -------------------------------------------------


def start_here(
    workflow: Callable[..., Coroutine[Any, Any, Any]], user_prompt: Any, inputs: dict[str, Any], options: StartOptions
) -> str:
    """Start (or enqueue) `workflow`; return its id. Blocking: call it from a thread, not an event loop.

    Outside a workflow the run is started with a known id. Started at once, it becomes a task on DBOS's own event
    loop (`_compat.run_on_dbos_loop`): it outlives the caller's loop and holds no thread while it waits. Enqueued, it
    uses DBOS's 'return-existing' deduplication policy: a start that collides gets the active run's id back
    atomically, and nothing is written for it.
    """
    if in_workflow():
        return _start_child_sync(workflow, user_prompt, inputs, options)
    wanted = options.workflow_id or str(uuid.uuid4())
    if options.queue is None:

        async def start_on_dbos_loop() -> str:
            with SetWorkflowID(wanted):
                return (await DBOS.start_workflow_async(workflow, user_prompt, **inputs)).get_workflow_id()

        return run_on_dbos_loop(start_on_dbos_loop)
    if DBOS.retrieve_queue(options.queue) is None:
        raise _unknown_queue(options.queue, "start")
    dedup = options.deduplication_id
    with (
        SetWorkflowID(wanted),
        SetEnqueueOptions(
            deduplication_id=dedup,
            priority=options.priority,
            duplication_policy="return-existing" if dedup is not None else None,
        ),
    ):
        started: str = DBOS.enqueue_workflow(options.queue, workflow, user_prompt, **inputs).get_workflow_id()
    if started != wanted:
        raise _already_active(options, started)
    return started


def _start_child_sync(
    workflow: Callable[..., Any], user_prompt: Any, inputs: dict[str, Any], options: StartOptions
) -> str:
    # Inside a workflow the child's id must come from DBOS (derived from the parent, stable on replay), so a
    # collision is DBOS's recorded error, and the active run is looked up (only its message depends on that).
    with SetWorkflowID(options.workflow_id) if options.workflow_id else nullcontext():
        if options.queue is None:
            return DBOS.start_workflow(workflow, user_prompt, **inputs).get_workflow_id()
        try:
            with SetEnqueueOptions(deduplication_id=options.deduplication_id, priority=options.priority):
                return DBOS.enqueue_workflow(options.queue, workflow, user_prompt, **inputs).get_workflow_id()
        except dbos_error.DBOSQueueDeduplicatedError as error:
            assert options.deduplication_id is not None
            active = DBOS.list_workflows(
                queue_name=options.queue, status=_ACTIVE_STATUSES, load_input=False, load_output=False
            )
            raise _already_active(options, _active_holder(active, options.deduplication_id)) from error


async def start_here_async(
    workflow: Callable[..., Coroutine[Any, Any, Any]], user_prompt: Any, inputs: dict[str, Any], options: StartOptions
) -> str:
    """`start_here` for async callers. Outside a workflow, the run is started from a thread: it then runs on DBOS's
    own event loop, not the caller's, and so outlives it (a workflow started on the caller's loop dies with it)."""
    if not in_workflow():
        return await asyncio.to_thread(start_here, workflow, user_prompt, inputs, options)
    with SetWorkflowID(options.workflow_id) if options.workflow_id else nullcontext():
        if options.queue is None:
            return (await DBOS.start_workflow_async(workflow, user_prompt, **inputs)).get_workflow_id()
        try:
            with SetEnqueueOptions(deduplication_id=options.deduplication_id, priority=options.priority):
                handle = await DBOS.enqueue_workflow_async(options.queue, workflow, user_prompt, **inputs)
            return handle.get_workflow_id()
        except dbos_error.DBOSQueueDeduplicatedError as error:
            assert options.deduplication_id is not None
            active = await DBOS.list_workflows_async(
                queue_name=options.queue, status=_ACTIVE_STATUSES, load_input=False, load_output=False
            )
            raise _already_active(options, _active_holder(active, options.deduplication_id)) from error


# --- Starting from any process, with only the database URL ----------------------------------------


def _client_inputs(user_prompt: Any, run_args: dict[str, Any], *, stream_events: bool) -> dict[str, Any]:
    """The workflow inputs `DBOSAgent.run()` would store, built without the agent (the model by key or name)."""
    refuse_live_run_args(run_args, caller="start_run")
    model = run_args.get("model")
    if model is not None and not isinstance(model, str):
        raise UserError(
            f"start_run(model={model!r}): a process without the agent can only name a model: pass a key registered "
            "with `DBOSAgent(agent, models={...})` or a model name such as 'openai:gpt-5'."
        )
    inputs = {key: value for key, value in run_args.items() if value is not None}
    if stream_events:
        inputs[STREAM_EVENTS_INPUT] = True
    ensure_serializable({"user_prompt": user_prompt, **inputs})
    return inputs


def _check_start_run(agent_name: object, database_url: object, options: StartOptions) -> None:
    if not isinstance(agent_name, str) or not agent_name:
        raise UserError(f"start_run() needs the agent's name (its `DBOSAgent` name, a string), not {agent_name!r}.")
    if not isinstance(database_url, str) or not database_url:
        raise UserError("start_run() needs `database_url=`: the system database the workers give DBOS.")
    if options.queue is None:
        raise UserError(
            "start_run() needs `queue=`: this process does not run agents, so a worker that defines the agent "
            "must take the run from a DBOS queue it listens to."
        )
    check_start_options(options, caller="start_run")


def _enqueue_options(agent_name: str, options: StartOptions, app_version: str | None) -> tuple[str, EnqueueOptions]:
    assert options.queue is not None
    wanted = options.workflow_id or str(uuid.uuid4())
    enqueue: EnqueueOptions = {
        "queue_name": options.queue,
        "workflow_name": run_workflow_name(agent_name),
        "workflow_id": wanted,
    }
    if options.deduplication_id is not None:
        enqueue["deduplication_id"] = options.deduplication_id
        enqueue["duplication_policy"] = "return-existing"  # the active run's id back, nothing written
    if options.priority is not None:
        enqueue["priority"] = options.priority
    if app_version is not None:
        enqueue["app_version"] = app_version
    return wanted, enqueue


def _enqueue_with(
    client: DBOSClient,
    agent_name: str,
    user_prompt: Any,
    inputs: dict[str, Any],
    options: StartOptions,
    app_version: str | None,
) -> str:
    assert options.queue is not None
    if client.retrieve_queue(options.queue) is None:
        raise _unknown_queue(options.queue, "start_run")
    wanted, enqueue = _enqueue_options(agent_name, options, app_version)
    started: str = client.enqueue(enqueue, user_prompt, **inputs).get_workflow_id()
    if started != wanted:
        raise _already_active(options, started)
    return started


def start_run(
    agent_name: str,
    user_prompt: Any = None,
    *,
    database_url: str,
    queue: str,
    workflow_id: str | None = None,
    deduplication_id: str | None = None,
    priority: int | None = None,
    app_version: str | None = None,
    stream_events: bool = False,
    **run_args: Any,
) -> RunHandle:
    """Enqueue a run of the `DBOSAgent` named `agent_name` from a process that does not define it.

    A worker that defines the agent and listens to `queue` runs it: the run is the agent's own `{name}.run` workflow,
    as `DBOSAgent.start(queue=...)` would enqueue it. The run's arguments (`deps`, `message_history`, `model` as a
    registered key or a model name, ...) are checked to be storable before anything is written.

    Args:
        agent_name: The `DBOSAgent`'s name (it names the agent's workflows).
        user_prompt: The prompt.
        database_url: The workers' system database.
        queue: A queue the workers registered with `DBOS.register_queue` (refused if none did).
        workflow_id: The run's id (default: a new UUID). Starting again with the id of an existing run returns it.
        deduplication_id: At most one queued or running run per id on this queue: a second start is refused with
            `RunAlreadyActiveError`, which names the active run.
        priority: 1 (dequeued first) to 2**31-1; runs without a priority are dequeued before prioritized ones.
        app_version: The workers' application version to run it; default: the latest version registered.
        stream_events: Record the run's events for `handle.events()` / `read_events()`, as
            `DBOSAgent(stream_events=True)` does (this process cannot see the agent's setting).

    Blocking (it connects to the database); use `start_run_async` in an event loop.
    """
    options = StartOptions(queue, workflow_id, deduplication_id, priority)
    _check_start_run(agent_name, database_url, options)
    inputs = _client_inputs(user_prompt, run_args, stream_events=stream_events)
    client = _kept_clients.get(database_url)
    started = _enqueue_with(client, agent_name, user_prompt, inputs, options, app_version)
    return RunHandle(started, stream_events=stream_events, database_url=database_url)


async def start_run_async(
    agent_name: str,
    user_prompt: Any = None,
    *,
    database_url: str,
    queue: str,
    workflow_id: str | None = None,
    deduplication_id: str | None = None,
    priority: int | None = None,
    app_version: str | None = None,
    stream_events: bool = False,
    **run_args: Any,
) -> RunHandle:
    """`start_run`, without blocking the event loop."""
    options = StartOptions(queue, workflow_id, deduplication_id, priority)
    _check_start_run(agent_name, database_url, options)
    inputs = _client_inputs(user_prompt, run_args, stream_events=stream_events)
    client = await asyncio.to_thread(_kept_clients.get, database_url)  # a cancelled caller leaves it kept, not open
    started = await asyncio.to_thread(_enqueue_with, client, agent_name, user_prompt, inputs, options, app_version)
    return RunHandle(started, stream_events=stream_events, database_url=database_url)


# --- Following a started run ----------------------------------------------------------------------


class RunHandle:
    """A started durable run: its result, status, events and cancellation.

    Returned by `DBOSAgent.start()`, `start_sync()` and `start_run()`; build one from a workflow id to follow a run
    started elsewhere (another request of a web app, say). With `database_url` it works through a `DBOSClient` on
    that database, in any process (kept per URL between calls; a `result()` wait opens its own); without, through the
    DBOS launched in this process.

    Args:
        workflow_id: The run's workflow id.
        stream_events: Whether the run records its events (`DBOSAgent(stream_events=True)` or
            `start_run(stream_events=True)`); `events()` needs it.
        database_url: The workers' system database; None uses the DBOS launched in this process.
        polling_interval_sec: How often `result()` looks for the run's end.
    """

    def __init__(
        self,
        workflow_id: str,
        *,
        stream_events: bool = False,
        database_url: str | None = None,
        polling_interval_sec: float = DEFAULT_POLLING_INTERVAL_SEC,
    ) -> None:
        if not isinstance(workflow_id, str) or not workflow_id:
            raise UserError(f"RunHandle needs a workflow id (a non-empty string), not {workflow_id!r}.")
        self.workflow_id = workflow_id
        self.stream_events = stream_events
        self.database_url = database_url
        self._polling_interval_sec = polling_interval_sec

    def __repr__(self) -> str:
        return f"RunHandle({self.workflow_id!r})"

    def _check_local(self) -> None:
        if not dbos_launched():
            raise UserError(
                f"RunHandle({self.workflow_id!r}) has no database: DBOS is not launched in this process. Pass "
                "`database_url=` (the workers' system database) to follow the run from here."
            )

    # result

    async def result(self) -> AgentRunResult[Any]:
        """Wait for the run to end; its `AgentRunResult`, or the error it failed with (DBOS's
        `DBOSAwaitedWorkflowCancelledError` if it was cancelled)."""
        if self.database_url is None:
            self._check_local()
            handle: WorkflowHandleAsync[AgentRunResult[Any]] = await DBOS.retrieve_workflow_async(self.workflow_id)
            result: AgentRunResult[Any] = await handle.get_result(polling_interval_sec=self._polling_interval_sec)
            return result
        client = await _open_client(self.database_url)
        try:
            client_handle: WorkflowHandleAsync[AgentRunResult[Any]] = await client.retrieve_workflow_async(
                self.workflow_id
            )
            return await client_handle.get_result(polling_interval_sec=self._polling_interval_sec)
        finally:
            await asyncio.to_thread(client.destroy)

    def result_sync(self) -> AgentRunResult[Any]:
        """`result()`, blocking (not from inside an event loop)."""
        if self.database_url is None:
            self._check_local()
            result: AgentRunResult[Any] = DBOS.retrieve_workflow(self.workflow_id).get_result(
                polling_interval_sec=self._polling_interval_sec
            )
            return result
        client = new_client(self.database_url)
        try:
            return client.retrieve_workflow(self.workflow_id).get_result(  # type: ignore[no-any-return]
                polling_interval_sec=self._polling_interval_sec
            )
        finally:
            client.destroy()

    # status

    def _found(self, workflows: list[WorkflowStatus]) -> WorkflowStatus:
        if not workflows:
            raise UserError(f"No run with workflow id {self.workflow_id!r} in this database.")
        return workflows[0]

    async def status(self) -> WorkflowStatus:
        """The run's DBOS status row: `.status` is ENQUEUED, PENDING, SUCCESS, ERROR, CANCELLED, ...; also its queue,
        priority, executor and times (input and output not loaded)."""
        if self.database_url is None:
            self._check_local()
            return self._found(
                await DBOS.list_workflows_async(workflow_ids=[self.workflow_id], load_input=False, load_output=False)
            )
        client = await asyncio.to_thread(_kept_clients.get, self.database_url)
        return self._found(
            await client.list_workflows_async(workflow_ids=[self.workflow_id], load_input=False, load_output=False)
        )

    def status_sync(self) -> WorkflowStatus:
        """`status()`, blocking (not from inside an event loop)."""
        if self.database_url is None:
            self._check_local()
            return self._found(
                DBOS.list_workflows(workflow_ids=[self.workflow_id], load_input=False, load_output=False)
            )
        client = _kept_clients.get(self.database_url)
        return self._found(client.list_workflows(workflow_ids=[self.workflow_id], load_input=False, load_output=False))

    # events

    def events(self, from_offset: int = 0) -> AsyncIterator[tuple[int, DurableStreamEvent]]:
        """The run's events as `(offset, event)` pairs, live, until the run ends: `read_events()` on this run."""
        if not self.stream_events:
            raise UserError(
                f"Run {self.workflow_id!r} does not record its events. Create the agent with "
                "`DBOSAgent(agent, stream_events=True)` (or pass `start_run(..., stream_events=True)`) to follow runs "
                "live, or wait for `result()`."
            )
        return read_events(
            self.workflow_id,
            from_offset=from_offset,
            database_url=self.database_url,
            polling_interval_sec=self._polling_interval_sec,
        )

    # cancel

    async def cancel(self) -> None:
        """Cancel the run: a queued run never starts, a running one stops at its next step. Its finished steps stay
        recorded (DBOS can resume it)."""
        if self.database_url is None:
            self._check_local()
            await DBOS.cancel_workflow_async(self.workflow_id)
            return
        client = await asyncio.to_thread(_kept_clients.get, self.database_url)
        await client.cancel_workflow_async(self.workflow_id)

    def cancel_sync(self) -> None:
        """`cancel()`, blocking (not from inside an event loop)."""
        if self.database_url is None:
            self._check_local()
            DBOS.cancel_workflow(self.workflow_id)
            return
        _kept_clients.get(self.database_url).cancel_workflow(self.workflow_id)
