"""What the durable loop costs: a model request sent from another event loop against one awaited where it is.

Every durable model and MCP request is sent from the process's durable loop (src/dbos_pydantic_ai/_durable_loop.py),
so an async run's request crosses threads twice. This measures that crossing alone, on an empty coroutine, and
(for scale) a streamed relay of 100 events. A `run_sync` run is on the durable loop already and does not cross.

    python bench/durable_loop_hop.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from dbos_pydantic_ai._durable_loop import on_durable_loop, relay_from_durable_loop
from run import machine

RESULTS = Path(__file__).parent / "results" / "durable_loop_hop.json"
CALLS = 2000
ROUNDS = 7
EVENTS = 100


async def empty() -> int:
    return 1


async def produce(emit: Callable[[int], Awaitable[None]]) -> int:
    for index in range(EVENTS):
        await emit(index)
    return EVENTS


async def consume(events: AsyncIterator[int]) -> None:
    async for _ in events:
        pass


async def local_stream() -> int:
    async def events() -> AsyncIterator[int]:
        for index in range(EVENTS):
            yield index

    await consume(events())
    return EVENTS


async def per_call_us(call: Callable[[], Awaitable[object]], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - start) / calls * 1e6


async def main() -> None:
    await per_call_us(lambda: on_durable_loop(empty()), 200)  # start the loop, warm up
    hop, stream = [], []
    for _ in range(ROUNDS):
        hop.append(await per_call_us(lambda: on_durable_loop(empty()), CALLS) - await per_call_us(empty, CALLS))
        relayed = await per_call_us(lambda: relay_from_durable_loop(produce, consume), CALLS // 20)
        stream.append(relayed - await per_call_us(local_stream, CALLS // 20))
    report = {
        "machine": machine(),
        "request_hop_us": {"median": round(statistics.median(hop), 1), "min": round(min(hop), 1)},
        f"stream_relay_{EVENTS}_events_us": {
            "median": round(statistics.median(stream), 1),
            "min": round(min(stream), 1),
        },
    }
    print(f"one request through the durable loop: +{report['request_hop_us']['median']} us (median of {ROUNDS})")
    print(f"a streamed response of {EVENTS} events relayed: +{report[f'stream_relay_{EVENTS}_events_us']['median']} us")
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
