"""Where a durable run's overhead goes: the engine (workflow + steps) against our integration code.

Part 1, the run. For a run of N model requests we time, in wall clock, (a) the plain agent, (b) our
durable run, (c) an empty DBOS workflow, and, inside (b), the time spent in DBOS's `run_step_async`
around each model request minus the time the model itself took. Then

    overhead            = (b) - (a)
    engine: workflow    = (c)
    engine: steps       = time inside run_step_async, outside the model call
    integration         = overhead - workflow - steps   (our wrappers, the capability, input checks)

Part 2, one step. Inside `run_step_async` DBOS checks for a recorded result in one transaction on a
worker thread, runs the function on the event loop, and records its result in a second transaction
on a worker thread. We timestamp each phase, for our model step during an agent run and for the bare
benchmark's empty step, so the hand-offs between the event loop and the worker threads show apart
from the two transactions. (This part patches two methods of DBOS's system database object to read
the clock: measurement only.)

Part 3, the integration's share. Outside any workflow, where no step is taken, we time the plain
agent run with no capability, with an empty pydantic-ai capability, and with our per-run capability:
the first difference is what pydantic-ai charges for any capability (the competitor's `DBOSDurability`
is one too), the second is our wrappers of the model and the toolsets.

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
from pydantic_ai.capabilities import AbstractCapability

sys.path.insert(0, str(Path(__file__).parent))

import run as workload
from dbos_pydantic_ai import _steps, dbos_config
from dbos_pydantic_ai.agent import _DurableRun

_in_steps: list[float] = []
_in_model: list[float] = []
_clock: dict[str, float] = {}  # phase timestamps of the step in progress
_timelines: list[dict[str, float]] = []

PHASES = {
    "hand-off to a thread": ("start", "check_start"),
    "transaction: check for a recorded result": ("check_start", "check_end"),
    "hand-off back to the loop": ("check_end", "func_start"),
    "the function (model request)": ("func_start", "func_end"),
    "serialize, hand-off to a thread": ("func_end", "record_start"),
    "transaction: record the result": ("record_start", "record_end"),
    "hand-off back to the caller": ("record_end", "end"),
}


def _stamped(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        _clock[f"{name}_start"] = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            _clock[f"{name}_end"] = time.perf_counter()

    return call


def _instrument() -> None:
    """Time every durable step, the model call inside it, and the phases of the step."""
    from dbos._dbos import _dbos_global_instance

    assert _dbos_global_instance is not None
    sys_db = _dbos_global_instance._sys_db
    sys_db.check_operation_execution = _stamped("check", sys_db.check_operation_execution)  # type: ignore[method-assign]
    sys_db.record_operation_result = _stamped("record", sys_db.record_operation_result)  # type: ignore[method-assign]
    original_run_step_async = DBOS.run_step_async

    async def timed_run_step_async(options: Any, func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        async def stamped_func(*args: Any) -> Any:
            _clock["func_start"] = time.perf_counter()
            try:
                return await func(*args)
            finally:
                _clock["func_end"] = time.perf_counter()

        _clock.clear()
        _clock["start"] = time.perf_counter()
        try:
            return await original_run_step_async(options, stamped_func, *args)
        finally:
            _clock["end"] = time.perf_counter()
            _in_steps.append(_clock["end"] - _clock["start"])
            _in_model.append(_clock["func_end"] - _clock["func_start"])
            _timelines.append(dict(_clock))

    class TimedDBOS:
        run_step_async = staticmethod(timed_run_step_async)

        def __getattr__(self, name: str) -> Any:
            return getattr(DBOS, name)

    _steps.DBOS = TimedDBOS()  # type: ignore[assignment]


async def _nothing() -> None:
    return None


@DBOS.workflow(name="bench.empty_workflow")
async def empty_workflow() -> str:
    return "done"


@DBOS.workflow(name="bench.bare_timed")
async def bare_timed(n: int) -> str:
    for _ in range(n):
        await _steps.DBOS.run_step_async({"name": "bench.empty_step"}, _nothing)  # the timed one, once instrumented
    return "done"


class _EmptyCapability(AbstractCapability[Any]):
    """A capability that changes nothing: what pydantic-ai charges for having one."""


async def capability_costs(n: int, runs: int) -> dict[str, float]:
    """Median ms of a plain run (outside any workflow) with no capability, an empty one, and ours."""
    variants: dict[str, Callable[[], list[AbstractCapability[Any]]]] = {
        "no capability": list,
        "an empty capability": lambda: [_EmptyCapability()],
        "our per-run capability": lambda: [_DurableRun(workload.ours, None, run_id="profile")],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):  # interleaved
        for name, capabilities in variants.items():
            start = time.perf_counter()
            await workload.plain_agent.run(f"n={n}", capabilities=capabilities())
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


async def median_ms(func: Callable[[], Awaitable[Any]], runs: int) -> float:
    times = []
    for _ in range(runs):
        with SetWorkflowID(uuid.uuid4().hex):
            start = time.perf_counter()
            await func()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def timeline() -> dict[str, float]:
    """Median ms of each phase over the steps timed since the last call."""
    phases = {
        phase: statistics.median(t[end] - t[begin] for t in _timelines) * 1000 for phase, (begin, end) in PHASES.items()
    }
    _timelines.clear()
    return phases


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
        await bare_timed(n)
    plain = await median_ms(lambda: workload.run_plain(n), args.runs)
    workflow = await median_ms(empty_workflow, args.runs)
    _in_steps.clear()
    _in_model.clear()
    _timelines.clear()
    ours = await median_ms(lambda: workload.run_ours(n), args.runs)
    steps_per_run = (sum(_in_steps) - sum(_in_model)) * 1000 / args.runs
    in_run = timeline()
    await median_ms(lambda: bare_timed(n), args.runs)
    bare = timeline()

    overhead = ours - plain
    integration = overhead - workflow - steps_per_run
    print(f"database {args.database_url.split(':')[0]}, N={n}, medians over {args.runs} runs")
    print(f"  plain agent run                 {plain:8.2f} ms")
    print(f"  durable run (ours)              {ours:8.2f} ms")
    print(f"  overhead                        {overhead:8.2f} ms  = {overhead / n:.2f} ms per model request")
    print(f"    engine: empty workflow        {workflow:8.2f} ms  ({workflow / overhead:.0%})")
    print(f"    engine: {n} model steps         {steps_per_run:8.2f} ms  ({steps_per_run / overhead:.0%})")
    print(f"    integration (everything else) {integration:8.2f} ms  ({integration / overhead:.0%})")
    print()
    print(f"  one step, median ms per phase    {'our model step in a run':>24s} {'bare empty step':>16s}")
    for phase in PHASES:
        print(f"    {phase:42s} {in_run[phase]:12.3f} {bare[phase]:16.3f}")
    total_in_run = sum(v for k, v in in_run.items() if not k.startswith("the function"))
    total_bare = sum(v for k, v in bare.items() if not k.startswith("the function"))
    print(f"    {'sum without the function':42s} {total_in_run:12.3f} {total_bare:16.3f}")
    print()
    capabilities = await capability_costs(n, args.runs * 3)
    print("  plain run outside a workflow, with")
    for name, ms in capabilities.items():
        print(f"    {name:42s} {ms:8.2f} ms")
    DBOS.destroy()


if __name__ == "__main__":
    asyncio.run(main())
