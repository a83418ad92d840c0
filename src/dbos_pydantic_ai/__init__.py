"""Durable Pydantic AI agents on DBOS.

Wrap an agent in `DBOSAgent` before `DBOS.launch()`: its runs become DBOS workflows, its model
requests and MCP calls checkpointed steps, so a run survives a crash without redoing finished work.
"""

from .agent import DBOSAgent, DBOSParallelExecutionMode
from .approvals import (
    ApprovalInbox,
    ApprovalRejected,
    PendingApproval,
    approval_args_digest,
    approve,
    approve_async,
    deliver_result,
    deliver_result_async,
    deny,
    deny_async,
    list_pending_approvals,
    list_pending_approvals_async,
)
from .config import StepConfig, dbos_config
from .exceptions import DatabaseUnreachableError, NotSerializableError, RunAlreadyActiveError, StepFailedError
from .fleet import FleetMember
from .model import DBOSModel
from .retries import ModelRetryPolicy, continue_run, is_transient
from .runs import RunHandle, start_run, start_run_async
from .serializer import JSONSerializer, StoredAsPickle, UnknownStoredTypeError, register_types
from .streams import (
    DurableRunEvents,
    DurableStreamedRun,
    DurableStreamEvent,
    EventLog,
    ModelRequestStarted,
    Superseded,
    read_events,
)


def __getattr__(name: str) -> object:
    # MCP support is an optional extra (`dbos-pydantic-ai[mcp]`): import it only when asked for.
    if name == "DBOSMCPToolset":
        from .mcp import DBOSMCPToolset

        return DBOSMCPToolset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ApprovalInbox",
    "ApprovalRejected",
    "DBOSAgent",
    "DBOSMCPToolset",
    "DBOSModel",
    "DBOSParallelExecutionMode",
    "DatabaseUnreachableError",
    "DurableRunEvents",
    "DurableStreamEvent",
    "DurableStreamedRun",
    "EventLog",
    "FleetMember",
    "JSONSerializer",
    "ModelRequestStarted",
    "ModelRetryPolicy",
    "NotSerializableError",
    "PendingApproval",
    "RunAlreadyActiveError",
    "RunHandle",
    "StepConfig",
    "StepFailedError",
    "StoredAsPickle",
    "Superseded",
    "UnknownStoredTypeError",
    "approval_args_digest",
    "approve",
    "approve_async",
    "continue_run",
    "dbos_config",
    "deliver_result",
    "deliver_result_async",
    "deny",
    "deny_async",
    "is_transient",
    "list_pending_approvals",
    "list_pending_approvals_async",
    "read_events",
    "register_types",
    "start_run",
    "start_run_async",
]
