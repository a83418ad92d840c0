"""A worker process for crash tests: runs one durable agent on DBOS, to be SIGKILLed and relaunched.

    python worker.py --scenario model|tool|mcp|approval --mode sync|async --phase start|recover
                     --database-url URL --port PORT --workdir DIR --workflow-id ID

`start` launches DBOS and starts the scenario's workflow under the fixed `--workflow-id` (with
`run_sync` or `await run` per `--mode`). `recover` only launches DBOS, which recovers the PENDING
workflows of this executor id (`worker-1`) about a second after launch, and waits for the workflow's
result. Either way the final output lands in `DIR/output.json`.

Side effects are recorded in `DIR` as fsynced lines, so a test can count them after a SIGKILL:
`tools.log` (one line per tool execution), `waiting.log` (the approval workflow reached its wait),
`stream.log` (text streamed to the event handler, async mode only).

Scenarios (the model is an `OpenAIChatModel` talking to the test's scripted server):
- model: a plain tool `lookup`; the test kills the worker during the next model request.
- tool: a durable tool `charge` (`durable_tools=['charge']`); killed during the next model request.
- mcp: an MCP toolset (stdio, `mcp_slow_server.py`) whose tool hangs; killed while it runs.
- approval: a user workflow runs the agent until a tool needing approval, waits for
  `DBOS.recv('approval')`, then continues with `deferred_tool_results` in a second durable run.
- stream: like `model`, with `stream_events=True`: the run records its events in a DBOS stream.
- stream_flag: like `stream`, but only the `start` phase's agent has `stream_events=True`: the recovering
  agent has it off, and the stored flag must win.
- tool_inflight: like `tool`, but `charge` hangs in the `start` phase (after its `tools.log` line): killed
  while the durable tool itself runs.
- dbos_tools: a `@DBOS.step` tool `audit` and a `@DBOS.workflow` tool `reorder` (steps `reserve`, then `ship`,
  which hangs in the `start` phase), called in one response: killed while the workflow tool's step runs.
- parallel: one response calls the durable tool `pay` four times; odd amounts hang in the `start` phase (after
  a `pay N start` line), even ones finish: killed with two tool calls done and two in flight.
- timeout: like `model`, started with `timeout=600`; the plain tool `lookup` logs the run's deadline.
- model_name: the agent's own model points at a closed port; the run is started with
  `model="openai-chat:gpt-test"` (the scripted server through `OPENAI_BASE_URL`).
- capability: started with `capabilities=[Stamper("capability-7")]`, a capability that brings the plain tool
  `stamp`; the recovering process knows the label only from the stored run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import AgentStreamEvent, PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.toolsets import FunctionToolset

from dbos_pydantic_ai import DBOSAgent, dbos_config, register_types

EXECUTOR_ID = "worker-1"
APP_VERSION = "crash-test"
AGENT_NAME = "crash_agent"
MCP_TOOLSET_ID = "slow"
APPROVAL_TOPIC = "approval"
APPROVAL_TIMEOUT_SECONDS = 600
SCENARIOS = (
    "model",
    "tool",
    "mcp",
    "approval",
    "stream",
    "stream_flag",
    "tool_inflight",
    "dbos_tools",
    "parallel",
    "timeout",
    "model_name",
    "capability",
)
PROMPTS = {
    "model": "Look up the key 'alpha'.",
    "tool": "Charge 42.",
    "mcp": "Echo 'hello' through the slow server.",
    "approval": "Refund 10.",
    "stream": "Look up the key 'alpha' and explain it.",
    "stream_flag": "Look up the key 'alpha' and explain it.",
    "tool_inflight": "Charge 42.",
    "dbos_tools": "Audit item 1 and reorder item 2.",
    "parallel": "Pay 1, 2, 3 and 4.",
    "timeout": "Look up the key 'alpha'.",
    "model_name": "Look up the key 'alpha'.",
    "capability": "Stamp the invoice.",
}
RUN_TIMEOUT_SECONDS = 600.0
CLOSED_PORT = 1  # nothing listens there: a request to it fails at once
CAPABILITY_LABEL = "capability-7"

WORKDIR = Path(".")  # set from the command line before anything runs
PHASE = "start"  # set from the command line: tools that hang do so only in the `start` phase


def hang_in_start_phase() -> None:
    """Block for good in the `start` phase (the test kills the worker here); return at once in `recover`."""
    if PHASE == "start":
        time.sleep(3600)


@dataclass
class Stamper(AbstractCapability[Any]):
    """A per-run capability that brings the plain tool `stamp`; stored with the run (pickled as `worker.Stamper`)."""

    label: str

    def get_toolset(self) -> FunctionToolset[Any]:
        label = self.label

        def stamp(doc: str) -> str:
            """Stamp a document."""
            append_line("tools.log", f"stamp {doc}")
            return f"{doc} stamped by {label}"

        return FunctionToolset([stamp])


def append_line(name: str, line: str) -> None:
    """Append one line to `WORKDIR/name` and fsync it: it survives a SIGKILL right after."""
    fd = os.open(WORKDIR / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def write_output(output: Any) -> None:
    """Write the run's output atomically, so the test never reads half a file."""
    tmp = WORKDIR / "output.json.tmp"
    tmp.write_text(json.dumps({"output": output}))
    with open(tmp) as file:
        os.fsync(file.fileno())
    tmp.replace(WORKDIR / "output.json")


