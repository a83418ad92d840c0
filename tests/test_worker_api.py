"""`run_worker()` called from Python (docs/worker.md, "From Python"), on both databases: it serves a queue, runs a run
started by `start_run` from a caller that does not define the agent, answers on /healthz and /metrics, and returns
when told to stop."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from dbos import DBOS

from dbos_pydantic_ai import start_run
from dbos_pydantic_ai.fleet import current_member
from dbos_pydantic_ai.worker import WorkerResult, WorkerSettings, parse_queue_spec, run_worker

AGENTS_MODULE = """
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from dbos_pydantic_ai import DBOSAgent

durable = DBOSAgent(Agent(TestModel(custom_output_text="served"), name="{agent}"))
"""


def test_run_worker_serves_and_stops(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    DBOS.destroy()
    agent = f"py_worker_{uuid.uuid4().hex[:8]}"
    module = f"agents_{agent}"
    (tmp_path / f"{module}.py").write_text(AGENTS_MODULE.format(agent=agent))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # run_worker puts the working directory first

    with socket.socket() as probe:  # a free port for the health endpoint
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop = threading.Event()
    outcome: dict[str, WorkerResult | BaseException] = {}

    def serve() -> None:
        settings = WorkerSettings(
            modules=[module],
            database_url=database_url,
            executor_id="py-worker-1",
            app_version="test",
            queues=[parse_queue_spec("runs:2,poll=0.1")],
            dead_after=10,
            health_port=port,
            health_host="127.0.0.1",
            metrics=True,
        )
        try:
            outcome["result"] = run_worker(settings, stop=stop)
        except BaseException as error:  # reported by the assertion below
            outcome["result"] = error

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while (member := current_member()) is None or not member.healthy():
            assert "result" not in outcome, outcome
            assert time.monotonic() < deadline, "the worker did not start serving within 60 s"
            time.sleep(0.05)
        handle = start_run(agent, "hello", database_url=database_url, queue="runs")
        assert handle.result_sync().output == "served"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as health:
            assert (health.status, json.loads(health.read())["state"]) == (200, "serving")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            metrics = response.read().decode()
        assert f'dbos_pai_runs{{agent="{agent}",status="SUCCESS"}} 1.0' in metrics
    finally:
        stop.set()
        thread.join(timeout=60)
    result = outcome["result"]
    assert isinstance(result, WorkerResult), result
    assert result.handed_off == []
    DBOS.destroy()
