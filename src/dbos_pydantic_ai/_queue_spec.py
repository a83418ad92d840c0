"""A worker's `--queue` spec: which DBOS queue it serves, with DBOS's controls, parsed and checked up front.

`NAME[:WORKER_CONCURRENCY][,global=N][,rate=LIMIT/SECONDS][,poll=SECONDS]`, e.g. `runs:4,global=20,rate=50/60`:
every problem is reported with the spec as written and the way to fix it, before anything starts.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from .exceptions import WorkerConfigError

__all__ = ["DEFAULT_POLLING_INTERVAL_SEC", "QUEUE_SPEC_SYNTAX", "QueueSpec", "parse_queue_spec"]

logger = logging.getLogger("dbos_pydantic_ai.worker")

DEFAULT_POLLING_INTERVAL_SEC = 1.0
"""DBOS's own default: how often a worker looks for runs to dequeue."""

QUEUE_SPEC_SYNTAX = "NAME[:WORKER_CONCURRENCY][,global=N][,rate=LIMIT/SECONDS][,poll=SECONDS]"
_QUEUE_SPEC_EXAMPLE = "--queue runs:4,global=20,rate=50/60,poll=0.5"
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class QueueSpec:
    """A queue this worker listens to, with DBOS's controls (`DBOS.register_queue`).

    DBOS stores a queue's settings in the database, once for the whole fleet: give every worker the same spec.
    """

    name: str
    worker_concurrency: int | None = None
    """At most this many runs of the queue at once in each worker."""
    global_concurrency: int | None = None
    """At most this many runs of the queue at once across all workers."""
    rate_limit: tuple[int, float] | None = None
    """(limit, period): at most `limit` runs start in any `period` seconds, across all workers."""
    polling_interval_sec: float = DEFAULT_POLLING_INTERVAL_SEC
    """How often each worker looks for runs to dequeue."""

    def __post_init__(self) -> None:
        problem = _queue_spec_problem(
            self.name, self.worker_concurrency, self.global_concurrency, self.rate_limit, self.polling_interval_sec
        )
        if problem is not None:
            raise _bad_spec(self.describe(), problem)

    def register(self) -> None:
        """Register the queue in the launched DBOS (after `DBOS.launch()`), and warn when the database keeps other
        settings for it (DBOS lets only the latest application version change a queue's settings)."""
        from dbos import DBOS

        limiter = None if self.rate_limit is None else {"limit": self.rate_limit[0], "period": self.rate_limit[1]}
        try:
            queue = DBOS.register_queue(
                self.name,
                worker_concurrency=self.worker_concurrency,
                global_concurrency=self.global_concurrency,
                limiter=limiter,  # type: ignore[arg-type]
                polling_interval_sec=self.polling_interval_sec,
            )
        except Exception as error:
            raise WorkerConfigError(
                f"Cannot register queue {self.name!r}: {error}. A queue belongs to one DBOS application: give every "
                "worker of the fleet the same --app-name (and DBOS_PAI_APP_NAME), or pick another queue name."
            ) from error
        stored_limiter = queue.limiter
        stored = QueueSpec(
            self.name,
            worker_concurrency=queue.worker_concurrency,
            global_concurrency=queue.global_concurrency,
            rate_limit=None if stored_limiter is None else (stored_limiter["limit"], stored_limiter["period"]),
            polling_interval_sec=queue.polling_interval_sec,
        )
        if stored != self:
            logger.warning(
                "Queue %r keeps the settings registered by the latest application version (%s), not this worker's "
                "(%s): DBOS lets only the latest version change them. Give every worker the same --queue spec.",
                self.name,
                stored.describe(),
                self.describe(),
            )

    def describe(self) -> str:
        """The spec in the command's own syntax."""
        text = self.name if self.worker_concurrency is None else f"{self.name}:{self.worker_concurrency}"
        if self.global_concurrency is not None:
            text += f",global={self.global_concurrency}"
        if self.rate_limit is not None:
            text += f",rate={self.rate_limit[0]}/{self.rate_limit[1]:g}"
        if self.polling_interval_sec != DEFAULT_POLLING_INTERVAL_SEC:
            text += f",poll={self.polling_interval_sec:g}"
        return text


def _bad_spec(shown: str, problem: str) -> WorkerConfigError:
    return WorkerConfigError(
        f"Bad queue spec {shown!r}: {problem}. Write {QUEUE_SPEC_SYNTAX}, e.g. {_QUEUE_SPEC_EXAMPLE} (4 runs at once "
        "in this worker, 20 in the fleet, at most 50 started per 60 s, looked for every 0.5 s)."
    )


