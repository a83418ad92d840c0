"""A run that waits inside itself for approvals survives SIGKILL: relaunched, it is still waiting.

`approval_wait_worker.py` runs a `DBOSAgent(..., approvals="wait")` against the scripted OpenAI server.
The model asks for two refunds that need approval; the run publishes them and waits. The test kills
the worker's process group with SIGKILL, relaunches it with the same executor id, and decides from a
separate process (the `dbos-pydantic-ai approvals` CLI, which has only the database URL): approve the
first refund and deny the second, while the worker is down or once the relaunched run waits again.
The run completes; the approved refund ran once, the denied one never, the model saw the denial, and
the model request made before the wait was not sent again. SQLite and PostgreSQL, `run_sync` and `run`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from crash_harness import CrashRun, WorkerProcess
from pydantic_ai.exceptions import UserError

from dbos_pydantic_ai import PendingApproval, list_pending_approvals

pytestmark = [pytest.mark.crash, pytest.mark.timeout(300)]

AGENT = "crash_approvals"  # approval_wait_worker.AGENT_NAME
APPROVAL_WORKER = Path(__file__).with_name("approval_wait_worker.py")
SCRIPT = [
    {"tool_calls": [{"name": "refund", "args": {"amount": 10}}, {"name": "refund", "args": {"amount": 20}}]},
    {"text": "Done: {tool_result}"},  # the server fills in the last tool result: the denied refund's
]
DENIAL = "Refunds over 15 need a manager."


def launch(run: CrashRun, phase: str) -> WorkerProcess:
    args = [
        *("--mode", run.mode, "--phase", phase, "--database-url", run.database_url),
        *("--port", str(run.server.port), "--workdir", str(run.workdir), "--workflow-id", run.workflow_id),
    ]
    log = run.workdir / f"worker-{len(run.workers) + 1}-{phase}.log"
    process = WorkerProcess(args, log, run.workdir, script=APPROVAL_WORKER)
    run.workers.append(process)  # killed at teardown
    return process


def pending_or_none(run: CrashRun) -> list[PendingApproval] | None:
    """The pending calls, or None while the worker has not created the database yet."""
    try:
        return list_pending_approvals(database_url=run.database_url)
    except UserError:
        return None


def decide(run: CrashRun, *args: str) -> None:
    """Decide with the CLI, in a separate process that knows only the database URL."""
    env = {**os.environ, "DBOS_SYSTEM_DATABASE_URL": run.database_url}
    done = subprocess.run(
        [sys.executable, "-m", "dbos_pydantic_ai", "approvals", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("decided", ["before_relaunch", "after_relaunch"])
def test_kill_while_waiting_inside_the_run(crash_run: Callable[..., CrashRun], mode: str, decided: str) -> None:
    run = crash_run("approval-wait", mode, SCRIPT)

    first = launch(run, "start")
    run.wait_until(lambda: len(pending_or_none(run) or ()) == 2, "the run to wait for 2 calls", first)
    first.kill()
    assert run.status().status == "PENDING"
    assert run.lines("tools.log") == []
    assert run.lines("waiting.log") == ["call_0_0 call_0_1"]
    # The pending calls are published in the database: listed while no worker runs.
    pending = list_pending_approvals(database_url=run.database_url)
    assert [(p.tool_call_id, p.args) for p in pending] == [("call_0_0", {"amount": 10}), ("call_0_1", {"amount": 20})]
    assert {p.workflow_id for p in pending} == {run.workflow_id}

    def approve_and_deny() -> None:
        decide(run, "approve", run.workflow_id, "call_0_0")
        decide(run, "deny", run.workflow_id, "call_0_1", "--reason", DENIAL)

    if decided == "before_relaunch":
        approve_and_deny()
        assert list_pending_approvals(database_url=run.database_url) == []  # decided, waiting to be read
    second = launch(run, "recover")
    if decided == "after_relaunch":
        # The recovered run replays up to its wait (the model response comes from the database) and waits again.
        run.wait_until(lambda: len(run.lines("waiting.log")) == 2, "the recovered run to wait again", second)
        approve_and_deny()
    output = run.wait_for_output(second)

    assert output == f"Done: {DENIAL}"  # the model saw the denial
    assert run.lines("tools.log") == ["refund 10"]  # the approved refund ran once; the denied one never
    assert len(run.lines("waiting.log")) == 2  # the run's code did re-run after the kill ...
    stats = run.server.stats()
    assert (stats[0].received, stats[0].completed) == (1, 1)  # ... but the request before the wait was not re-sent
    assert (stats[1].received, stats[1].completed) == (1, 1)
    steps = run.step_names()
    assert steps[:3] == [f"{AGENT}__model.request_stream", f"{AGENT}__approvals.wait", "DBOS.setEvent"]
    assert steps.count("DBOS.recv") == 2  # one decision received per call
    assert steps[-2:] == [f"{AGENT}__tool.refund", f"{AGENT}__model.request_stream"]
    status = run.status()
    assert (status.status, status.executor_id) == ("SUCCESS", "worker-1")
    assert list_pending_approvals(database_url=run.database_url) == []
