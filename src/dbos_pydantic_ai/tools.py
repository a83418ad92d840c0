"""Function tools in a durable run: DBOS-decorated tools, opt-in durable tools, and replay order.

Tools are not wrapped by default. A tool that is itself a `@DBOS.step` is recorded as that step and
a `@DBOS.workflow` runs as a child workflow, because DBOS does that for any call made inside a
workflow. A plain tool runs inline and is not recorded: when a recovered run replays, every plain
tool call it had made runs again. With `DBOSAgent(..., durable_tools=True)` (or a collection of tool names) plain tools
become steps named `{agent}__tool.{tool_name}`, so a side effect that finished is not repeated.

Replay order. DBOS numbers a workflow's steps in the order they start, and a replay must meet the
same step at the same number. The model may ask for several tool calls at once, and pydantic-ai runs
them as concurrent tasks started in the order of the model's response. So:

- DBOS-decorated tools take their numbers inside DBOS, possibly on a worker thread and possibly
  several each, so they take turns in response order through a FIFO lock, one at a time;
- a durable tool, and an MCP tool call, queue on the same lock only to take their step number with
  `DBOS.reserve_step()`, then release it: the numbers follow the response order (after any DBOS tool
  called before them), and consecutive durable or MCP calls still run in parallel;
- plain tools create no steps and run fully in parallel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from dbos import DBOS, StepReservation
from pydantic_ai.exceptions import UserError
from pydantic_ai.tools import RunContext
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset, WrapperToolset
from pydantic_ai.toolsets.abstract import ToolsetTool
from pydantic_ai.toolsets.function import FunctionToolsetTool

from ._serialization import ensure_storable_result
from ._steps import in_workflow, run_reserved_step, step_options
from .config import StepConfig
from .names import durable_tool_step

__all__ = ["DBOSFunctionToolset", "durable_tool_names", "is_dbos_function"]


def is_dbos_function(func: Any) -> bool:
    """Whether `func` was decorated with `@DBOS.step` or `@DBOS.workflow` (DBOS records its name on it)."""
    return hasattr(func, "dbos_function_name")


def durable_tool_names(
    toolsets: Collection[AbstractToolset[Any]], durable_tools: bool | Collection[str]
) -> frozenset[str]:
    """The plain function tools to run as durable steps; an unknown name is a clear error."""
    if durable_tools is False:
        return frozenset()
    plain: set[str] = set()

    def collect(toolset: AbstractToolset[Any]) -> None:
        if isinstance(toolset, FunctionToolset):
            plain.update(name for name, tool in toolset.tools.items() if not is_dbos_function(tool.function))

    for toolset in toolsets:
        toolset.apply(collect)
    if durable_tools is True:
        return frozenset(plain)
    if isinstance(durable_tools, str):
        raise UserError(f"`durable_tools` takes True or a collection of tool names, not the string {durable_tools!r}.")
    unknown = sorted(set(durable_tools) - plain)
    if unknown:
        raise UserError(
            f"`durable_tools` names {unknown}, which are not plain function tools of this agent "
            f"(plain tools: {sorted(plain)}). Tools decorated with @DBOS.step or @DBOS.workflow are durable already."
        )
    return frozenset(durable_tools)


class ToolCallOrder:
    """Per-run state that keeps tool calls' DBOS step numbers in the model's order (see module docstring)."""

    def __init__(self) -> None:
        self._turns = asyncio.Lock()  # FIFO: waiters are woken in the order they queued

    async def reserve_step(self) -> StepReservation:
        """The next step number, taken behind earlier DBOS tools (which take theirs later, maybe on a thread).

        When no DBOS tool holds the turn this does not suspend, so the number follows the task start order.
        """
        async with self._turns:
            return DBOS.reserve_step()

    @asynccontextmanager
    async def exclusive_turn(self) -> AsyncIterator[None]:
        """Hold the turn for a whole DBOS-decorated tool call, whose step numbers DBOS takes as it goes."""
        async with self._turns:
            yield


@dataclass
class DBOSFunctionToolset(WrapperToolset[Any]):
    """Wraps a `FunctionToolset` for one durable run."""

    step_name_prefix: str
    durable: frozenset[str]
    order: ToolCallOrder
    step_config: StepConfig = field(default_factory=StepConfig)

    def __post_init__(self) -> None:
        assert isinstance(self.wrapped, FunctionToolset)
        tools = self.wrapped.tools
        self._dbos_tools = frozenset(name for name, tool in tools.items() if is_dbos_function(tool.function))
        self._durable_options = {
            name: step_options(durable_tool_step(self.step_name_prefix, name), self.step_config)
            for name in self.durable
            if name in tools
        }

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        original_name = tool.original_name if isinstance(tool, FunctionToolsetTool) else name
        if not in_workflow() or not (original_name in self._durable_options or original_name in self._dbos_tools):
            return await self.wrapped.call_tool(name, tool_args, ctx, tool)
        options = self._durable_options.get(original_name)
        if options is not None:
            reservation = await self.order.reserve_step()
            return await run_reserved_step(reservation, options, self._call_storable, name, tool_args, ctx, tool)
        async with self.order.exclusive_turn():
            return await self.wrapped.call_tool(name, tool_args, ctx, tool)

    async def _call_storable(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        """Inside the durable tool's step: call it, and name the tool if DBOS could not record its result."""
        result = await self.wrapped.call_tool(name, tool_args, ctx, tool)
        ensure_storable_result(name, result)
        return result

    def visit_and_replace(self, visitor: Any) -> AbstractToolset[Any]:
        return self
