"""Runs waiting for a human, at scale: what N runs waiting for approval cost one worker, and how fast they are decided.

    python bench/waiting.py                          # PostgreSQL at 1,000 / 5,000 / 10,000 runs, SQLite at 1,000
    python bench/waiting.py --quick                  # a smoke check (200 runs, 5 s idle), not a measurement
    python bench/waiting.py --runs 1000 --database postgresql [--profile]

A worker process (this file, `worker` sub-command) launches DBOS and starts N runs of an agent with
`approvals="wait"` whose model (a FunctionModel) asks for one tool call needing approval. Once every run waits, it
reports its memory (RSS, from /proc), its threads (by name) and, with `--profile`, where the memory goes
(tracemalloc, by file and line, and live objects by type). This process then measures the worker's idle CPU over 30 s
(from /proc/PID/stat and /proc/PID/task/*/stat, by thread), and the CPU of the PostgreSQL backends serving it, then
decides every call from here (a second process, with only the database URL): the module's `approve()` (a connection
per call) for a sample, then `ApprovalInbox.approve()` from 1 thread and from several. It records decisions per
second, the latency of one `approve()` (p50/p99), and the time until every run has finished (each run then carries
out its tool and makes its second model request). Results go to bench/results/waiting.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa

RESULTS = Path(__file__).parent / "results" / "waiting.json"
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
AGENT_NAME = "waiting"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- Shared helpers --------------------------------------------------------------------------------------------------


def _schema(database_url: str) -> str:
    return "dbos." if database_url.startswith("postgresql") else ""


def _engine(database_url: str) -> sa.Engine:
    if database_url.startswith("postgresql"):
        return sa.create_engine(sa.make_url(database_url).set(drivername="postgresql+psycopg"), pool_size=2)
    return sa.create_engine(database_url)


def _count(engine: sa.Engine, sql: str, **params: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text(sql), params).scalar_one())


def _proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads of a process."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            fields[key] = int(value.split()[0])
    return fields


def _cpu_ticks(stat_path: str) -> int:
    """utime + stime of a process or a thread, in clock ticks."""
    text = Path(stat_path).read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def _thread_group(name: str) -> str:
    """A thread's name without its serial number: 'dbos-executor-_12' -> 'dbos-executor'."""
    name = re.sub(r" \(.*\)$", "", name)
    return re.sub(r"[-_ ]*\d+$", "", name).rstrip("-_") or name


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(_percentile(values, 0.5) * 1000, 2),
        "p99_ms": round(_percentile(values, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
    }


# --- The worker process ----------------------------------------------------------------------------------------------


def worker_main(args: argparse.Namespace) -> None:
    """Start `args.runs` waiting runs, report once all wait, serve until told to exit on stdin."""
    if args.profile:
        tracemalloc.start(args.profile_frames)
        _trace_thread_creation()
    from dbos import DBOS
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from dbos_pydantic_ai import DBOSAgent, dbos_config
    from dbos_pydantic_ai.names import APPROVALS_EVENT

    counters = collections.Counter[str]()
    lock = threading.Lock()

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        returns = (
            [part for part in last.parts if isinstance(part, ToolReturnPart)] if isinstance(last, ModelRequest) else []
        )
        with lock:
            counters["second_request" if returns else "first_request"] += 1
        if returns:
            return ModelResponse(parts=[TextPart(f"done: {returns[0].content}")])
        return ModelResponse(parts=[ToolCallPart("refund", {"amount": 250, "order": "A1"}, tool_call_id="call-1")])

    agent: Agent[None, str] = Agent(FunctionModel(model), name=AGENT_NAME)

    @agent.tool_plain(requires_approval=True)
    def refund(amount: int, order: str) -> str:
        """Refund an order; a human must approve."""
        with lock:
            counters["tool"] += 1
        return f"refunded {amount} on {order}"

    park_after = None if args.park_after == "none" else float(args.park_after)
    durable = DBOSAgent(agent, approvals="wait", park_after=park_after)
    DBOS(
        config=dbos_config(
            "bench_waiting", database_url=args.database_url, executor_id="bench-waiting", application_version="w"
        )
    )
    DBOS.launch()
    if args.dbos_recheck_seconds is not None:
        # Experiment only (a private DBOS attribute): how often each waiting recv re-checks the database for a
        # message its listener may have missed (DBOS 3.4: every 60 s per waiting run, on a worker thread).
        from dbos._dbos import _get_dbos_instance

        _get_dbos_instance()._sys_db._notification_fallback_polling_interval = args.dbos_recheck_seconds
    queue = None
    if args.start_mode == "queue":
        queue = "waiting"
        DBOS.register_queue(queue)  # no limits; DBOS's default polling interval (1 s)
    engine = _engine(args.database_url)
    events_sql = f"SELECT count(*) FROM {_schema(args.database_url)}workflow_events WHERE key = :key"

    async def start_all() -> float:
        # Warm up with one run decided here, so the baseline holds everything a first run imports and caches.
        from dbos_pydantic_ai import ApprovalInbox

        handle = await durable.start("warm-up", workflow_id="warm-up")
        while _count(engine, events_sql, key=APPROVALS_EVENT) < 1:
            await asyncio.sleep(0.05)
        inbox = ApprovalInbox()
        for call in inbox.list_pending():
            inbox.approve(call.workflow_id, call.tool_call_id, args_digest=call.args_digest)
        await handle.result()
        inbox.close()
        return 0.0

    asyncio.run(start_all())
    gc.collect()
    baseline = _proc_status()
    baseline_threads = len(threading.enumerate())
    counters.clear()
    profile_baseline = _profile_baseline() if args.profile else None

    # Start the runs, at most `start_concurrency` of them at once not yet at their model request.
    started_at = time.perf_counter()

    def start_on_dbos_loop(prompt: str, workflow_id: str) -> None:
        # Experiment only (private DBOS API): what `start()` would cost if it started the run as a task on DBOS's
        # event loop (as a dequeued or recovered run is), instead of with `DBOS.start_workflow`, whose pool thread
        # blocks for the run's whole life. See "Runs waiting for a human" in bench/README.md.
        from dbos import SetWorkflowID
        from dbos._dbos import _get_dbos_instance

        with SetWorkflowID(workflow_id):
            start = DBOS.start_workflow_async(durable._run_workflow, prompt)
            _get_dbos_instance()._background_event_loop.submit_coroutine(start)

    async def start_runs() -> None:
        pending_starts = asyncio.Semaphore(args.start_concurrency)

        async def one(index: int) -> None:
            async with pending_starts:
                if args.start_mode == "dbos-loop":
                    await asyncio.to_thread(start_on_dbos_loop, f"refund order {index}", f"wait-{index:05d}")
                else:
                    await durable.start(f"refund order {index}", workflow_id=f"wait-{index:05d}", queue=queue)
                while index - counters["first_request"] >= args.start_concurrency:
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(one(index) for index in range(args.runs)))

    asyncio.run(start_runs())
    started_s = time.perf_counter() - started_at
    while _count(engine, events_sql, key=APPROVALS_EVENT) < args.runs + 1:
        time.sleep(0.2)
    all_waiting_s = time.perf_counter() - started_at
    if park_after is not None:  # every run parked: none left executing
        from dbos_pydantic_ai._compat import active_workflow_ids
        from dbos_pydantic_ai._parking import parked_run_ids

        while len(parked_run_ids()) < args.runs or active_workflow_ids():
            time.sleep(0.2)
    all_parked_s = time.perf_counter() - started_at
    time.sleep(args.settle)  # let the last runs enter DBOS.recv
    gc.collect()
    status = _proc_status()
    threads = threading.enumerate()
    report: dict[str, Any] = {
        "pid": os.getpid(),
        "runs": args.runs,
        "start_concurrency": args.start_concurrency,
        "start_mode": args.start_mode,
        "start_s": round(started_s, 1),
        "all_waiting_s": round(all_waiting_s, 1),
        "park_after": park_after,
        "all_parked_s": round(all_parked_s, 1) if park_after is not None else None,
        "baseline_rss_mb": round(baseline["VmRSS"] / 1024, 1),
        "rss_mb": round(status["VmRSS"] / 1024, 1),
        "peak_rss_mb": round(status["VmHWM"] / 1024, 1),
        "per_run_kb": round((status["VmRSS"] - baseline["VmRSS"]) / args.runs, 1),
        "os_threads_baseline": baseline["Threads"],
        "os_threads": status["Threads"],
        "python_threads_baseline": baseline_threads,
        "threads_by_name": dict(collections.Counter(_thread_group(t.name) for t in threads).most_common()),
        "native_ids": {str(t.native_id): _thread_group(t.name) for t in threads if t.native_id is not None},
        "first_requests": counters["first_request"],
    }
    if args.profile:
        assert profile_baseline is not None
        report["profile"] = _profile(args.runs, profile_baseline)
    print("READY " + json.dumps(report), flush=True)

    # Serve until the bench says every run finished (or gave up), then report what ran.
    sys.stdin.readline()
    final = _proc_status()
    print(
        "DONE "
        + json.dumps(
            {
                "tool_executions": counters["tool"],
                "second_requests": counters["second_request"],
                "rss_mb": round(final["VmRSS"] / 1024, 1),
                "peak_rss_mb": round(final["VmHWM"] / 1024, 1),
                "os_threads": final["Threads"],
            }
        ),
        flush=True,
    )
    DBOS.destroy(workflow_completion_timeout_sec=0)
    os._exit(0)


