"""Typed JSON checkpoints against pickle: bytes per model request and per run, time to write and read a checkpoint.

Serializes what a durable run stores (a model request step's `ModelResponse`, the run's `AgentRunResult`, the workflow
inputs) with `JSONSerializer` and with DBOS's pickle serializer, in-process (no database: the database cost of a step
is the same for both, see bench/README.md). Writes bench/results/serialization.json.

    python bench/serialization.py
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from dbos._serialization import DefaultSerializer
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from dbos_pydantic_ai import JSONSerializer


def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Ten tool calls, then an answer of about 1 kB: the shape of the bench's other workloads."""
    if len(messages) < 20:
        return ModelResponse(parts=[ToolCallPart("lookup", {"sku": f"sku-{len(messages)}", "qty": 3})])
    return ModelResponse(parts=[TextPart("The order ships tomorrow. " * 40)], model_name="bench-model")


def workload() -> dict[str, Any]:
    agent = Agent(FunctionModel(model), name="bench")

    @agent.tool_plain
    def lookup(sku: str, qty: int) -> dict[str, Any]:
        return {"sku": sku, "in_stock": qty * 4, "warehouse": "north"}

    result = agent.run_sync("Where is my order?")
    responses = [m for m in result.all_messages() if isinstance(m, ModelResponse)]
    inputs = {"args": ("Where is my order?",), "kwargs": {"message_history": result.all_messages()[:4]}}
    return {"model_response": responses[-1], "tool_call_response": responses[0], "run_result": result, "inputs": inputs}


def measure(serializer: Any, value: Any, repeat: int = 300) -> dict[str, float]:
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


def main() -> None:
    values = workload()
    serializers = {"json": JSONSerializer(), "pickle": DefaultSerializer()}
    results = {name: {kind: measure(s, value) for kind, value in values.items()} for name, s in serializers.items()}
    results["note"] = (
        "pickle bytes are DBOS's base64 text of the pickle, as stored. One model response is the output of one model "
        "request step; run_result is the workflow output of a run with 11 model requests and 10 tool calls."
    )
    out = Path(__file__).parent / "results" / "serialization.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
