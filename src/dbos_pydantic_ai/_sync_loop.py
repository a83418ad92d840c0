"""The event loop that every `run_sync` of this process runs on.

pydantic-ai's own `run_sync` gives each thread an event loop of its own, while a provider's HTTP client is
shared by the whole process: two runs at once on two threads then share a connection pool bound to one of the
loops, and one fails with "is bound to a different event loop". That happens whenever DBOS runs several sync
workflows at once: recovering them after a crash, or dequeuing them with a concurrency above one. So durable
`run_sync` runs go to one loop, on a thread of its own, where they share the client as async runs do.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _shared_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="dbos-pydantic-ai run_sync", daemon=True).start()
            _loop = loop
        return _loop


def run_on_shared_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the shared loop and wait for it, in a copy of the caller's context (DBOS's workflow context).

    If the wait is interrupted (KeyboardInterrupt in the main thread), the run is cancelled, as pydantic-ai's
    `run_sync` does.
    """
    future = asyncio.run_coroutine_threadsafe(coro, _shared_loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise
