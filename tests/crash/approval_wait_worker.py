"""A worker for the approval crash tests: a durable run that waits inside itself for approvals.

    python approval_wait_worker.py --mode sync|async|started --phase start|recover
                                   --database-url URL --port PORT --workdir DIR --workflow-id ID
                                   [--approval-timeout SECONDS] [--park-after SECONDS]

The agent (`DBOSAgent(..., approvals="wait")`, model on the test's scripted OpenAI server) has a tool
`refund` that needs approval, run as a durable step; `--approval-timeout` sets its `approval_timeout`
(give both phases the same). `start` starts the run under `--workflow-id` (`run_sync` or `await run`);
`recover` only launches DBOS, which recovers the PENDING run, and waits for its result. Mode `started` starts it
with `start_sync()`, so nobody awaits it and it may park (`--park-after`); each time it parks, `parked.log` gets a
line. The output
lands in `DIR/output.json`; `tools.log` gets a line per refund executed and
`waiting.log` a line each time the run announces its pending calls (so once more after a recovery).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any

import worker  # the crash suite's worker: fsynced record files and the atomic output file
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import AgentStreamEvent, DeferredToolRequestsEvent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from dbos_pydantic_ai import DBOSAgent, dbos_config

AGENT_NAME = "crash_approvals"


async def record_waits(ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
    """Record each announcement of pending calls: it comes right before the run waits for decisions."""
    async for event in events:
        if isinstance(event, DeferredToolRequestsEvent):
            ids = [call.tool_call_id for call in event.requests.approvals]
            worker.append_line("waiting.log", " ".join(ids))


def build_agent(
    port: int, approval_timeout: float | None = None, park_after: float | None = None
) -> DBOSAgent[None, str]:
    model = OpenAIChatModel("gpt-test", provider=OpenAIProvider(base_url=f"http://127.0.0.1:{port}/v1", api_key="test"))
    agent: Agent[None, str] = Agent(model, name=AGENT_NAME)

    @agent.tool_plain(requires_approval=True)
    def refund(amount: int) -> str:
        """Refund the customer; a human must approve."""
        worker.append_line("tools.log", f"refund {amount}")
        return f"refunded {amount}"

    return DBOSAgent(
        agent,
        approvals="wait",
        approval_timeout=approval_timeout,
        durable_tools=["refund"],
        event_stream_handler=record_waits,
        park_after=park_after,
    )


def record_parks(workflow_id: str) -> None:
    """On a thread: a line in `parked.log` each time the run parks in this process."""
    from dbos_pydantic_ai._parking import parked_run_ids

    was_parked = False
    while True:
        parked = workflow_id in parked_run_ids()
        if parked and not was_parked:
            worker.append_line("parked.log", "parked")
        was_parked = parked
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("sync", "async", "started"), required=True)
    parser.add_argument("--phase", choices=("start", "recover"), required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--workflow-id", required=True)
    parser.add_argument("--approval-timeout", type=float, default=None)
    parser.add_argument("--park-after", type=float, default=None)
    args = parser.parse_args()
    worker.WORKDIR = args.workdir

    durable = build_agent(args.port, args.approval_timeout, args.park_after)
    DBOS(
        config=dbos_config(
            "crash_approvals",
            database_url=args.database_url,
            application_version=worker.APP_VERSION,
            executor_id=worker.EXECUTOR_ID,
            notification_listener_polling_interval_sec=0.05,  # SQLite: recv polls the database
        )
    )
    DBOS.launch()
    print(f"worker {os.getpid()} launched: phase={args.phase}", flush=True)

    threading.Thread(target=record_parks, args=(args.workflow_id,), daemon=True).start()
    if args.phase == "recover":
        output = DBOS.retrieve_workflow(args.workflow_id).get_result(polling_interval_sec=0.1).output
    elif args.mode == "started":
        durable.start_sync("Refund 10 and 20.", workflow_id=args.workflow_id)
        output = DBOS.retrieve_workflow(args.workflow_id).get_result(polling_interval_sec=0.1).output
    elif args.mode == "sync":
        with SetWorkflowID(args.workflow_id):
            output = durable.run_sync("Refund 10 and 20.").output
    else:

        async def run() -> Any:
            with SetWorkflowID(args.workflow_id):
                return (await durable.run("Refund 10 and 20.")).output

        output = asyncio.run(run())
    worker.write_output(output)
    print(f"worker {os.getpid()} done: {output!r}", flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip DBOS's shutdown: the result is stored, and nothing else must linger


if __name__ == "__main__":
    main()
