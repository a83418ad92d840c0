"""Riding through provider outages: model requests retried durably, with backoff, up to a horizon.

A durable run can be many paid requests in when the provider starts answering 429 or 503. DBOS's own step retries
live in memory: a crash forgets them and the step starts over. So a durable model request retries in workflow code
instead. Each attempt is a step of its own (`{name}__model.request`, or `request_stream`) that records a transient
failure as a value (`FailedAttempt`); the wait before the next attempt is a durable `DBOS.sleep`. A worker killed
during the backoff is recovered waiting for what is left of it, and recorded attempts are not sent again.

What is transient is pydantic-ai's error category (`is_transient`): rate limits, unavailable or overloaded providers,
server errors, timeouts and broken connections are retried, honouring the provider's `Retry-After`; rejected
requests (400, 401, 403, 404, context window), exhausted quota and unexpected model behaviour fail at once.

The retries stop once the next attempt would start more than `horizon_seconds` after the first failure, and the run
fails with the last error. After the outage, `continue_run` rewinds it to its failed request (same run id, nothing
finished redone). A gap between attempts longer than any backoff means the run was continued: its horizon starts
again.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from typing import Any

from pydantic_ai.exceptions import (
    ModelConnectionError,
    ModelHTTPError,
    ModelQuotaExceededError,
    ModelRateLimitError,
    ModelRequestRejectedError,
    ModelRequestTimeout,
    ModelServerError,
    ModelUnavailableError,
    UserError,
)

from .names import RETRY_EVENT

__all__ = [
    "DEFAULT_MODEL_RETRY",
    "RETRY_EVENT",
    "FailedAttempt",
    "ModelRetryPolicy",
    "continue_run",
    "is_transient",
]


_TRANSIENT_CATEGORIES = (
    ModelRateLimitError,
    ModelUnavailableError,
    ModelServerError,
    ModelConnectionError,
    ModelRequestTimeout,
)
_TRANSIENT_STATUS = frozenset({408, 409, 429})


def is_transient(error: BaseException) -> bool:
    """Whether sending the same model request again later may succeed (the default `should_retry`)."""
    if isinstance(error, ModelQuotaExceededError | ModelRequestRejectedError):
        return False
    if isinstance(error, _TRANSIENT_CATEGORIES):
        return True
    if isinstance(error, ModelHTTPError):
        return error.status_code in _TRANSIENT_STATUS or error.status_code >= 500
    # Errors of a provider SDK or transport that pydantic-ai did not categorise.
    return isinstance(error, TimeoutError | ConnectionError)


@dataclass(frozen=True)
class ModelRetryPolicy:
    """How durable model requests ride through provider outages (pass `model_retry=` to `DBOSAgent`).

    The default retries for up to 15 minutes: longer than the incidents that public status pages of model providers
    usually report for elevated error rates, short enough that a caller waiting on the run is not left hanging for
    hours. Raise it for background runs, or pass `model_retry=None` to fail at the first error.

    Args:
        horizon_seconds: Give up when the next attempt would start later than this after the first failure.
        initial_interval_seconds: The wait after the first failure.
        backoff_rate: Each wait is this many times the one before...
        max_interval_seconds: ...up to this.
        jitter: Each wait is moved by up to this fraction of it, up or down, so many runs hit by one outage do not
            retry in lockstep.
    """

    horizon_seconds: float = 15 * 60.0
    initial_interval_seconds: float = 1.0
    backoff_rate: float = 2.0
    max_interval_seconds: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        for name in ("horizon_seconds", "initial_interval_seconds", "max_interval_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UserError(f"ModelRetryPolicy({name}={value!r}): give a positive number of seconds.")
        if not self.backoff_rate >= 1:
            raise UserError(f"ModelRetryPolicy(backoff_rate={self.backoff_rate!r}): give a number >= 1.")
        if not 0 <= self.jitter < 1:
            raise UserError(f"ModelRetryPolicy(jitter={self.jitter!r}): give a fraction in [0, 1).")

    def delay(self, failure: FailedAttempt, *, seed: str) -> float:
        """The wait before the attempt after `failure`: the backoff (with jitter, the same on every replay), or
        longer if the provider asked for it."""
        backoff = min(
            self.initial_interval_seconds * self.backoff_rate ** (failure.attempt - 1), self.max_interval_seconds
        )
        spread = random.Random(hashlib.sha256(seed.encode()).digest()).uniform(-self.jitter, self.jitter)
        wait = backoff * (1 + spread)
        if failure.retry_after is not None:
            wait = max(wait, failure.retry_after)
        return wait

    def restarts_window(self, gap_seconds: float) -> bool:
        """Whether a gap this long between two attempts means the run was continued after giving up or a cancel."""
        return gap_seconds > 2 * self.max_interval_seconds + 60


DEFAULT_MODEL_RETRY = ModelRetryPolicy()


@dataclass(frozen=True)
class FailedAttempt:
    """A model request attempt that failed transiently, recorded as its step's result."""

    error: Exception
    attempt: int
    """1 for the first attempt at the request."""
    failed_at: float
    window_started_at: float
    """When the failures that count against the horizon began."""
    first_step_id: int
    """The step of the request's first attempt: the request's id in the run's event stream."""

    @property
    def retry_after(self) -> float | None:
        retry_after = getattr(self.error, "retry_after", None)
        return retry_after if isinstance(retry_after, int | float) and retry_after >= 0 else None

    def describe(self) -> str:
        return f"{type(self.error).__name__}: {self.error}"


