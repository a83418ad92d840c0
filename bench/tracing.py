"""What tracing costs per model request: a durable run with tracing off, and with each layer of it on.

Variants, run interleaved (A B C D A B C D ...) on one database after a warm-up, medians of `--repeats` runs:

- `off`: no spans at all (DBOS's tracing off, pydantic-ai not instrumented);
- `pydantic-ai`: pydantic-ai's instrumentation only (`Agent.instrument_all()`), what Logfire users already pay;
- `dbos`: plus DBOS's workflow and step spans (`enable_otlp`), without this library's marks;
- `full`: `dbos_config(tracing=True)` as shipped: plus this library's span processor and hooks (workflow ids, step
  ids and replay marks, the trace event written at each execution's first live step).

Spans go to a `BatchSpanProcessor` whose exporter drops them: span creation and processing are measured, not
network export. The run is a `FunctionModel` making N model requests (each but the last calling a plain tool).
The bench toggles DBOS's tracing flag on its tracer between runs (DBOS reads it at each span start), instead of
relaunching DBOS per variant.

    python bench/tracing.py                      # SQLite (WAL) and PostgreSQL; writes results/tracing.json
    python bench/tracing.py --quick              # a smoke check, not a measurement
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
import uuid
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from dbos import DBOS, SetWorkflowID
from dbos._tracer import dbos_tracer  # the bench flips DBOS's tracing flag between runs
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from dbos_pydantic_ai import DBOSAgent, dbos_config, tracing

RESULTS = Path(__file__).parent / "results" / "tracing.json"
POSTGRES_SERVER_URL = os.environ.get("DBOS_PAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
N = 10
VARIANTS = ("off", "pydantic-ai", "dbos", "full")


class DroppingExporter(SpanExporter):
    """Counts spans and drops them."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    requests_so_far = sum(isinstance(m, ModelResponse) for m in messages) + 1
    if requests_so_far < N:
        return ModelResponse(parts=[ToolCallPart("lookup", {"key": requests_so_far})])
    return ModelResponse(parts=[TextPart("done")])


def lookup(key: int) -> str:
    return f"value-{key}"


durable = DBOSAgent(Agent(FunctionModel(scripted), name="bench_tracing", tools=[lookup]))
_hooks_active = tracing._active  # the shipped hook; `dbos` replaces it for a run
_on_start = tracing.RunSpanProcessor.on_start


def select(variant: str) -> None:
    """Turn the layers of `variant` on and the others off."""
    dbos_tracer.disable_otlp = variant in ("off", "pydantic-ai")
    Agent.instrument_all(variant != "off")
    ours = variant == "full"
    tracing._active = _hooks_active if ours else (lambda: False)  # type: ignore[assignment]
    tracing.RunSpanProcessor.on_start = _on_start if ours else (lambda self, span, parent_context=None: None)  # type: ignore[method-assign]


async def one_run(variant: str) -> float:
    select(variant)
    started = time.perf_counter()
    with SetWorkflowID(f"{variant}-{uuid.uuid4().hex}"):
        result = await durable.run("go")
    elapsed = (time.perf_counter() - started) * 1000
    assert result.output == "done"
    return elapsed


async def measure(label: str, url: str, repeats: int, warmup: int, exporter: DroppingExporter) -> dict[str, Any]:
    DBOS.destroy()
    DBOS(config=dbos_config("bench_tracing", database_url=url, application_version="bench", tracing=True))
    DBOS.launch()
    try:
        for _ in range(warmup):
            for variant in VARIANTS:
                await one_run(variant)
        times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        before = exporter.count
        for _ in range(repeats):
            for variant in VARIANTS:
                times[variant].append(await one_run(variant))
        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
        spans = exporter.count - before
    finally:
        select("off")
        DBOS.destroy()
    medians = {variant: statistics.median(values) for variant, values in times.items()}
    per_request = {variant: (medians[variant] - medians["off"]) / N for variant in VARIANTS}
    print(
        f"{label}: run ms "
        + ", ".join(f"{v} {medians[v]:.1f}" for v in VARIANTS)
        + " | overhead per request ms "
        + ", ".join(f"{v} {per_request[v]:+.2f}" for v in VARIANTS[1:])
    )
    return {
        "run_ms": {v: {"median": medians[v], "min": min(times[v]), "max": max(times[v])} for v in VARIANTS},
        "overhead_per_request_ms": {v: per_request[v] for v in VARIANTS[1:]},
        "ours_over_dbos_per_request_ms": per_request["full"] - per_request["dbos"],
        "spans_exported_during_measurement": spans,
    }


def postgres_database(name: str, *, drop: bool = False) -> str:
    """Create (or drop) the bench's PostgreSQL database; returns its URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(
            sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' if drop else f'CREATE DATABASE "{name}"')
        )
    engine.dispose()
    return f"{POSTGRES_SERVER_URL}/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    repeats, warmup = (3, 1) if args.quick else (args.repeats, 3)
    exporter = DroppingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-tracing-{uuid.uuid4().hex[:8]}"
    workdir.mkdir()
    pg_name = f"bench_tracing_{uuid.uuid4().hex[:8]}"
    databases = {"SQLite (WAL)": f"sqlite:///{workdir / 'bench.sqlite'}", "PostgreSQL": postgres_database(pg_name)}
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "dbos": version("dbos"),
            "pydantic-ai-slim": version("pydantic-ai-slim"),
            "opentelemetry-sdk": version("opentelemetry-sdk"),
        },
        "n_model_requests": N,
        "repeats": repeats,
        "databases": {
            label: asyncio.run(measure(label, url, repeats, warmup, exporter)) for label, url in databases.items()
        },
    }
    if not args.quick:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
