"""`dbos-pydantic-ai worker`, as real processes started with the venv's executable, on PostgreSQL.

The workers import `fleet_agents` (found through their working directory, as `python -m` would), whose agent asks
the scripted OpenAI server (counting every request) for a call of the tool `hold`, which waits at a per-run gate
file, then answers `done: held <prompt>`. Runs are started from this test process, which defines no agent, with
`start_run()`. One test shares its two workers across the checks: health, queue limits, priorities, deduplication,
and the SIGTERM drain; the start-up errors are checked separately (they need no database).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crash_harness import WAIT_SECONDS, CrashRun, WorkerProcess

from dbos_pydantic_ai import RunAlreadyActiveError, RunHandle, start_run
from dbos_pydantic_ai._queue_spec import QueueSpec, parse_queue_spec
from dbos_pydantic_ai.exceptions import WorkerConfigError

pytestmark = [pytest.mark.crash, pytest.mark.timeout(300)]

CRASH_DIR = Path(__file__).parent
COMMAND = Path(sys.executable).with_name("dbos-pydantic-ai")
AGENT = "fleet_agent"  # fleet_agents.AGENT_NAME
APP_VERSION = "fleet-test"
SCRIPT = [{"tool_calls": [{"name": "hold"}]}, {"text": "done: {tool_result}"}]
QUEUES = ["runs:2,poll=0.1", "ordered:1,poll=0.1", "limited,rate=2/3,poll=0.1"]
RATE_LIMIT, RATE_PERIOD_MS = 2, 3000  # `limited`: at most 2 runs started in any 3 seconds


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the worker's own variables (nothing leaks in from the shell), plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DBOS_PAI_") and key not in ("DBOS_SYSTEM_DATABASE_URL", "PYTHONPATH")
    }
    env["COLUMNS"] = "400"  # error messages on one line
    return {**env, **extra}


class CommandWorker(WorkerProcess):
    """`dbos-pydantic-ai worker ARGS...` in a new session, its output (stdout and stderr) in a log file."""

    def __init__(self, args: list[str], log_path: Path, cwd: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(COMMAND), "worker", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )

    def terminate(self) -> None:
        """SIGTERM the worker itself (as Kubernetes and systemd stop it)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def launch_worker(run: CrashRun, executor_id: str, *extra: str) -> CommandWorker:
    """A worker of `fleet_agents` on the test's database, serving QUEUES; the id comes from DBOS_PAI_EXECUTOR_ID."""
    args = ["fleet_agents", "--database-url", run.database_url, "--app-version", APP_VERSION, "--dead-after", "10"]
    for spec in QUEUES:
        args += ["--queue", spec]
    env = clean_env(
        DBOS_PAI_EXECUTOR_ID=executor_id,
        FLEET_OPENAI_BASE_URL=run.server.base_url,
        FLEET_WORKDIR=str(run.workdir),
    )
    worker = CommandWorker([*args, *extra], run.workdir / f"{executor_id}.log", CRASH_DIR, env)
    run.workers.append(worker)
    return worker


def wait_serving(run: CrashRun, worker: CommandWorker) -> None:
    run.wait_until(lambda: "serving queues" in worker.log(), "the worker to serve its queues", worker)


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def held(run: CrashRun, prompt: str) -> list[str]:
    """The executors that ran the tool `hold` of the run with this prompt, in order."""
    return [line.split()[0] for line in run.lines("tools.log") if line.split()[2:] == [prompt]]


def open_gate(run: CrashRun, prompt: str) -> None:
    (run.workdir / f"gate-{prompt}").touch()


