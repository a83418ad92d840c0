"""DBOSAgent's durable runs: workflow and step names, nesting, idempotency, model choice, messages, deps.

Every test that touches DBOS runs on SQLite and on PostgreSQL (the `database_url` fixture), with real
durable runs driven by `FunctionModel`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from dbos import DBOS, SetWorkflowID
from mcp.server.mcpserver import MCPServer
from pydantic_ai import Agent
from pydantic_ai.agent import AbstractAgent
from pydantic_ai.exceptions import UserError
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import (
    AgentStreamEvent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.tools import RunContext

from dbos_pydantic_ai import DBOSAgent

Launch = Callable[[], None]


class ScriptedModel:
    """A `FunctionModel` that first asks for `tool_calls` (if any), then answers; it records every request.

    The answer is `answer`, or `answer(messages)` when it is a function. `calls` counts the requests the
    model really served, so a test can tell a replayed step from a new model call.
    """

    def __init__(
        self,
        name: str,
        *,
        tool_calls: Sequence[tuple[str, dict[str, Any]]] = (),
        answer: str | Callable[[list[ModelMessage]], str] = "done",
    ) -> None:
        self.tool_calls = list(tool_calls)
        self.answer = answer
        self.requests: list[list[ModelMessage]] = []
        self.model = FunctionModel(self._respond, stream_function=self._stream, model_name=name)

    @property
    def calls(self) -> int:
        return len(self.requests)

    def _wants_tools(self, messages: list[ModelMessage]) -> bool:
        return bool(self.tool_calls) and not any(isinstance(part, ToolReturnPart) for part in messages[-1].parts)

    def _text(self, messages: list[ModelMessage]) -> str:
        return self.answer if isinstance(self.answer, str) else self.answer(messages)

    def _respond(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.requests.append(list(messages))
        if self._wants_tools(messages):
            return ModelResponse(
                parts=[
                    ToolCallPart(name, args, tool_call_id=f"call_{index}")
                    for index, (name, args) in enumerate(self.tool_calls)
                ]
            )
        return ModelResponse(parts=[TextPart(self._text(messages))])

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        self.requests.append(list(messages))
        if self._wants_tools(messages):
            yield {
                index: DeltaToolCall(name, json.dumps(args), tool_call_id=f"call_{index}")
                for index, (name, args) in enumerate(self.tool_calls)
            }
            return
        for word in self._text(messages).split(" "):
            yield word + " "


def parts_summary(messages: Sequence[ModelMessage]) -> list[tuple[str, Any]]:
    """The kind and content of each message part, without timestamps and ids that differ between runs."""
    summary: list[tuple[str, Any]] = []
    for message in messages:
        for part in message.parts:
            content = getattr(part, "content", None)
            if isinstance(part, ToolCallPart):
                content = (part.tool_name, part.args_as_dict())
            summary.append((type(part).__name__, content))
    return summary


async def step_names(workflow_id: str) -> list[str]:
    return [step["function_name"] for step in await DBOS.list_workflow_steps_async(workflow_id)]


async def drain_events(ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
    """An event stream handler that reads every event (it makes model requests streamed)."""
    async for _ in events:
        pass


# --- Names: one workflow per run, compatibility data ----------------------------------------------


def test_run_sync_is_one_workflow(agent_name: str, launch_dbos: Launch) -> None:
    """`run_sync` records exactly one workflow, `{name}.run_sync`, with no async wrapper workflow around it."""
    model = ScriptedModel("m")
    durable = DBOSAgent(Agent(model.model, name=agent_name))
    launch_dbos()

    with SetWorkflowID("sync-run"):
        assert durable.run_sync("hello").output == "done"

    workflows = DBOS.list_workflows()
    assert [(w.workflow_id, w.name, w.status) for w in workflows] == [("sync-run", f"{agent_name}.run_sync", "SUCCESS")]
    assert [s["function_name"] for s in DBOS.list_workflow_steps("sync-run")] == [f"{agent_name}__model.request"]


async def test_run_is_one_workflow_and_streams_in_a_step(agent_name: str, launch_dbos: Launch) -> None:
    """`run` records one workflow `{name}.run`; with an event stream handler the request is `request_stream`."""
    model = ScriptedModel("m")
    durable = DBOSAgent(Agent(model.model, name=agent_name))
    launch_dbos()

    with SetWorkflowID("plain"):
        assert (await durable.run("hello")).output == "done"
    with SetWorkflowID("streamed"):
        assert (await durable.run("hello", event_stream_handler=drain_events)).output.strip() == "done"

    workflows = await DBOS.list_workflows_async()
    assert sorted((w.workflow_id, w.name) for w in workflows) == [
        ("plain", f"{agent_name}.run"),
        ("streamed", f"{agent_name}.run"),
    ]
    assert await step_names("plain") == [f"{agent_name}__model.request"]
    assert await step_names("streamed") == [f"{agent_name}__model.request_stream"]


def test_persisted_names_are_stable(agent_name: str, launch_dbos: Launch) -> None:
    """The complete set of workflow and step names a DBOSAgent persists.

    These names are compatibility data: unfinished runs in users' databases are recovered by them, so a
    release that renames any of them strands those runs. They must not change.
    """
    server = MCPServer("calc", instructions="Add with care.")

    @server.tool()
    def add(a: int, b: int) -> int:
        return a + b

    def double(x: int) -> int:
        return 2 * x

    model = ScriptedModel("m", tool_calls=[("double", {"x": 2}), ("add", {"a": 1, "b": 2})])
    calc = MCPToolset(server, id="calc", include_instructions=True)
    agent = Agent(model.model, name=agent_name, tools=[double], toolsets=[calc])
    durable = DBOSAgent(agent, durable_tools=True)
    launch_dbos()

    durable.run_sync("go")
    asyncio.run(durable.run("go", event_stream_handler=drain_events))

    def generic(name: str) -> str:
        return name.replace(agent_name, "{name}")

    workflows = DBOS.list_workflows()
    steps = {generic(s["function_name"]) for w in workflows for s in DBOS.list_workflow_steps(w.workflow_id)}
    assert {generic(w.name) for w in workflows} == {"{name}.run", "{name}.run_sync"}
    assert steps == {
        "{name}__model.request",
        "{name}__model.request_stream",
        "{name}__tool.double",
        "{name}__mcp_server__calc.get_tools",
        "{name}__mcp_server__calc.call_tool",
        "{name}__mcp_server__calc.get_instructions",
    }


# --- Nesting in a user's workflow ----------------------------------------------------------------


async def test_run_inside_async_workflow_is_a_child(agent_name: str, launch_dbos: Launch) -> None:
    """`await agent.run()` inside a user's async workflow is a child workflow of it."""
    model = ScriptedModel("m")
    durable = DBOSAgent(Agent(model.model, name=agent_name))

    @DBOS.workflow(name=f"{agent_name}_parent")
    async def parent(prompt: str) -> str:
        return (await durable.run(prompt)).output

    launch_dbos()
    with SetWorkflowID("parent"):
        assert await parent("hi") == "done"

    children = await DBOS.list_workflows_async(parent_workflow_id="parent")
    assert [(c.name, c.workflow_id.startswith("parent-")) for c in children] == [(f"{agent_name}.run", True)]
    assert await step_names(children[0].workflow_id) == [f"{agent_name}__model.request"]
    assert len(await DBOS.list_workflows_async()) == 2


