"""What the console tests share: a database filled by real durable runs, and the console serving it.

The fixtures themselves are in conftest.py; tests import the names below from this module (never from
`conftest`, which names a different module depending on which conftest pytest imported first).

Fixtures (module-scoped, each parametrized over SQLite and PostgreSQL):

- `console_env` -> `ConsoleEnv`: DBOS launched in this process (the worker) on a fresh database, filled
  with real durable runs of the agents below. `env.database_url`; `env.runs[key]` is the workflow id of:
    - "succeeded"  a support run: model request, durable tool `look_up_order`, model request (SUCCESS);
      model "gpt-4o" (priced by genai-prices)
    - "succeeded_2" another one (SUCCESS)
    - "injection"  model text `INJECTION_TEXT` and tool arguments `{"order_id": INJECTION_ARG}` (SUCCESS)
    - "failed"     its model raised `RuntimeError(FAILURE_MESSAGE)` (ERROR)
    - "cancelled"  cancelled while its model request was in flight (CANCELLED)
    - "waiting"    waits for approval of `refund(order_id="A7", amount=250)` (PENDING, approvals='wait')
    - "fork_original" = "succeeded"; "forked": a DBOS fork of it from step 3 (its last model request),
      whose answer differs ("answer #2" instead of "answer #1")
    - "streamed"   a run of an agent with stream_events=True (SUCCESS; its events are in its stream);
      model "local-writer" (no known price: cost null)
    - "parent"     a research run whose tool ran another agent: child run `env.runs["child"]`
  Helpers: `env.start_waiting_run(workflow_id=None) -> str` (returns once its approval is pending),
  `env.start_live_run(chunks=40, delay=0.25, workflow_id=None) -> str` (streams "chunk 0 chunk 1 ..."
  slowly; returns once the run exists), `env.wait_for_status(workflow_id, *statuses, timeout=60) -> str`,
  `env.agents` (the agent names). Pending approvals are denied at teardown so waiting runs end.
- `console_server` -> `ConsoleServer`: the console (`create_app(env.database_url)`) served by uvicorn
  on 127.0.0.1 at a free port in a background thread: `server.url` ("http://127.0.0.1:PORT"),
  `server.env` (the ConsoleEnv), `server.token` (None).
- `console_token_server` -> `ConsoleServer` as above with `server.token` set (every request needs it).
- `start_console_server(database_url, token=None) -> ConsoleServer` (a plain function, also usable as a
  context manager) for other setups.

Constants: INJECTION_TEXT, INJECTION_ARG, FAILURE_MESSAGE, LIVE_CHUNK (format of a live run's chunks).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCalls, FunctionModel

from dbos_pydantic_ai import DBOSAgent, deny, list_pending_approvals
from dbos_pydantic_ai.console import create_app

POSTGRES_SERVER_URL = os.environ.get("DBOS_PAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
REQUIRE_POSTGRES = os.environ.get("CI", "").lower() == "true" or os.environ.get("DBOS_PAI_REQUIRE_POSTGRES") == "1"
WAIT_SECONDS = 60.0

INJECTION_TEXT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & <b>bold</b>'
INJECTION_ARG = "<img src=x onerror=alert(1)><script>alert('tool')</script>"
FAILURE_MESSAGE = "the model provider is down"
LIVE_CHUNK = "chunk {i} "

# --- The agents (created once, before any DBOS launch; each test module's DBOS registers them) -----------

# prompt -> (set when the model request has started, set to let it finish): the "cancelled" run
_gates: dict[str, tuple[threading.Event, threading.Event]] = {}
_fork_answers: dict[str, int] = {}  # run prompt -> how many final answers were made (a fork answers again)


def _last_tool_return(messages: list[ModelMessage]) -> ToolReturnPart | None:
    last = messages[-1]
    if isinstance(last, ModelRequest):
        for part in last.parts:
            if isinstance(part, ToolReturnPart):
                return part
    return None


def _prompt_of(messages: list[ModelMessage]) -> str:
    first = messages[0]
    assert isinstance(first, ModelRequest)
    return next(str(part.content) for part in first.parts if part.part_kind == "user-prompt")


async def support_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Looks the order up with the tool, then answers; the injection prompt makes it echo hostile markup."""
    prompt = _prompt_of(messages)
    gate = _gates.get(prompt)
    if gate is not None:
        gate[0].set()
        await asyncio.to_thread(gate[1].wait, WAIT_SECONDS)
    returned = _last_tool_return(messages)
    if returned is None:
        order = INJECTION_ARG if "injection" in prompt else (re.findall(r"\b[A-Z]\d+\b", prompt) or ["A0"])[0]
        return ModelResponse(parts=[ToolCallPart("look_up_order", {"order_id": order}, tool_call_id="call-1")])
    if "injection" in prompt:
        return ModelResponse(parts=[TextPart(INJECTION_TEXT)])
    count = _fork_answers[prompt] = _fork_answers.get(prompt, 0) + 1
    return ModelResponse(parts=[TextPart(f"{returned.content} (answer #{count})")])


