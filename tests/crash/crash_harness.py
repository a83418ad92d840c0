"""Harness for the crash suite: worker processes to SIGKILL, and what they left behind.

A `CrashRun` ties one test's scripted OpenAI server, database and work folder to the workers it
launches. Workers run in their own process group, so a kill also takes the stdio MCP server a worker
started, like a machine going down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOSClient
from openai_server import ScriptedOpenAIServer

from dbos_pydantic_ai.serializer import JSONSerializer

WORKER_SCRIPT = Path(__file__).with_name("worker.py")
WAIT_SECONDS = 90.0  # generous: a shared 2-core machine can be slow to start Python and DBOS


class WorkerProcess:
    """One worker process, started in a new session (its own process group)."""

    def __init__(self, args: list[str], log_path: Path, cwd: Path, script: Path = WORKER_SCRIPT) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(script), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> bool:
        return self.process.poll() is not None

    def kill(self) -> None:
        """SIGKILL the worker and everything in its process group, and reap it.

        Only while the worker is unreaped: its pid (the group id) cannot have been reused by then.
        """
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class CrashRun:
    """One crash test: the server, the workers, and the files and database they write."""

    scenario: str
    mode: str
    database_url: str
    workdir: Path
    server: ScriptedOpenAIServer
    workflow_id: str = field(default_factory=lambda: f"crash-{uuid.uuid4().hex[:12]}")
    workers: list[WorkerProcess] = field(default_factory=list)
    _client: DBOSClient | None = None

    def launch(self, phase: str) -> WorkerProcess:
        """Start a worker: `start` starts the workflow, `recover` lets DBOS recovery resume it."""
        args = [
            *("--scenario", self.scenario, "--mode", self.mode, "--phase", phase),
            *("--database-url", self.database_url, "--port", str(self.server.port)),
            *("--workdir", str(self.workdir), "--workflow-id", self.workflow_id),
        ]
        worker = WorkerProcess(args, self.workdir / f"worker-{len(self.workers) + 1}-{phase}.log", self.workdir)
        self.workers.append(worker)
        return worker

    def launch_script(self, script: Path, phase: str, *args: str) -> WorkerProcess:
        """Start `script --phase PHASE --database-url URL --port PORT --workdir DIR ARGS...` (a worker of its own)."""
        worker = WorkerProcess(
            [
                *("--phase", phase, "--database-url", self.database_url),
                *("--port", str(self.server.port), "--workdir", str(self.workdir), *args),
            ],
            self.workdir / f"worker-{phase}.log",
            self.workdir,
            script=script,
        )
        self.workers.append(worker)
        return worker

    def wait_until(self, condition: Callable[[], bool], what: str, *workers: WorkerProcess) -> None:
        """Poll `condition` until true; fail early, with the worker's log, if one of `workers` exits first."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not condition():
            for worker in workers:
                # Looked at again once the worker is gone: it may have made `condition` true just before exiting.
                if worker.exited() and not condition():
                    pytest.fail(f"worker exited ({worker.process.returncode}) before {what}:\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                logs = "\n".join(f"{worker.log_path.name}:\n{worker.log_tail()}" for worker in workers)
                pytest.fail(f"timed out after {WAIT_SECONDS:.0f}s waiting for {what}:\n{logs}")
            time.sleep(0.05)

    def wait_for_output(self, worker: WorkerProcess) -> Any:
        """Wait for the worker to finish the run, and return the output it wrote."""
        output_file = self.workdir / "output.json"
        self.wait_until(output_file.exists, "the run's output", worker)
        try:
            code = worker.process.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker did not exit after writing its output:\n{worker.log_tail()}")
        assert code == 0, worker.log_tail()
        return json.loads(output_file.read_text())["output"]

    def lines(self, name: str) -> list[str]:
        """The lines of a record file in the work folder ([] when it does not exist yet)."""
        path = self.workdir / name
        return path.read_text().splitlines() if path.exists() else []

    @property
    def client(self) -> DBOSClient:
        """A DBOS client on the test's database (create it only once a worker has launched DBOS)."""
        if self._client is None:
            self._client = DBOSClient(system_database_url=self.database_url, serializer=JSONSerializer())
        return self._client

    def status(self, workflow_id: str | None = None) -> Any:
        return self.client.retrieve_workflow(workflow_id or self.workflow_id).get_status()

    def step_names(self, workflow_id: str | None = None) -> list[str]:
        steps = self.client.list_workflow_steps(workflow_id or self.workflow_id, load_output=False)
        return [step["function_name"] for step in steps]

    def child_workflows(self, name: str) -> list[str]:
        """The ids of the child workflows named `name` that the test's workflow started, in order."""
        steps = self.client.list_workflow_steps(self.workflow_id, load_output=False)
        return [step["child_workflow_id"] for step in steps if step["function_name"] == name]

    def close(self) -> None:
        try:
            for worker in self.workers:
                worker.kill()
        finally:
            self.server.close()
            if self._client is not None:
                self._client.destroy()
