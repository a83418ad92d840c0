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
    - "gave_up"    an `outage` run whose model answered 503 (`OUTAGE_ERROR`) until its retry horizon (0.5 s)
      ran out (ERROR, can be continued; its model keeps failing until `env.end_outage(id)`)
  Helpers: `env.start_waiting_run(workflow_id=None) -> str` (returns once its approval is pending),
  `env.start_live_run(chunks=40, delay=0.25, workflow_id=None, gate=None) -> str` (streams "chunk 0 chunk 1
  ..." slowly; with a `threading.Event` gate it holds before the last chunk until the gate is set; returns once
  the run exists), `env.wait_for_status(workflow_id, *statuses, timeout=60) -> str`,
  `env.start_gave_up_run(failures=-1, workflow_id=None) -> str` (returns once it is ERROR, or SUCCESS when
  `failures` ran out first), `env.start_waiting_to_retry_run(workflow_id=None) -> str` (a `patient` run: its
  model request failed once and it now waits an hour to retry; returns once it waits), `env.end_outage(id)`,
  `env.recovered_run() -> str` (a `console_crashy` run whose worker process was SIGKILLed in its step 3 and
  relaunched, so DBOS recovered it; made on first use, then `env.runs["recovered"]`; executor `CRASH_EXECUTOR`),
  `env.agents` (the agent names). Pending approvals are denied at teardown so waiting runs end; runs still
  waiting to retry are cancelled.
- `console_server` -> `ConsoleServer`: the console (`create_app(env.database_url)`) served by uvicorn
  on 127.0.0.1 at a free port in a background thread: `server.url` ("http://127.0.0.1:PORT"),
  `server.env` (the ConsoleEnv), `server.token` (None).
- `console_token_server` -> `ConsoleServer` as above with `server.token` set (every request needs it).
- `ConsoleServer(database_url, token=None, env=None, port=None)`: `port` serves on that port (to restart a
  console where a page expects it); `server.last_event_ids` lists the (path, Last-Event-ID header) of every
  live tail request it got.
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
from pydantic_ai.exceptions import ModelServerError
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCalls, FunctionModel

from dbos_pydantic_ai import DBOSAgent, ModelRetryPolicy, deny, list_pending_approvals
from dbos_pydantic_ai.console import create_app

