"""One DBOS step, five ways, outside any agent run: is our model step dearer than the engine's own step?

Each variant is a workflow of 10 steps; medians over interleaved rounds.

- `decorated`: a `@DBOS.step` returning None (the bare benchmark's step)
- `run_step_async`: `DBOS.run_step_async` returning a `ModelResponse`
- `our options`: the same with our step options (name, `should_retry`)
- `our run_step`: through `dbos_pydantic_ai._steps.run_step` (adds the exception normaliser)
- `DBOSModel.request`: our model wrapper around a `FunctionModel`, exactly as a durable run calls it

    python bench/step_micro.py [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from dbos import DBOS, SetWorkflowID
from pydantic_ai.messages import ModelRequest, ModelResponse, ToolCallPart, UserPromptPart
from pydantic_ai.models import ModelRequestParameters
from pydantic_ai.models.function import FunctionModel

from dbos_pydantic_ai import DBOSModel, dbos_config
from dbos_pydantic_ai._steps import run_step, step_options

RESPONSE = ModelResponse(parts=[ToolCallPart("lookup", {"key": 3})])
OPTIONS = step_options("micro__model.request", {})
MODEL = DBOSModel(FunctionModel(lambda messages, info: RESPONSE), step_name_prefix="micro")
MESSAGES = [ModelRequest(parts=[UserPromptPart("hi")])]
PARAMETERS = ModelRequestParameters()
STEPS = 10


async def response() -> ModelResponse:
    return RESPONSE


@DBOS.step(name="micro.empty")
async def empty() -> None:
    return None


@DBOS.workflow(name="micro.steps")
async def ten_steps(kind: str) -> None:
    for _ in range(STEPS):
        if kind == "decorated":
            await empty()
        elif kind == "run_step_async":
            await DBOS.run_step_async({"name": "micro.plain"}, response)
        elif kind == "our options":
            await DBOS.run_step_async(OPTIONS, response)
        elif kind == "our run_step":
            await run_step(OPTIONS, response)
        else:
            await MODEL.request(MESSAGES, None, PARAMETERS)


async def median_ms(kind: str, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        with SetWorkflowID(uuid.uuid4().hex):
            start = time.perf_counter()
            await ten_steps(kind)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=f"sqlite:////tmp/step-micro-{uuid.uuid4().hex[:8]}.sqlite")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    DBOS(config=dbos_config("step_micro", database_url=args.database_url, application_version="m", log_level="WARNING"))
    DBOS.launch()
    kinds = ["decorated", "run_step_async", "our options", "our run_step", "DBOSModel.request"]
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            results[kind].append(await median_ms(kind))
    for kind in kinds:
        print(f"{kind:20s} {statistics.median(results[kind]) / STEPS:5.2f} ms per step")
    DBOS.destroy()


if __name__ == "__main__":
    asyncio.run(main())
