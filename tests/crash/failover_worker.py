"""A fleet member for failover tests: a queue worker that heartbeats through `FleetMember` (fleet.py).

    python failover_worker.py --executor-id ID --database-url URL --port PORT --workdir DIR
                              [--dead-after S] [--concurrency N]

It defines the agent `fleet_agent` (an `OpenAIChatModel` on the test's scripted server, which it tells apart from
the other workers by the `x-executor` header), takes its executor id with `FleetMember.claim()`, launches DBOS,
registers the queue `fleet_runs` and starts heartbeating, then writes `DIR/ready-<executor id>` and serves until
killed. A fenced worker exits with status 3 (the default `on_fenced`).

Tools: the durable tool `record_step(n)` appends `<executor id> <prompt> <n>` to `DIR/tools.log` (fsynced); the
plain tool `wait_gate()` returns once `DIR/gate` exists, so a test can pause a worker while runs sit in it.

A second agent, `fleet_approver` (`approvals="wait"`, `park_after=0.5`), asks for a `refund(amount)` that needs
approval (durable: appends `<executor id> <prompt> refund <amount>` to `tools.log`), so its waiting runs park.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import worker
from dbos import DBOS
from openai import AsyncOpenAI
from pydantic_ai import Agent, RunContext
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from dbos_pydantic_ai import DBOSAgent, dbos_config
from dbos_pydantic_ai.fleet import FleetMember

APP_NAME = "fleet_test"
APP_VERSION = "fleet-test-1"
AGENT_NAME = "fleet_agent"
APPROVER_NAME = "fleet_approver"
QUEUE = "fleet_runs"


def build_agent(port: int, executor_id: str) -> DBOSAgent[None, str]:
    client = AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="test", default_headers={"x-executor": executor_id}
    )
    agent: Agent[None, str] = Agent(OpenAIChatModel("gpt-test", provider=OpenAIProvider(openai_client=client)))

    @agent.tool
    def record_step(ctx: RunContext[None], n: int) -> str:
        """Record that this run reached step `n` (durable: must not repeat)."""
        worker.append_line("tools.log", f"{executor_id} {ctx.prompt} {n}")
        return f"step {n} recorded"

    @agent.tool_plain
    def wait_gate() -> str:
        """Wait until the test opens the gate (plain: a recovered run calls it again)."""
        worker.append_line("gate.log", executor_id)
        while not (worker.WORKDIR / "gate").exists():
            threading.Event().wait(0.05)
        return "gate open"

    return DBOSAgent(agent, name=AGENT_NAME, durable_tools=["record_step"])


def build_approver(port: int, executor_id: str) -> DBOSAgent[None, str]:
    client = AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="test", default_headers={"x-executor": executor_id}
    )
    agent: Agent[None, str] = Agent(OpenAIChatModel("gpt-test", provider=OpenAIProvider(openai_client=client)))

    @agent.tool(requires_approval=True)
    def refund(ctx: RunContext[None], amount: int) -> str:
        """Refund the customer; a human must approve."""
        worker.append_line("tools.log", f"{executor_id} {ctx.prompt} refund {amount}")
        return f"refunded {amount}"

    return DBOSAgent(agent, name=APPROVER_NAME, durable_tools=["refund"], approvals="wait", park_after=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executor-id", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--dead-after", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--fenced-exit-delay",
        type=float,
        default=0.0,
        help="when fenced, wait this long before the default exit (a slow shutdown: steps must stay parked meanwhile)",
    )
    args = parser.parse_args()
    worker.WORKDIR = args.workdir

    build_agent(args.port, args.executor_id)
    build_approver(args.port, args.executor_id)

    def on_fenced() -> None:
        print(f"{args.executor_id} fenced", flush=True)
        time.sleep(args.fenced_exit_delay)
        member.exit_fenced()

    member = FleetMember(
        args.database_url,
        executor_id=args.executor_id,
        app_version=APP_VERSION,
        dead_after=args.dead_after,
        heartbeat_interval=args.dead_after / 8,
        queues=[QUEUE],
        on_fenced=on_fenced,
    )
    DBOS(
        config=dbos_config(
            APP_NAME, database_url=args.database_url, executor_id=args.executor_id, application_version=APP_VERSION
        )
    )
    member.claim()
    DBOS.launch()
    DBOS.register_queue(QUEUE, worker_concurrency=args.concurrency, polling_interval_sec=0.2)
    member.start()
    worker.append_line(f"ready-{args.executor_id}", "ready")
    print(f"{args.executor_id} serving {QUEUE}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
