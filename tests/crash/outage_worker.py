"""A worker whose model provider is in an outage, for `test_outage_crash.py`: SIGKILLed during the backoff.

    python outage_worker.py --phase start|recover --database-url URL --port PORT --workdir DIR --workflow-id ID

`start` launches DBOS and runs the agent under `ID`; `recover` only launches DBOS, which recovers the run about a
second later, and waits for it. Either way the output lands in `DIR/output.json`. The model is an `OpenAIChatModel`
without the SDK's own retries, so each attempt the server counts is one durable attempt; `POLICY` has no jitter, so
the test can compute every wait.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import worker
from dbos import DBOS, SetWorkflowID
from openai import AsyncOpenAI
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from dbos_pydantic_ai import DBOSAgent, ModelRetryPolicy, dbos_config

AGENT_NAME = "outage_agent"
POLICY = ModelRetryPolicy(initial_interval_seconds=2.0, backoff_rate=2.0, max_interval_seconds=8.0, jitter=0.0)
PROMPT = "Look up alpha and beta."


def build_agent(port: int) -> DBOSAgent[None, str]:
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="test", max_retries=0)
    agent: Agent[None, str] = Agent(OpenAIChatModel("gpt-test", provider=OpenAIProvider(openai_client=client)))

    @agent.tool_plain
    def lookup(key: str) -> str:
        worker.append_line("tools.log", key)
        return f"value-of-{key}"

    return DBOSAgent(agent, name=AGENT_NAME, model_retry=POLICY)


async def main_async(args: argparse.Namespace, durable: DBOSAgent[None, str]) -> str:
    if args.phase == "start":
        with SetWorkflowID(args.workflow_id):
            return (await durable.run(PROMPT)).output
    handle = await DBOS.retrieve_workflow_async(args.workflow_id)
    return (await handle.get_result()).output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("start", "recover"), required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--workflow-id", required=True)
    args = parser.parse_args()
    worker.WORKDIR = args.workdir
    durable = build_agent(args.port)
    DBOS(
        config=dbos_config(
            "outage", database_url=args.database_url, executor_id="outage-1", application_version="outage-test"
        )
    )
    DBOS.launch()
    print(f"launched ({args.phase})", flush=True)
    worker.write_output(asyncio.run(main_async(args, durable)))
    DBOS.destroy()


if __name__ == "__main__":
    main()
