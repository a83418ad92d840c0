"""Typed JSON checkpoints against pickle: bytes per model request and per run, and the time of a real checkpoint.

Three measures, each with `JSONSerializer` (`serializer="json"`, our default) and DBOS's pickle
(`serializer="pickle"`), on SQLite (WAL) and PostgreSQL, each database in a fresh process where the two serializers
take turns (a serializer that switches between them, so a busy moment of this shared machine hits both alike):

- step: a DBOS step returning a value a durable run stores (a model response with a ~1 kB answer, a tool-call
  response, a whole run result) inside a workflow of STEPS such steps: write = the workflow's time per step (the step
  runs, DBOS serializes its result and commits it); read = the time per step of reading that workflow's recorded
  steps as DBOS lists them (`list_workflow_steps`: one query, then each checkpoint deserialized). A step returning
  None gives the database floor both pay.
- agent run: a `DBOSAgent` run with 11 model requests and 10 tool calls (FunctionModel): time per run, and the bytes
  the run stored (its inputs, its output, and every step's output), per run and per model request step.
- in memory: serialize and deserialize alone, no database (what the first version of this bench measured).

    python bench/serialization.py            # both databases
    python bench/serialization.py --quick

Writes bench/results/serialization.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

RESULTS = Path(__file__).parent / "results" / "serialization.json"
POSTGRES_SERVER_URL = os.environ.get("DBOS_PAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
KINDS = ("none", "model_response", "tool_call_response", "run_result")


def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Ten tool calls, then an answer of about 1 kB: the shape of the bench's other workloads."""
    if len(messages) < 20:
        return ModelResponse(parts=[ToolCallPart("lookup", {"sku": f"sku-{len(messages)}", "qty": 3})])
    return ModelResponse(parts=[TextPart("The order ships tomorrow. " * 40)], model_name="bench-model")


def lookup(sku: str, qty: int) -> dict[str, Any]:
    return {"sku": sku, "in_stock": qty * 4, "warehouse": "north"}


def make_agent(name: str) -> Agent[None, str]:
    agent = Agent(FunctionModel(model), name=name)
    agent.tool_plain(lookup)
    return agent


def workload() -> dict[str, Any]:
    result = make_agent("bench").run_sync("Where is my order?")
    responses = [m for m in result.all_messages() if isinstance(m, ModelResponse)]
    inputs = {"args": ("Where is my order?",), "kwargs": {"message_history": result.all_messages()[:4]}}
    return {
        "none": None,
        "model_response": responses[-1],
        "tool_call_response": responses[0],
        "run_result": result,
        "inputs": inputs,
    }


def in_memory(serializer: Any, value: Any, repeat: int) -> dict[str, float]:
    text = serializer.serialize(value)
    writes, reads = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        serializer.serialize(value)
        writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        serializer.deserialize(text)
        reads.append(time.perf_counter() - start)
    return {
        "bytes": len(text.encode()),
        "write_us_median": round(statistics.median(writes) * 1e6, 1),
        "read_us_median": round(statistics.median(reads) * 1e6, 1),
    }


def stored_bytes(workflow_id: str) -> dict[str, int]:
    """What DBOS stored for one workflow (the launched DBOS's database): inputs, output, each step's output."""
    from dbos_pydantic_ai._compat import system_tables
    from dbos_pydantic_ai.names import model_request_step

    engine, tables = system_tables(None)
    ws, wi, wo, oo = tables.workflow_status, tables.workflow_input, tables.workflow_output, tables.operation_outputs
    with engine.connect() as connection:
        inputs, output = connection.execute(
            sa.select(sa.func.coalesce(wi.c.inputs, ws.c.inputs), sa.func.coalesce(wo.c.output, ws.c.output))
            .select_from(
                ws.outerjoin(wi, wi.c.workflow_uuid == ws.c.workflow_uuid).outerjoin(
                    wo, wo.c.workflow_uuid == ws.c.workflow_uuid
                )
            )
            .where(ws.c.workflow_uuid == workflow_id)
        ).one()
        steps = connection.execute(
            sa.select(oo.c.function_name, oo.c.output).where(oo.c.workflow_uuid == workflow_id)
        ).all()
    request_step = model_request_step("bench_serialization")
    model_steps = [len(out.encode()) for name, out in steps if out is not None and name == request_step]
    return {
        "inputs": len((inputs or "").encode()),
        "output": len((output or "").encode()),
        "steps": sum(len(out.encode()) for _, out in steps if out is not None),
        "model_request_steps": len(model_steps),
        "per_model_request_step": round(statistics.mean(model_steps)) if model_steps else 0,
    }


def switching_serializer() -> Any:
    """A `JSONSerializer` that stores with pickle while `mode` is "pickle": one process measures both, interleaved.

    DBOS reads each row by its recorded serialization (a `py_pickle` row with pickle), so both kinds of row coexist;
    the storable-value check in pickle mode is the pickle round trip the library does for a pickle application."""
    from dbos_pydantic_ai import JSONSerializer
    from dbos_pydantic_ai._compat import pickle_serializer

    pickler = pickle_serializer()

    class Switching(JSONSerializer):
        mode = "json"

        def name(self) -> str:
            return super().name() if self.mode == "json" else pickler.name()

        def serialize(self, data: Any) -> str:
            return super().serialize(data) if self.mode == "json" else pickler.serialize(data)

        def deserialize(self, serialized_data: str) -> Any:
            return super().deserialize(serialized_data) if self.mode == "json" else pickler.deserialize(serialized_data)

        def check(self, value: Any) -> str | None:
            if self.mode == "json":
                return super().check(value)
            try:
                pickler.deserialize(pickler.serialize(value))
            except Exception as error:
                return str(error)
            return None

    return Switching()