async def record_stream(ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
    """Event stream handler (async mode): record streamed text, which arrives live from the model step."""
    async for event in events:
        if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart) and event.part.content:
            append_line("stream.log", json.dumps(event.part.content))
        elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
            append_line("stream.log", json.dumps(event.delta.content_delta))


def build_agent(scenario: str, mode: str, port: int) -> DBOSAgent[None, Any]:
    """The scenario's durable agent. Async mode streams its model requests (an event stream handler is set)."""
    model_port = CLOSED_PORT if scenario == "model_name" else port
    model = OpenAIChatModel(
        "gpt-test", provider=OpenAIProvider(base_url=f"http://127.0.0.1:{model_port}/v1", api_key="test")
    )
    toolsets: list[Any] = []
    if scenario == "mcp":
        from fastmcp.client.transports import PythonStdioTransport
        from pydantic_ai.mcp import MCPToolset

        server_script = Path(__file__).with_name("mcp_slow_server.py")
        transport = PythonStdioTransport(server_script, args=["--log", str(WORKDIR / "mcp.log")])
        # A loaded machine can take more than the 5 s default to start a Python server.
        toolsets.append(MCPToolset(transport, id=MCP_TOOLSET_ID, init_timeout=60))
    output_type: Any = [str, DeferredToolRequests] if scenario == "approval" else str
    agent: Agent[None, Any] = Agent(model, name=AGENT_NAME, output_type=output_type, toolsets=toolsets)

    @agent.tool
    def lookup(ctx: RunContext[None], key: str) -> str:
        """Look a key up."""
        if scenario == "timeout":
            assert ctx.deadline is not None
            append_line("tools.log", f"deadline {ctx.deadline.isoformat()}")
        append_line("tools.log", f"lookup {key}")
        return f"value-of-{key}"

    @agent.tool_plain
    def charge(amount: int) -> str:
        """Charge the customer (a side effect that must not be repeated)."""
        append_line("tools.log", f"charge {amount}")
        if scenario == "tool_inflight":
            hang_in_start_phase()
        return f"charged {amount}"

    @agent.tool_plain
    def pay(amount: int) -> str:
        """Pay an amount (durable; odd amounts hang in the start phase)."""
        append_line("tools.log", f"pay {amount} start")
        if amount % 2:
            hang_in_start_phase()
        return f"paid {amount}"

    if scenario == "dbos_tools":
        add_dbos_tools(agent)

    @agent.tool_plain(requires_approval=True)
    def refund(amount: int) -> str:
        """Refund the customer; a human must approve."""
        append_line("tools.log", f"refund {amount}")
        return f"refunded {amount}"

    return DBOSAgent(
        agent,
        name=AGENT_NAME,
        durable_tools=["charge", "refund", "pay"],
        event_stream_handler=record_stream if mode == "async" else None,
        stream_events=scenario == "stream" or (scenario == "stream_flag" and PHASE == "start"),
    )


def add_dbos_tools(agent: Agent[None, Any]) -> None:
    """A `@DBOS.step` tool and a `@DBOS.workflow` tool (with two steps of its own), registered before launch."""

    @DBOS.step(name="crash_audit")
    def audit(item: int) -> str:
        append_line("tools.log", f"audit {item}")
        return f"audited {item}"

    @DBOS.step(name="crash_reserve")
    def reserve(item: int) -> str:
        append_line("tools.log", f"reserve {item}")
        return f"reserved {item}"

    @DBOS.step(name="crash_ship")
    def ship(item: int) -> str:
        append_line("tools.log", f"ship {item}")
        hang_in_start_phase()
        return f"shipped {item}"

    @DBOS.workflow(name="crash_reorder")
    def reorder(item: int) -> str:
        return f"{reserve(item)}, {ship(item)}"

    agent.tool_plain(name="audit")(audit)
    agent.tool_plain(name="reorder")(reorder)


