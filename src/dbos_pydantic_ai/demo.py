"""The crash-recovery demo: a durable support agent is killed mid-run and finishes without redoing work.

`dbos-pydantic-ai demo` runs three processes on one database (a SQLite file by default):

1. The parent (`run_demo`) starts worker 1 and watches the execution log.
2. Worker 1 (`python -m dbos_pydantic_ai.demo worker ...`) starts the agent run as a DBOS workflow. The
   agent looks up an order, issues a refund with a side-effecting durable tool, then answers. While
   model request 3 is in flight (request 2 with a real model), the parent kills worker 1 with SIGKILL.
3. Worker 2 launches with the same executor id and application version. At launch DBOS recovers the
   PENDING workflow: completed steps return their recorded results, and the run goes on from the
   request that was interrupted.

Every model request and tool call appends to an execution log from inside its step, so the log holds
one "end" entry per completed execution. The parent joins the log with the workflow's steps from
the database and shows, per step, where it executed and how many times.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

if TYPE_CHECKING:
    from dbos import WorkflowHandle
    from pydantic_ai.run import AgentRunResult

__all__ = [
    "DemoError",
    "DemoOptions",
    "DemoResult",
    "StepReport",
    "check_base_url",
    "check_model",
    "console_hint",
    "run_demo",
    "worker_main",
]

# --- Settings shared by the parent and the workers ------------------------------------------------

APP_NAME = "dbos_pydantic_ai_demo"
APP_VERSION = "demo-1"  # pinned: DBOS recovers only runs of its own application version
AGENT_NAME = "support"
LOG_FILE = "executions.jsonl"
LEDGER_FILE = "refunds.jsonl"

PROMPT = "Hi, order A-1042 arrived with a cracked water tank. Can I get my money back?"
INSTRUCTIONS = (
    "You are the support agent of an online shop. Look up the order before acting. Refund an order in full "
    "with `issue_refund` when the customer reports a damaged item. Answer in at most two sentences."
)
ORDERS: dict[str, dict[str, Any]] = {
    "A-1042": {"customer": "Ada Lovelace", "item": "Espresso machine", "total_eur": 129.0, "status": "delivered"},
}

SCRIPTED_KILL_REQUEST = 3  # kill while the scripted model's third request (its answer) is in flight
REAL_MODEL_KILL_REQUEST = 2  # with a real model: right after the first request and its tool calls completed
HOLD_SECONDS = 120.0  # how long worker 1 waits to be killed before giving up
WORKER_TIMEOUT_SECONDS = 180.0
BASE_URL_CHECK_SECONDS = 10.0  # how long the parent waits for an answer from --base-url before giving up
CONSOLE_PORT = 8765  # `dbos-pydantic-ai console`'s default port


class DemoError(Exception):
    """The demo could not run; the message says why and what to do."""


# --- Execution log ----------------------------------------------------------------------------------


def read_log(path: Path) -> list[dict[str, Any]]:
    """All complete entries of an execution log (a line cut short by SIGKILL is skipped)."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


class ExecutionRecorder:
    """Appends one "start" and one "end" entry per model request or tool execution of this worker.

    It is called from inside the DBOS steps, so an execution replayed from the database leaves no
    entry. In worker 1 it also holds the model request the parent kills the worker at.
    """

    def __init__(self, path: Path, *, worker: int, hold_at_request: int | None) -> None:
        self.path = path
        self.worker = worker
        self.hold_at_request = hold_at_request

    def append(self, event: str, **data: Any) -> None:
        entry = {"event": event, "worker": self.worker, "pid": os.getpid(), "time": time.time(), **data}
        with self.path.open("a") as log:  # one write per line: readers never see half an entry
            log.write(json.dumps(entry) + "\n")

    @asynccontextmanager
    async def execution(self, kind: str, label: str, request: int | None = None) -> AsyncIterator[dict[str, str]]:
        """Log the execution of one step's body; the caller puts a one-line `summary` in the yielded dict."""
        from dbos import DBOS

        entry = {"kind": kind, "label": label, "request": request, "step_id": DBOS.step_id}
        self.append("start", **entry)
        if self.hold_at_request is not None and request is not None and request >= self.hold_at_request:
            await asyncio.sleep(HOLD_SECONDS)  # the parent sends SIGKILL now
            raise DemoError(f"Worker {self.worker} was held for the kill at {label} but was never killed.")
        outcome: dict[str, str] = {}
        yield outcome
        self.append("end", **entry, summary=outcome.get("summary", ""))


