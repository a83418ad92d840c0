"""Promises of docs/streams.md#dbos-pydantic-ai-tail.

- `tail` prints a note when a model request is retried, giving the offset from which the printed text is void.
- Interrupted with Ctrl-C (SIGINT, in a real process), it prints the `--from-offset` to continue with; continuing
  from it prints the rest of the run's text, nothing lost and nothing twice.

SQLite and PostgreSQL each.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel
from typer.testing import CliRunner

from dbos_pydantic_ai import DBOSAgent, Superseded, read_events
from dbos_pydantic_ai.cli import app

WAIT = 60.0  # generous bound for anything that waits: never asserted as a timing
CHUNKS = ["Once upon a time, ", "a worker ", "was killed, ", "and the story ", "went on."]
STORY = "".join(CHUNKS)


@dataclass
class StoryModel:
    """Streams the story. `fail_first`: the first attempt streams two chunks, then fails (DBOS retries it).
    `gate`: hold after the first chunk until it is set."""

    fail_first: bool = False
    gate: threading.Event | None = None  # not an asyncio.Event: the request may be sent from another event loop
    attempts: list[int] = field(default_factory=list)

    async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        self.attempts.append(1)
        if self.fail_first and len(self.attempts) == 1:
            yield CHUNKS[0]
            yield CHUNKS[1]
            raise ConnectionResetError("connection reset mid-answer")
        for index, chunk in enumerate(CHUNKS):
            yield chunk
            if index == 0 and self.gate is not None:
                for _ in range(int(WAIT / 0.01)):
                    if self.gate.is_set():
                        break
                    await asyncio.sleep(0.01)


def story_agent(name: str, model: StoryModel) -> DBOSAgent[None, str]:
    retrying = {"retries_allowed": True, "max_attempts": 3, "interval_seconds": 0.05}
    return DBOSAgent(
        Agent(FunctionModel(stream_function=model), name=name), stream_events=True, model_step_config=retrying
    )


def test_tail_prints_a_note_with_the_void_offset_when_a_request_is_retried(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    model = StoryModel(fail_first=True)
    durable = story_agent(agent_name, model)
    launch_dbos()
    workflow_id = f"tail-retry-{uuid.uuid4().hex[:8]}"
    with SetWorkflowID(workflow_id):
        assert durable.run_sync("Tell me a story.").output == STORY
    assert len(model.attempts) == 2

    shown = CliRunner().invoke(app, ["tail", workflow_id, "--database-url", database_url])

    assert shown.exit_code == 0, shown.output
    pairs = asyncio.run(read_all(workflow_id, database_url))
    [marker] = [event for _, event in pairs if isinstance(event, Superseded)]
    note = f"[model request retried: the text from offset {marker.discard_from} on is void]"
    assert note in shown.output
    # The abandoned attempt's text, then the note, then the whole story from the retry.
    before, after = shown.output.split(note)
    assert before.strip() == (CHUNKS[0] + CHUNKS[1]).strip()
    assert after.strip() == STORY


async def read_all(workflow_id: str, database_url: str, from_offset: int = 0) -> list[tuple[int, object]]:
    return [pair async for pair in read_events(workflow_id, database_url=database_url, from_offset=from_offset)]


async def wait_for_workflow(workflow_id: str) -> None:
    for _ in range(int(WAIT / 0.02)):
        if await DBOS.get_workflow_status_async(workflow_id) is not None:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"workflow {workflow_id} never started")


async def test_tail_interrupted_with_ctrl_c_prints_the_offset_to_continue_from(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    gate = threading.Event()
    durable = story_agent(agent_name, StoryModel(gate=gate))
    launch_dbos()
    workflow_id = f"tail-sigint-{uuid.uuid4().hex[:8]}"

    async def run() -> str:
        with SetWorkflowID(workflow_id):
            return (await durable.run("Tell me a story.")).output

    task = asyncio.create_task(run())
    await wait_for_workflow(workflow_id)
    tail = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "dbos_pydantic_ai", "tail", workflow_id, "--database-url", database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert tail.stdout is not None and tail.stderr is not None
        printed = b""
        while CHUNKS[0].encode() not in printed:  # the run is held after its first chunk
            data = await asyncio.wait_for(tail.stdout.read(1024), WAIT)
            assert data, f"tail ended early: {printed!r} {await tail.stderr.read()!r}"
            printed += data
        tail.send_signal(signal.SIGINT)
        rest, stderr = await asyncio.wait_for(tail.communicate(), WAIT)
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
    printed += rest

    assert tail.returncode == 130, stderr.decode()
    match = re.search(r"continue with --from-offset (\d+)", stderr.decode())
    assert match is not None, stderr.decode()
    offset = int(match.group(1))
    assert offset > 0
    assert printed.decode().strip() == CHUNKS[0].strip()

    gate.set()
    assert await asyncio.wait_for(task, WAIT) == STORY
    continued = await asyncio.to_thread(
        CliRunner().invoke, app, ["tail", workflow_id, "--database-url", database_url, "--from-offset", str(offset)]
    )
    assert continued.exit_code == 0, continued.output
    assert printed.decode() + continued.output.rstrip("\n") == STORY  # nothing lost, nothing twice
