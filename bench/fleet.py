"""The fleet benchmark of issue 12: throughput with 1-3 workers, failover time, live output delay to another process.

Every worker is a real process (`bench/fleet_worker.py worker`: a `FleetMember` on PostgreSQL, DBOS queues) and every
model request goes to a scripted OpenAI-compatible server on 127.0.0.1 that answers after a fixed latency, in a thread
of this process. Three measurements:

1. **Throughput**, on PostgreSQL: RUNS runs of 5 model requests each (4 plain tool calls, then the answer; 200 ms per
   request) with 1, 2 and 3 worker processes, each listening with the same `worker_concurrency`. *Ours*: runs enqueued
   with `start_run(...)`, each run the agent's own `bench_fleet.run` workflow. *Recipe*: docs/configuration.md's
   user workflow `answer` that awaits `durable.run(prompt)`, enqueued with `DBOSClient.enqueue` (two workflows per
   run). The runs are enqueued while the queue's `worker_concurrency` is 0 (DBOS re-reads it at every poll), then it
   is set back and the clock starts: runs/s = RUNS / (last run finished - gate opened). Variants alternate (ABBA);
   CPU of the workers, of PostgreSQL and of the machine is sampled from /proc during each measurement.
2. **Failover**, on PostgreSQL: 3 workers, 3 x 4 runs in flight, SIGKILL one mid-way; the time from the kill to
   the last of its runs finished, for dead_after = 4 and 10 s, split into detection (the worker is declared dead),
   takeover (its runs re-enqueued, the takeovers table's `taken_at`), the first step re-run, and the end.
3. **Live output delay**: one run at a time with `stream_events=True`; the server streams the answer in paced chunks
   and notes when it wrote each (after flushing it to the socket); a reader process (`fleet_worker.py reader`)
   follows the run with `read_events()` and notes when each text delta arrives. Delay per chunk, p50/p99, on SQLite
   and PostgreSQL, for the reader's settings listed in READERS.

    python bench/fleet.py                 # everything, about 25 minutes; writes bench/results/fleet.json
    python bench/fleet.py --quick         # a smoke run (under a minute or two), not a measurement
    python bench/fleet.py --parts latency --profile ...   # one part; py-spy the 1-worker throughput run

Other sessions share this 2-core machine: the script waits (up to --max-wait seconds) for the 1-minute load average to
drop below --max-load before measuring, and records the load before and after each part.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dbos import DBOSClient, EnqueueOptions
from rich.console import Console
from rich.table import Table

from dbos_pydantic_ai import start_run
from dbos_pydantic_ai.names import model_request_step

sys.path.insert(0, str(Path(__file__).parent))
import fleet_worker as fw
from profile_pyspy import BUCKETS, classify

RESULTS = Path(__file__).parent / "results" / "fleet.json"
WORKER_SCRIPT = Path(__file__).with_name("fleet_worker.py")
POSTGRES_SERVER_URL = os.environ.get("DBOS_PAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
MODEL_LATENCY = 0.2
REQUESTS_PER_RUN = 5
MODEL_STEP = model_request_step(fw.AGENT_NAME)
STREAM_CHUNKS = 40
STREAM_PACE = 0.02  # seconds between two streamed chunks, like a provider's tokens
READY_SECONDS = 120.0
console = Console(width=200)

READERS: dict[str, dict[str, list[str]]] = {
    "sqlite": {
        "read_events, polling 0.1 s (default)": [],
        "read_events, polling 0.01 s": ["--polling-interval", "0.01"],
    },
    "postgresql": {
        "read_events, polling 0.1 s (default)": [],
        "read_events, polling 0.01 s": ["--polling-interval", "0.01"],
        "read_events, client with LISTEN/NOTIFY": ["--listen-notify"],
    },
}


# --- The scripted model server -------------------------------------------------------------------


class ModelServer:
    """An OpenAI-compatible chat completions server answering from a script, after `latency` seconds.

    A conversation's turn is the number of assistant messages in it. A throughput run (any prompt) calls `lookup`
    at turns 0-3 and answers at turn 4. A streamed run (prompt `stream-...`) calls `lookup` at turn 0, then streams
    STREAM_CHUNKS chunks `NNN ` every STREAM_PACE seconds and notes when each was flushed (`chunks[prompt]`).
    """

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.chunks: dict[str, list[tuple[int, float]]] = {}
        self.requests = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 128
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="model-server", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def chunk_written(self, prompt: str, seq: int) -> None:
        at = time.time()
        with self._lock:
            self.chunks.setdefault(prompt, []).append((seq, at))

    def counted(self) -> None:
        with self._lock:
            self.requests += 1


def _first_prompt(messages: list[dict[str, Any]]) -> str:
    return next((str(m.get("content")) for m in messages if m.get("role") == "user"), "")


def _handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            messages: list[dict[str, Any]] = body.get("messages", [])
            turn = sum(1 for m in messages if m.get("role") == "assistant")
            prompt = _first_prompt(messages)
            server.counted()
            time.sleep(server.latency)
            streamed_run = prompt.startswith("stream-")
            last_turn = 1 if streamed_run else REQUESTS_PER_RUN - 1
            call = None if turn >= last_turn else {"name": "lookup", "arguments": json.dumps({"n": turn})}
            try:
                if body.get("stream"):
                    self._stream(prompt, call, streamed_run)
                else:
                    self._json(call)
            except (BrokenPipeError, ConnectionResetError):
                return

        def _json(self, call: dict[str, str] | None) -> None:
            message: dict[str, Any] = {"role": "assistant", "content": None if call else "done"}
            if call:
                message["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:8]}", "type": "function", "function": call}]
            data = json.dumps(
                {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": "gpt-bench",
                    "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, prompt: str, call: dict[str, str] | None, paced: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

            def send(delta: dict[str, Any], finish: str | None = None) -> None:
                chunk = {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": "gpt-bench",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            send({"role": "assistant", "content": ""})
            if call is not None:
                tool_call = {"index": 0, "id": f"call_{uuid.uuid4().hex[:8]}", "type": "function", "function": call}
                send({"tool_calls": [tool_call]})
                send({}, "tool_calls")
            elif not paced:
                send({"content": "done"})
                send({}, "stop")
            else:
                for seq in range(STREAM_CHUNKS):
                    server.chunk_written(prompt, seq)  # the moment it is handed to the socket
                    send({"content": f"{seq:03d} "})
                    time.sleep(STREAM_PACE)
                send({}, "stop")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


# --- Databases, processes, CPU -------------------------------------------------------------------


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database (synchronous_commit=on), dropped afterwards."""
    name = f"bench_fleet_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        connection.execute(sa.text(f'ALTER DATABASE "{name}" SET synchronous_commit = on'))
    try:
        yield f"{POSTGRES_SERVER_URL}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def engine_for(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return sa.create_engine(parsed)


