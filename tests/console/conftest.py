"""Fixtures of the console tests; what they build is in `console_support` (see its docstring)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from console_support import ConsoleEnv, ConsoleServer, _postgres_database
from dbos import DBOS

from dbos_pydantic_ai import dbos_config


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def console_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleEnv]:
    """DBOS launched on a fresh database filled with durable runs (see the module docstring)."""
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('console') / 'dbos.sqlite'}"
    else:
        url, drop = _postgres_database()
    DBOS.destroy()
    DBOS(
        config=dbos_config(
            "dbos_pai_console_test",
            database_url=url,
            application_version="console-test",
            notification_listener_polling_interval_sec=0.02,
        )
    )
    DBOS.launch()
    env = ConsoleEnv(url)
    try:
        env.fill()
        yield env
    finally:
        try:
            env.close()
        finally:
            DBOS.destroy()
            if drop is not None:
                drop()


@pytest.fixture(scope="module")
def console_server(console_env: ConsoleEnv) -> Iterator[ConsoleServer]:
    """The console for `console_env`'s database, without a token."""
    with ConsoleServer(console_env.database_url, env=console_env) as server:
        yield server


@pytest.fixture(scope="module")
def console_token_server(console_env: ConsoleEnv) -> Iterator[ConsoleServer]:
    """The console for `console_env`'s database; every request needs `server.token`."""
    with ConsoleServer(console_env.database_url, token=f"tok-{uuid.uuid4().hex}", env=console_env) as server:
        yield server
