"""Typed JSON checkpoints: the serializer `dbos_config()` gives DBOS by default, instead of pickle.

DBOS stores every workflow input and output, step result and error, event, message and stream value through its
configured serializer. Pickle, its default, runs whatever code a row names when it is read, ties rows to Python class
layouts and cannot be read by SQL or other languages. `JSONSerializer` stores them as JSON instead:

- plain JSON values (None, booleans, numbers, strings, lists, dicts with string keys) as themselves;
- everything else as an object tagged with `"$type"`: tuples, sets, bytes, datetimes, decimals and UUIDs by a builtin
  tag; pydantic-ai's messages, parts, responses, usage, deferred tool requests and results and stream events as
  `{"$type": "pydantic_ai.ModelResponse", "value": ...}`, where `value` is pydantic-ai's own JSON for it (what
  `ModelMessagesTypeAdapter` writes); a run result as `pydantic_ai.AgentRunResult` with pydantic-ai's public JSON
  shape; an application's pydantic models, dataclasses and enums as `{"$type": "module.Class", "value": ...}`;
  exceptions as `{"$type": "exception", "class": ..., "message": ..., "args": ..., "attrs": ...}`.

Reading never imports anything and never calls anything a row names unless it is on the allowlist: pydantic-ai's own
types, this package's, the types the agents declare (`deps_type`, `output_type` and the return types of durable tools:
`DBOSAgent` registers them) and what the application registers with `register_types()`. Any other type is refused
with `UnknownStoredTypeError`; an exception of a class off the allowlist is rebuilt as a `StepFailedError` that keeps
its type name and message (a documented stand-in, never the named class).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import enum
import json
import math
import threading
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

import pydantic
import pydantic_core

from ._compat import Serializer  # the interface DBOSConfig["serializer"] takes (no public alias)
from .exceptions import NotSerializableError, StepFailedError, UserError
from .names import JSON_SERIALIZATION

__all__ = [
    "JSONSerializer",
    "StoredAsPickle",
    "UnknownStoredTypeError",
    "is_registered",
    "register_types",
]

TYPE_KEY = "$type"

# --- Errors -------------------------------------------------------------------------------------------


class UnknownStoredTypeError(UserError):
    """A stored value names a type that is not on the allowlist: it is refused, never imported or called."""


class _Unencodable(Exception):
    """A value the JSON serializer cannot store; `NotSerializableError` is raised from it with the path."""


# --- The allowlist ------------------------------------------------------------------------------------

_Kind = Literal["pydantic_ai", "schema", "fields", "attrs", "enum", "exception", "run_result"]


@dataclasses.dataclass
class _Entry:
    cls: type
    tag: str
    kind: _Kind
    adapter: pydantic.TypeAdapter[Any] | None = None


_lock = threading.RLock()
_by_tag: dict[str, _Entry] = {}
_by_class: dict[type, _Entry] = {}
_builtins_loaded = False

_BUILTIN_EXCEPTIONS: tuple[type[BaseException], ...] = (
    Exception,
    ArithmeticError,
    AssertionError,
    AttributeError,
    ConnectionError,
    ConnectionRefusedError,
    ConnectionResetError,
    FileNotFoundError,
    IndexError,
    KeyError,
    LookupError,
    NotImplementedError,
    OSError,
    OverflowError,
    PermissionError,
    RuntimeError,
    TimeoutError,
    TypeError,
    UnicodeError,
    ValueError,
    ZeroDivisionError,
)

_BUILTIN_TYPES: dict[str, type] = {
    t.__name__: t
    for t in (str, int, float, bool, bytes, bytearray, list, dict, tuple, set, frozenset, type(None), datetime, date)
}


def _add(cls: type, tag: str, kind: _Kind) -> None:
    existing = _by_tag.get(tag)
    if existing is not None and existing.cls is not cls:
        raise UserError(
            f"Cannot register {cls!r} for stored values: the tag {tag!r} already names {existing.cls!r}. Two types "
            "with the same module and name cannot both be stored."
        )
    if cls in _by_class:
        return
    entry = _Entry(cls, tag, kind)
    _by_tag[tag] = entry
    _by_class[cls] = entry


def _load_builtins() -> None:
    """Put pydantic-ai's public types, this package's own stored types and common exceptions on the allowlist."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    with _lock:
        if _builtins_loaded:
            return
        import pydantic_ai.exceptions
        import pydantic_ai.messages
        import pydantic_ai.output
        import pydantic_ai.run
        import pydantic_ai.tools
        import pydantic_ai.usage

        for module in (
            pydantic_ai.messages,
            pydantic_ai.usage,
            pydantic_ai.tools,
            pydantic_ai.output,
            pydantic_ai.run,
            pydantic_ai.exceptions,
        ):
            for name in dir(module):
                cls = getattr(module, name)
                if not isinstance(cls, type) or not cls.__module__.startswith("pydantic_ai"):
                    continue
                if name.startswith("_") and not issubclass(cls, BaseException):
                    continue  # private exceptions stay: pydantic-ai raises `_HTTPModelRateLimitError` and the like
                tag = f"pydantic_ai.{name if name.startswith('_') else cls.__name__}"  # private: named like public
                if tag in _by_tag or cls in _by_class:
                    continue
                if issubclass(cls, BaseException):
                    _add(cls, tag, "exception")
                elif cls is pydantic_ai.run.AgentRunResult:
                    _add(cls, tag, "run_result")
                elif issubclass(cls, enum.Enum):
                    _add(cls, tag, "enum")
                elif dataclasses.is_dataclass(cls) or issubclass(cls, pydantic.BaseModel):
                    _add(cls, tag, "pydantic_ai")
        for exc in _BUILTIN_EXCEPTIONS:
            _add(exc, f"builtins.{exc.__name__}", "exception")
        import dbos

        for name in dir(dbos):
            cls = getattr(dbos, name)
            if not isinstance(cls, type) or not cls.__module__.startswith("dbos"):
                continue
            if issubclass(cls, BaseException):
                _add(cls, f"dbos.{cls.__name__}", "exception")
            elif dataclasses.is_dataclass(cls):
                _add(cls, f"dbos.{cls.__name__}", "fields")
        # `DBOS.list_workflows` inside a workflow records its statuses as a step's result (a plain class).
        _add(dbos.WorkflowStatus, "dbos.WorkflowStatus", "attrs")
        from . import exceptions as own

        for name in own.__all__:
            cls = getattr(own, name)
            if cls is not UserError:
                _add(cls, f"dbos_pydantic_ai.{name}", "exception")
        from ._steps import _StoredSkipModelRequest
        from .retries import FailedAttempt
        from .streams import ModelRequestStarted, Superseded, _AttemptStart, _ModelEvent

        _add(_StoredSkipModelRequest, "dbos_pydantic_ai.SkipModelRequest", "exception")
        for cls in (FailedAttempt, ModelRequestStarted, Superseded, _AttemptStart, _ModelEvent):
            _add(cls, f"dbos_pydantic_ai.{cls.__name__.lstrip('_')}", "fields")
        _builtins_loaded = True


