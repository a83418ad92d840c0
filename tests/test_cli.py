"""The `dbos-pydantic-ai` command line and its crash-recovery demo, run as real subprocesses.

The demo kills a real worker process with SIGKILL and relaunches it. Besides its printed table, each
test checks the evidence directly: the execution log its model and tools append to from inside their
steps, the refund ledger its side-effecting tool writes, and the workflow's steps in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOS, DBOSClient, SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.exceptions import UnexpectedModelBehavior
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from typer.testing import CliRunner

from dbos_pydantic_ai import DBOSAgent
from dbos_pydantic_ai.cli import TAIL_NO_EVENTS, TAIL_RUN_FAILED, app
from dbos_pydantic_ai.demo import DemoResult, StepReport, _step_reports
from dbos_pydantic_ai.serializer import JSONSerializer

VENV_BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = VENV_BIN / "dbos-pydantic-ai"
DEMO_TIMEOUT = 240

EXPECTED_ROWS = [
    ("1", "support__model.request", "executed", "replayed", "1"),
    ("2", "support__tool.look_up_order", "executed", "replayed", "1"),
    ("3", "support__model.request", "executed", "replayed", "1"),
    ("4", "support__tool.issue_refund", "executed", "replayed", "1"),
    ("5", "support__model.request", "killed in flight", "executed", "1"),
]
FINAL_LINE = "Recovered after SIGKILL: 4 steps replayed from the database, 0 repeated."


def run_cli(
    args: list[str], *, env: dict[str, str] | None = None, module: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the console script (or `python -m dbos_pydantic_ai`) with a wide, colourless terminal."""
    command = [sys.executable, "-m", "dbos_pydantic_ai", *args] if module else [str(CONSOLE_SCRIPT), *args]
    base = {key: value for key, value in os.environ.items() if not key.endswith("_API_KEY")}
    full_env = {**base, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=DEMO_TIMEOUT, check=False)


def table_rows(output: str) -> list[tuple[str, ...]]:
    """The steps table's rows (#, step, worker 1, after relaunch, runs), read back from the printed box."""
    rows = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[0].isdigit():
            rows.append(tuple(cells))
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_recovered_run(output: str, workdir: Path, database_url: str) -> None:
    """Check the printed claims and, independently, the execution log, the ledger and the database."""
    assert table_rows(output) == EXPECTED_ROWS, output
    assert FINAL_LINE in output.splitlines()  # the console hint follows it (tests/test_first_hour.py)
    workflow_id = re.search(r"demo-refund-[0-9a-f]{8}", output).group(0)  # type: ignore[union-attr]

    # The execution log: every step's code completed exactly once; the killed request ran again, once.
    log = read_jsonl(workdir / "executions.jsonl")
    ends = [entry for entry in log if entry["event"] == "end"]
    assert sorted(entry["step_id"] for entry in ends) == [1, 2, 3, 4, 5]
    assert {entry["step_id"]: entry["worker"] for entry in ends} == {1: 1, 2: 1, 3: 1, 4: 1, 5: 2}
    starts = [(entry["worker"], entry["step_id"]) for entry in log if entry["event"] == "start"]
    assert starts == [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (2, 5)]
    pids = {entry["worker"]: entry["pid"] for entry in log}
    assert pids[1] != pids[2]
    with pytest.raises(ProcessLookupError):
        os.kill(pids[1], 0)  # worker 1 is gone: it was killed, not asked to stop

    # The side effect happened once, and the answer quotes the refund the first worker issued.
    refunds = read_jsonl(workdir / "refunds.jsonl")
    assert len(refunds) == 1
    refund_id = refunds[0]["refund_id"]
    assert refund_id in output

    # The database: the run succeeded after a recovery, with the five steps in order.
    client = DBOSClient(system_database_url=database_url, serializer=JSONSerializer())
    try:
        status = client.retrieve_workflow(workflow_id).get_status()
        steps = client.list_workflow_steps(workflow_id)
    finally:
        client.destroy()
    assert status.status == "SUCCESS"
    assert status.app_version == "demo-1"
    assert status.executor_id.startswith("demo-worker-")
    assert status.recovery_attempts is not None and status.recovery_attempts >= 2
    assert [(step["function_id"], step["function_name"]) for step in steps] == [
        (int(row[0]), row[1]) for row in EXPECTED_ROWS
    ]
    assert steps[3]["output"]["refund_id"] == refund_id  # the recorded refund is the one in the ledger
    assert refund_id in steps[4]["output"].parts[0].content