def run_database(url: str, repeats: int, steps: int, out: Any) -> None:
    """One database, both serializers interleaved, in a fresh process (DBOS is a process singleton)."""
    from dbos import DBOS, SetWorkflowID

    from dbos_pydantic_ai import DBOSAgent, dbos_config

    values = workload()
    durable = DBOSAgent(make_agent("bench_serialization"))
    serializer = switching_serializer()

    @DBOS.step(name="bench.checkpoint")
    async def checkpoint(kind: str) -> Any:
        return values[kind]

    @DBOS.workflow(name="bench.checkpoints")
    async def checkpoints(kind: str, n: int) -> None:
        for _ in range(n):
            await checkpoint(kind)

    config = dbos_config("bench_serialization", database_url=url, application_version="bench", serializer=serializer)
    DBOS(config=config)
    DBOS.launch()

    async def timed(kind: str) -> tuple[float, float]:
        workflow_id = f"w-{uuid.uuid4().hex}"
        start = time.perf_counter()
        with SetWorkflowID(workflow_id):
            await checkpoints(kind, steps)
        write = (time.perf_counter() - start) / steps
        start = time.perf_counter()
        recorded = await DBOS.list_workflow_steps_async(workflow_id)  # one query, then each output deserialized
        read = (time.perf_counter() - start) / steps
        assert len(recorded) == steps
        return write, read

    async def agent_run() -> tuple[float, str]:
        workflow_id = f"run-{uuid.uuid4().hex}"
        start = time.perf_counter()
        with SetWorkflowID(workflow_id):
            await durable.run("Where is my order?")
        return time.perf_counter() - start, workflow_id

    async def main() -> dict[str, Any]:
        modes = ("json", "pickle")
        samples: dict[str, dict[str, list[tuple[float, float]]]] = {m: {k: [] for k in KINDS} for m in modes}
        runs: dict[str, list[float]] = {m: [] for m in modes}
        last_run: dict[str, str] = {}
        for index in range(repeats + 1):  # the first round warms up
            for mode in modes:  # interleaved, so a busy moment of the machine hits both
                serializer.mode = mode
                for kind in KINDS:
                    sample = await timed(kind)
                    if index:
                        samples[mode][kind].append(sample)
                took, last_run[mode] = await agent_run()
                if index:
                    runs[mode].append(took)
        result: dict[str, Any] = {}
        for mode in modes:
            serializer.mode = mode
            result[mode] = {
                "step": {
                    kind: {
                        "write_ms_median": round(statistics.median(w for w, _ in samples[mode][kind]) * 1000, 3),
                        "read_ms_median": round(statistics.median(r for _, r in samples[mode][kind]) * 1000, 3),
                    }
                    for kind in KINDS
                },
                "agent_run": {"ms_median": round(statistics.median(runs[mode]) * 1000, 2)}
                | {"bytes": stored_bytes(last_run[mode])},
            }
        return result

    try:
        out.put(asyncio.run(main()))
    finally:
        DBOS.destroy()


def measure(url: str, repeats: int, steps: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=run_database, args=(url, repeats, steps, out))
    process.start()
    result: dict[str, Any] = out.get(timeout=1800)
    process.join(60)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    repeats, steps = (3, 10) if args.quick else (15, 30)

    from dbos_pydantic_ai import JSONSerializer
    from dbos_pydantic_ai._compat import pickle_serializer

    values = workload()
    serializers = {"json": JSONSerializer(), "pickle": pickle_serializer()}
    results: dict[str, Any] = {
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "dbos": version("dbos"),
            "pydantic_ai_slim": version("pydantic-ai-slim"),
        },
        "workload": {"repeats": repeats, "steps_per_workflow": steps, "agent_run": "11 model requests, 10 tool calls"},
        "in_memory": {
            name: {kind: in_memory(s, value, 300) for kind, value in values.items() if kind != "none"}
            for name, s in serializers.items()
        },
        "databases": {},
    }
    with tempfile.TemporaryDirectory() as directory:
        results["databases"]["sqlite_wal"] = measure(f"sqlite:///{directory}/bench.sqlite", repeats, steps)
    if not args.no_postgres:
        database = f"bench_ser_{uuid.uuid4().hex[:8]}"
        try:
            results["databases"]["postgresql"] = measure(f"{POSTGRES_SERVER_URL}/{database}", repeats, steps)
        finally:
            engine = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
            with engine.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            engine.dispose()
    results["note"] = (
        "Bytes are the stored text (pickle: DBOS's base64 of the pickle). step.*: per checkpoint, a workflow of "
        "steps_per_workflow steps returning the value; read = DBOS.list_workflow_steps (one query, each output "
        "deserialized). step.none is the database floor both serializers pay."
    )
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
