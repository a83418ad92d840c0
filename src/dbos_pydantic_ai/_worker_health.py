"""A worker's health: its state, `GET /healthz` (FastAPI on uvicorn, on a thread) and what it reports.

Liveness and readiness probes read it; a `/metrics` route can join the same app.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .exceptions import WorkerConfigError

__all__ = [
    "DRAINING",
    "FENCED",
    "NOT_HEARTBEATING",
    "SERVING",
    "STARTING",
    "STOPPED",
    "HealthServer",
    "WorkerStatus",
    "health_app",
]


STARTING = "starting"
"""Claiming the executor id and launching DBOS."""
SERVING = "serving"
"""Dequeuing and running runs, and heartbeating."""
DRAINING = "draining"
"""Stopped dequeuing (SIGTERM): the runs in flight get the grace period to finish."""
STOPPED = "stopped"
"""Handed off what was left and destroyed DBOS."""
FENCED = "fenced"
"""Peers declared this worker dead and took its runs over: it runs no more steps (and exits)."""
NOT_HEARTBEATING = "not-heartbeating"
"""Serving, but the last heartbeat is too old: the lease does not hold (database unreachable, process paused)."""


@dataclass(frozen=True)
class WorkerStatus:
    """What `GET /healthz` reports: healthy (HTTP 200) only while serving with the lease held."""

    executor_id: str
    app_version: str
    state: str
    runs_in_flight: int
    queues: list[str]

    @property
    def healthy(self) -> bool:
        return self.state == SERVING

    def as_json(self) -> dict[str, Any]:
        return {
            "executor_id": self.executor_id,
            "app_version": self.app_version,
            "state": self.state,
            "runs_in_flight": self.runs_in_flight,
            "queues": self.queues,
        }


def health_app(status: Callable[[], WorkerStatus], routers: Sequence[Any] = ()) -> Any:
    """The FastAPI app of the health endpoint: `GET /healthz` is the status as JSON, 200 while healthy, else 503.

    `routers` join the same app (`--metrics` adds `GET /metrics`).
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="dbos-pydantic-ai worker", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        current = status()
        return JSONResponse(current.as_json(), status_code=200 if current.healthy else 503)

    for router in routers:
        app.include_router(router)
    return app


class HealthServer:
    """uvicorn serving `health_app` on a daemon thread, on a socket bound up front (so a port in use fails at start,
    with a clear message, instead of inside the thread)."""

    def __init__(self, host: str, port: int, status: Callable[[], WorkerStatus], routers: Sequence[Any] = ()) -> None:
        try:
            import uvicorn

            app = health_app(status, routers)
        except ImportError as error:
            raise WorkerConfigError(
                f"--health-port needs FastAPI and uvicorn ({error.name} is missing): pip install "
                "'dbos-pydantic-ai[console]', or use --health-file instead."
            ) from None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as error:
            self._socket.close()
            raise WorkerConfigError(
                f"Cannot serve the health endpoint on {host}:{port} ({error.strerror or error}). Pick another "
                "--health-port, or stop the process that holds it."
            ) from None
        self._socket.listen(64)
        self.port: int = self._socket.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="dbos-pai-health", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._socket.close()
