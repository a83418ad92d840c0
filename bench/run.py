"""Side-by-side benchmark: plain agent, dbos-pydantic-ai, pydantic-ai's own DBOS integration, bare DBOS.

One process, one database at a time (SQLite in WAL mode, then PostgreSQL with synchronous_commit=on),
every variant on the same database. The workload is an agent whose FunctionModel makes N model
requests, each but the last calling one plain tool. Variants run interleaved (A B C A B C ...) after
a warm-up; we report medians with min/max and derive the overhead per model request.

This is the only place in the repository that imports `pydantic_ai.durable_exec`: to measure it.

    python bench/run.py                 # both databases, default repeats
    python bench/run.py --quick         # fewer repeats, for a smoke check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
import uuid
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.durable_exec.dbos import DBOSAgent as CompetitorAgent
from pydantic_ai.durable_exec.dbos import DBOSDurability
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from rich.console import Console
from rich.table import Table

from dbos_pydantic_ai import DBOSAgent, dbos_config

RESULTS_DIR = Path(__file__).parent / "results"
POSTGRES_SERVER_URL = os.environ.get("DBOS_PAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
console = Console()


# --- The workload -------------------------------------------------------------------------------


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Answers after N requests (N is in the prompt, `n=N`); every earlier request calls `lookup`."""
    first = messages[0]
    assert isinstance(first, ModelRequest) and isinstance(first.parts[-1], UserPromptPart)
    n = int(str(first.parts[-1].content).removeprefix("n="))
    requests_so_far = sum(isinstance(m, ModelResponse) for m in messages) + 1
    if requests_so_far < n:
        return ModelResponse(parts=[ToolCallPart("lookup", {"key": requests_so_far})])
    return ModelResponse(parts=[TextPart("done")])


def lookup(key: int) -> str:
    """A plain tool: the work a tool does is not what we measure."""
    return f"value-{key}"


def make_agent(name: str, **kwargs: Any) -> Agent[None, str]:
    return Agent(FunctionModel(scripted_model), name=name, tools=[lookup], **kwargs)


plain_agent = make_agent("bench_plain")
warnings.filterwarnings("ignore", message=".*DBOSAgent` is deprecated")  # we measure it on purpose

ours = DBOSAgent(make_agent("bench_ours"))
ours_durable_tool = DBOSAgent(make_agent("bench_ours_tool"), durable_tools=["lookup"])
theirs = CompetitorAgent(make_agent("bench_theirs"))
theirs_capability_agent = make_agent("bench_theirs_cap", capabilities=[DBOSDurability()])


@DBOS.workflow(name="bench.theirs_capability")
async def theirs_capability_workflow(prompt: str) -> str:
    return (await theirs_capability_agent.run(prompt)).output


@DBOS.step(name="bench.empty_step")
async def empty_step() -> None:
    return None


@DBOS.workflow(name="bench.bare")
async def bare_workflow(n: int) -> str:
    for _ in range(n):
        await empty_step()
    return "done"


async def run_plain(n: int) -> str:
    return (await plain_agent.run(f"n={n}")).output


async def run_ours(n: int) -> str:
    return (await ours.run(f"n={n}")).output


async def run_ours_tool(n: int) -> str:
    return (await ours_durable_tool.run(f"n={n}")).output


async def run_theirs(n: int) -> str:
    return (await theirs.run(f"n={n}")).output


async def run_theirs_capability(n: int) -> str:
    return await theirs_capability_workflow(f"n={n}")


async def run_bare(n: int) -> str:
    return await bare_workflow(n)


VARIANTS: dict[str, Callable[[int], Awaitable[str]]] = {
    "plain": run_plain,
    "ours": run_ours,
    "ours+durable tool": run_ours_tool,
    "competitor DBOSAgent": run_theirs,
    "competitor DBOSDurability": run_theirs_capability,
    "bare DBOS (N steps)": run_bare,
}
DURABLE = [name for name in VARIANTS if name != "plain"]


# --- Measuring ----------------------------------------------------------------------------------


@dataclass
class Measurement:
    times_ms: list[float] = field(default_factory=list)
    bytes_stored: int = 0
    peak_memory_kib: float = 0.0

    def summary(self) -> dict[str, float]:
        return {
            "median_ms": statistics.median(self.times_ms),
            "min_ms": min(self.times_ms),
            "max_ms": max(self.times_ms),
        }


async def timed(variant: Callable[[int], Awaitable[str]], n: int, workflow_id: str) -> float:
    with SetWorkflowID(workflow_id):
        start = time.perf_counter()
        output = await variant(n)
        elapsed = time.perf_counter() - start
    assert output == "done", output
    return elapsed * 1000