support_agent: Agent[None, str] = Agent(FunctionModel(support_model, model_name="gpt-4o"), name="console_support")


@support_agent.tool_plain
def look_up_order(order_id: str) -> str:
    """The status of an order."""
    return f"Order {order_id} shipped on Monday."


async def refunds_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returned = _last_tool_return(messages)
    if returned is None:
        return ModelResponse(parts=[ToolCallPart("refund", {"order_id": "A7", "amount": 250}, tool_call_id="refund-1")])
    return ModelResponse(parts=[TextPart(f"Refund: {returned.content}")])


refunds_agent: Agent[None, str] = Agent(FunctionModel(refunds_model, model_name="gpt-4o-mini"), name="console_refunds")


@refunds_agent.tool_plain(requires_approval=True)
def refund(order_id: str, amount: int) -> str:
    """Refund an order (needs a human's approval)."""
    return f"refunded {amount} on {order_id}"


async def failing_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    raise RuntimeError(FAILURE_MESSAGE)


flaky_agent: Agent[None, str] = Agent(FunctionModel(failing_model, model_name="gpt-4o"), name="console_flaky")


async def writer_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    """Streams its answer in chunks; a prompt "live N DELAY" streams N chunks, DELAY seconds apart."""
    prompt = _prompt_of(messages)
    live = re.fullmatch(r"live (\d+) ([\d.]+)", prompt)
    if live is None:
        for word in ["Once ", "upon ", "a ", "time, ", "a run ", "survived ", "a crash."]:
            yield word
        return
    for i in range(int(live.group(1))):
        await asyncio.sleep(float(live.group(2)))
        yield LIVE_CHUNK.format(i=i)


writer_agent: Agent[None, str] = Agent(
    FunctionModel(stream_function=writer_stream, model_name="local-writer"), name="console_writer"
)


async def expert_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart(f"The expert says: {_prompt_of(messages)[:40]} is fine.")])


expert_agent: Agent[None, str] = Agent(FunctionModel(expert_model, model_name="gpt-4o-mini"), name="console_expert")


async def research_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returned = _last_tool_return(messages)
    if returned is None:
        return ModelResponse(parts=[ToolCallPart("ask_expert", {"question": "Is A1 late?"}, tool_call_id="ask-1")])
    return ModelResponse(parts=[TextPart(f"Summary: {returned.content}")])


research_agent: Agent[None, str] = Agent(FunctionModel(research_model, model_name="gpt-4o"), name="console_research")

support = DBOSAgent(support_agent, durable_tools=["look_up_order"])
refunds = DBOSAgent(refunds_agent, approvals="wait", approval_timeout=600, durable_tools=["refund"])
flaky = DBOSAgent(flaky_agent)
writer = DBOSAgent(writer_agent, stream_events=True)
expert = DBOSAgent(expert_agent)
research = DBOSAgent(research_agent)


@research_agent.tool_plain
async def ask_expert(question: str) -> str:
    """Ask the expert agent: a durable child run of this run."""
    return (await expert.run(question)).output


# --- Databases -------------------------------------------------------------------------------------------


def _postgres_database() -> tuple[str, Any]:
    """A new PostgreSQL database URL and a function that drops it (skip or fail as the root conftest does)."""
    engine = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except Exception as error:
        reason = f"PostgreSQL at {POSTGRES_SERVER_URL} is not reachable: {error}"
        engine.dispose()
        if REQUIRE_POSTGRES:
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"dbos_pai_console_{uuid.uuid4().hex[:12]}"

    def drop() -> None:
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    return f"{POSTGRES_SERVER_URL}/{name}", drop


# --- The filled database ---------------------------------------------------------------------------------


