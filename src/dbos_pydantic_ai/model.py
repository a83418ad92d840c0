"""Model requests as DBOS steps.

Inside a workflow, `DBOSModel.request` and `DBOSModel.request_stream` each run as one DBOS step: the
response is checkpointed, so a recovered run gets it back from the database instead of paying for
the request again. The request itself is sent from the process's durable loop (`_durable_loop.py`), where the
model's HTTP client lives whatever loop the run is on. Outside a workflow the model is the wrapped model, unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.messages import ModelMessage, ModelResponse, ModelResponseStreamEvent
from pydantic_ai.models import CompletedStreamedResponse, Model, ModelRequestParameters, StreamedResponse
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import RunContext

from ._durable_loop import on_durable_loop, relay_from_durable_loop
from ._steps import in_workflow, run_step, step_options
from .config import StepConfig, validate_step_config

__all__ = ["DBOSModel"]


class DBOSModel(WrapperModel):
    """A model whose requests are DBOS steps when made inside a workflow.

    Steps are named `{step_name_prefix}__model.request` and `{step_name_prefix}__model.request_stream`.
    A streamed request is drained inside its step; `event_stream_handler`, when given, receives the
    model's events live from inside the step, and the workflow then continues with the complete response.
    """

    def __init__(
        self,
        model: Model | str,
        *,
        step_name_prefix: str,
        step_config: StepConfig | None = None,
        event_stream_handler: EventStreamHandler[Any] | None = None,
    ) -> None:
        super().__init__(model)
        config = validate_step_config(step_config, argument="model_step_config")
        self.step_name_prefix = step_name_prefix
        self.event_stream_handler = event_stream_handler
        self._request_options = step_options(f"{step_name_prefix}__model.request", config)
        self._stream_options = step_options(f"{step_name_prefix}__model.request_stream", config)

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        if not in_workflow():
            return await self.wrapped.request(messages, model_settings, model_request_parameters)
        return await run_step(self._request_options, self._request, messages, model_settings, model_request_parameters)

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
        response = await run_step(
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


async def _drop(event: ModelResponseStreamEvent) -> None:
    """Consumes the events of a streamed request that nobody listens to."""
