"""Bad inputs: each one fails early with an error that names the problem and the fix, and records nothing.

Every test that touches DBOS runs on SQLite and on PostgreSQL (the `database_url` fixture).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOS
from fastmcp.client.transports import PythonStdioTransport, StreamableHttpTransport
from pydantic_ai import Agent
from pydantic_ai.exceptions import UserError
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.test import TestModel

from dbos_pydantic_ai import DatabaseUnreachableError, DBOSAgent, NotSerializableError, dbos_config

Launch = Callable[[], None]


def no_workflows() -> bool:
    return DBOS.list_workflows() == []


# --- Creating a DBOSAgent ------------------------------------------------------------------------


def test_agent_without_name(launch_dbos: Launch) -> None:
    """A nameless agent cannot name its workflows: the error shows both ways to give it a name."""
    with pytest.raises(UserError, match=r"needs a name.*DBOSAgent\(agent, name=.*Agent\(\.\.\., name="):
        DBOSAgent(Agent(TestModel()))
    launch_dbos()
    assert no_workflows()


def test_two_agents_with_the_same_name(agent_name: str, launch_dbos: Launch) -> None:
    """The second agent with a taken name is refused; the first keeps its workflows and still works."""
    first_model, second_model = TestModel(custom_output_text="first"), TestModel(custom_output_text="second")
    first = DBOSAgent(Agent(first_model, name=agent_name))
    with pytest.raises(UserError, match=rf"named '{agent_name}' already exists.*unique.*different `name=`"):
        DBOSAgent(Agent(second_model, name=agent_name))
    launch_dbos()

    assert first.run_sync("hi").output == "first"
    assert [w.name for w in DBOS.list_workflows()] == [f"{agent_name}.run_sync"]


def test_agent_created_after_launch(agent_name: str, launch_dbos: Launch) -> None:
    """After launch DBOS cannot register the agent's workflows: refused, and the name stays free."""
    launch_dbos()
    with pytest.raises(UserError, match=rf"'{agent_name}' was created after DBOS\.launch\(\).*before calling"):
        DBOSAgent(Agent(TestModel(), name=agent_name))
    assert no_workflows()

    DBOS.destroy()  # before a launch the same name is accepted: the refused agent registered nothing
    assert DBOSAgent(Agent(TestModel(), name=agent_name)).name == agent_name


def test_parallel_execution_mode_parallel(agent_name: str) -> None:
    """Plain 'parallel' emits events in completion order, which no replay reproduces."""
    with pytest.raises(UserError, match=r"'parallel' cannot replay deterministically.*'parallel_ordered_events'"):
        DBOSAgent(Agent(TestModel(), name=agent_name), parallel_execution_mode="parallel")  # type: ignore[arg-type]


@pytest.mark.parametrize("argument", ["model_step_config", "mcp_step_config", "tool_step_config"])
def test_step_config_with_unknown_key(agent_name: str, argument: str) -> None:
    """A misspelt retry option would silently be ignored by DBOS: refused, with the keys it takes."""
    with pytest.raises(UserError, match=rf"`{argument}` has unknown keys \['max_attempt'\].*'max_attempts'"):
        DBOSAgent(Agent(TestModel(), name=agent_name), **{argument: {"max_attempt": 3}})


def _agent_with_tool(name: str) -> Agent[None, str]:
    def lookup(key: str) -> str:
        return key

    return Agent(TestModel(), name=name, tools=[lookup])


def test_durable_tools_unknown_name(agent_name: str) -> None:
    """A durable tool that does not exist is a typo: the error lists the agent's plain tools."""
    with pytest.raises(UserError, match=r"`durable_tools` names \['nope'\].*plain tools: \['lookup'\]"):
        DBOSAgent(_agent_with_tool(agent_name), durable_tools=["nope"])


def test_durable_tools_string(agent_name: str) -> None:
    """A bare string would be read as a collection of one-letter tool names."""
    with pytest.raises(UserError, match=r"`durable_tools` takes True or a collection of tool names, not the string"):
        DBOSAgent(_agent_with_tool(agent_name), durable_tools="x")


# --- MCP toolsets --------------------------------------------------------------------------------


@pytest.fixture
def unstarted_server(tmp_path: Path) -> tuple[Path, Path]:
    """A stdio MCP server script that leaves a marker file if it is ever started, and that marker's path."""
    marker = tmp_path / "started"
    script = tmp_path / "server.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    return script, marker


