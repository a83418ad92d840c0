"""Approvals that wait durably inside a run, and the inbox any process can answer them from.

With `DBOSAgent(agent, approvals="wait")`, a durable run whose model calls a tool that needs approval
(`requires_approval=True`, `ApprovalRequired`) or an external result (`CallDeferred`) does not end: it
publishes the pending calls as a DBOS event and waits for decisions with `DBOS.recv`, both of which
are checkpointed. A worker killed while waiting is recovered waiting; a decision sent while no worker
runs is kept in the database until the run reads it.

The `dbos_pai_approval_decisions` table is the single arbiter of every call, and the audit log. Its
primary key (run, wait, tool call id) admits one row per call: a human's decision (`approve`, `deny`,
`result`) or the run's own `timed_out`. A decision is checked against the published state and the
recorded deadline, then inserted, and sent to the run with DBOS's `send_in_transaction`, in one
transaction. The run acts on a message only if the table holds its row (checked in a recorded step),
and at the deadline it inserts `timed_out` rows for the calls still open, in a recorded step, with
`ON CONFLICT DO NOTHING`: a human decision that got its row in first wins and is carried out (its
message is already committed), and one that comes second is refused. So a decision and the timeout
never both win, and a decision the API accepted is the one the run carries out.

The decision API (`list_pending_approvals`, `approve`, `deny`, `deliver_result` and their `_async`
twins) works in the worker process (the launched DBOS) or from any process that has the database URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from dbos import DBOS, DBOSClient
from pydantic_ai.exceptions import ToolFailed, UserError
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, ToolApproved, ToolDenied
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ._compat import dbos_launched, launched_system_database, with_dbos_db_retry
from .config import _sqlite_path, system_database_error
from .names import (
    APPROVALS_EVENT,
    DECISION_TOPIC,
    DECISIONS_TABLE,
    approvals_check_step,
    approvals_timeout_step,
    approvals_wait_step,
    decision_idempotency_key,
)

__all__ = [
    "ApprovalRejected",
    "PendingApproval",
    "approval_args_digest",
    "approve",
    "approve_async",
    "deliver_result",
    "deliver_result_async",
    "deny",
    "deny_async",
    "list_pending_approvals",
    "list_pending_approvals_async",
]

TIMED_OUT = "timed_out"
"""The decision the run records for a call nobody decided before the deadline."""

# Without a timeout the run waits in chunks (each a recorded `DBOS.recv`), so no timer is ever huge.
_INDEFINITE_WAIT_CHUNK_SECONDS = 7 * 24 * 3600.0

PendingKind = Literal["approval", "external", "question"]
T = TypeVar("T")


class ApprovalRejected(UserError):
    """A decision was refused and nothing was sent: unknown run or call, already decided, or stale arguments."""


@dataclass(frozen=True)
class PendingApproval:
    """A tool call a waiting run needs a decision on.

    `kind` is `'approval'` (answer with `approve` or `deny`) or `'external'` / `'question'` (a
    `CallDeferred` call: answer with `deliver_result`). Pass `args_digest` back with the decision: it
    proves the decision was made on these arguments.
    """

    workflow_id: str
    agent_name: str
    tool_call_id: str
    tool_name: str
    args: dict[str, Any]
    args_digest: str
    requested_at: datetime
    kind: PendingKind = "approval"
    metadata: dict[str, Any] | None = None
    deadline: datetime | None = None
    wait_id: int = 0


def approval_args_digest(tool_name: str, args: dict[str, Any]) -> str:
    """The sha256 (hex) of the canonical JSON of a tool call's name and arguments."""
    canonical = json.dumps(
        {"tool_name": tool_name, "args": args}, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def timeout_seconds(timeout: float | timedelta | None) -> float | None:
    """`approval_timeout` in seconds, refusing a value that is not a positive duration."""
    if timeout is None:
        return None
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise UserError(f"`approval_timeout` must be a positive number of seconds or a timedelta, not {timeout!r}.")
    return float(seconds)


# --- Inside the run: publish, wait, decide ------------------------------------------------------


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


async def wait_for_decisions(
    agent_name: str, requests: DeferredToolRequests, *, timeout: float | None
) -> DeferredToolResults:
    """Publish `requests`, wait durably until each call is decided (or the timeout passes), return the results.

    Runs in workflow code: every DBOS call here is checkpointed, so a recovered run replays the
    decisions it had received and waits on for the rest.
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

    results = DeferredToolResults()
    # Once the deadline has passed: every row of this wait, as the timeout step read them back.
    rows_at_deadline: dict[str, dict[str, Any]] | None = None
    while pending:
        # The timeout of a live recv is recorded by DBOS at its first wait; a replayed recv returns its message.
        if deadline is None or rows_at_deadline is not None:
            wait = _INDEFINITE_WAIT_CHUNK_SECONDS
        else:
            wait = max(0.0, deadline - time.time())
        message = await DBOS.recv_async(DECISION_TOPIC, timeout_seconds=wait)
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
        if pending:
            await DBOS.set_event_async(APPROVALS_EVENT, state)
    state["status"] = "resolved"
    await DBOS.set_event_async(APPROVALS_EVENT, state)
    return results


# --- The decisions table ------------------------------------------------------------------------


def _decisions_table(schema: str | None) -> sa.Table:
    return sa.Table(
        DECISIONS_TABLE,
        sa.MetaData(schema=schema),
        sa.Column("workflow_id", sa.Text, primary_key=True),
        sa.Column("wait_id", sa.Integer, primary_key=True),
        sa.Column("tool_call_id", sa.Text, primary_key=True),
        sa.Column("decision", sa.Text, nullable=False),  # approve, deny, result or timed_out
        sa.Column("args_digest", sa.Text, nullable=False),
        sa.Column("decided_at_epoch_ms", sa.BigInteger, nullable=False),
    )


def _create_decisions_table(engine: sa.Engine, table: sa.Table) -> None:
    try:
        with engine.begin() as connection:
            table.create(connection, checkfirst=True)
    except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
        # Another process created it at the same time; anything else fails on first use.
        pass


_launched_tables: weakref.WeakKeyDictionary[Any, sa.Table] = weakref.WeakKeyDictionary()


def _launched_decisions() -> tuple[Any, sa.Table]:
    """The launched DBOS's system database and the decisions table there (created at first use)."""
    sys_db = launched_system_database()
    table = _launched_tables.get(sys_db.key)
    if table is None:
        table = _decisions_table(sys_db.schema)
        _create_decisions_table(sys_db.engine, table)
        _launched_tables[sys_db.key] = table
    return sys_db, table


def _row_dict(row: Any) -> dict[str, Any]:
    return {"decision": row.decision, "args_digest": row.args_digest, "decided_at_epoch_ms": row.decided_at_epoch_ms}


def _wait_rows(connection: sa.Connection, table: sa.Table, workflow_id: str, wait_id: int) -> dict[str, dict[str, Any]]:
    """Every decision recorded for one wait, by tool call id."""
    rows = connection.execute(
        sa.select(table.c.tool_call_id, table.c.decision, table.c.args_digest, table.c.decided_at_epoch_ms).where(
            table.c.workflow_id == workflow_id, table.c.wait_id == wait_id
        )
    )
    return {row.tool_call_id: _row_dict(row) for row in rows}


async def _recorded_decision(workflow_id: str, wait_id: int, tool_call_id: str) -> dict[str, Any] | None:
    """Recorded as a step: the table's row for one call, so a replay judges a message as the first run did."""

    def read() -> dict[str, Any] | None:
        sys_db, table = _launched_decisions()
        with sys_db.engine.connect() as connection:
            return _wait_rows(connection, table, workflow_id, wait_id).get(tool_call_id)

    return await asyncio.to_thread(with_dbos_db_retry, read)


async def _time_out_open_calls(
    workflow_id: str, wait_id: int, calls: list[tuple[str, str]]
) -> dict[str, dict[str, Any]]:
    """Recorded as a step: insert `timed_out` for each call that has no row yet, then read back every row of the wait.

    `ON CONFLICT DO NOTHING` leaves a human's row in place: the insert waits for (PostgreSQL) or is
    serialized with (SQLite, `BEGIN IMMEDIATE`) a decision being committed, so exactly one side wins.
    """

    def record() -> dict[str, dict[str, Any]]:
        sys_db, table = _launched_decisions()
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
            return _wait_rows(connection, table, workflow_id, wait_id)

    return await asyncio.to_thread(with_dbos_db_retry, record)


# --- The decision side: any process with the database ------------------------------------------


@dataclass
class _Connection:
    """A DBOS client and an engine on one system database, plus the decisions table there."""

    client: DBOSClient
    engine: sa.Engine
    table: sa.Table


def _sqlite_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url)

    @sa.event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, connection_record: Any) -> None:
        # As DBOS configures its own SQLite connections: writers take the lock up front and wait for it.
        dbapi_connection.isolation_level = "IMMEDIATE"
        dbapi_connection.execute("PRAGMA busy_timeout=30000")
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    return engine


