"""Configuration: step retry settings, durations, and a DBOS config with sensible defaults for agents.

`StepConfig` is the retry policy of one kind of step (model requests, MCP calls, durable tools).
`duration_seconds()` reads a duration argument (seconds or a timedelta) the one way all of them are read.
`dbos_config()` builds the `DBOSConfig` to hand to `DBOS(config=...)`: SQLite in WAL mode when no URL
is given, and a reachability check so a wrong URL fails at start-up with a message that names it.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypedDict

from dbos import DBOSConfig

from ._serialization import serializer_for
from .exceptions import DatabaseUnreachableError, UserError

__all__ = [
    "StepConfig",
    "check_database_url",
    "dbos_config",
    "enable_sqlite_wal",
    "redact_url",
    "system_database_error",
]


class StepConfig(TypedDict, total=False):
    """Retry policy of a DBOS step, as DBOS's `@DBOS.step` takes it.

    Leave a key out to use DBOS's default (no retries).
    """

    retries_allowed: bool
    interval_seconds: float
    max_attempts: int
    backoff_rate: float


_STEP_CONFIG_KEYS = frozenset(StepConfig.__annotations__)


def validate_step_config(config: StepConfig | None, *, argument: str) -> StepConfig:
    """Return `config` (or an empty config), refusing keys DBOS would not understand."""
    if config is None:
        return {}
    unknown = set(config) - _STEP_CONFIG_KEYS
    if unknown:
        raise UserError(
            f"`{argument}` has unknown keys {sorted(unknown)}; a StepConfig takes only {sorted(_STEP_CONFIG_KEYS)}."
        )
    return config


# --- Durations -----------------------------------------------------------------------------------


def duration_seconds(
    value: float | timedelta | None, *, argument: str, allow_zero: bool, none_means: str
) -> float | None:
    """`value` in seconds (None stays None), refusing anything but a non-negative number or timedelta.

    `allow_zero` says whether 0 is a meaningful value of `argument`; `none_means` completes the error's
    hint ("pass None to ...") so the user learns the other way out.
    """
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    is_number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
    if not is_number or seconds < 0 or (seconds == 0 and not allow_zero):
        kind = "a number of seconds (0 or more)" if allow_zero else "a positive number of seconds"
        raise UserError(f"`{argument}` must be {kind} or a timedelta, not {value!r}; pass None to {none_means}.")
    return float(seconds)


# --- Database URLs -----------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***`, safe to print in errors and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _sqlite_path(url: str) -> Path | None:
    """The file behind a `sqlite:///path` URL, or None for other databases."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[1] if "///" in url else ""
    path = path.split("?", 1)[0]
    if not path or path == ":memory:":
        raise DatabaseUnreachableError(
            f"SQLite URL {url!r} names no file. DBOS needs a file it can reopen after a crash: "
            "use `sqlite:///path/to/app.sqlite`."
        )
    return Path(path)


def enable_sqlite_wal(url: str) -> None:
    """Put the SQLite database behind `url` in WAL journal mode (it stays so: the mode is stored in the file).

    DBOS leaves SQLite in the rollback-journal mode, where every commit rewrites a journal file and
    readers block writers. WAL roughly halves the cost of a step (see bench/README.md).
    """
    path = _sqlite_path(url)
    if path is None:
        return
    with sqlite3.connect(path, timeout=30) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
    connection.close()


def system_engine(
    url: str, *, sqlite: Mapping[str, Any] | None = None, postgres: Mapping[str, Any] | None = None
) -> tuple[Any, str | None]:
    """An engine of ours on the system database at `url`, and the schema DBOS keeps its tables in there.

    PostgreSQL goes through psycopg 3, as DBOS's does, in DBOS's default schema `dbos`. SQLite connections are
    configured as DBOS configures its own: writers take the lock up front and wait for it. `sqlite` and `postgres`
    are engine options for that kind of database (a pool of its own, timeouts).
    """
    import sqlalchemy as sa

    target = sa.make_url(url)
    if not target.drivername.startswith("sqlite"):
        engine = sa.create_engine(target.set(drivername="postgresql+psycopg"), **(postgres or {}))
        return engine, "dbos"
    engine = sa.create_engine(target, **(sqlite or {}))

    @sa.event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, connection_record: Any) -> None:
        dbapi_connection.isolation_level = "IMMEDIATE"
        dbapi_connection.execute("PRAGMA busy_timeout=30000")
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    return engine, None