def schema_prefix(url: str) -> str:
    return "" if url.startswith("sqlite") else "dbos."


@dataclass
class Worker:
    executor_id: str
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_path: Path

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])


STARTUP_RETRIES: list[str] = []
"""Fleets relaunched because a worker was declared dead while it launched (see `fleet`)."""


def _launch(url: str, port: int, count: int, workdir: Path, args: tuple[str, ...]) -> list[Worker]:
    workers: list[Worker] = []
    for index in range(1, count + 1):
        executor_id = f"w{index}"
        ready = workdir / f"ready-{executor_id}-{uuid.uuid4().hex[:6]}"
        log_path = workdir / f"{executor_id}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    str(WORKER_SCRIPT),
                    "worker",
                    "--executor-id",
                    executor_id,
                    "--database-url",
                    url,
                    "--port",
                    str(port),
                    "--ready-file",
                    str(ready),
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        workers.append(Worker(executor_id, process, ready, log_path))
    return workers


@contextlib.contextmanager
def fleet(url: str, port: int, count: int, workdir: Path, *args: str) -> Iterator[list[Worker]]:
    """`count` worker processes `w1..wN` on `url`, ready; all killed on the way out.

    A worker is heartbeating only once DBOS has launched: when launching takes longer than `dead_after` (a loaded
    machine), a peer already up declares it dead and it exits fenced (status 3). The fleet is then launched again
    (at most 3 times), and the retry is recorded in STARTUP_RETRIES.
    """
    workers: list[Worker] = []
    try:
        for attempt in range(3):
            workers = _launch(url, port, count, workdir, args)
            deadline = time.monotonic() + READY_SECONDS
            fenced = None
            while fenced is None and not all(worker.ready_file.exists() for worker in workers):
                for worker in workers:
                    code = worker.process.poll()
                    if code == 3 and attempt < 2:
                        fenced = worker
                    elif code is not None:
                        raise RuntimeError(f"worker {worker.executor_id} exited ({code}):\n{worker.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError("workers not ready in time")
                time.sleep(0.1)
            if fenced is None:
                break
            STARTUP_RETRIES.append(f"{fenced.executor_id} declared dead while launching ({count} workers, {args})")
            console.print(f"[yellow]{STARTUP_RETRIES[-1]}: launching the fleet again[/yellow]")
            for worker in workers:
                worker.kill()
        yield workers
    finally:
        for worker in workers:
            worker.kill()


_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> tuple[float, float] | None:
    """(CPU seconds used, start time in seconds since boot) of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS, int(fields[19]) / _TICKS


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / _TICKS, sum(values[:8]) / _TICKS


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def _postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
    return pids


class CpuSampler:
    """CPU used during a window by the workers, this process, PostgreSQL's backends of the bench database, every
    postgres process, and the whole machine; sampled every 0.25 s so that processes that end are counted too."""

    def __init__(self, url: str, worker_pids: dict[str, int]) -> None:
        self.worker_pids = worker_pids
        self.database = sa.make_url(url).database if not url.startswith("sqlite") else None
        self._engine = engine_for(f"{POSTGRES_SERVER_URL}/postgres") if self.database else None
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._db_backends: set[int] = set()
        self._postgres: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._start_wall = time.monotonic()
        self._start_uptime = _uptime()
        self._machine_start = _machine_cpu()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._seconds = time.monotonic() - self._start_wall
        self._machine_end = _machine_cpu()
        if self._engine is not None:
            self._engine.dispose()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def _sample(self) -> None:
        postgres = _postgres_pids()
        self._postgres |= set(postgres)
        pids = set(self.worker_pids.values()) | {os.getpid()} | set(postgres)
        if self._engine is not None:
            with contextlib.suppress(Exception), self._engine.connect() as connection:
                rows = connection.execute(
                    sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :db"), {"db": self.database}
                )
                self._db_backends |= {int(row.pid) for row in rows}
        for pid in pids:
            found = _proc_cpu(pid)
            if found is None:
                continue
            used, started = found
            if pid not in self._first:
                self._first[pid] = 0.0 if started >= self._start_uptime else used
            self._last[pid] = used

    def _used(self, pids: Iterator[int] | set[int] | list[int]) -> float:
        return sum(self._last.get(pid, 0.0) - self._first.get(pid, 0.0) for pid in pids)

    def result(self) -> dict[str, Any]:
        """Per cent of one core, averaged over the window."""
        seconds = self._seconds

        def pct(value: float) -> float:
            return round(100 * value / seconds, 1)

        busy = self._machine_end[0] - self._machine_start[0]
        total = self._machine_end[1] - self._machine_start[1]
        return {
            "seconds": round(seconds, 2),
            "workers_pct_of_core": {name: pct(self._used([pid])) for name, pid in self.worker_pids.items()},
            "workers_total_pct": pct(self._used(list(self.worker_pids.values()))),
            "bench_process_pct": pct(self._used([os.getpid()])),
            "postgres_bench_db_backends_pct": pct(self._used(self._db_backends)),
            "postgres_all_pct": pct(self._used(self._postgres)),
            "machine_busy_pct_of_all_cores": round(100 * busy / total, 1) if total else 0.0,
        }


# --- 1. Throughput -------------------------------------------------------------------------------


def set_gate(client: DBOSClient, queue_name: str, concurrency: int) -> None:
    """Set the queue's worker_concurrency in the database (the workers re-read it at every poll)."""
    queue = client.retrieve_queue(queue_name)
    assert queue is not None, f"queue {queue_name} is not registered"
    queue.set_worker_concurrency(concurrency)


def enqueue_ours(url: str, ids: list[str]) -> None:
    def one(workflow_id: str) -> None:
        start_run(
            fw.AGENT_NAME,
            f"q {workflow_id}",
            database_url=url,
            queue=fw.QUEUE_OURS,
            workflow_id=workflow_id,
            app_version=fw.APP_VERSION,
        )

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, ids))