def _queue_spec_problem(
    name: object,
    worker_concurrency: object = None,
    global_concurrency: object = None,
    rate_limit: object = None,
    polling_interval_sec: object = DEFAULT_POLLING_INTERVAL_SEC,
) -> str | None:
    """What is wrong with a queue spec's values, or None."""
    if not isinstance(name, str) or not _QUEUE_NAME.match(name):
        return f"the queue name {name!r} must be letters, digits, '_', '-' or '.'"
    if name.startswith("_dbos_"):
        return "names starting with '_dbos_' belong to DBOS's internal queues"
    for label, value in (("the worker concurrency", worker_concurrency), ("global", global_concurrency)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return f"{label} must be a whole number of at least 1, not {value!r}"
    if (
        isinstance(worker_concurrency, int)
        and isinstance(global_concurrency, int)
        and worker_concurrency > global_concurrency
    ):
        return (
            f"the worker concurrency ({worker_concurrency}) exceeds the global concurrency ({global_concurrency}): "
            "a worker cannot run more than the whole fleet may"
        )
    if rate_limit is not None:
        if not isinstance(rate_limit, tuple) or len(rate_limit) != 2:
            return f"the rate limit must be (LIMIT, SECONDS), not {rate_limit!r}"
        limit, period = rate_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            return f"the rate limit must be a whole number of runs of at least 1, not {limit!r}"
        if isinstance(period, bool) or not isinstance(period, int | float) or not 0 < period < float("inf"):
            return f"the rate period must be a positive number of seconds, not {period!r}"
    interval = polling_interval_sec
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval < float("inf"):
        return f"poll must be a positive number of seconds, not {interval!r}"
    return None


def _whole(text: str, shown: str, label: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _bad_spec(shown, f"{label} {text!r} is not a whole number") from None


def _seconds(text: str, shown: str, label: str) -> float:
    try:
        return float(text.removesuffix("s"))
    except ValueError:
        raise _bad_spec(shown, f"{label} {text!r} is not a number of seconds") from None


def parse_queue_spec(text: str) -> QueueSpec:
    """Parse `NAME[:WORKER_CONCURRENCY][,global=N][,rate=LIMIT/SECONDS][,poll=SECONDS]` (the `--queue` option).

    `runs` listens to `runs` without limits, `runs:4` runs at most 4 at once in this worker, and
    `runs:4,global=20,rate=50/60,poll=0.5` adds at most 20 at once in the fleet, at most 50 started in any 60 seconds,
    and a look for new runs every half second. Raises `WorkerConfigError` naming the bad part and the fix.
    """
    shown = text
    head, *options = [part.strip() for part in text.strip().split(",")]
    name, colon, concurrency = head.partition(":")
    if not name:
        raise _bad_spec(shown, "the queue name is missing")
    if colon and not concurrency:
        raise _bad_spec(shown, "nothing follows ':' (the worker concurrency, a whole number)")
    values: dict[str, Any] = {"name": name}
    seen: set[str] = set()
    if concurrency:
        values["worker_concurrency"] = _whole(concurrency, shown, "the worker concurrency")
        seen.add("worker")
    for option in options:
        key, equals, value = option.partition("=")
        key = key.strip().lower()
        value = value.strip()
        if not equals or not value:
            raise _bad_spec(shown, f"{option!r} is not KEY=VALUE")
        if key in seen:
            raise _bad_spec(shown, f"{key!r} is given twice (':N' after the name is the worker concurrency)")
        seen.add(key)
        if key == "global":
            values["global_concurrency"] = _whole(value, shown, "global")
        elif key == "worker":
            values["worker_concurrency"] = _whole(value, shown, "worker")
        elif key == "rate":
            limit, slash, period = value.partition("/")
            if not slash:
                raise _bad_spec(shown, f"rate={value!r} must be LIMIT/SECONDS, e.g. rate=50/60")
            values["rate_limit"] = (_whole(limit, shown, "the rate limit"), _seconds(period, shown, "the rate period"))
        elif key == "poll":
            values["polling_interval_sec"] = _seconds(value, shown, "poll")
        else:
            raise _bad_spec(shown, f"unknown option {key!r} (use global=, rate=, poll= or worker=)")
    problem = _queue_spec_problem(**values)
    if problem is not None:
        raise _bad_spec(shown, problem)
    return QueueSpec(**values)
