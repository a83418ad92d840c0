"""Durable Pydantic AI agents on DBOS.

Wrap an agent in `DBOSAgent` before `DBOS.launch()`: its runs become DBOS workflows, its model
requests and MCP calls checkpointed steps, so a run survives a crash without redoing finished work.
"""

from .agent import DBOSAgent, DBOSParallelExecutionMode
from .config import StepConfig, dbos_config
from .exceptions import DatabaseUnreachableError, NotSerializableError, StepFailedError
from .model import DBOSModel


def __getattr__(name: str) -> object:
    # MCP support is an optional extra (`dbos-pydantic-ai[mcp]`): import it only when asked for.
    if name == "DBOSMCPToolset":
        from .mcp import DBOSMCPToolset

        return DBOSMCPToolset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DBOSAgent",
    "DBOSMCPToolset",
    "DBOSModel",
    "DBOSParallelExecutionMode",
    "DatabaseUnreachableError",
    "NotSerializableError",
    "StepConfig",
    "StepFailedError",
    "dbos_config",
]
