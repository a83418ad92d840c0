"""The console's fleet views: the workers, the queue depths, and the takeovers of each run.

Read with plain SQL over the console's `DBOSClient` engine: the fleet's tables (`_fleet_tables.py`, written by the
workers) and DBOS's `workflow_status`. Only plain columns are read, nothing is unpickled, and request values are only
ever used as query parameters. The fleet's tables exist only once a worker has joined a fleet: until then every
view here is empty (the queue depths still come from `workflow_status`).

A worker's state is the one it recorded (alive, stopped, dead), except that a row still alive whose heartbeat is
older than its own `dead_after` is shown as `silent`: presumed dead, not taken over yet. Ages are measured by the
database's clock, as the workers measure them (`db_now`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from .._fleet_tables import ALIVE, FleetTables, db_now
from ..names import TAKEOVERS_TABLE, WORKERS_TABLE

__all__ = ["SILENT", "FleetData"]

SILENT = "silent"
"""Shown for a worker whose row says alive but whose heartbeat is older than its own `dead_after`."""
INTERNAL_QUEUE = "_dbos_internal_queue"
"""DBOS's own queue: recovered, resumed and taken-over runs pass through it."""
_IN_QUEUE = ("ENQUEUED", "PENDING")


def _iso(epoch_seconds: float | None) -> str | None:
    return None if epoch_seconds is None else datetime.fromtimestamp(epoch_seconds, tz=UTC).isoformat()


def _queue_names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def shown_state(recorded: str, heartbeat_age: float, dead_after: float) -> str:
    """The state the console shows: the recorded one, or `silent` for an alive row whose lease ran out."""
    if recorded == ALIVE and heartbeat_age > dead_after:
        return SILENT
    return recorded


