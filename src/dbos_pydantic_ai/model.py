"""Model requests as DBOS steps.

Inside a workflow, `DBOSModel.request` and `DBOSModel.request_stream` each run as one DBOS step: the
response is checkpointed, so a recovered run gets it back from the database instead of paying for
the request again. A request that fails transiently is retried durably, one step per attempt, with a
durable wait between them (`retries.py`). The request itself is sent from the process's durable loop
(`_durable_loop.py`), where the model's HTTP client lives whatever loop the run is on. Outside a
workflow the model is the wrapped model, unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from dbos import DBOS, StepOptions
from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessage, ModelResponse, ModelResponseStreamEvent
from pydantic_ai.models import CompletedStreamedResponse, Model, ModelRequestParameters, StreamedResponse
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import RunContext

from ._durable_loop import on_durable_loop, relay_from_durable_loop
from ._steps import in_workflow, portable_exception, run_step, step_options
from .config import StepConfig, validate_step_config
from .names import RETRY_EVENT, model_request_step, model_request_stream_step
from .retries import (
    DEFAULT_MODEL_RETRY,
    FailedAttempt,
    ModelRetryPolicy,
    is_transient,
    record_failure,
    retry_state,
)
from .streams import attempt_of_request

__all__ = ["DBOSModel"]

logger = logging.getLogger(__name__)


class DBOSModel(WrapperModel):
    """A model whose requests are DBOS steps when made inside a workflow.

    Steps are named `{step_name_prefix}__model.request` and `{step_name_prefix}__model.request_stream`.
    A streamed request is drained inside its step; `event_stream_handler`, when given, receives the
    model's events live from inside the step, and the workflow then continues with the complete response.

    `retry` is how a transient failure is retried (see `ModelRetryPolicy`); None fails at the first error.
    A `step_config` replaces it: its requests are retried by DBOS inside one step, as that config says.
    """

    def __init__(
        self,
        model: Model | str,
        *,
        step_name_prefix: str,
        step_config: StepConfig | None = None,
        event_stream_handler: EventStreamHandler[Any] | None = None,
        retry: ModelRetryPolicy | None = DEFAULT_MODEL_RETRY,
    ) -> None:
        super().__init__(model)
        config = validate_step_config(step_config, argument="model_step_config")
        self.step_name_prefix = step_name_prefix
        self.event_stream_handler = event_stream_handler
        self.retry = None if config else retry
        self._request_options = step_options(model_request_step(step_name_prefix), config)
        self._stream_options = step_options(model_request_stream_step(step_name_prefix), config)

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        if not in_workflow():
            return await self.wrapped.request(messages, model_settings, model_request_parameters)
        return await self._durably(
            self._request_options, self._request, messages, model_settings, model_request_parameters
        )

    async def _request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        return await on_durable_loop(self.wrapped.request(messages, model_settings, model_request_parameters))

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncGenerator[StreamedResponse]:
        if not in_workflow():
            async with self.wrapped.request_stream(
                messages, model_settings, model_request_parameters, run_context
            ) as stream:
                yield stream
            return
        if run_context is None:  # not an agent run's request: `pydantic_ai.direct.model_request_stream`
            raise UserError(
                "`model_request_stream()` cannot run durably inside a DBOS workflow: it hands the live stream to the "
                "caller, which a replay could not reproduce. Use `model_request()` (a checkpointed step), or run an "
                "agent with `event_stream_handler=` to receive the events live."
            )
        response = await self._durably(
            self._stream_options,
            self._stream_to_completion,
            messages,
            model_settings,
            model_request_parameters,
            run_context,
        )
        yield CompletedStreamedResponse(response, model_request_parameters=model_request_parameters)

    async def _stream_to_completion(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None,
    ) -> ModelResponse:
        """Stream the response on the durable loop; the handler gets its events live on the run's own loop."""

        async def produce(emit: Callable[[ModelResponseStreamEvent], Awaitable[None]]) -> ModelResponse:
            async with self.wrapped.request_stream(
                messages, model_settings, model_request_parameters, run_context
            ) as stream:
                async for event in stream:
                    await emit(event)
                return stream.get()

        handler = self.event_stream_handler
        if handler is None or run_context is None:
            return await on_durable_loop(produce(_drop))
        return await relay_from_durable_loop(produce, lambda events: handler(run_context, events))

    # --- Retries (see retries.py) ----------------------------------------------------------------

    async def _durably(
        self, options: StepOptions, send: Callable[..., Coroutine[Any, Any, ModelResponse]], *args: Any
    ) -> ModelResponse:
        """Send the request in a step, and again after a durable wait while it fails transiently."""
        policy = self.retry
        if policy is None:
            return await run_step(options, send, *args)
        failure: FailedAttempt | None = None
        while True:
            outcome = await run_step(options, self._attempt, policy, failure, send, *args)
            if not isinstance(outcome, FailedAttempt):
                if failure is not None:
                    await DBOS.set_event_async(RETRY_EVENT, retry_state(failure, state="recovered", next_try_at=None))
                return outcome
            failure = outcome
            delay = policy.delay(failure, seed=f"{DBOS.workflow_id}:{failure.first_step_id}:{failure.attempt}")
            next_try_at = failure.failed_at + delay
            if next_try_at - failure.window_started_at > policy.horizon_seconds:
                await DBOS.set_event_async(RETRY_EVENT, retry_state(failure, state="gave_up", next_try_at=None))
                failure.error.add_note(
                    f"dbos-pydantic-ai: the model request failed {failure.attempt} times over "
                    f"{failure.failed_at - failure.window_started_at:.0f} s (retry horizon "
                    f"{policy.horizon_seconds:g} s). After the outage, continue the run from this request with "
                    "`dbos_pydantic_ai.continue_run(workflow_id)` or `dbos-pydantic-ai runs continue WORKFLOW_ID`."
                )
                raise failure.error
            await DBOS.set_event_async(RETRY_EVENT, retry_state(failure, state="waiting", next_try_at=next_try_at))
            await DBOS.sleep_async(delay)  # durable: a recovered run waits only for what is left

    @staticmethod
    async def _attempt(
        policy: ModelRetryPolicy,
        previous: FailedAttempt | None,
        send: Callable[..., Coroutine[Any, Any, ModelResponse]],
        *args: Any,
    ) -> ModelResponse | FailedAttempt:
        """One attempt, inside its step: a transient failure is its recorded result, any other error is raised."""
        step_id = DBOS.step_id
        assert step_id is not None, "an attempt runs inside its step"
        # A retry's streamed events belong to the request's first step, so readers supersede the failed attempt's.
        with attempt_of_request(previous.first_step_id if previous is not None else None):
            try:
                return await send(*args)
            except Exception as error:
                if not is_transient(error):
                    raise
                failure = record_failure(portable_exception(error), previous, step_id=step_id, policy=policy)
                # Logged here, in the step, so a replay of the run does not log it again.
                logger.warning(
                    "Model request of run %s failed (attempt %d, %s); it is retried after a durable wait",
                    DBOS.workflow_id,
                    failure.attempt,
                    failure.describe(),
                )
                return failure


async def _drop(event: ModelResponseStreamEvent) -> None:
    """Consumes the events of a streamed request that nobody listens to."""