def run_kwargs(scenario: str) -> dict[str, Any]:
    """The scenario's extra run arguments (the `start` phase only: a recovered run has its stored ones)."""
    if scenario == "timeout":
        return {"timeout": RUN_TIMEOUT_SECONDS}
    if scenario == "model_name":
        return {"model": "openai-chat:gpt-test"}  # a model name, found through OPENAI_BASE_URL (set in main)
    if scenario == "capability":
        return {"capabilities": [Stamper(CAPABILITY_LABEL)]}
    return {}


def register_approval_workflows(durable: DBOSAgent[None, Any]) -> tuple[Any, Any]:
    """The user workflows of the approval scenario: agent run, wait for a human, continue the run."""

    def approvals_for(requests: Any, approved: Any) -> DeferredToolResults:
        if not isinstance(requests, DeferredToolRequests):
            raise RuntimeError(f"expected DeferredToolRequests from the first run, got {requests!r}")
        if approved is None:
            raise RuntimeError("no approval arrived before the timeout")
        return DeferredToolResults(approvals={call.tool_call_id: bool(approved) for call in requests.approvals})

    @DBOS.workflow(name="crash_approval_flow_sync")
    def approval_flow_sync(prompt: str) -> str:
        first = durable.run_sync(prompt)
        append_line("waiting.log", "waiting")
        approved = DBOS.recv(APPROVAL_TOPIC, timeout_seconds=APPROVAL_TIMEOUT_SECONDS)
        results = approvals_for(first.output, approved)
        second = durable.run_sync(message_history=first.all_messages(), deferred_tool_results=results)
        return second.output

    @DBOS.workflow(name="crash_approval_flow_async")
    async def approval_flow_async(prompt: str) -> str:
        first = await durable.run(prompt)
        append_line("waiting.log", "waiting")
        approved = await DBOS.recv_async(APPROVAL_TOPIC, timeout_seconds=APPROVAL_TIMEOUT_SECONDS)
        results = approvals_for(first.output, approved)
        second = await durable.run(message_history=first.all_messages(), deferred_tool_results=results)
        return second.output

    return approval_flow_sync, approval_flow_async


def main() -> None:
    global WORKDIR, PHASE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=SCENARIOS, required=True)
    parser.add_argument("--mode", choices=("sync", "async"), required=True)
    parser.add_argument("--phase", choices=("start", "recover"), required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--workflow-id", required=True)
    args = parser.parse_args()
    WORKDIR = args.workdir
    PHASE = args.phase
    # A stored capability is pickled by module name: this script's classes go by the name the test process
    # imports them by (`worker`), and `worker` resolves to this very module here.
    sys.modules.setdefault("worker", sys.modules[__name__])
    Stamper.__module__ = "worker"
    register_types(Stamper)  # a stored input: on the JSON allowlist, under its name `worker.Stamper`
    if args.scenario == "model_name":  # the recovering process finds the server through the environment too
        os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{args.port}/v1"
        os.environ["OPENAI_API_KEY"] = "test"

    durable = build_agent(args.scenario, args.mode, args.port)
    approval_sync, approval_async = register_approval_workflows(durable)
    DBOS(
        config=dbos_config(
            "crash_test",
            database_url=args.database_url,
            application_version=APP_VERSION,
            executor_id=EXECUTOR_ID,
            notification_listener_polling_interval_sec=0.05,  # SQLite: recv polls the database
        )
    )
    DBOS.launch()
    print(f"worker {os.getpid()} launched: phase={args.phase}", flush=True)

    prompt = PROMPTS[args.scenario]
    if args.phase == "recover":
        output = DBOS.retrieve_workflow(args.workflow_id).get_result(polling_interval_sec=0.1)
        if args.scenario != "approval":
            output = output.output  # the agent workflows return the AgentRunResult
    elif args.scenario == "approval":
        with SetWorkflowID(args.workflow_id):
            output = approval_flow(args.mode, approval_sync, approval_async, prompt)
    elif args.mode == "sync":
        with SetWorkflowID(args.workflow_id):
            output = durable.run_sync(prompt, **run_kwargs(args.scenario)).output
    else:

        async def run() -> Any:
            with SetWorkflowID(args.workflow_id):
                return (await durable.run(prompt, **run_kwargs(args.scenario))).output

        output = asyncio.run(run())
    write_output(output)
    print(f"worker {os.getpid()} done: {output!r}", flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip DBOS's shutdown: the result is stored, and nothing else must linger


def approval_flow(mode: str, flow_sync: Any, flow_async: Any, prompt: str) -> Any:
    if mode == "sync":
        return flow_sync(prompt)
    return asyncio.run(flow_async(prompt))


if __name__ == "__main__":
    main()
