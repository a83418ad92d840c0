"""Prometheus metrics of durable agent runs, read from the workers' system database at each scrape.

Everything comes from the database, so the console (or any process with the database URL) shows the whole fleet,
and a restarted exporter loses nothing:

- `dbos_pai_runs{agent,status}`: runs by agent and DBOS status (gauge).
- `dbos_pai_queue_depth{queue}`: workflows ENQUEUED on each DBOS queue (gauge).
- `dbos_pai_runs_waiting_for_approval{agent}`: runs waiting for a human decision (gauge).
- `dbos_pai_recoveries_total{agent}`: times a run was taken up again after its worker stopped (counter).
- `dbos_pai_model_requests_total{agent,model}`, `dbos_pai_model_tokens_total{agent,model,direction}`,
  `dbos_pai_model_cost_usd_total{agent,model}`: checkpointed model responses, their tokens and their price from
  `genai-prices` (a model without a known price adds no cost) (counters).
- `dbos_pai_step_duration_seconds{agent,kind}`: how long this library's steps took (kind: model, tool, mcp, wait),
  from the times DBOS records (histogram).

The counters and the histogram follow the steps completed since this process first scraped, plus all earlier ones
at the first scrape: a counter restarting with the exporter process is what Prometheus expects.
Needs `prometheus-client` (the `console` or `metrics` extra).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic_ai.messages import ModelResponse

from ._compat import client_status_table, client_step_outputs
from .names import (
    APPROVALS_STEP_MARKER,
    DURABLE_TOOL_STEP_MARKER,
    MCP_STEP_MARKER,
    MODEL_STEP_SUFFIXES,
    RUN_WORKFLOW_SUFFIXES,
    library_step_kind,
)

if TYPE_CHECKING:
    from dbos import DBOSClient
    from fastapi import APIRouter

    from .approvals import ApprovalInbox

__all__ = ["STEP_DURATION_BUCKETS", "RunMetrics", "router"]

STEP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds: from a local step (a few ms) to a slow model request or a long human wait."""

# Steps completing this long before the newest one seen are read again at the next scrape (commits land out of
# order); the keys of those already counted are kept to count each once.
_OVERLAP_MS = 60_000


def _agent_of_run(workflow_name: str) -> str | None:
    for suffix in RUN_WORKFLOW_SUFFIXES:
        if workflow_name.endswith(suffix):
            return workflow_name[: -len(suffix)]
    return None


def _agent_of_step(name: str) -> str:
    return name.split("__", 1)[0]


