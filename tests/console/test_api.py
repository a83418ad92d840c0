"""The console's JSON API against a database filled by real durable runs, on SQLite and PostgreSQL.

The runs come from `console_env` (conftest.py): succeeded, failed, cancelled, waiting for approval, a
fork, a streamed run, a parent with a child run and a run that gave up during a model outage; a run that
waits to retry and a run recovered after its worker was killed are made by the tests that need them.
Actions (approve, deny, cancel, resume, fork, continue) act on fresh runs and are checked against what
DBOS records; costs against genai-prices directly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import genai_prices
import httpx2
import pytest
from console_support import CRASH_EXECUTOR, LIVE_CHUNK, OUTAGE_ERROR, ConsoleEnv, ConsoleServer
from dbos import DBOS
from fastapi.testclient import TestClient
from pydantic_ai.messages import ModelResponse

from dbos_pydantic_ai.console import create_app
from dbos_pydantic_ai.console.app import TOKEN_COOKIE, token_cookie_value

CONSOLE_SCRIPT = Path(sys.executable).parent / "dbos-pydantic-ai"
SAME_ORIGIN = {"Origin": "http://testserver"}


@pytest.fixture(scope="module")
def api(console_env: ConsoleEnv) -> Iterator[TestClient]:
    with TestClient(create_app(console_env.database_url)) as client:
        yield client


def get(api: TestClient, path: str, **params: Any) -> Any:
    response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def all_runs(api: TestClient, **params: Any) -> list[dict[str, Any]]:
    return get(api, "/api/runs", limit=500, **params)["runs"]


def sse_messages(body: str) -> list[dict[str, str]]:
    """The SSE messages of a response body (comments and the retry hint left out)."""
    messages = []
    for block in body.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":") and ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.removeprefix(" ")
        if "data" in fields or "event" in fields:
            messages.append(fields)
    return messages


def streamed_text(messages: list[dict[str, str]]) -> str:
    events = [json.loads(m["data"]) for m in messages if "id" in m]
    return "".join(e["text"] for e in events if e["kind"] in ("part_start", "part_delta") and e["part_kind"] == "text")


# --- Runs -----------------------------------------------------------------------------------------------


def test_runs_table_lists_every_durable_run_newest_first(api: TestClient, console_env: ConsoleEnv) -> None:
    runs = all_runs(api)
    by_id = {run["workflow_id"]: run for run in runs}
    expected = {
        "succeeded": "SUCCESS",
        "injection": "SUCCESS",
        "failed": "ERROR",
        "cancelled": "CANCELLED",
        "forked": "SUCCESS",
        "streamed": "SUCCESS",
        "parent": "SUCCESS",
        "child": "SUCCESS",
    }
    expected["gave_up"] = "ERROR"
    for key, status in expected.items():
        assert by_id[console_env.runs[key]]["status"] == status, key
    assert by_id[console_env.runs["waiting"]]["status"] == "PENDING"
    assert by_id[console_env.runs["waiting"]]["duration_ms"] is None
    keys = [(run["started_at"], run["workflow_id"]) for run in runs]
    assert keys == sorted(keys, reverse=True)

    ok = by_id[console_env.runs["succeeded"]]
    assert ok["agent"] == "console_support" and ok["workflow_name"] == "console_support.run_sync"
    assert ok["model_requests"] == 2 and ok["input_tokens"] > 0 and ok["output_tokens"] > 0
    assert ok["cost_usd"] > 0 and ok["duration_ms"] >= 0 and ok["error"] is None
    assert by_id[console_env.runs["failed"]]["error"] == "RuntimeError: the model provider is down"
    assert by_id[console_env.runs["forked"]]["forked_from"] == console_env.runs["succeeded"]
    assert by_id[console_env.runs["child"]]["parent_workflow_id"] == console_env.runs["parent"]
    assert by_id[console_env.runs["streamed"]]["cost_usd"] is None  # "local-writer" has no known price


def test_agents_are_the_names_of_agents_with_runs(api: TestClient) -> None:
    agents = get(api, "/api/agents")["agents"]
    expected = ["console_expert", "console_flaky", "console_outage", "console_refunds", "console_research"]
    expected += ["console_support", "console_writer"]
    assert agents == sorted(agents)
    # Other tests of this module add runs of these agents (to a database shared by the module).
    assert [a for a in agents if a not in ("console_patient", "console_crashy")] == expected


def test_filters_and_keyset_pagination(api: TestClient, console_env: ConsoleEnv) -> None:
    support = all_runs(api, agent="console_support")
    assert {run["agent"] for run in support} == {"console_support"}
    assert console_env.runs["succeeded"] in {run["workflow_id"] for run in support}
    errors = all_runs(api, status="ERROR")
    assert {run["status"] for run in errors} == {"ERROR"}
    assert {console_env.runs["failed"], console_env.runs["gave_up"]} <= {run["workflow_id"] for run in errors}
    assert console_env.runs["succeeded"] not in {run["workflow_id"] for run in errors}
    # `q` matches the workflow id or the agent, case-insensitively.
    assert [run["workflow_id"] for run in all_runs(api, q="FLAKY-FAIL")] == ["flaky-failed"]
    assert {run["agent"] for run in all_runs(api, q="Console_Research")} == {"console_research"}
    # The child's workflow id ("research-parent-2") matches too, though its agent is the expert.
    assert {run["agent"] for run in all_runs(api, q="research")} == {"console_research", "console_expert"}
    assert all_runs(api, q="100%_no_such_run") == []

    everything = [run["workflow_id"] for run in all_runs(api)]
    paged: list[str] = []
    cursor = None
    while True:
        page = get(api, "/api/runs", limit=3, **({"cursor": cursor} if cursor else {}))
        assert len(page["runs"]) <= 3
        paged.extend(run["workflow_id"] for run in page["runs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == everything and len(set(paged)) == len(paged)


@pytest.mark.parametrize(
    "params",
    [{"cursor": "not-a-cursor"}, {"status": "RUNNING"}, {"limit": 0}, {"limit": 501}, {"cursor": "WzEsMl0"}],
)
def test_bad_list_parameters_are_422(api: TestClient, params: dict[str, Any]) -> None:
    assert api.get("/api/runs", params=params).status_code == 422


def test_a_run_shows_its_conversation_steps_and_costs(api: TestClient, console_env: ConsoleEnv) -> None:
    workflow_id = console_env.runs["succeeded"]
    run = get(api, f"/api/runs/{workflow_id}")
    kinds = [(item["kind"], item["tool_name"]) for item in run["conversation"]]
    assert kinds == [
        ("user", None),
        ("tool_call", "look_up_order"),
        ("tool_result", "look_up_order"),
        ("model_text", None),
        ("output", None),
    ]
    conversation = run["conversation"]
    assert conversation[0]["text"] == "Where is my order A1?"
    assert conversation[1]["args"] == {"order_id": "A1"} and conversation[1]["function_id"] == 1
    assert conversation[2]["text"] == "Order A1 shipped on Monday." and conversation[2]["tool_call_id"] == "call-1"
    assert conversation[3]["function_id"] == 3
    assert run["output"] == conversation[4]["text"] == "Order A1 shipped on Monday. (answer #1)"
    assert [(s["function_id"], s["name"], s["kind"]) for s in run["steps"]] == [
        (1, "console_support__model.request", "model"),
        (2, "console_support__tool.look_up_order", "tool"),
        (3, "console_support__model.request", "model"),
    ]
    assert all(s["duration_ms"] >= 0 and s["error"] is None for s in run["steps"])

    # Tokens and cost per model request, checked against what DBOS recorded and genai-prices' own price.
    recorded = [s["output"] for s in DBOS.list_workflow_steps(workflow_id) if isinstance(s["output"], ModelResponse)]
    assert [r["function_id"] for r in run["model_requests"]] == [1, 3]
    for request, response in zip(run["model_requests"], recorded, strict=True):
        assert request["model_name"] == "gpt-4o"
        assert request["input_tokens"] == response.usage.input_tokens
        assert request["output_tokens"] == response.usage.output_tokens
        price = float(genai_prices.calc_price(response.usage, "gpt-4o").total_price)
        assert request["cost_usd"] == pytest.approx(price) and price > 0
    assert run["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in run["model_requests"]))
    assert run["input_tokens"] == sum(r["input_tokens"] for r in run["model_requests"])


def test_failed_cancelled_and_unpriced_runs(api: TestClient, console_env: ConsoleEnv) -> None:
    failed = get(api, f"/api/runs/{console_env.runs['failed']}")
    assert failed["error"] == "RuntimeError: the model provider is down" and failed["output"] is None
    assert failed["steps"][0]["error"] == "RuntimeError: the model provider is down"
    assert failed["conversation"] == [
        {
            "kind": "user",
            "text": "Anything?",
            "tool_name": None,
            "args": None,
            "tool_call_id": None,
            "function_id": None,
        }
    ]
    cancelled = get(api, f"/api/runs/{console_env.runs['cancelled']}")
    assert cancelled["status"] == "CANCELLED" and cancelled["output"] is None
    streamed = get(api, f"/api/runs/{console_env.runs['streamed']}")
    assert streamed["model_requests"][0]["model_name"] == "local-writer"
    assert streamed["model_requests"][0]["cost_usd"] is None and streamed["cost_usd"] is None
    assert streamed["output"] == "Once upon a time, a run survived a crash."
    assert streamed["steps"][0]["name"] == "console_writer__model.request_stream"


def test_children_are_linked(api: TestClient, console_env: ConsoleEnv) -> None:
    parent = get(api, f"/api/runs/{console_env.runs['parent']}")
    child_id = console_env.runs["child"]
    assert parent["children"] == [{"workflow_id": child_id, "workflow_name": "console_expert.run", "status": "SUCCESS"}]
    assert any(s["kind"] == "child" and s["child_workflow_id"] == child_id for s in parent["steps"])
    assert [i["kind"] for i in parent["conversation"]] == ["user", "tool_call", "tool_result", "model_text", "output"]
    child = get(api, f"/api/runs/{child_id}")
    assert child["parent_workflow_id"] == console_env.runs["parent"]
    assert child["conversation"][0]["text"] == "Is A1 late?"


def test_untrusted_text_is_returned_verbatim_as_json(api: TestClient, console_env: ConsoleEnv) -> None:
    from console_support import INJECTION_ARG, INJECTION_TEXT

    response = api.get(f"/api/runs/{console_env.runs['injection']}")
    assert response.headers["content-type"] == "application/json"
    run = response.json()
    assert run["conversation"][1]["args"] == {"order_id": INJECTION_ARG}
    assert run["output"] == INJECTION_TEXT


# --- Approvals ----------------------------------------------------------------------------------------


def test_waiting_run_and_inbox(api: TestClient, console_env: ConsoleEnv) -> None:
    waiting = console_env.runs["waiting"]
    run = get(api, f"/api/runs/{waiting}")
    assert [(p["tool_name"], p["args"], p["kind"]) for p in run["pending_approvals"]] == [
        ("refund", {"order_id": "A7", "amount": 250}, "approval")
    ]
    assert run["conversation"][-1]["kind"] == "tool_call"
    assert any(s["kind"] == "wait" and s["name"] == "console_refunds__approvals.wait" for s in run["steps"])
    inbox = get(api, "/api/approvals")["approvals"]
    entry = next(a for a in inbox if a["workflow_id"] == waiting)
    assert set(entry) >= {"workflow_id", "agent_name", "tool_call_id", "tool_name", "args", "args_digest"}
    assert entry["agent_name"] == "console_refunds" and entry["requested_at"].endswith("+00:00")
    assert get(api, "/api/approvals", agent="console_support")["approvals"] == []


def test_approve_runs_the_call_once_and_refuses_stale_or_repeated_decisions(
    api: TestClient, console_env: ConsoleEnv
) -> None:
    workflow_id = console_env.start_waiting_run()
    pending = get(api, f"/api/runs/{workflow_id}")["pending_approvals"][0]
    url = f"/api/runs/{workflow_id}/approvals/{pending['tool_call_id']}/approve"
    stale = api.post(url, json={"args_digest": "0" * 64}, headers=SAME_ORIGIN)
    assert stale.status_code == 409 and "not the ones this decision was made on" in stale.json()["detail"]
    assert api.post(url, json={"args_digest": pending["args_digest"]}, headers=SAME_ORIGIN).json() == {"ok": True}
    again = api.post(url, json={"args_digest": pending["args_digest"]}, headers=SAME_ORIGIN)
    assert again.status_code == 409
    assert console_env.wait_for_status(workflow_id, "SUCCESS", "ERROR") == "SUCCESS"
    run = get(api, f"/api/runs/{workflow_id}")
    assert run["output"] == "Refund: refunded 250 on A7"
    assert [s["name"] for s in run["steps"]].count("console_refunds__tool.refund") == 1
    assert run["pending_approvals"] == []


def test_deny_tells_the_model_the_reason(api: TestClient, console_env: ConsoleEnv) -> None:
    workflow_id = console_env.start_waiting_run()
    pending = get(api, f"/api/runs/{workflow_id}")["pending_approvals"][0]
    url = f"/api/runs/{workflow_id}/approvals/{pending['tool_call_id']}/deny"
    body = {"args_digest": pending["args_digest"], "reason": "Over the limit."}
    assert api.post(url, json=body, headers=SAME_ORIGIN).json() == {"ok": True}
    assert console_env.wait_for_status(workflow_id, "SUCCESS", "ERROR") == "SUCCESS"
    run = get(api, f"/api/runs/{workflow_id}")
    assert run["output"] == "Refund: Over the limit."
    assert "console_refunds__tool.refund" not in [s["name"] for s in run["steps"]]
    # A run that has finished is not waiting for anything.
    assert api.post(url, json=body, headers=SAME_ORIGIN).status_code == 409


# --- Actions ----------------------------------------------------------------------------------------------


def test_cancel_then_resume(api: TestClient, console_env: ConsoleEnv) -> None:
    workflow_id = console_env.start_waiting_run()
    assert api.post(f"/api/runs/{workflow_id}/cancel", headers=SAME_ORIGIN).json() == {"ok": True}
    assert console_env.status(workflow_id) == "CANCELLED"
    assert get(api, "/api/runs", q=workflow_id)["runs"][0]["status"] == "CANCELLED"
    assert api.post(f"/api/runs/{workflow_id}/resume", headers=SAME_ORIGIN).json() == {"ok": True}
    # The worker picks the resumed run up; it replays up to its wait and waits again.
    console_env.wait_for_status(workflow_id, "PENDING")
    deadline = time.monotonic() + 60
    while not (pending := get(api, f"/api/runs/{workflow_id}")["pending_approvals"]):
        assert time.monotonic() < deadline, "the resumed run never waited again"
        time.sleep(0.1)
    url = f"/api/runs/{workflow_id}/approvals/{pending[0]['tool_call_id']}/approve"
    assert api.post(url, json={"args_digest": pending[0]["args_digest"]}, headers=SAME_ORIGIN).status_code == 200
    assert console_env.wait_for_status(workflow_id, "SUCCESS", "ERROR") == "SUCCESS"


def test_cancel_and_resume_refuse_finished_runs(api: TestClient, console_env: ConsoleEnv) -> None:
    for action in ("cancel", "resume"):
        response = api.post(f"/api/runs/{console_env.runs['succeeded']}/{action}", headers=SAME_ORIGIN)
        assert response.status_code == 409 and "SUCCESS" in response.json()["detail"]
    assert console_env.status(console_env.runs["succeeded"]) == "SUCCESS"


def test_fork_from_a_model_request_and_compare(api: TestClient, console_env: ConsoleEnv) -> None:
    original = console_env.runs["fork_original"]
    response = api.post(f"/api/runs/{original}/fork", json={"start_step": 3}, headers=SAME_ORIGIN)
    assert response.status_code == 200, response.text
    forked = response.json()["workflow_id"]
    assert forked != original
    assert console_env.wait_for_status(forked, "SUCCESS", "ERROR") == "SUCCESS"
    compared = get(api, "/api/compare", left=original, right=forked)
    left, right = compared["left"], compared["right"]
    assert right["forked_from"] == original and left["workflow_id"] == original
    # Steps before 3 were copied from the original, step 3 ran again: a new answer.
    assert left["output"] == "Order A1 shipped on Monday. (answer #1)"
    assert right["output"].startswith("Order A1 shipped on Monday. (answer #")
    assert right["output"] != left["output"]
    assert [s["name"] for s in right["steps"]] == [s["name"] for s in left["steps"]]
    assert right["model_requests"][0] == left["model_requests"][0]
    assert right["conversation"][:3] == left["conversation"][:3]
    # The fixture's fork, made with DBOS directly, reads the same way.
    assert get(api, f"/api/runs/{console_env.runs['forked']}")["output"].endswith("(answer #2)")


@pytest.mark.parametrize("body", [{}, {"start_step": 0}, {"start_step": "x"}, {"start_step": 1, "extra": 1}])
def test_bad_fork_bodies_are_422(api: TestClient, console_env: ConsoleEnv, body: dict[str, Any]) -> None:
    response = api.post(f"/api/runs/{console_env.runs['succeeded']}/fork", json=body, headers=SAME_ORIGIN)
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/runs/no-such-run", None),
        ("GET", "/api/runs/no-such-run/events", None),
        ("GET", "/api/compare?left=no-such-run&right=support-ok-1", None),
        ("POST", "/api/runs/no-such-run/cancel", None),
        ("POST", "/api/runs/no-such-run/resume", None),
        ("POST", "/api/runs/no-such-run/fork", {"start_step": 1}),
        ("POST", "/api/runs/no-such-run/continue", None),
        ("POST", "/api/runs/no-such-run/approvals/c1/approve", {"args_digest": "x"}),
        ("POST", "/api/runs/no-such-run/approvals/c1/deny", {"args_digest": "x"}),
    ],
)
def test_unknown_runs_are_404(api: TestClient, method: str, path: str, body: Any) -> None:
    response = api.request(method, path, json=body, headers=SAME_ORIGIN)
    assert response.status_code == 404 and "no-such-run" in response.json()["detail"]


# --- Model retries: waiting to retry, gave up, continue ---------------------------------------------------


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_a_run_waiting_to_retry_shows_attempt_next_try_and_last_error(api: TestClient, console_env: ConsoleEnv) -> None:
    """A PENDING run whose model request failed is not a silent PENDING: list and run view say it waits to retry."""
    workflow_id = console_env.start_waiting_to_retry_run()
    [listed] = get(api, "/api/runs", q=workflow_id)["runs"]
    run = get(api, f"/api/runs/{workflow_id}")
    for shown in (listed, run):
        assert shown["status"] == "PENDING"
        retry = shown["retry"]
        assert retry["waiting"] is True and retry["state"] == "waiting"
        assert retry["attempt"] == 1 and retry["failed_attempts"] == 1 and retry["step_id"] == 1
        assert retry["last_error"] == f"ModelServerError: {OUTAGE_ERROR}"
        # The policy waits an hour after the first failure (no jitter).
        assert epoch(retry["next_try_at"]) - epoch(retry["failed_at"]) == pytest.approx(3600, abs=1)
        assert shown["can_continue"] is False
    # The failed attempt is in the timeline, with its error; the wait after it too.
    first = run["steps"][0]
    assert (first["name"], first["kind"], first["failed_attempt"]) == ("console_patient__model.request", "model", True)
    assert first["error"] == f"ModelServerError: {OUTAGE_ERROR}"
    assert run["steps"][-1]["name"] == "DBOS.sleep"
    # A run that waits retries by itself: continuing it is refused, and says why.
    refused = api.post(f"/api/runs/{workflow_id}/continue", headers=SAME_ORIGIN)
    assert refused.status_code == 409 and "is PENDING" in refused.json()["detail"]

    # Cancelled during the outage, it can be continued from its failed request once the provider is back.
    assert api.post(f"/api/runs/{workflow_id}/cancel", headers=SAME_ORIGIN).status_code == 200
    cancelled = get(api, f"/api/runs/{workflow_id}")
    assert cancelled["status"] == "CANCELLED" and cancelled["can_continue"] is True
    assert cancelled["retry"]["waiting"] is False
    console_env.end_outage(workflow_id)
    response = api.post(f"/api/runs/{workflow_id}/continue", headers=SAME_ORIGIN)
    assert response.status_code == 200 and response.json() == {"ok": True, "step": 1}, response.text
    assert console_env.wait_for_status(workflow_id, "SUCCESS", "ERROR") == "SUCCESS"
    done = get(api, f"/api/runs/{workflow_id}")
    assert done["output"] == f"Answered after the outage: Summarise ticket {workflow_id}."
    assert done["retry"] is None and done["can_continue"] is False  # the failed attempt was rewound away


def test_a_run_that_gave_up_is_continued_with_its_finished_steps_kept(api: TestClient, console_env: ConsoleEnv) -> None:
    workflow_id = console_env.start_gave_up_run()
    run = get(api, f"/api/runs/{workflow_id}")
    assert run["status"] == "ERROR" and run["error"].startswith(f"ModelServerError: {OUTAGE_ERROR}")
    retry = run["retry"]
    assert retry["state"] == "gave_up" and retry["waiting"] is False and retry["next_try_at"] is None
    assert retry["attempt"] == retry["failed_attempts"] >= 2
    assert run["can_continue"] is True
    failed_steps = [s["function_id"] for s in run["steps"] if s["failed_attempt"]]
    assert len(failed_steps) == retry["attempt"]

    console_env.end_outage(workflow_id)
    response = api.post(f"/api/runs/{workflow_id}/continue", headers=SAME_ORIGIN)
    assert response.status_code == 200 and response.json()["step"] == failed_steps[-1], response.text
    assert console_env.wait_for_status(workflow_id, "SUCCESS", "ERROR") == "SUCCESS"
    done = get(api, f"/api/runs/{workflow_id}")
    assert done["output"] == f"Answered after the outage: Summarise ticket {workflow_id}."
    # The attempts before the last one are kept as they were recorded; the last one ran again and answered.
    assert [s["function_id"] for s in done["steps"] if s["failed_attempt"]] == failed_steps[:-1]
    assert done["model_requests"][0]["function_id"] == failed_steps[-1]
    # Continued once, it cannot be continued again: it succeeded.
    again = api.post(f"/api/runs/{workflow_id}/continue", headers=SAME_ORIGIN)
    assert again.status_code == 409 and "SUCCESS" in again.json()["detail"]


def test_continue_refuses_runs_it_cannot_continue_and_cross_origin_requests(
    api: TestClient, console_env: ConsoleEnv
) -> None:
    succeeded = api.post(f"/api/runs/{console_env.runs['succeeded']}/continue", headers=SAME_ORIGIN)
    assert succeeded.status_code == 409 and "only a run that failed or was cancelled" in succeeded.json()["detail"]
    # A failure that was not a transient model error left no failed request to go back to.
    failed = api.post(f"/api/runs/{console_env.runs['failed']}/continue", headers=SAME_ORIGIN)
    assert failed.status_code == 409 and "no failed model request" in failed.json()["detail"]
    assert get(api, f"/api/runs/{console_env.runs['failed']}")["can_continue"] is False
    gave_up = console_env.runs["gave_up"]
    evil = api.post(f"/api/runs/{gave_up}/continue", headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403
    assert console_env.status(gave_up) == "ERROR"
    with TestClient(create_app(console_env.database_url, token="t0ken")) as client:
        assert client.post(f"/api/runs/{gave_up}/continue", headers=SAME_ORIGIN).status_code == 401
    assert console_env.status(gave_up) == "ERROR"


# --- Recovered runs ---------------------------------------------------------------------------------------


def test_a_recovered_run_is_marked_with_its_worker_and_the_gap(api: TestClient, console_env: ConsoleEnv) -> None:
    """A run whose worker process was SIGKILLed in step 3 and relaunched: DBOS recovered it."""
    workflow_id = console_env.recovered_run()
    run = get(api, f"/api/runs/{workflow_id}")
    assert run["status"] == "SUCCESS" and run["output"] == "R1 arrives on Friday."
    assert run["executor_id"] == CRASH_EXECUTOR and run["app_version"] == "crash-1"
    recovery = run["recovery"]
    assert recovery["times"] == 1
    assert (recovery["last_step_before"], recovery["first_step_after"]) == (2, 3)
    steps = {s["function_id"]: s for s in run["steps"]}
    assert recovery["gap_ms"] == pytest.approx(
        (epoch(steps[3]["started_at"]) - epoch(steps[2]["completed_at"])) * 1000, abs=2
    )
    assert recovery["gap_ms"] > 0
    assert epoch(steps[2]["completed_at"]) < epoch(recovery["recovered_at"]) + 1  # SQLite: whole seconds
    assert epoch(recovery["recovered_at"]) <= epoch(steps[3]["started_at"])
    [listed] = get(api, "/api/runs", q=workflow_id)["runs"]
    assert listed["recovery"] == recovery and listed["executor_id"] == CRASH_EXECUTOR
    # Runs that ran straight through are not marked.
    for key in ("succeeded", "failed", "cancelled", "waiting", "forked"):
        assert get(api, f"/api/runs/{console_env.runs[key]}")["recovery"] is None, key
    assert get(api, f"/api/runs/{console_env.runs['succeeded']}")["executor_id"] == "local"


# --- Safety -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "https://testserver"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://testserver"},
    ],
)
def test_cross_origin_posts_are_refused(api: TestClient, console_env: ConsoleEnv, headers: dict[str, str]) -> None:
    workflow_id = console_env.runs["waiting"]
    response = api.post(f"/api/runs/{workflow_id}/cancel", headers=headers)
    assert response.status_code == 403 and "Cross-origin" in response.json()["detail"]
    assert console_env.status(workflow_id) == "PENDING"


def test_token_is_required_everywhere_when_set(console_env: ConsoleEnv) -> None:
    token = "s3cret-token"
    with TestClient(create_app(console_env.database_url, token=token)) as client:
        for path in ("/", "/api/runs", "/api/approvals", "/app.js", f"/api/runs/{console_env.runs['succeeded']}"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
        assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        # The page is opened with ?token=: it gets a cookie so its own script and stylesheet load.
        opened = client.get("/", params={"token": token})
        assert opened.status_code == 200
        assert f"{TOKEN_COOKIE}={token_cookie_value(token)}" in opened.headers["set-cookie"]
        assert token not in opened.headers["set-cookie"]
        assert "HttpOnly" in opened.headers["set-cookie"] and "SameSite=Strict" in opened.headers["set-cookie"]
        assert client.get("/app.js").status_code == 200  # with the cookie
        client.cookies.clear()
        assert client.get("/app.js").status_code == 401
        client.cookies.set(TOKEN_COOKIE, token)  # the token itself is not the cookie
        assert client.get("/app.js").status_code == 401
        client.cookies.clear()
        assert client.get("/api/runs", params={"token": "wrong"}).headers.get("set-cookie") is None
        # Actions need the token, and same-origin, both.
        workflow_id = console_env.runs["waiting"]
        assert client.post(f"/api/runs/{workflow_id}/cancel", headers=SAME_ORIGIN).status_code == 401
        evil = {"Authorization": f"Bearer {token}", "Origin": "http://evil.example"}
        assert client.post(f"/api/runs/{workflow_id}/cancel", headers=evil).status_code == 403
        assert console_env.status(workflow_id) == "PENDING"


def test_allowed_hosts_refuse_other_host_headers(console_env: ConsoleEnv) -> None:
    app = create_app(console_env.database_url, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/api/agents").status_code == 200
        assert client.get("/api/agents", headers={"Host": "rebound.example"}).status_code == 400


def test_page_and_security_headers(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for response in (page, api.get("/api/runs")):
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "access-control-allow-origin" not in response.headers
    assert api.get("/api/openapi.json").json()["info"]["title"] == "dbos-pydantic-ai console"


def test_nul_characters_are_422(api: TestClient) -> None:
    assert api.get("/api/runs", params={"q": "a\x00b"}).status_code == 422
    assert api.get("/api/runs/a%00b").status_code == 422


# --- Live output (server-sent events, through a real uvicorn server) ---------------------------------------


def test_events_of_a_finished_run_and_resuming_after_last_event_id(console_server: ConsoleServer) -> None:
    url = f"{console_server.url}/api/runs/{console_server.env.runs['streamed']}/events"  # type: ignore[union-attr]
    response = httpx2.get(url, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    messages = sse_messages(response.text)
    assert messages[-1]["event"] == "end"
    ids = [int(m["id"]) for m in messages if "id" in m]
    assert ids == sorted(ids) and len(ids) >= 3
    events = [json.loads(m["data"]) for m in messages if "id" in m]
    assert [e["offset"] for e in events] == ids
    assert events[0]["kind"] == "model_request_started"
    assert streamed_text(messages) == "Once upon a time, a run survived a crash."

    # A reconnect with Last-Event-ID (or ?from_offset=) gets exactly what followed that event.
    resumed = sse_messages(httpx2.get(url, headers={"Last-Event-ID": str(ids[1])}, timeout=60).text)
    assert [int(m["id"]) for m in resumed if "id" in m] == ids[2:]
    by_query = sse_messages(httpx2.get(url, params={"from_offset": ids[1]}, timeout=60).text)
    assert [m.get("data") for m in by_query] == [m.get("data") for m in resumed]
    assert httpx2.get(url, headers={"Last-Event-ID": "x"}, timeout=60).status_code == 422


def test_live_run_streams_while_it_runs(console_server: ConsoleServer) -> None:
    env = console_server.env
    assert env is not None
    gate = threading.Event()  # holds the run before its last chunk: it cannot end before the first text is seen
    workflow_id = env.start_live_run(chunks=6, delay=0.05, gate=gate)
    seen: list[dict[str, Any]] = []
    status_at_first_text = None
    with httpx2.stream("GET", f"{console_server.url}/api/runs/{workflow_id}/events", timeout=60) as response:
        buffer = ""
        for chunk in response.iter_text():
            buffer += chunk
            *complete, buffer = buffer.split("\n\n")
            for message in sse_messages("\n\n".join(complete) + "\n\n"):
                seen.append(message)
                data = json.loads(message["data"])
                if status_at_first_text is None and data.get("text"):
                    status_at_first_text = env.status(workflow_id)
                    gate.set()
    assert status_at_first_text == "PENDING"  # the text arrived while the run was still running
    assert seen[-1]["event"] == "end"
    assert streamed_text(seen) == "".join(LIVE_CHUNK.format(i=i) for i in range(6))
    assert env.wait_for_status(workflow_id, "SUCCESS") == "SUCCESS"


def test_token_via_query_for_event_source(console_token_server: ConsoleServer) -> None:
    server = console_token_server
    url = f"{server.url}/api/runs/{server.env.runs['streamed']}/events"  # type: ignore[union-attr]
    assert httpx2.get(url, timeout=60).status_code == 401
    response = httpx2.get(url, params={"token": server.token}, timeout=60)
    assert response.status_code == 200 and sse_messages(response.text)[-1]["event"] == "end"


# --- The command -----------------------------------------------------------------------------------------


def run_console(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DBOS_SYSTEM_DATABASE_URL", "DBOS_PAI_CONSOLE_TOKEN")}
    full_env = {**base, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [str(CONSOLE_SCRIPT), "console", *args], capture_output=True, text=True, env=full_env, timeout=60, check=False
    )


def test_cli_refuses_a_public_host_without_a_token(console_env: ConsoleEnv) -> None:
    result = run_console("--database-url", console_env.database_url, "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "refusing to serve the console on '0.0.0.0' without a token" in " ".join(result.stderr.split())
    missing = run_console()
    assert missing.returncode == 2 and "DBOS_SYSTEM_DATABASE_URL" in missing.stderr
    nowhere = run_console("--database-url", "sqlite:////nonexistent/dir/none.sqlite")
    assert nowhere.returncode == 2 and "does not exist" in nowhere.stderr


def test_cli_serves_the_console_from_the_environment_variable(console_env: ConsoleEnv) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DBOS_SYSTEM_DATABASE_URL": console_env.database_url, "NO_COLOR": "1"}
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "console", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx2.get(f"http://127.0.0.1:{port}/api/runs", params={"limit": 500}, timeout=5)
                break
            except httpx2.TransportError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the console never answered"
                time.sleep(0.2)
        assert response.status_code == 200
        assert console_env.runs["succeeded"] in {run["workflow_id"] for run in response.json()["runs"]}
        # Bound to loopback, it answers only to loopback host names (no DNS rebinding).
        rebound = httpx2.get(f"http://127.0.0.1:{port}/api/runs", headers={"Host": "evil.example"}, timeout=5)
        assert rebound.status_code == 400
    finally:
        process.terminate()
        process.communicate(timeout=30)