def check_database_url(url: str, *, timeout_seconds: float = 5.0) -> None:
    """Raise `DatabaseUnreachableError` unless the database behind `url` can be opened now.

    SQLite: the file's folder must exist and be writable. PostgreSQL: a connection must succeed, to
    the named database or, when only that database is missing (DBOS creates it on launch), to the
    server's `postgres` database with the same credentials. Any other failure (no server, a wrong
    user or password, a missing role) is raised here.
    """
    sqlite_file = _sqlite_path(url)
    if sqlite_file is not None:
        folder = sqlite_file.resolve().parent
        if not folder.is_dir():
            raise DatabaseUnreachableError(
                f"Cannot use SQLite database {url!r}: the folder {str(folder)!r} does not exist. Create it first."
            )
        if not os.access(folder, os.W_OK):
            raise DatabaseUnreachableError(
                f"Cannot use SQLite database {url!r}: the folder {str(folder)!r} is not writable."
            )
        return
    if not url.startswith(("postgresql", "postgres")):
        raise DatabaseUnreachableError(
            f"Unsupported database URL {redact_url(url)!r}: use `sqlite:///file.sqlite` or `postgresql://...`."
        )
    problem = _postgres_problem(url, timeout_seconds)
    if problem is not None and problem[0] == "unreachable":
        raise DatabaseUnreachableError(_unreachable_message(url, problem[1]))


def _unreachable_message(url: str, cause: str) -> str:
    return (
        f"Cannot reach PostgreSQL at {redact_url(url)!r} ({cause}). "
        "Check that the server is running and the host, port, user and password are right."
    )


def _postgres_problem(url: str, timeout_seconds: float = 5.0) -> tuple[str, str] | None:
    """None when `url` opens; else `("missing_database", name)` or `("unreachable", first line of the error)`.

    A missing database is told apart by asking the server's `postgres` database, not by reading the
    error's text (which the server may send translated, and which a missing role resembles).
    """
    import sqlalchemy as sa

    target = sa.make_url(url)
    connect_args = {"connect_timeout": max(1, int(timeout_seconds))}
    cause = _connection_problem(target, connect_args)
    if cause is None:
        return None
    if not target.database or target.database == "postgres":
        return "unreachable", cause
    engine = sa.create_engine(target.set(database="postgres"), connect_args=connect_args)
    try:
        with engine.connect() as connection:
            exists = connection.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            ).first()
    except sa.exc.SQLAlchemyError:
        return "unreachable", cause
    finally:
        engine.dispose()
    if exists is None:
        return "missing_database", target.database
    # It exists now: another worker's DBOS may have created it since we tried, so try once more before blaming it.
    cause = _connection_problem(target, connect_args)
    return None if cause is None else ("unreachable", cause)


def _connection_problem(target: Any, connect_args: dict[str, Any]) -> str | None:
    """None when a connection to `target` opens, else the first line of the driver's error."""
    import sqlalchemy as sa

    engine = sa.create_engine(target, connect_args=connect_args)
    try:
        with engine.connect():
            return None
    except sa.exc.OperationalError as error:
        return _first_line(error.orig)
    finally:
        engine.dispose()


def system_database_error(url: str, error: BaseException) -> str:
    """Why the DBOS system database at `url` could not be used, after `error` opening or reading it.

    For readers of a database the workers made (console, `approvals`, `tail`, `read_events()`): tells a
    server that cannot be reached (with the driver's reason, e.g. connection refused) from a database
    or file that is missing, and from one that holds no DBOS tables.
    """
    hint = "Pass the URL your workers give DBOS, once one of them has launched."
    shown = redact_url(url)
    sqlite_file = _sqlite_path(url)
    if sqlite_file is not None:
        if not sqlite_file.exists():
            return f"No DBOS system database at {shown!r}: the file does not exist. {hint}"
    elif url.startswith(("postgresql", "postgres")):
        problem = _postgres_problem(url)
        if problem is not None and problem[0] == "unreachable":
            return _unreachable_message(url, problem[1])
        if problem is not None:
            return f"No DBOS system database at {shown!r}: the database {problem[1]!r} does not exist. {hint}"
    reason = _first_line(getattr(error, "orig", None) or error)
    return f"No DBOS system database at {shown!r} ({type(error).__name__}: {reason}). {hint}"


def _first_line(error: BaseException | None) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0].rstrip(".?") if lines else "no answer"


# --- DBOS configuration ------------------------------------------------------------------------

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# DBOS 3.4 (`_sys_db.py`) logs this when code starts a run with a workflow id that recovery already put back on
# DBOS's internal queue: a relaunched worker that starts "its" run again. The call joins the recovered run, which
# runs once; nothing is wrong. Checked against dbos 3.4.0; a changed text only lets the warning through again.
_RELAUNCH_WARNING = "Workflow already exists in queue: _dbos_internal_queue, but the provided queue name is: None."