@pytest.mark.parametrize("client", ["url", "http_transport", "stdio_transport"])
def test_mcp_toolset_without_id(agent_name: str, unstarted_server: tuple[Path, Path], client: str) -> None:
    """An MCP toolset's id names its steps, so a durable agent needs an explicit one; nothing connects."""
    script, marker = unstarted_server
    source: Any = {
        "url": "http://127.0.0.1:1/mcp",
        "http_transport": StreamableHttpTransport("http://127.0.0.1:1/mcp"),
        "stdio_transport": PythonStdioTransport(script, python_cmd=sys.executable),
    }[client]
    with pytest.raises(UserError, match=r"needs an explicit, unique `id`.*MCPToolset\(\.\.\., id="):
        DBOSAgent(Agent(TestModel(), name=agent_name, toolsets=[MCPToolset(source)]))
    assert not marker.exists()


def test_two_mcp_toolsets_with_the_same_id(agent_name: str, unstarted_server: tuple[Path, Path]) -> None:
    """Two toolsets with one id would write steps under the same names."""
    script, marker = unstarted_server
    toolsets = [
        MCPToolset("http://127.0.0.1:1/mcp", id="files"),
        MCPToolset(PythonStdioTransport(script, python_cmd=sys.executable), id="files"),
    ]
    with pytest.raises(UserError, match=r"Two MCP toolsets share the id 'files'.*unique `id`"):
        DBOSAgent(Agent(TestModel(), name=agent_name, toolsets=toolsets))
    assert not marker.exists()


# --- Run inputs DBOS cannot store ----------------------------------------------------------------


@dataclass
class Deps:
    user: str
    lock: threading.Lock


async def test_unpicklable_deps(agent_name: str, launch_dbos: Launch) -> None:
    """Deps holding a lock cannot be stored: the error names `deps.lock`; no workflow starts."""
    model = TestModel(custom_output_text="ok")
    durable = DBOSAgent(Agent(model, name=agent_name, deps_type=Deps))
    launch_dbos()

    with pytest.raises(NotSerializableError, match=r"`deps\.lock` \(a lock\) cannot be stored.*Pass plain data"):
        await durable.run("hi", deps=Deps("ada", threading.Lock()))
    assert await DBOS.list_workflows_async() == []
    assert model.last_model_request_parameters is None  # the model was never called
    assert isinstance(NotSerializableError("x"), UserError)


def test_unpicklable_deps_sync(agent_name: str, launch_dbos: Launch) -> None:
    """The same check guards `run_sync`, and a good run afterwards is the only workflow."""
    durable = DBOSAgent(Agent(TestModel(custom_output_text="ok"), name=agent_name, deps_type=Deps))
    launch_dbos()

    with pytest.raises(NotSerializableError, match=r"`deps\.lock`"):
        durable.run_sync("hi", deps=Deps("ada", threading.Lock()))
    assert no_workflows()
    assert durable.run_sync("hi", deps=Deps("ada", None)).output == "ok"  # type: ignore[arg-type]
    assert len(DBOS.list_workflows()) == 1


async def test_unpicklable_message_history(agent_name: str, launch_dbos: Launch) -> None:
    """A tool return holding a live object in the history is named by its path; no workflow starts."""
    durable = DBOSAgent(Agent(TestModel(), name=agent_name))
    launch_dbos()
    history: list[ModelMessage] = [
        ModelRequest.user_text_prompt("open the file"),
        ModelResponse(parts=[ToolCallPart("open_file", {}, tool_call_id="c1")]),
        ModelRequest(parts=[ToolReturnPart("open_file", threading.Lock(), tool_call_id="c1")]),
        ModelResponse(parts=[TextPart("opened")]),
    ]

    with pytest.raises(NotSerializableError, match=r"`message_history\[2\]\.parts\[0\]\.content` \(a lock\)"):
        await durable.run("read it", message_history=history)
    assert await DBOS.list_workflows_async() == []


# --- dbos_config with a database that cannot be used ---------------------------------------------


def test_unreachable_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgreSQL server that does not answer fails at configuration time, password hidden."""
    url = "postgresql://postgres:s3cret-pw@127.0.0.1:1/app"
    expected = r"(?s)Cannot reach PostgreSQL at .*127\.0\.0\.1:1.*server is running"
    with pytest.raises(DatabaseUnreachableError, match=expected) as error:
        dbos_config("app", database_url=url)
    assert "s3cret-pw" not in str(error.value)
    assert "postgres:***@127.0.0.1:1/app" in str(error.value)


def test_sqlite_in_missing_folder(tmp_path: Path) -> None:
    """A SQLite file in a folder that does not exist is named with its folder; nothing is created."""
    folder = tmp_path / "missing"
    with pytest.raises(DatabaseUnreachableError, match=r"the folder .*missing.* does not exist\. Create it first"):
        dbos_config("app", database_url=f"sqlite:///{folder}/app.sqlite")
    assert not folder.exists()


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_sqlite_without_file(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-memory database loses every run with the process: refused, with a file URL as the fix."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatabaseUnreachableError, match=r"names no file.*sqlite:///path/to/app\.sqlite"):
        dbos_config("app", database_url=url)
    assert list(tmp_path.iterdir()) == []