def stored_bytes(engine: sa.Engine, schema: str | None, workflow_id: str) -> int:
    """Bytes DBOS stored for a workflow and its children: inputs, outputs, errors, step outputs."""
    prefix = f"{schema}." if schema else ""
    like = {"id": f"{workflow_id}%"}
    queries = [
        f"SELECT COALESCE(SUM(LENGTH(COALESCE(inputs,''))+LENGTH(COALESCE(output,''))+LENGTH(COALESCE(error,''))),0)"
        f" FROM {prefix}workflow_status WHERE workflow_uuid LIKE :id",
        f"SELECT COALESCE(SUM(LENGTH(COALESCE(inputs,''))),0) FROM {prefix}workflow_input WHERE workflow_uuid LIKE :id",
        f"SELECT COALESCE(SUM(LENGTH(COALESCE(output,''))+LENGTH(COALESCE(error,''))),0)"
        f" FROM {prefix}workflow_output WHERE workflow_uuid LIKE :id",
        f"SELECT COALESCE(SUM(LENGTH(COALESCE(output,''))+LENGTH(COALESCE(error,''))),0)"
        f" FROM {prefix}operation_outputs WHERE workflow_uuid LIKE :id",
    ]
    with engine.connect() as connection:
        return sum(int(connection.execute(sa.text(query), like).scalar() or 0) for query in queries)


async def measure_database(
    label: str, url: str, schema: str | None, sizes: list[int], repeats: int, warmup: int
) -> dict[str, Any]:
    DBOS.destroy()
    config = dbos_config("bench", database_url=url, application_version="bench", log_level="WARNING")
    if "rollback" in label:  # DBOS's own default: leave the journal mode alone
        config = {"name": "bench", "system_database_url": url, "application_version": "bench", "log_level": "WARNING"}
    DBOS(config=config)
    DBOS.launch()
    engine = sa.create_engine(url)
    results: dict[str, Any] = {"sizes": {}}
    try:
        for n in sizes:
            measurements = {name: Measurement() for name in VARIANTS}
            for _ in range(warmup):
                for variant in VARIANTS.values():
                    await timed(variant, n, f"warm-{uuid.uuid4().hex}")
            for _ in range(repeats):  # interleaved: A B C A B C ...
                for name, variant in VARIANTS.items():
                    measurements[name].times_ms.append(await timed(variant, n, f"{uuid.uuid4().hex}"))
            for name, variant in VARIANTS.items():
                workflow_id = f"bytes-{uuid.uuid4().hex}"
                tracemalloc.start()
                await timed(variant, n, workflow_id)
                measurements[name].peak_memory_kib = tracemalloc.get_traced_memory()[1] / 1024
                tracemalloc.stop()
                measurements[name].bytes_stored = stored_bytes(engine, schema, workflow_id)
            results["sizes"][n] = derive(measurements, n)
            console.print(f"[dim]{label}: N={n} measured[/dim]")
        results["throughput"] = await throughput()
        results["run_sync"] = await asyncio.to_thread(run_sync_costs, engine, schema)
    finally:
        engine.dispose()
        DBOS.destroy()
    return results


def derive(measurements: dict[str, Measurement], n: int) -> dict[str, Any]:
    plain = statistics.median(measurements["plain"].times_ms)
    derived: dict[str, Any] = {}
    for name, m in measurements.items():
        entry: dict[str, Any] = m.summary()
        entry["peak_memory_kib"] = round(m.peak_memory_kib, 1)
        if name != "plain":
            entry["bytes_stored"] = m.bytes_stored
            entry["bytes_per_model_request"] = round(m.bytes_stored / n, 1)
        if name in DURABLE and not name.startswith("bare"):
            entry["overhead_per_request_ms"] = round((entry["median_ms"] - plain) / n, 3)
        derived[name] = entry
    ours_overhead = derived["ours"]["overhead_per_request_ms"]
    derived["ratios"] = {
        "ours / competitor DBOSAgent": round(
            ours_overhead / derived["competitor DBOSAgent"]["overhead_per_request_ms"], 3
        ),
        "ours / competitor DBOSDurability": round(
            ours_overhead / derived["competitor DBOSDurability"]["overhead_per_request_ms"], 3
        ),
        "ours / bare DBOS step": round(ours_overhead / (derived["bare DBOS (N steps)"]["median_ms"] / n), 3),
    }
    return derived


