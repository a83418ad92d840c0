"""`DBOSAgent`: a Pydantic AI agent whose runs are DBOS workflows.

`run()` and `run_sync()` start a workflow (`{name}.run`, `{name}.run_sync`). Inside it the wrapped
agent runs as usual, with one extra, per-run capability (`_DurableRun`) that turns every model
request and MCP call into a DBOS step and keeps tool calls in replay order. After a crash DBOS
re-executes the workflow: completed steps return their recorded results, so nothing that finished
is paid for or done twice, and the run continues from where it stopped.

Without a launched DBOS, the agent is the wrapped agent, unchanged.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from dbos import DBOS
from pydantic_ai import CancellationToken
from pydantic_ai.agent import AbstractAgent, EventStreamHandler, WrapperAgent
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import UserError
from pydantic_ai.models import Model, parse_model_id
from pydantic_ai.output import OutputDataT
from pydantic_ai.run import AgentRun, AgentRunResult
from pydantic_ai.tools import AgentDepsT, DeferredToolRequests, DeferredToolResults, RunContext
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset

from ._approval_wait import wait_for_decisions
from ._compat import UNSET, Unset, check_no_nested_sync_run, dbos_launched
from ._durable_loop import run_on_durable_loop
from ._events import run_handlers
from ._serialization import ensure_serializable
from ._steps import in_workflow
from .config import StepConfig, duration_seconds, validate_step_config
from .model import DBOSModel
from .names import STREAM_EVENTS_INPUT, STREAMED_INPUT
from .names import run_sync_workflow as run_sync_workflow_name
from .names import run_workflow as run_workflow_name
from .retries import DEFAULT_MODEL_RETRY, ModelRetryPolicy
from .runs import RunHandle, StartOptions, check_start_options, refuse_live_run_args, start_here, start_here_async
from .serializer import register_declared_types
from .streams import (
    durable_run_events,
    durable_streamed_run,
    recorded_run_async,
)
from .tools import DBOSFunctionToolset, ToolCallOrder, durable_tool_names

if TYPE_CHECKING:
    from pydantic_ai.mcp import MCPToolset

__all__ = ["DBOSAgent", "DBOSParallelExecutionMode"]

DBOSParallelExecutionMode = Literal["parallel_ordered_events", "sequential"]
"""How a durable run executes the tool calls of one model response. Plain `'parallel'` is not offered:
it emits events in completion order, which a replay would not reproduce."""

DEFAULT_PARK_AFTER_SECONDS = 30.0
"""How long a waiting run nobody awaits stays in memory before it parks (`DBOSAgent(park_after=)`)."""

# Agent names registered in this process: each names workflows and steps, so it must be unique.
_registered_names: set[str] = set()


@dataclass(frozen=True)
class _LiveRunArgs:
    """Run arguments that live only in this process (a callback, a cancellation token).

    They are not workflow inputs: a run recovered by another process goes on without them.
    """

    event_stream_handler: EventStreamHandler[Any] | None = None
    cancellation_token: CancellationToken | None = None
    # A caller in this process awaits the run (`run()`, `run_sync()`, `run_stream()`): it never parks.
    awaited: bool = False


_NO_LIVE_RUN_ARGS = _LiveRunArgs()

_live_run_args: ContextVar[_LiveRunArgs] = ContextVar("dbos_pydantic_ai_live_run_args", default=_NO_LIVE_RUN_ARGS)


def _mcp_toolset_class() -> type[MCPToolset[Any]] | None:
    """pydantic-ai's `MCPToolset`, if anything imported it (MCP is an optional extra that costs ~1 s to import).

    An MCP toolset can only exist once its module is imported, so a missing module means there is none.
    """
    module = sys.modules.get("pydantic_ai.mcp")
    return getattr(module, "MCPToolset", None)


def _known_provider(provider_name: str) -> bool:
    from pydantic_ai.providers import infer_provider_class

    try:
        infer_provider_class(provider_name)
    except ValueError:
        return False
    return True


def _register_declared_types(agent: AbstractAgent[Any, Any]) -> None:
    """Allow, in stored values, the types the agent declares: its deps and output types, its tools' return types.

    A worker reads back only types on the allowlist (`serializer.py`); these are the ones its runs store.
    """
    declared: list[Any] = [getattr(agent, "deps_type", None), getattr(agent, "output_type", None)]

    def collect(toolset: AbstractToolset[Any]) -> None:
        if isinstance(toolset, FunctionToolset):
            for tool in toolset.tools.values():
                try:
                    declared.append(typing.get_type_hints(tool.function).get("return"))
                except Exception:  # an annotation that does not resolve: its values are checked when stored
                    continue

    for toolset in agent.toolsets:
        toolset.apply(collect)
    register_declared_types(*declared)


# --- The per-run capability ---------------------------------------------------------------------


class _DurableRun(AbstractCapability[Any]):
    """Makes one agent run durable from inside its workflow.

    Wraps each model that serves a request in a `DBOSModel`, each MCP toolset in a `DBOSMCPToolset`
    and each function toolset in a `DBOSFunctionToolset`, and derives the run id from the workflow
    id so a recovered run keeps the same id (and `new_messages()` keeps working).
    """

    def __init__(
        self,
        agent: DBOSAgent[Any, Any],
        event_stream_handler: EventStreamHandler[Any] | None,
        *,
        run_id: str | None,
        park_after: float | None = None,
    ) -> None:
        self._agent = agent
        self._run_id = run_id
        self._park_after = park_after
        self._event_stream_handler = event_stream_handler
        self._models: dict[int, DBOSModel] = {}
        self._tool_order = ToolCallOrder()

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None

    def get_default_run_id(self) -> str | None:
        return self._run_id

    def get_default_conversation_id(self, run_id: str) -> str | None:
        return run_id if self._run_id is not None else None

    def get_wrapper_model(self, model: Model) -> Model | None:
        if isinstance(model, DBOSModel):
            return None
        wrapper = self._models.get(id(model))
        if wrapper is None:
            wrapper = self._models[id(model)] = DBOSModel(
                model,
                step_name_prefix=self._agent.name,
                step_config=self._agent._model_step_config,
                event_stream_handler=self._event_stream_handler,
                retry=self._agent._model_retry,
            )
        return wrapper

    async def handle_deferred_tool_calls(
        self, ctx: RunContext[Any], *, requests: DeferredToolRequests
    ) -> DeferredToolResults | None:
        # With `approvals='wait'` the run waits durably for decisions (see approvals.py) instead of ending.
        if self._agent._approvals != "wait" or not in_workflow():
            return None
        return await wait_for_decisions(
            self._agent.name, requests, timeout=self._agent._approval_timeout, park_after=self._park_after
        )

    def get_wrapper_toolset(self, toolset: AbstractToolset[Any]) -> AbstractToolset[Any] | None:
        return toolset.visit_and_replace(self._wrap_toolset)

    def _wrap_toolset(self, toolset: AbstractToolset[Any]) -> AbstractToolset[Any]:
        agent = self._agent
        mcp_toolset = _mcp_toolset_class()
        if mcp_toolset is not None and isinstance(toolset, mcp_toolset):
            from .mcp import DBOSMCPToolset

            return DBOSMCPToolset(
                toolset, step_name_prefix=agent.name, step_config=agent._mcp_step_config, order=self._tool_order
            )
        if isinstance(toolset, FunctionToolset):
            return DBOSFunctionToolset(
                toolset,
                step_name_prefix=agent.name,
                durable=agent._durable_tools,
                order=self._tool_order,
                step_config=agent._tool_step_config,
            )
        return toolset


# --- DBOSAgent ----------------------------------------------------------------------------------


class DBOSAgent(WrapperAgent[AgentDepsT, OutputDataT]):
    """A Pydantic AI agent whose `run()` and `run_sync()` are DBOS workflows.

    Create it before `DBOS.launch()` (DBOS registers workflows at launch), with a name that is unique
    in the process and stable across deployments: it names the persisted workflows and steps.

    Args:
        wrapped: The agent to make durable.
        name: Names workflows and steps; defaults to the agent's name.
        event_stream_handler: Receives the run's events, in place of the agent's own handler. Model
            events arrive live from inside the model step; tool events from workflow code.
        mcp_step_config: Retry policy of MCP steps.
        model_step_config: Retry policy of model request steps, as DBOS step retries inside one step. Given, it
            replaces `model_retry`.
        model_retry: How a model request that fails transiently (rate limit, provider unavailable, server error,
            timeout, broken connection) is retried: durably, with backoff, for up to 15 minutes by default (see
            `ModelRetryPolicy` and docs/retries.md). None fails the run at the first error.
        parallel_execution_mode: `'parallel_ordered_events'` (default) or `'sequential'`.
        models: Models a run may pick with `run(model=...)` or `override(model=...)`, by key or by
            instance. A recovered run finds its model here by key, so an instance must be registered.
        durable_tools: `True`, or the names of plain function tools, to run as steps named
            `{name}__tool.{tool_name}`: a tool that finished is not run again after a crash.
        tool_step_config: Retry policy of durable tool steps.
        stream_events: Record each run's events in a DBOS stream of its workflow, readable live from any
            process with `read_events()`; `run_stream()` and `run_stream_events()` become durable runs
            that read it (see docs/streams.md).
        approvals: `'end'` (default): a tool call that needs approval or an external result ends the
            run with `DeferredToolRequests`. `'wait'`: the run publishes the pending calls and waits
            durably for decisions made with `approve`, `deny` or `deliver_result` (see docs/approvals.md).
        approval_timeout: With `approvals='wait'`, seconds (or a timedelta) after which the calls
            still pending are denied with a message the model sees. None waits indefinitely.
        park_after: With `approvals='wait'`, seconds (or a timedelta) of waiting without a decision after which
            a run that nobody in this process awaits (started with `start()`, dequeued or recovered) leaves
            memory: its execution ends, recording nothing, and it is replayed to the wait when a decision or its
            deadline arrives (see docs/approvals.md, "Parked runs"). None keeps every waiting run in memory.
    """

    def __init__(
        self,
        wrapped: AbstractAgent[AgentDepsT, OutputDataT],
        *,
        name: str | None = None,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        mcp_step_config: StepConfig | None = None,
        model_step_config: StepConfig | None = None,
        parallel_execution_mode: DBOSParallelExecutionMode = "parallel_ordered_events",
        models: Mapping[str, Model] | None = None,
        durable_tools: bool | Collection[str] = False,
        tool_step_config: StepConfig | None = None,
        stream_events: bool = False,
        approvals: Literal["end", "wait"] = "end",
        approval_timeout: float | timedelta | None = None,
        model_retry: ModelRetryPolicy | None = DEFAULT_MODEL_RETRY,
        park_after: float | timedelta | None = DEFAULT_PARK_AFTER_SECONDS,
    ) -> None:
        super().__init__(wrapped)
        agent_name = name or wrapped.name
        if not agent_name:
            raise UserError(
                "A durable agent needs a name: it names the agent's workflows and steps in the database. "
                "Pass `DBOSAgent(agent, name='support')` or create the agent with `Agent(..., name='support')`."
            )
        if dbos_launched():
            raise UserError(
                f"DBOSAgent {agent_name!r} was created after DBOS.launch(). DBOS registers workflows at launch, "
                "and a relaunched process must find them to recover unfinished runs: create every DBOSAgent "
                "at import time or before calling DBOS.launch()."
            )
        if agent_name in _registered_names:
            raise UserError(
                f"A DBOSAgent named {agent_name!r} already exists in this process. The name identifies its "
                "workflows and steps in the database, so it must be unique: pass a different `name=`."
            )
        if parallel_execution_mode not in ("parallel_ordered_events", "sequential"):
            raise UserError(
                f"parallel_execution_mode={parallel_execution_mode!r} cannot replay deterministically; "
                "use 'parallel_ordered_events' (the default) or 'sequential'."
            )
        if approvals not in ("end", "wait"):
            raise UserError(f"approvals={approvals!r} is not supported; use 'end' (the default) or 'wait'.")
        if approval_timeout is not None and approvals != "wait":
            raise UserError("`approval_timeout` applies only to runs that wait for approvals: pass approvals='wait'.")
        self._approvals = approvals
        self._approval_timeout = duration_seconds(
            approval_timeout, argument="approval_timeout", allow_zero=False, none_means="wait without a deadline"
        )
        park_after_seconds = duration_seconds(
            park_after, argument="park_after", allow_zero=True, none_means="keep waiting runs in memory"
        )
        self._park_after = park_after_seconds if approvals == "wait" else None
        self._name = agent_name
        self._event_stream_handler = event_stream_handler
        self._mcp_step_config = validate_step_config(mcp_step_config, argument="mcp_step_config")
        self._model_step_config = validate_step_config(model_step_config, argument="model_step_config")
        if model_retry is not None and not isinstance(model_retry, ModelRetryPolicy):
            raise UserError(f"`model_retry` takes a ModelRetryPolicy or None, not {model_retry!r}.")
        self._model_retry = model_retry
        self._durable_model: DBOSModel | None = None
        self._durable_model_of: Model | str | None = None
        self._tool_step_config = validate_step_config(tool_step_config, argument="tool_step_config")
        self._stream_events = stream_events
        self._parallel_execution_mode = parallel_execution_mode
        self._durable_tools = durable_tool_names(wrapped.toolsets, durable_tools)
        self._check_mcp_toolsets(wrapped.toolsets)
        self._models: dict[str, Model] = dict(models or {})
        self._model_keys: dict[int, str] = {id(model): key for key, model in self._models.items()}
        self._model_override: ContextVar[str | None] = ContextVar(f"{agent_name}_model_override", default=None)

        # DBOS decorates functions, not bound methods: register closures over this agent.
        async def run_workflow(user_prompt: Any = None, **inputs: Any) -> AgentRunResult[Any]:
            with self._durable_run(inputs) as run_args:
                async with recorded_run_async(inputs.get(STREAM_EVENTS_INPUT, False)):
                    return await self.wrapped.run(user_prompt, **run_args)

        def run_sync_workflow(user_prompt: Any = None, **inputs: Any) -> AgentRunResult[Any]:
            # The same run, on the process's durable loop, where its model and MCP requests go anyway.
            return run_on_durable_loop(run_workflow(user_prompt, **inputs))

        _register_declared_types(wrapped)
        self._run_workflow = DBOS.workflow(name=run_workflow_name(agent_name))(run_workflow)
        self._run_sync_workflow = DBOS.workflow(name=run_sync_workflow_name(agent_name))(run_sync_workflow)
        _registered_names.add(agent_name)

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        raise UserError("A DBOSAgent's name names its persisted workflows and cannot change after it is created.")

    @property
    def model(self) -> Model | str | None:
        """The agent's model as durable runs use it: a `DBOSModel`, so `pydantic_ai.direct.model_request(durable.model,
        ...)` inside a workflow is a checkpointed step (None when the wrapped agent has no model)."""
        wrapped_model = self.wrapped.model
        if wrapped_model is None:
            return None
        if self._durable_model is None or self._durable_model_of is not wrapped_model:
            self._durable_model = DBOSModel(
                wrapped_model,
                step_name_prefix=self.name,
                step_config=self._model_step_config,
                retry=self._model_retry,
            )
            self._durable_model_of = wrapped_model
        return self._durable_model

    def realtime(self, *args: Any, **kwargs: Any) -> Any:
        """pydantic-ai's realtime session, outside a workflow. Refused inside one: a live, two-way connection cannot be
        recorded as steps, so a replay could not reproduce it."""
        if in_workflow():
            raise UserError(
                "`realtime()` cannot run inside a DBOS workflow: it opens a live, two-way connection to the model that "
                "a replay after a crash could not reproduce. Open the realtime session outside the workflow, or use "
                "`await agent.run(...)`, whose model requests are checkpointed steps."
            )
        return self.wrapped.realtime(*args, **kwargs)

    @property
    def event_stream_handler(self) -> EventStreamHandler[AgentDepsT] | None:
        return self._event_stream_handler or self.wrapped.event_stream_handler

    @staticmethod
    def _check_mcp_toolsets(toolsets: Sequence[AbstractToolset[Any]]) -> None:
        mcp_toolset = _mcp_toolset_class()
        if mcp_toolset is None:
            return
        from .mcp import mcp_toolset_id

        seen: set[str] = set()

        def check(toolset: AbstractToolset[Any]) -> None:
            if isinstance(toolset, mcp_toolset):
                toolset_id = mcp_toolset_id(toolset)
                if toolset_id in seen:
                    raise UserError(
                        f"Two MCP toolsets share the id {toolset_id!r}; their steps would share names. "
                        "Give each MCP toolset a unique `id`."
                    )
                seen.add(toolset_id)

        for toolset in toolsets:
            toolset.apply(check)

    # --- Choosing the model ------------------------------------------------------------------

    def _model_input(self, model: Model | str | None) -> str | None:
        """The model a run uses, as its workflow stores it: an active `override(model=...)` wins."""
        override = self._model_override.get()
        return override if override is not None else self._model_key(model)

    def _model_key(self, chosen: Model | str | None) -> str | None:
        """A registered key or a model name for `chosen`; None for the agent's own model."""
        if chosen is None:
            return None
        if isinstance(chosen, str):
            if chosen not in self._models:
                self._check_model_name(chosen)
            return chosen
        if chosen is self.wrapped.model:
            return None
        key = self._model_keys.get(id(chosen))
        if key is None:
            raise UserError(
                f"Model {chosen.model_name!r} is not registered with DBOSAgent {self.name!r}. A recovered run must "
                "find its model again after a restart, so register it: `DBOSAgent(agent, models={'fast': model})`, "
                "then pass `model='fast'` (or the same instance), or pass a model name such as 'openai:gpt-5'."
            )
        return key

    def _check_model_name(self, name: str) -> None:
        """Refuse, before a workflow starts, a string that is neither a registered key nor a model name.

        Only the name's form and provider are checked (as pydantic-ai does before it builds a model): building the
        model here would need the provider's credentials in every process that starts runs.
        """
        provider_name, _ = parse_model_id(name)
        if name == "test" or (provider_name is not None and _known_provider(provider_name)):
            return
        registered = f"registered keys: {sorted(self._models)}" if self._models else "no models are registered"
        raise UserError(
            f"Model {name!r} is neither registered with DBOSAgent {self.name!r} ({registered}) nor a model name "
            "of the form 'provider:model' with a provider pydantic-ai knows. Pass a full name such as "
            "'openai:gpt-5', or register the model: `DBOSAgent(agent, models={'fast': model})`."
        )

    def _resolve_model(self, model: str | None) -> Model | str | None:
        if model is None:
            return None
        return self._models.get(model, model)

    # --- The workflows -----------------------------------------------------------------------

    def _workflow_inputs(self, user_prompt: Any, run_args: dict[str, Any], *, streamed: bool) -> dict[str, Any]:
        """The run arguments a workflow stores: set ones only, the model by key, each checked to be storable.

        `streamed` records that the run has a per-run event stream handler: its model requests are
        streamed steps, and a recovery without the handler must stream them too to replay them.
        """
        inputs = {key: value for key, value in run_args.items() if value is not None}
        if streamed and self.event_stream_handler is None:
            inputs[STREAMED_INPUT] = True
        if self._stream_events:
            inputs[STREAM_EVENTS_INPUT] = True  # stored: a recovered run records its events even if the flag changed
        model = self._model_input(run_args.get("model"))
        inputs.pop("model", None)
        if model is not None:
            inputs["model"] = model
        ensure_serializable({"user_prompt": user_prompt, **inputs})
        return inputs

    @contextmanager
    def _durable_run(self, inputs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Inside the workflow: the wrapped agent's run arguments, with the durable capability added."""
        live = _live_run_args.get()
        run_args = dict(inputs)
        handlers = run_handlers(
            live.event_stream_handler or self.event_stream_handler,
            streamed=run_args.pop(STREAMED_INPUT, False),
            recorded=run_args.pop(STREAM_EVENTS_INPUT, False),
        )
        run_args["model"] = self._resolve_model(inputs.get("model"))
        run_args["capabilities"] = [
            *inputs.get("capabilities", ()),
            _DurableRun(
                self, handlers.model, run_id=DBOS.workflow_id, park_after=None if live.awaited else self._park_after
            ),
        ]
        run_args["infer_name"] = False
        if handlers.run is not None:
            run_args["event_stream_handler"] = handlers.run
        if live.cancellation_token is not None:
            run_args["cancellation_token"] = live.cancellation_token
        with self.wrapped.parallel_tool_call_execution_mode(self._parallel_execution_mode):
            yield run_args

    @contextmanager
    def _live(
        self, event_stream_handler: EventStreamHandler[Any] | None, cancellation_token: CancellationToken | None
    ) -> Iterator[None]:
        token = _live_run_args.set(_LiveRunArgs(event_stream_handler, cancellation_token, awaited=True))
        try:
            yield
        finally:
            _live_run_args.reset(token)

    @staticmethod
    @contextmanager
    def _detached() -> Iterator[None]:
        """A started run belongs to no caller: it takes none of the caller's live arguments, and may park."""
        token = _live_run_args.set(_NO_LIVE_RUN_ARGS)
        try:
            yield
        finally:
            _live_run_args.reset(token)

    # --- Public API: durable runs ------------------------------------------------------------

    async def _run_durably(
        self,
        user_prompt: Any = None,
        *,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        cancellation_token: CancellationToken | None = None,
        infer_name: bool = True,
        **run_args: Any,
    ) -> AgentRunResult[Any]:
        """Run the agent as the durable workflow `{name}.run` (a plain run when DBOS is not launched).

        Takes the same arguments as `Agent.run`. The workflow stores the prompt and the other
        arguments (deps, message history, ...), so they must be serializable; `event_stream_handler`
        and `cancellation_token` stay in this process.
        """
        if not dbos_launched():
            return await self.wrapped.run(
                user_prompt,
                event_stream_handler=event_stream_handler or self._event_stream_handler,
                cancellation_token=cancellation_token,
                **run_args,
            )
        inputs = self._workflow_inputs(user_prompt, run_args, streamed=event_stream_handler is not None)
        with self._live(event_stream_handler, cancellation_token):
            return await self._run_workflow(user_prompt, **inputs)

    def _run_sync_durably(
        self,
        user_prompt: Any = None,
        *,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        cancellation_token: CancellationToken | None = None,
        infer_name: bool = True,
        **run_args: Any,
    ) -> AgentRunResult[Any]:
        """Run the agent as the durable workflow `{name}.run_sync`: one workflow, no async wrapper around it.

        The run itself goes to the process's durable loop, where every durable run sends its model and MCP
        requests, so runs on several threads at once share a provider's HTTP client safely (`_durable_loop.py`).
        Refused inside a sync tool or callback of a running agent, as pydantic-ai refuses it: it can deadlock.
        """
        check_no_nested_sync_run()
        if not dbos_launched():
            return self.wrapped.run_sync(
                user_prompt,
                event_stream_handler=event_stream_handler or self._event_stream_handler,
                cancellation_token=cancellation_token,
                **run_args,
            )
        inputs = self._workflow_inputs(user_prompt, run_args, streamed=event_stream_handler is not None)
        with self._live(event_stream_handler, cancellation_token):
            return self._run_sync_workflow(user_prompt, **inputs)

    # --- Public API: starting runs without waiting for them ---------------------------------

    def _start_inputs(self, user_prompt: Any, options: StartOptions, run_args: dict[str, Any]) -> dict[str, Any]:
        """Check a start before anything is written: its options, the launched DBOS, and that its inputs store."""
        check_start_options(options, caller="start")
        refuse_live_run_args(run_args, caller="start")
        if not dbos_launched():
            raise UserError(
                f"`start()` of DBOSAgent {self.name!r} needs a launched DBOS: it starts the durable workflow "
                f"{run_workflow_name(self.name)!r} and returns without waiting. Call DBOS.launch() first, or use "
                "`start_run(name, prompt, database_url=..., queue=...)` from a process that does not run agents."
            )
        return self._workflow_inputs(user_prompt, run_args, streamed=False)

    async def start(
        self,
        user_prompt: Any = None,
        *,
        queue: str | None = None,
        workflow_id: str | None = None,
        deduplication_id: str | None = None,
        priority: int | None = None,
        **run_args: Any,
    ) -> RunHandle:
        """Start a durable run, the workflow `{name}.run` itself, and return its `RunHandle` without waiting.

        Takes `run()`'s arguments, checked to be storable before anything is written, except the live-only
        `event_stream_handler` and `cancellation_token` (refused: the run is not tied to the caller). Without
        `queue` the run starts at once in this process, on DBOS's event loop, so it outlives the caller's loop.

        Args:
            queue: Enqueue it on this DBOS queue (registered with `DBOS.register_queue`): a worker listening to it
                runs it, within the queue's concurrency and rate limits (see docs/fleet.md).
            workflow_id: The run's id (default: a new UUID). Starting again with the id of an existing run returns it.
            deduplication_id: With `queue`: at most one queued or running run per id; a second start is refused
                with `RunAlreadyActiveError`, which names the active run.
            priority: With `queue`: 1 (dequeued first) to 2**31-1; runs without one are dequeued first of all.
        """
        options = StartOptions(queue, workflow_id, deduplication_id, priority)
        inputs = self._start_inputs(user_prompt, options, run_args)
        with self._detached():
            started = await start_here_async(self._run_workflow, user_prompt, inputs, options)
        return RunHandle(started, stream_events=self._stream_events)

    def start_sync(
        self,
        user_prompt: Any = None,
        *,
        queue: str | None = None,
        workflow_id: str | None = None,
        deduplication_id: str | None = None,
        priority: int | None = None,
        **run_args: Any,
    ) -> RunHandle:
        """`start()` from sync code: the same `{name}.run` workflow, started or enqueued without waiting."""
        options = StartOptions(queue, workflow_id, deduplication_id, priority)
        inputs = self._start_inputs(user_prompt, options, run_args)
        with self._detached():
            started = start_here(self._run_workflow, user_prompt, inputs, options)
        return RunHandle(started, stream_events=self._stream_events)

    # --- Public API: the rest of the agent ---------------------------------------------------

    @asynccontextmanager
    async def _iter_durably(self, user_prompt: Any = None, **run_args: Any) -> AsyncIterator[AgentRun[AgentDepsT, Any]]:
        """Iterate over the run's nodes. Inside a workflow its model requests and MCP calls are steps of
        that workflow; outside one it is a plain, non-durable run."""
        if not in_workflow():
            async with self.wrapped.iter(user_prompt, **run_args) as agent_run:
                yield agent_run
            return
        run_args["model"] = self._resolve_model(self._model_input(run_args.get("model")))
        run_args["capabilities"] = [*(run_args.get("capabilities") or ()), _DurableRun(self, None, run_id=None)]
        with self.wrapped.parallel_tool_call_execution_mode(self._parallel_execution_mode):
            async with self.wrapped.iter(user_prompt, **run_args) as agent_run:
                yield agent_run

    if TYPE_CHECKING:
        # For type checkers these are pydantic-ai's own overloads, so a run's output is typed from the agent
        # or from `output_type=`: they take the same arguments, and only where the run happens differs.
        run = WrapperAgent.run
        run_sync = WrapperAgent.run_sync
        iter = WrapperAgent.iter
    else:
        run, run_sync, iter = _run_durably, _run_sync_durably, _iter_durably

    def run_stream(self, user_prompt: Any = None, **run_args: Any) -> AbstractAsyncContextManager[Any]:
        """With `stream_events=True` and DBOS launched: start the durable workflow `{name}.run` and yield a
        `DurableStreamedRun` that reads its stream. Otherwise a plain, non-durable run. Refused in a workflow."""
        self._refuse_in_workflow("run_stream")
        if self._stream_events and dbos_launched():
            return durable_streamed_run(self._run_starter(user_prompt, run_args))
        return self.wrapped.run_stream(user_prompt, **run_args)

    def run_stream_events(self, user_prompt: Any = None, **run_args: Any) -> Any:
        """With `stream_events=True` and DBOS launched: start the durable workflow `{name}.run` and yield a
        `DurableRunEvents` that reads its stream. Otherwise a plain, non-durable run. Refused in a workflow."""
        self._refuse_in_workflow("run_stream_events")
        if self._stream_events and dbos_launched():
            return durable_run_events(self._run_starter(user_prompt, run_args))
        return self.wrapped.run_stream_events(user_prompt, **run_args)

    def _run_starter(self, user_prompt: Any, run_args: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
        """Starts the `{name}.run` workflow when awaited (inputs are checked now, before anything starts)."""
        handler = run_args.pop("event_stream_handler", None)
        cancellation_token = run_args.pop("cancellation_token", None)
        run_args.pop("infer_name", None)
        inputs = self._workflow_inputs(user_prompt, run_args, streamed=handler is not None)

        async def start() -> Any:
            with self._live(handler, cancellation_token):
                return await DBOS.start_workflow_async(self._run_workflow, user_prompt, **inputs)

        return start

    def _refuse_in_workflow(self, method: str) -> None:
        if in_workflow():
            raise UserError(
                f"`{method}()` cannot run durably inside a DBOS workflow: it hands the live model stream to the "
                "caller, which a replay cannot reproduce. Use `await agent.run(..., event_stream_handler=handler)`: "
                "the handler receives the same events live, and every model request is a checkpointed step."
            )

    @contextmanager
    def override(self, *, model: Model | str | Unset = UNSET, **overrides: Any) -> Iterator[None]:
        """Like `Agent.override`. A model instance must be registered with `models=` (see `run`)."""
        if isinstance(model, Unset):
            with self.wrapped.override(**overrides):
                yield
            return
        key = self._model_key(model)  # refuses an unregistered instance before anything runs
        token = self._model_override.set(key)
        try:
            # A registered key means its model: the wrapped agent knows no keys ('fast' is no model name).
            resolved = self._resolve_model(key) or model
            with self.wrapped.override(model=resolved, **overrides):
                yield
        finally:
            self._model_override.reset(token)
