"""Typed JSON checkpoints through a SIGKILL and recovery, on both databases (issue 13).

`json_parts_worker.py` runs an agent whose first model response holds every response part kind (thinking, text,
an image file, a native tool call and its return, a tool call), whose tool returns an image, with dataclass deps
(datetime, bytes) and a pydantic output. It is killed with that response recorded, as JSON; a relaunch recovers the
run from the JSON rows: the model is not called again for the recorded response, and everything comes back typed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from crash_harness import CrashRun, WorkerProcess

from dbos_pydantic_ai.names import JSON_SERIALIZATION

pytestmark = [pytest.mark.crash, pytest.mark.timeout(300)]

WORKER = Path(__file__).with_name("json_parts_worker.py")
FIRST_RESPONSE = ["thinking", "text", "file", "builtin-tool-call", "builtin-tool-return", "tool-call"]


def launch(run: CrashRun, phase: str) -> WorkerProcess:
    return run.launch_script(WORKER, phase, "--workflow-id", run.workflow_id)


def stored_steps(database_url: str, workflow_id: str) -> list[tuple[str, str | None, str | None]]:
    url = sa.make_url(database_url)
    schema = None
    if url.drivername.startswith("postgres"):
        url, schema = url.set(drivername="postgresql+psycopg"), "dbos"
    table = sa.Table("operation_outputs", sa.MetaData(schema=schema), autoload_with=sa.create_engine(url))
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            query = (
                sa.select(table.c.function_name, table.c.output, table.c.serialization)
                .where(table.c.workflow_uuid == workflow_id)
                .order_by(table.c.function_id)
            )
            return [(row[0], row[1], row[2]) for row in connection.execute(query)]
    finally:
        engine.dispose()


def test_every_part_kind_survives_a_sigkill_as_json(crash_run: Callable[..., CrashRun]) -> None:
    run = crash_run("json", "async", [])
    first = launch(run, "start")
    run.wait_until(lambda: run.lines("tools.log") == ["inspect start"], "the tool to run", first)
    first.kill()
    assert run.lines("model.log") == ["1"]  # the first response was requested once, and recorded

    [(name, output, serialization)] = stored_steps(run.database_url, run.workflow_id)
    assert (name, serialization) == ("json_parts_agent__model.request", JSON_SERIALIZATION)
    stored = json.loads(output or "null")
    assert stored["$type"] == "pydantic_ai.ModelResponse"
    assert [part["part_kind"] for part in stored["value"]["parts"]] == FIRST_RESPONSE

    result = run.wait_for_output(launch(run, "recover"))
    assert run.lines("model.log") == ["1", "3"]  # recovery read the first response from its JSON row
    assert run.lines("tools.log") == ["inspect start", "inspect recover"]  # a plain tool runs again, as documented
    assert result["output"] == {"number": 7, "shop": "Mugs & Co", "issued": "2026-01-02T03:04:05Z"}
    assert result["kinds"] == [["user-prompt"], FIRST_RESPONSE, ["tool-return"], ["tool-call"], ["tool-return"]]
    assert {serialization for _, output, serialization in stored_steps(run.database_url, run.workflow_id)} == {
        JSON_SERIALIZATION
    }