def test_run_sync_inside_sync_workflow_is_a_child(agent_name: str, launch_dbos: Launch) -> None:
    """`agent.run_sync()` inside a user's sync workflow is a child workflow of it."""
    model = ScriptedModel("m")
    durable = DBOSAgent(Agent(model.model, name=agent_name))

    @DBOS.workflow(name=f"{agent_name}_parent")
    def parent(prompt: str) -> str:
        return durable.run_sync(prompt).output

    launch_dbos()
    with SetWorkflowID("parent"):
        assert parent("hi") == "done"

    children = DBOS.list_workflows(parent_workflow_id="parent")
    assert [(c.name, c.parent_workflow_id, c.workflow_id.startswith("parent-")) for c in children] == [
        (f"{agent_name}.run_sync", "parent", True)
    ]
    assert len(DBOS.list_workflows()) == 2


# --- Idempotency ---------------------------------------------------------------------------------


async def test_same_workflow_id_returns_recorded_result(agent_name: str, launch_dbos: Launch) -> None:
    """A second `run` with the same workflow id returns the recorded result without calling the model."""
    answers = iter(["first answer", "second answer"])
    model = ScriptedModel("m", answer=lambda messages: next(answers))
    durable = DBOSAgent(Agent(model.model, name=agent_name))
    launch_dbos()

    with SetWorkflowID("once"):
        first = await durable.run("hi")
    with SetWorkflowID("once"):
        second = await durable.run("hi")

    assert first.output == second.output == "first answer"
    assert model.calls == 1
    assert len(await DBOS.list_workflows_async()) == 1


