"""The console's Prometheus endpoint (`GET /metrics`, metrics.py), scraped after a known workload.

The workload, on a database of this test's own: three runs of a shop agent (two model requests of 100 input and
20 output tokens each on `gpt-4o`, one durable tool), one run waiting for an approval, one run SIGKILLed and
recovered by a relaunched worker (`console_crashy`), and one workflow enqueued on a queue nobody serves. A second
scrape after one more run shows the counters grew by exactly that run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from console_support import ConsoleServer, make_recovered_run
from dbos import DBOS, DBOSClient, SetWorkflowID
from prometheus_client.parser import text_string_to_metric_families
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from dbos_pydantic_ai import DBOSAgent, dbos_config
from dbos_pydantic_ai.console.data import model_cost

USAGE = RequestUsage(input_tokens=100, output_tokens=20)
IDLE_QUEUE = "metrics_idle_queue"


def shop_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("stock", {"sku": "mug"}, tool_call_id="s1")], usage=USAGE)
    return ModelResponse(parts=[TextPart("12 mugs")], usage=USAGE)


def approval_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[ToolCallPart("refund", {"amount": 5}, tool_call_id="r1")], usage=USAGE)


@pytest.fixture
def launched(database_url: str) -> Iterator[str]:
    DBOS.destroy()
    yield database_url
    DBOS.destroy()


def scrape(server: ConsoleServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{server.url}/metrics", timeout=60)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_after_a_known_workload(launched: str, agent_name: str) -> None:
    database_url = launched
    shop_name, desk_name = f"{agent_name}_shop", f"{agent_name}_desk"
    shop: Agent[None, str] = Agent(FunctionModel(shop_model, model_name="gpt-4o"), name=shop_name)

    @shop.tool_plain
    def stock(sku: str) -> int:
        return 12

    waiting: Agent[None, str] = Agent(FunctionModel(approval_model, model_name="gpt-4o"), name=desk_name)

    @waiting.tool_plain(requires_approval=True)
    def refund(amount: int) -> str:
        return "refunded"

    durable_shop = DBOSAgent(shop, durable_tools=["stock"])
    durable_desk = DBOSAgent(waiting, approvals="wait")
    DBOS(
        config=dbos_config(
            "dbos_pai_metrics_test",
            database_url=database_url,
            application_version="metrics-test",
            notification_listener_polling_interval_sec=0.02,
        )
    )
    DBOS.launch()
    for index in range(3):
        with SetWorkflowID(f"shop-{index}"):
            assert (await durable_shop.run("mugs?")).output == "12 mugs"
    with SetWorkflowID("desk-1"):
        desk = asyncio.create_task(durable_desk.run("refund me"))
    client = DBOSClient(system_database_url=database_url)
    try:
        client.enqueue({"queue_name": IDLE_QUEUE, "workflow_name": f"{shop_name}.run"}, "queued")
        deadline = asyncio.get_running_loop().time() + 60
        while (await DBOS.get_event_async("desk-1", "dbos_pydantic_ai.approvals", timeout_seconds=0)) is None:
            assert asyncio.get_running_loop().time() < deadline, "the approval run never started waiting"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(make_recovered_run, database_url, "crashy-1")

        with ConsoleServer(database_url) as server:
            first = scrape(server)
            price = model_cost(ModelResponse(parts=[TextPart("x")], usage=USAGE, model_name="gpt-4o"))
            assert price is not None and price > 0
            assert value(first, "dbos_pai_runs", agent=shop_name, status="SUCCESS") == 3
            assert value(first, "dbos_pai_runs", agent=shop_name, status="ENQUEUED") == 1
            assert value(first, "dbos_pai_runs", agent=desk_name, status="PENDING") == 1
            assert value(first, "dbos_pai_runs", agent="console_crashy", status="SUCCESS") == 1
            assert value(first, "dbos_pai_queue_depth", queue=IDLE_QUEUE) == 1
            assert value(first, "dbos_pai_runs_waiting_for_approval", agent=desk_name) == 1
            assert value(first, "dbos_pai_recoveries_total", agent="console_crashy") == 1
            assert value(first, "dbos_pai_recoveries_total", agent=shop_name) == 0
            assert value(first, "dbos_pai_model_requests_total", agent=shop_name, model="gpt-4o") == 6
            assert value(first, "dbos_pai_model_requests_total", agent=desk_name, model="gpt-4o") == 1
            assert (
                value(first, "dbos_pai_model_tokens_total", agent=shop_name, model="gpt-4o", direction="input") == 600
            )
            assert (
                value(first, "dbos_pai_model_tokens_total", agent=shop_name, model="gpt-4o", direction="output") == 120
            )
            assert value(first, "dbos_pai_model_cost_usd_total", agent=shop_name, model="gpt-4o") == pytest.approx(
                6 * price
            )
            assert value(first, "dbos_pai_step_duration_seconds_count", agent=shop_name, kind="model") == 6
            assert value(first, "dbos_pai_step_duration_seconds_count", agent=shop_name, kind="tool") == 3
            # The crashed run's steps: two model requests and its durable tool, each recorded once.
            assert value(first, "dbos_pai_step_duration_seconds_count", agent="console_crashy", kind="model") == 2
            assert value(first, "dbos_pai_step_duration_seconds_count", agent=desk_name, kind="wait") >= 1

            with SetWorkflowID("shop-3"):
                await durable_shop.run("mugs?")
            second = scrape(server)
            assert value(second, "dbos_pai_runs", agent=shop_name, status="SUCCESS") == 4
            assert value(second, "dbos_pai_model_requests_total", agent=shop_name, model="gpt-4o") == 8
            assert (
                value(second, "dbos_pai_model_tokens_total", agent=shop_name, model="gpt-4o", direction="input") == 800
            )
            assert value(second, "dbos_pai_step_duration_seconds_count", agent=shop_name, kind="tool") == 4
            assert value(second, "dbos_pai_model_requests_total", agent="console_crashy", model="gpt-4o") == 2
    finally:
        client.destroy()
        desk.cancel()
