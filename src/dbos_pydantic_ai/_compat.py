"""Every use of DBOS's and pydantic-ai's private internals, in one place.

Checked against dbos 3.4.0 and pydantic-ai-slim 2.68.0 (`pyproject.toml` pins `dbos<4` and `pydantic-ai-slim<3`).
Each function says what it needs and why no public API does it; when one of these projects changes, this module is
the one to read. Imports happen inside the functions, so nothing here is loaded before it is needed, except
pydantic-ai's `UNSET` marker, which a signature needs at import time, and DBOS's `Serializer` base class, which
`JSONSerializer` subclasses at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import sqlalchemy as sa

# `DBOSConfig["serializer"]` and `DBOSClient(serializer=)` take an instance of this interface (`serialize(data) ->
# str`, `deserialize(str)`, `name()`), and DBOS 3.4 exports no public alias for it: `JSONSerializer` subclasses it.
from dbos._serialization import Serializer
from pydantic_ai._utils import UNSET, Unset  # `override(model=UNSET)`: WrapperAgent.override's own default and type

T = TypeVar("T")

__all__ = [
    "UNSET",
    "LaunchedSystemDatabase",
    "Serializer",
    "StreamWakeup",
    "Unset",
    "active_workflow_ids",
    "check_no_nested_sync_run",
    "client_engine",
    "client_status_table",
    "client_step_outputs",
    "current_function_id",
    "dbos_instance",
    "dbos_launched",
    "dbos_tracing_enabled",
    "last_stream_offset",
    "launched_system_database",
    "mcp_explicit_id",
    "pickle_serializer",
    "pydantic_ai_instrumented",
    "read_stream_rows",
    "recovery_attempts",
    "reenqueue_pending_runs",
    "run_on_dbos_loop",
    "stop_dequeuing",
    "stream_offset_of_step",
    "stream_wakeup",
    "system_tables",
    "wake_parked_runs",
    "with_dbos_db_retry",
]


# --- DBOS ------------------------------------------------------------------------------------------


def dbos_launched() -> bool:
    """Whether `DBOS.launch()` has run in this process. DBOS has no public flag for it (`DBOS.workflow_id` is None
    outside workflows either way)."""
    from dbos._dbos import _dbos_global_instance

    return _dbos_global_instance is not None and _dbos_global_instance._launched


@dataclass(frozen=True)
class LaunchedSystemDatabase:
    """The launched DBOS's system database: its engine (DBOS's own pool), schema and serializer.

    `key` identifies that DBOS instance (a new launch after `DBOS.destroy()` has a new one), for caches held weakly.
    """

    key: Any
    engine: sa.Engine
    schema: str | None
    serializer: Serializer


def launched_system_database() -> LaunchedSystemDatabase:
    """The launched DBOS's system database. Public `DBOSClient`s open a pool of their own; a worker uses DBOS's."""
    from dbos._dbos import _get_dbos_instance

    dbos = _get_dbos_instance()
    sys_db = dbos._sys_db
    return LaunchedSystemDatabase(sys_db, sys_db.engine, sys_db.schema, dbos._serializer)


def client_status_table(client: Any) -> tuple[sa.Engine, sa.Table]:
    """A `DBOSClient`'s engine and DBOS's `workflow_status` table. The console pages and filters runs with one SQL
    query over it (keyset pages, name suffixes, text search); `list_workflows` cannot express that."""
    sys_db = client._sys_db
    return sys_db.engine, sys_db.tables.workflow_status


def client_engine(client: Any) -> sa.Engine:
    """A `DBOSClient`'s engine, to see whether a read in flight still holds a connection before closing it."""
    engine: sa.Engine = client._sys_db.engine
    return engine


def system_tables(client: Any | None) -> tuple[sa.Engine, Any]:
    """The engine and DBOS's table definitions (`workflow_status`, `workflow_input`, `workflow_output`,
    `operation_outputs`, `workflow_events`, `streams`) of a `DBOSClient`, or of the launched DBOS for None.

    Readers that must not unpickle (console, `approvals`, `tail`, `read_events`) read the stored text and its
    `serialization` column themselves: DBOS's own readers unpickle every row marked `py_pickle`, whatever serializer
    they are given."""
    sys_db = _system_database(client)
    return sys_db.engine, sys_db.tables


