"""A run that waits inside itself for approvals survives SIGKILL: relaunched, it is still waiting.

`approval_wait_worker.py` runs a `DBOSAgent(..., approvals="wait")` against the scripted OpenAI server.
The model asks for two refunds that need approval; the run publishes them and waits. The test kills
the worker's process group with SIGKILL, relaunches it with the same executor id, and decides from a
separate process (the `dbos-pydantic-ai approvals` CLI, which has only the database URL): approve the
first refund and deny the second, while the worker is down or once the relaunched run waits again.
The run completes; the approved refund ran once, the denied one never, the model saw the denial, and
the model request made before the wait was not sent again. SQLite and PostgreSQL, `run_sync` and `run`.

A run started with `start()` parks once it has waited `park_after` (it leaves the worker's memory, recording
nothing): killed while parked, relaunched, it replays to its wait, parks again, and a decision brings it back.

With `approval_timeout`, the deadline holds across a kill: once it passes while no worker runs, decisions
are refused (naming the deadline) and the call is no longer offered, and the relaunched run denies it by
timeout; a worker relaunched before the deadline times out at the original deadline, not a restarted one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from crash_harness import CrashRun, WorkerProcess
from pydantic_ai.exceptions import UserError

from dbos_pydantic_ai import ApprovalRejected, PendingApproval, approve, list_pending_approvals
from dbos_pydantic_ai.names import approvals_timeout_step
from test_approvals import decision_rows

pytestmark = [pytest.mark.crash, pytest.mark.timeout(300)]

AGENT = "crash_approvals"  # approval_wait_worker.AGENT_NAME
APPROVAL_WORKER = Path(__file__).with_name("approval_wait_worker.py")
SCRIPT = [
    {"tool_calls": [{"name": "refund", "args": {"amount": 10}}, {"name": "refund", "args": {"amount": 20}}]},
    {"text": "Done: {tool_result}"},  # the server fills in the last tool result: the denied refund's
]
DENIAL = "Refunds over 15 need a manager."


PARK_AFTER = "0.5"


def launch(run: CrashRun, phase: str, *extra: str) -> WorkerProcess:
    args = [
        *("--mode", run.mode, "--phase", phase, "--database-url", run.database_url),
        *("--port", str(run.server.port), "--workdir", str(run.workdir), "--workflow-id", run.workflow_id),
        *extra,
        *("--park-after", PARK_AFTER),
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


def approvals_cli(run: CrashRun, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the approvals CLI in a separate process that knows only the database URL."""
    env = {**os.environ, "DBOS_SYSTEM_DATABASE_URL": run.database_url, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "dbos_pydantic_ai", "approvals", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def decide(run: CrashRun, *args: str) -> None:
    """Decide with the CLI; it must be accepted."""
    done = approvals_cli(run, *args)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("mode", ["sync", "async", "started"])
@pytest.mark.parametrize("decided", ["before_relaunch", "after_relaunch"])
def test_kill_while_waiting_inside_the_run(crash_run: Callable[..., CrashRun], mode: str, decided: str) -> None:
    """Mode `started` (nobody awaits the run): it is killed while parked. In every mode the recovered run, which
    nobody awaits either, parks once relaunched if no decision is there yet; a decision brings it back."""
    run = crash_run("approval-wait", mode, SCRIPT)
    parks = mode == "started"

    first = launch(run, "start")
    run.wait_until(lambda: len(pending_or_none(run) or ()) == 2, "the run to wait for 2 calls", first)
    if parks:
        run.wait_until(lambda: run.lines("parked.log") == ["parked"], "the run to park", first)
        steps_when_parked = run.step_names()
        time.sleep(1.0)
        assert run.step_names() == steps_when_parked  # parked: nothing recorded
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
        parked_before = len(run.lines("parked.log"))
        run.wait_until(lambda: len(run.lines("parked.log")) > parked_before, "the recovered run to park", second)
        approve_and_deny()
    output = run.wait_for_output(second)

    assert output == f"Done: {DENIAL}"  # the model saw the denial
    assert run.lines("tools.log") == ["refund 10"]  # the approved refund ran once; the denied one never
    # The run's code did re-run after the kill ...
    if decided == "after_relaunch":  # and once more when a decision woke it from its park
        assert len(run.lines("waiting.log")) >= 3
    else:
        assert len(run.lines("waiting.log")) == 2
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


def timed_out_output(seconds: int) -> str:
    """The run's output when both refunds timed out: the model saw the (last) timeout denial."""
    return f"Done: No decision on this tool call arrived within {seconds} seconds; it was not run."


def wait_and_kill(run: CrashRun, timeout: int) -> list[PendingApproval]:
    """Start the run with `approval_timeout`, kill the worker once it waits; return the two pending calls."""
    first = launch(run, "start", "--approval-timeout", str(timeout))
    run.wait_until(lambda: len(pending_or_none(run) or ()) == 2, "the run to wait for 2 calls", first)
    first.kill()
    pending = list_pending_approvals(database_url=run.database_url)
    # Killed before the deadline: still waiting, nothing decided, nothing run.
    assert [p.tool_call_id for p in pending] == ["call_0_0", "call_0_1"]
    assert run.status().status == "PENDING"
    assert decision_rows(run.database_url, run.workflow_id) == [] and run.lines("tools.log") == []
    return pending


def test_a_deadline_that_passes_while_no_worker_runs(crash_run: Callable[..., CrashRun]) -> None:
    run = crash_run("approval-deadline", "async", SCRIPT)
    pending = wait_and_kill(run, 6)
    assert pending[0].deadline is not None
    deadline = pending[0].deadline.timestamp()
    time.sleep(max(0.0, deadline - time.time()) + 0.2)

    # The deadline has passed with no worker running: the deciding side enforces it.
    passed = f"deadline passed at {pending[0].deadline.isoformat(timespec='milliseconds')} (UTC)"
    with pytest.raises(ApprovalRejected, match=r"can no longer be decided") as refused:
        approve(run.workflow_id, "call_0_0", args_digest=pending[0].args_digest, database_url=run.database_url)
    assert passed in str(refused.value)
    done = approvals_cli(run, "approve", run.workflow_id, "call_0_1")
    assert done.returncode == 1 and passed in done.stderr, done.stdout + done.stderr
    assert list_pending_approvals(database_url=run.database_url) == []  # no longer offered
    assert decision_rows(run.database_url, run.workflow_id) == []  # refused: nothing recorded, nothing sent

    second = launch(run, "recover", "--approval-timeout", "6")
    output = run.wait_for_output(second)

    assert output == timed_out_output(6)  # the relaunched run denied both by timeout ...
    assert run.lines("tools.log") == []  # ... and never ran the tool
    rows = decision_rows(run.database_url, run.workflow_id)
    assert [(row["tool_call_id"], row["decision"]) for row in rows] == [
        ("call_0_0", "timed_out"),
        ("call_0_1", "timed_out"),
    ]
    assert all(row["decided_at_epoch_ms"] >= int(deadline * 1000) for row in rows)
    steps = run.step_names()
    assert f"{AGENT}__approvals.timeout" == approvals_timeout_step(AGENT) and approvals_timeout_step(AGENT) in steps
    assert f"{AGENT}__tool.refund" not in steps


def test_a_relaunch_before_the_deadline_keeps_the_clock(crash_run: Callable[..., CrashRun]) -> None:
    """`approval_timeout` is durable: the relaunched run times out at the deadline the first worker recorded."""
    timeout = 20  # the relaunched run must reach its wait before the deadline, also on a loaded CI machine
    run = crash_run("approval-clock", "async", SCRIPT)
    pending = wait_and_kill(run, timeout)
    assert pending[0].deadline is not None
    deadline = pending[0].deadline.timestamp()
    time.sleep(4)  # the worker stays down for a while
    relaunched_at = time.time()
    second = launch(run, "recover", "--approval-timeout", str(timeout))
    run.wait_until(lambda: len(run.lines("waiting.log")) == 2, "the recovered run to wait again", second)
    assert time.time() < deadline, "the machine is too slow for this test: the run waited again after its deadline"
    output = run.wait_for_output(second)

    assert output == timed_out_output(timeout)
    assert run.lines("tools.log") == []
    rows = decision_rows(run.database_url, run.workflow_id)
    assert [row["decision"] for row in rows] == ["timed_out", "timed_out"]
    timed_out_at = rows[0]["decided_at_epoch_ms"] / 1000
    # DBOS recorded the wait's timer once, at the first worker's wait, ending at the published deadline; the
    # relaunched run reused it. A restarted clock would record a second timer, ending `timeout` after the relaunch.
    steps = run.client.list_workflow_steps(run.workflow_id)
    timers = [step["output"] for step in steps if step["function_name"] == "DBOS.sleep"]
    assert len(timers) == 1 and abs(timers[0] - deadline) < 1.0, (timers, deadline)
    # The run timed out after the deadline, and before a clock restarted at the relaunch could have run out.
    assert deadline <= timed_out_at < relaunched_at + timeout
