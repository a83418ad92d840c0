"""A worker that restarts with runs in flight while new runs arrive, for `test_mixed_loops_restart.py`.

    python mixed_loops_worker.py --phase start|restart --database-url URL --port PORT --workdir DIR

`start` launches DBOS and starts `ASYNC_RUNS` async runs (on the main loop) and `SYNC_RUNS` sync runs (on threads),
all held in their tool until `DIR/gate` exists: the test SIGKILLs the worker there, after each run's first model
request was recorded. `restart` launches DBOS again, which recovers those runs on its own loop about a second after
launch, while this process starts new async and sync runs over a few seconds. When every run has ended it writes
`DIR/results.json`: each run's status and, for the runs it started, their output or error.

Each tool execution appends `<prompt>` to `DIR/tools.log` (fsynced), so the test knows when all runs are held.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import worker
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent, RunContext
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from dbos_pydantic_ai import DBOSAgent, dbos_config

AGENT_NAME = "mixed_agent"
ASYNC_RUNS = 5
SYNC_RUNS = 3
NEW_ASYNC_RUNS = 6
NEW_SYNC_RUNS = 4


def build_agent(port: int) -> DBOSAgent[None, str]:
    model = OpenAIChatModel("gpt-test", provider=OpenAIProvider(base_url=f"http://127.0.0.1:{port}/v1", api_key="test"))
    agent: Agent[None, str] = Agent(model, name=AGENT_NAME)

    @agent.tool
    def read_prompt(ctx: RunContext[None]) -> str:
        """Read the prompt back, once `DIR/gate` exists (plain: a recovered run executes it again)."""
        worker.append_line("tools.log", str(ctx.prompt))
        while not (worker.WORKDIR / "gate").exists():
            time.sleep(0.05)
        return str(ctx.prompt)

    return DBOSAgent(agent)


def run_sync_in_thread(durable: DBOSAgent[None, str], workflow_id: str, results: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:
            with SetWorkflowID(workflow_id):
                results[workflow_id] = durable.run_sync(workflow_id).output
        except Exception as error:
            results[workflow_id] = f"{type(error).__name__}: {error}"

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def run_async(durable: DBOSAgent[None, str], workflow_id: str, results: dict[str, Any]) -> None:
    try:
        with SetWorkflowID(workflow_id):
            results[workflow_id] = (await durable.run(workflow_id)).output
    except Exception as error:
        results[workflow_id] = f"{type(error).__name__}: {error}"


async def start(durable: DBOSAgent[None, str]) -> None:
    results: dict[str, Any] = {}
    threads = [run_sync_in_thread(durable, f"first-sync-{index}", results) for index in range(SYNC_RUNS)]
    await asyncio.gather(*(run_async(durable, f"first-async-{index}", results) for index in range(ASYNC_RUNS)))
    for thread in threads:
        thread.join()  # never reached: the test kills the worker while the runs are held


async def restart(durable: DBOSAgent[None, str]) -> None:
    """New runs on this loop and on threads, spread over the seconds in which DBOS recovers the first ones."""
    results: dict[str, Any] = {}
    threads: list[threading.Thread] = []
    tasks: list[asyncio.Task[None]] = []
    for index in range(max(NEW_ASYNC_RUNS, NEW_SYNC_RUNS)):
        if index < NEW_ASYNC_RUNS:
            tasks.append(asyncio.create_task(run_async(durable, f"new-async-{index}", results)))
        if index < NEW_SYNC_RUNS:
            threads.append(run_sync_in_thread(durable, f"new-sync-{index}", results))
        await asyncio.sleep(0.4)
    await asyncio.gather(*tasks)
    for thread in threads:
        await asyncio.to_thread(thread.join)
    while await DBOS.list_workflows_async(status=["PENDING", "ENQUEUED"], load_input=False, load_output=False):
        await asyncio.sleep(0.1)
    statuses = {
        status.workflow_id: status.status
        for status in await DBOS.list_workflows_async(name=[f"{AGENT_NAME}.run", f"{AGENT_NAME}.run_sync"])
    }
    (worker.WORKDIR / "results.json").write_text(json.dumps({"statuses": statuses, "outputs": results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("start", "restart"), required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    worker.WORKDIR = args.workdir

    durable = build_agent(args.port)
    DBOS(
        config=dbos_config(
            "mixed_loops",
            database_url=args.database_url,
            executor_id="mixed-1",
            application_version="mixed-loops-test",
            notification_listener_polling_interval_sec=0.05,
        )
    )
    DBOS.launch()
    print(f"launched ({args.phase})", flush=True)
    asyncio.run(start(durable) if args.phase == "start" else restart(durable))
    print("done", flush=True)
    DBOS.destroy()


if __name__ == "__main__":
    main()
