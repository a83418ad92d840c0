"""Checking what DBOS is about to store: a run's inputs before its workflow starts, a durable tool's result.

DBOS pickles both. A value that does not pickle is named here, down to the part that fails, instead of
surfacing as a bare `TypeError` from inside DBOS.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Iterator, Mapping
from typing import Any

from .exceptions import NotSerializableError


def ensure_serializable(inputs: Mapping[str, Any]) -> None:
    """Raise `NotSerializableError` naming the first input DBOS could not store (it pickles them)."""
    for name, value in inputs.items():
        try:
            pickle.dumps(value)
        except Exception as error:
            path, culprit, culprit_error = _find_culprit(name, value, error)
            raise NotSerializableError(
                f"Cannot start a durable run: `{path}` (a {type(culprit).__qualname__}) cannot be stored by DBOS "
                f"({type(culprit_error).__name__}: {culprit_error}). A durable run stores its inputs so it can resume "
                "after a crash. Pass plain data instead (a dataclass, a pydantic model, dicts and lists), and open "
                "live resources such as connections, clients and locks inside tools or from a module-level registry."
            ) from error


def ensure_storable_result(tool_name: str, result: Any) -> None:
    """Raise `NotSerializableError` naming the durable tool and the part of its result DBOS could not store."""
    try:
        pickle.dumps(result)
    except Exception as error:
        path, culprit, culprit_error = _find_culprit("result", result, error)
        raise NotSerializableError(
            f"Durable tool `{tool_name}` returned a value DBOS cannot store: `{path}` (a {_type_name(culprit)}) "
            f"({type(culprit_error).__name__}: {culprit_error}). A durable tool's result is recorded so that a "
            "recovered run does not call the tool again. Return plain data (a dataclass, a pydantic model, dicts "
            "and lists) and keep live resources such as connections, clients and locks inside the tool or in a "
            f"module-level registry, or leave `{tool_name}` out of `durable_tools`."
        ) from error


def _type_name(value: Any) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _find_culprit(path: str, value: Any, error: Exception) -> tuple[str, Any, Exception]:
    """Descend into containers and objects to the innermost part of `value` that does not pickle."""
    for child_path, child in _children(path, value):
        try:
            pickle.dumps(child)
        except Exception as child_error:
            return _find_culprit(child_path, child, child_error)
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
