"""Reading stored values without unpickling them: for the console, `approvals`, `tail` and `read_events()`.

DBOS's own readers (`list_workflows`, `list_workflow_steps`, `get_event`, `read_stream`) unpickle every row marked
`py_pickle`, whatever serializer they are given, and unpickling runs code the row names. These readers fetch the
stored text with its `serialization` column instead: typed JSON rows are decoded with the allowlist (a type this
process has not registered comes back as a `StoredValue`, its JSON), portable JSON rows as JSON, and a pickled row
comes back as `StoredAsPickle` ("stored as pickle, not displayed") unless the caller passes `trust_pickle=True`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import pickle
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import sqlalchemy as sa

from ._compat import read_stream_rows, stream_wakeup, system_tables
from .names import JSON_SERIALIZATION
from .serializer import StoredAsPickle, StoredValue, default_json_serializer

__all__ = ["decode_stored", "safe_get_event", "safe_list_workflow_steps", "safe_list_workflows", "safe_read_stream"]

_PICKLE = "py_pickle"
_PORTABLE = "portable_json"
_STREAM_BATCH = 100
_ACTIVE = ("PENDING", "ENQUEUED", "DELAYED")


def decode_stored(text: str | None, serialization: str | None, *, trust_pickle: bool = False) -> Any:
    """One stored value, decoded without running code unless `trust_pickle` (see the module docstring)."""
    if text is None:
        return None
    if serialization == JSON_SERIALIZATION:
        return default_json_serializer().read(text)
    if serialization == _PORTABLE:
        return json.loads(text)
    if serialization in (_PICKLE, None):  # None: written before DBOS recorded the serialization, by pickle
        if not trust_pickle:
            return StoredAsPickle()
        return pickle.loads(base64.b64decode(text))
    return StoredValue(f"serialization {serialization}", text)


def _decode_inputs(text: str | None, serialization: str | None, trust_pickle: bool) -> Any:
    value = decode_stored(text, serialization, trust_pickle=trust_pickle)
    if serialization == _PORTABLE and isinstance(value, dict):  # DBOS's portable form of args and kwargs
        return {"args": tuple(value.get("positionalArgs") or ()), "kwargs": value.get("namedArgs") or {}}
    return value


def safe_list_workflows(
    client: Any, *, workflow_ids: list[str], load_input: bool = False, trust_pickle: bool = False
) -> list[Any]:
    """`client.list_workflows(workflow_ids=..., load_output=True)`, with inputs, outputs and errors decoded safely."""
    statuses = client.list_workflows(workflow_ids=workflow_ids, load_input=False, load_output=False)
    if not statuses:
        return statuses
    engine, tables = system_tables(client)
    ws, wi, wo = tables.workflow_status, tables.workflow_input, tables.workflow_output
    columns = [
        ws.c.workflow_uuid,
        ws.c.serialization,
        sa.func.coalesce(wo.c.output, ws.c.output),
        sa.func.coalesce(wo.c.error, ws.c.error),
        sa.func.coalesce(wi.c.inputs, ws.c.inputs) if load_input else sa.null(),
    ]
    joined = ws.outerjoin(wo, wo.c.workflow_uuid == ws.c.workflow_uuid).outerjoin(
        wi, wi.c.workflow_uuid == ws.c.workflow_uuid
    )
    query = sa.select(*columns).select_from(joined).where(ws.c.workflow_uuid.in_([s.workflow_id for s in statuses]))
    with engine.connect() as connection:
        rows = {row[0]: row for row in connection.execute(query)}
    for status in statuses:
        row = rows.get(status.workflow_id)
        if row is None:
            continue
        serialization, output, error, inputs = row[1], row[2], row[3], row[4]
        status.output = decode_stored(output, serialization, trust_pickle=trust_pickle)
        status.error = decode_stored(error, serialization, trust_pickle=trust_pickle)
        if load_input:
            status.input = _decode_inputs(inputs, serialization, trust_pickle)
    return statuses


def safe_list_workflow_steps(client: Any, workflow_id: str, *, trust_pickle: bool = False) -> list[Any]:
    """`client.list_workflow_steps(workflow_id)`, with each step's output and error decoded safely."""
    steps = client.list_workflow_steps(workflow_id, load_output=False)
    if not steps:
        return steps
    engine, tables = system_tables(client)
    oo = tables.operation_outputs
    query = sa.select(oo.c.function_id, oo.c.output, oo.c.error, oo.c.serialization).where(
        oo.c.workflow_uuid == workflow_id
    )
    with engine.connect() as connection:
        rows = {row[0]: row for row in connection.execute(query)}
    for step in steps:
        row = rows.get(step["function_id"])
        if row is not None:
            step["output"] = decode_stored(row[1], row[3], trust_pickle=trust_pickle)
            step["error"] = decode_stored(row[2], row[3], trust_pickle=trust_pickle)
    return steps


