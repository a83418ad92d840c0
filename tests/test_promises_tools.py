"""Promises of docs/tools-and-mcp.md about toolsets passed to one run with `run(toolsets=[...])`.

- They stay plain tools even with `durable_tools=True` (the durable set is fixed when the `DBOSAgent` is created).
- An `MCPToolset` passed per run cannot be stored: the run is refused with `NotSerializableError`, before any
  workflow starts and without connecting to the server.

SQLite and PostgreSQL, `run` and `run_sync`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from dbos import DBOS
from fastmcp.client.transports import PythonStdioTransport
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.toolsets import FunctionToolset

from dbos_pydantic_ai import DBOSAgent, NotSerializableError
from run_modes import RunMode, run_in_mode

run_durable = partial(run_in_mode, prompt="go")


def both_tools_then_summary(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("stamp", {"doc": "d1"}), ToolCallPart("translate", {"doc": "d1"})])
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    return ModelResponse(
        parts=[TextPart(" | ".join(str(p.content) for p in last.parts if isinstance(p, ToolReturnPart)))]
    )


step_ids: dict[str, int | None] = {}  # tool -> the DBOS step it ran in (None: none)


def stamp(doc: str) -> str:
    step_ids["stamp"] = DBOS.step_id
    return f"stamped {doc}"


def translate(doc: str) -> str:
    """A module-level function: a per-run toolset is a workflow input, so it must pickle."""
    step_ids["translate"] = DBOS.step_id
    return f"translated {doc}"


async def test_per_run_toolsets_stay_plain_with_durable_tools_true(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A per-run toolset holds functions, which only pickle can store: this run uses the pickle switch.
    monkeypatch.setenv("DBOS_PYDANTIC_AI_SERIALIZER", "pickle")
    step_ids.clear()
    agent = Agent(FunctionModel(both_tools_then_summary), name=agent_name, tools=[stamp])
    durable = DBOSAgent(agent, durable_tools=True)
    launch_dbos()

    result = await run_durable(durable, run_mode, "wf-per-run", toolsets=[FunctionToolset([translate])])

    assert result.output == "stamped d1 | translated d1"
    names = [step["function_name"] for step in await DBOS.list_workflow_steps_async("wf-per-run")]
    assert names == [f"{agent_name}__model.request", f"{agent_name}__tool.stamp", f"{agent_name}__model.request"]
    assert step_ids["stamp"] is not None  # the agent's own tool ran as its step
    assert step_ids["translate"] is None  # the per-run tool ran inline, in no step


async def test_per_run_mcp_toolset_is_refused_before_anything_starts(
    agent_name: str, launch_dbos: Callable[[], None], run_mode: RunMode, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    script = tmp_path / "server.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")  # leaves a marker if it is ever started
    toolset = MCPToolset(PythonStdioTransport(script, python_cmd=sys.executable), id="files")
    model_calls: list[int] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        model_calls.append(1)
        return ModelResponse(parts=[TextPart("ran")])

    durable = DBOSAgent(Agent(FunctionModel(model), name=agent_name), durable_tools=True)
    launch_dbos()

    with pytest.raises(NotSerializableError, match=r"`toolsets\[0\]\S*` \(a .*\) cannot be stored"):
        await run_durable(durable, run_mode, "wf-mcp-per-run", toolsets=[toolset])

    assert await DBOS.list_workflows_async() == []
    assert model_calls == [] and not marker.exists()
