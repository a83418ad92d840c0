"""What the console shows, read from the workers' DBOS system database.

Runs, steps and results are read through a `DBOSClient` and `_safe_read.py` (which decodes what the workers
wrote without unpickling: a value stored as pickle shows as "stored as pickle, not displayed" unless the console
was started with `--trust-pickle`), plus one read-only keyset query on `workflow_status` for the paginated runs
table. Nothing
here deserializes data that came from a browser: request values are only ever strings and numbers
used as query parameters.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import genai_prices
import sqlalchemy as sa
from dbos import DBOSClient
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import (
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.run import AgentRunResult
from pydantic_core import to_jsonable_python

from .._compat import client_status_table, recovery_attempts
from .._safe_read import safe_get_event, safe_list_workflow_steps, safe_list_workflows
from .._serialization import serializer_for
from ..approvals import ApprovalInbox
from ..config import _sqlite_path, system_database_error
from ..names import MODEL_STEP_SUFFIXES, RETRY_EVENT, RUN_WORKFLOW_SUFFIXES, library_step_kind
from ..retries import FailedAttempt

__all__ = ["RUN_SUFFIXES", "STATUSES", "ConsoleData", "InvalidCursor", "RunNotFound"]

RUN_SUFFIXES = RUN_WORKFLOW_SUFFIXES
"""A durable agent run is a workflow named `{agent}.run` or `{agent}.run_sync`."""
STATUSES = ("PENDING", "ENQUEUED", "DELAYED", "SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED")
FINISHED = frozenset({"SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"})
CONTINUABLE = frozenset({"ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"})
"""Statuses of a run that `continue_run` takes up again (if a model request of it failed)."""
_WAIT_STEPS = frozenset({"DBOS.recv", "DBOS.sleep", "DBOS.getEvent"})
_SUMMARY_CACHE_SIZE = 20_000


class RunNotFound(LookupError):
    """No durable agent run has this workflow id."""


class InvalidCursor(ValueError):
    """A pagination cursor that this console did not hand out."""


def _iso(epoch_ms: float | None) -> str | None:
    return None if epoch_ms is None else datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def retry_json(status: str, failures: list[FailedAttempt], published: Any) -> dict[str, Any] | None:
    """A run's model retry state: what it published under `RETRY_EVENT`, else its last recorded failed attempt.

    `waiting` is true only while the run is PENDING and its last word was that it waits for the next try.
    """
    if not failures:
        return None
    last = failures[-1]
    state = published if isinstance(published, dict) else {}
    attempt = state.get("attempt")
    next_try_at = _number(state.get("next_try_at"))
    failed_at = _number(state.get("failed_at"))
    kind = state.get("state") if isinstance(state.get("state"), str) else None
    last_error = state.get("last_error")
    return {
        "state": kind,
        "waiting": status == "PENDING" and kind == "waiting",
        "attempt": attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else last.attempt,
        "step_id": last.first_step_id,
        "failed_at": _iso((failed_at if failed_at is not None else last.failed_at) * 1000),
        "next_try_at": None if next_try_at is None else _iso(next_try_at * 1000),
        "last_error": last_error[:2000] if isinstance(last_error, str) else last.describe()[:2000],
        "failed_attempts": len(failures),
    }


def recovery_json(attempts: int | None, recovered_at_ms: int | None, steps: list[Any]) -> dict[str, Any] | None:
    """Whether DBOS recovered the run (its status counts one dispatch per execution), and the gap around it.

    A run started directly counts 1 dispatch, a queued one 1 at its dequeue; a recovery adds one (resume and
    continue start the count again). The last recovery's worker took the run up at `recovered_at_ms` (DBOS's
    `started_at_epoch_ms`); the gap runs from the last step that completed before it to the first step started
    after it (None when no step has started since).
    """
    if attempts is None or attempts < 2:
        return None
    before = after = None
    if recovered_at_ms is not None:
        for step in steps:
            started = step["started_at_epoch_ms"]
            if started is not None and started >= recovered_at_ms:
                after = step
                break
            before = step
    gap = None
    if before is not None and after is not None and before["completed_at_epoch_ms"] is not None:
        gap = after["started_at_epoch_ms"] - before["completed_at_epoch_ms"]
    return {
        "times": attempts - 1,
        "recovered_at": _iso(recovered_at_ms),
        "last_step_before": None if before is None else before["function_id"],
        "first_step_after": None if after is None else after["function_id"],
        "gap_ms": gap,
    }


def agent_of(workflow_name: str) -> str | None:
    """The agent name of a durable run's workflow name, or None for other workflows."""
    for suffix in RUN_SUFFIXES:
        if workflow_name.endswith(suffix) and len(workflow_name) > len(suffix):
            return workflow_name[: -len(suffix)]
    return None


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data; anything that has no JSON form becomes its `str`."""
    return to_jsonable_python(value, fallback=str)


def error_text(error: BaseException | None) -> str | None:
    if error is None:
        return None
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def output_text(output: Any) -> str:
    """A run's output as text: a string as it is, anything else as JSON."""
    if isinstance(output, str):
        return output
    return json.dumps(jsonable(output), ensure_ascii=False)