_thread_creators = collections.Counter[str]()


def _type_name(obj: object) -> str:
    module = type(obj).__dict__.get("__module__", None)
    return f"{module if isinstance(module, str) else '?'}.{type(obj).__qualname__}"


def _trace_thread_creation() -> None:
    """Profile only: count, by the call that submitted the work, each new thread a ThreadPoolExecutor starts."""
    import concurrent.futures.thread as cf_thread
    import traceback

    original = cf_thread.ThreadPoolExecutor._adjust_thread_count

    def adjust(self: Any) -> None:
        before = len(self._threads)
        original(self)
        if len(self._threads) > before:
            stack = traceback.extract_stack()[:-2]
            frames = [
                f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}"
                for f in stack
                if ("dbos" in f.filename or "pydantic_ai" in f.filename) and "_dbos.py" not in f.filename
            ]
            _thread_creators[" <- ".join(reversed(frames[-3:])) or "?"] += 1

    cf_thread.ThreadPoolExecutor._adjust_thread_count = adjust  # type: ignore[method-assign]


def _profile_baseline() -> tuple[tracemalloc.Snapshot, collections.Counter[str]]:
    """What the process holds before the runs start: the profile reports what the waiting runs add to it."""
    gc.collect()
    _thread_creators.clear()
    return tracemalloc.take_snapshot(), collections.Counter(_type_name(o) for o in gc.get_objects())