def pickle_serializer() -> Serializer:
    """DBOS's own serializer (pickle), for applications that choose it. DBOS exports it under no public name."""
    from dbos._serialization import DefaultSerializer

    return DefaultSerializer()


def _system_database(client: Any | None) -> Any:
    if client is None:
        from dbos._dbos import _get_dbos_instance

        return _get_dbos_instance()._sys_db
    return client._sys_db


@dataclass(frozen=True)
class StreamWakeup:
    """A stream reader's wake-up: `event` is set when the stream may have new values (`clear()`, then
    `await wait_async(timeout)`); call `close()` once, when the reader stops."""

    event: Any
    close: Callable[[], None]


def stream_wakeup(client: Any | None, workflow_id: str, key: str) -> StreamWakeup:
    """Register with DBOS's notification listener for writes to a workflow's stream, as DBOS's own `read_stream`
    does: on PostgreSQL the listener (of the launched DBOS, or of a `DBOSClient(use_listen_notify=True)`) sets the
    event on LISTEN/NOTIFY, so a reader sees a new value in milliseconds instead of at its next poll. The safe reader
    (`_safe_read.safe_read_stream`) needs it because it reads the rows itself: DBOS's `read_stream` unpickles rows
    marked `py_pickle`, and the wake-up is not public API. Register before reading, so no write is missed."""
    sys_db = _system_database(client)
    event, payload = sys_db.register_stream_listener(workflow_id, key)
    return StreamWakeup(event, lambda: sys_db.unregister_stream_listener(payload, event))


def read_stream_rows(
    client: Any | None, workflow_id: str, key: str, offset: int, limit: int
) -> tuple[str | None, list[tuple[str | None, str | None]]]:
    """The workflow's status and up to `limit` consecutive stored stream values from `offset`, as (text,
    serialization) pairs, not deserialized: DBOS's `read_stream_values` (one statement, under its polling limiter
    and connection retries), which DBOS's own readers use before they unpickle `py_pickle` rows."""
    status, values = _system_database(client).read_stream_values(workflow_id, key, offset, limit)
    return status, list(values)


def client_step_outputs(client: Any) -> tuple[sa.Table, Callable[[str | None, str | None], Any]]:
    """A `DBOSClient`'s `operation_outputs` table and a function that decodes a stored step output (text and its
    `serialization` column). The metrics endpoint reads new model steps in bulk, by completion time; DBOS's
    `list_workflow_steps` reads one run at a time. Decoded without unpickling (`_safe_read.decode_stored`): a row
    stored as pickle comes back as a `StoredAsPickle` marker, which the metrics skip."""
    from ._safe_read import decode_stored

    sys_db = client._sys_db

    def decode(text: str | None, serialization: str | None) -> Any:
        return decode_stored(text, serialization)

    return sys_db.tables.operation_outputs, decode


def recovery_attempts(status: Any) -> int | None:
    """How many times a worker took the run up (2 or more: it was recovered). DBOS 3.4 marks the field internal."""
    attempts = getattr(status, "recovery_attempts", None)
    return attempts if isinstance(attempts, int) else None


def with_dbos_db_retry(func: Callable[[], T]) -> T:
    """`func()` (database work of ours in a worker), retried as DBOS retries its own: a lost connection blocks it
    until the database is back, instead of failing the run."""
    from dbos._dbos import _get_dbos_instance
    from dbos._sys_db import db_retry

    return db_retry(sys_db=_get_dbos_instance()._sys_db)(func)()


def reenqueue_pending_runs(executor_id: str) -> list[str]:
    """Hand the PENDING runs of `executor_id` (this application and version) back to their queues, through DBOS's own
    recovery path, and return the ids that *this call* re-enqueued.

    DBOS's `_recover_pending_workflows` does the same but returns every id it saw, including those another worker
    re-enqueued a moment earlier; failover records a takeover only for the runs it really moved. Each re-enqueue is
    one atomic `PENDING -> ENQUEUED` update guarded by the executor id, so concurrent callers move each run once, and
    the queue's `ENQUEUED -> PENDING` dequeue admits one runner. Public `resume_workflow` would also clear the run's
    deduplication id and deadline, and move a queued run off its queue.
    """
    from dbos._dbos import _get_dbos_instance
    from dbos._shard_keys import bind_shard_keys
    from dbos._utils import INTERNAL_QUEUE_NAME, GlobalParams

    sys_db = _get_dbos_instance()._sys_db
    moved = []
    for pending in sys_db.get_pending_workflows(executor_id, GlobalParams.app_version):
        with bind_shard_keys({pending.workflow_id: pending.shard_key}):
            if sys_db.reenqueue_for_recovery(pending.workflow_id, [executor_id], INTERNAL_QUEUE_NAME):
                moved.append(pending.workflow_id)
    return moved