_launched_clients: weakref.WeakKeyDictionary[Any, DBOSClient] = weakref.WeakKeyDictionary()


@contextmanager
def _connect(database_url: str | None) -> Iterator[_Connection]:
    """Connect to the launched DBOS's system database (`database_url=None`) or to `database_url`."""
    engine: sa.Engine  # the launched DBOS's (an `OptionEngine`, a subclass) or one opened here
    if database_url is None:
        if not dbos_launched():
            raise UserError(
                "No DBOS is launched in this process: pass `database_url=` (the system database of the "
                "workers) to decide on approvals from another process."
            )
        sys_db = launched_system_database()
        engine, schema, owned = sys_db.engine, sys_db.schema, False
        client = _launched_clients.get(sys_db.key)
        if client is None:
            # One client per launched DBOS, on its engine: it goes away with that DBOS (a weak key).
            client = DBOSClient(system_database_engine=engine, dbos_system_schema=schema, serializer=sys_db.serializer)
            _launched_clients[sys_db.key] = client
    else:
        sqlite_file = _sqlite_path(database_url)
        if sqlite_file is not None:
            if not sqlite_file.exists():
                raise UserError(system_database_error(database_url, FileNotFoundError(str(sqlite_file))))
            engine, schema = _sqlite_engine(database_url), None
        else:
            engine, schema = sa.create_engine(sa.make_url(database_url).set(drivername="postgresql+psycopg")), "dbos"
        owned = True
        try:
            client = DBOSClient(system_database_engine=engine, dbos_system_schema=schema)
            client.list_workflows(limit=1, load_input=False, load_output=False)  # DBOS's tables are there
        except Exception as error:
            engine.dispose()
            raise UserError(system_database_error(database_url, error)) from error
    try:
        if owned:
            table = _decisions_table(schema)
            _create_decisions_table(engine, table)
        else:
            table = _launched_decisions()[1]
        yield _Connection(client, engine, table)
    finally:
        if owned:
            client.destroy()
            engine.dispose()


