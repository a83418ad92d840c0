"""A reader follows a streaming run whose worker is SIGKILLed mid-answer, then reconnects after the relaunch.

The worker (`worker.py --scenario stream`, `stream_events=True`) calls the plain tool `lookup`, then streams
its answer from the scripted server, which sends half of it and holds. A reader in this process (only the
database URL, through a `DBOSClient`) sees that half; the worker is killed and the reader disconnects.
The relaunched worker recovers the run: the answer request runs again. A new reader continues from the
last offset the first one saw. Together they must hold exactly the events of the completed run: the
abandoned half marked `Superseded`, no text twice once applied, and tool events once though `lookup` ran twice.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from crash_harness import WAIT_SECONDS, CrashRun
from pydantic_ai.messages import (
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelResponse,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ToolCallPart,
)

from dbos_pydantic_ai import EventLog, ModelRequestStarted, Superseded, read_events
from dbos_pydantic_ai.streams import DurableStreamEvent

pytestmark = [pytest.mark.crash, pytest.mark.timeout(300)]

ANSWER = {"text": "Done: {tool_result}. That is the value stored under alpha, looked up for you just now."}
FINAL = "Done: value-of-alpha. That is the value stored under alpha, looked up for you just now."


class BackgroundReader:
    """`read_events()` through a DBOSClient, on a thread of its own, until the run ends or `disconnect()`."""

    def __init__(self, workflow_id: str, database_url: str, from_offset: int = 0) -> None:
        self.pairs: list[tuple[int, DurableStreamEvent]] = []
        self.error: BaseException | None = None
        self.ended = threading.Event()  # the stream ended by itself (the run ended)
        self._args = (workflow_id, database_url, from_offset)
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._last_count, self._last_change = 0, time.monotonic()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._ready.wait(WAIT_SECONDS)

    def _main(self) -> None:
        async def read() -> None:
            workflow_id, database_url, from_offset = self._args
            async for pair in read_events(workflow_id, from_offset=from_offset, database_url=database_url):
                self.pairs.append(pair)
            self.ended.set()

        async def main() -> None:
            self._task = asyncio.current_task()  # type: ignore[assignment]
            self._ready.set()
            try:
                await read()
            except asyncio.CancelledError:
                pass
            except BaseException as error:
                self.error = error

        self._loop.run_until_complete(main())
        self._loop.close()

    def text(self) -> str:
        return text_of([event for _, event in self.pairs])

    def settled(self, at_least: int, quiet_seconds: float = 1.5) -> bool:
        """Whether it has at least `at_least` characters of text and has read nothing new for `quiet_seconds`."""
        count = len(self.pairs)
        if count != self._last_count:
            self._last_count, self._last_change = count, time.monotonic()
        return len(self.text()) >= at_least and time.monotonic() - self._last_change >= quiet_seconds

    def disconnect(self) -> int:
        """Stop reading (like a client going away); the last offset it saw."""
        assert self._task is not None
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(WAIT_SECONDS)
        assert not self._thread.is_alive()
        return self.pairs[-1][0]

    def join(self) -> None:
        self._thread.join(WAIT_SECONDS)
        assert not self._thread.is_alive(), "the reader did not end with the run"
        assert self.error is None, repr(self.error)


def text_of(events: list[Any]) -> str:
    text = ""
    for event in events:
        if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
            text += event.part.content
        elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
            text += event.delta.content_delta
    return text


def simple(parts: list[Any]) -> list[tuple[str, Any]]:
    return [
        ("text", part.content)
        if isinstance(part, TextPart)
        else ("tool-call", (part.tool_name, part.args_as_dict()))
        if isinstance(part, ToolCallPart)
        else (type(part).__name__, None)
        for part in parts
    ]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_reader_reconnects_after_worker_killed_mid_answer(crash_run: Callable[..., CrashRun], mode: str) -> None:
    script = [{"tool_calls": [{"name": "lookup", "args": {"key": "alpha"}}]}, ANSWER]
    run = crash_run("stream", mode, script, pause_mid_stream_turns={1})

    first = run.launch("start")
    run.wait_until(lambda: run.server.received(1) == 1, "the answer request to reach the server", first)
    reader = BackgroundReader(run.workflow_id, run.database_url)
    # The server holds the answer halfway: wait until the reader has all of that half (its text stops growing), so
    # the resumed reader's values are all written after the kill.
    run.wait_until(lambda: reader.settled(16), "the reader to see the first half of the answer live", first)
    first.kill()
    assert run.status().status == "PENDING"
    last_offset = reader.disconnect()
    seen_before_crash = reader.text()
    assert seen_before_crash and FINAL.startswith(seen_before_crash) and seen_before_crash != FINAL

    second = run.launch("recover")
    resumed = BackgroundReader(run.workflow_id, run.database_url, from_offset=last_offset)
    output = run.wait_for_output(second)
    resumed.join()
    assert output == FINAL
    assert resumed.ended.is_set()

    # Reconnecting lost nothing and repeated nothing: the two connections are the whole stream.
    combined = reader.pairs + resumed.pairs
    full = asyncio.run(_read_all(run.workflow_id, run.database_url))
    assert combined == full
    assert all(offset > last_offset for offset, _ in resumed.pairs)

    # The abandoned half of the answer is marked superseded, and the reader drops exactly it.
    superseded = [event for _, event in combined if isinstance(event, Superseded)]
    assert len(superseded) == 1
    answer_start = [offset for offset, event in reader.pairs if isinstance(event, ModelRequestStarted)][-1]
    assert superseded[0].discard_from == answer_start
    log = EventLog()
    for pair in combined:
        log.add(*pair)
    surviving = [event for _, event in log.events]
    assert text_of(surviving) == log.text() == output  # no text twice
    assert text_of([event for _, event in combined]) == seen_before_crash + output

    # Workflow-written events were not written again by the replay, though the plain tool ran twice.
    assert run.lines("tools.log") == ["lookup alpha", "lookup alpha"]
    assert [type(e) for e in surviving if isinstance(e, FunctionToolCallEvent | FunctionToolResultEvent)] == [
        FunctionToolCallEvent,
        FunctionToolResultEvent,
    ]
    result = run.client.retrieve_workflow(run.workflow_id).get_result()
    recorded = [simple(message.parts) for message in result.all_messages() if isinstance(message, ModelResponse)]
    assert [simple(parts) for parts in log.responses()] == recorded
    stats = run.server.stats()
    assert (stats[0].received, stats[1].received, stats[1].completed) == (1, 2, 1)


async def _read_all(workflow_id: str, database_url: str) -> list[tuple[int, DurableStreamEvent]]:
    return [pair async for pair in read_events(workflow_id, database_url=database_url)]
