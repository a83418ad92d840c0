"""Run arguments stored with a run, as seen by a process that recovers it after a SIGKILL.

- `timeout=` is stored and starts again on recovery (docs/limitations.md): the recovered run's deadline is its
  (re)start plus the timeout, later than the first one.
- A model name string (`run(model="openai-chat:...")`: the scripted server speaks chat completions, which `openai:`
  no longer means) is stored as given and used on recovery (docs/configuration.md).
- `run(capabilities=...)` is stored and used on recovery (docs/limitations.md): the relaunched worker knows the
  capability only from the database.
- The `stream_events` flag is stored: a run recovered by a worker whose agent has `stream_events=False` still
  streams and records its events (docs/streams.md).

Each test kills `worker.py` while the second model request is held by the scripted server, relaunches it, and
checks the recovered run. SQLite and PostgreSQL, `run_sync` and `await run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from crash_harness import CrashRun

from dbos_pydantic_ai import EventLog, read_events

pytestmark = [pytest.mark.crash, pytest.mark.timeout(300)]

AGENT = "crash_agent"  # worker.AGENT_NAME
MODES = pytest.mark.parametrize("mode", ["sync", "async"])
FINAL_TEXT = {"text": "Done: {tool_result}"}
LOOKUP = {"tool_calls": [{"name": "lookup", "args": {"key": "alpha"}}]}


def kill_during_second_request(run: CrashRun) -> datetime:
    """Start the worker, kill it while its second model request is held; the time of the kill."""
    first = run.launch("start")
    run.wait_until(lambda: run.server.received(1) == 1, "the 2nd model request to reach the server", first)
    first.kill()
    killed_at = datetime.now(UTC)
    assert run.status().status == "PENDING"
    return killed_at


def stored_inputs(run: CrashRun) -> dict[str, Any]:
    [status] = run.client.list_workflows(workflow_ids=[run.workflow_id])
    return status.input["kwargs"]


def assert_recovered(run: CrashRun) -> None:
    stats = run.server.stats()
    assert (stats[0].received, stats[0].completed) == (1, 1)  # replayed, not re-sent
    assert (stats[1].received, stats[1].completed) == (2, 1)  # in flight at the kill: sent again, once
    status = run.status()
    assert status.status == "SUCCESS" and status.executor_id == "worker-1"


@MODES
def test_timeout_is_stored_and_starts_again_on_recovery(crash_run: Callable[..., CrashRun], mode: str) -> None:
    run = crash_run("timeout", mode, [LOOKUP, FINAL_TEXT], delay_turns={1})
    killed_at = kill_during_second_request(run)
    assert stored_inputs(run)["timeout"] == 600  # worker.RUN_TIMEOUT_SECONDS

    second = run.launch("recover")
    assert run.wait_for_output(second) == "Done: value-of-alpha"

    # The plain tool `lookup` ran in both processes and logged the run's deadline each time.
    deadlines = [datetime.fromisoformat(line.split()[1]) for line in run.lines("tools.log") if line.startswith("dead")]
    assert len(deadlines) == 2
    first_deadline, recovered_deadline = deadlines
    assert recovered_deadline > first_deadline
    assert recovered_deadline - timedelta(seconds=600) >= killed_at  # counted from the recovered run's start
    assert_recovered(run)


@MODES
def test_model_name_is_stored_as_given_and_used_on_recovery(crash_run: Callable[..., CrashRun], mode: str) -> None:
    """The agent's own model points at a closed port: the run only finishes if recovery uses the stored name."""
    run = crash_run("model_name", mode, [LOOKUP, FINAL_TEXT], delay_turns={1})
    kill_during_second_request(run)
    assert stored_inputs(run)["model"] == "openai-chat:gpt-test"

    second = run.launch("recover")
    assert run.wait_for_output(second) == "Done: value-of-alpha"
    assert_recovered(run)


@MODES
def test_capabilities_are_stored_and_used_on_recovery(crash_run: Callable[..., CrashRun], mode: str) -> None:
    """The per-run capability brings the tool `stamp` and its label; the relaunched worker has neither but from
    the stored run, and its replay runs the (plain) tool again with them."""
    from worker import CAPABILITY_LABEL, Stamper

    from dbos_pydantic_ai import register_types

    register_types(Stamper)  # this process reads the stored input back: its type must be on the allowlist here too

    script = [{"tool_calls": [{"name": "stamp", "args": {"doc": "invoice"}}]}, FINAL_TEXT]
    run = crash_run("capability", mode, script, delay_turns={1})
    kill_during_second_request(run)
    assert stored_inputs(run)["capabilities"] == [Stamper(CAPABILITY_LABEL)]

    second = run.launch("recover")
    assert run.wait_for_output(second) == f"Done: invoice stamped by {CAPABILITY_LABEL}"
    assert run.lines("tools.log") == ["stamp invoice", "stamp invoice"]
    assert_recovered(run)


@MODES
def test_stored_stream_events_flag_outlives_a_changed_agent(crash_run: Callable[..., CrashRun], mode: str) -> None:
    """Started with `stream_events=True`, recovered by an agent with it off: the run replays its streamed model
    steps, records the recovered request's events, and closes its stream."""
    run = crash_run("stream_flag", mode, [LOOKUP, FINAL_TEXT], delay_turns={1})
    kill_during_second_request(run)

    second = run.launch("recover")
    output = run.wait_for_output(second)
    assert output == "Done: value-of-alpha"

    steps = run.step_names()
    model_steps = [name for name in steps if "__model." in name]
    assert model_steps == [f"{AGENT}__model.request_stream"] * 2
    assert steps[-1] == "DBOS.closeStream"

    async def read_all() -> EventLog:
        log = EventLog()
        async for offset, event in read_events(run.workflow_id, database_url=run.database_url):
            log.add(offset, event)
        return log

    log = asyncio.run(read_all())
    assert log.text() == output  # written by the relaunched worker: the first one never got this answer
    assert_recovered(run)