# --- The agent ----------------------------------------------------------------------------------------


def scripted_support_model(messages: list[Any], info: Any) -> Any:
    """A `FunctionModel` function that plays the support agent from the conversation so far.

    No tool result yet: look up the order. Order found: refund it in full. Refund issued: answer.
    """
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart

    # `content` is typed as whatever a tool may return; both tools of the demo return a dict.
    returns = {
        part.tool_name: cast(dict[str, Any], part.content)
        for message in messages
        for part in getattr(message, "parts", [])
        if isinstance(part, ToolReturnPart)
    }
    if "look_up_order" not in returns:
        return ModelResponse(parts=[ToolCallPart("look_up_order", {"order_id": "A-1042"})])
    if "issue_refund" not in returns:
        order = returns["look_up_order"]
        args = {"order_id": order["order_id"], "amount_eur": order["total_eur"], "reason": "damaged in transit"}
        return ModelResponse(parts=[ToolCallPart("issue_refund", args)])
    refund = returns["issue_refund"]
    return ModelResponse(
        parts=[
            TextPart(
                f"I'm sorry about the cracked tank! I refunded €{refund['amount_eur']:.2f} for order "
                f"{refund['order_id']} (refund {refund['refund_id']}); it reaches your card in 3 to 5 days."
            )
        ]
    )


def _describe_response(response: Any) -> str:
    """A one-line summary of a model response: its tool calls, or the start of its text."""
    from pydantic_ai.messages import TextPart, ToolCallPart

    calls = [f"{part.tool_name}(…)" for part in response.parts if isinstance(part, ToolCallPart)]
    if calls:
        return "calls " + ", ".join(calls)
    text = " ".join(part.content for part in response.parts if isinstance(part, TextPart)).strip()
    return f"answers {text[:40] + '…' if len(text) > 40 else text!r}"