# --- The demo, end to end ---------------------------------------------------------------------------


# Two demo tests run on SQLite only, by what they test: the demo with no --database-url (its zero-setup default is a
# SQLite file in a temporary directory, and what becomes of that directory). Every other demo test runs on both.


@pytest.mark.crash
def test_demo_console_script_zero_setup(tmp_path: Path) -> None:
    """`dbos-pydantic-ai demo` with no options: a temporary SQLite database, no API key, kept with --keep."""
    result = run_cli(["demo", "--keep"], env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    kept = re.search(r"Kept the database, execution log and worker output in (\S+)", result.stdout)
    assert kept, result.stdout
    workdir = Path(kept.group(1))
    assert workdir.parent == tmp_path and (workdir / "demo.sqlite").exists()
    output = result.stdout.replace(kept.group(0), "").rstrip()
    assert "scripted FunctionModel" in output
    assert_recovered_run(output, workdir, f"sqlite:///{workdir / 'demo.sqlite'}")


@pytest.mark.crash
def test_demo_python_m_on_each_database(database_url: str, tmp_path: Path) -> None:
    """`python -m dbos_pydantic_ai demo --database-url ...` on SQLite and on PostgreSQL."""
    workdir = tmp_path / "demo"
    result = run_cli(["demo", "--database-url", database_url, "--workdir", str(workdir)], module=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_recovered_run(result.stdout, workdir, database_url)
    if database_url.startswith("postgresql"):
        assert not (workdir / "demo.sqlite").exists()


@pytest.mark.crash
def test_demo_without_keep_removes_its_temporary_directory(tmp_path: Path) -> None:
    result = run_cli(["demo"], env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert FINAL_LINE in result.stdout.splitlines()
    assert table_rows(result.stdout) == EXPECTED_ROWS
    assert list(tmp_path.iterdir()) == []


# --- The demo with a "real" model: an OpenAI-compatible server on 127.0.0.1 --------------------------


class FakeOpenAI:
    """A Chat Completions server that plays the support agent and counts the requests it answers."""

    def __init__(self) -> None:
        self.requests: list[list[dict[str, Any]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body["messages"])
                payload = json.dumps(fake.answer(body["messages"], body["model"])).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @staticmethod
    def answer(messages: list[dict[str, Any]], model: str) -> dict[str, Any]:
        tool_results = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if not tool_results:
            call = ("look_up_order", {"order_id": "A-1042"})
        elif len(tool_results) == 1:
            call = ("issue_refund", {"order_id": "A-1042", "amount_eur": tool_results[0]["total_eur"], "reason": "x"})
        else:
            call = None
            message["content"] = f"Refunded as {tool_results[1]['refund_id']}."
        if call:
            arguments = json.dumps(call[1])
            message["tool_calls"] = [
                {
                    "id": f"call_{len(tool_results)}",
                    "type": "function",
                    "function": {"name": call[0], "arguments": arguments},
                }
            ]
        return {
            "id": f"chatcmpl-{len(tool_results)}",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.mark.crash
def test_demo_with_a_model_name_kills_after_the_first_completed_request(
    fake_openai: FakeOpenAI, tmp_path: Path, database_url: str
) -> None:
    """`--model` uses that model; the kill comes while request 2 is in flight, so request 1 is paid for once.

    On SQLite and on PostgreSQL (`--database-url`)."""
    workdir = tmp_path / "demo"
    env = {"OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": fake_openai.base_url}
    args = ["demo", "--model", "openai-chat:gpt-4o", "--workdir", str(workdir), "--database-url", database_url]
    result = run_cli(args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Model     openai-chat:gpt-4o" in result.stdout
    assert table_rows(result.stdout) == [
        ("1", "support__model.request", "executed", "replayed", "1"),
        ("2", "support__tool.look_up_order", "executed", "replayed", "1"),
        ("3", "support__model.request", "killed in flight", "executed", "1"),
        ("4", "support__tool.issue_refund", "-", "executed", "1"),
        ("5", "support__model.request", "-", "executed", "1"),
    ]
    assert "Recovered after SIGKILL: 2 steps replayed from the database, 0 repeated." in result.stdout.splitlines()
    # The provider saw three requests in all: request 1 was not sent again after the crash, and the
    # killed request 2 was held before it reached the provider.
    assert [sum(m["role"] == "tool" for m in messages) for messages in fake_openai.requests] == [0, 1, 2]
    log = read_jsonl(workdir / "executions.jsonl")
    assert [(e["worker"], e["label"]) for e in log if e["event"] == "end"] == [
        (1, "model request 1"),
        (1, "look_up_order('A-1042')"),
        (2, "model request 2"),
        (2, "issue_refund('A-1042', 129.00)"),
        (2, "model request 3"),
    ]
    assert len(read_jsonl(workdir / "refunds.jsonl")) == 1
    workflow_id = re.search(r"demo-refund-[0-9a-f]{8}", result.stdout).group(0)  # type: ignore[union-attr]
    client = DBOSClient(
        system_database_url=database_url, serializer=JSONSerializer()
    )  # the run is in the database the demo was given
    try:
        status = client.retrieve_workflow(workflow_id).get_status()
    finally:
        client.destroy()
    assert status.status == "SUCCESS" and (status.recovery_attempts or 0) >= 2
    assert not (workdir / "demo.sqlite").exists()  # no default database beside it


# --- tail: why nothing was printed, in its exit code ----------------------------------------------------


def story_model(fail: bool) -> FunctionModel:
    """Streams a short answer; with `fail`, breaks off after the first chunk with an error that is not retried."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield "Once upon "
        if fail:
            raise UnexpectedModelBehavior("the model broke off mid-answer")
        yield "a time."

    def whole(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:  # a run without stream_events
        if fail:
            raise UnexpectedModelBehavior("the model broke off mid-answer")
        return ModelResponse(parts=[TextPart("Once upon a time.")])

    return FunctionModel(whole, stream_function=stream)


def run_to_end(durable: DBOSAgent[None, str], workflow_id: str) -> None:
    with SetWorkflowID(workflow_id), contextlib.suppress(UnexpectedModelBehavior):
        durable.run_sync("Tell me a story.")


def test_tail_of_a_run_with_events_prints_them_and_exits_0(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    durable = DBOSAgent(Agent(story_model(fail=False), name=agent_name), stream_events=True)
    launch_dbos()
    run_to_end(durable, f"{agent_name}-ok")
    shown = CliRunner().invoke(app, ["tail", f"{agent_name}-ok", "--database-url", database_url])
    assert (shown.exit_code, shown.stdout.strip(), shown.stderr) == (0, "Once upon a time.", "")


def test_tail_of_a_run_without_stream_events_says_why_and_exits_3(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    durable = DBOSAgent(Agent(story_model(fail=False), name=agent_name))  # no stream_events
    launch_dbos()
    run_to_end(durable, f"{agent_name}-plain")
    shown = CliRunner().invoke(app, ["tail", f"{agent_name}-plain", "--database-url", database_url])
    assert shown.exit_code == TAIL_NO_EVENTS == 3
    assert shown.stdout == ""  # no blank line
    assert "recording any events" in shown.stderr and "stream_events=True" in shown.stderr


@pytest.mark.parametrize("stream_events", [True, False])
def test_tail_of_a_failed_run_prints_its_error_and_exits_1(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str, stream_events: bool
) -> None:
    durable = DBOSAgent(Agent(story_model(fail=True), name=agent_name), stream_events=stream_events, model_retry=None)
    launch_dbos()
    run_to_end(durable, f"{agent_name}-failed")
    shown = CliRunner().invoke(app, ["tail", f"{agent_name}-failed", "--database-url", database_url])
    assert shown.exit_code == TAIL_RUN_FAILED == 1
    assert f"Run {agent_name}-failed failed: UnexpectedModelBehavior: the model broke off mid-answer" in " ".join(
        shown.stderr.split()
    )
    # What the run streamed before it failed is still shown (there is nothing without stream_events).
    assert shown.stdout.strip() == ("Once upon" if stream_events else "")


def test_tail_of_a_cancelled_run_says_so_and_exits_1(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    started, release = threading.Event(), threading.Event()

    async def slow(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield "Once upon "
        started.set()
        while not release.is_set():  # a thread-safe gate: the model runs on the durable loop's thread
            await asyncio.sleep(0.01)
        yield "a time."

    durable = DBOSAgent(Agent(FunctionModel(stream_function=slow), name=agent_name), stream_events=True)
    launch_dbos()
    workflow_id = f"{agent_name}-cancelled"
    runner = threading.Thread(target=run_to_end_quietly, args=(durable, workflow_id), daemon=True)
    runner.start()
    try:
        assert started.wait(60), "the run never reached its model"
        DBOS.cancel_workflow(workflow_id)
    finally:
        release.set()
        runner.join(timeout=60)
    shown = CliRunner().invoke(app, ["tail", workflow_id, "--database-url", database_url])
    assert shown.exit_code == TAIL_RUN_FAILED
    assert f"Run {workflow_id} was cancelled" in shown.stderr


def run_to_end_quietly(durable: DBOSAgent[None, str], workflow_id: str) -> None:
    with SetWorkflowID(workflow_id), contextlib.suppress(BaseException):  # cancelled on purpose
        durable.run_sync("Tell me a story.")


# --- Errors, help and version ------------------------------------------------------------------------


def test_demo_with_a_missing_api_key_names_the_variable(tmp_path: Path) -> None:
    result = run_cli(["demo", "--model", "openai:gpt-5", "--workdir", str(tmp_path / "demo")])
    assert result.returncode == 2
    assert "OPENAI_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "demo" / "executions.jsonl").exists()  # no worker was started


def test_demo_with_an_unknown_model_is_a_clear_error() -> None:
    result = run_cli(["demo", "--model", "nosuchprovider:model"])
    assert result.returncode == 2
    assert "Cannot use model 'nosuchprovider:model'" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_with_an_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing-folder' / 'demo.sqlite'}"
    result = run_cli(["demo", "--database-url", url])
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "missing-folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_demo_and_its_options() -> None:
    top = run_cli(["--help"])
    assert top.returncode == 0
    assert "demo" in top.stdout
    sub = run_cli(["demo", "--help"], module=True)
    assert sub.returncode == 0
    for option in ("--model", "--database-url", "--workdir", "--keep"):
        assert option in sub.stdout


def test_version() -> None:
    result = run_cli(["--version"])
    assert result.returncode == 0
    assert result.stdout.strip() == f"dbos-pydantic-ai {version('dbos-pydantic-ai')}"


# --- The verdict is computed, not printed ---------------------------------------------------------------


def _entry(worker: int, step_id: int, event: str) -> dict[str, Any]:
    return {"worker": worker, "step_id": step_id, "event": event, "label": f"step {step_id}", "summary": ""}


def test_a_step_run_again_after_the_relaunch_counts_as_repeated(tmp_path: Path) -> None:
    """The verdict's counts come from the log: a step whose code ran in both workers is reported as repeated."""
    steps = [{"function_id": 1, "function_name": "a"}, {"function_id": 2, "function_name": "b"}]
    log = [_entry(1, 1, "start"), _entry(1, 1, "end"), _entry(1, 2, "start"), _entry(2, 1, "start")]
    log += [_entry(2, 1, "end"), _entry(2, 2, "start"), _entry(2, 2, "end")]
    reports = _step_reports(steps, log, relaunched=True)
    assert [(r.first_worker, r.after_relaunch, r.executions, r.repeated) for r in reports] == [
        ("executed", "executed", 2, True),
        ("killed in flight", "executed", 1, False),
    ]
    result = DemoResult("w", "SUCCESS", "ok", True, reports, 1, tmp_path, "sqlite:///x.sqlite")
    assert (result.replayed, result.repeated, result.ok) == (0, 1, False)
    replayed = StepReport(1, "a", "", "", "executed", "replayed", 1)
    assert not replayed.repeated


def test_a_call_outside_any_step_that_ran_in_both_workers_counts_as_repeated() -> None:
    """A tool that is not durable leaves no step: its log entries still show up, and its second run is a repeat."""
    steps = [{"function_id": 1, "function_name": "a"}]
    log = [_entry(1, 1, "start"), _entry(1, 1, "end")]
    refund = {"label": "issue_refund()", "step_id": None, "summary": ""}
    log += [{**refund, "worker": 1, "event": "start"}, {**refund, "worker": 1, "event": "end"}]
    log += [{**refund, "worker": 2, "event": "start"}, {**refund, "worker": 2, "event": "end"}]
    reports = _step_reports(steps, log, relaunched=True)
    assert [(r.step_id, r.name, r.after_relaunch, r.executions, r.repeated) for r in reports] == [
        (1, "a", "replayed", 1, False),
        (None, "(not a step)", "executed", 2, True),
    ]