def enqueue_recipe(client: DBOSClient, ids: list[str]) -> None:
    for workflow_id in ids:
        options: EnqueueOptions = {
            "queue_name": fw.QUEUE_RECIPE,
            "workflow_name": fw.RECIPE_WORKFLOW,
            "workflow_id": workflow_id,
            "app_version": fw.APP_VERSION,
        }
        client.enqueue(options, f"q {workflow_id}")


def wait_finished(engine: sa.Engine, url: str, ids: list[str], timeout: float) -> dict[str, Any]:
    """Wait until every run in `ids` ended; their statuses and times (ms) from workflow_status."""
    query = sa.text(
        f"SELECT workflow_uuid, status, started_at_epoch_ms, updated_at, executor_id "
        f"FROM {schema_prefix(url)}workflow_status WHERE workflow_uuid IN :ids"
    ).bindparams(sa.bindparam("ids", expanding=True))
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as connection:
            rows = list(connection.execute(query, {"ids": ids}))
        ended = [row for row in rows if row.status not in ("ENQUEUED", "PENDING", "DELAYED")]
        if len(ended) == len(ids):
            failed = [row for row in ended if row.status != "SUCCESS"]
            if failed:
                raise RuntimeError(f"{len(failed)} runs did not succeed, e.g. {failed[0]}")
            return {row.workflow_uuid: row for row in rows}
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(ended)} of {len(ids)} runs ended in {timeout:.0f} s")
        time.sleep(0.2)


