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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any

from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, RunContext
from pydantic_ai.messages import AgentStreamEvent, PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from dbos_pydantic_ai import DBOSAgent, dbos_config

EXECUTOR_ID = "worker-1"
APP_VERSION = "crash-test"
AGENT_NAME = "crash_agent"
MCP_TOOLSET_ID = "slow"
APPROVAL_TOPIC = "approval"
APPROVAL_TIMEOUT_SECONDS = 600
SCENARIOS = ("model", "tool", "mcp", "approval", "stream")
PROMPTS = {
    "model": "Look up the key 'alpha'.",
    "tool": "Charge 42.",
    "mcp": "Echo 'hello' through the slow server.",
    "approval": "Refund 10.",
    "stream": "Look up the key 'alpha' and explain it.",
}

WORKDIR = Path(".")  # set from the command line before anything runs


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
    model = OpenAIChatModel("gpt-test", provider=OpenAIProvider(base_url=f"http://127.0.0.1:{port}/v1", api_key="test"))
    toolsets: list[Any] = []
    if scenario == "mcp":
        from fastmcp.client.transports import PythonStdioTransport
        from pydantic_ai.mcp import MCPToolset

        server_script = Path(__file__).with_name("mcp_slow_server.py")
        transport = PythonStdioTransport(server_script, args=["--log", str(WORKDIR / "mcp.log")])
        toolsets.append(MCPToolset(transport, id=MCP_TOOLSET_ID))
    output_type: Any = [str, DeferredToolRequests] if scenario == "approval" else str
    agent: Agent[None, Any] = Agent(model, name=AGENT_NAME, output_type=output_type, toolsets=toolsets)

    @agent.tool_plain
    def lookup(key: str) -> str:
        """Look a key up."""
        append_line("tools.log", f"lookup {key}")
        return f"value-of-{key}"

    @agent.tool_plain
    def charge(amount: int) -> str:
        """Charge the customer (a side effect that must not be repeated)."""
        append_line("tools.log", f"charge {amount}")
        return f"charged {amount}"

    @agent.tool_plain(requires_approval=True)
    def refund(amount: int) -> str:
        """Refund the customer; a human must approve."""
        append_line("tools.log", f"refund {amount}")
        return f"refunded {amount}"

    return DBOSAgent(
        agent,
        name=AGENT_NAME,
        durable_tools=["charge", "refund"],
        event_stream_handler=record_stream if mode == "async" else None,
        stream_events=scenario == "stream",
    )


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
    global WORKDIR
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
            output = durable.run_sync(prompt).output
    else:

        async def run() -> Any:
            with SetWorkflowID(args.workflow_id):
                return (await durable.run(prompt)).output

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
