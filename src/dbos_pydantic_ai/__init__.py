"""Durable Pydantic AI agents on DBOS.

Wrap an agent in `DBOSAgent` before `DBOS.launch()`: its runs become DBOS workflows, its model
requests and MCP calls checkpointed steps, so a run survives a crash without redoing finished work.
"""

from .agent import DBOSAgent, DBOSParallelExecutionMode
from .config import StepConfig, dbos_config
from .exceptions import DatabaseUnreachableError, NotSerializableError, StepFailedError
from .mcp import DBOSMCPToolset
from .model import DBOSModel

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
