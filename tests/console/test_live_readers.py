"""The console's live tails share one database client, are bounded, and leak nothing; ids may hold `/`.

- 60 SSE connections opened and closed at seeded random moments (some before the response starts, some
  mid-stream) against a console process: afterwards it holds no more database connections than its two
  pools allow (PostgreSQL: `pg_stat_activity`; SQLite: its open handles on the database file).
- Beyond `max_live_readers` at once, a live tail is refused with 503 and a message; a slot comes back
  when a tail ends.
- A workflow id with `/` (and `%`) opens, streams and is acted on; a 422 does not echo a large body back.
SQLite and PostgreSQL each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx2
import pytest
import sqlalchemy as sa
from console_support import ConsoleServer
from dbos import DBOS, SetWorkflowID
from fastapi.testclient import TestClient
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, DeltaToolCalls, FunctionModel

from dbos_pydantic_ai import DBOSAgent
from dbos_pydantic_ai.console import create_app
from dbos_pydantic_ai.console.app import LIVE_READER_POOL_SIZE

WAIT = 60.0  # generous bound for anything that waits: never asserted as a timing
CONSOLE_SCRIPT = Path(sys.executable).parent / "dbos-pydantic-ai"
DATA_POOL_SIZE = 5  # DBOSClient's default pool: the console's API client
SAME_ORIGIN = {"Origin": "http://testserver"}


class Runs:
    """A finished streamed run and one that streams until `release()`; DBOS launched in this process."""

    def __init__(self, agent_name: str, launch: Callable[[], None]) -> None:
        self.gate = threading.Event()  # the run body may run on another event loop

        async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
            yield "hello "
            if "live" in str(messages[0].parts[0].content):  # type: ignore[union-attr]
                await asyncio.to_thread(self.gate.wait, WAIT * 5)
            yield "world"

        self.durable = DBOSAgent(Agent(FunctionModel(stream_function=stream), name=agent_name), stream_events=True)
        launch()
        self.finished = f"team/a/run 1%41-{uuid.uuid4().hex[:6]}"  # a `/`, a space and a `%` in the id
        with SetWorkflowID(self.finished):
            self.durable.run_sync("finished")
        self.live = f"live-{uuid.uuid4().hex[:8]}"
        self._thread = threading.Thread(target=self._run_live, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + WAIT
        while DBOS.get_workflow_status(self.live) is None:
            assert time.monotonic() < deadline, "the live run never started"
            time.sleep(0.02)

    def _run_live(self) -> None:
        with SetWorkflowID(self.live):
            self.durable.run_sync("live")

    def release(self) -> None:
        self.gate.set()
        self._thread.join(WAIT)


@pytest.fixture
def runs(agent_name: str, launch_dbos: Callable[[], None]) -> Iterator[Runs]:
    made = Runs(agent_name, launch_dbos)
    try:
        yield made
    finally:
        made.release()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def connections_held(database_url: str, pid: int) -> int:
    """The database connections process `pid` holds: DBOS clients in pg_stat_activity, or handles on the file."""
    if database_url.startswith("sqlite"):
        path = os.path.realpath(database_url.split("///", 1)[1])
        count = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                count += os.readlink(f"/proc/{pid}/fd/{fd}") == path
            except OSError:
                continue
        return count
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            query = sa.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = :db AND application_name = 'dbos_transact_client'"
            )
            return int(connection.execute(query, {"db": sa.make_url(database_url).database}).scalar_one())
    finally:
        engine.dispose()


def open_and_drop(port: int, path: str, rng: random.Random) -> None:
    """One browser tab that goes away: before the answer, or after reading a little of the stream."""
    if rng.random() < 0.5:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            raw.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
            time.sleep(rng.uniform(0, 0.03))
        return
    with httpx2.stream("GET", f"http://127.0.0.1:{port}{path}", timeout=WAIT) as response:
        assert response.status_code == 200, response.read()
        wanted = rng.randint(0, 3)
        for index, _ in enumerate(response.iter_text()):
            if index >= wanted:
                break


def test_sse_connections_opened_and_closed_leave_no_database_connection(runs: Runs, database_url: str) -> None:
    port = free_port()
    env = {**os.environ, "DBOS_SYSTEM_DATABASE_URL": database_url, "NO_COLOR": "1"}
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "console", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                assert httpx2.get(f"http://127.0.0.1:{port}/api/agents", timeout=5).status_code == 200
                break
            except httpx2.TransportError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the console never answered"
                time.sleep(0.2)
        rng = random.Random(20240610)
        for _ in range(60):
            open_and_drop(port, f"/api/runs/{runs.live}/events", rng)
        bound = DATA_POOL_SIZE + LIVE_READER_POOL_SIZE
        deadline = time.monotonic() + WAIT
        held = connections_held(database_url, process.pid)
        while held > bound and time.monotonic() < deadline:
            time.sleep(0.2)
            held = connections_held(database_url, process.pid)
        assert held <= bound, f"{held} database connections after 60 tabs came and went (bound {bound})"
        # And it still serves: the finished run's whole stream.
        body = httpx2.get(f"http://127.0.0.1:{port}/api/runs/{quote(runs.finished, safe='')}/events", timeout=WAIT)
        assert body.status_code == 200 and "event: end" in body.text and "world" in body.text
    finally:
        process.terminate()
        process.communicate(timeout=WAIT)


def test_live_tails_beyond_the_limit_get_503_until_one_ends(runs: Runs, database_url: str) -> None:
    with ConsoleServer(database_url, max_live_readers=2) as server:
        url = f"{server.url}/api/runs/{runs.live}/events"
        with contextlib.ExitStack() as first_stack, contextlib.ExitStack() as second_stack:
            first = first_stack.enter_context(httpx2.stream("GET", url, timeout=WAIT))
            second = second_stack.enter_context(httpx2.stream("GET", url, timeout=WAIT))
            assert (first.status_code, second.status_code) == (200, 200)
            refused = httpx2.get(url, timeout=WAIT)
            assert refused.status_code == 503
            assert "2 live streams" in refused.json()["detail"] and "--max-live-readers" in refused.json()["detail"]
            assert refused.headers["retry-after"] == "5"
            first_stack.close()
            deadline = time.monotonic() + WAIT
            while True:  # the server frees the slot once it sees the disconnect
                with httpx2.stream("GET", url, timeout=WAIT) as again:
                    if again.status_code == 200:
                        break
                assert time.monotonic() < deadline, "the slot of a closed tail never came back"
                time.sleep(0.1)
            assert second.status_code == 200
        # Tails that end by themselves give their slot back too.
        finished = f"{server.url}/api/runs/{quote(runs.finished, safe='')}/events"
        for _ in range(5):
            response = httpx2.get(finished, timeout=WAIT)
            assert response.status_code == 200 and "event: end" in response.text


def test_workflow_ids_with_slashes_open_and_stream(runs: Runs, database_url: str) -> None:
    encoded = quote(runs.finished, safe="")
    with TestClient(create_app(database_url)) as client:
        run = client.get(f"/api/runs/{encoded}")
        assert run.status_code == 200, run.text
        assert run.json()["workflow_id"] == runs.finished
        events = client.get(f"/api/runs/{encoded}/events")
        assert events.status_code == 200 and "hello world" in "".join(
            line.split('"text": "', 1)[1].split('"', 1)[0] for line in events.text.splitlines() if '"text": "' in line
        )
        cancel = client.post(f"/api/runs/{encoded}/cancel", headers=SAME_ORIGIN)
        assert cancel.status_code == 409 and runs.finished in cancel.json()["detail"]
        # The id's own `%41` stays literal, and a `/` sent unencoded is not that run.
        assert client.get(f"/api/runs/{quote(runs.finished.replace('%41', 'A'), safe='')}").status_code == 404
        assert client.get(f"/api/runs/{runs.finished}").status_code == 404


def test_a_422_does_not_echo_a_large_body(runs: Runs, database_url: str) -> None:
    with TestClient(create_app(database_url)) as client:
        path = f"/api/runs/{runs.live}/fork"
        big = client.post(path, json={"start_step": "x" * 5_000_000}, headers=SAME_ORIGIN)
        assert big.status_code == 413 and len(big.content) < 1000
        under = client.post(path, json={"start_step": "y" * 60_000}, headers=SAME_ORIGIN)
        assert under.status_code == 422 and len(under.content) < 2000, len(under.content)
        assert "yyyy" in under.text and "60000 characters" in under.text
        nested = client.post(path, content='{"start_step": 1, "extra": [' + "1," * 20_000 + "1]}", headers=SAME_ORIGIN)
        assert nested.status_code == 422 and len(nested.content) < 2000, len(nested.content)
