"""What listing MCP tools once per run saves: a durable run with an MCP server, `cache_tools=True` against `False`.

With `cache_tools=True` (pydantic-ai's default) a durable run lists the server's tools in one step; with
`cache_tools=False` it lists them before every model request, one step each, as every run did before. The workload:
a `FunctionModel` that calls the server's `get_weather` tool N times (one per model response), then answers; the
server is tests/mcp_servers/counting_server.py over stdio (a new server process per run, as a session per run).
Variants run interleaved after a warm-up; medians with min/max. Measured: steps stored, `get_tools` steps, bytes
stored for the run, the server's `tools/list` requests, and the wall time of a run.

    python bench/mcp_tools.py            # SQLite (WAL) and PostgreSQL
    python bench/mcp_tools.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from dbos import DBOS, SetWorkflowID
from fastmcp.client.transports import PythonStdioTransport
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from dbos_pydantic_ai import DBOSAgent, dbos_config
from run import machine, postgres_database, stored_bytes

RESULTS = Path(__file__).parent / "results" / "mcp_tools.json"
SERVER = Path(__file__).parent.parent / "tests" / "mcp_servers" / "counting_server.py"


def calls_n_times(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls get_weather until it has N results (N is the prompt), then answers."""
    returns = sum(isinstance(part, ToolReturnPart) for message in messages for part in message.parts)
    wanted = int(str(messages[0].parts[-1].content))  # type: ignore[union-attr]
    if returns < wanted:
        return ModelResponse(parts=[ToolCallPart("get_weather", {"city": f"city{returns}"})])
    return ModelResponse(parts=[TextPart("done")])


def make_agent(name: str, cache_tools: bool, log: Path) -> DBOSAgent[None, str]:
    transport = PythonStdioTransport(str(SERVER), args=["--log", str(log)], keep_alive=False)
    toolset = MCPToolset(transport, id="counting", cache_tools=cache_tools)
    return DBOSAgent(Agent(FunctionModel(calls_n_times), name=name, toolsets=[toolset]))


def tools_list_requests(log: Path) -> int:
    if not log.exists():
        return 0
    return sum(json.loads(line).get("method") == "tools/list" for line in log.read_text().splitlines())


async def measure(
    label: str,
    url: str,
    agents: dict[bool, DBOSAgent[None, str]],
    logs: dict[bool, Path],
    sizes: list[int],
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    DBOS.destroy()
    DBOS(config=dbos_config("bench_mcp", database_url=url, application_version="bench"))
    DBOS.launch()
    from dbos._dbos import _get_dbos_instance  # bench only: the byte count reads DBOS's tables

    sys_db = _get_dbos_instance()._sys_db
    results: dict[str, Any] = {}
    for n in sizes:
        times: dict[bool, list[float]] = {True: [], False: []}
        facts: dict[bool, dict[str, Any]] = {}
        for round_ in range(warmup + repeats):
            for cached, agent in agents.items():
                workflow_id = f"mcp-{n}-{cached}-{uuid.uuid4().hex[:8]}"
                listed_before = tools_list_requests(logs[cached])
                start = time.perf_counter()
                with SetWorkflowID(workflow_id):
                    assert (await agent.run(str(n))).output == "done"
                elapsed = (time.perf_counter() - start) * 1000
                if round_ < warmup:
                    continue
                times[cached].append(elapsed)
                if cached not in facts:
                    steps = await DBOS.list_workflow_steps_async(workflow_id)
                    facts[cached] = {
                        "steps": len(steps),
                        "get_tools_steps": sum(s["function_name"].endswith(".get_tools") for s in steps),
                        "bytes": stored_bytes(sys_db.engine, sys_db.schema, workflow_id),
                        "server_tools_list_requests": tools_list_requests(logs[cached]) - listed_before,
                    }
        results[str(n)] = {
            ("cache_tools=True" if cached else "cache_tools=False"): {
                **facts[cached],
                "run_ms_median": round(statistics.median(times[cached]), 1),
                "run_ms_min": round(min(times[cached]), 1),
                "run_ms_max": round(max(times[cached]), 1),
            }
            for cached in (True, False)
        }
    DBOS.destroy()
    print(f"\n{label}: tool calls per run | steps (once / every request) | get_tools steps | bytes | run ms")
    for n, row in results.items():
        once, every = row["cache_tools=True"], row["cache_tools=False"]
        print(
            f"  N={n:>3} | {once['steps']:>3} / {every['steps']:>3} | {once['get_tools_steps']} / "
            f"{every['get_tools_steps']} | {once['bytes']} / {every['bytes']} | "
            f"{once['run_ms_median']} / {every['run_ms_median']}"
        )
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats, warmup = (2, 1) if args.quick else (7, 2)
    sizes = [3, 10]
    workdir = Path(tempfile.mkdtemp(prefix="bench-mcp-"))
    sqlite_url = f"sqlite:///{workdir / 'bench.sqlite'}"
    logs = {cached: workdir / f"calls-{cached}.jsonl" for cached in (True, False)}
    agents = {cached: make_agent(f"mcp_{'cached' if cached else 'uncached'}", cached, logs[cached]) for cached in logs}
    pg_url, pg_label = postgres_database()
    report = {
        "machine": machine(),
        "repeats": repeats,
        "SQLite (WAL)": await measure("SQLite (WAL)", sqlite_url, agents, logs, sizes, repeats, warmup),
        pg_label: await measure(pg_label, pg_url, agents, logs, sizes, repeats, warmup),
    }
    if not args.quick:
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    asyncio.run(main())