def wake_parked_runs(workflow_ids: list[str], executor_id: str) -> list[str]:
    """Hand parked runs (PENDING, owned by `executor_id`, executing nowhere) back to their queues, and return the ids
    this call moved: the update of DBOS 3.4's `reenqueue_for_recovery` (`PENDING -> ENQUEUED` guarded by the
    executor id, on the run's own queue or DBOS's internal one), for many runs in one statement.

    One difference: it takes back one dispatch from `recovery_attempts`, since the queue's dequeue counts one more.
    A parked run that wakes was not recovered from a failure, and DBOS dead-letters a run after 100 dispatches, which
    a run deciding a hundred approvals one by one would otherwise reach."""
    import sqlalchemy as sa
    from dbos._dbos import _get_dbos_instance
    from dbos._utils import INTERNAL_QUEUE_NAME

    if not workflow_ids:
        return []
    sys_db = _get_dbos_instance()._sys_db
    status = sys_db.tables.workflow_status
    update = (
        sa.update(status)
        .where(
            status.c.workflow_uuid.in_(workflow_ids),
            status.c.status == "PENDING",
            status.c.executor_id == executor_id,
        )
        .values(
            status="ENQUEUED",
            owner_xid=None,
            started_at_epoch_ms=None,
            updated_at=sys_db._now_ms_sql(),
            queue_name=sa.func.coalesce(status.c.queue_name, INTERNAL_QUEUE_NAME),
            recovery_attempts=sa.case(
                (status.c.recovery_attempts > 0, status.c.recovery_attempts - 1), else_=status.c.recovery_attempts
            ),
        )
        .returning(status.c.workflow_uuid)
    )
    with sys_db.engine.begin() as connection:
        return [row[0] for row in connection.execute(update)]


# --- Tracing (tracing.py) ----------------------------------------------------------------------------


def dbos_tracing_enabled() -> bool:
    """Whether DBOS emits its workflow and step spans (`enable_otlp`). DBOS keeps the flag on its tracer only."""
    from dbos._tracer import dbos_tracer

    return not dbos_tracer.disable_otlp


def current_function_id() -> int | None:
    """The id of the step the calling workflow code ran last (DBOS's context counter), or None outside a workflow.
    `DBOS.step_id` answers only inside a step; a replayed step's id is needed after it returned."""
    from dbos._context import get_local_dbos_context

    ctx = get_local_dbos_context()
    if ctx is None or not ctx.is_within_workflow():
        return None
    return ctx.function_id


def last_stream_offset(workflow_id: str, key: str) -> int:
    """The offset of the last value in a run's stream (-1 when empty), read with the launched DBOS's engine. DBOS's
    `write_stream` does not return the offset it wrote at; a traced step counts its writes from here."""
    import sqlalchemy as sa
    from dbos._dbos import _get_dbos_instance

    sys_db = _get_dbos_instance()._sys_db
    streams = sys_db.tables.streams
    query = sa.select(sa.func.max(streams.c.offset)).where(streams.c.workflow_uuid == workflow_id, streams.c.key == key)
    with sys_db.engine.connect() as connection:
        last = connection.execute(query).scalar()
    return -1 if last is None else int(last)


def stream_offset_of_step(workflow_id: str, key: str, function_id: int) -> int | None:
    """The offset of the value a checkpointed `write_stream` from workflow code wrote at step `function_id`."""
    import sqlalchemy as sa
    from dbos._dbos import _get_dbos_instance

    sys_db = _get_dbos_instance()._sys_db
    streams = sys_db.tables.streams
    query = sa.select(sa.func.min(streams.c.offset)).where(
        streams.c.workflow_uuid == workflow_id, streams.c.key == key, streams.c.function_id == function_id
    )
    with sys_db.engine.connect() as connection:
        offset = connection.execute(query).scalar()
    return None if offset is None else int(offset)


