"""Deciding on the tool calls that runs with `approvals="wait"` wait for, from any process: the inbox.

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

The decision API (`ApprovalInbox`, which keeps its connection until closed, and the functions
`list_pending_approvals`, `approve`, `deny`, `deliver_result` and their `_async` twins, which share one connection
per database URL in the process) works in the worker process
(the launched DBOS) or from any process that has the database URL. The waiting itself is `_approval_wait.py`; the
table both sides share is `_approval_table.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from dbos import DBOSClient
from pydantic_ai.exceptions import UserError

from ._approval_table import TIMED_OUT, create_decisions_table, decisions_table, launched_decisions, wait_rows
from ._compat import dbos_launched, launched_system_database
from ._kept import KeptPerDatabase, open_client
from ._safe_read import safe_get_event
from .names import (
    APPROVALS_EVENT,
    DECISION_TOPIC,
    decision_idempotency_key,
)

__all__ = [
    "ApprovalInbox",
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


# --- The decision side: any process with the database ------------------------------------------


@dataclass
class _Connection:
    """A DBOS client and an engine on one system database, plus the decisions table there."""

    client: DBOSClient
    engine: sa.Engine
    table: sa.Table
    owned: bool  # opened here (closed by `close`), not the launched DBOS's
    trust_pickle: bool = False  # unpickle a published state stored as pickle (see _safe_read.py)

    def close(self) -> None:
        if self.owned:
            self.client.destroy()
            self.engine.dispose()


_launched_clients: weakref.WeakKeyDictionary[Any, DBOSClient] = weakref.WeakKeyDictionary()


def _open(database_url: str | None, *, trust_pickle: bool = False, shared: bool = False) -> _Connection:
    """Connect to the launched DBOS's system database (`database_url=None`) or to `database_url`.

    `shared`: for the connection the module's functions keep per database URL, which outlives any one call (on an
    engine fit to be kept, `_kept.kept_engine`).
    """
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
        # Decisions are sent with the serializer the workers read (typed JSON unless DBOS_PYDANTIC_AI_SERIALIZER).
        client, engine, schema = open_client(database_url, kept=shared)
        owned = True
    connection = _Connection(client, engine, decisions_table(schema), owned, trust_pickle)
    try:
        if owned:
            create_decisions_table(engine, connection.table)
        else:
            connection.table = launched_decisions()[1]
    except BaseException:
        connection.close()
        raise
    return connection


def _published_state(connection: _Connection, workflow_id: str) -> dict[str, Any] | None:
    state = safe_get_event(connection.client, workflow_id, APPROVALS_EVENT, trust_pickle=connection.trust_pickle)
    return state if isinstance(state, dict) and state.get("version") == 1 else None


def _recorded_decisions(connection: _Connection, workflow_id: str, wait_id: int) -> dict[str, dict[str, Any]]:
    with connection.engine.connect() as conn:
        return wait_rows(conn, connection.table, workflow_id, wait_id)


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


class ApprovalInbox:
    """The decision side on one connection that stays open: for a console, a bot or a service that decides often.

    The module's functions (`list_pending_approvals`, `approve`, ...) share a connection per database URL that the
    process keeps (a few URLs at most); an inbox has its own until `close()` (or the end of its `with` block). Its
    methods take the same arguments and refuse the same way.
    Safe to share between threads.

    Args:
        database_url: The workers' system database; None uses the DBOS launched in this process.
        trust_pickle: Read a run's published calls even when they are stored as pickle (by workers configured with
            `serializer="pickle"`, or before the upgrade to typed JSON). Unpickling runs code the row names: only for
            a database whose writers you trust. Without it such runs are not listed.
    """

    def __init__(self, database_url: str | None = None, *, trust_pickle: bool = False) -> None:
        self._connection = _open(database_url, trust_pickle=trust_pickle)

    @classmethod
    def _kept(cls, database_url: str) -> ApprovalInbox:
        """An inbox that the module's functions keep open between calls (see `_SharedInboxes`)."""
        inbox = cls.__new__(cls)
        inbox._connection = _open(database_url, shared=True)
        return inbox

    def __enter__(self) -> ApprovalInbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a no-op for the launched DBOS's, which stays with DBOS)."""
        self._connection.close()

    def list_pending(self, *, agent_name: str | None = None, workflow_id: str | None = None) -> list[PendingApproval]:
        """As `list_pending_approvals`."""
        return _list_pending(self._connection, agent_name=agent_name, workflow_id=workflow_id)

    def approve(
        self, workflow_id: str, tool_call_id: str, *, args_digest: str, override_args: dict[str, Any] | None = None
    ) -> None:
        """As `approve`."""
        _decide(
            self._connection,
            workflow_id,
            tool_call_id,
            args_digest=args_digest,
            decision="approve",
            payload={"override_args": override_args},
        )

    def deny(self, workflow_id: str, tool_call_id: str, *, args_digest: str, reason: str | None = None) -> None:
        """As `deny`."""
        _decide(
            self._connection,
            workflow_id,
            tool_call_id,
            args_digest=args_digest,
            decision="deny",
            payload={"reason": reason},
        )

    def deliver_result(self, workflow_id: str, tool_call_id: str, *, args_digest: str, result: Any) -> None:
        """As `deliver_result`."""
        _decide(
            self._connection,
            workflow_id,
            tool_call_id,
            args_digest=args_digest,
            decision="result",
            payload={"result": result},
        )


class _SharedInboxes(KeptPerDatabase[ApprovalInbox]):
    """The inboxes the module's functions decide with: one per database URL, kept between calls (`_kept.py`)."""

    def __init__(self) -> None:
        super().__init__(ApprovalInbox._kept)

    def get(self, database_url: str | None) -> ApprovalInbox:
        if database_url is None:
            return ApprovalInbox()  # the launched DBOS's client and engine, kept by DBOS already
        return super().get(database_url)