def max_overlap(statuses: list[Any]) -> int:
    """The most runs that were running at once, by their recorded dequeue and completion times."""
    events = sorted([(s.dequeued_at, 1) for s in statuses] + [(s.completed_at, -1) for s in statuses])
    running = most = 0
    for _, change in events:  # at equal times an end (-1) sorts before a start: touching runs do not overlap
        running += change
        most = max(most, running)
    return most


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_worker_command_serves_queues_and_drains_on_sigterm(crash_run: Callable[..., CrashRun]) -> None:
    """Two `worker` processes: health, start_run from a process without agents, per-worker concurrency,
    deduplication, priorities, a rate limit, then SIGTERM: the run in flight finishes, the one that outlasts the
    grace period is handed off and finished by the other worker, and no recorded model request is sent again."""
    run = crash_run("worker", "async", SCRIPT)
    health_file = run.workdir / "alive"
    first = launch_worker(
        run,
        "worker-1",
        *("--grace", "8", "--health-port", "0", "--health-host", "127.0.0.1", "--health-file", str(health_file)),
    )
    wait_serving(run, first)
    match = re.search(r"health on http://127\.0\.0\.1:(\d+)/healthz", first.log())
    assert match is not None, first.log()
    port = int(match.group(1))
    assert healthz(port) == (
        200,
        {
            "executor_id": "worker-1",
            "app_version": APP_VERSION,
            "state": "serving",
            "runs_in_flight": 0,
            "queues": ["runs", "ordered", "limited"],
        },
    )
    run.wait_until(health_file.exists, "the health file", first)
    started: list[RunHandle] = []

    def start(queue: str, prompt: str, **options: Any) -> RunHandle:
        handle = start_run(AGENT, prompt, database_url=run.database_url, queue=queue, **options)
        started.append(handle)
        return handle

    def succeeded(*handles: RunHandle) -> bool:
        return all(run.status(handle.workflow_id).status == "SUCCESS" for handle in handles)

    # The rate-limited queue first: its runs take a few seconds to be let through, while the other checks go on.
    rate_runs = [f"p-rate{index}" for index in range(4)]
    for prompt in rate_runs:
        open_gate(run, prompt)
    limited = [start("limited", prompt) for prompt in rate_runs]

    # A run started from this process, which defines no agent, run by the worker.
    open_gate(run, "p-hello")
    assert start("runs", "p-hello").result_sync().output == "done: held p-hello"

    # Per-worker concurrency (`runs:2`) and deduplication.
    prompts = [f"p-c{index}" for index in range(4)]
    concurrent = [start("runs", prompt, deduplication_id=f"conv-{index}") for index, prompt in enumerate(prompts)]
    run.wait_until(lambda: sum(bool(held(run, p)) for p in prompts) == 2, "two runs to be in flight", first)
    statuses = [run.status(handle.workflow_id).status for handle in concurrent]
    assert sorted(statuses) == ["ENQUEUED", "ENQUEUED", "PENDING", "PENDING"]
    with pytest.raises(RunAlreadyActiveError) as busy:
        start_run(AGENT, "p-again", database_url=run.database_url, queue="runs", deduplication_id="conv-0")
    assert busy.value.workflow_id == concurrent[0].workflow_id
    status, body = healthz(port)
    assert (status, body["state"]) == (200, "serving")
    assert body["runs_in_flight"] >= 2  # the held pair (and perhaps a rate-limited run)
    for prompt in prompts:
        open_gate(run, prompt)
    run.wait_until(lambda: succeeded(*concurrent), "the concurrent runs to finish", first)
    assert max_overlap([run.status(handle.workflow_id) for handle in concurrent]) == 2

    # Priorities (`ordered:1`): behind a held run, the waiting runs are dequeued lowest number first.
    blocker = start("ordered", "p-blocker")
    run.wait_until(lambda: bool(held(run, "p-blocker")), "the blocking run to be in flight", first)
    prioritized = [start("ordered", f"p-prio{priority}", priority=priority) for priority in (3, 1, 2)]
    for prompt in ("p-blocker", "p-prio1", "p-prio2", "p-prio3"):
        open_gate(run, prompt)
    run.wait_until(lambda: succeeded(blocker, *prioritized), "the prioritized runs to finish", first)
    order = sorted([blocker, *prioritized], key=lambda handle: run.status(handle.workflow_id).dequeued_at)
    assert [handle.result_sync().output for handle in order] == [
        "done: held p-blocker",
        "done: held p-prio1",
        "done: held p-prio2",
        "done: held p-prio3",
    ]

    # The rate limit (`limited,rate=2/3`): no 3 runs started within 3 seconds, by the database's dequeue times.
    run.wait_until(lambda: succeeded(*limited), "the rate-limited runs to finish", first)
    dequeued = sorted(run.status(handle.workflow_id).dequeued_at for handle in limited)
    windows = zip(dequeued, dequeued[RATE_LIMIT:], strict=False)  # each start and the one RATE_LIMIT starts later
    assert all(later - earlier >= RATE_PERIOD_MS for earlier, later in windows)

    # SIGTERM: two runs in flight; one is let go during the grace period, the other outlasts it.
    drain = [start("runs", "p-drain1"), start("runs", "p-drain2")]
    run.wait_until(lambda: bool(held(run, "p-drain1") and held(run, "p-drain2")), "two runs in flight", first)
    second = launch_worker(run, "worker-2")
    wait_serving(run, second)
    first.terminate()
    run.wait_until(lambda: healthz(port)[0] == 503, "the health endpoint to say 503", first)
    status, body = healthz(port)
    assert (status, body["state"], body["runs_in_flight"]) == (503, "draining", 2)
    run.wait_until(lambda: not health_file.exists(), "the health file to be removed", first)
    open_gate(run, "p-drain1")
    run.wait_until(lambda: succeeded(drain[0]), "the released run to finish during the grace period", first)
    try:
        code = first.process.wait(timeout=WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker-1 did not exit after its grace period:\n{first.log_tail()}")
    log = first.log()
    assert code == 0, log
    assert "draining 2 run(s)" in log
    assert f"handed off 1 run(s) to their queues: {drain[1].workflow_id}" in log
    assert "Worker 'worker-1': stopped" in log

    open_gate(run, "p-drain2")
    run.wait_until(lambda: succeeded(drain[1]), "worker-2 to finish the handed-off run", second)
    assert [run.status(handle.workflow_id).executor_id for handle in drain] == ["worker-1", "worker-2"]
    assert drain[1].result_sync().output == "done: held p-drain2"
    assert held(run, "p-drain1") == ["worker-1"]
    assert held(run, "p-drain2") == ["worker-1", "worker-2"]  # a plain tool cut short runs again (concepts.md)
    # Every run sent each model request once: the handed-off run's first request was replayed from its record.
    stats = run.server.stats()
    assert [(turn.received, turn.completed) for turn in stats.values()] == [(len(started), len(started))] * 2

    second.terminate()
    assert second.process.wait(timeout=WAIT_SECONDS) == 0, second.log_tail()
    assert "draining 0 run(s)" in second.log()


# --- Start-up errors (no database is touched: they fail before) ------------------------------------------------

BROKEN_MODULE = 'raise RuntimeError("OPENAI_API_KEY is not set")\n'
CONFIGURING_MODULE = (
    'from dbos import DBOS\n\nDBOS(config={"name": "mine", "system_database_url": "sqlite:///x.sqlite"})\n'
)


@pytest.mark.parametrize(
    ("case", "module", "args", "env", "expected"),
    [
        ("no executor id", "fleet_agents", [], {}, ["--executor-id", "DBOS_PAI_EXECUTOR_ID"]),
        (
            "no version",
            "fleet_agents",
            ["--executor-id", "w1"],
            {},
            ["--app-version", "DBOS_PAI_APP_VERSION"],
        ),
        (
            "bad queue spec",
            "fleet_agents",
            ["--queue", "runs:x"],
            {"DBOS_PAI_EXECUTOR_ID": "w1", "DBOS_PAI_APP_VERSION": "v1"},
            ["Bad queue spec 'runs:x'", "'x' is not a whole number", "NAME[:WORKER_CONCURRENCY]"],
        ),
        (
            "bad rate",
            "fleet_agents",
            ["--queue", "runs:4,rate=50"],
            {"DBOS_PAI_EXECUTOR_ID": "w1", "DBOS_PAI_APP_VERSION": "v1"},
            ["Bad queue spec 'runs:4,rate=50'", "LIMIT/SECONDS"],
        ),
        (
            "missing module",
            "no_such_agents",
            ["--executor-id", "w1", "--app-version", "v1"],
            {},
            ["Cannot import module 'no_such_agents'", "no module named 'no_such_agents'"],
        ),
        (
            "module fails",
            "broken_agents",
            ["--executor-id", "w1", "--app-version", "v1"],
            {},
            ["Cannot import module 'broken_agents'", "RuntimeError: OPENAI_API_KEY is not set", "line 1"],
        ),
        (
            "module configures DBOS",
            "configuring_agents",
            ["--executor-id", "w1", "--app-version", "v1"],
            {},
            ["DBOS was already configured", "by module 'configuring_agents'"],
        ),
    ],
)
def test_worker_command_start_up_errors(
    tmp_path: Path, case: str, module: str, args: list[str], env: dict[str, str], expected: list[str]
) -> None:
    """Each error exits with status 2 and a message naming what is wrong (the flag and its variable, the spec, the
    module and its error). The modules of the last cases are found in the working directory, as `python -m` does."""
    (tmp_path / "broken_agents.py").write_text(BROKEN_MODULE)
    (tmp_path / "configuring_agents.py").write_text(CONFIGURING_MODULE)
    env = clean_env(**env, FLEET_OPENAI_BASE_URL="http://127.0.0.1:9/v1", FLEET_WORKDIR=str(tmp_path))
    if module == "fleet_agents":
        env["PYTHONPATH"] = str(CRASH_DIR)
    queue = [] if "--queue" in args else ["--queue", "runs:4"]
    command = [str(COMMAND), "worker", module, "--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}", *queue, *args]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=WAIT_SECONDS)
    message = " ".join(result.stderr.split())
    assert result.returncode == 2, (case, result.stdout, result.stderr)
    for text in expected:
        assert text in message, (case, message)
    assert "Traceback" not in result.stderr


