"""MCP toolsets in durable runs, against a real MCP server over stdio and over streamable HTTP.

The server (`tests/mcp_servers/counting_server.py`) appends every request it handles to a file, so
these tests count on the server side how many sessions were opened and how many times a tool
really ran, while DBOS's step list shows what was checkpointed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from dbos import DBOS, SetWorkflowID
from dbos._error import DBOSMaxStepRetriesExceeded
from fastmcp.client.transports import PythonStdioTransport
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelRetry, ToolFailed, UserError
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from dbos_pydantic_ai import DBOSAgent, StepConfig
from mcp_servers.counting_server import INSTRUCTIONS

SERVER_SCRIPT = Path(__file__).parent / "mcp_servers" / "counting_server.py"
TOOLSET_ID = "counting"
SERVER_START_TIMEOUT_SECONDS = 60.0

Transport = Literal["stdio", "http"]


# --- The MCP server ------------------------------------------------------------------------------


@dataclass
class CountingServer:
    """A running counting server (or, for stdio, the recipe to start one) and its request log."""

    transport: Transport
    log_path: Path
    stderr_path: Path
    url: str | None = None

    def toolset(self, **kwargs: Any) -> MCPToolset[Any]:
        """A fresh `MCPToolset` for this server; `kwargs` go to the toolset (e.g. `id=`).

        The handshake gets the server's start timeout, not the 5 s default: a stdio server is a new Python process,
        and on a loaded CI machine its imports alone can take longer than 5 s.
        """
        kwargs.setdefault("init_timeout", SERVER_START_TIMEOUT_SECONDS)
        if self.transport == "http":
            assert self.url is not None
            return MCPToolset(self.url, **kwargs)
        # keep_alive=False: each session is its own server process, so sessions are visible server-side.
        transport = PythonStdioTransport(
            SERVER_SCRIPT, args=["--log", str(self.log_path)], keep_alive=False, log_file=self.stderr_path
        )
        return MCPToolset(transport, **kwargs)

    def events(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def sessions(self) -> int:
        """Sessions the server saw open: a modern one starts with `server/discover`, a legacy one with `initialize`."""
        return self.requests("server/discover") + self.requests("initialize")

    def requests(self, method: str) -> int:
        return sum(1 for e in self.events() if e["event"] == "request" and e["method"] == method)

    def tool_runs(self, name: str) -> list[dict[str, Any]]:
        """The arguments of each time the tool's body really ran."""
        return [e["args"] for e in self.events() if e["event"] == "tool" and e["name"] == name]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, stderr_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"MCP HTTP server exited with {process.returncode}: {stderr_path.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"MCP HTTP server did not listen on port {port} within {SERVER_START_TIMEOUT_SECONDS}s")


@pytest.fixture(params=["stdio", "http"])
def mcp_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CountingServer]:
    """The counting server over stdio (started by the client) or streamable HTTP (started here, killed after)."""
    transport: Transport = request.param
    server = CountingServer(transport, tmp_path / "mcp_calls.jsonl", tmp_path / "mcp_server.stderr")
    if transport == "stdio":
        yield server
        return
    port = _free_port()
    command = [sys.executable, str(SERVER_SCRIPT), "--log", str(server.log_path), "--transport", "http"]
    with server.stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        _wait_until_listening(process, port, server.stderr_path)
        server.url = f"http://127.0.0.1:{port}/mcp"
        yield server
    finally:
        process.kill()
        process.wait(timeout=30)


@pytest.fixture
def no_dbos() -> Iterator[None]:
    """No DBOS instance at all: DBOSAgent must behave as the plain agent."""
    DBOS.destroy()
    yield
    DBOS.destroy()


# --- Scripted models ------------------------------------------------------------------------------


def _tool_results(messages: list[ModelMessage]) -> list[ToolReturnPart | RetryPromptPart]:
    return [
        part
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart | RetryPromptPart)
    ]


def _result_text(part: ToolReturnPart | RetryPromptPart) -> str:
    return part.model_response() if isinstance(part, RetryPromptPart) else part.model_response_str()


