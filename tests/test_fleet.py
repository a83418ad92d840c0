"""`FleetMember` in one process, on both databases: its arguments, its row, its lifecycle.

Failover itself (a dead worker's runs taken over, a paused worker fenced, one id in two processes) needs real
processes: tests/crash/test_failover.py.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from dbos_pydantic_ai import FleetMember
from dbos_pydantic_ai._fleet_tables import ALIVE, STOPPED, FleetTables


def _rows(database_url: str) -> list[sa.Row]:
    url = sa.make_url(database_url)
    postgres = url.drivername.startswith("postgres")
    if postgres:
        url = url.set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.select(FleetTables("dbos" if postgres else None).workers)))
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"executor_id": ""}, "needs an executor_id"),
        ({"app_version": ""}, "needs a pinned app_version"),
        ({"dead_after": 0}, "dead_after must be a positive number"),
        ({"dead_after": 10, "heartbeat_interval": 6}, "under half of dead_after"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(kwargs: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"executor_id": "w-1", "app_version": "v1", **kwargs}
    with pytest.raises(ValueError, match=message):
        FleetMember("sqlite:///unused.sqlite", **settings)  # type: ignore[arg-type]


def test_start_before_launch_says_the_order(database_url: str, launch_dbos: Callable[[], None]) -> None:
    member = FleetMember(database_url, executor_id="w-1", app_version="test")
    with pytest.raises(RuntimeError, match=r"claim\(\), DBOS.launch\(\), then start\(\)"):
        member.start()


def test_lifecycle_row_heartbeat_and_stop(database_url: str, launch_dbos: Callable[[], None]) -> None:
    """claim() before launch creates the database and the row; start() heartbeats; stop() marks it stopped."""
    member = FleetMember(
        database_url, executor_id="w-1", app_version="test", dead_after=2.0, heartbeat_interval=0.2, queues=["q1"]
    )
    member.claim()  # before launch: the database does not exist yet on PostgreSQL
    [row] = _rows(database_url)
    assert (row.executor_id, row.state, row.app_version, row.queues) == ("w-1", ALIVE, "test", "q1")
    assert (row.hostname, row.pid, row.incarnation) == (socket.gethostname(), os.getpid(), member.incarnation)
    first_beat = row.heartbeat_at

    launch_dbos()
    member.start()
    try:
        deadline = time.monotonic() + 30
        while _rows(database_url)[0].heartbeat_at == first_beat:
            assert time.monotonic() < deadline, "no heartbeat within 30 s"
            time.sleep(0.05)
        assert member.healthy()
        assert not member.fenced
        assert member.runs_in_flight() == 0
    finally:
        handed_back = member.stop()
    assert handed_back == []
    assert not member.healthy()
    [row] = _rows(database_url)
    assert row.state == STOPPED
    assert row.stopped_at is not None and row.stopped_at >= row.heartbeat_at
