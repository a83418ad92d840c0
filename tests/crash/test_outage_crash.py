"""A worker SIGKILLed while a model request waits out a provider outage (real processes, real HTTP client).

The run's failed attempts and the wait after each are recorded, so the relaunched worker goes on waiting for what is
left of the backoff: no recorded attempt is sent again, and the first request before the kill is not repeated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from crash_harness import CrashRun, WorkerProcess
from openai_server import Outage, OutagePhase, TurnStats
from outage_worker import AGENT_NAME, POLICY

from dbos_pydantic_ai.retries import FailedAttempt

pytestmark = [pytest.mark.crash, pytest.mark.timeout(300)]

WORKER = Path(__file__).with_name("outage_worker.py")
SCRIPT = [
    {"tool_calls": [{"name": "lookup", "args": {"key": "alpha"}}]},
    {"tool_calls": [{"name": "lookup", "args": {"key": "beta"}}]},
    {"text": "Done: {tool_result}"},
]


def launch(run: CrashRun, phase: str) -> WorkerProcess:
    return run.launch_script(WORKER, phase, "--workflow-id", run.workflow_id)


def test_a_worker_killed_during_the_backoff_resumes_the_wait(crash_run: Callable[..., CrashRun]) -> None:
    run = crash_run("outage", "async", SCRIPT, outage=Outage(from_turn=1, phases=(OutagePhase(503, 14),)))
    first = launch(run, "start")

    def waiting_after_second_failure() -> bool:
        if len(run.server.stats().get(1, TurnStats()).failed_at) < 2:
            return False
        names = run.step_names()
        return names.count(f"{AGENT_NAME}__model.request") >= 3 and names.count("DBOS.sleep") >= 2

    run.wait_until(waiting_after_second_failure, "the wait after the second recorded failure", first)
    first.kill()  # during that wait: both attempts are recorded
    killed_at = time.time()
    failed_before_kill = len(run.server.stats()[1].failed_at)

    second = launch(run, "recover")
    assert run.wait_for_output(second) == "Done: value-of-beta"

    stats = run.server.stats()
    assert stats[0].received == 1  # recorded before the outage
    steps = run.client.list_workflow_steps(run.workflow_id)
    requests = [step for step in steps if step["function_name"] == f"{AGENT_NAME}__model.request"]
    failures = [step["output"] for step in requests if isinstance(step["output"], FailedAttempt)]
    # Every attempt the server saw is recorded once: none was sent again after the relaunch.
    assert stats[1].received == len(failures) + 1
    assert len(requests) == 1 + len(failures) + 1 + 1  # turn 0, the failed attempts, the one that answered, turn 2
    assert [failure.attempt for failure in failures] == list(range(1, len(failures) + 1))
    assert sum(step["function_name"] == "DBOS.sleep" for step in steps) == len(failures)
    # The first attempt after the relaunch waited for the rest of the recorded backoff.
    interrupted = failures[failed_before_kill - 1]
    wake_up = interrupted.failed_at + POLICY.delay(interrupted, seed="unused: no jitter")
    after_kill = [at for at in stats[1].failed_at if at > killed_at] or [wake_up]
    assert after_kill[0] >= wake_up - 0.05
    assert run.lines("tools.log") == ["alpha", "alpha", "beta"]  # the plain tool replays, as documented