def _user_kind(cls: type) -> _Kind:
    if issubclass(cls, BaseException):
        return "exception"
    if issubclass(cls, enum.Enum):
        return "enum"
    if issubclass(cls, pydantic.BaseModel):
        return "schema"
    if dataclasses.is_dataclass(cls):
        try:
            pydantic.TypeAdapter(cls)
        except Exception:  # a field pydantic has no schema for: stored field by field, each value by its own type
            return "fields"
        return "schema"
    raise UserError(
        f"Cannot register {cls.__module__}.{cls.__qualname__} for stored values: only pydantic models, dataclasses, "
        "enums and exceptions can be stored as typed JSON. Convert it to one of those, or keep it out of run inputs "
        "and results."
    )


def _types_in(annotation: Any) -> Iterable[type]:
    """The classes an annotation (or an `output_type=`) names, through unions, containers and output markers."""
    if annotation is None or annotation is type(None) or isinstance(annotation, str):
        return
    if isinstance(annotation, list | tuple):
        for item in annotation:
            yield from _types_in(item)
        return
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _types_in(typing.get_args(annotation)[0])
        return
    if origin is not None:
        for arg in typing.get_args(annotation):
            yield from _types_in(arg)
        if isinstance(origin, type) and (dataclasses.is_dataclass(origin) or issubclass(origin, pydantic.BaseModel)):
            yield origin  # a generic model of the application, e.g. `Page[Order]`
        return
    if isinstance(annotation, types.UnionType):
        for arg in annotation.__args__:
            yield from _types_in(arg)
        return
    for attribute in ("outputs", "output"):  # ToolOutput, NativeOutput, PromptedOutput, TextOutput
        inner = getattr(annotation, attribute, None)
        if inner is not None and not isinstance(annotation, type):
            yield from _types_in(inner)
            return
    if isinstance(annotation, type):
        yield annotation


