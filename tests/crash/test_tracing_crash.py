"""A traced run recovered after SIGKILL in a real process: its spans, in the trace each process exported.

The worker (`tracing_worker.py`) writes each span to a file as it ends. The first process is killed while its 2nd
model request is at the scripted server; the relaunched one recovers the run. Checked: every span of both carries
the run's workflow id; the recovered execution's first model request is marked replayed (its chat and step spans),
and the model is called once per request the recovered trace shows as live; the recovered workflow span links to
the first execution's trace.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from crash_harness import CrashRun

sys.path.insert(0, str(Path(__file__).parent.parent))
from span_tree import read_spans, render

pytestmark = [pytest.mark.crash, pytest.mark.timeout(300)]

WORKER = Path(__file__).parent / "tracing_worker.py"
AGENT = "traced_agent"  # tracing_worker.AGENT_NAME
SCRIPT = [
    {"tool_calls": [{"name": "lookup", "args": {"key": "alpha"}}]},
    {"tool_calls": [{"name": "lookup", "args": {"key": "beta"}}]},
    {"text": "Done: {tool_result}"},
]
RENDER_TO = os.environ.get("DBOS_PAI_TRACE_TREE")  # a file to write the span trees to (docs/observability.md)


def test_recovered_run_is_marked_and_linked(crash_run: Callable[..., CrashRun]) -> None:
    run = crash_run("tracing", "sync", SCRIPT, delay_turns={1})
    args = ("--workflow-id", run.workflow_id)

    first = run.launch_script(WORKER, "start", *args)
    run.wait_until(lambda: run.server.received(1) == 1, "the 2nd model request to reach the server", first)
    first.kill()
    assert run.status().status == "PENDING"

    second = run.launch_script(WORKER, "recover", *args)
    assert run.wait_for_output(second) == "Done: value-of-beta"
    assert [run.server.received(turn) for turn in range(3)] == [1, 2, 1]  # only the request in flight was re-sent

    before = read_spans(run.workdir / "spans-start.jsonl")
    after = read_spans(run.workdir / "spans-recover.jsonl")
    ours = [s for s in after if s["attributes"].get("dbos.workflow_id") == run.workflow_id]
    assert len(ours) == len(after), render(after)  # every span of the recovering process belongs to the run
    assert before and all(s["attributes"]["dbos.workflow_id"] == run.workflow_id for s in before)

    # The first process exported the 1st request (it ended) but not the 2nd, nor its workflow span (never ended).
    [first_chat] = [s for s in before if s["name"].startswith("chat")]
    assert first_chat["attributes"]["dbos.step.replayed"] is False and first_chat["attributes"]["dbos.step.id"] == 1

    assert len({s["trace_id"] for s in after}) == 1, render(after)
    [workflow] = [s for s in after if s["name"] == f"{AGENT}.run"]
    assert workflow["attributes"]["dbos_pydantic_ai.execution"] == 2
    assert workflow["attributes"]["dbos_pydantic_ai.previous_trace_id"] == first_chat["trace_id"]
    assert [link["trace_id"] for link in workflow["links"]] == [first_chat["trace_id"]]

    chats = sorted((s for s in after if s["name"].startswith("chat")), key=lambda s: s["start"])
    marks = [(c["attributes"]["dbos.step.id"], c["attributes"]["dbos.step.replayed"]) for c in chats]
    assert marks == [(1, True), (2, False), (3, False)], render(after)  # a plain tool is no step
    steps = sorted((s for s in after if s["name"] == f"{AGENT}__model.request"), key=lambda s: s["start"])
    assert [(s["attributes"]["dbos.step.id"], s["attributes"]["dbos.step.replayed"]) for s in steps] == marks
    live = [c for c in chats if not c["attributes"]["dbos.step.replayed"]]
    assert len(live) == run.server.received(1) - 1 + run.server.received(2)  # one request per live chat span
    if RENDER_TO:
        Path(RENDER_TO).write_text(
            "First process (killed during its 2nd model request):\n"
            + render(before)
            + "\n\nRelaunched process (recovers the run):\n"
            + render(after)
            + "\n"
        )