async def throughput(concurrent: int = 200, n: int = 3, rounds: int = 5) -> dict[str, float]:
    """Median runs per second for `concurrent` durable runs of N=`n` started at once on one event loop.

    The variants take turns, round after round, so a slow moment of the machine hits them all alike.
    """
    variants = {
        "ours": run_ours,
        "competitor DBOSAgent": run_theirs,
        "competitor DBOSDurability": run_theirs_capability,
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            start = time.perf_counter()
            await asyncio.gather(*(timed(variant, n, uuid.uuid4().hex) for _ in range(concurrent)))
            rates[name].append(concurrent / (time.perf_counter() - start))
    return {name: round(statistics.median(values), 1) for name, values in rates.items()}


def run_sync_costs(engine: sa.Engine, schema: str | None, n: int = 3, repeats: int = 5) -> dict[str, Any]:
    """What one `run_sync` records (workflows, bytes) and costs (median ms), ours against the competitor's wrapper."""
    prefix = f"{schema}." if schema else ""
    costs: dict[str, Any] = {}
    for name, agent in (("ours", ours), ("competitor DBOSAgent", theirs)):
        times: list[float] = []
        workflow_id = ""
        for _ in range(repeats):
            workflow_id = f"sync-{uuid.uuid4().hex}"
            with SetWorkflowID(workflow_id):
                start = time.perf_counter()
                assert agent.run_sync(f"n={n}").output == "done"
                times.append((time.perf_counter() - start) * 1000)
        with engine.connect() as connection:
            workflows = connection.execute(
                sa.text(f"SELECT COUNT(*) FROM {prefix}workflow_status WHERE workflow_uuid LIKE :id"),
                {"id": f"{workflow_id}%"},
            ).scalar()
        costs[name] = {
            "median_ms": round(statistics.median(times), 2),
            "workflows_per_run": workflows,
            "bytes_stored": stored_bytes(engine, schema, workflow_id),
        }
    return costs


# --- Databases and reporting --------------------------------------------------------------------


def postgres_database() -> tuple[str, str]:
    name = "dbos_pai_bench"
    admin = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        connection.execute(sa.text(f'ALTER DATABASE "{name}" SET synchronous_commit = on'))
        server_version = connection.execute(sa.text("SHOW server_version")).scalar()
    admin.dispose()
    return f"{POSTGRES_SERVER_URL}/{name}", f"PostgreSQL {server_version}"


def machine() -> dict[str, Any]:
    import sqlite3

    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "packages": {p: version(p) for p in ("dbos", "pydantic-ai-slim", "dbos-pydantic-ai", "sqlalchemy")},
    }


def print_tables(label: str, results: dict[str, Any]) -> None:
    for n, derived in results["sizes"].items():
        table = Table(title=f"{label}, N={n} model requests per run")
        for column in ("variant", "median ms", "min ms", "max ms", "overhead/request ms", "bytes/request", "peak KiB"):
            table.add_column(column, justify="right" if column != "variant" else "left")
        for name in VARIANTS:
            entry = derived[name]
            table.add_row(
                name,
                f"{entry['median_ms']:.2f}",
                f"{entry['min_ms']:.2f}",
                f"{entry['max_ms']:.2f}",
                f"{entry.get('overhead_per_request_ms', ''):}" if "overhead_per_request_ms" in entry else "",
                f"{entry.get('bytes_per_model_request', '')}",
                f"{entry['peak_memory_kib']}",
            )
        console.print(table)
        console.print("  " + ", ".join(f"{k}: {v}" for k, v in derived["ratios"].items()))
    console.print(f"  throughput (200 concurrent runs of N=3, runs/s): {results['throughput']}")
    console.print(f"  run_sync (N=3): {results['run_sync']}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke check, not a measurement")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument(
        "--databases",
        nargs="+",
        default=["sqlite", "sqlite-rollback", "postgres"],
        choices=["sqlite", "sqlite-rollback", "postgres"],
        help="sqlite: WAL (our default); sqlite-rollback: DBOS's own default journal mode, for comparison",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.json")
    args = parser.parse_args()
    repeats, warmup = (3, 1) if args.quick else (args.repeats, 3)

    report: dict[str, Any] = {"machine": machine(), "repeats": repeats, "databases": {}}
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"dbos-pai-bench-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    for database in args.databases:
        if database == "sqlite":
            url, label, schema = f"sqlite:///{workdir / 'bench.sqlite'}", "SQLite (WAL)", None
        elif database == "sqlite-rollback":
            url, label, schema = f"sqlite:///{workdir / 'rollback.sqlite'}", "SQLite (rollback journal)", None
        else:
            url, label = postgres_database()
            schema = "dbos"
            report["machine"]["postgres"] = label
            label += " (synchronous_commit=on)"
        results = await measure_database(label, url, schema, args.sizes, repeats, warmup)
        report["databases"][label] = results
        print_tables(label, results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"results written to {args.output}")


if __name__ == "__main__":
    asyncio.run(main())
