"""Inside a run with `approvals="wait"`: publish the pending calls, wait durably for decisions, carry them out.

The run publishes its pending calls as a DBOS event and waits with `DBOS.recv`, both checkpointed: a worker killed
while waiting is recovered waiting, and a decision sent while no worker runs is kept until the run reads it. It acts
on a message only if the decisions table holds its row (checked in a recorded step). At the deadline it records
`timed_out` for the calls still open, in a recorded step, with `ON CONFLICT DO NOTHING`: a human decision whose row
got in first wins and is carried out (its message is already committed), and one that comes second is refused by the
deciding side (`approvals.py`). So a decision and the timeout never both win.

With `park_after`, a run that has waited that long without a decision leaves memory (`_parking.py`) and is replayed
to this wait when a decision or its deadline arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from typing import Any

from dbos import DBOS
from pydantic_ai.exceptions import ToolFailed
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, ToolApproved, ToolDenied
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ._approval_table import TIMED_OUT, launched_decisions, wait_rows
from ._compat import with_dbos_db_retry
from ._parking import park
from .approvals import PendingKind, approval_args_digest
from .names import (
    APPROVALS_EVENT,
    DECISION_TOPIC,
    DECISIONS_TABLE,
    approvals_check_step,
    approvals_timeout_step,
    approvals_wait_step,
)
from .tracing import announce_execution, approval_event, execution_parked

__all__ = ["wait_for_decisions"]

# Without a timeout the run waits in chunks (each a recorded `DBOS.recv`), so no timer is ever huge.
_INDEFINITE_WAIT_CHUNK_SECONDS = 7 * 24 * 3600.0


def _wait_started() -> dict[str, Any]:
    """Recorded as a step: when the wait began, and its step id, which names the wait within the workflow."""
    return {"at": time.time(), "wait_id": DBOS.step_id}


def _pending_entry(call: ToolCallPart, kind: PendingKind, metadata: dict[str, Any] | None) -> dict[str, Any]:
    args = call.args_as_dict()
    return {
        "tool_call_id": call.tool_call_id,
        "tool_name": call.tool_name,
        "args": args,
        "args_digest": approval_args_digest(call.tool_name, args),
        "kind": kind,
        "metadata": metadata,
    }


def _message_problem(message: Any, wait_id: int, pending: dict[str, dict[str, Any]]) -> str | None:
    """Why a received message is not a valid decision for this wait, or None when it is."""
    if not isinstance(message, dict):
        return f"not a decision: {type(message).__name__}"
    if message.get("wait_id") != wait_id:
        return f"for wait {message.get('wait_id')!r}, not the current wait {wait_id}"
    call = pending.get(message.get("tool_call_id"))  # type: ignore[arg-type]
    if call is None:
        return f"no pending call {message.get('tool_call_id')!r}"
    if message.get("args_digest") != call["args_digest"]:
        return "made against different arguments"
    decision = message.get("decision")
    expected = ("approve", "deny") if call["kind"] == "approval" else ("result",)
    if decision not in expected:
        return f"decision {decision!r} does not answer a call of kind {call['kind']!r}"
    return None


def _unrecorded_problem(message: dict[str, Any], row: dict[str, Any] | None) -> str | None:
    """Why a well-formed decision is not the one the decisions table holds for its call, or None when it is."""
    if row is None:
        return f"no such decision in {DECISIONS_TABLE}"
    decided_at = message.get("decided_at")
    decided_at_ms = int(decided_at * 1000) if isinstance(decided_at, int | float) else None
    if (row["decision"], row["args_digest"], row["decided_at_epoch_ms"]) != (
        message["decision"],
        message["args_digest"],
        decided_at_ms,
    ):
        return f"not the decision {DECISIONS_TABLE} holds for this call ({row['decision']})"
    return None


async def _receive(
    wait: float, park_after: float | None, workflow_id: str, wait_id: int, pending: Collection[str]
) -> tuple[bool, Any]:
    """`DBOS.recv` of the next decision message; (False, None) when the run should park instead.

    It parks when `park_after` seconds pass and the decisions table holds no row for a pending call (the waker's
    own test, so a woken run never parks before it has read the decision that woke it). The recv is cancelled
    then, before it consumed anything: its recorded timeout (a sleep step) stays, and the replay after the wake
    calls the same recv again, which finds the message at once.
    """
    if park_after is None or wait <= park_after:
        return True, await DBOS.recv_async(DECISION_TOPIC, timeout_seconds=wait)
    receiving = asyncio.ensure_future(DBOS.recv_async(DECISION_TOPIC, timeout_seconds=wait))
    try:
        await asyncio.wait({receiving}, timeout=park_after)
        if not receiving.done():
            rows = await asyncio.to_thread(with_dbos_db_retry, lambda: _wait_rows(workflow_id, wait_id))
            if any(call_id in rows for call_id in pending):
                return True, await receiving  # a decision is committed: its message is there to receive
    finally:
        if not receiving.done():
            receiving.cancel()
            await asyncio.wait({receiving})
    if receiving.cancelled():
        return False, None
    return True, receiving.result()  # it returned while being cancelled: use it


def _wait_rows(workflow_id: str, wait_id: int) -> dict[str, dict[str, Any]]:
    sys_db, table = launched_decisions()
    with sys_db.engine.connect() as connection:
        return wait_rows(connection, table, workflow_id, wait_id)


async def wait_for_decisions(
    agent_name: str, requests: DeferredToolRequests, *, timeout: float | None, park_after: float | None = None
) -> DeferredToolResults:
    """Publish `requests`, wait durably until each call is decided (or the timeout passes), return the results.

    Runs in workflow code: every DBOS call here is checkpointed, so a recovered run replays the
    decisions it had received and waits on for the rest. With `park_after`, a wait that lasts that long
    without a decision raises `RunParked` (see `_parking.py`).
    """
    workflow_id = DBOS.workflow_id
    assert workflow_id is not None, "approvals wait only inside a workflow"
    started = await DBOS.run_step_async({"name": approvals_wait_step(agent_name)}, _wait_started)
    wait_id: int = started["wait_id"]
    deadline = None if timeout is None else started["at"] + timeout
    entries = [
        _pending_entry(call, requests.kind(call.tool_call_id), requests.metadata.get(call.tool_call_id))
        for call in [*requests.approvals, *requests.calls]
    ]
    pending = {entry["tool_call_id"]: entry for entry in entries}
    state: dict[str, Any] = {
        "version": 1,
        "status": "waiting",
        "agent_name": agent_name,
        "workflow_id": workflow_id,
        "wait_id": wait_id,
        "requested_at": started["at"],
        "deadline": deadline,
        "calls": entries,
        "decided": {},
        "ignored": [],
    }
    await DBOS.set_event_async(APPROVALS_EVENT, state)
    approval_event("requested", wait_id, started["at"], tools=[e["tool_name"] for e in entries], deadline=deadline)

    results = DeferredToolResults()
    # Once the deadline has passed: every row of this wait, as the timeout step read them back.
    rows_at_deadline: dict[str, dict[str, Any]] | None = None
    while pending:
        # The timeout of a live recv is recorded by DBOS at its first wait; a replayed recv returns its message.
        if deadline is None or rows_at_deadline is not None:
            wait = _INDEFINITE_WAIT_CHUNK_SECONDS
        else:
            wait = max(0.0, deadline - time.time())
        received, message = await _receive(wait, park_after, workflow_id, wait_id, pending)
        if not received:
            approval_event("parked", wait_id, started["at"], at=time.time())
            execution_parked(workflow_id)
            raise park(workflow_id, wait_id, frozenset(pending), deadline if rows_at_deadline is None else None)
        if message is None:
            if deadline is None or rows_at_deadline is not None:
                continue
            assert timeout is not None
            rows_at_deadline = await DBOS.run_step_async(
                {"name": approvals_timeout_step(agent_name)},
                _time_out_open_calls,
                workflow_id,
                wait_id,
                [(call_id, entry["args_digest"]) for call_id, entry in pending.items()],
            )
            reason = f"No decision on this tool call arrived within {timeout:g} seconds; it was not run."
            for call_id in list(pending):
                row = rows_at_deadline.get(call_id)
                if row is None or row["decision"] != TIMED_OUT:
                    # A human's decision got its row first: it wins, and its message is already committed.
                    continue
                if pending.pop(call_id)["kind"] == "approval":
                    results.approvals[call_id] = ToolDenied(reason)
                else:
                    results.calls[call_id] = ToolFailed(reason)
                state["decided"][call_id] = {"decision": TIMED_OUT, "at": row["decided_at_epoch_ms"] / 1000}
                approval_event("decided", wait_id, started["at"], tool_call_id=call_id, **state["decided"][call_id])
            if pending:
                await DBOS.set_event_async(APPROVALS_EVENT, state)
            continue
        problem = _message_problem(message, wait_id, pending)
        if problem is None:
            call_id = message["tool_call_id"]
            if rows_at_deadline is not None:
                row = rows_at_deadline.get(call_id)
            else:
                row = await DBOS.run_step_async(
                    {"name": approvals_check_step(agent_name)}, _recorded_decision, workflow_id, wait_id, call_id
                )
            problem = _unrecorded_problem(message, row)
        if problem is not None:
            state["ignored"].append({"tool_call_id": message.get("tool_call_id"), "problem": problem})
            await DBOS.set_event_async(APPROVALS_EVENT, state)
            continue
        call_id = message["tool_call_id"]
        del pending[call_id]
        decision = message["decision"]
        if decision == "approve":
            results.approvals[call_id] = ToolApproved(override_args=message.get("override_args"))
        elif decision == "deny":
            reason = message.get("reason")
            results.approvals[call_id] = ToolDenied(reason) if reason else ToolDenied()
        else:
            results.calls[call_id] = message.get("result")
        state["decided"][call_id] = {"decision": decision, "at": message.get("decided_at")}
        approval_event("decided", wait_id, started["at"], tool_call_id=call_id, **state["decided"][call_id])
        if pending:
            await DBOS.set_event_async(APPROVALS_EVENT, state)
    state["status"] = "resolved"
    await DBOS.set_event_async(APPROVALS_EVENT, state)
    approval_event(
        "resolved", wait_id, started["at"], at=max((d["at"] or 0 for d in state["decided"].values()), default=None)
    )
    return results


async def _recorded_decision(workflow_id: str, wait_id: int, tool_call_id: str) -> dict[str, Any] | None:
    """Recorded as a step: the table's row for one call, so a replay judges a message as the first run did.

    A live step: it links the execution's trace to the previous one, as a model request would. A woken run that
    parks again before its next model request (one of two calls decided) has no other live step of ours."""
    await announce_execution()
    return await asyncio.to_thread(with_dbos_db_retry, lambda: _wait_rows(workflow_id, wait_id).get(tool_call_id))


async def _time_out_open_calls(
    workflow_id: str, wait_id: int, calls: list[tuple[str, str]]
) -> dict[str, dict[str, Any]]:
    """Recorded as a step: insert `timed_out` for each call that has no row yet, then read back every row of the wait.

    `ON CONFLICT DO NOTHING` leaves a human's row in place: the insert waits for (PostgreSQL) or is
    serialized with (SQLite, `BEGIN IMMEDIATE`) a decision being committed, so exactly one side wins.
    """

    def record() -> dict[str, dict[str, Any]]:
        sys_db, table = launched_decisions()
        now_ms = int(time.time() * 1000)
        values = [
            {
                "workflow_id": workflow_id,
                "wait_id": wait_id,
                "tool_call_id": call_id,
                "decision": TIMED_OUT,
                "args_digest": digest,
                "decided_at_epoch_ms": now_ms,
            }
            for call_id, digest in calls
        ]
        insert = postgresql_insert if sys_db.engine.dialect.name == "postgresql" else sqlite_insert
        with sys_db.engine.begin() as connection:
            if values:
                connection.execute(insert(table).values(values).on_conflict_do_nothing())
            return wait_rows(connection, table, workflow_id, wait_id)

    return await asyncio.to_thread(with_dbos_db_retry, record)
