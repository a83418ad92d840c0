"""The durable loop's pool for blocking calls (`_durable_loop.py`): calls stuck in it do not stall the others.

DBOS's blocking database calls of runs on the durable loop can land in that pool. Seen in the suite: four calls of
runs whose database had been dropped retried forever, the pool had four threads, and every later run in the process
hung. No database is needed to show it: blocked calls stand in for the stuck ones.
"""

from __future__ import annotations

import asyncio
import threading

from dbos_pydantic_ai._durable_loop import on_durable_loop

STUCK_CALLS = 8  # more than the four threads the pool used to have


async def test_blocked_calls_do_not_stall_other_calls_on_the_durable_loop() -> None:
    release = threading.Event()

    async def stuck() -> None:
        await asyncio.to_thread(release.wait, 60)

    async def quick() -> str:
        return await asyncio.to_thread(lambda: "answered")

    stuck_calls = [asyncio.create_task(on_durable_loop(stuck())) for _ in range(STUCK_CALLS)]
    try:
        await asyncio.sleep(0.2)  # every stuck call holds a thread of the pool by now
        assert await asyncio.wait_for(on_durable_loop(quick()), timeout=30) == "answered"
    finally:
        release.set()
        await asyncio.gather(*stuck_calls)
