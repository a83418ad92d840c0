"""Parked runs: a run that has waited for a decision for a while leaves memory, and comes back when one arrives.

A run waiting for approval is a suspended pydantic-ai run (about 120 KB of heap, with every frame of its await
chain) plus one DBOS re-check of the database a minute. After `park_after` seconds without a decision, the wait
raises `RunParked` instead. It is a `BaseException`: DBOS records a workflow's outcome only for an `Exception`, so
the execution ends and nothing is recorded. The workflow stays PENDING with every finished step recorded, exactly
as after a crash.

Each process that parked runs has one `_Waker` thread. Once a second it reads the decisions made since its last
look (one indexed query for all its parked runs) and hands every run that got a decision, or reached its deadline,
back to its queue through DBOS's recovery path (`_compat.wake_parked_runs`). DBOS's dequeue admits one runner. The
replay re-reads the recorded steps up to the wait, whose `recv` then returns the decision at once. Many runs due at
once are woken a few at a time, oldest parked first (`_WAKE_WHILE_EXECUTING_BELOW`).

Nothing here decides correctness, only how soon a run goes on. A process that dies with parked runs leaves PENDING
runs that DBOS recovers at the next launch like any other. A wake with nothing to do costs one replay: the run parks
again. A decision committed late (after the waker's look-back window) is still found by the full check every
`_FULL_CHECK_SECONDS`, which also forgets runs that were cancelled, taken over or handed back in the meantime.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from dbos import DBOS

from ._approval_table import launched_decisions
from ._compat import active_workflow_ids, dbos_instance, system_tables, wake_parked_runs

__all__ = ["RunParked", "park", "parked_run_ids"]

logger = logging.getLogger(__name__)

_TICK_SECONDS = 1.0
# Each look re-reads this much before the last one: a decision's time is taken before its transaction commits.
_LOOK_BACK_MS = 5_000
_FULL_CHECK_SECONDS = 60.0
_CHUNK = 500
# Runs executing in this process at once (woken ones included) above which a look wakes only `_MIN_WAKES_PER_LOOK`.
# Each replay hands its database calls to DBOS's threads, which queue for its connection pool: a thousand runs woken
# at once made a thousand threads. The rest stay due, in the order they parked, for the next looks.
_WAKE_WHILE_EXECUTING_BELOW = 40
_MIN_WAKES_PER_LOOK = 10


class RunParked(BaseException):
    """Ends a waiting run's execution in this process, recording nothing; its workflow stays PENDING.

    Not an `Exception`, so neither DBOS (which would record the run as failed) nor pydantic-ai nor a user's
    `except Exception` stops it on its way out.
    """

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"run {workflow_id} parked until a decision arrives")
        self.workflow_id = workflow_id


@dataclass
class _Parked:
    workflow_id: str
    wait_id: int
    pending: frozenset[str]  # the tool call ids still undecided when the run parked
    deadline: float | None
    parked_at: float = field(default_factory=time.monotonic)  # due runs wake oldest first


class _Waker:
    """This process's parked runs (for one launched DBOS), and the thread that wakes them."""

    def __init__(self, instance: object, executor_id: str) -> None:
        self._instance = instance
        self._executor_id = executor_id
        self._lock = threading.Lock()
        self._parked: dict[str, _Parked] = {}
        self._unchecked: set[str] = set()  # parked since the last look: decided before they parked?
        self._deadlines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._serve, name="dbos-pai-waker", daemon=True)
        self._thread.start()

    def add(self, parked: _Parked) -> None:
        with self._lock:
            self._parked[parked.workflow_id] = parked
            self._unchecked.add(parked.workflow_id)
            if parked.deadline is not None:
                heapq.heappush(self._deadlines, (parked.deadline, parked.workflow_id))

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._parked)

    def _serve(self) -> None:
        since_ms = int(time.time() * 1000) - _LOOK_BACK_MS
        next_full_check = time.monotonic() + _FULL_CHECK_SECONDS
        while dbos_instance() is self._instance:
            time.sleep(_TICK_SECONDS)
            if not self._parked:
                since_ms = int(time.time() * 1000) - _LOOK_BACK_MS
                continue
            try:
                looked_at_ms = int(time.time() * 1000)
                full_check = time.monotonic() >= next_full_check
                self._look(since_ms, full_check)
                since_ms = looked_at_ms - _LOOK_BACK_MS
                if full_check:
                    next_full_check = time.monotonic() + _FULL_CHECK_SECONDS
            except Exception:  # the database is unreachable, say: nothing is lost, the next look covers this one
                if dbos_instance() is not self._instance:
                    return
                logger.warning("Looking for decisions for parked runs failed; trying again in a second", exc_info=True)

    def _look(self, since_ms: int, full_check: bool) -> None:
        with self._lock:
            unchecked = list(self._parked) if full_check else [i for i in self._unchecked if i in self._parked]
            self._unchecked.clear()
            seen = {workflow_id: self._parked[workflow_id] for workflow_id in unchecked}
        try:
            rows, gone = self._read(since_ms, unchecked, full_check)
        except BaseException:
            with self._lock:
                self._unchecked.update(unchecked)
            raise
        now = time.time()
        due: dict[str, _Parked] = {}
        with self._lock:
            for workflow_id, wait_id, tool_call_id in rows:
                parked = self._parked.get(workflow_id)
                if parked is not None and parked.wait_id == wait_id and tool_call_id in parked.pending:
                    due[workflow_id] = parked
            while self._deadlines and self._deadlines[0][0] <= now:
                _, workflow_id = heapq.heappop(self._deadlines)
                if (parked := self._parked.get(workflow_id)) is not None:
                    due[workflow_id] = parked
            for workflow_id in gone:
                if self._parked.get(workflow_id) is seen[workflow_id]:  # not parked again since the read
                    del self._parked[workflow_id]
            for workflow_id in due:
                self._parked.pop(workflow_id, None)
        # A run still executing here (unwinding from its park, or resumed by hand) must not be dispatched a second
        # time: look at it again next time.
        active = set(active_workflow_ids())
        executing = active & set(due)
        ids = sorted(set(due) - executing, key=lambda workflow_id: due[workflow_id].parked_at)
        room = max(_MIN_WAKES_PER_LOOK, _WAKE_WHILE_EXECUTING_BELOW - len(active))
        for workflow_id in [*executing, *ids[room:]]:  # due still: looked at again next time
            self.add(due[workflow_id])
        ids = ids[:room]
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            try:
                woken = wake_parked_runs(chunk, self._executor_id)
            except BaseException:
                for workflow_id in ids[start:]:  # not woken: the next look tries again
                    self.add(due[workflow_id])
                raise
            logger.debug("Woke %d parked runs (%d no longer parked here)", len(woken), len(chunk) - len(woken))

    def _read(
        self, since_ms: int, unchecked: list[str], full_check: bool
    ) -> tuple[list[tuple[str, int, str]], set[str]]:
        """Decisions made since `since_ms`, and every decision of the `unchecked` runs; with `full_check`, also which
        of them are no longer parked here."""
        sys_db, decisions = launched_decisions()
        columns = (decisions.c.workflow_id, decisions.c.wait_id, decisions.c.tool_call_id)
        gone: set[str] = set()
        with sys_db.engine.connect() as connection:
            rows = [
                tuple(row)
                for row in connection.execute(sa.select(*columns).where(decisions.c.decided_at_epoch_ms >= since_ms))
            ]
            for start in range(0, len(unchecked), _CHUNK):
                chunk = unchecked[start : start + _CHUNK]
                rows += [
                    tuple(row)
                    for row in connection.execute(sa.select(*columns).where(decisions.c.workflow_id.in_(chunk)))
                ]
                if full_check:
                    gone |= self._not_parked_here(connection, chunk)
        return rows, gone  # type: ignore[return-value]

    def _not_parked_here(self, connection: sa.Connection, workflow_ids: list[str]) -> set[str]:
        """Of `workflow_ids`, those that are no longer PENDING on this executor (cancelled, handed back, taken over)."""
        _, tables = system_tables(None)
        status = tables.workflow_status
        still: Any = connection.execute(
            sa.select(status.c.workflow_uuid).where(
                status.c.workflow_uuid.in_(workflow_ids),
                status.c.status == "PENDING",
                status.c.executor_id == self._executor_id,
            )
        ).scalars()
        return set(workflow_ids) - set(still)


_waker: _Waker | None = None
_waker_lock = threading.Lock()


def _current_waker() -> _Waker:
    global _waker
    instance = dbos_instance()
    with _waker_lock:
        if _waker is None or _waker._instance is not instance:
            _waker = _Waker(instance, DBOS.executor_id)
        return _waker


def park(workflow_id: str, wait_id: int, pending: frozenset[str], deadline: float | None) -> RunParked:
    """Register a waiting run as parked in this process and return the exception that ends its execution.

    Registered before the execution unwinds, so a decision made from now on is found by the waker's next look."""
    _current_waker().add(_Parked(workflow_id, wait_id, pending, deadline))
    return RunParked(workflow_id)


def parked_run_ids() -> list[str]:
    """The runs parked in this process (for the launched DBOS), as far as its waker knows."""
    waker = _waker
    if waker is None or waker._instance is not dbos_instance():
        return []
    return waker.ids()
