"""The one event loop on which a process's durable runs talk to model providers and MCP servers.

A model's provider keeps one HTTP client, and an MCP toolset one session, for every run of the process, and their
connections belong to the event loop that opened them. Durable runs, though, run on many loops in one process: the
app's loop for `await run()`, the loop on which DBOS recovers async runs at launch or starts queued, resumed and forked
ones, and `run_sync()`. Two runs on two loops then share one connection pool, and a request fails with
`RuntimeError: <asyncio.locks.Event ...> is bound to a different event loop`: the run ends in `ERROR`, for good.

So every request that a durable step sends to a model or an MCP server runs here, on one loop that lives on a thread of
its own for the life of the process (`on_durable_loop`, and `relay_from_durable_loop` for a streamed response). Only
that request moves: the rest of the run, the user's tools and event handlers among it, stays on the loop it was
started on, with its own loop-bound objects. A durable `run_sync` runs its whole body here (`run_on_durable_loop`),
so its requests need no hop.

Plain runs (outside a workflow, or without a launched DBOS) are not moved: a model instance that durable runs use
should not also serve plain runs on another loop at the same time (see docs/limitations.md).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pydantic_ai.exceptions import UserError

T = TypeVar("T")
E = TypeVar("E")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
# The loop's own pool for blocking calls (DNS lookups, ...). DBOS points the default executor of every loop it works
# on at its own pool, which a `DBOS.destroy()` shuts down; the loop outlives DBOS, so each hop points it back here.
# DBOS's own blocking database calls of runs on this loop can land here too, so it is as unbounded as DBOS's pool:
# with a few threads, a few calls retrying through a database outage would stall every run of the process.
_executor = ThreadPoolExecutor(max_workers=sys.maxsize, thread_name_prefix="dbos-pydantic-ai durable loop")


def durable_loop() -> asyncio.AbstractEventLoop:
    """The process's durable loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="dbos-pydantic-ai durable loop", daemon=True).start()
            _loop = loop
        return _loop


async def _arrived(coro: Coroutine[Any, Any, T]) -> T:
    """`coro`, once on the durable loop: with a default executor that is sure to be running."""
    asyncio.get_running_loop().set_default_executor(_executor)
    return await coro


def _on_durable_loop_now() -> bool:
    try:
        return asyncio.get_running_loop() is durable_loop()
    except RuntimeError:
        return False


def run_on_durable_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the durable loop and block until it ends, in a copy of the caller's context (DBOS's workflow
    context travels with it).

    If the wait is interrupted (KeyboardInterrupt in the main thread), the run is cancelled, as pydantic-ai's
    `run_sync` does.
    """
    loop = durable_loop()
    if _on_durable_loop_now():
        coro.close()
        raise UserError(
            "A durable `run_sync()` was called from code running on the durable loop (an async tool or handler of "
            "another durable run_sync): it would wait for itself forever. Use `await agent.run(...)` there."
        )
    future = asyncio.run_coroutine_threadsafe(_arrived(coro), loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


async def on_durable_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro` on the durable loop, in a copy of the caller's context; cancelling the caller cancels it."""
    if _on_durable_loop_now():
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_arrived(coro), durable_loop()))


_END = object()


async def relay_from_durable_loop(
    produce: Callable[[Callable[[E], Awaitable[None]]], Coroutine[Any, Any, T]],
    consume: Callable[[AsyncIterator[E]], Awaitable[None]],
) -> T:
    """Run `produce(emit)` on the durable loop while `consume` reads, on the caller's loop, what it emits; return
    what `produce` returns.

    `consume` sees the items in order, live: `emit` returns once `consume` has taken the item before, so the producer
    is never more than one item ahead (as when the consumer pulls from the stream itself). If `produce` fails,
    `consume` gets its error where the items end. Items that `consume` leaves are read and dropped, so `produce` runs
    to its end. Cancelling the caller, or an error in `consume`, cancels `produce`.
    """
    here = asyncio.get_running_loop()
    there = durable_loop()
    same_loop = here is there
    items: asyncio.Queue[Any] = asyncio.Queue()
    credit: asyncio.Semaphore | None = None  # one item ahead at most; lives on the durable loop

    async def producer() -> T:
        nonlocal credit
        credit = asyncio.Semaphore(1)
        held = credit

        async def emit(item: E) -> None:
            await held.acquire()
            if same_loop:
                items.put_nowait(item)
            else:
                here.call_soon_threadsafe(items.put_nowait, item)

        return await produce(emit)

    if same_loop:
        produced: asyncio.Future[T] = asyncio.ensure_future(producer())
    else:
        # The result reaches this loop after every item emitted before it, so the end marker comes last.
        produced = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_arrived(producer()), there))
    produced.add_done_callback(lambda _: items.put_nowait(_END))

    ended = False

    async def received() -> AsyncIterator[E]:
        nonlocal ended
        while not ended and (item := await items.get()) is not _END:
            assert credit is not None  # the producer made it before emitting
            if same_loop:
                credit.release()
            else:
                there.call_soon_threadsafe(credit.release)
            yield item
        ended = True
        if not produced.cancelled() and (error := produced.exception()) is not None:
            raise error

    try:
        await consume(received())
        if not ended:
            async for _ in received():  # what `consume` left
                pass
    except BaseException:
        produced.cancel()
        raise
    return await produced