def model_cost(response: ModelResponse) -> float | None:
    """The price in USD of one model response from `genai-prices`, or None when its model has no known price."""
    if not response.model_name or response.usage.unmeasured_requests:
        return None
    attempts: list[str | None] = [response.provider_name] if response.provider_name else []
    attempts.append(None)  # the model name alone, e.g. for a local model named after a priced one
    for provider in attempts:
        try:
            price = genai_prices.calc_price(
                response.usage,
                response.model_name,
                provider_id=provider,
                genai_request_timestamp=response.timestamp,
            )
        except (LookupError, ValueError, TypeError):
            continue
        return float(price.total_price)
    return None


def step_kind(name: str, child_workflow_id: str | None) -> str:
    """How the timeline groups a step: model, tool, mcp, wait, child or other."""
    kind = library_step_kind(name)
    if kind is not None:
        return kind
    if name in _WAIT_STEPS:
        return "wait"
    if child_workflow_id is not None:
        return "child"
    return "other"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, bytes | bytearray):
        return "\n".join(_content_text(item) for item in content)
    kind = getattr(content, "kind", None)
    return f"[{kind or type(content).__name__}]"


def _item(kind: str, *, text: str | None = None, function_id: int | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "text": text,
        "tool_name": fields.get("tool_name"),
        "args": fields.get("args"),
        "tool_call_id": fields.get("tool_call_id"),
        "function_id": function_id,
    }


