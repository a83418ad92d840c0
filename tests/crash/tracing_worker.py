"""A traced worker for `test_tracing_crash.py`: SIGKILLed during a model request, then relaunched to recover.

    python tracing_worker.py --phase start|recover --database-url URL --port PORT --workdir DIR --workflow-id ID

Tracing is on (`dbos_config(tracing=True)`); every span is written, as it ends, to `DIR/spans-PHASE.jsonl` (one
JSON object per line, flushed and fsynced), so the test can read what each process exported before it died.
`start` runs the agent under `ID`; `recover` only launches DBOS, which recovers the run, and waits for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import worker
from dbos import DBOS, SetWorkflowID
from openai import AsyncOpenAI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

sys.path.insert(0, str(Path(__file__).parent.parent))
from dbos_pydantic_ai import DBOSAgent, dbos_config
from span_tree import span_dict

AGENT_NAME = "traced_agent"
PROMPT = "Look up alpha and beta."


class JsonLinesExporter(SpanExporter):
    """Appends each span to a file as it ends, fsynced: what a SIGKILL leaves is what was exported."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as file:
            for span in spans:
                file.write(json.dumps(span_dict(span), default=str) + "\n")
            file.flush()
            os.fsync(file.fileno())
        return SpanExportResult.SUCCESS


def build_agent(port: int) -> DBOSAgent[None, str]:
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="test", max_retries=0)
    agent: Agent[None, str] = Agent(OpenAIChatModel("gpt-test", provider=OpenAIProvider(openai_client=client)))

    @agent.tool_plain
    def lookup(key: str) -> str:
        worker.append_line("tools.log", key)
        return f"value-of-{key}"

    return DBOSAgent(agent, name=AGENT_NAME)


async def main_async(args: argparse.Namespace, durable: DBOSAgent[None, str]) -> Any:
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
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(args.workdir / f"spans-{args.phase}.jsonl")))
    trace.set_tracer_provider(provider)
    durable = build_agent(args.port)
    config = dbos_config(
        "traced",
        database_url=args.database_url,
        executor_id="traced-1",
        application_version="traced-test",
        tracing=True,
    )
    DBOS(config=config)
    DBOS.launch()
    print(f"launched ({args.phase})", flush=True)
    worker.write_output(asyncio.run(main_async(args, durable)))
    DBOS.destroy()
    provider.shutdown()


if __name__ == "__main__":
    main()