class RunMetrics:
    """The metrics of one system database: `scrape()` returns the Prometheus text exposition.

    `RunMetrics.open(database_url)` opens a client and an approvals connection of its own (close it with
    `close()`); the console passes the ones it already holds.
    """

    def __init__(self, client: DBOSClient, inbox: ApprovalInbox, *, owned: bool = False) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self._client = client
        self._inbox = inbox
        self._owned = owned
        self._engine, self._status = client_status_table(client)
        self._outputs, self._decode = client_step_outputs(client)
        self._lock = threading.Lock()
        self._watermark_ms = 0
        self._counted: dict[tuple[str, int], int] = {}  # step key -> its completion time, within the overlap
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "dbos_pai_model_requests", "Checkpointed model responses.", ["agent", "model"], registry=self.registry
        )
        self._tokens = Counter(
            "dbos_pai_model_tokens",
            "Tokens of checkpointed model responses (direction: input or output).",
            ["agent", "model", "direction"],
            registry=self.registry,
        )
        self._cost = Counter(
            "dbos_pai_model_cost_usd",
            "Price of checkpointed model responses in USD, from genai-prices (unknown prices add nothing).",
            ["agent", "model"],
            registry=self.registry,
        )
        self._durations = Histogram(
            "dbos_pai_step_duration_seconds",
            "Duration of this library's steps (kind: model, tool, mcp, wait).",
            ["agent", "kind"],
            buckets=STEP_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_DatabaseGauges(self))

    @classmethod
    def open(cls, database_url: str) -> RunMetrics:
        """Metrics of the system database at `database_url`, with a client and connection of their own."""
        from dbos import DBOSClient

        from .approvals import ApprovalInbox

        client = DBOSClient(system_database_url=database_url)
        try:
            inbox = ApprovalInbox(database_url)
        except BaseException:
            client.destroy()
            raise
        return cls(client, inbox, owned=True)

    def close(self) -> None:
        if self._owned:
            try:
                self._inbox.close()
            finally:
                self._client.destroy()

    def scrape(self) -> bytes:
        """Read the steps completed since the last scrape, then render every metric (blocking: call off the loop)."""
        from prometheus_client import generate_latest

        with self._lock:
            self._read_new_steps()
            return generate_latest(self.registry)

    # --- Steps ------------------------------------------------------------------------------------------

    def _read_new_steps(self) -> None:
        oo = self._outputs
        since = self._watermark_ms - _OVERLAP_MS
        kinds = sa.or_(
            *(oo.c.function_name.endswith(suffix, autoescape=True) for suffix in MODEL_STEP_SUFFIXES),
            *(
                oo.c.function_name.contains(marker, autoescape=True)
                for marker in (MCP_STEP_MARKER, DURABLE_TOOL_STEP_MARKER, APPROVALS_STEP_MARKER)
            ),
        )
        query = sa.select(
            oo.c.workflow_uuid,
            oo.c.function_id,
            oo.c.function_name,
            oo.c.started_at_epoch_ms,
            oo.c.completed_at_epoch_ms,
        ).where(kinds, oo.c.completed_at_epoch_ms.is_not(None), oo.c.completed_at_epoch_ms >= since)
        with self._engine.connect() as connection:
            rows = list(connection.execute(query))
            new = [row for row in rows if (row.workflow_uuid, row.function_id) not in self._counted]
            model_keys = [
                (row.workflow_uuid, row.function_id) for row in new if row.function_name.endswith(MODEL_STEP_SUFFIXES)
            ]
            outputs = self._model_outputs(connection, model_keys)
        for row in new:
            kind = library_step_kind(row.function_name)
            if kind is None:
                continue
            agent = _agent_of_step(row.function_name)
            self._counted[(row.workflow_uuid, row.function_id)] = row.completed_at_epoch_ms
            self._watermark_ms = max(self._watermark_ms, row.completed_at_epoch_ms)
            if row.started_at_epoch_ms is not None:
                seconds = max(0, row.completed_at_epoch_ms - row.started_at_epoch_ms) / 1000
                self._durations.labels(agent=agent, kind=kind).observe(seconds)
            response = outputs.get((row.workflow_uuid, row.function_id))
            if isinstance(response, ModelResponse):
                self._count_response(agent, response)
        horizon = self._watermark_ms - _OVERLAP_MS
        self._counted = {key: at for key, at in self._counted.items() if at >= horizon}

    def _model_outputs(self, connection: sa.Connection, keys: list[tuple[str, int]]) -> dict[tuple[str, int], Any]:
        """The decoded outputs of the model steps `keys` (a failed attempt's output is not a `ModelResponse`)."""
        oo = self._outputs
        found: dict[tuple[str, int], Any] = {}
        for start in range(0, len(keys), 200):
            chunk = keys[start : start + 200]
            query = sa.select(oo.c.workflow_uuid, oo.c.function_id, oo.c.output, oo.c.serialization).where(
                sa.tuple_(oo.c.workflow_uuid, oo.c.function_id).in_(chunk)
            )
            for row in connection.execute(query):
                try:
                    found[(row.workflow_uuid, row.function_id)] = self._decode(row.output, row.serialization)
                except Exception:  # a value this process cannot rebuild: counted as a step, not as a response
                    continue
        return found

    def _count_response(self, agent: str, response: ModelResponse) -> None:
        from .console.data import model_cost

        model = response.model_name or "unknown"
        self._requests.labels(agent=agent, model=model).inc()
        usage = response.usage
        self._tokens.labels(agent=agent, model=model, direction="input").inc(usage.input_tokens or 0)
        self._tokens.labels(agent=agent, model=model, direction="output").inc(usage.output_tokens or 0)
        cost = model_cost(response)
        self._cost.labels(agent=agent, model=model).inc(cost or 0.0)

    # --- Gauges read at each scrape (see _DatabaseGauges) ------------------------------------------------

    def runs_by_status(self) -> dict[tuple[str, str], int]:
        ws = self._status
        runs = sa.or_(*(ws.c.name.endswith(suffix, autoescape=True) for suffix in RUN_WORKFLOW_SUFFIXES))
        query = sa.select(ws.c.name, ws.c.status, sa.func.count()).where(runs).group_by(ws.c.name, ws.c.status)
        counts: dict[tuple[str, str], int] = {}
        with self._engine.connect() as connection:
            result: Any = connection.execute(query)
            for name, status, count in result:
                agent = _agent_of_run(name)
                if agent is not None:
                    counts[(agent, status)] = counts.get((agent, status), 0) + int(count)
        return counts

    def queue_depths(self) -> dict[str, int]:
        ws = self._status
        query = (
            sa.select(ws.c.queue_name, sa.func.count())
            .where(ws.c.status == "ENQUEUED", ws.c.queue_name.is_not(None))
            .group_by(ws.c.queue_name)
        )
        with self._engine.connect() as connection:
            result: Any = connection.execute(query)
            return {queue: int(count) for queue, count in result}

    def recoveries(self) -> dict[str, int]:
        ws = self._status
        runs = sa.or_(*(ws.c.name.endswith(suffix, autoescape=True) for suffix in RUN_WORKFLOW_SUFFIXES))
        query = (
            sa.select(ws.c.name, sa.func.sum(ws.c.recovery_attempts - 1))
            .where(runs, ws.c.recovery_attempts > 1)
            .group_by(ws.c.name)
        )
        totals: dict[str, int] = {}
        with self._engine.connect() as connection:
            result: Any = connection.execute(query)
            for name, extra in result:
                agent = _agent_of_run(name)
                if agent is not None:
                    totals[agent] = totals.get(agent, 0) + int(extra or 0)
        return totals

    def waiting_for_approval(self) -> dict[str, int]:
        runs: dict[str, set[str]] = {}
        for pending in self._inbox.list_pending():
            runs.setdefault(pending.agent_name, set()).add(pending.workflow_id)
        return {agent: len(ids) for agent, ids in runs.items()}