def register_types(*types_or_annotations: Any) -> None:
    """Allow these types in stored values: pydantic models, dataclasses, enums and exceptions of the application.

    Also takes annotations (`Order | Refund`, `list[Order]`, pydantic-ai output markers such as `ToolOutput(Order)`)
    and registers the classes they name. `DBOSAgent` registers its agent's `deps_type` and `output_type` and the
    return types of its durable tools; register here what else a run stores: a per-run `output_type=`, a value a tool
    decorated with `@DBOS.step` returns, the exceptions your own steps raise (unregistered ones are stored as a
    `StepFailedError` with their type name and message). Builtin types and pydantic-ai's own need no registration.
    Register in every process that runs or reads the runs, at import time.
    """
    _load_builtins()
    with _lock:
        for item in types_or_annotations:
            for cls in _types_in(item):
                if (
                    cls in _by_class
                    or cls.__module__ == "builtins"
                    or cls.__module__.startswith(("pydantic_ai", "dbos"))
                ):
                    continue
                if cls.__module__ in ("datetime", "decimal", "uuid", "typing", "collections.abc"):
                    continue
                _add(cls, f"{cls.__module__}.{cls.__qualname__}", _user_kind(cls))


def register_declared_types(*annotations: Any) -> None:
    """Register what an agent declares, skipping what cannot be stored as JSON (an error only if a run stores it)."""
    for annotation in annotations:
        for cls in _types_in(annotation):
            try:
                register_types(cls)
            except UserError:
                continue


def is_registered(cls: type) -> bool:
    """Whether values of `cls` may be stored and read back."""
    _load_builtins()
    return cls in _by_class


_DISCRIMINATORS = ("kind", "part_kind", "event_kind", "part_delta_kind")
_NESTED = ("messages", "parts", "part", "delta", "result")
"""The keys under which pydantic-ai's JSON nests more of its messages, parts and events (never user data)."""
_slim_tables: tuple[dict[tuple[str, str], frozenset[str]], dict[str, Any]] | None = None


_NO_DEFAULT: Any = object()


def _plain_default(field: dataclasses.Field[Any]) -> Any:
    """A usage field's default as JSON writes it (0, 0.0, None, {}), or `_NO_DEFAULT`."""
    if field.default is None or (isinstance(field.default, int | float) and not isinstance(field.default, bool)):
        return field.default
    if field.default_factory is dict or typing.get_origin(field.default_factory) is dict:
        return {}
    return _NO_DEFAULT


def _same_kind(value: Any, default: Any) -> bool:
    """Whether `value` equal to `default` reads back as it: a number as a number (0.0 for 0 too), never a bool."""
    if isinstance(value, bool) or isinstance(default, bool):
        return False
    if isinstance(value, int | float) and isinstance(default, int | float):
        return True
    return type(value) is type(default)