def test_same_workflow_id_returns_recorded_result_sync(agent_name: str, launch_dbos: Launch) -> None:
    """The same holds for `run_sync`."""
    model = ScriptedModel("m")
    durable = DBOSAgent(Agent(model.model, name=agent_name))
    launch_dbos()

    for _ in range(2):
        with SetWorkflowID("once"):
            assert durable.run_sync("hi").output == "done"
    assert model.calls == 1


# --- Outside DBOS and outside workflows ----------------------------------------------------------


async def _every_way(agent: AbstractAgent[None, str], prompt: str) -> dict[str, Any]:
    """The output and message parts of `run`, `iter`, `run_stream` and `run_stream_events`."""
    results: dict[str, Any] = {}
    run = await agent.run(prompt)
    results["run"] = (run.output, parts_summary(run.all_messages()))
    async with agent.iter(prompt) as agent_run:
        async for _ in agent_run:
            pass
    assert agent_run.result is not None
    results["iter"] = (agent_run.result.output, parts_summary(agent_run.result.all_messages()))
    async with agent.run_stream(prompt) as stream:
        output = await stream.get_output()
    results["run_stream"] = (output, parts_summary(stream.all_messages()))
    async with agent.run_stream_events(prompt) as event_stream:
        events = [event async for event in event_stream]
    results["run_stream_events"] = (events[-1].result.output, parts_summary(events[-1].result.all_messages()))
    return results


def _tool_agent(name: str | None = None) -> Agent[None, str]:
    """A plain agent whose model calls a tool, then answers with the tool's result."""

    def shout(text: str) -> str:
        return text.upper()

    model = ScriptedModel(
        "m",
        tool_calls=[("shout", {"text": "hey"})],
        answer=lambda messages: f"tool said {messages[-1].parts[0].content}",
    )
    return Agent(model.model, name=name, tools=[shout])


def test_without_dbos_behaves_as_plain_agent(agent_name: str) -> None:
    """Without a launched DBOS, every way of running gives what the plain agent gives."""
    DBOS.destroy()
    durable = DBOSAgent(_tool_agent(agent_name))
    plain = _tool_agent()

    expected = asyncio.run(_every_way(plain, "go"))
    assert expected["run"][0] == "tool said HEY"
    assert asyncio.run(_every_way(durable, "go")) == expected
    result = durable.run_sync("go")
    assert (result.output, parts_summary(result.all_messages())) == expected["run"]


def test_after_destroy_behaves_as_plain_agent(agent_name: str, launch_dbos: Launch) -> None:
    """After `DBOS.destroy()` the agent runs plainly again, and records nothing more."""
    durable = DBOSAgent(_tool_agent(agent_name))
    launch_dbos()
    durable.run_sync("go")
    assert len(DBOS.list_workflows()) == 1
    DBOS.destroy()

    expected = asyncio.run(_every_way(_tool_agent(), "go"))
    assert asyncio.run(_every_way(durable, "go")) == expected
    assert durable.run_sync("go").output == "tool said HEY"


