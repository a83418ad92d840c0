"""Resumable event streams: a durable run's events in a DBOS stream, readable live from any process.

With `DBOSAgent(agent, stream_events=True)` a run records its `AgentStreamEvent`s in the DBOS stream
`STREAM_KEY` of its workflow while it runs:

- **Model events** (part start, delta and end) are written from inside the model request step, as the
  provider streams them. DBOS does not deduplicate writes made from a step, so a step that runs again
  (a DBOS retry, or a re-run after a crash) writes its events again. Each attempt therefore opens with
  an attempt marker, and the reader turns a second attempt of the same step into a `Superseded` event.
- **Run events** (tool calls and results, final result, ...) are written from workflow code: DBOS
  checkpoints those writes, so a replay after a crash does not write them again.
- The stream is closed when the run ends (a checkpointed write too), so readers stop at once.

`read_events()` turns the stream back into `(offset, event)` pairs. `offset` is the position of the
event in the stream, counted from 1; `read_events(..., from_offset=n)` continues right after the event
at position `n`. Offsets increase but may skip numbers (attempt markers of first attempts are not
events). What a UI must do with `Superseded` is described on the class; `EventLog` does it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from dbos import DBOS, DBOSClient, WorkflowHandleAsync
from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import (
    AgentStreamEvent,
    ModelResponsePart,
    PartDeltaEvent,
    PartEndEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ToolCallPartDelta,
)
from pydantic_ai.run import AgentRunResult, AgentRunResultEvent
from pydantic_ai.tools import RunContext

from .exceptions import DatabaseUnreachableError
from .names import STREAM_KEY
from .tracing import StreamTrace, stream_trace, stream_write_recorded

__all__ = [
    "STREAM_KEY",
    "DurableRunEvents",
    "DurableStreamEvent",
    "DurableStreamedRun",
    "EventLog",
    "ModelRequestStarted",
    "Superseded",
    "read_events",
]


DEFAULT_POLLING_INTERVAL_SEC = 0.1
"""How often a reader looks for new events when the database does not push them (SQLite, `DBOSClient`)."""


# --- Public event types ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRequestStarted:
    """A model request (the DBOS step `step_id` of the run) started streaming; its part events follow."""

    step_id: int
    event_kind: Literal["dbos_model_request_started"] = "dbos_model_request_started"


@dataclass(frozen=True)
class Superseded:
    """A model request was retried: the events of its earlier attempt are void.

    A DBOS retry, or a re-run after a crash, runs the model request step `step_id` again. The abandoned
    attempt is at offsets `discard_from` (its `ModelRequestStarted`, or the `Superseded` that started it)
    up to this marker. A UI must drop everything it displayed from offset `discard_from` on: this marker
    takes the place of that start marker, and the new attempt's events follow it.
    """

    step_id: int
    discard_from: int
    event_kind: Literal["dbos_superseded"] = "dbos_superseded"


DurableStreamEvent: TypeAlias = AgentStreamEvent | ModelRequestStarted | Superseded
"""What `read_events()` yields: the run's pydantic-ai events, plus the two markers above."""


# --- What the stream holds ------------------------------------------------------------------------
# Model events come wrapped with their step and attempt; run events (written from workflow code) are
# stored as they are. Stored with DBOS's serializer (typed JSON by default), so a reader needs this package installed.


@dataclass(frozen=True)
class _AttemptStart:
    step_id: int
    attempt: str


@dataclass(frozen=True)
class _ModelEvent:
    step_id: int
    attempt: str
    event: AgentStreamEvent


_PART_EVENTS = (PartStartEvent, PartDeltaEvent, PartEndEvent)


# --- Writing, inside a durable run ----------------------------------------------------------------


