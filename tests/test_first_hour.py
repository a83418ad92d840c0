"""A new user's first hour: the README's demo command, what the demo says at its end, short call ids in
`approvals`, and the demo against a local OpenAI-compatible server (`--base-url`).

The demo runs as real subprocesses: a worker killed with SIGKILL and relaunched, on SQLite and PostgreSQL.
The console command the demo prints is run as printed, and asked for the run over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent, CallDeferred
from pydantic_ai.messages import ModelRequest, ToolReturnPart
from pydantic_ai.models.function import FunctionModel

from crash.openai_server import ScriptedOpenAIServer
from dbos_pydantic_ai import DBOSAgent
from dbos_pydantic_ai.demo import console_hint
from test_approvals import Scripted, decision_rows, finish, pending_calls, start

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = VENV_BIN / "dbos-pydantic-ai"
# How the demo names the command in what it prints: bare when that is the one on PATH.
_ON_PATH = shutil.which("dbos-pydantic-ai")
_BARE = _ON_PATH is not None and Path(_ON_PATH).resolve() == CONSOLE_SCRIPT.resolve()
PROGRAM = "dbos-pydantic-ai" if _BARE else str(CONSOLE_SCRIPT)
DEMO_TIMEOUT = 240
RECOVERED = "Recovered after SIGKILL: 4 steps replayed from the database, 0 repeated."
EXTRAS = ("openai", "fastapi", "uvicorn", "mcp", "fastmcp", "playwright", "schemathesis", "mypy")


def run_cli(
    args: list[str], *, env: dict[str, str] | None = None, columns: int = 200, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the console script with a colourless terminal of `columns` columns and no API keys."""
    base = {key: value for key, value in os.environ.items() if not key.endswith("_API_KEY")}
    full_env = {**base, "COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "dumb", **(env or {})}
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=DEMO_TIMEOUT,
        check=False,
        cwd=cwd,
    )


def workflow_id_of(output: str) -> str:
    found = re.search(r"demo-refund-[0-9a-f]{8}", output)
    assert found, output
    return found.group(0)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- The README's set-up commands ---------------------------------------------------------------------


def test_readme_try_it_installs_only_what_the_demo_needs() -> None:
    """Two commands: the demo with the base package (no extra), and the tests with `bash scripts/test`."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Try it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    assert [block.strip() for block in blocks] == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/dbos-pydantic-ai demo",
        "bash scripts/test",
    ]
    # The local-models page is linked from the documentation list and from the installation page.
    assert "](docs/local-models.md)" in readme.split("## Documentation", 1)[1]
    assert "](local-models.md)" in (ROOT / "docs" / "installation.md").read_text()
    assert (ROOT / "docs" / "local-models.md").exists()


@pytest.mark.crash
def test_demo_runs_without_any_extra(tmp_path: Path) -> None:
    """The demo and its workers import nothing from an extra: with every extra's package unimportable, it completes.

    A `sitecustomize` on PYTHONPATH makes those imports fail in the parent and in both worker processes.
    """
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoExtras:\n"
        f"    names = {EXTRAS!r}\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in self.names:\n"
        "            raise ImportError(f'{name} is blocked: the demo must not need an extra')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _NoExtras())\n"
    )
    env = {"PYTHONPATH": str(blocker)}
    probe = subprocess.run(
        [sys.executable, "-c", "import openai"], capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the blocker works, in any child process
    workdir = tmp_path / "demo"
    result = run_cli(["demo", "--workdir", str(workdir)], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert RECOVERED in result.stdout.splitlines()
    assert "blocked" not in (workdir / "worker-1.out").read_text() + (workdir / "worker-2.out").read_text()
    # Without the console extra, the last lines say how to get it before the command.
    assert "after installing the console extra: pip install -e '.[console]'" in result.stdout.splitlines()[-2]


# --- What the demo says at its end ------------------------------------------------------------------------


@pytest.mark.crash
def test_demo_in_a_temporary_directory_says_how_to_keep_the_database(tmp_path: Path) -> None:
    result = run_cli(["demo"], env={"TMPDIR": str(tmp_path)}, columns=80)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.rstrip().splitlines()
    assert lines[-3] == RECOVERED
    assert lines[-2].startswith("The database was in a temporary directory, now deleted. Keep it with --workdir DIR")
    assert f"`{PROGRAM} demo --workdir demo-run`" in lines[-2]
    assert lines[-1] == f"  {PROGRAM} console --database-url sqlite:///demo-run/demo.sqlite"
    assert list(tmp_path.iterdir()) == []  # it was deleted, as the demo says


@pytest.fixture
def console_processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Console servers a test started; each is stopped (by its handle) at teardown."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def get_json(url: str, process: subprocess.Popen[str], timeout: float = 60.0) -> Any:
    """GET `url` once the console process answers; fail with its output if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"the console exited ({process.returncode}): {process.communicate()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the console did not answer {url}")
            time.sleep(0.1)