def _published_state(connection: _Connection, workflow_id: str) -> dict[str, Any] | None:
    state = connection.client.get_event(workflow_id, APPROVALS_EVENT, timeout_seconds=0)
    return state if isinstance(state, dict) and state.get("version") == 1 else None


def _recorded_decisions(connection: _Connection, workflow_id: str, wait_id: int) -> dict[str, dict[str, Any]]:
    with connection.engine.connect() as conn:
        return _wait_rows(conn, connection.table, workflow_id, wait_id)


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def _expired(state: dict[str, Any]) -> bool:
    """Whether the wait's recorded deadline has passed (by this process's clock)."""
    return state["deadline"] is not None and time.time() >= state["deadline"]


def _pending_from_state(state: dict[str, Any], recorded: dict[str, Any]) -> list[PendingApproval]:
    requested_at = _utc(state["requested_at"])
    assert requested_at is not None
    return [
        PendingApproval(
            workflow_id=state["workflow_id"],
            agent_name=state["agent_name"],
            tool_call_id=entry["tool_call_id"],
            tool_name=entry["tool_name"],
            args=entry["args"],
            args_digest=entry["args_digest"],
            requested_at=requested_at,
            kind=entry["kind"],
            metadata=entry["metadata"],
            deadline=_utc(state["deadline"]),
            wait_id=state["wait_id"],
        )
        for entry in state["calls"]
        if entry["tool_call_id"] not in state["decided"] and entry["tool_call_id"] not in recorded
    ]