def weather_model(cities: list[str], calls: list[str] | None = None) -> FunctionModel:
    """Asks for one city's weather per response (so each call is its own model step), then
    answers with every tool result it saw, joined by ' | '."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if calls is not None:
            calls.append("request")
        results = _tool_results(messages)
        if len(results) < len(cities):
            return ModelResponse(parts=[ToolCallPart("get_weather", {"city": cities[len(results)]})])
        return ModelResponse(parts=[TextPart(" | ".join(_result_text(r) for r in results))])

    return FunctionModel(respond)


def failing_tool_model() -> FunctionModel:
    """Calls `always_fails` once, then answers with what came back."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        results = _tool_results(messages)
        if not results:
            return ModelResponse(parts=[ToolCallPart("always_fails", {"reason": "bad weather"})])
        part = results[-1]
        kind = "retry" if isinstance(part, RetryPromptPart) else part.outcome
        return ModelResponse(parts=[TextPart(f"{kind}: {_result_text(part)}")])

    return FunctionModel(respond)


def _step_names(steps: list[Any]) -> list[str]:
    return [step["function_name"] for step in steps]


def _expected_weather_steps(name: str, cities: int, *, instructions: bool) -> list[str]:
    """The step list of a run that calls get_weather once per model response, `cities` times."""
    mcp = f"{name}__mcp_server__{TOOLSET_ID}"
    # The server's tools are listed once per run (cache_tools=True, the default); its instructions, when included,
    # are read before each model step.
    before_request = [f"{mcp}.get_instructions"] if instructions else []
    steps: list[str] = [f"{mcp}.get_tools"]
    for _ in range(cities):
        steps += [*before_request, f"{name}__model.request", f"{mcp}.call_tool"]
    return [*steps, *before_request, f"{name}__model.request"]


# --- 1. A durable run calling an MCP tool ---------------------------------------------------------