async def test_streaming_outside_a_workflow_creates_no_workflow(agent_name: str, launch_dbos: Launch) -> None:
    """With DBOS launched but outside a workflow, `iter`, `run_stream` and `run_stream_events` are plain runs."""
    durable = DBOSAgent(_tool_agent(agent_name))
    launch_dbos()

    results = await _every_way(durable, "go")
    del results["run"]  # `run` is durable: the one workflow expected below
    assert results == {key: value for key, value in (await _every_way(_tool_agent(), "go")).items() if key != "run"}
    assert [w.name for w in await DBOS.list_workflows_async()] == [f"{agent_name}.run"]


# --- iter and streaming inside a user's workflow -------------------------------------------------


async def test_iter_inside_workflow_records_steps_of_that_workflow(agent_name: str, launch_dbos: Launch) -> None:
    """`iter` inside a user's workflow makes each model request a step of that workflow."""
    durable = DBOSAgent(_tool_agent(agent_name))

    @DBOS.workflow(name=f"{agent_name}_iterate")
    async def iterate() -> str:
        async with durable.iter("go") as agent_run:
            async for _ in agent_run:
                pass
        assert agent_run.result is not None
        return agent_run.result.output

    launch_dbos()
    with SetWorkflowID("iterate"):
        assert await iterate() == "tool said HEY"

    assert [w.workflow_id for w in await DBOS.list_workflows_async()] == ["iterate"]
    assert await step_names("iterate") == [f"{agent_name}__model.request", f"{agent_name}__model.request"]


@pytest.mark.parametrize("method", ["run_stream", "run_stream_events"])
async def test_streaming_inside_workflow_is_refused(agent_name: str, launch_dbos: Launch, method: str) -> None:
    """`run_stream`/`run_stream_events` cannot be replayed: inside a workflow they name `run(` as the fix."""
    model = ScriptedModel("m")
    durable = DBOSAgent(Agent(model.model, name=agent_name))

    @DBOS.workflow(name=f"{agent_name}_stream")
    async def stream() -> None:
        getattr(durable, method)("go")

    launch_dbos()
    with pytest.raises(UserError, match=rf"`{method}\(\)`.*run\(.*event_stream_handler"):
        await stream()
    assert model.calls == 0


# --- Choosing the model at run time ---------------------------------------------------------------


@pytest.fixture
def two_models() -> tuple[ScriptedModel, ScriptedModel]:
    return ScriptedModel("default", answer="from default"), ScriptedModel("fast", answer="from fast")


async def test_run_model_by_key_or_instance(
    agent_name: str, launch_dbos: Launch, two_models: tuple[ScriptedModel, ScriptedModel]
) -> None:
    """`run(model='fast')` and `run(model=m2)` use the registered model durably; the workflow stores the key."""
    default, fast = two_models
    durable = DBOSAgent(Agent(default.model, name=agent_name), models={"fast": fast.model})
    launch_dbos()

    with SetWorkflowID("by-key"):
        assert (await durable.run("hi", model="fast")).output == "from fast"
    with SetWorkflowID("by-instance"):
        assert (await durable.run("hi", model=fast.model)).output == "from fast"
    with SetWorkflowID("default"):
        assert (await durable.run("hi")).output == "from default"

    assert (default.calls, fast.calls) == (1, 2)
    for workflow_id in ("by-key", "by-instance"):
        assert await step_names(workflow_id) == [f"{agent_name}__model.request"]
        (status,) = await DBOS.list_workflows_async(workflow_ids=[workflow_id])
        assert status.input is not None
        assert status.input["kwargs"]["model"] == "fast"