def list_pending_approvals(
    *, agent_name: str | None = None, workflow_id: str | None = None, database_url: str | None = None
) -> list[PendingApproval]:
    """The tool calls that waiting runs need a decision on, oldest first.

    Args:
        agent_name: Only runs of this `DBOSAgent`.
        workflow_id: Only this run.
        database_url: The workers' system database; None uses the DBOS launched in this process.
    """
    with _connect(database_url) as connection:
        statuses = connection.client.list_workflows(
            workflow_ids=[workflow_id] if workflow_id is not None else None,
            status="PENDING",
            load_input=False,
            load_output=False,
        )
        pending: list[PendingApproval] = []
        for status in statuses:
            state = _published_state(connection, status.workflow_id)
            if state is None or state["status"] != "waiting":
                continue
            if agent_name is not None and state["agent_name"] != agent_name:
                continue
            if _expired(state):
                continue  # past its deadline: no decision is accepted any more, the run denies the calls
            recorded = _recorded_decisions(connection, status.workflow_id, state["wait_id"])
            pending.extend(_pending_from_state(state, recorded))
    return sorted(pending, key=lambda p: (p.requested_at, p.workflow_id))


def _decide(
    database_url: str | None,
    workflow_id: str,
    tool_call_id: str,
    *,
    args_digest: str,
    decision: Literal["approve", "deny", "result"],
    payload: dict[str, Any],
) -> None:
    """Check a decision against the run's published state, then record it and send it in one transaction."""
    with _connect(database_url) as connection:
        statuses = connection.client.list_workflows(workflow_ids=[workflow_id], load_input=False, load_output=False)
        if not statuses:
            raise ApprovalRejected(f"No run {workflow_id!r}: nothing to decide.")
        if statuses[0].status != "PENDING":
            raise ApprovalRejected(f"Run {workflow_id!r} is {statuses[0].status}, not waiting for a decision.")
        state = _published_state(connection, workflow_id)
        if state is None or state["status"] != "waiting":
            raise ApprovalRejected(f"Run {workflow_id!r} is not waiting for a decision.")
        entry = next((e for e in state["calls"] if e["tool_call_id"] == tool_call_id), None)
        if entry is None:
            waiting_for = [e["tool_call_id"] for e in state["calls"]]
            raise ApprovalRejected(
                f"Run {workflow_id!r} is not waiting for tool call {tool_call_id!r} (it waits for {waiting_for})."
            )
        wait_id: int = state["wait_id"]
        row = _recorded_decisions(connection, workflow_id, wait_id).get(tool_call_id)
        decided = row["decision"] if row is not None else state["decided"].get(tool_call_id, {}).get("decision")
        if decided == TIMED_OUT:
            raise ApprovalRejected(_too_late(workflow_id, entry, state["deadline"], timed_out=True))
        if decided is not None:
            raise ApprovalRejected(f"Tool call {tool_call_id!r} of run {workflow_id!r} was already decided.")
        if _expired(state):
            raise ApprovalRejected(_too_late(workflow_id, entry, state["deadline"], timed_out=False))
        if args_digest != entry["args_digest"]:
            raise ApprovalRejected(
                f"The arguments of tool call {tool_call_id!r} are not the ones this decision was made on "
                f"(digest {args_digest!r}, pending {entry['args_digest']!r}). List the pending approvals again "
                "and decide on what they show."
            )
        if (entry["kind"] == "approval") != (decision in ("approve", "deny")):
            approval = entry["kind"] == "approval"
            wanted = "an approval: use approve() or deny()" if approval else "a result: use deliver_result()"
            raise ApprovalRejected(f"Tool call {tool_call_id!r} ({entry['tool_name']}) waits for {wanted}.")
        decided_at = time.time()
        message = {
            "wait_id": wait_id,
            "tool_call_id": tool_call_id,
            "args_digest": args_digest,
            "decision": decision,
            "decided_at": decided_at,
            **payload,
        }
        table = connection.table
        inserted = False
        try:
            with connection.engine.begin() as conn:
                # The row is the arbiter: a second decision, or the run's `timed_out`, got there first if this fails.
                conn.execute(
                    table.insert().values(
                        workflow_id=workflow_id,
                        wait_id=wait_id,
                        tool_call_id=tool_call_id,
                        decision=decision,
                        args_digest=args_digest,
                        decided_at_epoch_ms=int(decided_at * 1000),
                    )
                )
                inserted = True
                connection.client.send_in_transaction(
                    conn,
                    workflow_id,
                    message,
                    DECISION_TOPIC,
                    idempotency_key=decision_idempotency_key(wait_id, tool_call_id),
                )
        except sa.exc.IntegrityError:
            if inserted:
                raise
            row = _recorded_decisions(connection, workflow_id, wait_id).get(tool_call_id)
            if row is not None and row["decision"] == TIMED_OUT:
                raise ApprovalRejected(_too_late(workflow_id, entry, state["deadline"], timed_out=True)) from None
            raise ApprovalRejected(f"Tool call {tool_call_id!r} of run {workflow_id!r} was already decided.") from None