@pytest.mark.crash
def test_demo_ends_with_the_console_command_that_shows_the_run(
    database_url: str, tmp_path: Path, console_processes: list[subprocess.Popen[str]]
) -> None:
    """With --workdir the database is kept; the last line, run as printed, serves the run in the console."""
    workdir = tmp_path / "demo"
    args = ["demo", "--workdir", str(workdir)]
    if database_url.startswith("postgresql"):
        args += ["--database-url", database_url]
    result = run_cli(args, columns=80)
    assert result.returncode == 0, result.stdout + result.stderr
    workflow_id = workflow_id_of(result.stdout)
    lines = result.stdout.rstrip().splitlines()
    assert lines[-3] == RECOVERED
    assert lines[-2] == f"See the run in the web console, http://127.0.0.1:8765/#/run/{workflow_id}, with:"
    kept_url = database_url if database_url.startswith("postgresql") else f"sqlite:///{workdir / 'demo.sqlite'}"
    command = shlex.split(lines[-1])
    assert command == [*shlex.split(PROGRAM), "console", "--database-url", kept_url]

    port = free_port()
    console = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    console_processes.append(console)
    run = get_json(f"http://127.0.0.1:{port}/api/runs/{workflow_id}", console)
    assert workflow_id in json.dumps(run)
    assert "SUCCESS" in json.dumps(run)
    assert "support__tool.issue_refund" in json.dumps(run)


def test_console_hint_keeps_a_password_out_and_quotes_the_url() -> None:
    hint = console_hint("postgresql://app:s3cret@db:5432/demo?sslmode=require", "demo-refund-1", deleted=False)
    assert "s3cret" not in hint
    first, command = hint.splitlines()
    assert "put your password back in place of ***" in first
    assert command == "  dbos-pydantic-ai console --database-url 'postgresql://app:***@db:5432/demo?sslmode=require'"
    spaced = console_hint("sqlite:////tmp/my demo/demo.sqlite", "demo-refund-1", deleted=False)
    assert shlex.split(spaced.splitlines()[-1])[-1] == "sqlite:////tmp/my demo/demo.sqlite"


# --- approvals: short call ids, and a prefix is enough ---------------------------------------------------

ALPHA = "call_7f3a9c1e2b4d5f60a1_alpha"
BETA = "call_7f3a9c1e2b4d5f60a1_beta"
TOOLU = "toolu_01ABCDEFGHIJKLMNOPQRSTUV"
SHIP = "ext_0123456789abcdef0123456789"


