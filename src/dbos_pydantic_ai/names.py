"""Every name this library persists in the database, in one place.

Workflow and step names, event keys, message topics, stream keys and table names are compatibility data: a run
recorded under one name is recovered, read and displayed by looking that name up again, possibly by another version
of this library. Change none of them without a migration. Every reader and writer imports them from here.
"""

from __future__ import annotations

__all__ = [
    "APPROVALS_EVENT",
    "APPROVALS_STEP_MARKER",
    "DECISIONS_BY_TIME_INDEX",
    "DECISIONS_TABLE",
    "DECISION_TOPIC",
    "DURABLE_TOOL_STEP_MARKER",
    "JSON_SERIALIZATION",
    "MCP_STEP_MARKER",
    "MODEL_STEP_SUFFIXES",
    "RETRY_EVENT",
    "RUN_WORKFLOW_SUFFIXES",
    "STREAMED_INPUT",
    "STREAM_EVENTS_INPUT",
    "STREAM_KEY",
    "TAKEOVERS_TABLE",
    "TRACE_EVENT",
    "WORKERS_TABLE",
    "approvals_check_step",
    "approvals_timeout_step",
    "approvals_wait_step",
    "decision_idempotency_key",
    "durable_tool_step",
    "library_step_kind",
    "mcp_step_prefix",
    "model_request_step",
    "model_request_stream_step",
    "run_sync_workflow",
    "run_workflow",
]

# --- Stored values -------------------------------------------------------------------------------

JSON_SERIALIZATION = "dbos_pydantic_ai_json"
"""The `serialization` DBOS records on every value `JSONSerializer` stores (`py_pickle` marks a pickled one)."""

# --- Workflows ------------------------------------------------------------------------------------


def run_workflow(agent: str) -> str:
    """`DBOSAgent.run()` of agent `agent`."""
    return f"{agent}.run"


def run_sync_workflow(agent: str) -> str:
    """`DBOSAgent.run_sync()` of agent `agent`."""
    return f"{agent}.run_sync"


RUN_WORKFLOW_SUFFIXES = (".run", ".run_sync")
"""How a workflow name ends when it is an agent run (the console lists these)."""

STREAMED_INPUT = "_dbos_pydantic_ai_streamed"
"""A run's stored input that marks it was started with a per-run event stream handler: its model requests are
streamed steps, and a recovery without the handler must stream them too to replay them."""

STREAM_EVENTS_INPUT = "_dbos_pydantic_ai_stream_events"
"""A run's stored input that marks it records its events in its DBOS stream (`stream_events=True`): stored, so a
recovered run records them even if the agent's flag changed."""

# --- Steps ----------------------------------------------------------------------------------------


def model_request_step(agent: str) -> str:
    return f"{agent}__model.request"


def model_request_stream_step(agent: str) -> str:
    return f"{agent}__model.request_stream"


def mcp_step_prefix(agent: str, toolset_id: str) -> str:
    """Followed by `.get_tools`, `.call_tool` or `.get_instructions`."""
    return f"{agent}__mcp_server__{toolset_id}"


def durable_tool_step(agent: str, tool: str) -> str:
    return f"{agent}__tool.{tool}"


def approvals_wait_step(agent: str) -> str:
    return f"{agent}__approvals.wait"


def approvals_check_step(agent: str) -> str:
    return f"{agent}__approvals.check"


def approvals_timeout_step(agent: str) -> str:
    return f"{agent}__approvals.timeout"


# How a reader tells the kind of a step from its name (the console's timeline).
MODEL_STEP_SUFFIXES = ("__model.request", "__model.request_stream")
MCP_STEP_MARKER = "__mcp_server__"
DURABLE_TOOL_STEP_MARKER = "__tool."
APPROVALS_STEP_MARKER = "__approvals."


def library_step_kind(name: str) -> str | None:
    """The kind of one of this library's steps by its name: model, mcp, tool or wait; None for any other step."""
    if name.endswith(MODEL_STEP_SUFFIXES):
        return "model"
    if MCP_STEP_MARKER in name:
        return "mcp"
    if DURABLE_TOOL_STEP_MARKER in name:
        return "tool"
    if APPROVALS_STEP_MARKER in name:
        return "wait"
    return None


# --- Events, messages, streams, tables ------------------------------------------------------------

STREAM_KEY = "dbos_pydantic_ai.events"
"""The DBOS stream, in a run's workflow, that holds its events (`stream_events=True`)."""

APPROVALS_EVENT = "dbos_pydantic_ai.approvals"
"""The DBOS event key under which a waiting run publishes its pending calls."""

DECISION_TOPIC = "dbos_pydantic_ai.approval_decision"
"""The DBOS message topic on which a waiting run receives decisions."""

RETRY_EVENT = "dbos_pydantic_ai.model_retry"
"""The DBOS event key under which a run publishes its model retry state (waiting, recovered, gave up)."""

TRACE_EVENT = "dbos_pydantic_ai.trace"
"""The DBOS event key under which a traced run keeps its latest execution's trace context (trace and span id, the
execution's number), so a recovered execution links to the one before (tracing.py)."""

DECISIONS_TABLE = "dbos_pai_approval_decisions"
"""The table of approval decisions: the arbiter of each call, and the audit log."""

DECISIONS_BY_TIME_INDEX = "dbos_pai_approval_decisions_by_time"
"""Its index on `decided_at_epoch_ms`: a worker with parked runs looks for new decisions once a second (_parking.py)."""


def decision_idempotency_key(wait_id: int, tool_call_id: str) -> str:
    return f"dbos_pai_decision:{wait_id}:{tool_call_id}"


WORKERS_TABLE = "dbos_pai_workers"
"""The fleet's workers: one row per executor id, with its heartbeat, state and the process that holds the id."""

TAKEOVERS_TABLE = "dbos_pai_takeovers"
"""One row per run taken over from a worker declared dead: which run, from which worker, by which, when."""
