"""Typed JSON checkpoints (`serializer.py`): what a durable run stores, read back through real workflows.

Every part kind, structured outputs, deps, deferred calls and run results round trip through a real workflow on both
databases; stored rows are JSON that SQL can read; a crafted row naming a type off the allowlist is refused and never
called; pickled rows written before a switch to JSON are still read by workers and never unpickled by readers.
"""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbos import DBOS
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import (
    BinaryContent,
    FilePart,
    ModelMessage,
    ModelResponse,
    NativeToolCallPart,
    NativeToolReturnPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, RunContext, ToolApproved

from dbos_pydantic_ai import (
    DBOSAgent,
    JSONSerializer,
    NotSerializableError,
    StoredAsPickle,
    UnknownStoredTypeError,
    dbos_config,
    register_types,
)
from dbos_pydantic_ai._safe_read import safe_list_workflow_steps, safe_list_workflows
from dbos_pydantic_ai.names import JSON_SERIALIZATION

FAST_POLLING = {"notification_listener_polling_interval_sec": 0.02}  # as tests/conftest.py's (not importable by name)


@dataclass
class Shop:
    name: str
    opened: datetime
    logo: bytes


class Invoice(BaseModel):
    number: int
    total: float
    issued: datetime


@dataclass
class Refund:
    reason: str


def rich_response(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """First a response with every response part kind and a tool call; then the structured output."""
    if len(messages) == 1:
        return ModelResponse(
            parts=[
                ThinkingPart("let me think", signature="sig-1"),
                TextPart("checking the shop"),
                FilePart(BinaryContent(b"\x89PNG\xff\x00", media_type="image/png")),
                NativeToolCallPart("web_search", {"query": "shop"}, tool_call_id="n1"),
                NativeToolReturnPart("web_search", {"hits": ["a", "b"]}, tool_call_id="n1"),
                ToolCallPart("shop_name", {}, tool_call_id="t1"),
            ]
        )
    tool = info.output_tools[0]
    properties = tool.parameters_json_schema.get("properties", {})
    if "reason" in properties:
        args: dict[str, Any] = {"reason": "broken"}
    else:
        args = {"number": 7, "total": 12.5, "issued": "2026-01-02T03:04:05Z"}
    return ModelResponse(parts=[ToolCallPart(tool.name, args, tool_call_id="o1")])


def make_agent(name: str, output_type: Any) -> DBOSAgent[Shop, Any]:
    agent = Agent(FunctionModel(rich_response), name=name, deps_type=Shop, output_type=output_type)

    @agent.tool
    def shop_name(ctx: RunContext[Shop]) -> str:
        return ctx.deps.name

    return DBOSAgent(agent)


def stored_rows(workflow_id: str) -> list[tuple[str, str | None, str | None]]:
    """(function name, output text, serialization) of each recorded step, from the database itself."""
    from dbos_pydantic_ai._compat import system_tables

    engine, tables = system_tables(None)
    oo = tables.operation_outputs
    query = (
        sa.select(oo.c.function_name, oo.c.output, oo.c.serialization)
        .where(oo.c.workflow_uuid == workflow_id)
        .order_by(oo.c.function_id)
    )
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]  # type: ignore[misc]


SHOP = Shop("Mugs & Co", datetime(2020, 5, 1, 9, 30, tzinfo=UTC), b"\x00\xfflogo")


async def test_parts_outputs_and_deps_round_trip_through_a_workflow(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    durable = make_agent(agent_name, Invoice)
    launch_dbos()

    with DBOS_workflow_id("wf-json"):
        result = await durable.run("bill me", deps=SHOP)

    assert result.output == Invoice(number=7, total=12.5, issued=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    rows = stored_rows("wf-json")
    assert rows and all(serialization == JSON_SERIALIZATION for _, output, serialization in rows if output)
    first = json.loads(rows[0][1] or "null")
    assert first["$type"] == "pydantic_ai.ModelResponse"
    kinds = [part["part_kind"] for part in first["value"]["parts"]]
    assert kinds == ["thinking", "text", "file", "builtin-tool-call", "builtin-tool-return", "tool-call"]

    # Read back by DBOS: the stored inputs (deps with datetime and bytes) and result are the typed values.
    status = await DBOS.get_workflow_status_async("wf-json")
    assert status is not None and status.input["kwargs"]["deps"] == SHOP
    stored = await (await DBOS.retrieve_workflow_async("wf-json")).get_result()
    assert stored.output == result.output
    assert [type(m).__name__ for m in stored.all_messages()] == [type(m).__name__ for m in result.all_messages()]
    response = stored.all_messages()[1]
    assert isinstance(response, ModelResponse)
    assert [p.part_kind for p in response.parts] == kinds
    file_part = response.parts[2]
    assert isinstance(file_part, FilePart) and file_part.content.data == b"\x89PNG\xff\x00"

    # A replay from the second step reads the first model response back from its JSON row.
    handle = await DBOS.fork_workflow_async("wf-json", 2)
    replayed = await handle.get_result()
    assert replayed.output == result.output


@pytest.mark.parametrize("output_type", [Refund, [Invoice, Refund]], ids=["dataclass", "union"])
async def test_dataclass_and_union_outputs(agent_name: str, launch_dbos: Callable[[], None], output_type: Any) -> None:
    durable = make_agent(agent_name, output_type)
    launch_dbos()
    with DBOS_workflow_id("wf-out"):
        result = await durable.run("refund", deps=SHOP)
    stored = await (await DBOS.retrieve_workflow_async("wf-out")).get_result()
    assert type(stored.output) is type(result.output)
    assert stored.output == result.output


def approve_then_done(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("refund", {"amount": 5}, tool_call_id="r1")])
    return ModelResponse(parts=[TextPart("done")])


async def test_deferred_requests_and_results_are_stored_as_json(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    agent = Agent(FunctionModel(approve_then_done), name=agent_name, output_type=[str, DeferredToolRequests])

    @agent.tool_plain(requires_approval=True)
    def refund(amount: int) -> str:
        return f"refunded {amount}"

    durable = DBOSAgent(agent)
    launch_dbos()
    with DBOS_workflow_id("wf-deferred"):
        first = await durable.run("refund me")
    assert isinstance(first.output, DeferredToolRequests)
    stored = await (await DBOS.retrieve_workflow_async("wf-deferred")).get_result()
    assert stored.output == first.output

    results = DeferredToolResults(approvals={"r1": ToolApproved()})
    with DBOS_workflow_id("wf-deferred-2"):
        second = await durable.run(message_history=first.all_messages(), deferred_tool_results=results)
    assert second.output == "done"
    status = await DBOS.get_workflow_status_async("wf-deferred-2")
    assert status is not None and status.input["kwargs"]["deferred_tool_results"] == results


async def test_a_crafted_row_is_refused_not_called(
    agent_name: str, launch_dbos: Callable[[], None], tmp_path: Path, database_url: str
) -> None:
    durable = make_agent(agent_name, Invoice)
    launch_dbos()
    with DBOS_workflow_id("wf-crafted"):
        await durable.run("bill me", deps=SHOP)
    marker = tmp_path / "pwned"
    crafted_json = json.dumps({"$type": "os.system", "value": f"touch {marker}"})
    crafted_pickle = base64.b64encode(pickle.dumps(_Boom(str(marker)))).decode()
    from dbos_pydantic_ai._compat import system_tables

    engine, tables = system_tables(None)
    ws, wo, oo = tables.workflow_status, tables.workflow_output, tables.operation_outputs
    with engine.begin() as connection:
        for table in (ws, wo):
            connection.execute(
                sa.update(table).where(table.c.workflow_uuid == "wf-crafted").values(output=crafted_json)
            )
        connection.execute(
            sa.update(oo)
            .where(oo.c.workflow_uuid == "wf-crafted", oo.c.function_id == 1)
            .values(output=crafted_pickle, serialization="py_pickle")
        )

    # A worker refuses the JSON row with a clear error.
    with pytest.raises(UnknownStoredTypeError, match=r"os\.system"):
        await (await DBOS.retrieve_workflow_async("wf-crafted")).get_result()
    # Readers show it as data, and the pickled step as "stored as pickle": nothing is called.
    from dbos import DBOSClient

    client = DBOSClient(system_database_url=database_url)
    statuses = safe_list_workflows(client, workflow_ids=["wf-crafted"])
    assert statuses[0].output.type_name == "os.system"
    steps = safe_list_workflow_steps(client, "wf-crafted")
    assert isinstance(steps[0]["output"], StoredAsPickle)
    assert str(steps[0]["output"]) == "stored as pickle, not displayed"
    client.destroy()
    assert not marker.exists()
    # Decoding an exception off the allowlist gives a stand-in that only names it.
    error = JSONSerializer().deserialize(
        json.dumps({"$type": "exception", "class": "os.system", "message": "m", "args": [f"touch {marker}"]})
    )
    assert type(error).__name__ == "StepFailedError" and not marker.exists()


class _Boom:
    """Unpickling it would run a command (only a test row; the readers must not unpickle it)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.path}",))


async def test_unregistered_types_are_refused_before_the_run_starts(
    agent_name: str, launch_dbos: Callable[[], None]
) -> None:
    @dataclass
    class Unregistered:
        value: int

    durable = make_agent(agent_name, Invoice)
    launch_dbos()
    with pytest.raises(NotSerializableError, match=r"`metadata\['x'\]`.*not registered.*register_types"):
        await durable.run("bill me", deps=SHOP, metadata={"x": Unregistered(1)})
    assert not await DBOS.list_workflows_async()


async def test_pickled_rows_are_still_read_after_switching_to_json(agent_name: str, database_url: str) -> None:
    durable = make_agent(agent_name, Invoice)
    DBOS.destroy()
    config = dbos_config("dbos_pai_test", database_url=database_url, application_version="test", **FAST_POLLING)
    DBOS(
        config=dbos_config(
            "dbos_pai_test", database_url=database_url, application_version="test", serializer="pickle", **FAST_POLLING
        )
    )
    DBOS.launch()
    try:
        with DBOS_workflow_id("wf-old"):
            before = await durable.run("bill me", deps=SHOP)
        assert {s for _, o, s in stored_rows("wf-old") if o} == {"py_pickle"}
    finally:
        DBOS.destroy()
    DBOS(config=config)  # the default: typed JSON
    DBOS.launch()
    try:
        # The old result and a run continued from its pickled steps are read by the worker as before.
        assert (await (await DBOS.retrieve_workflow_async("wf-old")).get_result()).output == before.output
        handle = await DBOS.fork_workflow_async("wf-old", 2)
        assert (await handle.get_result()).output == before.output
        assert {s for _, o, s in stored_rows(handle.workflow_id) if o} == {"py_pickle", JSON_SERIALIZATION}
    finally:
        DBOS.destroy()


async def test_sql_lists_a_runs_tool_calls(agent_name: str, launch_dbos: Callable[[], None], database_url: str) -> None:
    """The query in docs/serialization.md, on PostgreSQL's JSON operators."""
    if not database_url.startswith("postgres"):
        pytest.skip("the documented query uses PostgreSQL's JSON operators")
    durable = make_agent(agent_name, Invoice)
    launch_dbos()
    with DBOS_workflow_id("wf-sql"):
        await durable.run("bill me", deps=SHOP)
    query = Path(__file__).parent.parent.joinpath("docs", "serialization.md").read_text().split("```sql")[1]
    query = query.split("```")[0]
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text(query), {"workflow_id": "wf-sql"}).all()
    finally:
        engine.dispose()
    assert [(row.tool_name, row.tool_call_id) for row in rows] == [("shop_name", "t1"), ("final_result", "o1")]


class DBOS_workflow_id:
    """`SetWorkflowID` as a sync context manager."""

    def __init__(self, workflow_id: str) -> None:
        from dbos import SetWorkflowID

        self._inner = SetWorkflowID(workflow_id)

    def __enter__(self) -> None:
        self._inner.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self._inner.__exit__(*exc_info)


register_types(Refund)  # an output type of a per-run choice would need it; `make_agent` declares it anyway


def test_messages_are_stored_without_their_default_nones_and_user_data_is_kept_as_is() -> None:
    """Stored messages leave out the None fields and zero usage counters reading restores; a tool's return that looks
    like a message (its own `kind` and None values) is user data and keeps every key."""
    from pydantic_ai.messages import ModelRequest, RequestUsage, ToolReturnPart

    looks_like_a_message = {"kind": "response", "model_name": None, "parts": [{"part_kind": "text", "id": None}]}
    messages: list[ModelMessage] = [
        ModelRequest(parts=[ToolReturnPart("lookup", looks_like_a_message, tool_call_id="c1")]),
        ModelResponse(parts=[TextPart("done")], usage=RequestUsage(input_tokens=3), model_name="m"),
    ]
    serializer = JSONSerializer()
    text = serializer.serialize(messages)
    assert serializer.deserialize(text) == messages
    stored = json.loads(text)
    response = stored[1]["value"]  # a list is stored as a JSON list
    assert "provider_name" not in response and "finish_reason" not in response  # None by default: left out
    assert response["usage"] == {"input_tokens": 3}  # counters at 0 left out
    returned = stored[0]["value"]["parts"][0]["content"]
    assert returned == looks_like_a_message