async def test_durable_run_calls_mcp_tool_as_steps(
    mcp_server: CountingServer, agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    toolset = mcp_server.toolset(id=TOOLSET_ID, include_instructions=True)
    agent = DBOSAgent(Agent(weather_model(["Paris", "Oslo"]), toolsets=[toolset]), name=agent_name)
    launch_dbos()

    with SetWorkflowID("mcp-async"):
        result = await agent.run("Weather in Paris and Oslo?")

    # The tool results went from the server, through the steps, to the model.
    assert result.output == "sunny in Paris, 21 degrees | sunny in Oslo, 21 degrees"
    # The server's instructions reached every model request.
    requests = [m for m in result.all_messages() if isinstance(m, ModelRequest)]
    assert requests and all(INSTRUCTIONS in (m.instructions or "") for m in requests)

    steps = await DBOS.list_workflow_steps_async("mcp-async")
    assert _step_names(steps) == _expected_weather_steps(agent_name, 2, instructions=True)
    call_outputs = [s["output"] for s in steps if s["function_name"].endswith(".call_tool")]
    assert call_outputs == ["sunny in Paris, 21 degrees", "sunny in Oslo, 21 degrees"]
    tools_output = next(s["output"] for s in steps if s["function_name"].endswith(".get_tools"))
    assert sorted(tool_def.name for tool_def in tools_output) == ["always_fails", "get_weather"]
    assert all(s["error"] is None for s in steps)

    assert mcp_server.tool_runs("get_weather") == [{"city": "Paris"}, {"city": "Oslo"}]
    assert mcp_server.sessions() == 1
    workflows = await DBOS.list_workflows_async(workflow_ids=["mcp-async"])
    assert workflows[0].name == f"{agent_name}.run"


def test_durable_run_sync_calls_mcp_tool_as_steps(
    mcp_server: CountingServer, agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    toolset = mcp_server.toolset(id=TOOLSET_ID, include_instructions=True)
    agent = DBOSAgent(Agent(weather_model(["Rome", "Lima"]), toolsets=[toolset]), name=agent_name)
    launch_dbos()

    with SetWorkflowID("mcp-sync"):
        result = agent.run_sync("Weather in Rome and Lima?")

    assert result.output == "sunny in Rome, 21 degrees | sunny in Lima, 21 degrees"
    requests = [m for m in result.all_messages() if isinstance(m, ModelRequest)]
    assert requests and all(INSTRUCTIONS in (m.instructions or "") for m in requests)
    steps = DBOS.list_workflow_steps("mcp-sync")
    assert _step_names(steps) == _expected_weather_steps(agent_name, 2, instructions=True)
    assert mcp_server.tool_runs("get_weather") == [{"city": "Rome"}, {"city": "Lima"}]
    assert mcp_server.sessions() == 1
    assert DBOS.list_workflows(workflow_ids=["mcp-sync"])[0].name == f"{agent_name}.run_sync"


# --- 2. One MCP session per run ------------------------------------------------------------------


async def test_one_mcp_session_per_run(
    mcp_server: CountingServer, agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    toolset = mcp_server.toolset(id=TOOLSET_ID)  # no instructions: no get_instructions steps
    agent = DBOSAgent(Agent(weather_model(["Kyiv", "Bern", "Baku"]), toolsets=[toolset]), name=agent_name)
    launch_dbos()

    with SetWorkflowID("session-1"):
        await agent.run("Three cities, please.")
    steps = await DBOS.list_workflow_steps_async("session-1")
    assert _step_names(steps) == _expected_weather_steps(agent_name, 3, instructions=False)
    mcp_steps = [name for name in _step_names(steps) if "__mcp_server__" in name]
    assert len(mcp_steps) == 4  # 1 tool listing and 3 tool calls...
    assert mcp_server.sessions() == 1  # ...in a single session
    assert mcp_server.requests("tools/list") == 1  # listed once per session, then cached
    assert len(mcp_server.tool_runs("get_weather")) == 3

    # The session closed with the run: the next run opens its own.
    with SetWorkflowID("session-2"):
        await agent.run("Again.")
    assert mcp_server.sessions() == 2
    assert len(mcp_server.tool_runs("get_weather")) == 6


async def test_tools_are_listed_before_every_request_without_cache_tools(
    mcp_server: CountingServer, agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    toolset = mcp_server.toolset(id=TOOLSET_ID, cache_tools=False)
    agent = DBOSAgent(Agent(weather_model(["Paris", "Oslo"]), toolsets=[toolset]), name=agent_name)
    launch_dbos()

    with SetWorkflowID("uncached"):
        await agent.run("Weather in Paris and Oslo?")

    names = _step_names(await DBOS.list_workflow_steps_async("uncached"))
    assert names.count(f"{agent_name}__mcp_server__{TOOLSET_ID}.get_tools") == 3  # one per model request
    assert names.count(f"{agent_name}__model.request") == 3


# --- 3. Re-executing a finished run does not call the server again for completed steps ------------


async def test_reexecution_does_not_call_mcp_again(
    mcp_server: CountingServer, agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    model_calls: list[str] = []
    toolset = mcp_server.toolset(id=TOOLSET_ID)
    agent = DBOSAgent(Agent(weather_model(["Doha"], model_calls), toolsets=[toolset]), name=agent_name)
    launch_dbos()

    with SetWorkflowID("original"):
        first = await agent.run("Weather in Doha?")
    assert first.output == "sunny in Doha, 21 degrees"
    assert (mcp_server.sessions(), len(mcp_server.tool_runs("get_weather")), len(model_calls)) == (1, 1, 2)
    steps = await DBOS.list_workflow_steps_async("original")
    names = _step_names(steps)

    # The same workflow id again: DBOS returns the recorded result; nothing runs.
    with SetWorkflowID("original"):
        again = await agent.run("Weather in Doha?")
    assert again.output == first.output
    assert (mcp_server.sessions(), len(mcp_server.tool_runs("get_weather")), len(model_calls)) == (1, 1, 2)

    # Fork from the last step (the final model request): every MCP step before it replays from the
    # database, so the server is not even connected to.
    last = steps[-1]
    assert last["function_name"] == f"{agent_name}__model.request"
    handle = await DBOS.fork_workflow_async("original", last["function_id"])
    forked = await handle.get_result()
    assert forked.output == first.output
    assert _step_names(await DBOS.list_workflow_steps_async(handle.workflow_id)) == names
    assert (mcp_server.sessions(), len(mcp_server.tool_runs("get_weather")), len(model_calls)) == (1, 1, 3)

    # Fork from the model request right after the tool call: the listing and the call replay (the tool does
    # not run again), and the run goes on without connecting to the server.
    call_index = names.index(f"{agent_name}__mcp_server__{TOOLSET_ID}.call_tool")
    after_call = steps[call_index + 1]
    assert after_call["function_name"] == f"{agent_name}__model.request"
    handle = await DBOS.fork_workflow_async("original", after_call["function_id"])
    forked = await handle.get_result()
    assert forked.output == first.output
    assert _step_names(await DBOS.list_workflow_steps_async(handle.workflow_id)) == names
    assert mcp_server.sessions() == 1
    assert len(mcp_server.tool_runs("get_weather")) == 1

    # Fork from the tool listing: it re-executes in a new session, and so does the call after it.
    assert steps[0]["function_name"] == f"{agent_name}__mcp_server__{TOOLSET_ID}.get_tools"
    handle = await DBOS.fork_workflow_async("original", steps[0]["function_id"])
    assert (await handle.get_result()).output == first.output
    assert mcp_server.sessions() == 2
    assert len(mcp_server.tool_runs("get_weather")) == 2


# --- 4. A failing MCP tool: the model sees the failure; DBOS does not retry the step ---------------

# Retries are enabled for MCP steps, so a failure DBOS wrongly treated as retryable would run the tool again.
RETRYING_STEPS: StepConfig = {"retries_allowed": True, "max_attempts": 3, "interval_seconds": 0.01, "backoff_rate": 1.0}


@pytest.mark.parametrize(
    ("behavior", "exception", "seen"),
    [("retry", ModelRetry, "retried"), ("failed", ToolFailed, "failed")],
)
async def test_failing_mcp_tool_reaches_model_without_dbos_retries(
    mcp_server: CountingServer,
    agent_name: str,
    launch_dbos: Callable[[], None],
    behavior: Literal["retry", "failed"],
    exception: type[Exception],
    seen: str,
) -> None:
    toolset = mcp_server.toolset(id=TOOLSET_ID, tool_error_behavior=behavior)
    agent = DBOSAgent(Agent(failing_tool_model(), toolsets=[toolset]), name=agent_name, mcp_step_config=RETRYING_STEPS)
    launch_dbos()

    with SetWorkflowID("failing"):
        result = await agent.run("Try the failing tool.")

    assert seen == result.output.split(":", 1)[0]
    assert "always_fails refused: bad weather" in result.output
    assert mcp_server.tool_runs("always_fails") == [{"reason": "bad weather"}]  # ran once: no DBOS retry
    steps = await DBOS.list_workflow_steps_async("failing")
    calls = [s for s in steps if s["function_name"] == f"{agent_name}__mcp_server__{TOOLSET_ID}.call_tool"]
    assert len(calls) == 1
    assert isinstance(calls[0]["error"], exception)
    assert "always_fails refused: bad weather" in str(calls[0]["error"])


async def test_mcp_tool_error_is_a_step_failure_and_retried(
    mcp_server: CountingServer, agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    """The contrast: with `tool_error_behavior='error'` the failure is a real step failure, which
    DBOS retries as `mcp_step_config` says, and the run fails."""
    toolset = mcp_server.toolset(id=TOOLSET_ID, tool_error_behavior="error")
    config: StepConfig = {**RETRYING_STEPS, "max_attempts": 2}
    agent = DBOSAgent(Agent(failing_tool_model(), toolsets=[toolset]), name=agent_name, mcp_step_config=config)
    launch_dbos()

    with SetWorkflowID("erroring"), pytest.raises(DBOSMaxStepRetriesExceeded) as raised:
        await agent.run("Try the failing tool.")
    assert len(raised.value.errors) == 2
    assert all("always_fails refused: bad weather" in str(error) for error in raised.value.errors)
    assert len(mcp_server.tool_runs("always_fails")) == 2
    steps = await DBOS.list_workflow_steps_async("erroring")
    calls = [s for s in steps if s["function_name"] == f"{agent_name}__mcp_server__{TOOLSET_ID}.call_tool"]
    assert len(calls) == 1
    assert calls[0]["error"] is not None


# --- 5. Without DBOS, the same agent is a plain agent ---------------------------------------------


async def test_without_dbos_agent_uses_mcp_directly(mcp_server: CountingServer, agent_name: str, no_dbos: None) -> None:
    toolset = mcp_server.toolset(id=TOOLSET_ID, include_instructions=True)
    agent = DBOSAgent(Agent(weather_model(["Cairo"]), toolsets=[toolset]), name=agent_name)

    result = await agent.run("Weather in Cairo?")
    assert result.output == "sunny in Cairo, 21 degrees"
    requests = [m for m in result.all_messages() if isinstance(m, ModelRequest)]
    assert all(INSTRUCTIONS in (m.instructions or "") for m in requests)
    assert mcp_server.tool_runs("get_weather") == [{"city": "Cairo"}]
    assert mcp_server.sessions() == 1


def test_without_dbos_agent_run_sync_uses_mcp_directly(
    mcp_server: CountingServer, agent_name: str, no_dbos: None
) -> None:
    toolset = mcp_server.toolset(id=TOOLSET_ID)
    agent = DBOSAgent(Agent(weather_model(["Accra"]), toolsets=[toolset]), name=agent_name)

    assert agent.run_sync("Weather in Accra?").output == "sunny in Accra, 21 degrees"
    assert mcp_server.tool_runs("get_weather") == [{"city": "Accra"}]


# --- 6. An MCP toolset needs an explicit id -------------------------------------------------------


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_mcp_toolset_without_explicit_id_is_refused(transport: Transport, agent_name: str, tmp_path: Path) -> None:
    # The toolset is never connected: no server is needed to check construction.
    server = CountingServer(transport, tmp_path / "unused.jsonl", tmp_path / "unused.stderr", "http://127.0.0.1:9/mcp")
    toolset = server.toolset()
    if transport == "http":
        assert toolset.id == "127.0.0.1"  # derived from the URL, but not a chosen, stable name
    with pytest.raises(UserError, match=r"needs an explicit, unique `id`.*MCPToolset\(\.\.\., id="):
        DBOSAgent(Agent(weather_model([]), toolsets=[toolset]), name=agent_name)
    # Also when wrapped in another toolset.
    with pytest.raises(UserError, match="needs an explicit, unique `id`"):
        DBOSAgent(Agent(weather_model([]), toolsets=[toolset.prefixed("weather")]), name=f"{agent_name}_prefixed")


def test_mcp_toolsets_with_the_same_id_are_refused(agent_name: str, tmp_path: Path) -> None:
    server = CountingServer("stdio", tmp_path / "unused.jsonl", tmp_path / "unused.stderr")
    toolsets = [server.toolset(id="same"), server.toolset(id="same")]
    with pytest.raises(UserError, match="Two MCP toolsets share the id 'same'"):
        DBOSAgent(Agent(weather_model([]), toolsets=toolsets), name=agent_name)


# --- Parallel calls keep the model's order ----------------------------------------------------------


@DBOS.step(name="test_mcp.slow_sync_step")
def slow_sync_step(city: str) -> str:
    """A sync step tool: DBOS numbers it on a worker thread, later than an async MCP call would start."""
    time.sleep(0.2)
    return f"stepped {city}"


def step_then_mcp_model() -> FunctionModel:
    """One response asking for a sync step tool and then an MCP tool, in parallel; then an answer."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(
                parts=[
                    ToolCallPart("slow_sync_step", {"city": "Oslo"}, tool_call_id="first"),
                    ToolCallPart("get_weather", {"city": "Lima"}, tool_call_id="second"),
                ]
            )
        return ModelResponse(parts=[TextPart(" | ".join(_result_text(p) for p in _tool_results(messages)))])

    return FunctionModel(respond)


async def test_parallel_mcp_call_is_numbered_after_an_earlier_sync_step_tool(
    mcp_server: CountingServer, agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    """An MCP call listed after a sync `@DBOS.step` tool takes the step number after it, every time.

    Without ordering, the MCP step would start (and be numbered) while the step tool's thread is still
    starting, and a replay that resolved that race the other way would fail.
    """
    agent = Agent(
        step_then_mcp_model(), name=agent_name, tools=[slow_sync_step], toolsets=[mcp_server.toolset(id=TOOLSET_ID)]
    )
    durable = DBOSAgent(agent)
    launch_dbos()
    for attempt in range(2):
        with SetWorkflowID(f"ordered-{attempt}"):
            result = await durable.run("go")
        assert result.output == "stepped Oslo | sunny in Lima, 21 degrees"
        names = [n for n in _step_names(await DBOS.list_workflow_steps_async(f"ordered-{attempt}"))]
        tool_steps = [
            n for n in names if n in ("test_mcp.slow_sync_step", f"{agent_name}__mcp_server__counting.call_tool")
        ]
        assert tool_steps == ["test_mcp.slow_sync_step", f"{agent_name}__mcp_server__counting.call_tool"]