def measure_throughput(
    url: str, variant: str, runs: int, concurrency: int, workers: list[Worker], label: str, profile: Path | None
) -> dict[str, Any]:
    queue = fw.QUEUE_OURS if variant == "ours" else fw.QUEUE_RECIPE
    ids = [f"{label}-{variant}-{index:04d}" for index in range(runs)]
    client = DBOSClient(system_database_url=url)
    engine = engine_for(url)
    try:
        set_gate(client, queue, 0)
        time.sleep(0.5)  # every worker has polled once since: nothing is dequeued from here on
        started = time.perf_counter()
        if variant == "ours":
            enqueue_ours(url, ids)
        else:
            enqueue_recipe(client, ids)
        enqueue_seconds = time.perf_counter() - started
        spy = None
        if profile is not None:
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(workers[0].process.pid),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--output",
                    str(profile),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        with CpuSampler(url, {w.executor_id: w.process.pid for w in workers}) as sampler:
            opened = time.time()
            set_gate(client, queue, concurrency)
            rows = wait_finished(engine, url, ids, timeout=60 + runs * 2.0)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        last = max(row.updated_at for row in rows.values()) / 1000
        durations = [(row.updated_at - row.started_at_epoch_ms) / 1000 for row in rows.values()]
        per_worker: dict[str, int] = {}
        for row in rows.values():
            per_worker[row.executor_id] = per_worker.get(row.executor_id, 0) + 1
        cpu = sampler.result()
        per_run = {
            key: round(cpu[key] / 100 * cpu["seconds"] * 1000 / runs, 1)
            for key in ("workers_total_pct", "postgres_all_pct", "postgres_bench_db_backends_pct")
        }
        return {
            "runs_per_second": round(runs / (last - opened), 2),
            "cpu_ms_per_run": {
                "workers": per_run["workers_total_pct"],
                "postgres_all": per_run["postgres_all_pct"],
                "postgres_bench_db_backends": per_run["postgres_bench_db_backends_pct"],
            },
            "seconds": round(last - opened, 2),
            "run_seconds_median": round(statistics.median(durations), 3),
            "enqueue_runs_per_second": round(runs / enqueue_seconds, 1),
            "runs_per_worker": dict(sorted(per_worker.items())),
            "cpu": cpu,
        }
    finally:
        client.destroy()
        engine.dispose()


