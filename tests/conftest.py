"""Shared fixtures: every test runs on SQLite and on PostgreSQL, each with a database of its own.

PostgreSQL is found at `DBOS_PAI_TEST_POSTGRES_URL` (default `postgresql://postgres@127.0.0.1:5432`).
Locally, its tests are skipped with a reason when no server answers; under CI (`CI=true`) or with
`DBOS_PAI_REQUIRE_POSTGRES=1` they fail instead, so the suite can never silently lose half its runs.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from dbos import DBOS

from dbos_pydantic_ai import dbos_config
from run_modes import RunMode

POSTGRES_SERVER_URL = os.environ.get("DBOS_PAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
REQUIRE_POSTGRES = os.environ.get("CI", "").lower() == "true" or os.environ.get("DBOS_PAI_REQUIRE_POSTGRES") == "1"

# Short poll intervals keep SQLite's polled notifications (recv, events, streams) fast in tests.
FAST_POLLING = {"notification_listener_polling_interval_sec": 0.02}


def _postgres_reason_unavailable() -> str | None:
    engine = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return None
    except Exception as error:
        return f"PostgreSQL at {POSTGRES_SERVER_URL} is not reachable: {error}"
    finally:
        engine.dispose()


def create_postgres_database() -> tuple[str, Callable[[], None]]:
    """A new, empty database URL and a function that drops it."""
    reason = _postgres_reason_unavailable()
    if reason is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"{reason}. The PostgreSQL suite is required here (CI or DBOS_PAI_REQUIRE_POSTGRES=1).")
        pytest.skip(reason)
    name = f"dbos_pai_test_{uuid.uuid4().hex[:12]}"

    def drop() -> None:
        engine = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            engine.dispose()

    return f"{POSTGRES_SERVER_URL}/{name}", drop


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'dbos.sqlite'}"
        return
    url, drop = create_postgres_database()
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def agent_name(request: pytest.FixtureRequest) -> str:
    """A name unique to this test: DBOSAgent names must be unique in a process."""
    return f"agent_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def launch_dbos(database_url: str) -> Iterator[Callable[[], None]]:
    """Call it after creating the test's DBOSAgents: configures DBOS on the test's database and launches it."""
    DBOS.destroy()

    def launch() -> None:
        DBOS(config=dbos_config("dbos_pai_test", database_url=database_url, application_version="test", **FAST_POLLING))
        DBOS.launch()

    yield launch
    DBOS.destroy()


@pytest.fixture(params=["async", "sync"])
def run_mode(request: pytest.FixtureRequest) -> RunMode:
    """`await agent.run()` or `agent.run_sync()` (run it with `run_modes.run_in_mode`)."""
    return request.param


# --- Ending the session ----------------------------------------------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


_EXIT_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process once pytest is done, even if a DBOS workflow thread is still alive.

    `DBOS.destroy()` leaves sync workflow threads running (dbos-3.4-notes.md). A run a test left waiting (a durable
    retry, an approval) whose database the test then dropped retries its connection forever on a thread of DBOS's
    executor, and the interpreter joins every executor thread at exit, daemon or not (a thread started from a daemon
    thread is one): the suite would report and then hang (it did in CI, for 60 minutes). Only such leftover threads
    make this exit early; the report and the exit status are pytest's own.
    """
    leftovers = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if leftovers and _EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT_STATUS])