_shared_inboxes = _SharedInboxes()


def list_pending_approvals(
    *,
    agent_name: str | None = None,
    workflow_id: str | None = None,
    database_url: str | None = None,
    trust_pickle: bool = False,
) -> list[PendingApproval]:
    """The tool calls that waiting runs need a decision on, oldest first. Calls whose deadline passed are left out.

    Args:
        agent_name: Only runs of this `DBOSAgent`.
        workflow_id: Only this run.
        database_url: The workers' system database; None uses the DBOS launched in this process.
        trust_pickle: Also list runs whose published calls are stored as pickle (see `ApprovalInbox`).
    """
    if trust_pickle:  # rare, and not what the kept inboxes read with
        with ApprovalInbox(database_url, trust_pickle=True) as inbox:
            return inbox.list_pending(agent_name=agent_name, workflow_id=workflow_id)
    return _shared_inboxes.get(database_url).list_pending(agent_name=agent_name, workflow_id=workflow_id)


def _list_pending(connection: _Connection, *, agent_name: str | None, workflow_id: str | None) -> list[PendingApproval]:
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
    connection: _Connection,
    workflow_id: str,
    tool_call_id: str,
    *,
    args_digest: str,
    decision: Literal["approve", "deny", "result"],
    payload: dict[str, Any],
) -> None:
    """Check a decision against the run's published state, then record it and send it in one transaction."""
    statuses = connection.client.list_workflows(workflow_ids=[workflow_id], load_input=False, load_output=False)
    if not statuses:
        raise ApprovalRejected(f"No run {workflow_id!r}: nothing to decide.")
    state = _published_state(connection, workflow_id)
    entry = next((e for e in state["calls"] if e["tool_call_id"] == tool_call_id), None) if state else None
    if state is not None and entry is not None and tool_call_id in state["decided"]:
        # The run has read this call's decision (and may have gone on, or finished): that is the reason to give.
        decided = state["decided"][tool_call_id].get("decision")
        raise ApprovalRejected(_already_decided(workflow_id, entry, state, decided))
    if statuses[0].status != "PENDING":
        raise ApprovalRejected(f"Run {workflow_id!r} is {statuses[0].status}, not waiting for a decision.")
    if state is None or state["status"] != "waiting":
        raise ApprovalRejected(f"Run {workflow_id!r} is not waiting for a decision.")
    if entry is None:
        waiting_for = [e["tool_call_id"] for e in state["calls"]]
        raise ApprovalRejected(
            f"Run {workflow_id!r} is not waiting for tool call {tool_call_id!r} (it waits for {waiting_for})."
        )
    wait_id: int = state["wait_id"]
    refusal = _refusal(workflow_id, entry, state, args_digest, decision)
    # An accepted decision needs no read of the table first: the insert below is the check, and its conflict says
    # who was first. A refused one reads the call's row, so that "already decided" (or "timed out") comes first.
    row = _recorded_decisions(connection, workflow_id, wait_id).get(tool_call_id) if refusal is not None else None
    if row is not None:
        raise ApprovalRejected(_already_decided(workflow_id, entry, state, row["decision"]))
    if refusal is not None:
        raise ApprovalRejected(refusal)
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
        raise ApprovalRejected(_already_decided(workflow_id, entry, state, row["decision"] if row else None)) from None


def _already_decided(workflow_id: str, entry: dict[str, Any], state: dict[str, Any], decision: str | None) -> str:
    """Why a second decision on a call is refused: the run's timeout got there first, or another decision did."""
    if decision == TIMED_OUT:
        return _too_late(workflow_id, entry, state["deadline"], timed_out=True)
    return f"Tool call {entry['tool_call_id']!r} of run {workflow_id!r} was already decided."


def _refusal(
    workflow_id: str, entry: dict[str, Any], state: dict[str, Any], args_digest: str, decision: str
) -> str | None:
    """Why a decision on a call not yet decided is refused (past the deadline, stale arguments, wrong kind), or None."""
    tool_call_id = entry["tool_call_id"]
    if _expired(state):
        return _too_late(workflow_id, entry, state["deadline"], timed_out=False)
    if args_digest != entry["args_digest"]:
        return (
            f"The arguments of tool call {tool_call_id!r} are not the ones this decision was made on "
            f"(digest {args_digest!r}, pending {entry['args_digest']!r}). List the pending approvals again "
            "and decide on what they show."
        )
    if (entry["kind"] == "approval") != (decision in ("approve", "deny")):
        approval = entry["kind"] == "approval"
        wanted = "an approval: use approve() or deny()" if approval else "a result: use deliver_result()"
        return f"Tool call {tool_call_id!r} ({entry['tool_name']}) waits for {wanted}."
    return None


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
    _shared_inboxes.get(database_url).approve(
        workflow_id, tool_call_id, args_digest=args_digest, override_args=override_args
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
    _shared_inboxes.get(database_url).deny(workflow_id, tool_call_id, args_digest=args_digest, reason=reason)


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
    _shared_inboxes.get(database_url).deliver_result(workflow_id, tool_call_id, args_digest=args_digest, result=result)


async def list_pending_approvals_async(
    *,
    agent_name: str | None = None,
    workflow_id: str | None = None,
    database_url: str | None = None,
    trust_pickle: bool = False,
) -> list[PendingApproval]:
    """`list_pending_approvals`, off the event loop."""
    return await asyncio.to_thread(
        list_pending_approvals,
        agent_name=agent_name,
        workflow_id=workflow_id,
        database_url=database_url,
        trust_pickle=trust_pickle,
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