def _response_items(response: ModelResponse, function_id: int | None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for part in response.parts:
        if isinstance(part, TextPart):
            items.append(_item("model_text", text=part.content, function_id=function_id))
        elif isinstance(part, ThinkingPart):
            items.append(_item("thinking", text=part.content, function_id=function_id))
        elif isinstance(part, ToolCallPart):
            args: Any = part.args
            if isinstance(args, str):
                with contextlib.suppress(ValueError):  # else shown as the string the model sent
                    args = json.loads(args)
            items.append(
                _item(
                    "tool_call",
                    tool_name=part.tool_name,
                    args=jsonable(args),
                    tool_call_id=part.tool_call_id,
                    function_id=function_id,
                )
            )
    return items


def _request_items(request: ModelRequest) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for part in request.parts:
        if isinstance(part, UserPromptPart):
            items.append(_item("user", text=_content_text(part.content)))
        elif isinstance(part, ToolReturnPart):
            items.append(
                _item(
                    "tool_result",
                    text=part.model_response_str(),
                    tool_name=part.tool_name,
                    tool_call_id=part.tool_call_id,
                )
            )
        elif isinstance(part, RetryPromptPart):
            kind = "tool_result" if part.tool_name else "retry"
            if kind == "tool_result":
                # A tool that raised ModelRetry (or failed validation): its result is the retry prompt.
                items.append(
                    _item(kind, text=part.model_response(), tool_name=part.tool_name, tool_call_id=part.tool_call_id)
                )
                items.append(_item("retry", text=part.model_response(), tool_name=part.tool_name))
            else:
                items.append(_item("retry", text=part.model_response()))
    return items


def _prompt(inputs: Any) -> Any:
    if not isinstance(inputs, dict):
        return None
    args, kwargs = inputs.get("args") or (), inputs.get("kwargs") or {}
    return args[0] if args else kwargs.get("user_prompt")


class ConsoleData:
    """Reads runs, steps, conversations and costs from one system database (a DBOS client and a read-only query)."""

    def __init__(self, database_url: str, *, trust_pickle: bool = False) -> None:
        sqlite_file = _sqlite_path(database_url)
        if sqlite_file is not None and not sqlite_file.exists():  # DBOSClient would create an empty file
            raise UserError(system_database_error(database_url, FileNotFoundError(str(sqlite_file))))
        client: DBOSClient | None = None
        try:
            client = DBOSClient(system_database_url=database_url, serializer=serializer_for())
            client.list_workflows(limit=1, load_input=False, load_output=False)  # DBOS's tables are there
        except Exception as error:
            if client is not None:
                client.destroy()
            # Says whether the server is unreachable (and why), or the database is not one DBOS made.
            raise UserError(system_database_error(database_url, error)) from error
        self.client = client
        self.database_url = database_url
        self.trust_pickle = trust_pickle  # else values stored as pickle show as "stored as pickle, not displayed"
        try:
            self.inbox = ApprovalInbox(
                database_url, trust_pickle=trust_pickle
            )  # one connection for every approvals view and decision
        except BaseException:
            client.destroy()
            raise
        self._engine, self._status = client_status_table(self.client)
        # Summaries of finished runs never change (until resumed, which changes `updated_at`).
        self._summaries: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        self.inbox.close()
        self.client.destroy()

    # --- Runs ------------------------------------------------------------------------------------

    def agents(self) -> list[str]:
        ws = self._status
        query = sa.select(ws.c.name).where(self._is_run(ws.c.name)).distinct()
        with self._engine.connect() as connection:
            names = [row[0] for row in connection.execute(query)]
        return sorted({agent for name in names if (agent := agent_of(name)) is not None})

    @staticmethod
    def _is_run(name: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        return sa.or_(*(name.endswith(suffix, autoescape=True) for suffix in RUN_SUFFIXES))

    def list_runs(
        self,
        *,
        agent: str | None = None,
        status: str | None = None,
        q: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of runs, newest first, and the cursor of the next page (keyset on created_at, workflow id)."""
        ws = self._status
        query = sa.select(ws.c.workflow_uuid, ws.c.created_at).where(self._is_run(ws.c.name))
        if agent:
            query = query.where(ws.c.name.in_([f"{agent}{suffix}" for suffix in RUN_SUFFIXES]))
        if status:
            query = query.where(ws.c.status == status)
        if q:
            needle = q.lower()
            query = query.where(
                sa.or_(
                    sa.func.lower(ws.c.workflow_uuid).contains(needle, autoescape=True),
                    sa.func.lower(ws.c.name).contains(needle, autoescape=True),
                )
            )
        if cursor:
            created_at, workflow_id = decode_cursor(cursor)
            query = query.where(
                sa.or_(
                    ws.c.created_at < created_at,
                    sa.and_(ws.c.created_at == created_at, ws.c.workflow_uuid < workflow_id),
                )
            )
        query = query.order_by(ws.c.created_at.desc(), ws.c.workflow_uuid.desc()).limit(limit + 1)
        with self._engine.connect() as connection:
            rows = connection.execute(query).all()
        next_cursor = encode_cursor(rows[limit - 1][1], rows[limit - 1][0]) if len(rows) > limit else None
        ids = [row[0] for row in rows[:limit]]
        return self.summaries(ids), next_cursor

    def summaries(self, workflow_ids: list[str]) -> list[dict[str, Any]]:
        """RunSummaries of these runs, in this order (unknown ids left out)."""
        if not workflow_ids:
            return []
        statuses = safe_list_workflows(self.client, workflow_ids=workflow_ids, trust_pickle=self.trust_pickle)
        by_id = {status.workflow_id: status for status in statuses}
        summaries = []
        for workflow_id in workflow_ids:
            status = by_id.get(workflow_id)
            if status is None:
                continue
            key = (workflow_id, status.updated_at or 0)
            with self._lock:
                cached = self._summaries.get(key)
            if cached is None:
                cached = self._summary(status, self._steps(workflow_id))
                if status.status in FINISHED:
                    with self._lock:
                        self._summaries[key] = cached
                        while len(self._summaries) > _SUMMARY_CACHE_SIZE:
                            self._summaries.popitem(last=False)
            summaries.append(dict(cached))
        return summaries

    def _steps(self, workflow_id: str) -> list[Any]:
        """The run's steps, their outputs and errors read without unpickling (see `_safe_read.py`)."""
        return safe_list_workflow_steps(self.client, workflow_id, trust_pickle=self.trust_pickle)

    def _summary(self, status: Any, steps: list[Any]) -> dict[str, Any]:
        requests = self._model_requests(steps)
        failures = [step["output"] for step in steps if isinstance(step["output"], FailedAttempt)]
        published = (
            safe_get_event(self.client, status.workflow_id, RETRY_EVENT, trust_pickle=self.trust_pickle)
            if failures
            else None
        )
        retry = retry_json(status.status, failures, published)
        costs = [request["cost_usd"] for request in requests]
        finished = status.status in FINISHED
        end = (status.completed_at or status.updated_at) if finished else None
        step_ends = [step["completed_at_epoch_ms"] for step in steps if step["completed_at_epoch_ms"] is not None]
        if end is not None and step_ends:
            end = max(end, *step_ends)  # SQLite keeps the workflow's own times in whole seconds
        return {
            "workflow_id": status.workflow_id,
            "agent": agent_of(status.name) or status.name,
            "workflow_name": status.name,
            "status": status.status,
            "started_at": _iso(status.created_at),
            "completed_at": _iso(end),
            "duration_ms": None if end is None or status.created_at is None else end - status.created_at,
            "model_requests": len(requests),
            "input_tokens": sum(request["input_tokens"] for request in requests),
            "output_tokens": sum(request["output_tokens"] for request in requests),
            "cost_usd": None if None in costs else round(sum(c for c in costs if c is not None), 10),
            "parent_workflow_id": status.parent_workflow_id,
            "forked_from": status.forked_from,
            "error": error_text(status.error),
            "executor_id": status.executor_id,
            "app_version": status.app_version,
            "recovery": self._recovery(status, steps),
            "retry": retry,
            "can_continue": status.status in CONTINUABLE and bool(failures),
        }

    def _recovery(self, status: Any, steps: list[Any]) -> dict[str, Any] | None:
        attempts = recovery_attempts(status)
        if attempts is None or attempts < 2:
            return None
        ws = self._status
        query = sa.select(ws.c.started_at_epoch_ms).where(ws.c.workflow_uuid == status.workflow_id)
        with self._engine.connect() as connection:
            recovered_at = connection.execute(query).scalar()
        return recovery_json(attempts, recovered_at, steps)

    @staticmethod
    def _model_requests(steps: Iterable[Any]) -> list[dict[str, Any]]:
        requests = []
        for step in steps:
            response = step["output"]
            if not step["function_name"].endswith(MODEL_STEP_SUFFIXES) or not isinstance(response, ModelResponse):
                continue
            started, completed = step["started_at_epoch_ms"], step["completed_at_epoch_ms"]
            requests.append(
                {
                    "function_id": step["function_id"],
                    "model_name": response.model_name,
                    "provider_name": response.provider_name,
                    "input_tokens": response.usage.input_tokens,
                    "output_tokens": response.usage.output_tokens,
                    "cost_usd": model_cost(response),
                    "duration_ms": None if started is None or completed is None else completed - started,
                }
            )
        return requests

    def run(self, workflow_id: str) -> dict[str, Any]:
        """A run with its conversation, steps, model requests, children, pending approvals and output."""
        statuses = safe_list_workflows(
            self.client, workflow_ids=[workflow_id], load_input=True, trust_pickle=self.trust_pickle
        )
        if not statuses or agent_of(statuses[0].name) is None:
            raise RunNotFound(workflow_id)
        status = statuses[0]
        steps = self._steps(workflow_id)
        detail = self._summary(status, steps)
        requests = self._model_requests(steps)
        children = self.client.list_workflows(parent_workflow_id=workflow_id, load_input=False, load_output=False)
        pending: list[dict[str, Any]] = []
        if status.status == "PENDING":
            pending = [approval_json(p) for p in self.inbox.list_pending(workflow_id=workflow_id)]
        output = status.output
        result_output = output.output if isinstance(output, AgentRunResult) else output
        detail.update(
            {
                "conversation": self._conversation(status, steps),
                "steps": [
                    {
                        "function_id": step["function_id"],
                        "name": step["function_name"],
                        "kind": step_kind(step["function_name"], step["child_workflow_id"]),
                        "started_at": _iso(step["started_at_epoch_ms"]),
                        "completed_at": _iso(step["completed_at_epoch_ms"]),
                        "duration_ms": (
                            None
                            if step["started_at_epoch_ms"] is None or step["completed_at_epoch_ms"] is None
                            else step["completed_at_epoch_ms"] - step["started_at_epoch_ms"]
                        ),
                        "error": (
                            step["output"].describe()
                            if isinstance(step["output"], FailedAttempt)
                            else error_text(step["error"])
                        ),
                        "failed_attempt": isinstance(step["output"], FailedAttempt),
                        "child_workflow_id": step["child_workflow_id"],
                    }
                    for step in steps
                ],
                "model_requests": requests,
                "children": [
                    {"workflow_id": child.workflow_id, "workflow_name": child.name, "status": child.status}
                    for child in children
                ],
                "pending_approvals": pending,
                "output": None if status.status != "SUCCESS" else output_text(result_output),
            }
        )
        return detail

    def _conversation(self, status: Any, steps: list[Any]) -> list[dict[str, Any]]:
        """The run as a person reads it: from its result when it finished, else from its recorded model responses."""
        model_steps = [
            step
            for step in steps
            if step["function_name"].endswith(MODEL_STEP_SUFFIXES) and isinstance(step["output"], ModelResponse)
        ]
        result = status.output
        if isinstance(result, AgentRunResult):
            messages = result.all_messages()
            new_count = len(result.new_messages())
            # The responses of this run are the last ones; they match its model request steps in order.
            function_ids = iter(step["function_id"] for step in model_steps)
            items: list[dict[str, Any]] = []
            for index, message in enumerate(messages):
                if isinstance(message, ModelRequest):
                    items.extend(_request_items(message))
                elif isinstance(message, ModelResponse):
                    function_id = next(function_ids, None) if index >= len(messages) - new_count else None
                    items.extend(_response_items(message, function_id))
            items.append(_item("output", text=output_text(result.output)))
            return items
        items = []
        prompt = _prompt(status.input)
        if prompt is not None:
            items.append(_item("user", text=_content_text(prompt)))
        for step in model_steps:
            items.extend(_response_items(step["output"], step["function_id"]))
        return items

    def status_of(self, workflow_id: str) -> str:
        """The DBOS status of a durable run; RunNotFound when there is none."""
        statuses = self.client.list_workflows(workflow_ids=[workflow_id], load_input=False, load_output=False)
        if not statuses or agent_of(statuses[0].name) is None:
            raise RunNotFound(workflow_id)
        return statuses[0].status


def approval_json(approval: Any) -> dict[str, Any]:
    """A `PendingApproval` as JSON (timestamps in ISO 8601)."""
    data = asdict(approval)
    for key in ("requested_at", "deadline"):
        value = data.get(key)
        data[key] = value.isoformat() if isinstance(value, datetime) else None
    return jsonable(data)


def encode_cursor(created_at: int, workflow_id: str) -> str:
    raw = json.dumps([created_at, workflow_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The (created_at, workflow id) of a cursor made by `encode_cursor`; InvalidCursor for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, workflow_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as error:
        raise InvalidCursor(cursor) from error
    if type(created_at) is not int or not 0 <= created_at < 2**63 or not isinstance(workflow_id, str):
        raise InvalidCursor(cursor)
    if "\x00" in workflow_id:
        raise InvalidCursor(cursor)
    return created_at, workflow_id