def _profile(runs: int, baseline: tuple[tracemalloc.Snapshot, collections.Counter[str]]) -> dict[str, Any]:
    """Where the memory of the waiting runs is: tracemalloc by line and by caller, live objects by type, tasks."""
    gc.collect()
    skip = ("tracemalloc.py", "<frozen importlib._bootstrap", "linecache.py", "traceback.py")
    before = baseline[0]
    snapshot = tracemalloc.take_snapshot()

    def where(filename: str) -> str:
        for marker in ("site-packages/", "python3.11/", "src/"):
            if marker in filename:
                return filename.split(marker, 1)[1]
        return filename

    def owner(filename: str) -> str:
        path = where(filename)
        return path.split("/", 1)[0] if "/" in path else path

    by_line = [s for s in snapshot.compare_to(before, "lineno") if not s.traceback[0].filename.endswith(skip)]
    added = sum(stat.size_diff for stat in by_line)
    by_owner = collections.Counter[str]()
    for stat in by_line:
        by_owner[owner(stat.traceback[0].filename)] += stat.size_diff
    lines = [
        {
            "where": f"{where(stat.traceback[0].filename)}:{stat.traceback[0].lineno}",
            "bytes_per_run": round(stat.size_diff / runs),
            "blocks_per_run": round(stat.count_diff / runs, 1),
        }
        for stat in by_line[:25]
    ]
    # The callers that hold the most: the first frame of each traceback in a library or in our code.
    callers = collections.Counter[str]()
    if tracemalloc.get_traceback_limit() > 1:
        for stat in snapshot.compare_to(before, "traceback")[:3000]:
            frame = next(
                (f for f in stat.traceback if "site-packages" in f.filename or "/src/" in f.filename),
                stat.traceback[0],
            )
            callers[f"{where(frame.filename)}:{frame.lineno}"] += stat.size_diff
    types = collections.Counter(_type_name(o) for o in gc.get_objects())
    types.subtract(baseline[1])
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]
    tasks = sum(len(asyncio.all_tasks(loop)) for loop in loops)
    return {
        "traced_added_mb": round(added / 1024 / 1024, 1),
        "traced_added_bytes_per_run": round(added / runs),
        "by_package_bytes_per_run": {k: round(v / runs) for k, v in by_owner.most_common(12)},
        "top_lines": lines,
        "top_callers_bytes_per_run": {k: round(v / runs) for k, v in callers.most_common(20)},
        "gc_objects_added_per_run": {k: round(v / runs, 1) for k, v in types.most_common(25)},
        "gc_objects_added_total_per_run": round(sum(v for v in types.values() if v > 0) / runs, 1),
        "asyncio_tasks": tasks,
        "running_loops": len(loops),
        "threads_started_by": dict(_thread_creators.most_common(12)),
    }