def record_failure(
    error: Exception, previous: FailedAttempt | None, *, step_id: int, policy: ModelRetryPolicy
) -> FailedAttempt:
    """The record of a failed attempt, inside its step (its clock readings are recorded with it)."""
    now = time.time()
    if previous is None:
        return FailedAttempt(error, 1, now, now, step_id)
    window = previous.window_started_at
    if policy.restarts_window(now - previous.failed_at):
        window = now
    return FailedAttempt(error, previous.attempt + 1, now, window, previous.first_step_id)


def retry_state(failure: FailedAttempt, *, state: str, next_try_at: float | None) -> dict[str, Any]:
    """What a run publishes under `RETRY_EVENT` (plain values: the console and other processes read it)."""
    return {
        "version": 1,
        "state": state,
        "attempt": failure.attempt,
        "step_id": failure.first_step_id,
        "last_error": failure.describe()[:2000],
        "failed_at": failure.failed_at,
        "next_try_at": next_try_at,
    }


# --- Continuing a run that gave up ------------------------------------------------------------------


def continue_run(workflow_id: str, *, database_url: str | None = None) -> int:
    """Continue a run that failed or was cancelled while a model request kept failing: rewind it to that request.

    The run keeps its id; the steps before the request are not redone, the request is sent again, and the run goes
    on from there (in a worker of its application version). Returns the step it was rewound to.

    Args:
        workflow_id: The run's workflow id.
        database_url: The workers' system database; None uses the DBOS launched in this process.

    Raises `UserError` if the run is still going (it retries by itself), or has no failed model request to go
    back to (continue such a run with DBOS's `resume_workflow` or `fork_workflow`).
    """
    from dbos import DBOS, DBOSClient

    from ._serialization import serializer_for

    client = (
        DBOSClient(system_database_url=database_url, serializer=serializer_for()) if database_url is not None else None
    )
    try:
        statuses = (
            client.list_workflows(workflow_ids=[workflow_id], load_input=False, load_output=False)
            if client is not None
            else DBOS.list_workflows(workflow_ids=[workflow_id], load_input=False, load_output=False)
        )
        if not statuses:
            raise UserError(f"No run {workflow_id!r}.")
        status = statuses[0].status
        if status not in ("ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"):
            raise UserError(
                f"Run {workflow_id!r} is {status}: only a run that failed or was cancelled can be continued "
                "(a PENDING run retries by itself until its horizon)."
            )
        steps = client.list_workflow_steps(workflow_id) if client is not None else DBOS.list_workflow_steps(workflow_id)
        failed = [step["function_id"] for step in steps if isinstance(step.get("output"), FailedAttempt)]
        if not failed:
            raise UserError(
                f"Run {workflow_id!r} has no failed model request to continue from. To run it again from a step of "
                "your choice use DBOS: `DBOS.fork_workflow(workflow_id, start_step)`."
            )
        step = failed[-1]
        if client is not None:
            client.rewind_workflow(workflow_id, start_step=step)
        else:
            DBOS.rewind_workflow(workflow_id, start_step=step)
        return step
    finally:
        if client is not None:
            client.destroy()