class _RelaunchWarningFilter(logging.Filter):
    """Drops DBOS's warning about starting a run that recovery has already re-enqueued (harmless, see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_RELAUNCH_WARNING)


def _show_relaunch_warning(shown: bool) -> None:
    """Let DBOS's relaunch warning through (INFO, DEBUG), or drop it (the quiet levels)."""
    logger = logging.getLogger("dbos")
    for existing in [f for f in logger.filters if isinstance(f, _RelaunchWarningFilter)]:
        logger.removeFilter(existing)
    if not shown:
        logger.addFilter(_RelaunchWarningFilter())


def dbos_config(
    name: str,
    *,
    database_url: str | None = None,
    executor_id: str | None = None,
    application_version: str | None = None,
    check: bool = True,
    log_level: str = "WARNING",
    serializer: Any = None,
    tracing: bool = False,
    otlp_endpoint: str | Sequence[str] | None = None,
    trace_attributes: Mapping[str, str] | None = None,
    instrument_pydantic_ai: bool = True,
    **extra: Any,
) -> DBOSConfig:
    """A `DBOSConfig` for a durable-agent application.

    Args:
        name: The application name. Without `database_url`, the database is `sqlite:///{name}.sqlite`
            in the working directory.
        database_url: `sqlite:///path.sqlite` (embedded, zero set-up) or `postgresql://...` (many
            workers on one database). Defaults to the `DBOS_SYSTEM_DATABASE_URL` environment variable.
        executor_id: This process's identity. A relaunched process recovers the unfinished runs of
            its own executor id, so give each worker a distinct id that stays the same across restarts.
        application_version: Pin the version DBOS stamps on runs. DBOS's default is a hash of the
            workflow code, so any code edit strands unfinished runs of the old version.
        check: Check now that the database can be reached, so a wrong URL fails here with a clear message.
        log_level: The level of DBOS's own `dbos` logger. WARNING (the default) keeps the start-up quiet: DBOS
            logs each of its schema migrations and its launch at INFO. Pass "INFO" or "DEBUG" to see them.
            At the quiet levels DBOS's "Workflow already exists in queue: _dbos_internal_queue" warning is dropped
            too: a relaunched worker that starts a run recovery already took up joins that run (configuration.md).
        serializer: How DBOS stores inputs, results, events and streams: "json" (the default: typed JSON that
            readers never have to unpickle, see docs/serialization.md), "pickle" (DBOS's own default, for values
            JSON cannot hold; its rows run code when read), or a DBOS `Serializer`. None reads the
            `DBOS_PYDANTIC_AI_SERIALIZER` environment variable, else "json". Rows already stored keep the format
            they were written in: DBOS reads each one by its recorded serialization.
        tracing: Turn DBOS's OpenTelemetry spans on (`enable_otlp`; needs the `otel` extra) and, unless
            `instrument_pydantic_ai=False` or something (Logfire) did already, pydantic-ai's (`Agent.instrument_all()`).
            See docs/observability.md.
        otlp_endpoint: One or more OTLP/HTTP traces endpoints (`http://collector:4318/v1/traces`) DBOS exports to.
            Without one, spans go to the tracer provider you (or Logfire) set up.
        trace_attributes: Attributes DBOS puts on each of its spans (e.g. `{"deployment": "eu-1"}`).
        instrument_pydantic_ai: With `tracing=True`, whether to call `Agent.instrument_all()`.
        extra: Any other `DBOSConfig` key, passed through.

    Example:
        ```python
        DBOS(config=dbos_config("shop"))  # shop.sqlite, WAL mode
        DBOS.launch()
        ```
    """
    level = log_level.upper() if isinstance(log_level, str) else log_level
    if level not in _LOG_LEVELS:
        raise UserError(f"dbos_config(log_level={log_level!r}): use one of {', '.join(_LOG_LEVELS)}.")
    url = database_url or os.environ.get("DBOS_SYSTEM_DATABASE_URL") or f"sqlite:///{name}.sqlite"
    if check:
        check_database_url(url)
    enable_sqlite_wal(url)
    config: DBOSConfig = {"name": name, "system_database_url": url, "log_level": level}
    _show_relaunch_warning(level in ("DEBUG", "INFO"))
    if executor_id is not None:
        config["executor_id"] = executor_id
    if application_version is not None:
        config["application_version"] = application_version
    chosen = serializer_for(serializer)
    if chosen.name() != "py_pickle":
        config["serializer"] = chosen
    # Tracing (tracing.py): DBOS's keys, so users need not know them.
    from .tracing import dbos_tracing_config

    traced = dbos_tracing_config(
        name,
        tracing=tracing,
        otlp_endpoint=otlp_endpoint,
        trace_attributes=trace_attributes,
        instrument_pydantic_ai=instrument_pydantic_ai,
    )
    config.update(traced)  # type: ignore[typeddict-item]
    config.update(extra)  # type: ignore[typeddict-item]
    return config