def approvals_cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """`dbos-pydantic-ai approvals ...` in a new process on an 80-column terminal."""
    env = {**os.environ, "DBOS_SYSTEM_DATABASE_URL": database_url, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [str(CONSOLE_SCRIPT), "approvals", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


async def test_approvals_table_shows_short_call_ids_and_decisions_take_a_unique_prefix(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    model = Scripted(
        [
            ("refund", {"amount": 10}, ALPHA),
            ("refund", {"amount": 20}, BETA),
            ("refund", {"amount": 30}, TOOLU),
            ("ship", {"order": "A1"}, SHIP),
        ]
    )
    agent: Agent[None, str] = Agent(FunctionModel(model), name=agent_name)
    refunded: list[int] = []

    @agent.tool_plain(requires_approval=True)
    def refund(amount: int) -> str:
        """Refund the customer."""
        refunded.append(amount)
        return f"refunded {amount}"

    @agent.tool_plain
    def ship(order: str) -> str:
        """Ship an order; the warehouse reports back."""
        raise CallDeferred()

    durable = DBOSAgent(agent, approvals="wait", durable_tools=["refund"])
    launch_dbos()
    run = "wf-first-hour"
    task = start(durable, "async", run)
    await pending_calls(run, 4, task)

    async def cli(*args: str) -> tuple[int, str, str]:
        done = await asyncio.to_thread(approvals_cli, *args, database_url=database_url)
        return done.returncode, done.stdout, " ".join(done.stderr.split())  # stderr unwrapped

    # The table, 80 columns wide: each call id shown whole on one line, as short as keeps it unique in its run.
    code, out, err = await cli("list")
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    shown = {"call_7f3a9c1e2b4d5f60a1_a", "call_7f3a9c1e2b4d5f60a1_b", "toolu_01ABCD", "ext_01234567"}
    cells = {cell.strip() for line in out.splitlines() for cell in line.split("│")}
    assert shown <= cells, out
    for full in (ALPHA, BETA, TOOLU, SHIP):
        assert full not in out
    # --json keeps the full ids.
    code, out, err = await cli("list", "--json")
    assert code == 0, err
    assert [row["tool_call_id"] for row in json.loads(out)] == [ALPHA, BETA, TOOLU, SHIP]

    # An ambiguous prefix is refused, naming the candidates; nothing is decided.
    code, _, err = await cli("approve", run, "call_7f3a")
    assert code == 2
    assert "is the start of 2 calls waiting" in err and ALPHA in err and BETA in err
    assert "Give more characters" in err
    # A prefix no waiting call has is refused, listing the calls that wait.
    code, _, err = await cli("deny", run, "call_zz")
    assert code == 1
    assert "not waiting for tool call 'call_zz'" in err and "Calls of run 'wf-first-hour' waiting" in err
    assert TOOLU in err and SHIP in err
    code, _, err = await cli("approve", run, " ")
    assert code == 2 and "the call id is empty" in err
    assert decision_rows(database_url) == [] and refunded == []

    # The short ids from the table decide the calls they stand for, with each verb.
    code, out, err = await cli("approve", run, "toolu_01ABCD")
    assert code == 0, err
    assert f'Approving refund({{"amount": 30}}) [call {TOOLU} of run {run}' in " ".join(out.split())
    code, out, err = await cli("deny", run, "call_7f3a9c1e2b4d5f60a1_b", "--reason", "not this one")
    assert code == 0, err
    code, _, err = await cli("approve", run, "toolu_01")  # decided: no longer a waiting call to match
    assert code == 1 and "Calls of run 'wf-first-hour' waiting" in err and TOOLU not in err.split("waiting")[-1]
    code, _, err = await cli("deliver", run, "ext_", "--result", '"shipped as P7"')
    assert code == 0, err
    code, _, err = await cli("approve", run, "call")  # one call of the run is left: the prefix is unique now
    assert code == 0, err
    result = await finish(task)

    assert sorted(refunded) == [10, 30]
    last = model.requests[-1][-1]
    assert isinstance(last, ModelRequest)
    returns = {part.tool_call_id: part.content for part in last.parts if isinstance(part, ToolReturnPart)}
    assert returns == {ALPHA: "refunded 10", BETA: "not this one", TOOLU: "refunded 30", SHIP: "shipped as P7"}
    assert "refund: not this one" in result.output
    assert {row["tool_call_id"]: row["decision"] for row in decision_rows(database_url)} == {
        ALPHA: "approve",
        BETA: "deny",
        TOOLU: "approve",
        SHIP: "result",
    }


# --- The demo with a local, OpenAI-compatible server ----------------------------------------------------

SUPPORT_SCRIPT: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "look_up_order", "args": {"order_id": "A-1042"}}]},
    {
        "tool_calls": [
            {"name": "issue_refund", "args": {"order_id": "A-1042", "amount_eur": 129.0, "reason": "cracked tank"}}
        ]
    },
    {"text": "Refunded: {tool_result}"},
]


@pytest.fixture
def local_server() -> Iterator[ScriptedOpenAIServer]:
    server = ScriptedOpenAIServer(SUPPORT_SCRIPT).start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.crash