def _slim_table() -> tuple[dict[tuple[str, str], frozenset[str]], dict[str, Any]]:
    """For each pydantic-ai message, part and event class, keyed by its discriminator (`("part_kind", "text")`), the
    fields whose default is None; and the usage fields with a plain default (0, None, {}) every usage class shares."""
    global _slim_tables
    if _slim_tables is None:
        import pydantic_ai.messages
        import pydantic_ai.usage

        nones: dict[tuple[str, str], frozenset[str]] = {}
        for cls in vars(pydantic_ai.messages).values():
            if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
                continue
            fields = dataclasses.fields(cls)
            for field in fields:
                if field.name in _DISCRIMINATORS and isinstance(field.default, str):
                    names = frozenset(f.name for f in fields if f.default is None and f.name not in _DISCRIMINATORS)
                    nones[(field.name, field.default)] = names
        usage_defaults: dict[str, Any] = {}
        usage_classes = [pydantic_ai.usage.RequestUsage, pydantic_ai.usage.RunUsage]
        for cls in usage_classes:
            for field in dataclasses.fields(cls):
                usage_defaults.setdefault(field.name, _plain_default(field))
        for cls in usage_classes:  # keep only the fields every usage class that has them defaults alike
            for field in dataclasses.fields(cls):
                if field.name in usage_defaults and _plain_default(field) != usage_defaults[field.name]:
                    del usage_defaults[field.name]
        usage_defaults = {name: value for name, value in usage_defaults.items() if value is not _NO_DEFAULT}
        _slim_tables = (nones, usage_defaults)
    return _slim_tables


def _slim(data: Any) -> Any:
    """pydantic-ai's JSON for messages, parts, events or a run result, without what reading restores by itself:
    the None fields whose default is None, and usage fields at their default (0, None, {}). pydantic-ai writes every
    field (most are None, 0 or empty), which made a stored message twice the size of its pickle. Only pydantic-ai's
    own structure is walked (`_NESTED`): user data (tool arguments and returns, outputs, metadata) is kept as it is."""
    if isinstance(data, list):
        for item in data:
            _slim(item)
        return data
    if not isinstance(data, dict):
        return data
    nones, usage_defaults = _slim_table()
    for key in _DISCRIMINATORS:
        tag = data.get(key)
        if isinstance(tag, str):
            for name in nones.get((key, tag), ()):
                if name in data and data[name] is None:
                    del data[name]
            break
    usage = data.get("usage")
    if isinstance(usage, dict):
        for name, default in usage_defaults.items():
            value = usage.get(name, _NO_DEFAULT)
            if value == default and _same_kind(value, default):
                del usage[name]
    for key in _NESTED:
        item = data.get(key)
        if isinstance(item, list | dict):
            _slim(item)
    return data


def _adapter(entry: _Entry) -> pydantic.TypeAdapter[Any]:
    if entry.adapter is None:
        try:
            if entry.kind == "run_result":
                from pydantic_ai.run import AgentRunResult

                entry.adapter = pydantic.TypeAdapter(AgentRunResult[Any])
            else:
                entry.adapter = pydantic.TypeAdapter(entry.cls)
        except pydantic.PydanticSchemaGenerationError as error:
            raise _Unencodable(f"{_qualified(entry.cls)} has no JSON schema ({error})") from error
    return entry.adapter


# --- Encoding ------------------------------------------------------------------------------------------


def _encode_float(value: float) -> Any:
    if math.isfinite(value):
        return value
    return {TYPE_KEY: "float", "value": repr(value)}