def build_agent(model_name: str | None, recorder: ExecutionRecorder, ledger: Path, base_url: str | None = None) -> Any:
    """The support agent as a `DBOSAgent`: both tools durable, every execution recorded.

    With `base_url`, `model_name` is a model served by the OpenAI-compatible server there, used through Chat
    Completions (the API key, if any, comes from `OPENAI_API_KEY`).
    """
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse
    from pydantic_ai.models import Model, infer_model
    from pydantic_ai.models.function import FunctionModel
    from pydantic_ai.models.wrapper import WrapperModel

    from .agent import DBOSAgent

    class RecordedModel(WrapperModel):
        """The model, with each request recorded (DBOSModel wraps it, so this runs inside the step)."""

        async def request(self, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:
            number = 1 + sum(isinstance(message, ModelResponse) for message in messages)
            async with recorder.execution("model", f"model request {number}", request=number) as outcome:
                response = await self.wrapped.request(messages, *args, **kwargs)
                outcome["summary"] = _describe_response(response)
            return response

    inner: Model
    if model_name is None:
        inner = FunctionModel(scripted_support_model, model_name="scripted")
    elif base_url is not None:
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        inner = OpenAIChatModel(model_name, provider=OpenAIProvider(base_url=base_url))
    else:
        inner = infer_model(model_name)
    agent = Agent(RecordedModel(inner), name=AGENT_NAME, instructions=INSTRUCTIONS)

    @agent.tool_plain
    async def look_up_order(order_id: str) -> dict[str, Any]:
        """Look up an order by its id (for example 'A-1042')."""
        async with recorder.execution("tool", f"look_up_order({order_id!r})") as outcome:
            order = ORDERS.get(order_id.strip().upper())
            if order is None:
                outcome["summary"] = "not found"
                return {"order_id": order_id, "error": "no such order"}
            outcome["summary"] = f"{order['item']}, €{order['total_eur']:.2f}, {order['status']}"
            return {"order_id": order_id, **order}

    @agent.tool_plain
    async def issue_refund(order_id: str, amount_eur: float, reason: str) -> dict[str, Any]:
        """Refund `amount_eur` of an order to the customer's card. Moves money: call it once per order."""
        async with recorder.execution("tool", f"issue_refund({order_id!r}, {amount_eur:.2f})") as outcome:
            refund = {"refund_id": f"RF-{uuid.uuid4().hex[:8].upper()}", "order_id": order_id, "amount_eur": amount_eur}
            with ledger.open("a") as book:  # the side effect: the payment provider's ledger
                book.write(json.dumps({**refund, "reason": reason}) + "\n")
            outcome["summary"] = f"{refund['refund_id']} written to the payment ledger"
            return refund

    return DBOSAgent(agent, durable_tools=["look_up_order", "issue_refund"])


# --- The worker process ---------------------------------------------------------------------------------


def worker_main(argv: list[str] | None = None) -> int:
    """`python -m dbos_pydantic_ai.demo worker ...`: start the run (worker 1) or recover it (worker 2)."""
    parser = argparse.ArgumentParser(prog="python -m dbos_pydantic_ai.demo worker")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--executor-id", required=True)
    parser.add_argument("--workflow-id", required=True)
    parser.add_argument("--role", choices=["start", "recover"], required=True)
    parser.add_argument("--hold-at-request", type=int, default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--base-url", default=None)
    parser.add_argument("--launch-when", type=Path, default=None, help="wait for this file before launching DBOS")
    args = parser.parse_args(argv)

    from dbos import DBOS, SetWorkflowID

    from .config import dbos_config

    recorder = ExecutionRecorder(args.workdir / LOG_FILE, worker=args.worker, hold_at_request=args.hold_at_request)
    durable = build_agent(args.model, recorder, args.workdir / LEDGER_FILE, args.base_url)  # before launch: registers
    config = dbos_config(
        APP_NAME,
        database_url=args.database_url,
        executor_id=args.executor_id,
        application_version=APP_VERSION,
        check=False,
        log_level="WARNING",
        notification_listener_polling_interval_sec=0.1,  # DBOS.destroy() waits up to one poll interval
    )
    while args.launch_when is not None and not args.launch_when.exists():
        time.sleep(0.01)  # worker 2 is started early, to import modules while worker 1 runs
    DBOS(config=config)
    DBOS.launch()  # worker 2: DBOS recovers this executor's PENDING run in the background
    recorder.append("launched", role=args.role)
    try:
        if args.role == "start":
            with SetWorkflowID(args.workflow_id):
                result = asyncio.run(durable.run(PROMPT))
        else:
            result = DBOS.retrieve_workflow(args.workflow_id).get_result(polling_interval_sec=0.05)
        recorder.append("finished", output=str(result.output))
    except Exception as error:
        recorder.append("failed", error=f"{type(error).__name__}: {error}")
        raise
    finally:
        DBOS.destroy()
    return 0


# --- The parent: run the workers, kill one, relaunch ------------------------------------------------------


@dataclass
class DemoOptions:
    """What `dbos-pydantic-ai demo` was asked for."""

    model: str | None = None  # a pydantic-ai model name (with base_url: a model the server serves); None: scripted
    database_url: str | None = None  # default: a SQLite file in the work directory
    workdir: Path | None = None  # default: a temporary directory, removed afterwards unless `keep`
    keep: bool = False
    base_url: str | None = None  # an OpenAI-compatible server (llama.cpp, vLLM, Ollama, ...), used via Chat Completions
    api_key: str | None = None  # for base_url; default: OPENAI_API_KEY if set (local servers usually need none)


@dataclass
class StepReport:
    """One step of the workflow, joined with the executions the log recorded for it."""

    step_id: int | None  # None: code that ran outside any DBOS step
    name: str
    label: str
    summary: str
    first_worker: str  # "executed", "killed in flight" or "-"
    after_relaunch: str  # "replayed", "executed" or "-"
    executions: int  # completed executions of the step's body, over both workers

    @property
    def repeated(self) -> bool:
        """Whether the step's body ran again after it had completed once."""
        return self.executions > 1 or (self.first_worker == "executed" and self.after_relaunch == "executed")


@dataclass
class DemoResult:
    """What the demo observed, computed from the execution log and the database."""

    workflow_id: str
    status: str
    output: str | None
    killed: bool
    steps: list[StepReport]
    refunds: int
    workdir: Path
    database_url: str
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def replayed(self) -> int:
        return sum(step.after_relaunch == "replayed" for step in self.steps)

    @property
    def repeated(self) -> int:
        return sum(step.repeated for step in self.steps)

    @property
    def ok(self) -> bool:
        return self.status == "SUCCESS" and self.repeated == 0 and self.refunds <= 1


def check_model(model_name: str) -> None:
    """Raise `DemoError` unless `model_name` can be used here, naming the missing API key variable."""
    from pydantic_ai.exceptions import UserError
    from pydantic_ai.models import infer_model

    try:
        infer_model(model_name)
    except UserError as error:
        variable = re.search(r"`([A-Z][A-Z0-9_]*)` environment variable", str(error))
        if variable:
            raise DemoError(
                f"Model {model_name!r} needs an API key: set the {variable.group(1)} environment variable. "
                "Without --model the demo uses a scripted local model and needs no key."
            ) from None
        raise DemoError(f"Cannot use model {model_name!r}: {error}") from None
    except ImportError as error:
        raise DemoError(f"Cannot use model {model_name!r}: {error}") from None


def check_base_url(options: DemoOptions) -> None:
    """Raise `DemoError` unless `--base-url` (with `--model` and `--api-key`) can be used: checked before any worker.

    The server must answer HTTP at the URL (any status: some servers have no `GET /models`).
    """
    if options.base_url is None:
        if options.api_key is not None:
            raise DemoError(
                "--api-key goes with --base-url. For --model PROVIDER:NAME, set the provider's key variable "
                "(e.g. OPENAI_API_KEY) instead."
            )
        return
    url = urllib.parse.urlsplit(options.base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise DemoError(
            f"--base-url {options.base_url!r} is not an http(s) URL: pass the root of the server's OpenAI-compatible "
            "API, e.g. http://127.0.0.1:8080/v1 (llama.cpp), http://127.0.0.1:8000/v1 (vLLM), "
            "http://127.0.0.1:11434/v1 (Ollama)."
        )
    if not options.model:
        raise DemoError(
            f"--base-url needs --model NAME: the name of a model the server at {options.base_url} serves "
            "(e.g. 'llama3.2:1b' for Ollama, the name `vllm serve` was given, llama.cpp's --alias)."
        )
    if not _importable("openai"):
        raise DemoError(
            "--base-url talks to the server with the OpenAI SDK, which is not installed: "
            "pip install -e '.[openai]' (or pip install 'pydantic-ai-slim[openai]')."
        )
    probe = urllib.request.Request(options.base_url.rstrip("/") + "/models", method="GET")
    try:
        with urllib.request.urlopen(probe, timeout=BASE_URL_CHECK_SECONDS):
            pass
    except urllib.error.HTTPError:
        pass  # it answered: a server without `GET /models`, or one that wants a key for it
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DemoError(
            f"Nothing answers at --base-url {options.base_url} ({reason}). Start the server (e.g. `llama-server`, "
            "`vllm serve`, `ollama serve`) or fix the URL."
        ) from None


def _importable(module: str) -> bool:
    """Whether `module` is installed, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it; a module without a spec
        return False


def _model_line(options: DemoOptions) -> str:
    """The model, as the demo's panel shows it."""
    from .config import redact_url

    if options.model is None:
        return "scripted FunctionModel (local, no API key)"
    if options.base_url is not None:
        return f"{options.model} at {redact_url(options.base_url)} (OpenAI-compatible Chat Completions)"
    return options.model


def _program() -> str:
    """How to call this command again: its bare name when that is the one on PATH, else the path it was run as."""
    argv0 = sys.argv[0]
    if Path(argv0).name != "dbos-pydantic-ai":
        return "dbos-pydantic-ai"  # `python -m dbos_pydantic_ai` (or a test): the console script of the same install
    on_path = shutil.which("dbos-pydantic-ai")
    same = on_path is not None and Path(on_path).resolve() == Path(argv0).resolve()
    return "dbos-pydantic-ai" if same else argv0


def console_hint(database_url: str, workflow_id: str, *, deleted: bool, program: str = "dbos-pydantic-ai") -> str:
    """The demo's last lines: the one command that shows the run in the web console.

    `deleted`: the database was a file in the temporary directory the demo just removed; the hint then says
    how to keep it (`--workdir DIR`) and shows the command for that directory.
    """
    from .config import redact_url

    if deleted:
        return (
            "The database was in a temporary directory, now deleted. Keep it with --workdir DIR "
            f"(`{program} demo --workdir demo-run`), then see the run in the web console with:\n"
            f"  {program} console --database-url sqlite:///demo-run/demo.sqlite"
        )
    shown = redact_url(database_url)
    lines = [f"See the run in the web console, http://127.0.0.1:{CONSOLE_PORT}/#/run/{workflow_id}, with:"]
    if not (_importable("fastapi") and _importable("uvicorn")):
        lines[0] = lines[0].removesuffix(":") + " (after installing the console extra: pip install -e '.[console]'):"
    if shown != database_url:
        lines[0] = lines[0].removesuffix(":") + " (put your password back in place of ***):"
    lines.append(f"  {program} console --database-url {shlex.quote(shown)}")
    return "\n".join(lines)


@contextmanager
def _workdir(options: DemoOptions, console: Console) -> Iterator[Path]:
    """The directory for the SQLite file, the execution log and worker output; temporary by default."""
    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
        yield options.workdir.resolve()
        return
    path = Path(tempfile.mkdtemp(prefix="dbos-pydantic-ai-demo-"))
    try:
        yield path
    finally:
        if options.keep:
            console.print(f"[dim]Kept the database, execution log and worker output in {path}[/]", soft_wrap=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


class _Worker:
    """A worker subprocess; its stdout and stderr go to `worker-N.out` in the work directory."""

    def __init__(
        self, number: int, role: str, args: list[str], workdir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.number = number
        self.output = workdir / f"worker-{number}.out"
        command = [sys.executable, "-m", "dbos_pydantic_ai.demo", "worker", "--worker", str(number), "--role", role]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with self.output.open("w") as out:
            self.process = subprocess.Popen([*command, *args], stdout=out, stderr=subprocess.STDOUT, env=full_env)

    def stop(self) -> None:
        """Kill the worker if it is still running (a demo that failed half-way leaves no process behind)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])


class _LogFollower:
    """Reads the execution log as the workers write it and prints each new entry as a progress line."""

    def __init__(self, path: Path, console: Console) -> None:
        self.path = path
        self.console = console
        self.seen = 0

    def poll(self) -> list[dict[str, Any]]:
        entries = read_log(self.path)
        new, self.seen = entries[self.seen :], len(entries)
        for entry in new:
            self._print(entry)
        return new

    def _print(self, entry: dict[str, Any]) -> None:
        worker = f"[bold]worker {entry['worker']}[/]"
        step = f"step {entry['step_id']}" if entry.get("step_id") is not None else ""
        if entry["event"] == "launched":
            what = "starts the run" if entry["role"] == "start" else "launched: DBOS recovers the PENDING run"
            self.console.print(f"  {worker} (pid {entry['pid']}) {what}")
        elif entry["event"] == "end":
            self.console.print(f"  {worker}  [green]✓[/] {step:7} {entry['label']} → {entry['summary']}")
        elif entry["event"] == "start" and entry.get("request") is not None:
            self.console.print(f"  {worker}  [yellow]…[/] {step:7} {entry['label']} in flight")
        elif entry["event"] == "finished":
            self.console.print(f"  {worker}  [green]✓[/] run finished")
        elif entry["event"] == "failed":
            self.console.print(f"  {worker}  [red]✗ run failed: {entry['error']}[/]")


def _wait(
    worker: _Worker, follower: _LogFollower, until: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any] | None:
    """Follow the log until an entry satisfies `until` (returned) or the worker exits (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = worker.process.poll() is not None
        for entry in follower.poll():
            if until(entry):
                return entry
        if exited:
            return None
        time.sleep(0.02)
    worker.process.kill()
    raise DemoError(f"Worker {worker.number} did not get there within {timeout:.0f} s. Its output:\n{worker.tail()}")


def _report(step_id: int | None, name: str, entries: list[dict[str, Any]], *, relaunched: bool) -> StepReport:
    """Where the code behind one step (or one unrecorded call) ran, from its log entries."""
    ends = [entry for entry in entries if entry["event"] == "end"]
    by_worker = {worker: {entry["event"] for entry in entries if entry["worker"] == worker} for worker in (1, 2)}
    if "end" in by_worker[1]:
        first = "executed"
    elif "start" in by_worker[1]:
        first = "killed in flight"
    else:
        first = "-"
    if by_worker[2]:
        after = "executed"
    elif first == "executed" and relaunched and step_id is not None:
        after = "replayed"  # the recovered run re-executed the workflow and read this step's recorded output
    else:
        after = "-"
    return StepReport(
        step_id=step_id,
        name=name,
        label=entries[0]["label"] if entries else "",
        summary=ends[-1]["summary"] if ends else "",
        first_worker=first,
        after_relaunch=after,
        executions=len(ends),
    )


def _step_reports(
    steps: Sequence[Mapping[str, Any]], log: list[dict[str, Any]], *, relaunched: bool
) -> list[StepReport]:
    """Join the workflow's steps (from the database) with the log's executions, by step id.

    Executions logged outside any step (a tool that is not durable) follow, one row per call: nothing
    records them, so a recovered run calls them again, and the verdict counts that as a repeat.
    """
    reports = [
        _report(
            step["function_id"],
            step["function_name"],
            [entry for entry in log if entry.get("step_id") == step["function_id"]],
            relaunched=relaunched,
        )
        for step in steps
    ]
    unrecorded: dict[str, list[dict[str, Any]]] = {}
    for entry in log:
        if entry["event"] in ("start", "end") and entry.get("step_id") is None:
            unrecorded.setdefault(entry["label"], []).append(entry)
    reports += [_report(None, "(not a step)", entries, relaunched=relaunched) for entries in unrecorded.values()]
    return reports


def _kill_first_worker(first: _Worker, follower: _LogFollower, kill_request: int, console: Console) -> bool:
    """SIGKILL worker 1 once model request `kill_request` is in flight; False if the run ended before."""
    target = _wait(
        first,
        follower,
        lambda e: e["event"] == "start" and (e.get("request") or 0) >= kill_request,
        WORKER_TIMEOUT_SECONDS,
    )
    if target is None:
        if first.process.returncode != 0:
            raise DemoError(f"Worker 1 failed (exit code {first.process.returncode}):\n{first.tail()}")
        console.print("[yellow]The run finished before the kill point: the model answered without calling a tool.[/]")
        return False
    first.process.kill()  # SIGKILL: no cleanup, nothing more is written to the database
    first.process.wait()
    console.print(f"  [bold red]✗ SIGKILL[/] worker 1 (pid {first.process.pid}) while {target['label']} is in flight")
    return True


def run_demo(options: DemoOptions, console: Console) -> DemoResult:
    """Run the demo end to end, printing progress to `console`, and return what it observed."""
    from .config import check_database_url, redact_url

    check_base_url(options)
    if options.model is not None and options.base_url is None:
        check_model(options.model)
    with _workdir(options, console) as workdir:
        database_url = options.database_url or f"sqlite:///{workdir / 'demo.sqlite'}"
        check_database_url(database_url)
        for stale in (LOG_FILE, LEDGER_FILE):
            (workdir / stale).unlink(missing_ok=True)
        run_key = uuid.uuid4().hex[:8]
        workflow_id = f"demo-refund-{run_key}"
        executor_id = f"demo-worker-{run_key}"  # both workers: worker 2 recovers worker 1's runs
        kill_request = SCRIPTED_KILL_REQUEST if options.model is None else REAL_MODEL_KILL_REQUEST
        shared = ["--database-url", database_url, "--workdir", str(workdir), "--executor-id", executor_id]
        shared += ["--workflow-id", workflow_id, *(["--model", options.model] if options.model else [])]
        shared += ["--base-url", options.base_url] if options.base_url else []
        # The key goes in the environment, not on the command line where `ps` shows it.
        worker_env = {"OPENAI_API_KEY": options.api_key} if options.api_key is not None else {}

        console.print(
            Panel(
                f"A support agent looks up an order, refunds it with a durable tool, and answers.\n"
                f"Its worker is killed with SIGKILL while model request {kill_request} is in flight,\n"
                f"then relaunched.\n\n"
                f"Model     {_model_line(options)}\n"
                f"Database  {redact_url(database_url)}\n"
                f"Workflow  {workflow_id}   executor {executor_id}   version {APP_VERSION}",
                title="[bold]dbos-pydantic-ai demo: crash recovery[/]",
                expand=False,
            )
        )
        follower = _LogFollower(workdir / LOG_FILE, console)
        relaunch = workdir / "relaunch"  # worker 2 launches DBOS only once this file exists
        console.print(f"[bold cyan]▶ Worker 1[/] starts the run: {PROMPT!r}")
        first = _Worker(1, "start", [*shared, "--hold-at-request", str(kill_request)], workdir, worker_env)
        second = _Worker(2, "recover", [*shared, "--launch-when", str(relaunch)], workdir, worker_env)
        try:
            killed = _kill_first_worker(first, follower, kill_request, console)
            if killed:
                console.print("[bold cyan]▶ Worker 2[/] launches with the same executor id and application version")
                relaunch.touch()
                _wait(second, follower, lambda e: e["event"] in ("finished", "failed"), WORKER_TIMEOUT_SECONDS)
                second.process.wait(timeout=WORKER_TIMEOUT_SECONDS)
                follower.poll()
                if second.process.returncode != 0:
                    raise DemoError(f"Worker 2 failed (exit code {second.process.returncode}):\n{second.tail()}")
        finally:
            first.stop()
            second.stop()
        result = _collect(workflow_id, database_url, workdir, killed)
        show_result(result, console)
    # After the temporary directory is gone (or kept): the last lines say where the run can be seen.
    deleted = options.database_url is None and options.workdir is None and not options.keep
    hint = console_hint(database_url, workflow_id, deleted=deleted, program=_program())
    console.print(hint, soft_wrap=True, markup=False, highlight=False)  # one line per command: copy and paste
    return result


def _collect(workflow_id: str, database_url: str, workdir: Path, killed: bool) -> DemoResult:
    """Read the finished workflow and its steps from the database, with a client (no DBOS launch)."""
    from dbos import DBOSClient

    from ._serialization import serializer_for

    client = DBOSClient(system_database_url=database_url, serializer=serializer_for())
    try:
        handle: WorkflowHandle[AgentRunResult[Any]] = client.retrieve_workflow(workflow_id)
        status = handle.get_status().status
        output = str(handle.get_result().output) if status == "SUCCESS" else None
        steps = client.list_workflow_steps(workflow_id, load_output=False)
    finally:
        client.destroy()
    log = read_log(workdir / LOG_FILE)
    refunds = len(read_log(workdir / LEDGER_FILE))
    return DemoResult(
        workflow_id=workflow_id,
        status=status,
        output=output,
        killed=killed,
        steps=_step_reports(list(steps), log, relaunched=killed),
        refunds=refunds,
        workdir=workdir,
        database_url=database_url,
        log=log,
    )


# --- Showing the result ------------------------------------------------------------------------------------

_FIRST_STYLE = {"executed": "[green]executed[/]", "killed in flight": "[red]killed in flight[/]", "-": "[dim]-[/]"}
_AFTER_STYLE = {"replayed": "[cyan]replayed[/]", "executed": "[green]executed[/]", "-": "[dim]-[/]"}


def show_result(result: DemoResult, console: Console) -> None:
    """Print the steps table, the agent's answer and the computed verdict."""
    table = Table(
        title=f"Steps of workflow {result.workflow_id}, from the database",
        title_justify="left",
        caption="replayed: the recovered run got the step's recorded output from the database; its code did not run.\n"
        "Runs: completed executions of the step's code, counted in the execution log.",
        caption_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("Step")
    table.add_column("Worker 1", no_wrap=True)
    table.add_column("After relaunch", no_wrap=True)
    table.add_column("Runs", justify="right")
    for step in result.steps:
        runs = f"[green]{step.executions}[/]" if step.executions == 1 else f"[bold red]{step.executions}[/]"
        table.add_row(
            "-" if step.step_id is None else str(step.step_id),
            f"{step.name}\n[dim]{step.label}[/]",
            _FIRST_STYLE[step.first_worker],
            _AFTER_STYLE[step.after_relaunch],
            runs,
        )
    console.print(table)
    if result.output is not None:
        console.print(Panel(result.output, title="Agent's answer", expand=False))
    console.print(
        f"Workflow status: [bold]{result.status}[/]. Refunds in the payment ledger: [bold]{result.refunds}[/]."
    )
    if not result.killed:
        console.print("[yellow]No crash happened, so nothing was recovered.[/]")
    elif result.ok:
        console.print(
            f"[bold green]Recovered after SIGKILL: {result.replayed} steps replayed from the database, "
            f"{result.repeated} repeated.[/]"
        )
    else:
        console.print(
            f"[bold red]Recovery check failed: {result.replayed} steps replayed, {result.repeated} repeated, "
            f"{result.refunds} refunds, status {result.status}.[/]"
        )


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m dbos_pydantic_ai.demo worker ... (run the demo with `dbos-pydantic-ai demo`)")
    sys.exit(worker_main(sys.argv[2:]))