@pytest.mark.parametrize("chosen", ["key", "instance"])
async def test_override_model(
    agent_name: str, launch_dbos: Launch, two_models: tuple[ScriptedModel, ScriptedModel], chosen: str
) -> None:
    """`override(model=...)` with a registered key or instance makes durable runs use that model."""
    default, fast = two_models
    durable = DBOSAgent(Agent(default.model, name=agent_name), models={"fast": fast.model})
    launch_dbos()

    with durable.override(model="fast" if chosen == "key" else fast.model), SetWorkflowID("overridden"):
        assert (await durable.run("hi")).output == "from fast"
    assert (default.calls, fast.calls) == (0, 1)
    assert await step_names("overridden") == [f"{agent_name}__model.request"]
    (status,) = await DBOS.list_workflows_async(workflow_ids=["overridden"])
    assert status.input is not None
    assert status.input["kwargs"]["model"] == "fast"  # by key, so a recovered run finds the model again
    assert (await durable.run("hi")).output == "from default"  # the override ended with its block


async def test_unregistered_model_is_refused_before_any_workflow(
    agent_name: str, launch_dbos: Launch, two_models: tuple[ScriptedModel, ScriptedModel]
) -> None:
    """An unregistered model instance could not be found again on recovery: refused, nothing recorded."""
    default, fast = two_models
    stranger = ScriptedModel("stranger")
    durable = DBOSAgent(Agent(default.model, name=agent_name), models={"fast": fast.model})
    launch_dbos()

    with pytest.raises(UserError, match=r"'stranger' is not registered.*models=\{'fast': model\}"):
        await durable.run("hi", model=stranger.model)
    with pytest.raises(UserError, match=r"'stranger' is not registered"), durable.override(model=stranger.model):
        await durable.run("hi")

    assert await DBOS.list_workflows_async() == []
    assert (default.calls, fast.calls, stranger.calls) == (0, 0, 0)


# --- Messages, deps and message history ----------------------------------------------------------


async def test_messages_of_a_durable_run(agent_name: str, launch_dbos: Launch) -> None:
    """`new_messages()`/`all_messages()` are right, and the messages' run id is the workflow id."""
    durable = DBOSAgent(_tool_agent(agent_name))
    launch_dbos()

    with SetWorkflowID("first"):
        first = await durable.run("go")
    with SetWorkflowID("second"):
        second = await durable.run("again", message_history=first.all_messages())

    assert parts_summary(first.new_messages()) == [
        ("UserPromptPart", "go"),
        ("ToolCallPart", ("shout", {"text": "hey"})),
        ("ToolReturnPart", "HEY"),
        ("TextPart", "tool said HEY"),
    ]
    assert first.all_messages() == first.new_messages()
    assert {m.run_id for m in first.new_messages()} == {"first"}
    assert second.all_messages()[: len(first.all_messages())] == first.all_messages()
    assert parts_summary(second.new_messages())[0] == ("UserPromptPart", "again")
    assert len(second.new_messages()) == 4
    assert {m.run_id for m in second.new_messages()} == {"second"}


@dataclass
class User:
    name: str


async def test_deps_and_message_history_reach_the_durable_run(agent_name: str, launch_dbos: Launch) -> None:
    """deps reach tools inside the workflow; a second run continues the conversation from message_history."""

    def whoami(ctx: RunContext[User]) -> str:
        return ctx.deps.name

    def answer(messages: list[ModelMessage]) -> str:
        requests = [m for m in messages if isinstance(m, ModelRequest)]
        prompts = [p.content for m in requests for p in m.parts if isinstance(p, UserPromptPart)]
        return f"{messages[-1].parts[0].content} after {prompts}"

    model = ScriptedModel("m", tool_calls=[("whoami", {})], answer=answer)
    durable = DBOSAgent(Agent(model.model, name=agent_name, deps_type=User, tools=[whoami]))
    launch_dbos()

    with SetWorkflowID("first"):
        first = await durable.run("who?", deps=User("ada"))
    with SetWorkflowID("second"):
        second = await durable.run("and now?", deps=User("grace"), message_history=first.all_messages())

    assert first.output == "ada after ['who?']"
    assert second.output == "grace after ['who?', 'and now?']"
    (status,) = await DBOS.list_workflows_async(workflow_ids=["second"])
    assert status.input is not None
    assert status.input["kwargs"]["deps"] == User("grace")
