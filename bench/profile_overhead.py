"""Where a durable run's overhead goes: the engine (workflow + steps) against our integration code.

For a run of N model requests we time, in wall clock, (a) the plain agent, (b) our durable run,
(c) an empty DBOS workflow, and, inside (b), the time spent in DBOS's `run_step_async` around each
model request minus the time the model itself took. Then

    overhead            = (b) - (a)
    engine: workflow    = (c)
    engine: steps       = time inside run_step_async, outside the model call
    integration         = overhead - workflow - steps   (our wrappers, the capability, input checks)

    python bench/profile_overhead.py [--database-url URL] [--n 10] [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dbos import DBOS, SetWorkflowID

sys.path.insert(0, str(Path(__file__).parent))

import run as workload
from dbos_pydantic_ai import _steps, dbos_config

_in_steps: list[float] = []
_in_model: list[float] = []


def _instrument() -> None:
    """Time every durable step, and the model call inside it."""
    original_run_step_async = DBOS.run_step_async

    async def timed_run_step_async(options: Any, func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return await original_run_step_async(options, func, *args)
        finally:
            _in_steps.append(time.perf_counter() - start)

    original_model = workload.scripted_model

    def timed_model(*args: Any) -> Any:
        start = time.perf_counter()
        try:
            return original_model(*args)
        finally:
            _in_model.append(time.perf_counter() - start)

    class TimedDBOS:
        run_step_async = staticmethod(timed_run_step_async)

        def __getattr__(self, name: str) -> Any:
            return getattr(DBOS, name)

    _steps.DBOS = TimedDBOS()  # type: ignore[assignment]
    workload.ours.wrapped.model.function = timed_model  # type: ignore[union-attr]


@DBOS.workflow(name="bench.empty_workflow")
async def empty_workflow() -> str:
    return "done"


async def median_ms(func: Callable[[], Awaitable[Any]], runs: int) -> float:
    times = []
    for _ in range(runs):
        with SetWorkflowID(uuid.uuid4().hex):
            start = time.perf_counter()
            await func()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=f"sqlite:////tmp/profile-{uuid.uuid4().hex[:8]}.sqlite")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    DBOS(config=dbos_config("profile", database_url=args.database_url, application_version="p", log_level="WARNING"))
    DBOS.launch()
    _instrument()
    n = args.n

    for _ in range(5):  # warm up
        await workload.run_ours(n)
        await workload.run_plain(n)
        await empty_workflow()
    plain = await median_ms(lambda: workload.run_plain(n), args.runs)
    workflow = await median_ms(empty_workflow, args.runs)
    _in_steps.clear()
    _in_model.clear()
    ours = await median_ms(lambda: workload.run_ours(n), args.runs)
    steps_per_run = (sum(_in_steps) - sum(_in_model)) * 1000 / args.runs

    overhead = ours - plain
    integration = overhead - workflow - steps_per_run
    print(f"database {args.database_url.split(':')[0]}, N={n}, medians over {args.runs} runs")
    print(f"  plain agent run                 {plain:8.2f} ms")
    print(f"  durable run (ours)              {ours:8.2f} ms")
    print(f"  overhead                        {overhead:8.2f} ms  = {overhead / n:.2f} ms per model request")
    print(f"    engine: empty workflow        {workflow:8.2f} ms  ({workflow / overhead:.0%})")
    print(f"    engine: {n} model steps         {steps_per_run:8.2f} ms  ({steps_per_run / overhead:.0%})")
    print(f"    integration (everything else) {integration:8.2f} ms  ({integration / overhead:.0%})")
    DBOS.destroy()


if __name__ == "__main__":
    asyncio.run(main())