def _qualified(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class _Encoder:
    """Turns a Python value into JSON data; `schema=True` inside a registered model's dump (its schema rebuilds)."""

    def encode(self, value: Any, schema: bool = False) -> Any:
        if value is None or value is True or value is False or (isinstance(value, str) and type(value) is str):
            return value
        cls = type(value)
        if cls is int:
            return value
        if cls is float:
            return _encode_float(value)
        if cls is list:
            return [self.encode(item, schema) for item in value]
        if cls is dict:
            if TYPE_KEY not in value and all(type(key) is str for key in value):
                return {key: self.encode(item, schema) for key, item in value.items()}
            return {
                TYPE_KEY: "dict",
                "items": [[self.encode(k, schema), self.encode(v, schema)] for k, v in value.items()],
            }
        entry = _by_class.get(cls)
        if entry is not None:
            return self._encode_registered(entry, value, schema)
        if isinstance(value, BaseException):
            return self._encode_exception(value)
        if cls is tuple:
            return {TYPE_KEY: "tuple", "items": [self.encode(item, schema) for item in value]}
        if cls is set or cls is frozenset:
            return {TYPE_KEY: cls.__name__, "items": [self.encode(item, schema) for item in value]}
        if cls is bytes or cls is bytearray:
            return {TYPE_KEY: cls.__name__, "base64": base64.b64encode(value).decode("ascii")}
        if cls is datetime:
            return {TYPE_KEY: "datetime", "iso": value.isoformat()}
        if cls is date:
            return {TYPE_KEY: "date", "iso": value.isoformat()}
        if cls is time:
            return {TYPE_KEY: "time", "iso": value.isoformat()}
        if cls is timedelta:
            return {TYPE_KEY: "timedelta", "days": value.days, "seconds": value.seconds, "us": value.microseconds}
        if cls is Decimal:
            return {TYPE_KEY: "decimal", "value": str(value)}
        if cls is uuid.UUID:
            return {TYPE_KEY: "uuid", "value": str(value)}
        if isinstance(value, type):
            return self._encode_type(value)
        if schema:
            # Inside a registered model: its schema rebuilds this field from its JSON form (an enum from its value).
            if isinstance(value, enum.Enum):
                return self.encode(value.value, schema)
            try:
                return pydantic.TypeAdapter(Any).dump_python(value, mode="json")
            except pydantic_core.PydanticSerializationError as error:
                raise _Unencodable(f"no JSON form ({error})") from error
        if isinstance(value, Mapping | list | tuple | str | int | float):
            raise _Unencodable(f"{_qualified(cls)} is a subclass of a builtin type; pass the builtin type itself")
        if dataclasses.is_dataclass(value) or isinstance(value, pydantic.BaseModel | enum.Enum):
            raise _Unencodable(
                f"the type {_qualified(cls)} is not registered for stored values: declare it on the agent "
                f"(deps_type, output_type) or call `dbos_pydantic_ai.register_types({cls.__qualname__})` at import "
                "time in every process"
            )
        raise _Unencodable(
            f"a {_qualified(cls)} cannot be stored as JSON (store plain data: pydantic models, dataclasses, "
            "dicts, lists, strings, numbers, datetimes, bytes)"
        )

    def _encode_type(self, value: type) -> Any:
        if value.__module__ == "builtins" and value.__name__ in _BUILTIN_TYPES:
            return {TYPE_KEY: "type", "name": value.__name__}
        if value in (datetime, date):
            return {TYPE_KEY: "type", "name": value.__name__}
        entry = _by_class.get(value)
        if entry is None:
            raise _Unencodable(
                f"the type {_qualified(value)} is not registered for stored values: call "
                f"`dbos_pydantic_ai.register_types({value.__qualname__})` at import time in every process"
            )
        return {TYPE_KEY: "type", "name": entry.tag}

    def _encode_registered(self, entry: _Entry, value: Any, schema: bool) -> Any:
        kind = entry.kind
        try:
            if kind == "pydantic_ai":
                return {
                    TYPE_KEY: entry.tag,
                    "value": _slim(_adapter(entry).dump_python(value, mode="json")),
                }
            if kind == "run_result":
                data = _slim(_adapter(entry).dump_python(value, mode="json", exclude={"output"}))
                data["output"] = self.encode(value.output)
                return {TYPE_KEY: entry.tag, "value": data}
            if kind == "schema":
                if schema:
                    pass  # a registered model inside another: the outer schema rebuilds it from its fields
                dumped = _adapter(entry).dump_python(value, mode="python")
                return {TYPE_KEY: entry.tag, "value": self.encode(dumped, schema=True)}
        except pydantic_core.PydanticSerializationError as error:
            raise _Unencodable(f"{_qualified(entry.cls)} has no JSON form ({error})") from error
        if kind == "enum":
            return {TYPE_KEY: entry.tag, "value": self.encode(value.value)}
        if kind == "fields":
            fields = {field.name: self.encode(getattr(value, field.name)) for field in dataclasses.fields(value)}
            return {TYPE_KEY: entry.tag, "value": fields}
        if kind == "attrs":
            return {TYPE_KEY: entry.tag, "value": self.encode(dict(vars(value)))}
        return self._encode_exception(value)

    def _encode_exception(self, error: BaseException) -> Any:
        """An exception with its class, args and attributes; one off the allowlist, or with an attribute that cannot
        be stored, as the `StepFailedError` that reading it would give (so writing never fails)."""
        message = _safe_str(error)
        entry = _by_class.get(type(error))
        if entry is not None and entry.kind == "exception":
            try:
                attrs = {k: v for k, v in vars(error).items() if k not in ("__traceback__",)}
                return {
                    TYPE_KEY: "exception",
                    "class": entry.tag,
                    "message": message,
                    "args": self.encode(list(error.args)),
                    "attrs": self.encode(attrs),
                }
            except _Unencodable:
                pass
        stand_in = _stand_in(_qualified(type(error)), message)
        return {
            TYPE_KEY: "exception",
            "class": "dbos_pydantic_ai.StepFailedError",
            "message": str(stand_in),
            "args": [stand_in.type_name, stand_in.message],
            "attrs": {"type_name": stand_in.type_name, "message": stand_in.message},
        }


def _safe_str(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return f"<{type(error).__name__}>"


def _stand_in(type_name: str, message: str) -> StepFailedError:
    return StepFailedError(type_name, message)


# --- Decoding ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StoredAsPickle:
    """A stored value written with pickle, which a reader does not unpickle unless told to trust the database."""

    serialization: str = "py_pickle"

    def __str__(self) -> str:
        return "stored as pickle, not displayed"


@dataclasses.dataclass(frozen=True)
class StoredValue:
    """A reader's view of a stored value whose type is not registered in this process: its JSON, not rebuilt."""

    type_name: str
    data: Any

    def __str__(self) -> str:
        return json.dumps(self.data, default=str)


class _Decoder:
    """Turns JSON data back into Python values. `strict=False` (readers) leaves unknown types as `StoredValue`."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict

    def decode(self, data: Any) -> Any:
        if isinstance(data, list):
            return [self.decode(item) for item in data]
        if not isinstance(data, dict):
            return data
        tag = data.get(TYPE_KEY)
        if tag is None:
            return {key: self.decode(item) for key, item in data.items()}
        if not isinstance(tag, str):
            raise UnknownStoredTypeError(f"A stored value has a non-string {TYPE_KEY!r}: {tag!r}.")
        builtin = _BUILTIN_DECODERS.get(tag)
        if builtin is not None:
            try:
                return builtin(self, data)
            except (KeyError, TypeError, ValueError) as error:
                raise UnknownStoredTypeError(f"A stored {tag!r} value is malformed: {error}") from error
        entry = _by_tag.get(tag)
        if entry is None or entry.kind == "exception":
            return self._unknown(tag, data)
        value: Any = data.get("value")
        kind = entry.kind
        if kind == "pydantic_ai":
            return _adapter(entry).validate_python(value)
        if kind == "run_result":
            fields = dict(value)
            fields["output"] = self.decode(fields.get("output"))
            return _adapter(entry).validate_python(fields)
        if kind == "schema":
            return _adapter(entry).validate_python(self.decode(value))
        if kind == "enum":
            return entry.cls(self.decode(value))
        fields = {key: self.decode(item) for key, item in value.items()}
        if kind == "attrs":
            instance: Any = object.__new__(entry.cls)
            instance.__dict__.update(fields)
            return instance
        return entry.cls(**fields)

    def _unknown(self, tag: str, data: Any) -> Any:
        if not self.strict:
            return StoredValue(tag, data)
        raise UnknownStoredTypeError(
            f"A stored value names the type {tag!r}, which is not on this process's allowlist: it was not imported "
            "or called. If the application stores this type, register it at import time in every process that "
            f"runs or reads the runs (`dbos_pydantic_ai.register_types(...)`, or declare it on the agent). If it "
            "does not, the row was written by someone else: check who can write the system database."
        )

    def decode_exception(self, data: dict[str, Any]) -> BaseException:
        tag = data.get("class")
        message = data.get("message")
        message = message if isinstance(message, str) else ""
        entry = _by_tag.get(tag) if isinstance(tag, str) else None
        if entry is None or entry.kind != "exception":
            # Off the allowlist: a stand-in that keeps the name and the message, never the named class.
            return _stand_in(str(tag), message)
        args = tuple(self.decode(data.get("args") or []))
        attrs = self.decode(data.get("attrs") or {})
        cls: Any = entry.cls
        try:
            error = cls.__new__(cls, *args)
        except Exception:
            error = cls.__new__(cls)
        error.args = args
        if isinstance(attrs, dict):
            for key, value in attrs.items():
                if isinstance(key, str):
                    with contextlib.suppress(AttributeError, TypeError):
                        object.__setattr__(error, key, value)
        return error


def _decode_dict(decoder: _Decoder, data: dict[str, Any]) -> Any:
    return {decoder.decode(k): decoder.decode(v) for k, v in data["items"]}


def _decode_type(decoder: _Decoder, data: dict[str, Any]) -> Any:
    name = data["name"]
    if name in _BUILTIN_TYPES:
        return _BUILTIN_TYPES[name]
    entry = _by_tag.get(name)
    if entry is None:
        return decoder._unknown(name, data)
    return entry.cls


def _decode_float(decoder: _Decoder, data: dict[str, Any]) -> float:
    value = data["value"]
    if value not in ("nan", "inf", "-inf"):
        raise ValueError(f"not a special float: {value!r}")
    return float(value)


_BUILTIN_DECODERS: dict[str, Callable[[_Decoder, dict[str, Any]], Any]] = {
    "dict": _decode_dict,
    "tuple": lambda d, data: tuple(d.decode(data["items"])),
    "set": lambda d, data: set(d.decode(data["items"])),
    "frozenset": lambda d, data: frozenset(d.decode(data["items"])),
    "bytes": lambda d, data: base64.b64decode(data["base64"], validate=True),
    "bytearray": lambda d, data: bytearray(base64.b64decode(data["base64"], validate=True)),
    "datetime": lambda d, data: datetime.fromisoformat(data["iso"]),
    "date": lambda d, data: date.fromisoformat(data["iso"]),
    "time": lambda d, data: time.fromisoformat(data["iso"]),
    "timedelta": lambda d, data: timedelta(days=data["days"], seconds=data["seconds"], microseconds=data["us"]),
    "decimal": lambda d, data: Decimal(data["value"]),
    "uuid": lambda d, data: uuid.UUID(data["value"]),
    "float": _decode_float,
    "type": _decode_type,
    "exception": lambda d, data: d.decode_exception(data),
}


# --- The serializer ------------------------------------------------------------------------------------


class JSONSerializer(Serializer):
    """DBOS serializer that stores typed JSON (see the module docstring); `dbos_config()` uses it by default.

    Args:
        types: More types to allow (as `register_types()`); the allowlist is shared by the whole process.
    """

    def __init__(self, types: Iterable[Any] = ()) -> None:
        _load_builtins()
        register_types(*types)
        self._encoder = _Encoder()
        self._decoder = _Decoder(strict=True)
        self._reader = _Decoder(strict=False)

    def name(self) -> str:
        return JSON_SERIALIZATION

    def serialize(self, data: Any) -> str:
        try:
            encoded = self._encoder.encode(data)
        except _Unencodable as error:
            raise NotSerializableError(f"Cannot store a {_qualified(type(data))} as JSON: {error}.") from error
        return json.dumps(encoded, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def deserialize(self, serialized_data: str) -> Any:
        return self._decoder.decode(json.loads(serialized_data))

    def read(self, serialized_data: str) -> Any:
        """For readers: like `deserialize`, but a type off the allowlist comes back as a `StoredValue` (its JSON)."""
        return self._reader.decode(json.loads(serialized_data))

    def check(self, value: Any) -> str | None:
        """Why `value` cannot be stored and read back, or None when it can (the storable-value checks use it)."""
        try:
            encoded = self._encoder.encode(value)
            self._decoder.decode(json.loads(json.dumps(encoded, allow_nan=False)))
        except (_Unencodable, UnknownStoredTypeError, pydantic.ValidationError, ValueError, TypeError) as error:
            return str(error)
        return None


_default: JSONSerializer | None = None


def default_json_serializer() -> JSONSerializer:
    """The process's shared `JSONSerializer` (readers and clients outside a worker use it)."""
    global _default
    if _default is None:
        _default = JSONSerializer()
    return _default
