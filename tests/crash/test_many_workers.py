"""Many workers on one PostgreSQL database (docs/configuration.md), with real processes.

Each test starts `queue_worker.py` twice, as `worker-1` and `worker-2`: same application name, pinned application
version and agent, one fresh PostgreSQL database, the docs' `answer` workflow and `agent_runs` queue (one run at a
time per worker). The scripted OpenAI server counts every model request and the workers record every tool
execution with their executor id, so the tests can tell which worker ran what, and that nothing ran twice. Each test
runs the recipe as documented (`answer` calls `run_sync`) and in async code (`answer_async` awaits `run`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from crash_harness import CrashRun, WorkerProcess
from dbos import EnqueueOptions, WorkflowStatus

pytestmark = [
    pytest.mark.crash,
    pytest.mark.timeout(300),
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),  # the docs' section is about PostgreSQL
]

QUEUE_WORKER = Path(__file__).with_name("queue_worker.py")
AGENT = "queue_agent"  # queue_worker.AGENT_NAME
MODEL_STEP = f"{AGENT}__model.request"
APP_VERSION = "many-workers-test"  # queue_worker.APP_VERSION
MODES = pytest.mark.parametrize("mode", ["sync", "async"])


def answer_workflow(mode: str) -> str:
    """The user workflow of the docs' recipe, as written (sync) or in async code."""
    return "answer" if mode == "sync" else "answer_async"


def agent_workflow(mode: str) -> str:
    """The child workflow the agent run becomes."""
    return f"{AGENT}.run_sync" if mode == "sync" else f"{AGENT}.run"


def launch(run: CrashRun, executor_id: str, *args: str) -> WorkerProcess:
    """Start a worker on the test's database and server; the `crash_run` fixture kills it at teardown."""
    worker = WorkerProcess(
        [
            *("--executor-id", executor_id, "--database-url", run.database_url),
            *("--port", str(run.server.port), "--workdir", str(run.workdir), *args),
        ],
        run.workdir / f"{executor_id}.log",
        run.workdir,
        script=QUEUE_WORKER,
    )
    run.workers.append(worker)
    return worker


def wait_ready(run: CrashRun, *workers: WorkerProcess) -> None:
    """Wait until both workers have launched DBOS and registered the queue."""
    ready = [run.workdir / f"ready-{executor_id}" for executor_id in ("worker-1", "worker-2")]
    run.wait_until(lambda: all(path.exists() for path in ready), "both workers to register the queue", *workers)


def enqueue_runs(run: CrashRun, mode: str, count: int = 4) -> tuple[list[str], list[str]]:
    """Enqueue `count` runs of the recipe's workflow from outside the workers: their prompts and workflow ids."""
    prompts = [f"question {index}" for index in range(count)]
    options: EnqueueOptions = {
        "queue_name": "agent_runs",
        "workflow_name": answer_workflow(mode),
        "app_version": APP_VERSION,
    }
    return prompts, [run.client.enqueue(options, prompt).get_workflow_id() for prompt in prompts]


@MODES
def test_queue_spreads_runs_over_workers(crash_run: Callable[..., CrashRun], mode: str) -> None:
    """Runs enqueued from outside are spread over the workers, each run executed once, by one worker.

    The first model request to reach the server is held: the worker that sent it is busy (one run at a time), so
    the other worker must take every other run. Both workers run at least one, without relying on timing.
    """
    script = [{"tool_calls": [{"name": "read_prompt"}]}, {"text": "Answer to: {tool_result}"}]
    run = crash_run("queue", mode, script, delay_turns={0})
    workers = [launch(run, "worker-1"), launch(run, "worker-2")]
    wait_ready(run, *workers)

    prompts, ids = enqueue_runs(run, mode)

    def finished() -> list[WorkflowStatus]:
        return [status for status in map(run.status, ids) if status.status == "SUCCESS"]

    run.wait_until(lambda: len(finished()) == 3, "the free worker to finish the 3 other runs", *workers)
    [held] = [status for status in map(run.status, ids) if status.status != "SUCCESS"]
    assert held.status == "PENDING"
    assert run.server.stats()[0].completed == 3  # the held request is still in flight
    assert {status.executor_id for status in finished()} == {"worker-1", "worker-2"} - {held.executor_id}

    run.server.release()
    run.wait_until(lambda: len(finished()) == 4, "the held run to finish", *workers)

    for workflow_id, prompt in zip(ids, prompts, strict=True):
        assert run.client.retrieve_workflow(workflow_id).get_result() == f"Answer to: {prompt}"
    statuses = list(map(run.status, ids))
    assert {status.executor_id for status in statuses} == {"worker-1", "worker-2"}
    assert all(status.queue_name == "agent_runs" and status.app_version == APP_VERSION for status in statuses)
    stats = run.server.stats()
    assert [(turn.received, turn.completed) for turn in stats.values()] == [(4, 4), (4, 4)]  # no request sent twice
    expected = [f"{status.executor_id} read_prompt {prompt}" for status, prompt in zip(statuses, prompts, strict=True)]
    assert sorted(run.lines("tools.log")) == sorted(expected)  # each run's tool ran once, on the worker that took it