def _merged(first: Any, second: Any) -> Any | None:
    """One event equivalent to `first` then `second`, when both are text or tool-argument deltas of one part."""
    if not (isinstance(first, PartDeltaEvent) and isinstance(second, PartDeltaEvent)) or first.index != second.index:
        return None
    a, b = first.delta, second.delta
    if isinstance(a, TextPartDelta) and isinstance(b, TextPartDelta):
        if dataclasses.replace(a, content_delta="") != dataclasses.replace(b, content_delta=""):
            return None
        return PartDeltaEvent(
            index=first.index, delta=dataclasses.replace(a, content_delta=a.content_delta + b.content_delta)
        )
    if isinstance(a, ToolCallPartDelta) and isinstance(b, ToolCallPartDelta):
        if not (isinstance(a.args_delta, str) and isinstance(b.args_delta, str)):
            return None
        if a.tool_name_delta is not None or b.tool_name_delta is not None:
            return None
        if dataclasses.replace(a, args_delta="") != dataclasses.replace(b, args_delta=""):
            return None
        return PartDeltaEvent(index=first.index, delta=dataclasses.replace(a, args_delta=a.args_delta + b.args_delta))
    return None


_request_step_id: ContextVar[int | None] = ContextVar("dbos_pydantic_ai_request_step_id", default=None)


@contextmanager
def attempt_of_request(first_step_id: int | None) -> Iterator[None]:
    """Inside a retry's step: its events belong to the request whose first attempt was step `first_step_id`, so
    readers see a second attempt of that request and supersede the failed one (None: the step is the request)."""
    token = _request_step_id.set(first_step_id)
    try:
        yield
    finally:
        _request_step_id.reset(token)


class _StepWriter:
    """Writes one model request attempt's events from inside its step, in order, without blocking the model.

    Events queue while a write is in flight; the next write takes the queue, merging consecutive deltas
    of one part, so a fast model costs fewer writes and a slow one gets one write per delta.
    """

    def __init__(self) -> None:
        step_id = _request_step_id.get() or DBOS.step_id
        assert step_id is not None, "model events are recorded from inside the model request step"
        self._step_id = step_id
        self._attempt = uuid.uuid4().hex
        self._pending: list[Any] = [_AttemptStart(step_id, self._attempt)]
        self._closed = False
        self._wake = asyncio.Event()
        self._wake.set()
        self._task = asyncio.create_task(self._run())

    def put(self, event: AgentStreamEvent) -> None:
        if self._pending and (merged := _merged(self._pending[-1], event)) is not None:
            self._pending[-1] = merged
        else:
            self._pending.append(event)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            traced = await self._traced()
            for item in batch:
                if not isinstance(item, _AttemptStart):
                    item = _ModelEvent(self._step_id, self._attempt, item)
                await DBOS.write_stream_async(STREAM_KEY, item)
                if traced is not None:
                    traced.wrote(_event_kind(item))
            if self._closed and not self._pending:
                return

    async def _traced(self) -> StreamTrace | None:
        """With tracing on, counts this step's writes as span events with their offsets (tracing.py)."""
        if not hasattr(self, "_trace"):
            self._trace = await stream_trace(STREAM_KEY)
        return self._trace

    async def close(self) -> None:
        """Write what is queued and wait for it."""
        self._closed = True
        self._wake.set()
        await self._task

    def abort(self) -> None:
        self._task.cancel()