@dataclass
class ConsoleEnv:
    """A launched DBOS worker on a database filled with durable runs (see the module docstring)."""

    database_url: str
    runs: dict[str, str] = field(default_factory=dict)
    agents: tuple[str, ...] = tuple(a.name for a in (support, refunds, flaky, writer, expert, research))
    _threads: list[threading.Thread] = field(default_factory=list)

    def status(self, workflow_id: str) -> str | None:
        found = DBOS.list_workflows(workflow_ids=[workflow_id], load_input=False, load_output=False)
        return found[0].status if found else None

    def wait_for_status(self, workflow_id: str, *statuses: str, timeout: float = WAIT_SECONDS) -> str:
        """Wait until the run has one of `statuses`; return it."""
        deadline = time.monotonic() + timeout
        while (status := self.status(workflow_id)) not in statuses:
            if time.monotonic() > deadline:
                raise AssertionError(f"{workflow_id} is {status}, not one of {statuses} after {timeout} s")
            time.sleep(0.05)
        return status

    def _in_thread(self, workflow_id: str, call: Any, *args: Any) -> None:
        def target() -> None:
            with SetWorkflowID(workflow_id), _suppress_run_errors():
                call(*args)

        thread = threading.Thread(target=target, daemon=True, name=f"run-{workflow_id}")
        thread.start()
        self._threads.append(thread)

    def start_waiting_run(self, workflow_id: str | None = None) -> str:
        """Start a refunds run; return its id once its refund call waits for approval."""
        workflow_id = workflow_id or f"refunds-{uuid.uuid4().hex[:8]}"
        self._in_thread(workflow_id, refunds.run_sync, "Please refund 250 on order A7.")
        deadline = time.monotonic() + WAIT_SECONDS
        while not list_pending_approvals(workflow_id=workflow_id):
            if time.monotonic() > deadline:
                raise AssertionError(f"{workflow_id} never waited for approval ({self.status(workflow_id)})")
            time.sleep(0.05)
        return workflow_id

    def start_live_run(self, chunks: int = 40, delay: float = 0.25, workflow_id: str | None = None) -> str:
        """Start a streaming run that writes `chunks` chunks `delay` s apart; return its id once it exists."""
        workflow_id = workflow_id or f"live-{uuid.uuid4().hex[:8]}"
        self._in_thread(workflow_id, writer.run_sync, f"live {chunks} {delay}")
        self.wait_for_status(workflow_id, "PENDING", "SUCCESS")
        return workflow_id

    def fill(self) -> None:
        """Make the runs listed in the module docstring, in that order."""
        runs = self.runs
        _fork_answers.clear()
        with SetWorkflowID("support-ok-1"):
            support.run_sync("Where is my order A1?")
        runs["succeeded"] = runs["fork_original"] = "support-ok-1"
        with SetWorkflowID("support-ok-2"):
            support.run_sync("Has order B2 shipped?")
        runs["succeeded_2"] = "support-ok-2"
        with SetWorkflowID("support-injection"):
            support.run_sync("injection: show me order X")
        runs["injection"] = "support-injection"
        with SetWorkflowID("flaky-failed"), contextlib.suppress(RuntimeError):
            flaky.run_sync("Anything?")
        runs["failed"] = "flaky-failed"

        # Cancelled while its model request is in flight: the run stops at its next step.
        started, release = _gates["Where is order C3? (slow)"] = (threading.Event(), threading.Event())
        self._in_thread("support-cancelled", support.run_sync, "Where is order C3? (slow)")
        assert started.wait(WAIT_SECONDS), "the run to cancel never reached its model request"
        DBOS.cancel_workflow("support-cancelled")
        release.set()
        runs["cancelled"] = "support-cancelled"

        runs["waiting"] = self.start_waiting_run("refunds-waiting")

        handle = DBOS.fork_workflow("support-ok-1", 3)
        handle.get_result(polling_interval_sec=0.05)
        runs["forked"] = handle.get_workflow_id()

        with SetWorkflowID("writer-streamed"):
            writer.run_sync("Tell me a short story.")
        runs["streamed"] = "writer-streamed"

        with SetWorkflowID("research-parent"):
            asyncio.run(research.run("Is order A1 late?"))
        runs["parent"] = "research-parent"
        children = DBOS.list_workflows(parent_workflow_id="research-parent", load_input=False, load_output=False)
        runs["child"] = children[0].workflow_id

    def close(self) -> None:
        """Deny what still waits, so waiting runs end, and give the run threads a moment to finish."""
        for pending in list_pending_approvals():
            with contextlib.suppress(Exception):  # decided meanwhile, or cancelled
                deny(pending.workflow_id, pending.tool_call_id, args_digest=pending.args_digest, reason="teardown")
        for thread in self._threads:
            thread.join(timeout=10)


def _suppress_run_errors() -> contextlib.suppress:
    """Runs that fail or are cancelled on purpose raise; the tests read their status instead."""
    return contextlib.suppress(BaseException)


# --- The console served by uvicorn -----------------------------------------------------------------------


class ConsoleServer:
    """The console app served by uvicorn on 127.0.0.1 in a background thread; `stop()` (or `with`) ends it."""

    def __init__(
        self, database_url: str, token: str | None = None, env: ConsoleEnv | None = None, **app_options: Any
    ) -> None:
        self.token = token
        self.env = env
        self.app = create_app(database_url, token=token, **app_options)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="console-server")
        self._thread.start()
        deadline = time.monotonic() + WAIT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the console server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)

    def __enter__(self) -> ConsoleServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_console_server(database_url: str, token: str | None = None) -> ConsoleServer:
    """Serve the console for `database_url` (stop it with `.stop()` or use it as a context manager)."""
    return ConsoleServer(database_url, token)
