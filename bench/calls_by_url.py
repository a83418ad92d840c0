"""What one call by `database_url` costs a web app: `start_run()`, `RunHandle(...).status()`, `approve()`.

A process that does not define the agents (the web app) makes each call in turn, after a DBOS process created the
database and registered the queue (nothing dequeues: only the calls are timed). Two ways:

- per call: a `DBOSClient` opened and destroyed around the call, what `start_run` and `RunHandle` did before
  session 7 (`streams.new_client`), and what `approve()` did before session 5;
- kept: the client (or approvals inbox) this library now keeps per database URL (`_kept.py`).

    python bench/calls_by_url.py           # PostgreSQL, then SQLite (WAL)
    python bench/calls_by_url.py --quick

Writes bench/results/calls_by_url.json. Timings only; the tests assert no timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

RESULTS = Path(__file__).parent / "results" / "calls_by_url.json"
POSTGRES_SERVER_URL = os.environ.get("DBOS_PAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
AGENT = "bench_calls"
QUEUE = "bench_calls_runs"


def prepare(url: str) -> None:
    """Create DBOS's tables and register the queue, as a worker would (in a child process: DBOS is a singleton)."""
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=_launch_once, args=(url,))
    child.start()
    child.join(120)
    assert child.exitcode == 0, f"preparing {url} failed"


def _launch_once(url: str) -> None:
    from dbos import DBOS
    from pydantic_ai import Agent
    from pydantic_ai.models.test import TestModel

    from dbos_pydantic_ai import DBOSAgent, dbos_config

    DBOSAgent(Agent(TestModel(), name=AGENT))
    DBOS(config=dbos_config("bench_calls", database_url=url, application_version="bench"))
    DBOS.launch()
    DBOS.register_queue(QUEUE, polling_interval_sec=3600.0)
    DBOS.destroy()


def timed(call: Callable[[], Any], count: int) -> dict[str, float]:
    call()  # warm-up: imports, the first connection
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
        "per_second": round(1000 / statistics.mean(times), 1),
    }


def measure(url: str, count: int) -> dict[str, dict[str, float]]:
    from dbos_pydantic_ai import RunHandle, start_run
    from dbos_pydantic_ai.runs import StartOptions, _client_inputs, _enqueue_with
    from dbos_pydantic_ai.streams import new_client

    def start_per_call() -> None:
        client = new_client(url)
        try:
            _enqueue_with(client, AGENT, "x", _client_inputs("x", {}, stream_events=False), StartOptions(QUEUE), None)
        finally:
            client.destroy()

    workflow_id = start_run(AGENT, "x", database_url=url, queue=QUEUE).workflow_id

    def status_per_call() -> None:
        client = new_client(url)
        try:
            client.list_workflows(workflow_ids=[workflow_id], load_input=False, load_output=False)
        finally:
            client.destroy()

    handle = RunHandle(workflow_id, database_url=url)
    return {
        "start_run, client per call": timed(start_per_call, count),
        "start_run, kept": timed(lambda: start_run(AGENT, "x", database_url=url, queue=QUEUE), count),
        "status, client per call": timed(status_per_call, count),
        "status, kept": timed(handle.status_sync, count),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke check, not a measurement")
    args = parser.parse_args()
    count = 20 if args.quick else 300

    results: dict[str, Any] = {"count": count, "python": sys.version.split()[0], "databases": {}}
    name = f"bench_calls_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    with tempfile.TemporaryDirectory() as folder:
        try:
            for label, url in (
                ("postgresql", f"{POSTGRES_SERVER_URL}/{name}"),
                ("sqlite", f"sqlite:///{Path(folder) / 'calls.sqlite'}"),
            ):
                prepare(url)
                results["databases"][label] = measure(url, count)
        finally:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    print(f"\nOne call from a process without the agents ({count} calls each, sequential):\n")
    print(f"| {'database':<10} | {'call':<28} | {'p50 ms':>7} | {'p99 ms':>7} | {'calls/s':>8} |")
    print(f"|{'-' * 12}|{'-' * 30}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
    for database, calls in results["databases"].items():
        for call, row in calls.items():
            print(f"| {database:<10} | {call:<28} | {row['p50_ms']:>7} | {row['p99_ms']:>7} | {row['per_second']:>8} |")
    if not args.quick:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
