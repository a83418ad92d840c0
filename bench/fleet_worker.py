"""The processes of bench/fleet.py: a fleet worker, and a reader following runs' events from another process.

    python bench/fleet_worker.py worker --executor-id ID --database-url URL --port PORT --ready-file PATH
                                        [--concurrency C] [--poll S] [--dead-after S] [--heartbeat S]
    python bench/fleet_worker.py reader --database-url URL [--listen-notify] [--polling-interval S]

**worker** defines the agent `bench_fleet` (an `OpenAIChatModel` on the bench's scripted server, one plain tool
`lookup`) and the hand-written recipe of docs/configuration.md, the user workflow `answer` that awaits
`durable.run(prompt)` (two workflows per run). It takes its executor id with `FleetMember.claim()`, launches DBOS,
registers two queues with the same settings, `fleet_ours` (the agent's own `bench_fleet.run`, enqueued with
`start_run`) and `fleet_recipe` (`answer`), starts heartbeating, writes the ready file and serves until killed.

**reader** is the web app of issue 12: for each workflow id read from stdin it follows the run's events with
`read_events()` (a `DBOSClient` it opens per run, as `RunHandle.events()` does; with `--listen-notify`, one shared
client with PostgreSQL's LISTEN/NOTIFY) and prints one JSON line: when it received each text delta, by its clock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

AGENT_NAME = "bench_fleet"
APP_NAME = "bench_fleet"
APP_VERSION = "bench-fleet-1"
QUEUE_OURS = "fleet_ours"
QUEUE_RECIPE = "fleet_recipe"
RECIPE_WORKFLOW = "answer"


# --- The worker ----------------------------------------------------------------------------------


def lookup(n: int) -> str:
    """A plain tool: what a tool does is not what we measure."""
    return f"value-{n}"


_CHUNK = re.compile(rb'"content": "(\d{3}) "')


class _ChunkTimes:
    """An httpx transport that notes when this process received each numbered chunk of a streamed answer.

    Lines `<prompt> <seq> <time.time()>` go to `path`: with the server's write times and the reader's receive times
    they split the live output delay into the hop from the model to the worker and the rest.
    """

    def __init__(self, path: Path) -> None:
        import httpx2 as httpx

        self._inner = httpx.AsyncHTTPTransport()
        self._path = path

    async def handle_async_request(self, request: Any) -> Any:
        response = await self._inner.handle_async_request(request)
        body = json.loads(request.content or b"{}")
        prompt = next((str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "user"), "")
        if body.get("stream") and prompt.startswith("stream-"):
            response.stream = _timed_stream(response.stream, prompt, self._path)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _timed_stream(inner: Any, prompt: str, path: Path) -> Any:
    """A response body (an httpx `AsyncByteStream`) that notes the arrival of each numbered chunk."""
    import httpx2

    class TimedStream(httpx2.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            with open(path, "a", buffering=1) as log:
                async for raw in inner:
                    now = time.time()
                    for seq in _CHUNK.findall(raw):
                        log.write(f"{prompt} {int(seq)} {now}\n")
                    yield raw

        async def aclose(self) -> None:
            await inner.aclose()

    return TimedStream()


def serve(args: argparse.Namespace) -> None:
    """Launch DBOS as a fleet member listening to both queues, then serve until killed."""
    import httpx2 as httpx
    from dbos import DBOS
    from openai import AsyncOpenAI
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    from dbos_pydantic_ai import DBOSAgent, dbos_config
    from dbos_pydantic_ai.fleet import FleetMember

    client = AsyncOpenAI(
        base_url=f"http://127.0.0.1:{args.port}/v1",
        api_key="bench",
        default_headers={"x-executor": args.executor_id},
        max_retries=0,
        http_client=httpx.AsyncClient(transport=_ChunkTimes(args.chunk_log)) if args.chunk_log else None,
    )
    agent: Agent[None, str] = Agent(
        OpenAIChatModel("gpt-bench", provider=OpenAIProvider(openai_client=client)), name=AGENT_NAME, tools=[lookup]
    )
    durable = DBOSAgent(agent, name=AGENT_NAME)

    @DBOS.workflow(name=RECIPE_WORKFLOW)
    async def answer(prompt: str) -> str:
        """The recipe of docs/configuration.md: the agent run becomes a child workflow `bench_fleet.run`."""
        return (await durable.run(prompt)).output

    member = FleetMember(
        args.database_url,
        executor_id=args.executor_id,
        app_version=APP_VERSION,
        dead_after=args.dead_after,
        heartbeat_interval=args.heartbeat,
        queues=[QUEUE_OURS, QUEUE_RECIPE],
    )
    DBOS(
        config=dbos_config(
            APP_NAME, database_url=args.database_url, executor_id=args.executor_id, application_version=APP_VERSION
        )
    )
    member.claim()
    DBOS.launch()
    for queue in (QUEUE_OURS, QUEUE_RECIPE):
        DBOS.register_queue(
            queue, worker_concurrency=args.concurrency, polling_interval_sec=args.poll, on_conflict="always_update"
        )
    member.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    args.ready_file.write_text(f"{time.time()}\n")
    print(f"{args.executor_id} serving {QUEUE_OURS} and {QUEUE_RECIPE}", flush=True)
    threading.Event().wait()


# --- The reader ----------------------------------------------------------------------------------


def _text_of(event: Any) -> str | None:
    """The text a streamed event carries (a text part's start or delta), else None."""
    from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta

    if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
        return event.part.content
    if isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
        return event.delta.content_delta
    return None


async def follow(args: argparse.Namespace) -> None:
    """Follow each run named on stdin to its end; one JSON line per run on stdout."""
    from dbos import DBOSClient

    from dbos_pydantic_ai import read_events

    shared = DBOSClient(system_database_url=args.database_url, use_listen_notify=True) if args.listen_notify else None
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            workflow_id = line.strip()
            first_event_at: float | None = None
            received: list[tuple[float, str]] = []
            if shared is not None:
                events = read_events(workflow_id, client=shared, polling_interval_sec=args.polling_interval)
            else:
                events = read_events(
                    workflow_id, database_url=args.database_url, polling_interval_sec=args.polling_interval
                )
            async for _, event in events:
                now = time.time()
                if first_event_at is None:
                    first_event_at = now
                text = _text_of(event)
                if text:
                    received.append((now, text))
            result = {"workflow_id": workflow_id, "first_event_at": first_event_at, "received": received}
            print(json.dumps(result), flush=True)
    finally:
        if shared is not None:
            shared.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    roles = parser.add_subparsers(dest="role", required=True)
    worker = roles.add_parser("worker")
    worker.add_argument("--executor-id", required=True)
    worker.add_argument("--database-url", required=True)
    worker.add_argument("--port", type=int, required=True)
    worker.add_argument("--ready-file", type=Path, required=True)
    worker.add_argument("--concurrency", type=int, default=8)
    worker.add_argument("--poll", type=float, default=0.2, help="the queues' polling_interval_sec")
    worker.add_argument("--dead-after", type=float, default=10.0)
    worker.add_argument("--heartbeat", type=float, default=None, help="default: dead_after / 5 (FleetMember's)")
    worker.add_argument("--chunk-log", type=Path, default=None, help="note when streamed chunks arrive here")
    reader = roles.add_parser("reader")
    reader.add_argument("--database-url", required=True)
    reader.add_argument("--listen-notify", action="store_true", help="one DBOSClient(use_listen_notify=True)")
    reader.add_argument("--polling-interval", type=float, default=0.1, help="read_events(polling_interval_sec=)")
    args = parser.parse_args()
    if args.role == "worker":
        serve(args)
    else:
        asyncio.run(follow(args))


if __name__ == "__main__":
    main()
