"""Checking what DBOS is about to store: a run's inputs before its workflow starts, a durable tool's result.

The check uses the serializer DBOS is configured with (typed JSON by default, see `serializer.py`; pickle when the
application chose it): a value it cannot store and read back is named here, down to the part that fails, instead of
surfacing as a bare error from inside DBOS or, worse, when a recovered run reads it back.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .exceptions import NotSerializableError, UserError

if TYPE_CHECKING:
    from ._compat import Serializer

SERIALIZER_ENV = "DBOS_PYDANTIC_AI_SERIALIZER"
"""Environment variable that picks the serializer when no `serializer=` is given: `json` (default) or `pickle`."""


def serializer_for(choice: Any = None) -> Serializer:
    """The DBOS serializer for `choice`: "json" (typed JSON), "pickle" (DBOS's default), or a `Serializer` as is.

    None means the `DBOS_PYDANTIC_AI_SERIALIZER` environment variable, else "json". Processes that do not launch
    DBOS (`start_run`, `approvals`) write with it, so they must make the same choice as the workers.
    """
    from ._compat import Serializer, pickle_serializer

    if choice is None:
        choice = os.environ.get(SERIALIZER_ENV) or "json"
    if isinstance(choice, Serializer):
        return choice
    if choice == "json":
        from .serializer import default_json_serializer

        return default_json_serializer()
    if choice == "pickle":
        return pickle_serializer()
    raise UserError(
        f"Unknown serializer {choice!r}: use 'json' (typed JSON, the default), 'pickle' (DBOS's default, which runs "
        "code named by the rows it reads: only for a database whose writers you trust), or a DBOS `Serializer`."
    )


def configured_serializer() -> Serializer:
    """The launched DBOS's serializer, else the one `serializer_for()` picks for this process."""
    from ._compat import dbos_launched, launched_system_database

    if dbos_launched():
        return launched_system_database().serializer
    return serializer_for()


def _storage_problem(serializer: Serializer) -> Callable[[Any], Exception | None]:
    """A check of one value against `serializer`: the error storing and reading it back raises, or None."""
    from .serializer import JSONSerializer

    if isinstance(serializer, JSONSerializer):

        def check_json(value: Any) -> Exception | None:
            problem = serializer.check(value)
            return None if problem is None else NotSerializableError(problem)

        return check_json

    def round_trip(value: Any) -> Exception | None:
        try:
            serializer.deserialize(serializer.serialize(value))
        except Exception as error:
            return error
        return None

    return round_trip


def ensure_serializable(inputs: Mapping[str, Any], serializer: Serializer | None = None) -> None:
    """Raise `NotSerializableError` naming the first input DBOS could not store with its configured serializer."""
    problem = _storage_problem(serializer or configured_serializer())
    for name, value in inputs.items():
        error = problem(value)
        if error is not None:
            path, culprit, culprit_error = _find_culprit(name, value, error, problem)
            raise NotSerializableError(
                f"Cannot start a durable run: `{path}` (a {type(culprit).__qualname__}) cannot be stored by DBOS "
                f"({_describe(culprit_error)}). A durable run stores its inputs so it can resume "
                "after a crash. Pass plain data instead (a dataclass, a pydantic model, dicts and lists), and open "
                "live resources such as connections, clients and locks inside tools or from a module-level registry."
            ) from error


def ensure_storable_result(tool_name: str, result: Any) -> None:
    """Raise `NotSerializableError` naming the durable tool and the part of its result DBOS could not store."""
    problem = _storage_problem(configured_serializer())
    error = problem(result)
    if error is not None:
        path, culprit, culprit_error = _find_culprit("result", result, error, problem)
        raise NotSerializableError(
            f"Durable tool `{tool_name}` returned a value DBOS cannot store: `{path}` (a {_type_name(culprit)}) "
            f"({_describe(culprit_error)}). A durable tool's result is recorded so that a "
            "recovered run does not call the tool again. Return plain data (a dataclass, a pydantic model, dicts "
            "and lists) and keep live resources such as connections, clients and locks inside the tool or in a "
            f"module-level registry, or leave `{tool_name}` out of `durable_tools`."
        ) from error


def _describe(error: Exception) -> str:
    return str(error) if isinstance(error, NotSerializableError) else f"{type(error).__name__}: {error}"


def _type_name(value: Any) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _find_culprit(
    path: str, value: Any, error: Exception, problem: Callable[[Any], Exception | None]
) -> tuple[str, Any, Exception]:
    """Descend into containers and objects to the innermost part of `value` that cannot be stored."""
    for child_path, child in _children(path, value):
        child_error = problem(child)
        if child_error is not None:
            return _find_culprit(child_path, child, child_error, problem)
    return path, value, error


def _children(path: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield f"{path}[{key!r}]", item
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            yield f"{path}[{index}]", item
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield f"{path}.{field.name}", getattr(value, field.name, None)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for key, item in vars(value).items():
            yield f"{path}.{key}", item
