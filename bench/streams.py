"""What `stream_events=True` costs: a durable run with its events in a DBOS stream against one without.

Both variants stream their model requests (the one without `stream_events` has an event handler that
discards the events), so the difference is the stream alone. The workload: one model request that calls
a plain tool, then an answer of N text chunks. Two answer paces:

- burst: the model yields every chunk at once (a local, instant model): deltas queued while a write is in
  flight are merged, so the stream holds fewer items than the model yielded chunks;
- paced: the model yields a chunk every few milliseconds, like a provider: each delta is its own write,
  made while the model waits for its next token.

Variants run interleaved after a warm-up; medians with min/max. Also measured directly: the cost of one
stream write from a step (model events) and from workflow code (checkpointed run events).

    python bench/streams.py            # SQLite (WAL) and PostgreSQL
    python bench/streams.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from dbos_pydantic_ai import DBOSAgent, dbos_config, read_events

RESULTS = Path(__file__).parent / "results" / "streams.json"
POSTGRES_SERVER_URL = os.environ.get("DBOS_PAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
CHUNKS = 40
PACE_SECONDS = 0.005
MICRO_WRITES = 200


async def scripted(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    """A `lookup` call, then CHUNKS chunks of text; the prompt says whether to pace them."""
    if not any(isinstance(part, ToolReturnPart) for message in messages for part in message.parts):
        yield {0: DeltaToolCall(name="lookup", json_args='{"key": 1}', tool_call_id="call-1")}
        return
    paced = "paced" in str(messages[0].parts[-1].content)  # type: ignore[union-attr]
    for index in range(CHUNKS):
        yield f"word{index} "
        if paced:
            await asyncio.sleep(PACE_SECONDS)


def lookup(key: int) -> str:
    """A plain tool."""
    return f"value-{key}"


async def discard(ctx: RunContext[None], events: Any) -> None:
    async for _ in events:
        pass


without_stream = DBOSAgent(
    Agent(FunctionModel(stream_function=scripted), name="bench_nostream", tools=[lookup]), event_stream_handler=discard
)
with_stream = DBOSAgent(
    Agent(FunctionModel(stream_function=scripted), name="bench_stream", tools=[lookup]), stream_events=True
)
VARIANTS = {"without stream_events": without_stream, "stream_events=True": with_stream}


@DBOS.step(name="bench.write_from_step")
async def write_from_step(n: int) -> None:
    for index in range(n):
        await DBOS.write_stream_async("bench", index)


@DBOS.workflow(name="bench.stream_writes_step")
async def step_writes(n: int) -> None:
    await write_from_step(n)


@DBOS.workflow(name="bench.stream_writes_workflow")
async def workflow_writes(n: int) -> None:
    for index in range(n):
        await DBOS.write_stream_async("bench", index)


async def timed_run(agent: DBOSAgent[None, str], prompt: str) -> tuple[float, str]:
    workflow_id = uuid.uuid4().hex
    with SetWorkflowID(workflow_id):
        start = time.perf_counter()
        result = await agent.run(prompt)
        elapsed = (time.perf_counter() - start) * 1000
    assert result.output.startswith("word0 "), result.output
    return elapsed, workflow_id


def summary(times: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


async def measure(label: str, url: str, repeats: int, warmup: int) -> dict[str, Any]:
    DBOS.destroy()
    DBOS(config=dbos_config("bench_streams", database_url=url, application_version="bench", log_level="WARNING"))
    DBOS.launch()
    results: dict[str, Any] = {}
    try:
        for pace in ("burst", "paced"):
            prompt = f"answer {pace}"
            times: dict[str, list[float]] = {name: [] for name in VARIANTS}
            for _ in range(warmup):
                for agent in VARIANTS.values():
                    await timed_run(agent, prompt)
            last_streamed = ""
            for _ in range(repeats):
                for name, agent in VARIANTS.items():
                    elapsed, workflow_id = await timed_run(agent, prompt)
                    times[name].append(elapsed)
                    if agent is with_stream:
                        last_streamed = workflow_id
            events = [event async for _, event in read_events(last_streamed)]
            items = await stream_items(url, last_streamed)
            base = statistics.median(times["without stream_events"])
            streamed = statistics.median(times["stream_events=True"])
            results[pace] = {
                "runs": {name: summary(values) for name, values in times.items()},
                "overhead_per_run_ms": streamed - base,
                "stream_items_per_run": items,
                "events_read_per_run": len(events),
                "overhead_per_stream_item_ms": (streamed - base) / items,
            }
            console_row(label, pace, results[pace])
        results["single_write_ms"] = await micro()
        print(f"  {label}: one write from a step / from workflow code: {results['single_write_ms']}")
    finally:
        DBOS.destroy()
    return results


async def stream_items(url: str, workflow_id: str) -> int:
    """Rows in the run's stream (attempt markers, events, close sentinel)."""
    engine = sa.create_engine(url)
    try:
        schema = "" if url.startswith("sqlite") else "dbos."
        with engine.connect() as connection:
            query = sa.text(f"SELECT COUNT(*) FROM {schema}streams WHERE workflow_uuid = :id")
            return int(connection.execute(query, {"id": workflow_id}).scalar() or 0)
    finally:
        engine.dispose()


async def micro() -> dict[str, float]:
    """Milliseconds per stream write, from a step and from workflow code (median of 5 workflows)."""
    out: dict[str, float] = {}
    for name, workflow in (("from_step", step_writes), ("from_workflow", workflow_writes)):
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            await workflow(MICRO_WRITES)
            samples.append((time.perf_counter() - start) * 1000 / MICRO_WRITES)
        out[name] = round(statistics.median(samples), 3)
    return out


def console_row(label: str, pace: str, result: dict[str, Any]) -> None:
    runs = result["runs"]
    print(
        f"  {label:<12} {pace:<6} without {runs['without stream_events']['median_ms']:7.1f} ms   "
        f"with {runs['stream_events=True']['median_ms']:7.1f} ms   +{result['overhead_per_run_ms']:6.1f} ms/run   "
        f"{result['stream_items_per_run']} items, {result['overhead_per_stream_item_ms']:.2f} ms/item"
    )


def postgres_database() -> tuple[str, Any]:
    name = f"bench_streams_{uuid.uuid4().hex[:8]}"

    def drop() -> None:
        engine = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    return f"{POSTGRES_SERVER_URL}/{name}", drop


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke check")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    repeats, warmup = (5, 1) if args.quick else (30, 3)
    results: dict[str, Any] = {
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "dbos": version("dbos"),
            "pydantic_ai_slim": version("pydantic-ai-slim"),
        },
        "workload": {
            "model_requests": 2,
            "text_chunks": CHUNKS,
            "paced_chunk_interval_ms": PACE_SECONDS * 1000,
            "repeats": repeats,
            "warmup": warmup,
        },
        "databases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_url = f"sqlite:///{tmp}/bench.sqlite"
        results["databases"]["sqlite_wal"] = await measure("sqlite (WAL)", sqlite_url, repeats, warmup)
    if not args.no_postgres:
        url, drop = postgres_database()
        try:
            results["databases"]["postgresql"] = await measure("postgresql", url, repeats, warmup)
        finally:
            drop()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