def _too_late(workflow_id: str, entry: dict[str, Any], deadline: float | None, *, timed_out: bool) -> str:
    """Why a decision after the deadline is refused, naming the deadline."""
    when = _utc(deadline)
    passed = "its deadline passed" + (f" at {when.isoformat(timespec='milliseconds')} (UTC)" if when else "")
    deny, denied = ("deny", "denied") if entry["kind"] == "approval" else ("fail", "failed")
    if timed_out:
        return (
            f"Tool call {entry['tool_call_id']!r} of run {workflow_id!r} was not decided in time: {passed} "
            f"and the run {denied} the call by timeout. Nothing was sent."
        )
    return (
        f"Tool call {entry['tool_call_id']!r} of run {workflow_id!r} can no longer be decided: {passed}; "
        f"the run will {deny} the call by timeout. Nothing was sent."
    )


def approve(
    workflow_id: str,
    tool_call_id: str,
    *,
    args_digest: str,
    override_args: dict[str, Any] | None = None,
    database_url: str | None = None,
) -> None:
    """Approve a pending call; the run executes it (with `override_args` instead of its arguments, if given).

    Raises `ApprovalRejected` (and records and sends nothing) for an unknown run or call, a call already
    decided, an `args_digest` that is not the pending call's, or a call whose deadline has passed (the
    message names it). Once it returns, the run carries the decision out, even at the deadline.
    """
    _decide(
        database_url,
        workflow_id,
        tool_call_id,
        args_digest=args_digest,
        decision="approve",
        payload={"override_args": override_args},
    )


def deny(
    workflow_id: str,
    tool_call_id: str,
    *,
    args_digest: str,
    reason: str | None = None,
    database_url: str | None = None,
) -> None:
    """Deny a pending call; the model is told it was denied, with `reason` when given. Rejections as `approve`."""
    _decide(
        database_url, workflow_id, tool_call_id, args_digest=args_digest, decision="deny", payload={"reason": reason}
    )


def deliver_result(
    workflow_id: str,
    tool_call_id: str,
    *,
    args_digest: str,
    result: Any,
    database_url: str | None = None,
) -> None:
    """Deliver the result of a call deferred with `CallDeferred` (kind `'external'` or `'question'`).

    `result` is what the tool would have returned (any value DBOS can store), or a `ToolReturn`,
    `ToolFailed` or `ModelRetry`, as in `DeferredToolResults.calls`. Rejections as `approve`.
    """
    _decide(
        database_url, workflow_id, tool_call_id, args_digest=args_digest, decision="result", payload={"result": result}
    )


async def list_pending_approvals_async(
    *, agent_name: str | None = None, workflow_id: str | None = None, database_url: str | None = None
) -> list[PendingApproval]:
    """`list_pending_approvals`, off the event loop."""
    return await asyncio.to_thread(
        list_pending_approvals, agent_name=agent_name, workflow_id=workflow_id, database_url=database_url
    )


async def approve_async(
    workflow_id: str,
    tool_call_id: str,
    *,
    args_digest: str,
    override_args: dict[str, Any] | None = None,
    database_url: str | None = None,
) -> None:
    """`approve`, off the event loop."""
    await asyncio.to_thread(
        approve,
        workflow_id,
        tool_call_id,
        args_digest=args_digest,
        override_args=override_args,
        database_url=database_url,
    )


async def deny_async(
    workflow_id: str,
    tool_call_id: str,
    *,
    args_digest: str,
    reason: str | None = None,
    database_url: str | None = None,
) -> None:
    """`deny`, off the event loop."""
    await asyncio.to_thread(
        deny, workflow_id, tool_call_id, args_digest=args_digest, reason=reason, database_url=database_url
    )


async def deliver_result_async(
    workflow_id: str,
    tool_call_id: str,
    *,
    args_digest: str,
    result: Any,
    database_url: str | None = None,
) -> None:
    """`deliver_result`, off the event loop."""
    await asyncio.to_thread(
        deliver_result, workflow_id, tool_call_id, args_digest=args_digest, result=result, database_url=database_url
    )
