"""Failover without Conductor (fleet.py), with real worker processes on one PostgreSQL database.

Workers are `failover_worker.py` processes: `FleetMember` heartbeats, the queue `fleet_runs`, the agent
`fleet_agent` talking to the scripted server (which logs every request with the sending worker) and recording its
durable tool calls in `tools.log`. Runs are started with `start_run` from the test process, which does not define the
agent. What is checked is what a user pays for: no recorded model request is sent again, no durable tool repeats,
and every run finishes once.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from crash_harness import CrashRun, WorkerProcess
from tcp_proxy import TcpProxy

from dbos_pydantic_ai import approve, list_pending_approvals, start_run
from dbos_pydantic_ai._fleet_tables import DEAD, FleetTables

pytestmark = [
    pytest.mark.crash,
    pytest.mark.timeout(400),
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),  # a fleet shares one PostgreSQL database
]

FAILOVER_WORKER = Path(__file__).with_name("failover_worker.py")
AGENT = "fleet_agent"  # failover_worker.AGENT_NAME
APPROVER = "fleet_approver"  # failover_worker.APPROVER_NAME
QUEUE = "fleet_runs"  # failover_worker.QUEUE
MODEL_STEP = f"{AGENT}__model.request"
TOOL_STEP = f"{AGENT}__tool.record_step"
DEAD_AFTER = 6.0  # seconds: well above the scheduling stalls of a loaded 2-core machine
FINISHED = {"SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"}

FIVE_REQUESTS = [{"tool_calls": [{"name": "record_step", "args": {"n": turn}}]} for turn in range(4)] + [
    {"text": "done: {tool_result}"}
]


def launch(
    run: CrashRun, executor_id: str, *args: str, log_name: str | None = None, database_url: str | None = None
) -> WorkerProcess:
    worker = WorkerProcess(
        [
            *("--executor-id", executor_id, "--database-url", database_url or run.database_url),
            *("--port", str(run.server.port), "--workdir", str(run.workdir), "--dead-after", str(DEAD_AFTER), *args),
        ],
        run.workdir / f"{log_name or executor_id}.log",
        run.workdir,
        script=FAILOVER_WORKER,
    )
    run.workers.append(worker)
    return worker


def wait_ready(run: CrashRun, workers: dict[str, WorkerProcess]) -> None:
    run.wait_until(
        lambda: all((run.workdir / f"ready-{name}").exists() for name in workers),
        f"{', '.join(workers)} to serve the queue",
        *workers.values(),
    )


def statuses(run: CrashRun, ids: list[str]) -> dict[str, object]:
    return {status.workflow_id: status for status in run.client.list_workflows(workflow_ids=ids, load_input=False)}


def recorded(run: CrashRun, workflow_id: str) -> Counter[str]:
    """How many steps of each name the run has recorded."""
    return Counter(step["function_name"] for step in run.client.list_workflow_steps(workflow_id, load_output=False))


def fleet_rows(database_url: str) -> tuple[list[sa.Row], list[sa.Row]]:
    tables = FleetTables("dbos")
    engine = sa.create_engine(sa.make_url(database_url).set(drivername="postgresql+psycopg"))
    try:
        with engine.connect() as connection:
            return (
                list(connection.execute(sa.select(tables.workers))),
                list(connection.execute(sa.select(tables.takeovers))),
            )
    finally:
        engine.dispose()


def test_sigkill_one_of_three_workers(crash_run: Callable[..., CrashRun]) -> None:
    """3 workers, 30 queued runs of 5 model requests and 4 durable tool calls; one worker is SIGKILLed mid-way.

    All 30 complete exactly once; a model request or tool call that was recorded when the worker died is not done
    again (only one in flight at the kill may be); one surviving worker takes over all of the dead worker's runs.
    """
    # Slow enough answers (each run takes 5 s or more) that a busy test process, whose status polls can take
    # seconds, still sees worker-2 mid-way: with 0.25 s, CI's loaded suite saw all 30 runs finish between two polls.
    run = crash_run("failover", "async", FIVE_REQUESTS, latency_seconds=1.0)
    workers = {name: launch(run, name) for name in ("worker-1", "worker-2", "worker-3")}
    wait_ready(run, workers)

    prompts = [f"run-{index:02d}" for index in range(30)]
    ids = [start_run(AGENT, prompt, database_url=run.database_url, queue=QUEUE).workflow_id for prompt in prompts]
    prompt_of = dict(zip(ids, prompts, strict=True))

    seen: Counter[tuple[str, str | None]] = Counter()

    def victim_busy() -> bool:
        found = statuses(run, ids).values()
        seen.clear()
        seen.update((s.status, s.executor_id) for s in found)  # type: ignore[attr-defined]
        done = sum(1 for status in found if status.status == "SUCCESS")  # type: ignore[attr-defined]
        busy = sum(1 for s in found if s.status == "PENDING" and s.executor_id == "worker-2")  # type: ignore[attr-defined]
        return done >= 5 and busy >= 2

    try:
        run.wait_until(victim_busy, "worker-2 to be mid-way through runs", *workers.values())
    except pytest.fail.Exception as timed_out:  # say where the runs were: (status, executor) -> count
        raise AssertionError(f"{timed_out}\nruns by (status, executor): {dict(seen)}") from None
    workers["worker-2"].kill()
    killed_at = time.time()
    orphaned = [
        status.workflow_id
        for status in statuses(run, ids).values()
        if status.status == "PENDING" and status.executor_id == "worker-2"  # type: ignore[attr-defined]
    ]
    recorded_at_kill = {workflow_id: recorded(run, workflow_id) for workflow_id in ids}
    assert orphaned

    survivors = [workers["worker-1"], workers["worker-3"]]
    run.wait_until(
        lambda: all(status.status in FINISHED for status in statuses(run, ids).values()),  # type: ignore[attr-defined]
        "all 30 runs to finish",
        *survivors,
    )
    final = statuses(run, ids)
    assert {status.status for status in final.values()} == {"SUCCESS"}  # type: ignore[attr-defined]
    for workflow_id in orphaned:
        assert final[workflow_id].executor_id in {"worker-1", "worker-3"}  # type: ignore[attr-defined]
    last_finished = max(final[workflow_id].updated_at for workflow_id in orphaned) / 1000  # type: ignore[attr-defined]
    elapsed = last_finished - killed_at
    print(f"failover: dead_after {DEAD_AFTER} s; SIGKILL to the last taken-over run done: {elapsed:.1f} s")

    # Model requests: one send per (run, turn), except a request that was in flight when worker-2 died.
    sends = Counter((request.prompt, request.turn) for request in run.server.requests())
    for workflow_id, prompt in prompt_of.items():
        recorded_turns = recorded_at_kill[workflow_id][MODEL_STEP]
        for turn in range(5):
            expected = 1 if turn < recorded_turns or workflow_id not in orphaned else (1, 2)
            assert sends[(prompt, turn)] in ((expected,) if isinstance(expected, int) else expected), (prompt, turn)
        assert recorded(run, workflow_id)[MODEL_STEP] == 5
    resent = sum(count - 1 for count in sends.values())
    assert resent <= len(orphaned)

    # Durable tool calls: recorded ones are never repeated.
    calls = Counter(tuple(line.split()[1:]) for line in run.lines("tools.log"))
    for workflow_id, prompt in prompt_of.items():
        recorded_tools = recorded_at_kill[workflow_id][TOOL_STEP]
        for n in range(4):
            count = calls[(prompt, str(n))]
            assert count == 1 if n < recorded_tools or workflow_id not in orphaned else count in (1, 2), (prompt, n)

    # One survivor took over all of worker-2's runs; the fleet tables say who and which.
    worker_rows, takeover_rows = fleet_rows(run.database_url)
    dead = next(row for row in worker_rows if row.executor_id == "worker-2")
    assert dead.state == DEAD
    assert dead.taken_over_by in {"worker-1", "worker-3"}
    assert {row.workflow_id for row in takeover_rows} == set(orphaned)
    assert {(row.from_executor_id, row.by_executor_id) for row in takeover_rows} == {("worker-2", dead.taken_over_by)}
    logs = {name: workers[name].log_path.read_text() for name in ("worker-1", "worker-3")}
    assert [name for name, log in logs.items() if "took over" in log] == [dead.taken_over_by]
    assert all(row.state == "alive" for row in worker_rows if row.executor_id != "worker-2")

    # worker-2 comes back (same id, as a restarted pod would): it takes its id again and redoes nothing.
    requests_before, tool_calls_before = len(run.server.requests()), len(run.lines("tools.log"))
    back = launch(run, "worker-2", log_name="worker-2-back")
    run.wait_until(lambda: len(run.lines("ready-worker-2")) == 2, "worker-2 to come back", back)
    time.sleep(DEAD_AFTER)  # time enough for a recovery to re-run anything, were it going to
    assert (len(run.server.requests()), len(run.lines("tools.log"))) == (requests_before, tool_calls_before)
    worker_rows, _ = fleet_rows(run.database_url)
    back_row = next(row for row in worker_rows if row.executor_id == "worker-2")
    assert (back_row.state, back_row.taken_over_by) == ("alive", None)
    assert back_row.incarnation != dead.incarnation


GATED = [
    {"tool_calls": [{"name": "record_step", "args": {"n": 0}}]},
    {"tool_calls": [{"name": "wait_gate", "args": {}}]},
    {"text": "done: {tool_result}"},
]


def test_paused_worker_is_fenced(crash_run: Callable[..., CrashRun]) -> None:
    """A worker paused (SIGSTOP) past `dead_after` is taken over; when it continues (SIGCONT) it sends no request,
    records nothing, and exits (status 3) instead of running the steps its successor owns.

    Its 4 runs sit in the plain tool `wait_gate` when it is paused. It is continued while its successor's requests
    for the next turn are in flight (1 s each), so nothing is recorded yet for that turn: without the lease each old
    run thread would go straight on and send that request again. Its `on_fenced` waits 3 s before exiting, so the
    steps must be held, not merely outrun by the exit.
    """
    run = crash_run("paused", "async", GATED, latency_seconds=1.0)
    worker_a = launch(run, "worker-a", "--fenced-exit-delay", "3")
    wait_ready(run, {"worker-a": worker_a})
    prompts = [f"paused-{index}" for index in range(4)]
    ids = [start_run(AGENT, prompt, database_url=run.database_url, queue=QUEUE).workflow_id for prompt in prompts]
    run.wait_until(lambda: len(run.lines("gate.log")) == 4, "worker-a's 4 runs to wait at the gate", worker_a)

    def successor_mid_request() -> bool:
        return sum(1 for r in run.server.requests() if r.executor == "worker-b" and r.turn == 2) == 4

    os.killpg(worker_a.pid, signal.SIGSTOP)
    try:
        (run.workdir / "gate").touch()
        worker_b = launch(run, "worker-b")
        run.wait_until(successor_mid_request, "worker-b to take over and send the next requests", worker_b)
    finally:
        continued_at = time.time()
        os.killpg(worker_a.pid, signal.SIGCONT)

    code = worker_a.process.wait(timeout=90)
    assert code == 3, worker_a.log_tail()
    assert "declared dead" in worker_a.log_path.read_text()
    run.wait_until(
        lambda: all(status.status in FINISHED for status in statuses(run, ids).values()),  # type: ignore[attr-defined]
        "worker-b to finish the paused worker's runs",
        worker_b,
    )
    final = statuses(run, ids)
    assert {status.status for status in final.values()} == {"SUCCESS"}  # type: ignore[attr-defined]
    assert {status.executor_id for status in final.values()} == {"worker-b"}  # type: ignore[attr-defined]

    late = [r for r in run.server.requests() if r.executor == "worker-a" and r.at >= continued_at]
    assert late == []
    sends = Counter((request.prompt, request.turn) for request in run.server.requests())
    for prompt in prompts:
        assert sends[(prompt, 0)] == 1  # recorded by worker-a before the pause: replayed, not re-sent
        assert sends[(prompt, 1)] == 1
        assert sends[(prompt, 2)] == 1  # sent by worker-b only
    calls = Counter(tuple(line.split()[1:]) for line in run.lines("tools.log"))
    assert all(calls[(prompt, "0")] == 1 for prompt in prompts)


def test_second_process_with_the_same_id_waits(crash_run: Callable[..., CrashRun]) -> None:
    """Two processes given one executor id never run at once: the second waits in `claim()` while the first
    heartbeats, and takes the id (recovering its runs, as a restarted StatefulSet pod would) once the first died."""
    run = crash_run("same-id", "async", GATED)
    first = launch(run, "worker-x")
    run.wait_until(lambda: len(run.lines("ready-worker-x")) == 1, "the first worker-x to serve", first)
    prompts = [f"same-id-{index}" for index in range(2)]
    ids = [start_run(AGENT, prompt, database_url=run.database_url, queue=QUEUE).workflow_id for prompt in prompts]
    run.wait_until(lambda: len(run.lines("gate.log")) == 2, "worker-x's runs to wait at the gate", first)

    second = launch(run, "worker-x", log_name="worker-x-second")
    run.wait_until(lambda: "held by a live process" in _log(run, "worker-x-second"), "the second to wait", second)
    assert len(run.lines("ready-worker-x")) == 1  # it has not launched DBOS

    first.kill()
    (run.workdir / "gate").touch()
    run.wait_until(
        lambda: all(status.status in FINISHED for status in statuses(run, ids).values()),  # type: ignore[attr-defined]
        "the second worker-x to recover the runs",
        second,
    )
    assert {status.status for status in statuses(run, ids).values()} == {"SUCCESS"}  # type: ignore[attr-defined]
    assert len(run.lines("ready-worker-x")) == 2
    sends = Counter((request.prompt, request.turn) for request in run.server.requests())
    assert all(sends[(prompt, 0)] == 1 and sends[(prompt, 1)] == 1 for prompt in prompts)
    worker_rows, takeover_rows = fleet_rows(run.database_url)
    assert [(row.executor_id, row.state) for row in worker_rows] == [("worker-x", "alive")]
    assert takeover_rows == []  # recovered by its own executor id, not taken over


def _log(run: CrashRun, name: str) -> str:
    path = run.workdir / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_database_outage_longer_than_dead_after_declares_nobody_dead(crash_run: Callable[..., CrashRun]) -> None:
    """The database goes away from every worker for longer than `dead_after`, then comes back.

    Every worker's heartbeat is then equally old; the first worker whose heartbeat goes through again must not
    declare the others dead (it waits until it has itself been heard from for `dead_after`). Nobody is taken over,
    nobody exits, and the runs in flight finish once.
    """
    run = crash_run("outage", "async", FIVE_REQUESTS, latency_seconds=0.5)
    proxy = TcpProxy(sa.make_url(run.database_url).port or 5432)
    proxied = sa.make_url(run.database_url).set(port=proxy.port).render_as_string(hide_password=False)
    try:
        workers = {name: launch(run, name, database_url=proxied) for name in ("worker-1", "worker-2")}
        wait_ready(run, workers)
        prompts = [f"outage-{index}" for index in range(6)]
        ids = [start_run(AGENT, prompt, database_url=run.database_url, queue=QUEUE).workflow_id for prompt in prompts]
        run.wait_until(lambda: len(run.server.requests()) >= 6, "runs to be under way", *workers.values())

        proxy.cut()
        time.sleep(DEAD_AFTER + 3)  # the outage itself: longer than dead_after
        proxy.restore()

        run.wait_until(
            lambda: all(status.status in FINISHED for status in statuses(run, ids).values()),  # type: ignore[attr-defined]
            "the runs to finish after the outage",
            *workers.values(),
        )
        time.sleep(DEAD_AFTER)  # long enough for a wrongful takeover to happen, were it going to
        assert {status.status for status in statuses(run, ids).values()} == {"SUCCESS"}  # type: ignore[attr-defined]
        assert not any(worker.exited() for worker in workers.values())
        worker_rows, takeover_rows = fleet_rows(run.database_url)
        assert sorted((row.executor_id, row.state) for row in worker_rows) == [
            ("worker-1", "alive"),
            ("worker-2", "alive"),
        ]
        assert takeover_rows == []
        sends = Counter((request.prompt, request.turn) for request in run.server.requests())
        assert sorted(set(sends.values())) == [1], sends
    finally:
        proxy.close()


APPROVAL = [{"tool_calls": [{"name": "refund", "args": {"amount": 10}}]}, {"text": "done: {tool_result}"}]


def test_parked_runs_of_a_dead_worker_are_taken_over(crash_run: Callable[..., CrashRun]) -> None:
    """Runs waiting for approval park (they leave their worker's memory, still PENDING on it). One worker is
    SIGKILLed with its runs parked: the survivor takes them over, replays them to their wait (no model request is
    sent again), and they park there; approved, every run finishes once, its refund run exactly once."""
    run = crash_run("failover-parked", "async", APPROVAL)
    workers = {name: launch(run, name) for name in ("worker-1", "worker-2")}
    wait_ready(run, workers)

    prompts = [f"refund-{index}" for index in range(6)]
    ids = [start_run(APPROVER, prompt, database_url=run.database_url, queue=QUEUE).workflow_id for prompt in prompts]
    prompt_of = dict(zip(ids, prompts, strict=True))
    run.wait_until(
        lambda: len(list_pending_approvals(database_url=run.database_url)) == len(ids),
        "every run to wait for its approval",
        *workers.values(),
    )
    time.sleep(1.5)  # past park_after: every run has parked
    on_victim = [
        status.workflow_id
        for status in statuses(run, ids).values()
        if status.executor_id == "worker-2"  # type: ignore[attr-defined]
    ]
    assert on_victim, "the queue gave worker-2 no run"
    assert {status.status for status in statuses(run, ids).values()} == {"PENDING"}  # type: ignore[attr-defined]
    workers["worker-2"].kill()

    run.wait_until(
        lambda: all(s.executor_id == "worker-1" for s in statuses(run, ids).values()),  # type: ignore[attr-defined]
        "worker-1 to take over worker-2's runs",
        workers["worker-1"],
    )
    for pending in list_pending_approvals(database_url=run.database_url):
        approve(
            pending.workflow_id, pending.tool_call_id, args_digest=pending.args_digest, database_url=run.database_url
        )
    run.wait_until(
        lambda: all(s.status in FINISHED for s in statuses(run, ids).values()),  # type: ignore[attr-defined]
        "every run to finish",
        workers["worker-1"],
    )

    final = statuses(run, ids)
    assert {status.status for status in final.values()} == {"SUCCESS"}  # type: ignore[attr-defined]
    sends = Counter((request.prompt, request.turn) for request in run.server.requests())
    assert sends == Counter({(prompt, turn): 1 for prompt in prompts for turn in (0, 1)})  # nothing sent twice
    refunds = Counter(line.split()[1] for line in run.lines("tools.log"))
    assert refunds == Counter({prompt: 1 for prompt in prompt_of.values()})  # each approved refund ran once
    _, takeover_rows = fleet_rows(run.database_url)
    assert {row.workflow_id for row in takeover_rows} == set(on_victim)
