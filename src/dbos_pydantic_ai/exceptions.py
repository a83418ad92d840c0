"""Errors raised by dbos-pydantic-ai. Each message names the problem and the fix."""

from __future__ import annotations

from pydantic_ai.exceptions import UserError

__all__ = [
    "DatabaseUnreachableError",
    "NotSerializableError",
    "RunAlreadyActiveError",
    "StepFailedError",
    "UserError",
    "WorkerConfigError",
]


class DatabaseUnreachableError(UserError):
    """The database URL given to DBOS cannot be opened."""


class NotSerializableError(UserError):
    """A durable run was given an input that DBOS cannot store, so it could not be resumed after a crash."""


class RunAlreadyActiveError(UserError):
    """A run was started with a deduplication id that a run still queued or running on that queue holds.

    `workflow_id` names that active run (None if it ended between the refusal and the look-up), so a caller can
    wait for it, show it, or cancel it.
    """

    def __init__(
        self,
        message: str,
        *,
        workflow_id: str | None = None,
        deduplication_id: str | None = None,
        queue: str | None = None,
    ) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.deduplication_id = deduplication_id
        self.queue = queue


class StepFailedError(Exception):
    """A step raised an exception that DBOS could not store and rebuild as it was.

    DBOS records a step's exception so that a replay raises the same one. An exception whose class
    cannot be rebuilt from its pickle (for example one whose `__init__` takes extra required
    arguments) would come back as a different error on replay and could change the branch a run
    takes, so it is replaced by this error on the first run too. The original type and message are kept.
    """

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(type_name, message)

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class WorkerConfigError(UserError):
    """A worker cannot start as configured (a bad queue spec, a module that cannot be imported, ...): the message
    says what is wrong and how to fix it."""
