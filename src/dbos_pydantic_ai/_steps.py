"""Running a call as a DBOS step: names, retry options, and exceptions that replay as they were raised."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from dbos import DBOS, StepOptions, StepReservation
from pydantic_ai.exceptions import (
    ApprovalRequired,
    CallDeferred,
    ModelRetry,
    SkipModelRequest,
    ToolFailed,
    ToolFailedError,
    ToolRetryError,
)

from ._serialization import configured_serializer
from .config import StepConfig
from .exceptions import NotSerializableError, StepFailedError
from .fleet import hold_lease
from .tracing import StepTrace, step_trace

T = TypeVar("T")

# Exceptions that steer the agent (ask the model to retry, report a failed tool call to the model,
# defer a call for approval) rather than report a failure: a step that raises one must not be retried
# by DBOS, only recorded and re-raised.
CONTROL_FLOW_EXCEPTIONS: tuple[type[BaseException], ...] = (
    ModelRetry,
    ToolFailed,
    ApprovalRequired,
    CallDeferred,
    ToolRetryError,
    ToolFailedError,
    SkipModelRequest,
)


def in_workflow() -> bool:
    """Whether the caller runs inside a DBOS workflow, where steps are checkpointed."""
    return DBOS.workflow_id is not None


def _should_retry(error: BaseException) -> bool:
    # A result DBOS cannot store fails the same way on every attempt: retrying would only repeat side effects.
    return not isinstance(error, (*CONTROL_FLOW_EXCEPTIONS, NotSerializableError))


def step_options(name: str, config: StepConfig) -> StepOptions:
    """DBOS step options for a step called `name` with the retry policy `config`."""
    options: StepOptions = {"name": name, "should_retry": _should_retry}
    options.update(config)  # type: ignore[typeddict-item]
    return options


class _StoredSkipModelRequest(SkipModelRequest):
    """A `SkipModelRequest` that rebuilds from its pickle: pydantic-ai's own needs its `response` argument,
    which its pickle does not pass, so a replay could not raise it again."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.response,), self.__dict__)


def portable_exception(error: Exception) -> Exception:
    """`error` itself if DBOS's configured serializer stores it and rebuilds the same exception on replay, else a
    `StepFailedError`. With typed JSON that means a class on the allowlist (pydantic-ai's, this package's, common
    builtin ones and what the application registers) whose attributes can be stored.

    A `SkipModelRequest` (the model's answer given without a request) is kept as one, so the agent still uses
    its response, on the first run and on a replay.
    """
    if type(error) is SkipModelRequest:
        skip = _StoredSkipModelRequest(error.response)
        skip.__dict__.update(vars(error))
        return skip
    serializer = configured_serializer()
    try:
        rebuilt = serializer.deserialize(serializer.serialize(error))
    except Exception:
        rebuilt = None
    if type(rebuilt) is type(error):
        return error
    return StepFailedError(f"{type(error).__module__}.{type(error).__qualname__}", str(error))


def checkpointable(
    func: Callable[..., Awaitable[T]], traced: StepTrace | None = None
) -> Callable[..., Coroutine[Any, Any, T]]:
    """`func` with its exceptions made safe to record (see `portable_exception`), run only while this worker holds
    its fleet lease (see `fleet.py`: a worker that may have been declared dead starts no step). `traced` (tracing on)
    learns that the step ran live, not from the database."""

    async def call(*args: Any) -> T:
        if traced is not None:
            await traced.live()
        await hold_lease()
        try:
            return await func(*args)
        except Exception as error:
            portable = portable_exception(error)
            if portable is error:
                raise
            raise portable from error

    return call


async def run_step(options: StepOptions, func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run `await func(*args)` as a DBOS step; its result, or the exception it raised, is checkpointed."""
    traced = step_trace(options["name"] or "")
    if traced is None:
        return await DBOS.run_step_async(options, checkpointable(func), *args)
    with traced:
        return await DBOS.run_step_async(options, checkpointable(func, traced), *args)


async def run_reserved_step(
    reservation: StepReservation, options: StepOptions, func: Callable[..., Awaitable[T]], *args: Any
) -> T:
    """Like `run_step`, at a step number reserved earlier with `DBOS.reserve_step()`."""
    traced = step_trace(options["name"] or "", reservation.step_id)
    if traced is None:
        return await reservation.run_async(options, checkpointable(func), *args)
    with traced:
        return await reservation.run_async(options, checkpointable(func, traced), *args)
