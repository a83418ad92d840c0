"""A worker for `test_json_crash.py`: a run whose checkpoints hold every response part kind, typed deps and a
structured output, stored as typed JSON (the default), SIGKILLed mid-run and recovered by a relaunch.

    python json_parts_worker.py --phase start|recover --database-url URL --port PORT --workdir DIR --workflow-id ID

The model (a `FunctionModel`: this is about what is stored, not about HTTP) logs each call to `DIR/model.log`.
Its first response has a thinking, text, file (image), native tool call and return, and a tool call of `inspect`,
which returns an image (`BinaryContent`) and, in the `start` phase, hangs after logging `DIR/tools.log`, so the test
kills the worker with that response recorded. `recover` only launches DBOS, which resumes the run.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import worker
from dbos import DBOS, SetWorkflowID
from pydantic import BaseModel
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import (
    BinaryContent,
    FilePart,
    ModelMessage,
    ModelResponse,
    NativeToolCallPart,
    NativeToolReturnPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from dbos_pydantic_ai import DBOSAgent, dbos_config

AGENT_NAME = "json_parts_agent"
IMAGE = b"\x89PNG\r\n\x1a\n\x00\xff"


@dataclass
class Shop:
    name: str
    opened: datetime
    logo: bytes


class Invoice(BaseModel):
    number: int
    shop: str
    issued: datetime


SHOP = Shop("Mugs & Co", datetime(2020, 5, 1, 9, 30, tzinfo=UTC), b"\x00\xfflogo")


def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    worker.append_line("model.log", str(len(messages)))
    if len(messages) == 1:
        return ModelResponse(
            parts=[
                ThinkingPart("let me think", signature="sig-1"),
                TextPart("checking the shop"),
                FilePart(BinaryContent(IMAGE, media_type="image/png")),
                NativeToolCallPart("web_search", {"query": "shop"}, tool_call_id="n1"),
                NativeToolReturnPart("web_search", {"hits": ["a", "b"]}, tool_call_id="n1"),
                ToolCallPart("inspect", {}, tool_call_id="t1"),
            ]
        )
    args = {"number": 7, "shop": "Mugs & Co", "issued": "2026-01-02T03:04:05Z"}
    return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, args, tool_call_id="o1")])


def build_agent(phase: str) -> DBOSAgent[Shop, Invoice]:
    agent = Agent(FunctionModel(respond), deps_type=Shop, output_type=Invoice)

    @agent.tool
    def inspect(ctx: RunContext[Shop]) -> list[Any]:
        """Look at the shop's logo."""
        worker.append_line("tools.log", f"inspect {phase}")
        if phase == "start":
            threading.Event().wait()  # killed here, the first model response recorded
        return [f"logo of {ctx.deps.name}", BinaryContent(ctx.deps.logo, media_type="image/png")]

    return DBOSAgent(agent, name=AGENT_NAME)


async def main_async(args: argparse.Namespace, durable: DBOSAgent[Shop, Invoice]) -> Any:
    if args.phase == "start":
        with SetWorkflowID(args.workflow_id):
            result = await durable.run("bill me", deps=SHOP)
    else:
        handle = await DBOS.retrieve_workflow_async(args.workflow_id)
        result = await handle.get_result()
    kinds = [[part.part_kind for part in message.parts] for message in result.all_messages()]
    return {"output": result.output.model_dump(mode="json"), "kinds": kinds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("start", "recover"), required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--workflow-id", required=True)
    args = parser.parse_args()
    worker.WORKDIR = args.workdir
    durable = build_agent(args.phase)
    config = dbos_config("json_parts", database_url=args.database_url, executor_id="json-1", application_version="v1")
    DBOS(config=config)
    DBOS.launch()
    print(f"launched ({args.phase})", flush=True)
    worker.write_output(asyncio.run(main_async(args, durable)))
    DBOS.destroy()


if __name__ == "__main__":
    main()
