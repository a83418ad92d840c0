"""A worker of docs/configuration.md's "Many workers on one PostgreSQL database", for crash tests.

    python queue_worker.py --executor-id ID --database-url URL --port PORT --workdir DIR
                           [--start WORKFLOW_ID --mode sync|async] [--take-over DEAD_EXECUTOR_ID]

It follows the docs' recipe: one `DBOSAgent`, a user workflow `answer(prompt)` that returns the agent's output
(and `answer_async`, the same in async code), DBOS on the shared database with this worker's executor id and the
pinned application version, and after `DBOS.launch()` the queue `agent_runs` (one run at a time per worker). It then
writes `DIR/ready-<executor id>` and serves the queue until it is killed. `--start` also runs `answer(PROMPT)` (or
`answer_async` with `--mode async`) here under that workflow id.
`--take-over` waits for `DIR/take-over` to exist, then resumes the PENDING runs of that (dead) executor with the
docs' loop and writes their ids to `DIR/resumed.json`.

Tool executions are recorded in `DIR/tools.log` as fsynced lines `<executor id> <tool> <argument>`. The plain
tool `lookup` waits until `DIR/gate` exists, so a test can kill a worker between two recorded model requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path

import worker
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent, RunContext
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from dbos_pydantic_ai import DBOSAgent, dbos_config

APP_NAME = "many_workers"
APP_VERSION = "many-workers-test"
AGENT_NAME = "queue_agent"
QUEUE = "agent_runs"
PROMPT = "Charge 42, then look up 'alpha'."

EXECUTOR_ID = ""  # set from the command line before anything runs
DURABLE: DBOSAgent[None, str] | None = None  # built in main(), before DBOS.launch()


@DBOS.workflow()
def answer(prompt: str) -> str:
    """The docs' queue recipe: the agent run becomes a child workflow `queue_agent.run_sync`."""
    assert DURABLE is not None
    return DURABLE.run_sync(prompt).output


@DBOS.workflow()
async def answer_async(prompt: str) -> str:
    """The recipe in async code: the agent run becomes a child workflow `queue_agent.run`."""
    assert DURABLE is not None
    return (await DURABLE.run(prompt)).output


def record(tool: str, argument: object) -> None:
    """Record a tool execution (fsynced: the line survives a SIGKILL right after)."""
    worker.append_line("tools.log", f"{EXECUTOR_ID} {tool} {argument}")


def build_agent(port: int) -> DBOSAgent[None, str]:
    model = OpenAIChatModel("gpt-test", provider=OpenAIProvider(base_url=f"http://127.0.0.1:{port}/v1", api_key="test"))
    agent: Agent[None, str] = Agent(model, name=AGENT_NAME)

    @agent.tool
    def read_prompt(ctx: RunContext[None]) -> str:
        """Read the user's prompt back (ties a run's output to its own prompt)."""
        record("read_prompt", ctx.prompt)
        return str(ctx.prompt)

    @agent.tool_plain
    def charge(amount: int) -> str:
        """Charge the customer (durable: a side effect that must not be repeated)."""
        record("charge", amount)
        return f"charged {amount}"

    @agent.tool_plain
    def lookup(key: str) -> str:
        """Look a key up, once `DIR/gate` exists (plain: a recovered run executes it again)."""
        record("lookup", key)
        while not (worker.WORKDIR / "gate").exists():
            time.sleep(0.05)
        return f"value-of-{key}"

    return DBOSAgent(agent, name=AGENT_NAME, durable_tools=["charge"])


def take_over(dead_executor_id: str) -> list[str]:
    """The docs' takeover of a worker that is gone for good: resume its PENDING runs."""
    resumed: list[str] = []
    for run in DBOS.list_workflows(status="PENDING", executor_id=dead_executor_id, load_input=False, load_output=False):
        DBOS.resume_workflow(run.workflow_id)
        resumed.append(run.workflow_id)
    return resumed


def start(workflow_id: str, mode: str) -> str:
    """Run `answer` (or `answer_async`) in this process, under a fixed workflow id."""
    if mode == "sync":
        with SetWorkflowID(workflow_id):
            return answer(PROMPT)

    async def run() -> str:
        with SetWorkflowID(workflow_id):
            return await answer_async(PROMPT)

    return asyncio.run(run())


def main() -> None:
    global DURABLE, EXECUTOR_ID
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executor-id", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--start", metavar="WORKFLOW_ID")
    parser.add_argument("--mode", choices=("sync", "async"), default="sync")
    parser.add_argument("--take-over", metavar="DEAD_EXECUTOR_ID")
    parser.add_argument("--concurrency", type=int, default=1, help="runs of the queue at once in this worker")
    args = parser.parse_args()
    worker.WORKDIR = args.workdir
    EXECUTOR_ID = args.executor_id

    DURABLE = build_agent(args.port)
    DBOS(
        config=dbos_config(
            APP_NAME, database_url=args.database_url, executor_id=EXECUTOR_ID, application_version=APP_VERSION
        )
    )
    DBOS.launch()
    DBOS.register_queue(QUEUE, worker_concurrency=args.concurrency)
    worker.append_line(f"ready-{EXECUTOR_ID}", "ready")
    print(f"{EXECUTOR_ID} launched and serving {QUEUE}", flush=True)

    if args.start is not None:
        print(f"{EXECUTOR_ID} done: {start(args.start, args.mode)!r}", flush=True)
    if args.take_over is not None:
        while not (args.workdir / "take-over").exists():
            time.sleep(0.05)
        resumed = take_over(args.take_over)
        (args.workdir / "resumed.json.tmp").write_text(json.dumps(resumed))
        (args.workdir / "resumed.json.tmp").replace(args.workdir / "resumed.json")
        print(f"{EXECUTOR_ID} resumed the runs of {args.take_over}: {resumed}", flush=True)
    threading.Event().wait()  # serve the queue until killed


if __name__ == "__main__":
    main()
