"""A worker restarts with async and sync runs in flight while new runs arrive (real processes, SIGKILL).

At launch DBOS recovers the dead worker's runs on its own event loop, while the app starts new async runs on its
loop and `run_sync` runs on threads: three kinds of loop on one model's HTTP client. Every run, recovered or new,
must end in `SUCCESS`, and the model requests recorded before the kill must not be sent again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from crash_harness import CrashRun, WorkerProcess
from mixed_loops_worker import ASYNC_RUNS, NEW_ASYNC_RUNS, NEW_SYNC_RUNS, SYNC_RUNS

pytestmark = [pytest.mark.crash, pytest.mark.timeout(300)]

WORKER = Path(__file__).with_name("mixed_loops_worker.py")
SCRIPT = [{"tool_calls": [{"name": "read_prompt"}]}, {"text": "Answer to: {tool_result}"}]


def launch(run: CrashRun, phase: str) -> WorkerProcess:
    return run.launch_script(WORKER, phase)


def test_recovered_and_new_runs_on_three_kinds_of_loop(crash_run: Callable[..., CrashRun]) -> None:
    run = crash_run("mixed", "both", SCRIPT)
    first = launch(run, "start")
    held = ASYNC_RUNS + SYNC_RUNS
    run.wait_until(lambda: len(run.lines("tools.log")) == held, "every first run to be held in its tool", first)
    first.kill()
    assert run.server.stats()[0].received == held

    (run.workdir / "gate").touch()
    second = launch(run, "restart")
    run.wait_until((run.workdir / "results.json").exists, "every run to end", second)
    results = json.loads((run.workdir / "results.json").read_text())

    first_ids = [f"first-async-{i}" for i in range(ASYNC_RUNS)] + [f"first-sync-{i}" for i in range(SYNC_RUNS)]
    new_ids = [f"new-async-{i}" for i in range(NEW_ASYNC_RUNS)] + [f"new-sync-{i}" for i in range(NEW_SYNC_RUNS)]
    assert results["statuses"] == {workflow_id: "SUCCESS" for workflow_id in first_ids + new_ids}, second.log_tail()
    assert results["outputs"] == {workflow_id: f"Answer to: {workflow_id}" for workflow_id in new_ids}
    stats = run.server.stats()
    # The first request of each killed run was recorded: only the new runs send theirs.
    assert stats[0].received == held + len(new_ids)
    assert stats[1].received == len(first_ids) + len(new_ids)