def record_model_events(inner: EventStreamHandler[Any] | None) -> EventStreamHandler[Any]:
    """The model request step's handler: writes the model's events to the stream and passes them to `inner`."""

    async def handler(ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
        writer = _StepWriter()

        async def recorded() -> AsyncIterator[AgentStreamEvent]:
            async for event in events:
                writer.put(event)
                yield event

        tee = recorded()
        try:
            if inner is not None:
                await inner(ctx, tee)
            async for _ in tee:  # record what `inner` did not read
                pass
        except Exception:
            await writer.close()  # what the model streamed before failing, superseded by the retry
            raise
        except BaseException:
            writer.abort()
            raise
        await writer.close()

    return handler


def record_run_events(inner: EventStreamHandler[Any] | None) -> EventStreamHandler[Any]:
    """The run's handler in workflow code: writes each event but model part events (checkpointed), then `inner`."""

    async def handler(ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
        async def recorded() -> AsyncIterator[AgentStreamEvent]:
            async for event in events:
                if not isinstance(event, _PART_EVENTS):  # the model step wrote those
                    await DBOS.write_stream_async(STREAM_KEY, event)
                    await stream_write_recorded(STREAM_KEY, _event_kind(event))
                yield event

        tee = recorded()
        if inner is not None:
            await inner(ctx, tee)
        async for _ in tee:
            pass

    return handler


def _event_kind(item: Any) -> str:
    """What a stream write holds, for its span event: the event's `event_kind`, else its type's name."""
    inner = getattr(item, "event", item)
    return str(getattr(inner, "event_kind", type(inner).__name__))


@asynccontextmanager
async def recorded_run_async(enabled: bool) -> AsyncIterator[None]:
    """Around a run workflow's body: close the stream when the run ends, so readers stop at once."""
    if not enabled:
        yield
        return
    try:
        yield
    except Exception:
        await DBOS.close_stream_async(STREAM_KEY)
        raise
    await DBOS.close_stream_async(STREAM_KEY)


# --- Reading --------------------------------------------------------------------------------------


class _ReaderState:
    """Turns stream items into events; tracks each model step's current attempt to detect retries."""

    def __init__(self) -> None:
        # step id -> (current attempt, position of its start marker)
        self._attempts: dict[int, tuple[str, int]] = {}

    def event(self, position: int, item: Any) -> DurableStreamEvent | None:
        if isinstance(item, _AttemptStart):
            earlier = self._attempts.get(item.step_id)
            self._attempts[item.step_id] = (item.attempt, position)
            if earlier is None:
                return ModelRequestStarted(item.step_id)
            if earlier[0] == item.attempt:
                return None
            return Superseded(item.step_id, discard_from=earlier[1])
        if isinstance(item, _ModelEvent):
            current = self._attempts.get(item.step_id)
            if current is not None and current[0] != item.attempt:
                return None  # a late write of an attempt already superseded: never shown
            return item.event
        return item


def _default_database_url(database_url: str | None) -> str | None:
    from ._compat import dbos_launched

    if database_url is not None or dbos_launched():
        return database_url
    url = os.environ.get("DBOS_SYSTEM_DATABASE_URL")
    if url is None:
        raise UserError(
            "read_events() needs a database: launch DBOS in this process, or pass `database_url=` "
            "(or set DBOS_SYSTEM_DATABASE_URL) to read through a DBOSClient."
        )
    return url


def pushes_notifications(url: str) -> bool:
    """Whether a reader's `DBOSClient` on `url` should run DBOS's notification listener: on PostgreSQL it wakes
    live readers on each write (LISTEN/NOTIFY) instead of at their next poll; SQLite has no push."""
    return not url.startswith("sqlite")


def new_client(url: str, *, listen: bool = False) -> DBOSClient:
    """A connected `DBOSClient` on `url` (blocking), writing with the workers' serializer (typed JSON unless
    DBOS_PYDANTIC_AI_SERIALIZER); `listen`: with DBOS's LISTEN/NOTIFY listener (PostgreSQL). Unreachable, or a SQLite
    file that does not exist (DBOSClient would create an empty one): `DatabaseUnreachableError`, nothing left open.

    The client is made lazy and checked here: one whose first connection fails inside its constructor is never
    returned, so nobody could close the pool it already opened (seen under heavy load: SQLite handles left open). A
    client with a listener cannot be lazy: DBOS checks it itself, and the listener connects at once.
    """
    from ._serialization import serializer_for
    from .config import _sqlite_path, system_database_error

    sqlite_file = _sqlite_path(url)
    if sqlite_file is not None and not sqlite_file.exists():  # DBOSClient would create an empty file
        raise DatabaseUnreachableError(system_database_error(url, FileNotFoundError(str(sqlite_file))))
    try:
        client = DBOSClient(
            system_database_url=url, serializer=serializer_for(), lazy=not listen, use_listen_notify=listen
        )
    except Exception as error:
        raise DatabaseUnreachableError(system_database_error(url, error)) from error
    if not listen:
        try:
            client.check_connection()
        except Exception as error:
            client.destroy()
            raise DatabaseUnreachableError(system_database_error(url, error)) from error
    return client


async def _open_client(url: str) -> DBOSClient:
    """A `DBOSClient` on `url`, connected in a thread; never left open by a caller cancelled meanwhile.

    The thread runs on when the awaiting task is cancelled. Whichever side comes second (the thread
    handing over the client, or the caller giving up) destroys it, under one lock.
    """
    lock = threading.Lock()
    abandoned = False
    handed: list[DBOSClient] = []

    def connect() -> DBOSClient:
        client = new_client(url, listen=pushes_notifications(url))
        with lock:
            if not abandoned:
                handed.append(client)
                return client
        client.destroy()  # the reader was cancelled while this connected
        return client

    try:
        return await asyncio.to_thread(connect)
    except BaseException:
        with lock:
            abandoned = True
            orphans = list(handed)
        for client in orphans:  # connected, but the caller is gone: close it without blocking the loop
            threading.Thread(target=client.destroy, name="dbos-pai-close-client").start()
        raise


_IN_FLIGHT_GRACE_SECONDS = 10.0


def _close_client(client: DBOSClient) -> None:
    """Close a reader's client once its reads in flight are done.

    A reader cancelled while DBOS polls the stream leaves that poll running in a thread, with a connection checked
    out. Disposing of the pool under it would leave the connection open when the poll hands it back, so wait (a
    moment, boundedly) for every connection to be back first.
    """
    from ._compat import client_engine

    pool = client_engine(client).pool
    deadline = time.monotonic() + _IN_FLIGHT_GRACE_SECONDS
    while getattr(pool, "checkedout", lambda: 0)() > 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    client.destroy()


def _check_read_arguments(
    workflow_id: object, from_offset: object, polling_interval_sec: object, database_url: object, client: object
) -> None:
    if not isinstance(workflow_id, str) or not workflow_id:
        raise UserError(f"read_events() needs a workflow id (a non-empty string), not {workflow_id!r}.")
    if isinstance(from_offset, bool) or not isinstance(from_offset, int) or from_offset < 0:
        raise UserError(
            f"read_events(from_offset={from_offset!r}): pass an offset read_events() yielded (an int >= 0), "
            "or 0 to read from the start."
        )
    if (
        isinstance(polling_interval_sec, bool)
        or not isinstance(polling_interval_sec, int | float)
        or not math.isfinite(polling_interval_sec)
        or polling_interval_sec < 0.001
    ):
        raise UserError(
            f"read_events(polling_interval_sec={polling_interval_sec!r}): pass a number of seconds >= 0.001."
        )
    if database_url is not None and not isinstance(database_url, str):
        raise UserError(f"read_events(database_url={database_url!r}): pass a URL string.")
    if client is not None and database_url is not None:
        raise UserError("read_events(): pass either `client=` or `database_url=`, not both.")


def read_events(
    workflow_id: str,
    *,
    from_offset: int = 0,
    database_url: str | None = None,
    polling_interval_sec: float = DEFAULT_POLLING_INTERVAL_SEC,
    client: DBOSClient | None = None,
    trust_pickle: bool = False,
) -> AsyncIterator[tuple[int, DurableStreamEvent]]:
    """Follow a durable run's events live, as `(offset, event)` pairs; ends when the run ends.

    Args:
        workflow_id: The run's workflow id (a `DBOSAgent` created with `stream_events=True` records them).
        from_offset: Yield only the events after this offset: pass the last offset you saw to continue
            exactly after it. 0 (the default) reads from the start.
        database_url: Read through a `DBOSClient` on this system database, from a process that has not
            launched DBOS. Default: the launched DBOS of this process, else `DBOS_SYSTEM_DATABASE_URL`.
            The client is opened when reading starts and closed when it stops, however it stops.
        polling_interval_sec: How often to look for new events when the database does not push them.
        client: Read through this `DBOSClient` instead (it stays open: the caller owns it). For servers
            with many readers, which then share one client's connection pool.

    The arguments are checked at once (`UserError`); the database is opened when iteration starts.
    Events of a model request attempt that was retried are followed by a `Superseded` marker (see it).
    Reading from an offset reads the earlier items again, to know which attempts they belong to.
    Nothing is unpickled: events stored as typed JSON are decoded with the allowlist, and an event stored as pickle
    (by a worker configured with `serializer="pickle"`, or before the upgrade) is yielded as a `StoredAsPickle`
    marker, unless `trust_pickle=True` (only for a database whose writers you trust; see docs/serialization.md).
    """
    _check_read_arguments(workflow_id, from_offset, polling_interval_sec, database_url, client)
    url = None if client is not None else _default_database_url(database_url)
    return _read_events(workflow_id, from_offset, url, polling_interval_sec, client, trust_pickle)


async def _read_events(
    workflow_id: str,
    from_offset: int,
    url: str | None,
    polling_interval_sec: float,
    shared: DBOSClient | None,
    trust_pickle: bool = False,
) -> AsyncIterator[tuple[int, DurableStreamEvent]]:
    from ._safe_read import safe_read_stream

    owned: DBOSClient | None = None
    source: AsyncIterator[Any] | None = None
    try:
        if url is not None:
            owned = await _open_client(url)
        source = safe_read_stream(
            owned or shared,
            workflow_id,
            STREAM_KEY,
            polling_interval_sec=polling_interval_sec,
            trust_pickle=trust_pickle,
        )
        state = _ReaderState()
        position = 0
        async for item in source:
            position += 1
            event = state.event(position, item)
            if event is not None and position > from_offset:
                yield position, event
    finally:
        try:
            if source is not None:
                await source.aclose()  # type: ignore[attr-defined]
        finally:
            if owned is not None:
                # In a thread, which finishes even if this task is cancelled again while it waits.
                await asyncio.to_thread(_close_client, owned)


class EventLog:
    """A run's events as a UI should keep them: `Superseded` drops the abandoned attempt's events.

    Feed it the pairs of `read_events()` (from one or several connections) with `add()`; `responses()`
    assembles each model response's parts from the surviving events, `text()` the last response's text.
    """

    def __init__(self) -> None:
        self.events: list[tuple[int, DurableStreamEvent]] = []

    @property
    def offset(self) -> int:
        """The offset of the last event added (0 before any): where a reconnecting reader continues."""
        return self.events[-1][0] if self.events else 0

    def add(self, offset: int, event: DurableStreamEvent) -> None:
        if isinstance(event, Superseded):
            self.events = [(o, e) for o, e in self.events if o < event.discard_from]
        self.events.append((offset, event))

    def responses(self) -> list[list[ModelResponsePart]]:
        """The parts of each model response streamed so far (one list per model request, in order)."""
        responses: list[dict[int, ModelResponsePart]] = []
        for _, event in self.events:
            if isinstance(event, ModelRequestStarted | Superseded):
                responses.append({})
            elif isinstance(event, PartStartEvent | PartEndEvent) and responses:
                responses[-1][event.index] = event.part
            elif isinstance(event, PartDeltaEvent) and responses and event.index in responses[-1]:
                responses[-1][event.index] = event.delta.apply(responses[-1][event.index])  # type: ignore[arg-type]
        return [[parts[index] for index in sorted(parts)] for parts in responses]

    def text(self) -> str:
        """The text of the last model response that has any text."""
        for parts in reversed(self.responses()):
            text = "".join(part.content for part in parts if isinstance(part, TextPart))
            if text:
                return text
        return ""


# --- Durable run_stream_events() and run_stream() ---------------------------------------------------

StartRun = Callable[[], Awaitable[WorkflowHandleAsync[AgentRunResult[Any]]]]


class DurableRunEvents:
    """The async iterator of a durable `run_stream_events()`: the run's events, then an `AgentRunResultEvent`.

    Read from the run's DBOS stream, so they include `ModelRequestStarted` and `Superseded` markers.
    `workflow_id` names the run and `offset` is the last offset read: another process can continue
    with `read_events(workflow_id, from_offset=offset)`.
    """

    def __init__(self, handle: WorkflowHandleAsync[AgentRunResult[Any]], polling_interval_sec: float) -> None:
        self._handle = handle
        self.workflow_id: str = handle.get_workflow_id()
        self.offset = 0
        self.result: AgentRunResult[Any] | None = None
        self._events = read_events(self.workflow_id, polling_interval_sec=polling_interval_sec)
        self._done = False

    def __aiter__(self) -> DurableRunEvents:
        return self

    async def __anext__(self) -> DurableStreamEvent | AgentRunResultEvent[Any]:
        if self._done:
            raise StopAsyncIteration
        try:
            self.offset, event = await anext(self._events)
            return event
        except StopAsyncIteration:
            pass
        self._done = True
        self.result = await self._handle.get_result()
        return AgentRunResultEvent(self.result)

    async def aclose(self) -> None:
        """Stop reading. The run itself goes on."""
        self._done = True
        await self._events.aclose()  # type: ignore[attr-defined]


class _DurableRunEventsContext:
    def __init__(self, start: StartRun, polling_interval_sec: float) -> None:
        self._start = start
        self._polling_interval_sec = polling_interval_sec
        self._events: DurableRunEvents | None = None

    async def __aenter__(self) -> DurableRunEvents:
        self._events = DurableRunEvents(await self._start(), self._polling_interval_sec)
        return self._events

    async def __aexit__(self, *exc_info: object) -> None:
        if self._events is not None:
            await self._events.aclose()


def durable_run_events(start: StartRun, polling_interval_sec: float = DEFAULT_POLLING_INTERVAL_SEC) -> Any:
    """`async with` it: starts the run's workflow, then yields its `DurableRunEvents`."""
    return _DurableRunEventsContext(start, polling_interval_sec)


class DurableStreamedRun:
    """What a durable `run_stream()` yields: the run's text and events, read from its DBOS stream.

    Unlike pydantic-ai's `StreamedRunResult`, the run is the whole durable run (it does not stop at the
    first output, and its tools all run); `stream_text()` follows the text of the latest model response.
    """

    def __init__(self, handle: WorkflowHandleAsync[AgentRunResult[Any]], polling_interval_sec: float) -> None:
        self._handle = handle
        self._polling_interval_sec = polling_interval_sec
        self.workflow_id: str = handle.get_workflow_id()

    def stream_events(self, *, from_offset: int = 0) -> AsyncIterator[tuple[int, DurableStreamEvent]]:
        """The run's `(offset, event)` pairs: `read_events()` on this run."""
        return read_events(self.workflow_id, from_offset=from_offset, polling_interval_sec=self._polling_interval_sec)

    async def stream_text(self, *, delta: bool = False) -> AsyncIterator[str]:
        """The text of the latest model response, complete so far, each time it grows.

        A retried request restarts its text: the next value is shorter, which is why deltas are not offered.
        """
        if delta:
            raise UserError(
                "A durable run_stream() yields cumulative text only: a retried model request replaces text "
                "already streamed, which deltas cannot take back. Use stream_events() to handle `Superseded`."
            )
        parts: dict[int, ModelResponsePart] = {}  # the latest response's parts
        last = ""
        async for _, event in self.stream_events():
            if isinstance(event, ModelRequestStarted | Superseded):
                parts = {}  # a new response, or a new attempt of this one
            elif isinstance(event, PartStartEvent | PartEndEvent):
                parts[event.index] = event.part
            elif isinstance(event, PartDeltaEvent) and event.index in parts:
                parts[event.index] = event.delta.apply(parts[event.index])  # type: ignore[arg-type]
            else:
                continue
            text = "".join(part.content for _, part in sorted(parts.items()) if isinstance(part, TextPart))
            if text and text != last:
                last = text
                yield text

    async def get_result(self) -> AgentRunResult[Any]:
        """Wait for the run to finish and return its result."""
        return await self._handle.get_result()

    async def get_output(self) -> Any:
        """Wait for the run to finish and return its output."""
        return (await self.get_result()).output


@asynccontextmanager
async def durable_streamed_run(
    start: StartRun, polling_interval_sec: float = DEFAULT_POLLING_INTERVAL_SEC
) -> AsyncIterator[DurableStreamedRun]:
    """`async with` it: starts the run's workflow, then yields its `DurableStreamedRun`."""
    yield DurableStreamedRun(await start(), polling_interval_sec)