def throughput(
    port: int,
    workdir: Path,
    worker_counts: list[int],
    runs: int,
    repeats: int,
    concurrency: int,
    profile: bool,
    warm_up: bool = True,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in worker_counts:
        with (
            postgres_database() as url,
            fleet(url, port, count, workdir, "--concurrency", str(concurrency), "--dead-after", "30") as workers,
        ):
            if warm_up:
                for variant in ("ours", "recipe"):  # imports, connections, caches
                    measure_throughput(url, variant, concurrency * count, concurrency, workers, f"warm{count}", None)
            samples: dict[str, list[dict[str, Any]]] = {"ours": [], "recipe": []}
            for repeat in range(repeats):
                order = ("ours", "recipe") if repeat % 2 == 0 else ("recipe", "ours")
                for variant in order:
                    spy_file = None
                    if profile and count == 1 and repeat == 0:
                        spy_file = Path(tempfile.gettempdir()) / f"pyspy-fleet-{variant}.txt"
                    sample = measure_throughput(
                        url, variant, runs, concurrency, workers, f"n{count}r{repeat}", spy_file
                    )
                    if spy_file is not None:
                        sample["pyspy_raw"] = str(spy_file)
                        buckets = classify(spy_file)
                        busy = sum(buckets.values()) or 1
                        sample["pyspy_busy_share_pct"] = {b: round(100 * buckets[b] / busy, 1) for b in BUCKETS}
                        console.print(f"[dim]py-spy, worker w1, {variant}: {sample['pyspy_busy_share_pct']}[/dim]")
                    samples[variant].append(sample)
                    cpu = sample["cpu"]
                    console.print(
                        f"[dim]{count} worker(s), {variant}, repeat {repeat + 1}: {sample['runs_per_second']} runs/s "
                        f"(workers {cpu['workers_pct_of_core']} % of a core, "
                        f"postgres {cpu['postgres_bench_db_backends_pct']} %, "
                        f"machine {cpu['machine_busy_pct_of_all_cores']} % of {os.cpu_count()} cores)[/dim]"
                    )
        results[str(count)] = {variant: summarize_throughput(values) for variant, values in samples.items()}
        results[str(count)]["ratio_ours_over_recipe"] = round(
            results[str(count)]["ours"]["runs_per_second_median"]
            / results[str(count)]["recipe"]["runs_per_second_median"],
            3,
        )
    for count in worker_counts:
        for variant in ("ours", "recipe"):
            base = results[str(worker_counts[0])][variant]["runs_per_second_median"]
            results[str(count)][variant]["scaling_vs_first"] = round(
                results[str(count)][variant]["runs_per_second_median"] / base, 2
            )
    return results


def summarize_throughput(samples: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [s["runs_per_second"] for s in samples]

    def median_of(key: str) -> float:
        return round(statistics.median(s["cpu"][key] for s in samples), 1)

    workers = samples[0]["cpu"]["workers_pct_of_core"].keys()
    return {
        "runs_per_second_median": round(statistics.median(rates), 2),
        "runs_per_second_all": rates,
        "run_seconds_median": round(statistics.median(s["run_seconds_median"] for s in samples), 3),
        "enqueue_runs_per_second_median": round(statistics.median(s["enqueue_runs_per_second"] for s in samples), 1),
        "cpu_ms_per_run_median": {
            key: round(statistics.median(s["cpu_ms_per_run"][key] for s in samples), 1)
            for key in samples[0]["cpu_ms_per_run"]
        },
        "cpu_median": {
            "workers_pct_of_core": {
                w: round(statistics.median(s["cpu"]["workers_pct_of_core"][w] for s in samples), 1) for w in workers
            },
            "workers_total_pct": median_of("workers_total_pct"),
            "postgres_bench_db_backends_pct": median_of("postgres_bench_db_backends_pct"),
            "postgres_all_pct": median_of("postgres_all_pct"),
            "bench_process_pct": median_of("bench_process_pct"),
            "machine_busy_pct_of_all_cores": median_of("machine_busy_pct_of_all_cores"),
        },
        "samples": samples,
    }


# --- 2. Failover ---------------------------------------------------------------------------------


def measure_failover(port: int, workdir: Path, dead_after: float, concurrency: int) -> dict[str, Any]:
    """3 workers with `concurrency` runs each; SIGKILL w2 once its runs are mid-way; time the takeover."""
    with (
        postgres_database() as url,
        fleet(url, port, 3, workdir, "--concurrency", str(concurrency), "--dead-after", str(dead_after)) as workers,
    ):
        client = DBOSClient(system_database_url=url)
        engine = engine_for(url)
        try:
            ids = [f"fo-{index:03d}" for index in range(3 * concurrency)]
            set_gate(client, fw.QUEUE_OURS, 0)
            time.sleep(0.5)
            enqueue_ours(url, ids)
            set_gate(client, fw.QUEUE_OURS, concurrency)
            victim = workers[1]
            steps = sa.text(
                "SELECT s.workflow_uuid, COUNT(o.function_id) AS steps FROM dbos.workflow_status s "
                "LEFT JOIN dbos.operation_outputs o ON o.workflow_uuid = s.workflow_uuid AND o.function_name = :step "
                "WHERE s.status = 'PENDING' AND s.executor_id = :victim GROUP BY s.workflow_uuid"
            )
            deadline = time.monotonic() + 60
            while True:  # mid-way: the victim holds its full share of runs, each with 2 model requests recorded
                with engine.connect() as connection:
                    busy = list(connection.execute(steps, {"victim": victim.executor_id, "step": MODEL_STEP}))
                if len(busy) >= concurrency and all(row.steps >= 2 for row in busy):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the victim never had {concurrency} runs mid-way: {busy}")
                time.sleep(0.02)
            os.killpg(victim.process.pid, signal.SIGKILL)
            killed_at = time.time()
            victim.process.wait(timeout=30)
            with engine.connect() as connection:
                orphans = [
                    row.workflow_uuid
                    for row in connection.execute(
                        sa.text(
                            "SELECT workflow_uuid FROM dbos.workflow_status "
                            "WHERE status = 'PENDING' AND executor_id = :v"
                        ),
                        {"v": victim.executor_id},
                    )
                ]
            rows = wait_finished(engine, url, orphans, timeout=dead_after + 120)
            wait_finished(engine, url, ids, timeout=120)
            with engine.connect() as connection:
                worker = connection.execute(
                    sa.text(
                        "SELECT heartbeat_at, taken_over_at, taken_over_by, state FROM dbos.dbos_pai_workers "
                        "WHERE executor_id = :v"
                    ),
                    {"v": victim.executor_id},
                ).one()
                taken = [
                    row.taken_at
                    for row in connection.execute(
                        sa.text("SELECT taken_at FROM dbos.dbos_pai_takeovers WHERE from_executor_id = :v"),
                        {"v": victim.executor_id},
                    )
                ]
                first_rerun_ms = connection.execute(
                    sa.text(
                        "SELECT MIN(started_at_epoch_ms) FROM dbos.operation_outputs "
                        "WHERE workflow_uuid IN :ids AND started_at_epoch_ms >= :after"
                    ).bindparams(sa.bindparam("ids", expanding=True)),
                    {"ids": orphans, "after": int(min(taken) * 1000)},
                ).scalar()
        finally:
            client.destroy()
            engine.dispose()
    last_finished = max(row.updated_at for row in rows.values()) / 1000
    taken_at = max(taken)
    first_rerun = first_rerun_ms / 1000 if first_rerun_ms else taken_at
    result = {
        "dead_after": dead_after,
        "heartbeat_interval": round(dead_after / 5, 2),
        "orphaned_runs": len(orphans),
        "taken_over_runs": len(taken),
        "taken_over_by": worker.taken_over_by,
        "kill_to_last_finished": round(last_finished - killed_at, 2),
        "last_heartbeat_before_kill": round(killed_at - worker.heartbeat_at, 2),
        "detection": round(worker.taken_over_at - killed_at, 2),
        "takeover": round(taken_at - worker.taken_over_at, 3),
        "to_first_rerun_step": round(first_rerun - taken_at, 2),
        "rerun_to_last_finished": round(last_finished - taken_at, 2),
    }
    console.print(f"[dim]failover, dead_after {dead_after} s: {result}[/dim]")
    return result


def failover(port: int, workdir: Path, dead_afters: list[float], repeats: int, concurrency: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for dead_after in dead_afters:
        samples = [measure_failover(port, workdir, dead_after, concurrency) for _ in range(repeats)]
        keys = ("kill_to_last_finished", "detection", "takeover", "to_first_rerun_step", "rerun_to_last_finished")
        results[f"{dead_after:g}"] = {
            "median": {key: round(statistics.median(s[key] for s in samples), 2) for key in keys},
            "max": {key: max(s[key] for s in samples) for key in keys},
            "target_seconds": dead_after + 5,
            "samples": samples,
        }
    return results


# --- 3. Live output delay ------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def measure_delay(
    url: str, server: ModelServer, workdir: Path, chunk_log: Path, reader_args: list[str], runs: int
) -> dict[str, Any]:
    """`runs` streamed runs one after another, followed by one reader process; per-chunk delays in ms.

    Each chunk has three times: the server flushed it, the worker received it (`chunk_log`), the reader got the
    event holding it. The first run only warms the reader and the worker up.
    """
    reader = subprocess.Popen(
        [sys.executable, str(WORKER_SCRIPT), "reader", "--database-url", url, *reader_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(workdir / "reader.log", "ab"),  # noqa: SIM115
        text=True,
        start_new_session=True,
    )
    assert reader.stdin is not None and reader.stdout is not None
    try:
        if reader.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the reader did not start: {(workdir / 'reader.log').read_text()[-2000:]}")
        total: list[float] = []
        to_worker: list[float] = []
        worker_to_reader: list[float] = []
        missed = 0
        for index in range(runs + 1):
            prompt = f"stream-{uuid.uuid4().hex[:8]}"
            handle = start_run(
                fw.AGENT_NAME,
                prompt,
                database_url=url,
                queue=fw.QUEUE_OURS,
                stream_events=True,
                app_version=fw.APP_VERSION,
            )
            reader.stdin.write(handle.workflow_id + "\n")
            reader.stdin.flush()
            line = reader.stdout.readline()
            if not line:
                raise RuntimeError(f"the reader died: {(workdir / 'reader.log').read_text()[-2000:]}")
            report = json.loads(line)
            written = dict(server.chunks.get(prompt, []))
            if len(written) != STREAM_CHUNKS:
                raise RuntimeError(f"the server wrote {len(written)} chunks for {prompt}")
            arrived: dict[int, float] = {}
            for entry in chunk_log.read_text().splitlines():
                name, seq, at = entry.split()
                if name == prompt:
                    arrived.setdefault(int(seq), float(at))
            got: dict[int, float] = {}
            for received_at, text in report["received"]:
                for seq in re.findall(r"(\d{3}) ", text):
                    got.setdefault(int(seq), received_at)
            if index == 0:
                continue
            for seq, at in written.items():
                if seq not in got or report["first_event_at"] is None or report["first_event_at"] > at:
                    missed += 1
                    continue
                total.append((got[seq] - at) * 1000)
                if seq in arrived:
                    to_worker.append((arrived[seq] - at) * 1000)
                    worker_to_reader.append((got[seq] - arrived[seq]) * 1000)

        def spread(values: list[float]) -> dict[str, float]:
            return {
                "p50_ms": round(percentile(values, 50), 1),
                "p90_ms": round(percentile(values, 90), 1),
                "p99_ms": round(percentile(values, 99), 1),
                "max_ms": round(max(values), 1),
            }

        return {
            "runs": runs,
            "chunks": len(total),
            "chunks_missed": missed,
            **spread(total),
            "model_to_worker": spread(to_worker),
            "worker_to_reader": spread(worker_to_reader),
        }
    finally:
        reader.stdin.close()
        try:
            reader.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(reader.pid, signal.SIGKILL)
            reader.wait()


def live_delay(
    server: ModelServer, workdir: Path, runs: int, databases: list[str], readers: int | None = None
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for database in databases:
        if database == "sqlite":
            context: contextlib.AbstractContextManager[str] = contextlib.nullcontext(
                f"sqlite:///{workdir / f'delay-{uuid.uuid4().hex[:6]}.sqlite'}"
            )
        else:
            context = postgres_database()
        chunk_log = workdir / f"chunks-{uuid.uuid4().hex[:6]}.log"
        chunk_log.touch()
        with (
            context as url,
            fleet(url, server.port, 1, workdir, "--concurrency", "4", "--chunk-log", str(chunk_log)) as _workers,
        ):
            results[database] = {}
            for name, reader_args in list(READERS[database].items())[:readers]:
                results[database][name] = measure_delay(url, server, workdir, chunk_log, reader_args, runs)
                console.print(f"[dim]live output, {database}, {name}: {results[database][name]}[/dim]")
    return results


# --- Machine, load, reporting --------------------------------------------------------------------


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def wait_for_quiet(max_load: float, max_wait: float) -> dict[str, Any]:
    """Wait until the 1-minute load average is below `max_load` (at most `max_wait` seconds)."""
    started = time.monotonic()
    while os.getloadavg()[0] >= max_load and time.monotonic() - started < max_wait:
        time.sleep(10)
    waited = time.monotonic() - started
    if waited > 1:
        console.print(f"[dim]waited {waited:.0f} s for the load average to drop: now {load_average()}[/dim]")
    return {"waited_seconds": round(waited), "load_at_start": load_average()}


def machine() -> dict[str, Any]:
    import sqlite3

    admin = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres")
    with admin.connect() as connection:
        postgres = connection.execute(sa.text("SHOW server_version")).scalar()
    admin.dispose()
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "postgres": postgres,
        "packages": {p: version(p) for p in ("dbos", "pydantic-ai-slim", "dbos-pydantic-ai", "sqlalchemy")},
        "git": git_state(),
    }


def git_state() -> str:
    """The commit measured, and whether src/ had uncommitted changes."""
    root = Path(__file__).parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes in src/" if dirty.stdout.strip() else "")


def print_tables(report: dict[str, Any]) -> None:
    if "throughput" in report:
        config = report["config"]["throughput"]
        table = Table(
            title=f"Throughput, PostgreSQL: {config['runs']} runs x {REQUESTS_PER_RUN} requests of "
            f"{MODEL_LATENCY * 1000:.0f} ms, worker_concurrency {config['worker_concurrency']}, "
            f"median of {config['repeats']}"
        )
        for column in (
            "workers",
            "ours runs/s",
            "recipe runs/s",
            "ours/recipe",
            "scaling ours",
            "scaling recipe",
            "run s (ours/recipe)",
            "CPU ms/run workers",
            "CPU ms/run postgres (bench db)",
            "CPU workers % core",
            "CPU postgres (bench db) %",
            "machine % of 2 cores",
        ):
            table.add_column(column, justify="right")
        for count, entry in report["throughput"].items():
            ours, recipe = entry["ours"], entry["recipe"]
            table.add_row(
                count,
                f"{ours['runs_per_second_median']}",
                f"{recipe['runs_per_second_median']}",
                f"{entry['ratio_ours_over_recipe']}",
                f"{ours['scaling_vs_first']}",
                f"{recipe['scaling_vs_first']}",
                f"{ours['run_seconds_median']} / {recipe['run_seconds_median']}",
                f"{ours['cpu_ms_per_run_median']['workers']} / {recipe['cpu_ms_per_run_median']['workers']}",
                f"{ours['cpu_ms_per_run_median']['postgres_bench_db_backends']} / "
                f"{recipe['cpu_ms_per_run_median']['postgres_bench_db_backends']}",
                f"{ours['cpu_median']['workers_total_pct']} / {recipe['cpu_median']['workers_total_pct']}",
                f"{ours['cpu_median']['postgres_bench_db_backends_pct']} / "
                f"{recipe['cpu_median']['postgres_bench_db_backends_pct']}",
                f"{ours['cpu_median']['machine_busy_pct_of_all_cores']} / "
                f"{recipe['cpu_median']['machine_busy_pct_of_all_cores']}",
            )
        console.print(table)
    if "failover" in report:
        table = Table(title=f"Failover: SIGKILL 1 of 3 workers, median of {report['config']['failover']['repeats']}")
        for column in (
            "dead_after s",
            "kill -> last run done",
            "target",
            "detection",
            "takeover",
            "-> first step",
            "taken_at -> last done",
            "max kill -> done",
        ):
            table.add_column(column, justify="right")
        for dead_after, entry in report["failover"].items():
            median = entry["median"]
            table.add_row(
                dead_after,
                f"{median['kill_to_last_finished']}",
                f"{entry['target_seconds']:g}",
                f"{median['detection']}",
                f"{median['takeover']}",
                f"{median['to_first_rerun_step']}",
                f"{median['rerun_to_last_finished']}",
                f"{entry['max']['kill_to_last_finished']}",
            )
        console.print(table)
    if "live_delay" in report:
        table = Table(title="Live output delay, model server writes a chunk -> reader process receives it (ms)")
        columns = (
            "database",
            "reader",
            "chunks",
            "p50",
            "p90",
            "p99",
            "max",
            "model->worker p50",
            "worker->reader p50/p99",
        )
        for column in columns:
            table.add_column(column, justify="right" if column not in ("database", "reader") else "left")
        for database, readers in report["live_delay"].items():
            for name, entry in readers.items():
                table.add_row(
                    database,
                    name,
                    str(entry["chunks"]),
                    f"{entry['p50_ms']}",
                    f"{entry['p90_ms']}",
                    f"{entry['p99_ms']}",
                    f"{entry['max_ms']}",
                    f"{entry['model_to_worker']['p50_ms']}",
                    f"{entry['worker_to_reader']['p50_ms']} / {entry['worker_to_reader']['p99_ms']}",
                )
        console.print(table)


def write_report(report: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["throughput", "failover", "latency"],
        choices=["throughput", "failover", "latency"],
    )
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--concurrency", type=int, default=8, help="worker_concurrency of each worker")
    parser.add_argument("--failover-repeats", type=int, default=3)
    parser.add_argument("--dead-after", type=float, nargs="+", default=[4.0, 10.0])
    parser.add_argument("--delay-runs", type=int, default=15, help="streamed runs per reader setting")
    parser.add_argument("--profile", action="store_true", help="py-spy the 1-worker throughput measurement")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--max-wait", type=float, default=1200)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.repeats, args.workers, args.failover_repeats = 16, 1, [1], 1
        args.dead_after, args.delay_runs, args.max_wait = [2.0], 1, 0
    output = args.output or (Path(tempfile.gettempdir()) / "fleet-quick.json" if args.quick else RESULTS)

    report: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "config": {
            "model_latency_seconds": MODEL_LATENCY,
            "requests_per_run": REQUESTS_PER_RUN,
            "queue_polling_interval_seconds": 0.2,
            "throughput": {
                "runs": args.runs,
                "repeats": args.repeats,
                "worker_counts": args.workers,
                "worker_concurrency": args.concurrency,
                "dead_after_seconds": 30,
            },
            "failover": {"repeats": args.failover_repeats, "runs_in_flight_per_worker": 4},
            "live_delay": {"runs": args.delay_runs, "chunks_per_run": STREAM_CHUNKS, "pace_ms": STREAM_PACE * 1000},
        },
        "load": {},
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the workers and drop the databases on the way out
    server = ModelServer(MODEL_LATENCY)
    workdir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    console.print(f"[dim]logs in {workdir}[/dim]")
    try:
        parts: dict[str, Callable[[], Any]] = {
            "throughput": lambda: throughput(
                server.port,
                workdir,
                args.workers,
                args.runs,
                args.repeats,
                args.concurrency,
                args.profile,
                warm_up=not args.quick,
            ),
            "failover": lambda: failover(server.port, workdir, args.dead_after, args.failover_repeats, 4),
            "latency": lambda: live_delay(
                server, workdir, args.delay_runs, ["sqlite", "postgresql"], 1 if args.quick else None
            ),
        }
        for part in args.parts:
            load = wait_for_quiet(args.max_load, args.max_wait)
            key = "live_delay" if part == "latency" else part
            report[key] = parts[part]()
            load["load_at_end"] = load_average()
            report["load"][key] = load
            write_report(report, output)  # after each part: a later one may fail
    finally:
        server.close()
    report["fleet_startup_retries"] = STARTUP_RETRIES
    print_tables(report)
    console.print(f"load averages (1, 5, 15 min) per part: {report['load']}")
    write_report(report, output)
    console.print(f"results written to {output}")


if __name__ == "__main__":
    main()