# --- Queue specs (in this process) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("runs", QueueSpec("runs")),
        ("runs:4", QueueSpec("runs", worker_concurrency=4)),
        (
            "runs:4,global=20,rate=50/60,poll=0.5",
            QueueSpec(
                "runs", worker_concurrency=4, global_concurrency=20, rate_limit=(50, 60.0), polling_interval_sec=0.5
            ),
        ),
        (" runs , worker=2 , rate=1/0.5s ", QueueSpec("runs", worker_concurrency=2, rate_limit=(1, 0.5))),
    ],
)
def test_queue_specs(text: str, expected: QueueSpec) -> None:
    spec = parse_queue_spec(text)
    assert spec == expected
    assert parse_queue_spec(spec.describe()) == spec


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the queue name is missing"),
        (":4", "the queue name is missing"),
        ("runs:", "nothing follows ':'"),
        ("runs:0", "the worker concurrency must be a whole number of at least 1, not 0"),
        ("runs:4,global=2", "the worker concurrency (4) exceeds the global concurrency (2)"),
        ("runs,rate=50", "rate='50' must be LIMIT/SECONDS"),
        ("runs,rate=50/0", "the rate period must be a positive number of seconds"),
        ("runs,poll=fast", "poll 'fast' is not a number of seconds"),
        ("runs,burst=3", "unknown option 'burst'"),
        ("runs:4,worker=2", "'worker' is given twice"),
        ("run s", "the queue name 'run s'"),
        ("_dbos_internal", "names starting with '_dbos_' belong to DBOS's internal queues"),
    ],
)
def test_bad_queue_specs(text: str, problem: str) -> None:
    with pytest.raises(WorkerConfigError) as error:
        parse_queue_spec(text)
    message = str(error.value)
    assert message.startswith(f"Bad queue spec {text!r}: {problem}")
    assert "NAME[:WORKER_CONCURRENCY][,global=N][,rate=LIMIT/SECONDS][,poll=SECONDS]" in message
