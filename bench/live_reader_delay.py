"""How soon a live reader in another process sees a stream value: the safe reader (`read_events`, `tail`, the console).

A worker process writes timestamped values to a workflow's stream from workflow code, one every 30 ms; a reader
process follows them with the safe reader (`_safe_read.safe_read_stream`, which decodes rows itself and never
unpickles) through a `DBOSClient`, and records, for each value, the time from its write to its arrival. Three readers:

- push: the client runs DBOS's notification listener (`use_listen_notify=True`, what `read_events(database_url=)`,
  `tail` and the console open on PostgreSQL): woken by LISTEN/NOTIFY;
- poll: the same reader without the listener, waking every `polling_interval_sec` (0.1 s, `read_events`' default):
  what the first JSON-checkpoint version of the safe reader did;
- dbos: DBOS's own `DBOSClient.read_stream_async` with the listener (unpickles `py_pickle` rows): the reference.

    python bench/live_reader_delay.py           # PostgreSQL, then SQLite (WAL; no push there)
    python bench/live_reader_delay.py --quick

Writes bench/results/live_reader_delay.json. Timings only; the tests assert no timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

RESULTS = Path(__file__).parent / "results" / "live_reader_delay.json"
POSTGRES_SERVER_URL = os.environ.get("DBOS_PAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
KEY = "bench"
INTERVAL_SECONDS = 0.03
READER_POLL = [0.1]  # the readers' polling_interval_sec (read_events' default); --reader-poll changes it


def writer(url: str, workflow_id: str, count: int) -> None:
    """Launch DBOS and run one workflow that writes `count` timestamps to its stream, then ends."""
    from dbos import DBOS, SetWorkflowID

    from dbos_pydantic_ai import dbos_config

    DBOS(config=dbos_config("bench_delay", database_url=url, application_version="bench", executor_id="writer"))

    @DBOS.workflow(name="bench_delay.write")
    async def write(n: int) -> None:
        await asyncio.sleep(1.0)  # the reader, which waits for the workflow to exist, is following it by then
        for _ in range(n):
            await DBOS.write_stream_async(KEY, time.time())
            await asyncio.sleep(INTERVAL_SECONDS)

    DBOS.launch()

    async def run() -> None:
        with SetWorkflowID(workflow_id):
            handle = await DBOS.start_workflow_async(write, count)
        await handle.get_result()

    asyncio.run(run())
    DBOS.destroy()


async def read(url: str, workflow_id: str, mode: str) -> list[float]:
    from dbos import DBOSClient

    from dbos_pydantic_ai._safe_read import safe_read_stream
    from dbos_pydantic_ai._serialization import serializer_for
    from dbos_pydantic_ai.streams import pushes_notifications

    listen = mode != "poll" and pushes_notifications(url)
    client: DBOSClient | None = None
    deadline = time.monotonic() + 120
    while True:  # the writer creates the database and the workflow: wait for both
        try:
            if client is None:
                client = DBOSClient(system_database_url=url, serializer=serializer_for(), use_listen_notify=listen)
            if client.list_workflows(workflow_ids=[workflow_id], load_input=False, load_output=False):
                break
        except Exception:
            if time.monotonic() > deadline:
                raise
            if client is not None:
                client.destroy()
                client = None
        await asyncio.sleep(0.02)
    delays: list[float] = []
    try:
        if mode == "dbos":
            source = client.read_stream_async(workflow_id, KEY, polling_interval_sec=READER_POLL[0])
        else:
            source = safe_read_stream(client, workflow_id, KEY, polling_interval_sec=READER_POLL[0])
        async for value in source:
            delays.append(time.time() - value)
    finally:
        client.destroy()
    return delays


def reader(url: str, workflow_id: str, mode: str, poll: float, out: Any) -> None:
    READER_POLL[0] = poll
    out.put(asyncio.run(read(url, workflow_id, mode)))


def measure(url: str, mode: str, count: int) -> dict[str, float]:
    workflow_id = f"delay-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    read_process = context.Process(target=reader, args=(url, workflow_id, mode, READER_POLL[0], out))
    write_process = context.Process(target=writer, args=(url, workflow_id, count))
    write_process.start()
    read_process.start()
    delays = out.get(timeout=300)
    read_process.join(60)
    write_process.join(60)
    ms = sorted(d * 1000 for d in delays)
    return {
        "values": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
        "max_ms": round(ms[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--reader-poll", type=float, default=0.1, help="the readers' polling interval (s)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    READER_POLL[0] = args.reader_poll
    count = 60 if args.quick else 300
    results: dict[str, Any] = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "values_per_measure": count,
        "write_interval_ms": INTERVAL_SECONDS * 1000,
        "reader_polling_interval_ms": args.reader_poll * 1000,
        "load_average_1min_at_start": round(os.getloadavg()[0], 1),
    }
    if not args.no_postgres:
        name = f"bench_delay_{uuid.uuid4().hex[:8]}"
        url = f"{POSTGRES_SERVER_URL}/{name}"
        try:
            results["postgresql"] = {mode: measure(url, mode, count) for mode in ("push", "poll", "dbos")}
        finally:
            engine = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
            with engine.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            engine.dispose()
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/delay.sqlite"
        results["sqlite_wal"] = {mode: measure(url, mode, count) for mode in ("push", "dbos")}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
