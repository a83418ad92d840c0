"""Crash recovery with real processes: SIGKILL a worker mid-run, relaunch it, and check what was redone.

Each test starts `worker.py` against a scripted OpenAI-compatible server, waits until the run is at a
chosen point, kills the worker's process group with SIGKILL, and relaunches it with the same executor
id: DBOS recovers the PENDING workflow and the run completes. The server counts every model request
per turn and the worker records every tool execution, so the tests can check that completed steps
were not repeated and that the step in flight ran at most twice. Each test runs on SQLite and
PostgreSQL, with `run_sync` (plain requests) and `await run` (streamed requests, SSE).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from crash_harness import CrashRun

pytestmark = [pytest.mark.crash, pytest.mark.timeout(300)]

AGENT = "crash_agent"  # worker.AGENT_NAME
MODES = pytest.mark.parametrize("mode", ["sync", "async"])

FINAL_TEXT = {"text": "Done: {tool_result}"}  # the server fills in the last tool result it was sent


def model_step(mode: str) -> str:
    """The step a model request becomes: async runs stream (the worker sets an event stream handler)."""
    return f"{AGENT}__model.request_stream" if mode == "async" else f"{AGENT}__model.request"


def assert_streaming_matches_mode(run: CrashRun, output: str) -> None:
    """Sync runs sent plain requests; async runs streamed them, and the final text reached the handler live."""
    streamed = [flag for stats in run.server.stats().values() for flag in stats.streamed]
    assert streamed
    assert all(flag is (run.mode == "async") for flag in streamed)
    if run.mode == "async":
        assert "".join(json.loads(line) for line in run.lines("stream.log")) == output


def assert_recovered(run: CrashRun) -> None:
    status = run.status()
    assert status.status == "SUCCESS"
    assert status.executor_id == "worker-1"
    assert status.app_version == "crash-test"


@MODES
def test_kill_during_model_request(crash_run: Callable[..., CrashRun], mode: str) -> None:
    """Killed while the 2nd model request is in flight: the 1st is not re-sent, the 2nd is sent again once."""
    script = [{"tool_calls": [{"name": "lookup", "args": {"key": "alpha"}}]}, FINAL_TEXT]
    run = crash_run("model", mode, script, delay_turns={1})

    first = run.launch("start")
    run.wait_until(lambda: run.server.received(1) == 1, "the 2nd model request to reach the server", first)
    first.kill()
    assert run.status().status == "PENDING"
    assert run.lines("tools.log") == ["lookup alpha"]

    second = run.launch("recover")
    output = run.wait_for_output(second)

    assert output == "Done: value-of-alpha"
    stats = run.server.stats()
    assert (stats[0].received, stats[0].completed) == (1, 1)  # recorded step: replayed, not re-sent
    assert (stats[1].received, stats[1].completed) == (2, 1)  # in flight at the kill: sent again, once
    # `lookup` is a plain tool (not a step): the recovered run executes it again, as documented.
    assert run.lines("tools.log") == ["lookup alpha", "lookup alpha"]
    assert run.step_names() == [model_step(mode), model_step(mode)]
    assert_streaming_matches_mode(run, output)
    assert_recovered(run)


@MODES
def test_kill_after_durable_tool(crash_run: Callable[..., CrashRun], mode: str) -> None:
    """Killed after the durable tool `charge` finished: it never runs again; finished requests are not re-sent."""
    script = [{"tool_calls": [{"name": "charge", "args": {"amount": 42}}]}, FINAL_TEXT]
    run = crash_run("tool", mode, script, delay_turns={1})

    first = run.launch("start")
    # The request after the tool reaches the server only once the tool's step is recorded.
    run.wait_until(lambda: run.server.received(1) == 1, "the model request after the tool call", first)
    assert run.lines("tools.log") == ["charge 42"]
    first.kill()
    assert run.status().status == "PENDING"

    second = run.launch("recover")
    output = run.wait_for_output(second)

    assert output == "Done: charged 42"  # the recorded tool result was fed to the model again
    assert run.lines("tools.log") == ["charge 42"]  # exactly once, across the crash
    stats = run.server.stats()
    assert (stats[0].received, stats[0].completed) == (1, 1)
    assert (stats[1].received, stats[1].completed) == (2, 1)
    assert run.step_names() == [model_step(mode), f"{AGENT}__tool.charge", model_step(mode)]
    assert_streaming_matches_mode(run, output)
    assert_recovered(run)


@MODES
def test_kill_during_mcp_call(crash_run: Callable[..., CrashRun], mode: str) -> None:
    """Killed while an MCP tool runs on a stdio server: the call is made again, earlier requests are not."""
    script = [{"tool_calls": [{"name": "slow_echo", "args": {"text": "hello"}}]}, FINAL_TEXT]
    run = crash_run("mcp", mode, script)

    first = run.launch("start")
    run.wait_until(lambda: len(run.lines("mcp.log")) == 1, "the MCP tool call to start", first)
    first.kill()
    assert run.status().status == "PENDING"

    second = run.launch("recover")
    output = run.wait_for_output(second)

    assert output == "Done: echo: hello"
    mcp_log = run.lines("mcp.log")
    starts = [line for line in mcp_log if line.startswith("start")]
    ends = [line for line in mcp_log if line.startswith("end")]
    assert len(starts) == 2  # the call in flight at the kill ran at most twice: killed once, then once more
    assert len(ends) == 1
    assert starts[0] != starts[1]  # ... on a new server process, started by the relaunched worker
    stats = run.server.stats()
    assert (stats[0].received, stats[0].completed) == (1, 1)
    assert (stats[1].received, stats[1].completed) == (1, 1)
    mcp_prefix = f"{AGENT}__mcp_server__slow"
    steps = [name for name in run.step_names() if name != f"{mcp_prefix}.get_tools"]
    assert steps == [model_step(mode), f"{mcp_prefix}.call_tool", model_step(mode)]
    assert_streaming_matches_mode(run, output)
    assert_recovered(run)


@MODES
def test_kill_while_waiting_for_approval(crash_run: Callable[..., CrashRun], mode: str) -> None:
    """Killed while a user workflow waits for a human to approve a deferred tool call.

    The approval is sent with a `DBOSClient` from outside: while the worker is down (sync) or once the
    relaunched worker waits again (async). The workflow then continues the run with `deferred_tool_results`.
    """
    script = [{"tool_calls": [{"name": "refund", "args": {"amount": 10}}]}, FINAL_TEXT]
    run = crash_run("approval", mode, script)

    first = run.launch("start")
    run.wait_until(lambda: len(run.lines("waiting.log")) == 1, "the workflow to wait for approval", first)
    first.kill()
    run_workflow = f"{AGENT}.run_sync" if mode == "sync" else f"{AGENT}.run"
    assert run.status().status == "PENDING"
    [first_run_id] = run.child_workflows(run_workflow)  # the agent run, a child workflow: done before the wait
    assert run.status(first_run_id).status == "SUCCESS"
    assert run.lines("tools.log") == []  # the tool needs approval: not run yet

    def approve() -> None:
        run.client.send(run.workflow_id, True, "approval")

    if mode == "sync":
        approve()
    second = run.launch("recover")
    if mode == "async":
        # The recovered workflow replays up to the wait (the agent run comes from the database) and waits again.
        run.wait_until(lambda: len(run.lines("waiting.log")) == 2, "the recovered workflow to wait again", second)
        approve()
    output = run.wait_for_output(second)

    assert output == "Done: refunded 10"
    assert run.lines("tools.log") == ["refund 10"]  # the approved tool ran once
    assert len(run.lines("waiting.log")) == 2  # the workflow code did re-run after the crash ...
    stats = run.server.stats()
    assert (stats[0].received, stats[0].completed) == (1, 1)  # ... but the request before the wait was not re-sent
    assert (stats[1].received, stats[1].completed) == (1, 1)
    assert "DBOS.recv" in run.step_names()
    children = run.child_workflows(run_workflow)
    assert len(children) == 2 and children[0] == first_run_id  # the first run was replayed, not run again
    assert run.step_names(first_run_id) == [model_step(mode)]
    assert run.step_names(children[1]) == [f"{AGENT}__tool.refund", model_step(mode)]
    assert run.status(children[1]).status == "SUCCESS"
    assert_streaming_matches_mode(run, output)
    assert_recovered(run)