def test_demo_with_a_base_url_uses_chat_completions_there_and_recovers(
    local_server: ScriptedOpenAIServer, database_url: str, tmp_path: Path
) -> None:
    """`--base-url URL --model NAME`: Chat Completions at that server; killed while request 2 is in flight.

    The server answers only `POST /v1/chat/completions`: a request to the Responses API would fail the run.
    """
    workdir = tmp_path / "demo"
    args = ["demo", "--base-url", local_server.base_url, "--model", "smollm2", "--api-key", "local-key"]
    args += ["--workdir", str(workdir), "--database-url", database_url]
    result = run_cli(args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Model     smollm2 at {local_server.base_url} (OpenAI-compatible Chat Completions)" in result.stdout
    assert "local-key" not in result.stdout
    rows = [
        tuple(cell.strip() for cell in line.split("│")[1:-1])
        for line in result.stdout.splitlines()
        if len(line.split("│")) == 7 and line.split("│")[1].strip().isdigit()
    ]
    assert rows == [
        ("1", "support__model.request", "executed", "replayed", "1"),
        ("2", "support__tool.look_up_order", "executed", "replayed", "1"),
        ("3", "support__model.request", "killed in flight", "executed", "1"),
        ("4", "support__tool.issue_refund", "-", "executed", "1"),
        ("5", "support__model.request", "-", "executed", "1"),
    ]
    assert "Recovered after SIGKILL: 2 steps replayed from the database, 0 repeated." in result.stdout.splitlines()
    # Each turn reached the server once: request 1 came back from the database after the SIGKILL, and the
    # killed request 2 was held before it was sent.
    assert {turn: (s.received, s.completed) for turn, s in local_server.stats().items()} == {
        0: (1, 1),
        1: (1, 1),
        2: (1, 1),
    }
    log = read_jsonl(workdir / "executions.jsonl")
    assert [(e["worker"], e["label"]) for e in log if e["event"] == "end"] == [
        (1, "model request 1"),
        (1, "look_up_order('A-1042')"),
        (2, "model request 2"),
        (2, "issue_refund('A-1042', 129.00)"),
        (2, "model request 3"),
    ]
    starts = [e for e in log if e["event"] == "start" and e["label"] == "model request 2"]
    assert [e["worker"] for e in starts] == [1, 2]
    with pytest.raises(ProcessLookupError):
        os.kill(starts[0]["pid"], 0)  # worker 1 is gone: it was killed
    refunds = read_jsonl(workdir / "refunds.jsonl")
    assert len(refunds) == 1
    assert refunds[0]["refund_id"] in result.stdout  # the answer quotes the one refund, via the tool result


def test_demo_base_url_without_a_model_name_is_a_clear_error(local_server: ScriptedOpenAIServer) -> None:
    result = run_cli(["demo", "--base-url", local_server.base_url])
    assert result.returncode == 2
    assert "--base-url needs --model NAME" in result.stderr and "Traceback" not in result.stderr
    assert local_server.stats() == {}


def test_demo_base_url_that_is_not_http_is_a_clear_error() -> None:
    result = run_cli(["demo", "--base-url", "127.0.0.1:8080/v1", "--model", "m"])
    assert result.returncode == 2
    assert "is not an http(s) URL" in result.stderr and "http://127.0.0.1:8080/v1" in result.stderr


def test_demo_base_url_where_nothing_answers_starts_no_worker(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there any more
    result = run_cli(["demo", "--base-url", url, "--model", "m", "--workdir", str(tmp_path / "demo")])
    assert result.returncode == 2
    assert f"Nothing answers at --base-url {url}" in " ".join(result.stderr.split())
    assert not (tmp_path / "demo" / "executions.jsonl").exists()


def test_demo_api_key_without_base_url_is_a_clear_error() -> None:
    result = run_cli(["demo", "--api-key", "k"])
    assert result.returncode == 2
    assert "--api-key goes with --base-url" in result.stderr


def test_demo_help_lists_base_url_and_api_key() -> None:
    result = run_cli(["demo", "--help"])
    assert result.returncode == 0
    assert "--base-url" in result.stdout and "--api-key" in result.stdout