POSTGRES_SERVER_URL = os.environ.get("DBOS_PAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
REQUIRE_POSTGRES = os.environ.get("CI", "").lower() == "true" or os.environ.get("DBOS_PAI_REQUIRE_POSTGRES") == "1"
WAIT_SECONDS = 60.0

INJECTION_TEXT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & <b>bold</b>'
INJECTION_ARG = "<img src=x onerror=alert(1)><script>alert('tool')</script>"
FAILURE_MESSAGE = "the model provider is down"
OUTAGE_ERROR = "503 Service Unavailable"
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


# live run prompt -> held before its last chunk until set (a threading.Event: the model runs on the durable loop)
_live_gates: dict[str, threading.Event] = {}


async def writer_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    """Streams its answer in chunks; a prompt "live N DELAY [ID]" streams N chunks, DELAY seconds apart, and holds
    before the last one while the prompt has a gate that is not set."""
    prompt = _prompt_of(messages)
    live = re.fullmatch(r"live (\d+) ([\d.]+)(?: \S+)?", prompt)
    if live is None:
        for word in ["Once ", "upon ", "a ", "time, ", "a run ", "survived ", "a crash."]:
            yield word
        return
    chunks = int(live.group(1))
    for i in range(chunks):
        await asyncio.sleep(float(live.group(2)))
        gate = _live_gates.get(prompt)
        if i == chunks - 1 and gate is not None:
            for _ in range(int(WAIT_SECONDS / 0.01)):
                if gate.is_set():
                    break
                await asyncio.sleep(0.01)
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

# prompt -> transient failures its model request still answers with (negative: fail until changed)
_outages: dict[str, int] = {}


async def outage_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Answers with a 503 (a transient error) while the prompt's outage lasts, then normally."""
    prompt = _prompt_of(messages)
    left = _outages.get(prompt, 0)
    if left != 0:
        _outages[prompt] = left - 1 if left > 0 else left
        raise ModelServerError("gpt-4o", OUTAGE_ERROR)
    return ModelResponse(parts=[TextPart(f"Answered after the outage: {prompt}")])


outage_agent: Agent[None, str] = Agent(FunctionModel(outage_model, model_name="gpt-4o"), name="console_outage")
patient_agent: Agent[None, str] = Agent(FunctionModel(outage_model, model_name="gpt-4o"), name="console_patient")

support = DBOSAgent(support_agent, durable_tools=["look_up_order"])
refunds = DBOSAgent(refunds_agent, approvals="wait", approval_timeout=600, durable_tools=["refund"])
flaky = DBOSAgent(flaky_agent)
writer = DBOSAgent(writer_agent, stream_events=True)
expert = DBOSAgent(expert_agent)
research = DBOSAgent(research_agent)
# Gives up on a failing model request within half a second: its run ends in ERROR, and can be continued.
outage = DBOSAgent(
    outage_agent,
    model_retry=ModelRetryPolicy(
        horizon_seconds=0.5, initial_interval_seconds=0.05, max_interval_seconds=0.1, jitter=0
    ),
)
# Waits an hour after a failed model request: its run stays PENDING, waiting to retry, until cancelled.
patient = DBOSAgent(
    patient_agent,
    model_retry=ModelRetryPolicy(
        horizon_seconds=7200, initial_interval_seconds=3600, max_interval_seconds=3600, jitter=0
    ),
)


@research_agent.tool_plain
async def ask_expert(question: str) -> str:
    """Ask the expert agent: a durable child run of this run."""
    return (await expert.run(question)).output


# --- A run recovered after a SIGKILL (in worker processes of another application on the same database) -----

# The worker: agent `console_crashy` asks for tool `look_up` (step 1), runs it durably (step 2), then answers
# (step 3). With "crash" it blocks in step 3 after printing "in step 3" (the test kills it there); relaunched
# without, DBOS recovers the run (the worker's executor id, version and application name are its own, so the
# test process's DBOS never takes the run) and the worker waits for it to finish.
CRASH_WORKER = """
import sys, time
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import FunctionModel
from dbos_pydantic_ai import DBOSAgent, dbos_config

url, workflow_id, crash = sys.argv[1], sys.argv[2], sys.argv[3] == "crash"

def model(messages, info):
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("look_up", {"order_id": "R1"}, tool_call_id="look-1")])
    if crash:
        print("in step 3", flush=True)
        time.sleep(600)
    return ModelResponse(parts=[TextPart("R1 arrives on Friday.")])

agent = Agent(FunctionModel(model, model_name="gpt-4o"), name="console_crashy")

@agent.tool_plain
def look_up(order_id: str) -> str:
    return f"{order_id} is on its way."

durable = DBOSAgent(agent, durable_tools=["look_up"])
DBOS(config=dbos_config(
    "console_crash_worker", database_url=url, application_version="crash-1", executor_id=EXECUTOR,
    notification_listener_polling_interval_sec=0.05,
))
DBOS.launch()
if crash:
    with SetWorkflowID(workflow_id):
        durable.run_sync("Where is R1?")
else:
    DBOS.retrieve_workflow(workflow_id).get_result(polling_interval_sec=0.1)
    print("recovered", flush=True)
DBOS.destroy()
"""
CRASH_EXECUTOR = "crash-worker-7"


def make_recovered_run(database_url: str, workflow_id: str) -> None:
    """Start a `console_crashy` run in a worker process, SIGKILL it in step 3, relaunch it: DBOS recovers the run,
    which finishes (steps 1 and 2 replayed, step 3 run again)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        script = os.path.join(folder, "crash_worker.py")
        with open(script, "w") as file:
            file.write(CRASH_WORKER.replace("EXECUTOR", repr(CRASH_EXECUTOR)))
        env = {k: v for k, v in os.environ.items() if k != "DBOS_SYSTEM_DATABASE_URL"}
        worker = subprocess.Popen(
            [sys.executable, script, database_url, workflow_id, "crash"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            assert line.strip() == "in step 3", f"the worker stopped before step 3: {line!r}"
        finally:
            worker.kill()  # SIGKILL
            worker.wait(timeout=30)
        relaunched = subprocess.run(
            [sys.executable, script, database_url, workflow_id, "relaunch"],
            capture_output=True,
            text=True,
            timeout=WAIT_SECONDS * 2,
            env=env,
            check=False,
        )
        assert relaunched.stdout.strip() == "recovered", relaunched.stdout + relaunched.stderr


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
    agents: tuple[str, ...] = tuple(
        a.name for a in (support, refunds, flaky, writer, expert, research, outage, patient)
    )
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

    def start_live_run(
        self,
        chunks: int = 40,
        delay: float = 0.25,
        workflow_id: str | None = None,
        gate: threading.Event | None = None,
    ) -> str:
        """Start a streaming run that writes `chunks` chunks `delay` s apart; return its id once it exists.

        With `gate`, the run holds before its last chunk until the gate is set (so a test sees it unfinished)."""
        workflow_id = workflow_id or f"live-{uuid.uuid4().hex[:8]}"
        prompt = f"live {chunks} {delay} {workflow_id}"
        if gate is not None:
            _live_gates[prompt] = gate
        self._in_thread(workflow_id, writer.run_sync, prompt)
        self.wait_for_status(workflow_id, "PENDING", "SUCCESS")
        return workflow_id

    def start_gave_up_run(self, failures: int = -1, workflow_id: str | None = None) -> str:
        """Run an `outage` run whose model fails `failures` times (-1: until `end_outage`); return its id once it
        has given up (ERROR)."""
        workflow_id = workflow_id or f"outage-{uuid.uuid4().hex[:8]}"
        prompt = f"Summarise ticket {workflow_id}."
        _outages[prompt] = failures
        self._in_thread(workflow_id, outage.run_sync, prompt)
        self.wait_for_status(workflow_id, "ERROR", "SUCCESS")
        return workflow_id

    def start_waiting_to_retry_run(self, workflow_id: str | None = None) -> str:
        """Start a `patient` run whose model request failed once; return its id once it waits an hour to retry."""
        workflow_id = workflow_id or f"patient-{uuid.uuid4().hex[:8]}"
        prompt = f"Summarise ticket {workflow_id}."
        _outages[prompt] = -1
        self._in_thread(workflow_id, patient.run_sync, prompt)
        deadline = time.monotonic() + WAIT_SECONDS
        while not any(s["function_name"] == "DBOS.sleep" for s in DBOS.list_workflow_steps(workflow_id)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{workflow_id} never waited to retry ({self.status(workflow_id)})")
            time.sleep(0.05)
        return workflow_id

    def recovered_run(self) -> str:
        """The id of a run that DBOS recovered after its worker was killed (made once, see `make_recovered_run`)."""
        if "recovered" not in self.runs:
            make_recovered_run(self.database_url, "crashy-recovered")
            self.runs["recovered"] = "crashy-recovered"
        return self.runs["recovered"]

    @staticmethod
    def end_outage(workflow_id: str) -> None:
        """From now on the model of this outage/patient run answers."""
        _outages[f"Summarise ticket {workflow_id}."] = 0

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

        runs["gave_up"] = self.start_gave_up_run(workflow_id="outage-gave-up")

    def close(self) -> None:
        """Deny what still waits, cancel what still runs, and give the run threads a moment to finish."""
        for pending in list_pending_approvals():
            with contextlib.suppress(Exception):  # decided meanwhile, or cancelled
                deny(pending.workflow_id, pending.tool_call_id, args_digest=pending.args_digest, reason="teardown")
        # Runs still going (waiting to retry, or started by the fuzzer's forks and resumes) are cancelled, so no
        # workflow is left running when DBOS is destroyed.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            going = DBOS.list_workflows(status=["PENDING", "ENQUEUED"], load_input=False, load_output=False)
            if not going:
                break
            for status in going:
                with contextlib.suppress(Exception):
                    DBOS.cancel_workflow(status.workflow_id)
            time.sleep(0.2)
        for thread in self._threads:
            thread.join(timeout=10)


def _suppress_run_errors() -> contextlib.suppress:
    """Runs that fail or are cancelled on purpose raise; the tests read their status instead."""
    return contextlib.suppress(BaseException)


# --- The console served by uvicorn -----------------------------------------------------------------------


class ConsoleServer:
    """The console app served by uvicorn on 127.0.0.1 in a background thread; `stop()` (or `with`) ends it."""

    def __init__(
        self,
        database_url: str,
        token: str | None = None,
        env: ConsoleEnv | None = None,
        port: int | None = None,
        **app_options: Any,
    ) -> None:
        self.token = token
        self.env = env
        self.app = create_app(database_url, token=token, **app_options)
        self.last_event_ids: list[tuple[str, str | None]] = []  # (path, Last-Event-ID) of each live tail request
        if port is None:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        self.port: int = port
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self._recording,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=2,
            interface="asgi3",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="console-server")
        self._thread.start()
        deadline = time.monotonic() + WAIT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the console server did not start")
            time.sleep(0.02)

    async def _recording(self, scope: Any, receive: Any, send: Any) -> None:
        """The app, noting the `Last-Event-ID` that each request for a live tail carries."""
        if scope["type"] == "http" and scope["path"].endswith("/events"):
            headers = dict(scope["headers"])
            last = headers.get(b"last-event-id")
            self.last_event_ids.append((scope["path"], None if last is None else last.decode("latin-1")))
        await self.app(scope, receive, send)

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
