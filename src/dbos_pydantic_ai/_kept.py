"""Clients by database URL for the functions that take `database_url=`: opened on an engine of ours, checked, kept.

`start_run()`, `RunHandle(database_url=...)` and the approvals functions are called once per request by a web app
or a bot. A `DBOSClient` and its pool opened per call cost 20-28 ms on PostgreSQL (a new server connection and the
client's set-up); kept, a call costs its round trips, 1.4-3 ms (`bench/calls_by_url.py`). What is kept:

- an engine per URL that checks a pooled PostgreSQL connection before use (the server may have closed it since), and
  opens the SQLite file at each use instead of holding it open;
- at most `size` URLs per process (a forked child opens its own); the least recently used is dropped, not closed, so
  a call still using it finishes: its connections close when it is garbage-collected.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from dbos import DBOSClient

from ._serialization import SERIALIZER_ENV, serializer_for
from .config import _sqlite_path, system_database_error, system_engine
from .exceptions import DatabaseUnreachableError

__all__ = ["KEPT_APPLICATION_NAME", "KeptPerDatabase", "kept_engine", "open_client", "open_kept_client"]

T = TypeVar("T")

KEPT_APPLICATION_NAME = "dbos_pydantic_ai"
"""The `application_name` of kept PostgreSQL connections: what an operator sees in `pg_stat_activity`."""


class KeptPerDatabase(Generic[T]):
    """One object per database URL (opened by `open` at first use), kept between calls; thread-safe."""

    def __init__(self, open: Callable[[str], T], size: int = 4) -> None:
        self._open = open
        self._size = size
        self._kept: dict[tuple[int, str, str | None], T] = {}
        self._lock = threading.Lock()

    def get(self, database_url: str) -> T:
        key = (os.getpid(), database_url, os.environ.get(SERIALIZER_ENV))  # what it writes depends on the serializer
        with self._lock:
            kept = self._kept.pop(key, None)
            if kept is not None:
                self._kept[key] = kept  # the most recently used last
                return kept
        # Opened outside the lock: a slow or unreachable database does not hold up calls on the others. It raises
        # before anything is kept. Two threads may open one each: the first kept stays, the other is dropped.
        opened = self._open(database_url)
        with self._lock:
            kept = self._kept.pop(key, opened)
            self._kept[key] = kept
            while len(self._kept) > self._size:
                del self._kept[next(iter(self._kept))]
        return kept


def kept_engine(database_url: str) -> tuple[Any, str | None]:
    """An engine of ours on the system database at `database_url`, fit to be kept (see the module's docstring)."""
    return system_engine(
        database_url,
        sqlite={"poolclass": sa.pool.NullPool},
        postgres={
            "pool_pre_ping": True,
            "pool_size": 4,
            "max_overflow": 4,
            "connect_args": {"application_name": KEPT_APPLICATION_NAME},
        },
    )


def open_client(database_url: str, *, kept: bool) -> tuple[DBOSClient, Any, str | None]:
    """A `DBOSClient` on an engine of ours at `database_url` (fit to be kept when `kept`), writing with the workers'
    serializer, checked to reach DBOS's tables; with the engine and DBOS's schema.

    Unreachable, or a SQLite file that does not exist (DBOS would create an empty one): `DatabaseUnreachableError`,
    with nothing left open.
    """
    sqlite_file = _sqlite_path(database_url)
    if sqlite_file is not None and not sqlite_file.exists():
        raise DatabaseUnreachableError(system_database_error(database_url, FileNotFoundError(str(sqlite_file))))
    engine, schema = kept_engine(database_url) if kept else system_engine(database_url)
    try:
        client = DBOSClient(system_database_engine=engine, dbos_system_schema=schema, serializer=serializer_for())
        client.list_workflows(limit=1, load_input=False, load_output=False)  # DBOS's tables are there
    except Exception as error:
        engine.dispose()
        raise DatabaseUnreachableError(system_database_error(database_url, error)) from error
    return client, engine, schema


def open_kept_client(database_url: str) -> DBOSClient:
    """`open_client`, kept: what `KeptPerDatabase` opens for `start_run` and `RunHandle`."""
    return open_client(database_url, kept=True)[0]
