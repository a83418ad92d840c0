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
from dbos_pydantic_ai._fleet_tables import ALIVE, DEAD, STOPPED, FleetTables


def _engine_and_tables(database_url: str) -> tuple[sa.Engine, FleetTables]:
    url = sa.make_url(database_url)
    postgres = url.drivername.startswith("postgres")
    if postgres:
        url = url.set(drivername="postgresql+psycopg")
    return sa.create_engine(url), FleetTables("dbos" if postgres else None)


def _rows(database_url: str) -> list[sa.Row]:
    engine, tables = _engine_and_tables(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.select(tables.workers)))
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"executor_id": ""}, "needs an executor_id"),
        ({"app_version": ""}, "needs a pinned app_version"),
        ({"dead_after": 0}, "dead_after must be a positive number"),
        ({"dead_after": 10, "heartbeat_interval": 6}, "under half of dead_after"),
        ({"forget_after": 600}, "must be longer than an hour"),
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


def test_workers_that_left_long_ago_are_forgotten(database_url: str, launch_dbos: Callable[[], None]) -> None:
    """A live worker deletes the rows of workers that stopped or were declared dead more than `forget_after` ago, of
    any version (a Deployment's new id per start would otherwise leave a row each, forever); recent departures and
    every takeover stay."""
    member = FleetMember(
        database_url,
        executor_id="w-live",
        app_version="test",
        dead_after=1.0,
        heartbeat_interval=0.1,
        forget_after=7200.0,
    )
    member.claim()
    now = time.time()
    departed = {
        "w-stopped-long-ago": (STOPPED, "test", now - 3 * 3600),
        "w-dead-long-ago": (DEAD, "test", now - 3 * 3600),
        "w-old-version": (STOPPED, "v0", now - 30 * 86400),
        "w-stopped-recently": (STOPPED, "test", now - 600),
        "w-dead-recently": (DEAD, "test", now - 600),
    }
    engine, tables = _engine_and_tables(database_url)
    try:
        with engine.begin() as connection:
            for executor_id, (state, version, left_at) in departed.items():
                connection.execute(
                    sa.insert(tables.workers).values(
                        executor_id=executor_id,
                        app_version=version,
                        incarnation="old",
                        state=state,
                        hostname="gone",
                        pid=1,
                        queues="",
                        dead_after=1.0,
                        started_at=left_at - 60,
                        heartbeat_at=left_at - 1,
                        stopped_at=left_at if state == STOPPED else None,
                        taken_over_by="w-earlier" if state == DEAD else None,
                        taken_over_at=left_at if state == DEAD else None,
                    )
                )
            connection.execute(
                sa.insert(tables.takeovers).values(
                    workflow_id="wf-1",
                    from_executor_id="w-dead-long-ago",
                    by_executor_id="w-earlier",
                    taken_at=now - 3 * 3600,
                )
            )
        launch_dbos()
        member.start()
        try:
            expected = {"w-live", "w-stopped-recently", "w-dead-recently"}
            deadline = time.monotonic() + 30
            while {row.executor_id for row in _rows(database_url)} != expected:
                assert time.monotonic() < deadline, f"still there: {sorted(r.executor_id for r in _rows(database_url))}"
                time.sleep(0.1)
        finally:
            member.stop()
        with engine.connect() as connection:
            assert connection.execute(sa.select(tables.takeovers.c.from_executor_id)).scalars().all() == [
                "w-dead-long-ago"
            ]
    finally:
        engine.dispose()