def safe_get_event(client: Any, workflow_id: str, key: str, *, trust_pickle: bool = False) -> Any:
    """The current value of a workflow's event `key` (None when unset), decoded safely. Does not wait."""
    engine, tables = system_tables(client)
    events = tables.workflow_events
    query = sa.select(events.c.value, events.c.serialization).where(
        events.c.workflow_uuid == workflow_id, events.c.key == key
    )
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else decode_stored(row[0], row[1], trust_pickle=trust_pickle)


def _is_close_marker(text: str | None, serialization: str | None) -> bool:
    """DBOS closes a stream with a portable-JSON sentinel value."""
    if serialization != _PORTABLE or text is None:
        return False
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return value == "__DBOS_STREAM_CLOSED__"


T = TypeVar("T")


async def _read_to_the_end(read: asyncio.Future[T]) -> T:
    """`await read` (a read in a thread); if cancelled meanwhile, still wait for the thread to finish before
    propagating: it holds a pooled connection, and the caller closes the client's pool right after. A pool disposed
    under a read that has not checked out its connection yet would open one that nobody closes."""
    try:
        return await asyncio.shield(read)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await read
        raise


async def safe_read_stream(
    client: Any, workflow_id: str, key: str, *, polling_interval_sec: float, trust_pickle: bool = False
) -> AsyncIterator[Any]:
    """A workflow's stream values in order, decoded safely; ends when the stream is closed or the workflow ended
    and every value written is read. `client` None reads through the launched DBOS.

    Woken as DBOS's own `read_stream` is: on PostgreSQL, DBOS's notification listener (the launched DBOS's, or the
    client's when it was made with `use_listen_notify=True`) signals each write, so a new value is read within
    milliseconds; `polling_interval_sec` only bounds the wait (SQLite, a client without a listener, a lost
    notification, the workflow's end, which notifies nothing). Only the decoding differs: rows are decoded here.
    """
    from dbos import error as dbos_error

    wakeup = stream_wakeup(client, workflow_id, key)  # before the first read, so no write is missed
    try:
        offset = 0
        final_read = False
        while True:
            wakeup.event.clear()  # before reading: a write after the read leaves it set and the wait returns at once
            status, values = await _read_to_the_end(
                asyncio.ensure_future(
                    asyncio.to_thread(read_stream_rows, client, workflow_id, key, offset, _STREAM_BATCH)
                )
            )
            if status is None:
                raise dbos_error.DBOSNonExistentWorkflowError("target", workflow_id)
            if values:
                for text, serialization in values:
                    if _is_close_marker(text, serialization):
                        return
                    yield decode_stored(text, serialization, trust_pickle=trust_pickle)
                    offset += 1
                continue
            if final_read:
                return
            if status not in _ACTIVE:
                final_read = True  # drain what was written before the workflow ended
                continue
            await wakeup.event.wait_async(timeout=polling_interval_sec)
    finally:
        wakeup.close()