# --- This process: idle CPU and decisions ----------------------------------------------------------------------------


def _postgres_backends(engine: sa.Engine, database: str) -> list[int]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"),
            {"db": database},
        )
        return [int(row[0]) for row in rows]


def measure_idle(pid: int, native_ids: dict[str, str], seconds: float, backends: list[int]) -> dict[str, Any]:
    """The worker's CPU over `seconds` of waiting, by thread group; and the PostgreSQL backends' serving it."""

    def per_thread() -> dict[str, int]:
        ticks: dict[str, int] = {}
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                ticks[task.name] = _cpu_ticks(f"{task}/stat")
        return ticks

    def backend_ticks() -> int:
        total = 0
        for backend in backends:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                total += _cpu_ticks(f"/proc/{backend}/stat")
        return total

    load_before = os.getloadavg()
    process_before, threads_before, backends_before = _cpu_ticks(f"/proc/{pid}/stat"), per_thread(), backend_ticks()
    max_threads = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        time.sleep(1)
        max_threads = max(max_threads, _proc_status(pid)["Threads"])
    elapsed = time.monotonic() - start
    process_after, threads_after, backends_after = _cpu_ticks(f"/proc/{pid}/stat"), per_thread(), backend_ticks()
    by_group = collections.Counter[str]()
    for tid, ticks in threads_after.items():
        by_group[native_ids.get(tid, "other (not a Python thread)")] += ticks - threads_before.get(tid, 0)

    def percent(ticks: int) -> float:
        return round(100 * ticks / CLK_TCK / elapsed, 2)

    return {
        "seconds": round(elapsed, 1),
        "cpu_percent_of_a_core": percent(process_after - process_before),
        "cpu_percent_by_thread": {k: percent(v) for k, v in by_group.most_common() if v},
        "postgres_backends": len(backends),
        "postgres_backends_cpu_percent": percent(backends_after - backends_before) if backends else None,
        "max_os_threads": max_threads,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def decide_all(database_url: str, runs: int, sample: int, threads: int, worker_pid: int) -> dict[str, Any]:
    """Approve every pending call from this process: `approve()` for a sample, then an `ApprovalInbox`.

    The first phases run with the worker paused (SIGSTOP): the capacity of the deciding process alone, without the
    worker carrying out the decisions on the same two cores. The rest run with the worker going again.
    """
    from dbos_pydantic_ai import ApprovalInbox, approve

    result: dict[str, Any] = {}
    inbox = ApprovalInbox(database_url)
    start = time.perf_counter()
    pending = inbox.list_pending(agent_name=AGENT_NAME)
    result["list_pending_s"] = round(time.perf_counter() - start, 2)
    result["pending_listed"] = len(pending)
    assert len(pending) == runs, f"{len(pending)} pending calls listed, expected {runs}"
    calls = list(pending)

    def timed(decide: Any, call: Any) -> float:
        begin = time.perf_counter()
        decide(call.workflow_id, call.tool_call_id, args_digest=call.args_digest)
        return time.perf_counter() - begin

    def module_approve(workflow_id: str, tool_call_id: str, *, args_digest: str) -> None:
        approve(workflow_id, tool_call_id, args_digest=args_digest, database_url=database_url)

    paused_share = max(sample, runs // 5)
    phases: list[tuple[str, Any, int, int, bool]] = [
        ("approve() function, 1 thread", module_approve, 1, sample, True),
        ("ApprovalInbox.approve, 1 thread", inbox.approve, 1, sample * 2, True),
        (f"ApprovalInbox.approve, {threads} threads", inbox.approve, threads, paused_share, True),
        ("approve() function, 1 thread", module_approve, 1, sample, False),
        ("ApprovalInbox.approve, 1 thread", inbox.approve, 1, max(sample, runs // 5), False),
        (f"ApprovalInbox.approve, {threads} threads", inbox.approve, threads, len(calls), False),
    ]
    result["phases"] = []
    first_decision = resumed = time.monotonic()
    paused = False
    try:
        for name, decide, workers, count, pause in phases:
            batch, calls = calls[:count], calls[count:]
            if not batch:
                continue
            if pause != paused:
                os.kill(worker_pid, signal.SIGSTOP if pause else signal.SIGCONT)
                paused = pause
                if not pause:
                    resumed = time.monotonic()
            begin = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                latencies = list(pool.map(lambda call, d=decide: timed(d, call), batch))
            elapsed = time.perf_counter() - begin
            phase = {
                "name": name,
                "worker": "paused" if pause else "running",
                "threads": workers,
                "decisions": len(batch),
                "per_s": round(len(batch) / elapsed, 1),
            }
            phase.update(_ms(latencies))
            print(f"  {phase}", flush=True)
            result["phases"].append(phase)
    finally:
        if paused:
            os.kill(worker_pid, signal.SIGCONT)
    inbox.close()
    result["first_decision_monotonic"] = first_decision
    result["resumed_monotonic"] = resumed
    return result


def wait_finished(database_url: str, runs: int, since: float, timeout: float) -> dict[str, Any]:
    """Until every benchmark run is SUCCESS (or `timeout`): the time from the first decision."""
    engine = _engine(database_url)
    sql = (
        f"SELECT count(*) FROM {_schema(database_url)}workflow_status "
        "WHERE status = 'SUCCESS' AND workflow_uuid LIKE 'wait-%'"
    )
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = _count(engine, sql)
        if done >= runs:
            break
        time.sleep(0.5)
    engine.dispose()
    return {"finished": done, "all_finished_s_after_worker_resumed": round(time.monotonic() - since, 1)}


def one_configuration(database: str, runs: int, start_mode: str, args: argparse.Namespace) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    if database == "postgresql":
        db_name = f"dbos_pai_bench_wait_{runs}_{tag}"
        database_url = f"{POSTGRES}/{db_name}"
    else:
        db_name = ""
        database_url = f"sqlite:////tmp/bench-wait-{runs}-{tag}.sqlite"
    print(f"== {database}, {runs} runs, {start_mode} ({database_url})", flush=True)
    command = [
        sys.executable,
        __file__,
        "worker",
        "--database-url",
        database_url,
        "--runs",
        str(runs),
        "--start-concurrency",
        str(args.start_concurrency),
        "--settle",
        str(args.settle),
        "--start-mode",
        start_mode,
        "--park-after",
        args.park_after,
    ]
    if args.dbos_recheck_seconds is not None:
        command += ["--dbos-recheck-seconds", str(args.dbos_recheck_seconds)]
    if args.profile:
        command.append("--profile")
    worker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None and worker.stdin is not None
    report: dict[str, Any] | None = None
    for line in worker.stdout:
        if line.startswith("READY "):
            report = json.loads(line[len("READY ") :])
            break
        print("  worker: " + line.rstrip(), flush=True)
    if report is None:
        raise SystemExit(f"the worker exited with {worker.wait()} before its runs waited")
    native_ids = report.pop("native_ids")
    profile = report.pop("profile", None)
    print(f"  waiting: {report}", flush=True)
    result: dict[str, Any] = {"database": database, "start_mode": start_mode, **report}
    if args.dbos_recheck_seconds is not None:
        result["dbos_recheck_seconds"] = args.dbos_recheck_seconds
    admin = _engine(f"{POSTGRES}/postgres") if database == "postgresql" else None
    backends = _postgres_backends(admin, db_name) if admin is not None else []
    result["idle"] = measure_idle(report["pid"], native_ids, args.idle_seconds, backends)
    print(f"  idle: {result['idle']}", flush=True)
    if not args.no_decide:
        decisions = decide_all(database_url, runs, args.sample, args.decide_threads, report["pid"])
        decisions.pop("first_decision_monotonic")
        since = decisions.pop("resumed_monotonic")
        result["decisions"] = decisions
        result["completion"] = wait_finished(database_url, runs, since, timeout=max(300.0, runs / 5))
        print(f"  completion: {result['completion']}", flush=True)
    worker.stdin.write("exit\n")
    worker.stdin.flush()
    for line in worker.stdout:
        if line.startswith("DONE "):
            result["after"] = json.loads(line[len("DONE ") :])
            print(f"  after: {result['after']}", flush=True)
    worker.wait(timeout=120)
    if profile is not None:
        result["profile"] = profile
    if admin is not None:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(database_url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
    return result


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "?",
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    work = sub.add_parser("worker", help="internal: the worker process")
    work.add_argument("--database-url", required=True)
    work.add_argument("--runs", type=int, required=True)
    work.add_argument("--start-concurrency", type=int, default=50)
    work.add_argument("--settle", type=float, default=5.0)
    work.add_argument("--profile", action="store_true")
    work.add_argument("--profile-frames", type=int, default=1)
    work.add_argument("--start-mode", choices=("start", "queue", "dbos-loop"), default="start")
    work.add_argument("--dbos-recheck-seconds", type=float, default=None)
    work.add_argument("--park-after", default="none")
    parser.add_argument("--quick", action="store_true", help="200 runs per database, 5 s idle: a smoke check")
    parser.add_argument("--runs", type=int, action="append", help="run counts (repeatable); default 1000 5000 10000")
    parser.add_argument("--database", choices=("postgresql", "sqlite"), action="append")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--start-concurrency", type=int, default=50, help="runs started at once, not yet waiting")
    parser.add_argument(
        "--start-mode",
        choices=("start", "queue", "dbos-loop"),
        action="append",
        help="start: start() (DBOS.start_workflow); queue: start(queue=...), dequeued onto DBOS's event loop; "
        "dbos-loop: experiment, start_workflow_async on DBOS's event loop (default: start and queue)",
    )
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between all waiting and measuring")
    parser.add_argument("--sample", type=int, default=100, help="decisions made with the approve() function")
    parser.add_argument("--decide-threads", type=int, default=8)
    parser.add_argument("--no-decide", action="store_true", help="measure the wait only")
    parser.add_argument("--profile", action="store_true", help="tracemalloc in the worker (slower, more memory)")
    parser.add_argument(
        "--dbos-recheck-seconds",
        type=float,
        default=None,
        help="experiment: set DBOS's per-waiter database re-check interval (private; DBOS 3.4 uses 60 s)",
    )
    parser.add_argument(
        "--park-after",
        default="none",
        help="DBOSAgent(park_after=): seconds before a waiting run leaves memory, or 'none' (all stay in memory)",
    )
    parser.add_argument("--label", default=None, help="key of this result set in waiting.json (default: main)")
    args = parser.parse_args()
    if args.command == "worker":
        worker_main(args)
        return

    modes = args.start_mode or ["start", "queue"]
    if args.quick:
        plan = [(db, 200, mode) for db in (args.database or ["postgresql", "sqlite"]) for mode in modes]
        args.idle_seconds, args.settle, args.sample = 5.0, 1.0, 20
    elif args.runs or args.database:
        plan = [
            (db, n, mode) for db in (args.database or ["postgresql"]) for n in (args.runs or [1000]) for mode in modes
        ]
    else:
        plan = [("postgresql", n, mode) for n in (1000, 5000, 10000) for mode in modes]
        plan += [("sqlite", 1000, mode) for mode in modes]
    results = {"machine": machine(), "configurations": [one_configuration(db, n, m, args) for db, n, m in plan]}
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.quick:
        print(json.dumps(results, indent=2))
        return
    label = args.label or ("profile" if args.profile else "main")
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if label in existing:  # add to the set, replacing the same configurations measured before
        fresh = {(c["database"], c["runs"], c["start_mode"], c.get("park_after")) for c in results["configurations"]}
        kept = [
            c
            for c in existing[label]["configurations"]
            if (c["database"], c["runs"], c["start_mode"], c.get("park_after")) not in fresh
        ]
        results["configurations"] = kept + results["configurations"]
        results["machine"]["earlier_runs"] = existing[label]["machine"]
    existing[label] = results
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"results: {RESULTS} [{label}]")


if __name__ == "__main__":
    main()
