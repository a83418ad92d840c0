"""MCP server calls as DBOS steps, with one MCP session per run.

Inside a workflow, listing tools, calling a tool and reading the server's instructions are each a
DBOS step named `{agent}__mcp_server__{toolset_id}.{get_tools|call_tool|get_instructions}`. Tools are
listed once per run (before every model request with `cache_tools=False`). The
session is opened lazily inside the first step that needs it and closed when the run ends, so a
recovered run whose steps all replay from the database never connects at all.

The session belongs to the MCP toolset, which every run of the process shares, so it is opened, used and closed on
the process's durable loop (`_durable_loop.py`), whatever loop a run is on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dbos import StepOptions
from pydantic_ai.exceptions import UserError
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import InstructionPart
from pydantic_ai.tools import RunContext, ToolDefinition
from pydantic_ai.toolsets import AbstractToolset, WrapperToolset
from pydantic_ai.toolsets.abstract import ToolsetTool

from ._compat import mcp_explicit_id
from ._durable_loop import on_durable_loop
from ._steps import in_workflow, run_reserved_step, run_step, step_options
from .config import StepConfig
from .names import mcp_step_prefix
from .tools import ToolCallOrder

__all__ = ["DBOSMCPToolset", "mcp_toolset_id"]


def mcp_toolset_id(toolset: MCPToolset[Any]) -> str:
    """The explicit `id` of an MCP toolset, which names its steps; a clear error when it has none."""
    toolset_id = mcp_explicit_id(toolset)
    if toolset_id is None:
        raise UserError(
            f"MCP toolset {toolset.label} needs an explicit, unique `id` to be used in a durable agent: "
            "its steps are named after it, and the name must stay the same across restarts. "
            "Pass one when creating it, e.g. `MCPToolset(..., id='filesystem')`."
        )
    return toolset_id


@dataclass
class DBOSMCPToolset(WrapperToolset[Any]):
    """Wraps an `MCPToolset` for one durable run: its server calls are DBOS steps."""

    step_name_prefix: str
    step_config: StepConfig = field(default_factory=StepConfig)
    order: ToolCallOrder | None = None
    """The run's tool-call order: parallel MCP calls take their step numbers in the model's order."""
    _entered: bool = field(default=False, init=False, repr=False)
    _tool_defs: list[ToolDefinition] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        prefix = mcp_step_prefix(self.step_name_prefix, mcp_toolset_id(self.mcp))
        self._get_tools_options: StepOptions = step_options(f"{prefix}.get_tools", self.step_config)
        self._call_tool_options: StepOptions = step_options(f"{prefix}.call_tool", self.step_config)
        self._instructions_options: StepOptions = step_options(f"{prefix}.get_instructions", self.step_config)

    @property
    def mcp(self) -> MCPToolset[Any]:
        assert isinstance(self.wrapped, MCPToolset)
        return self.wrapped

    @property
    def id(self) -> str | None:
        return self.wrapped.id

    # The run enters its toolsets in workflow code; connecting there would reconnect on every replay.
    # The session is opened inside the first step that needs it instead.
    async def __aenter__(self) -> DBOSMCPToolset:
        return self

    async def __aexit__(self, *args: Any) -> bool | None:
        if self._entered:
            self._entered = False
            return await on_durable_loop(self.wrapped.__aexit__(*args))
        return None

    async def _connect(self) -> None:
        if not self._entered:
            await on_durable_loop(self.wrapped.__aenter__())
            self._entered = True

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        if not in_workflow():
            await self._connect()
            return await on_durable_loop(self.wrapped.get_tools(ctx))
        if self._tool_defs is None or not self.mcp.cache_tools:
            # Listed once per run, as pydantic-ai's MCPToolset caches them. A server's "tools changed" notification
            # is not followed within a run: it arrives at no fixed point, so a replay would list at other steps.
            self._tool_defs = await run_step(self._get_tools_options, self._tool_definitions, ctx)
        return {tool_def.name: self.mcp.tool_for_tool_def(tool_def, ctx=ctx) for tool_def in self._tool_defs}

    async def _tool_definitions(self, ctx: RunContext[Any]) -> list[ToolDefinition]:
        # A ToolsetTool holds a validator and the toolset itself; only the definitions are stored.
        await self._connect()
        return [tool.tool_def for tool in (await on_durable_loop(self.wrapped.get_tools(ctx))).values()]

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        if not in_workflow():
            await self._connect()
            return await on_durable_loop(self.wrapped.call_tool(name, tool_args, ctx, tool))
        if self.order is None:
            return await run_step(self._call_tool_options, self._call_tool, name, tool_args, ctx, tool)
        reservation = await self.order.reserve_step()
        return await run_reserved_step(
            reservation, self._call_tool_options, self._call_tool, name, tool_args, ctx, tool
        )

    async def _call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        await self._connect()
        return await on_durable_loop(self.wrapped.call_tool(name, tool_args, ctx, tool))

    async def get_instructions(self, ctx: RunContext[Any]) -> InstructionPart | None:
        if not self.mcp.include_instructions:
            return None
        if not in_workflow():
            await self._connect()
            return await on_durable_loop(self.mcp.get_instructions(ctx))
        return await run_step(self._instructions_options, self._instructions, ctx)

    async def _instructions(self, ctx: RunContext[Any]) -> InstructionPart | None:
        await self._connect()
        return await on_durable_loop(self.mcp.get_instructions(ctx))

    def visit_and_replace(self, visitor: Any) -> AbstractToolset[Any]:
        # Already wrapped for this run: wrapping again would double the steps.
        return self