class _DatabaseGauges:
    """The metrics computed from the database's current state at each scrape."""

    def __init__(self, metrics: RunMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []  # read the database only when scraped, not when registered

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        runs = GaugeMetricFamily("dbos_pai_runs", "Durable agent runs by status.", labels=["agent", "status"])
        for (agent, status), count in sorted(self._metrics.runs_by_status().items()):
            runs.add_metric([agent, status], count)
        yield runs
        depth = GaugeMetricFamily("dbos_pai_queue_depth", "Workflows enqueued on each DBOS queue.", labels=["queue"])
        for queue, count in sorted(self._metrics.queue_depths().items()):
            depth.add_metric([queue], count)
        yield depth
        waiting = GaugeMetricFamily(
            "dbos_pai_runs_waiting_for_approval", "Runs waiting for a human decision.", labels=["agent"]
        )
        for agent, count in sorted(self._metrics.waiting_for_approval().items()):
            waiting.add_metric([agent], count)
        yield waiting
        recoveries = CounterMetricFamily(
            "dbos_pai_recoveries", "Times a run was taken up again after its worker stopped.", labels=["agent"]
        )
        for agent, count in sorted(self._metrics.recoveries().items()):
            recoveries.add_metric([agent], count)
        yield recoveries


def router(metrics: RunMetrics | Callable[[], RunMetrics | None]) -> APIRouter:
    """A FastAPI router serving `GET /metrics` (Prometheus text format) from `metrics`, or from what a function
    returns once they exist (a worker opens them after launching DBOS: 503 until then)."""
    from fastapi import APIRouter
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import Response
    from prometheus_client import CONTENT_TYPE_LATEST

    current = metrics if callable(metrics) else (lambda: metrics)
    api = APIRouter()

    @api.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        found = current()
        if found is None:
            return Response("Metrics are served once the worker has launched DBOS.\n", status_code=503)
        return Response(await run_in_threadpool(found.scrape), media_type=CONTENT_TYPE_LATEST)

    return api
