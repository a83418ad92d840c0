"""SIGKILL while tools themselves run: durable tools, DBOS-decorated tools, parallel tool calls.

docs/concepts.md and docs/tools-and-mcp.md promise: a step that completed is not run again; a step in flight at
the crash runs again (at least once); the step numbers of parallel tool calls follow the model's order, so the
recovered run replays the finished calls and re-runs the others at the same numbers. Each test kills `worker.py`
while a tool hangs (tools hang only in the worker's first phase), relaunches it, and counts executions in
`tools.log`. SQLite and PostgreSQL, `run_sync` and `await run`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from crash_harness import CrashRun

pytestmark = [pytest.mark.crash, pytest.mark.timeout(300)]

AGENT = "crash_agent"  # worker.AGENT_NAME
MODES = pytest.mark.parametrize("mode", ["sync", "async"])
FINAL_TEXT = {"text": "Done: {tool_result}"}  # the server fills in the last tool result it was sent


def model_step(mode: str) -> str:
    """Async runs stream their model requests (the worker sets an event stream handler)."""
    return f"{AGENT}__model.request_stream" if mode == "async" else f"{AGENT}__model.request"


def assert_finished_once(run: CrashRun) -> None:
    """Both model requests were answered once: the first replayed from the database, the second sent after."""
    stats = run.server.stats()
    assert [(stats[turn].received, stats[turn].completed) for turn in (0, 1)] == [(1, 1), (1, 1)]
    status = run.status()
    assert status.status == "SUCCESS" and status.executor_id == "worker-1"


@MODES
def test_kill_while_a_durable_tool_runs(crash_run: Callable[..., CrashRun], mode: str) -> None:
    """The durable tool in flight at the kill runs again after the relaunch (at least once), then is recorded."""
    script = [{"tool_calls": [{"name": "charge", "args": {"amount": 42}}]}, FINAL_TEXT]
    run = crash_run("tool_inflight", mode, script)

    first = run.launch("start")
    run.wait_until(lambda: run.lines("tools.log") == ["charge 42"], "the durable tool to start", first)
    first.kill()
    assert run.status().status == "PENDING"
    assert run.step_names() == [model_step(mode)]  # the tool's step had not finished: nothing recorded

    second = run.launch("recover")
    output = run.wait_for_output(second)

    assert output == "Done: charged 42"
    assert run.lines("tools.log") == ["charge 42", "charge 42"]  # killed once, then run again to completion
    assert run.step_names() == [model_step(mode), f"{AGENT}__tool.charge", model_step(mode)]
    assert_finished_once(run)


@MODES
def test_kill_while_a_dbos_workflow_tool_runs_next_to_a_dbos_step_tool(
    crash_run: Callable[..., CrashRun], mode: str
) -> None:
    """One response calls a `@DBOS.step` tool and a `@DBOS.workflow` tool; the worker dies inside the workflow
    tool's second step. The step tool and the workflow tool's first step are not repeated; the step in flight is."""
    calls = [{"name": "audit", "args": {"item": 1}}, {"name": "reorder", "args": {"item": 2}}]
    run = crash_run("dbos_tools", mode, [{"tool_calls": calls}, FINAL_TEXT])

    first = run.launch("start")
    run.wait_until(lambda: "ship 2" in run.lines("tools.log"), "the workflow tool's `ship` step to start", first)
    first.kill()
    assert run.lines("tools.log") == ["audit 1", "reserve 2", "ship 2"]
    assert run.status().status == "PENDING"

    second = run.launch("recover")
    output = run.wait_for_output(second)

    assert output == "Done: reserved 2, shipped 2"
    assert run.lines("tools.log") == ["audit 1", "reserve 2", "ship 2", "ship 2"]
    assert run.step_names() == [model_step(mode), "crash_audit", "crash_reorder", "DBOS.getResult", model_step(mode)]
    [child] = run.child_workflows("crash_reorder")
    assert child.startswith(f"{run.workflow_id}-")
    assert run.step_names(child) == ["crash_reserve", "crash_ship"]
    assert run.status(child).status == "SUCCESS"
    assert_finished_once(run)


@MODES
def test_kill_with_parallel_durable_tool_calls_in_flight(crash_run: Callable[..., CrashRun], mode: str) -> None:
    """One response calls the durable tool four times; two calls finish, two are in flight at the kill. After the
    relaunch the finished ones replay and the others run again, every call at its step number in the model's order."""
    calls = [{"name": "pay", "args": {"amount": amount}} for amount in (1, 2, 3, 4)]
    run = crash_run("parallel", mode, [{"tool_calls": calls}, FINAL_TEXT])
    pay_step = f"{AGENT}__tool.pay"

    def recorded_payments() -> list[str]:
        steps = run.client.list_workflow_steps(run.workflow_id)
        return [step["output"] for step in steps if step["function_name"] == pay_step]

    def two_done_two_in_flight() -> bool:
        return len(run.lines("tools.log")) == 4 and len(recorded_payments()) == 2

    first = run.launch("start")
    run.wait_until(two_done_two_in_flight, "two payments recorded and two in flight", first)
    first.kill()
    assert sorted(recorded_payments()) == ["paid 2", "paid 4"]
    assert run.status().status == "PENDING"

    second = run.launch("recover")
    output = run.wait_for_output(second)

    assert output == "Done: paid 4"
    executions = Counter(run.lines("tools.log"))
    assert executions == Counter({"pay 1 start": 2, "pay 2 start": 1, "pay 3 start": 2, "pay 4 start": 1})
    assert run.step_names() == [model_step(mode), *[pay_step] * 4, model_step(mode)]
    assert recorded_payments() == ["paid 1", "paid 2", "paid 3", "paid 4"]  # step numbers in the model's order
    assert_finished_once(run)