def pydantic_ai_instrumented() -> bool:
    """Whether pydantic-ai instruments every agent already (`Agent.instrument_all()`, e.g. by Logfire). pydantic-ai
    keeps it in a private class variable, with no getter."""
    from pydantic_ai import Agent

    return Agent._instrument_default is not False


# --- pydantic-ai -------------------------------------------------------------------------------------


def check_no_nested_sync_run() -> None:
    """Refuse a sync run from inside a sync tool or callback of a running agent, as pydantic-ai's own `run_sync`
    does (it can deadlock); raises pydantic-ai's `UserError`."""
    from pydantic_ai import _utils

    _utils.check_no_nested_sync_run()


def mcp_explicit_id(toolset: Any) -> str | None:
    """The `id=` an MCP toolset was created with; `MCPToolset.id` falls back to a generated one, which would not be
    stable across restarts."""
    return getattr(toolset, "_explicit_id", None) or None


# --- DBOS: the worker command (worker.py) -----------------------------------------------------------
# A worker that is told to stop (SIGTERM) must stop taking runs from its queues at once, let the runs it has started
# finish within a grace period, hand the rest back to their queues, and only then tear DBOS down. `DBOS.destroy(
# workflow_completion_timeout_sec=...)` does the first two in one call but tears down right after, leaving no moment
# for the hand-off; these functions split it at that moment (checked against dbos 3.4.0, `DBOS._destroy`).


def dbos_instance() -> object | None:
    """This process's DBOS instance, or None: a new one after `DBOS.destroy()` and a new `DBOS(config=...)`. A fleet
    lease belongs to the DBOS it was started with (a test process launches many). Not None also means `DBOS(config=)`
    was called: DBOS keeps the first config of a process, so the worker refuses a module that configured DBOS."""
    from dbos._dbos import _dbos_global_instance

    return _dbos_global_instance


def stop_dequeuing(join_timeout: float = 15.0) -> None:
    """Stop DBOS's background pollers (queue threads, startup recovery, schedules, event receivers) without touching
    the runs already started, and wait until the queue threads have ended, so no run is dequeued after this returns.

    It is the first step of `DBOS._destroy`: set every event of `background_thread_stop_events`. The notification
    listener, the executor, the background event loop and the workflow-timeout sweep keep running, so started runs
    go on (receive messages, sleep, finish). DBOS names its queue threads `queue-worker-<queue>`; they exit at their
    next stop check (a dequeue in progress dispatches what it claimed first).
    """
    import threading

    from dbos._dbos import _get_dbos_instance

    dbos = _get_dbos_instance()
    for event in list(dbos.background_thread_stop_events):
        event.set()
    for thread in threading.enumerate():
        if thread.name.startswith("queue-worker-") and thread is not threading.current_thread():
            thread.join(timeout=join_timeout)


def active_workflow_ids() -> list[str]:
    """The workflows executing in this process now: DBOS's own count of active workflows (`_active_workflows_set`),
    the one `DBOS.destroy(workflow_completion_timeout_sec=...)` waits on. No public API lists them."""
    from dbos._dbos import _dbos_global_instance

    if _dbos_global_instance is None or not _dbos_global_instance._launched:
        return []
    ids: list[str] = _dbos_global_instance._active_workflows_set.activeList()
    return ids


def run_on_dbos_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine `make()` on DBOS's own event loop, in the caller's context (contextvars: DBOS's context, an
    OpenTelemetry span), and block until it returns. Call it from a thread, never from DBOS's loop.

    Started there, an async workflow is a task on that loop, as a dequeued or recovered run is. `DBOS.start_workflow`
    instead gives every async workflow an executor thread that blocks for the run's whole life, waiting for a human
    included: one OS thread and about 36 KB per waiting run (bench/README.md, "Runs waiting for a human"). DBOS
    exposes its loop only as the private `_background_event_loop`.
    """
    import asyncio
    import contextvars

    from dbos._dbos import _get_dbos_instance

    context = contextvars.copy_context()

    async def in_callers_context() -> T:
        return await asyncio.create_task(context.run(make), context=context)

    result: T = _get_dbos_instance()._background_event_loop.submit_coroutine(in_callers_context())
    return result
