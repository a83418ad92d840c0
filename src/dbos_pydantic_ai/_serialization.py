"""Checking a durable run's inputs before the workflow starts, so a bad one is named and nothing is stored."""

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