@MODES
def test_one_worker_runs_queued_runs_concurrently(crash_run: Callable[..., CrashRun], mode: str) -> None:
    """The docs' recipe with `worker_concurrency=4`: one worker runs several agent runs at once, all correct.

    The first model request is held; the other three runs can only finish meanwhile if the worker runs them
    concurrently. In sync mode DBOS runs them on threads of its own: `run_sync` must not give each an event loop
    of its own, or they share the provider's HTTP client across loops and fail.
    """
    script = [{"tool_calls": [{"name": "read_prompt"}]}, {"text": "Answer to: {tool_result}"}]
    run = crash_run("concurrent", mode, script, delay_turns={0})
    worker = launch(run, "worker-1", "--concurrency", "4")
    run.wait_until(lambda: (run.workdir / "ready-worker-1").exists(), "the worker to register the queue", worker)

    prompts, ids = enqueue_runs(run, mode)

    def succeeded() -> int:
        return sum(run.status(workflow_id).status == "SUCCESS" for workflow_id in ids)

    run.wait_until(lambda: succeeded() == 3, "three runs to finish while the fourth is held", worker)
    run.server.release()
    run.wait_until(lambda: succeeded() == 4, "the held run to finish", worker)

    for workflow_id, prompt in zip(ids, prompts, strict=True):
        assert run.client.retrieve_workflow(workflow_id).get_result() == f"Answer to: {prompt}"
    stats = run.server.stats()
    assert [(turn.received, turn.completed) for turn in stats.values()] == [(4, 4), (4, 4)]  # no request sent twice
    assert sorted(run.lines("tools.log")) == sorted(f"worker-1 read_prompt {prompt}" for prompt in prompts)


@MODES
def test_live_worker_takes_over_dead_workers_run(crash_run: Callable[..., CrashRun], mode: str) -> None:
    """worker-2 takes over the run of a SIGKILLed worker-1 with the docs' loop, and nothing recorded is redone.

    worker-1 runs `answer` itself and is killed while the plain tool `lookup` waits, after two model requests and
    the durable tool `charge` were recorded, with no request in flight. The loop in worker-2 resumes the run and its
    child agent run; worker-2 replays the recorded steps and only executes what was not finished.
    """
    script = [
        {"tool_calls": [{"name": "charge", "args": {"amount": 42}}]},
        {"tool_calls": [{"name": "lookup", "args": {"key": "alpha"}}]},
        {"text": "Done: {tool_result}"},
    ]
    run = crash_run("takeover", mode, script)
    second = launch(run, "worker-2", "--take-over", "worker-1")
    first = launch(run, "worker-1", "--start", run.workflow_id, "--mode", mode)
    wait_ready(run, first, second)

    run.wait_until(lambda: len(run.lines("tools.log")) == 2, "the run to reach the tool `lookup`", first, second)
    [child] = run.child_workflows(agent_workflow(mode))
    assert run.step_names(child) == [MODEL_STEP, f"{AGENT}__tool.charge", MODEL_STEP]
    first.kill()
    for workflow_id in (run.workflow_id, child):
        status = run.status(workflow_id)
        assert (status.status, status.executor_id) == ("PENDING", "worker-1")

    (run.workdir / "gate").touch()
    (run.workdir / "take-over").touch()
    run.wait_until(lambda: run.status().status == "SUCCESS", "worker-2 to finish the taken-over run", second)

    assert set(json.loads((run.workdir / "resumed.json").read_text())) == {run.workflow_id, child}
    assert run.client.retrieve_workflow(run.workflow_id).get_result() == "Done: value-of-alpha"
    for workflow_id in (run.workflow_id, child):
        status = run.status(workflow_id)
        assert (status.status, status.executor_id, status.app_version) == ("SUCCESS", "worker-2", APP_VERSION)
    assert run.child_workflows(agent_workflow(mode)) == [child]  # the agent run was resumed, not started again
    assert run.step_names(child) == [MODEL_STEP, f"{AGENT}__tool.charge", MODEL_STEP, MODEL_STEP]
    stats = run.server.stats()
    assert [(turn.received, turn.completed) for turn in stats.values()] == [(1, 1)] * 3  # each request sent once
    # The durable tool ran once; the plain tool, cut short by the kill, ran again on worker-2 (docs/concepts.md).
    assert run.lines("tools.log") == ["worker-1 charge 42", "worker-1 lookup alpha", "worker-2 lookup alpha"]