class FleetData:
    """Reads the fleet views from the system database behind `engine` (the console's DBOSClient engine).

    Args:
        engine: The engine to read with.
        status_table: DBOS's `workflow_status` table as that engine addresses it.
    """

    def __init__(self, engine: sa.Engine, status_table: sa.Table) -> None:
        self._engine = engine
        self._status = status_table
        # The schema the workers' fleet uses by default: DBOS's system schema, "dbos" on PostgreSQL, none on SQLite.
        self._schema = None if engine.dialect.name == "sqlite" else "dbos"
        self._tables = FleetTables(self._schema)
        self._exist: dict[str, bool] = {}  # table name -> seen to exist (once there, a table stays)
        self._lock = threading.Lock()

    def _exists(self, connection: sa.Connection, name: str) -> bool:
        """Whether the fleet table `name` exists; looked up until it does (a worker may create it any time)."""
        with self._lock:
            if self._exist.get(name):
                return True
        found = sa.inspect(connection).has_table(name, schema=self._schema)
        if found:
            with self._lock:
                self._exist[name] = True
        return found

    # --- Workers ---------------------------------------------------------------------------------------

    def workers(self) -> dict[str, Any]:
        """Every worker that joined the fleet, by executor id, with its state, heartbeat, runs and takeovers.

        `fleet` is false while no worker has created the fleet's tables (the list is then empty).
        """
        workers, takeovers, ws = self._tables.workers, self._tables.takeovers, self._status
        with self._engine.connect() as connection:
            now = float(connection.execute(sa.select(db_now(self._engine))).scalar_one())
            if not self._exists(connection, WORKERS_TABLE):
                return {"fleet": False, "now": _iso(now), "workers": []}
            rows = connection.execute(sa.select(workers).order_by(workers.c.executor_id)).all()
            ids = [row.executor_id for row in rows]
            in_flight: dict[str, int] = {}
            taken_from: dict[str, int] = {}
            taken_by: dict[str, int] = {}
            if ids:
                in_flight = self._counts(
                    connection,
                    sa.select(ws.c.executor_id, sa.func.count())
                    .where(ws.c.status == "PENDING", ws.c.executor_id.in_(ids))
                    .group_by(ws.c.executor_id),
                )
                if self._exists(connection, TAKEOVERS_TABLE):
                    for column, into in (
                        (takeovers.c.from_executor_id, taken_from),
                        (takeovers.c.by_executor_id, taken_by),
                    ):
                        into.update(
                            self._counts(
                                connection, sa.select(column, sa.func.count()).where(column.in_(ids)).group_by(column)
                            )
                        )
        return {
            "fleet": True,
            "now": _iso(now),
            "workers": [self._worker_json(row, now, in_flight, taken_from, taken_by) for row in rows],
        }

    @staticmethod
    def _counts(connection: sa.Connection, query: sa.Select[Any]) -> dict[str, int]:
        return {str(row[0]): int(row[1]) for row in connection.execute(query)}

    @staticmethod
    def _worker_json(
        row: Any, now: float, in_flight: dict[str, int], taken_from: dict[str, int], taken_by: dict[str, int]
    ) -> dict[str, Any]:
        age = now - row.heartbeat_at
        return {
            "executor_id": row.executor_id,
            "app_version": row.app_version,
            "hostname": row.hostname,
            "pid": row.pid,
            "queues": _queue_names(row.queues),
            "state": shown_state(row.state, age, row.dead_after),
            "recorded_state": row.state,
            "dead_after_seconds": row.dead_after,
            "started_at": _iso(row.started_at),
            "heartbeat_at": _iso(row.heartbeat_at),
            "heartbeat_age_seconds": round(age, 3),
            "stopped_at": _iso(row.stopped_at),
            "taken_over_by": row.taken_over_by,
            "taken_over_at": _iso(row.taken_over_at),
            "runs_in_flight": in_flight.get(row.executor_id, 0),
            "runs_taken_over_from_it": taken_from.get(row.executor_id, 0),
            "runs_taken_over_by_it": taken_by.get(row.executor_id, 0),
        }

    # --- Queues ----------------------------------------------------------------------------------------

    def queues(self) -> list[dict[str, Any]]:
        """Each queue with unfinished runs, or that a live worker listens to: ENQUEUED and PENDING counts.

        `workers` names the live workers (alive, not silent) that listen to it; DBOS's internal queue, which
        every worker serves, is marked `internal`.
        """
        ws = self._status
        depths: dict[str, dict[str, int]] = {}
        query = (
            sa.select(ws.c.queue_name, ws.c.status, sa.func.count())
            .where(ws.c.queue_name.is_not(None), ws.c.status.in_(_IN_QUEUE))
            .group_by(ws.c.queue_name, ws.c.status)
        )
        listeners: dict[str, list[str]] = {}
        with self._engine.connect() as connection:
            for row in connection.execute(query):
                depths.setdefault(str(row[0]), {})[str(row[1])] = int(row[2])
        for worker in self.workers()["workers"]:
            if worker["state"] == ALIVE:
                for name in worker["queues"]:
                    listeners.setdefault(name, []).append(worker["executor_id"])
        return [
            {
                "queue_name": name,
                "enqueued": depths.get(name, {}).get("ENQUEUED", 0),
                "pending": depths.get(name, {}).get("PENDING", 0),
                "workers": listeners.get(name, []),
                "internal": name == INTERNAL_QUEUE,
            }
            for name in sorted(set(depths) | set(listeners))
        ]

    # --- Runs ------------------------------------------------------------------------------------------

    def takeovers(self, workflow_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """The takeovers of each of these runs, oldest first: from which worker, by which, when."""
        ids = list(dict.fromkeys(workflow_ids))
        found: dict[str, list[dict[str, Any]]] = {workflow_id: [] for workflow_id in ids}
        if not ids:
            return found
        table = self._tables.takeovers
        query = (
            sa.select(table.c.workflow_id, table.c.from_executor_id, table.c.by_executor_id, table.c.taken_at)
            .where(table.c.workflow_id.in_(ids))
            .order_by(table.c.taken_at, table.c.from_executor_id)
        )
        with self._engine.connect() as connection:
            if not self._exists(connection, TAKEOVERS_TABLE):
                return found
            for row in connection.execute(query):
                found[row.workflow_id].append(
                    {
                        "from_executor_id": row.from_executor_id,
                        "by_executor_id": row.by_executor_id,
                        "taken_at": _iso(row.taken_at),
                    }
                )
        return found
