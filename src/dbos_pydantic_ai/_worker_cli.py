"""`dbos-pydantic-ai worker MODULE... --queue NAME[:N]`: a fleet worker (the logic is in worker.py).

Every setting comes from a flag or, for those that differ per deployment, an environment variable, so that a
Kubernetes manifest or a systemd unit can hold them. Exit codes: 0 after a graceful stop, 2 when the worker cannot
start as configured (the message says what to fix), 3 when peers declared it dead (fleet.py), 1 otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ._cli_options import DatabaseUrl

__all__ = ["worker_command"]

error_console = Console(stderr=True, highlight=False)

_QUEUE_HELP = (
    "A queue to listen to: NAME[:WORKER_CONCURRENCY][,global=N][,rate=LIMIT/SECONDS][,poll=SECONDS], e.g. "
    "'runs:4,global=20,rate=50/60,poll=0.5'. Repeat for several queues. DBOS stores a queue's settings once for the "
    "fleet: give every worker the same spec."
)


def _fail(message: str) -> typer.Exit:
    error_console.print(f"[bold red]Error:[/] {escape(message)}")
    return typer.Exit(code=2)


def _configure_logging() -> None:
    """Our loggers (worker phases, fleet takeovers) to stderr at INFO, one line each; DBOS keeps its own handler."""
    logger = logging.getLogger("dbos_pydantic_ai")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def worker_command(
    modules: Annotated[
        list[str],
        typer.Argument(
            metavar="MODULE",
            help="Module(s) that create your DBOSAgents, as `python -m` names them (the working directory is on the "
            "path), e.g. myapp.agents. They must not configure or launch DBOS: the worker does.",
            show_default=False,
        ),
    ],
    database_url: DatabaseUrl,
    queue: Annotated[list[str] | None, typer.Option("--queue", "-q", help=_QUEUE_HELP, show_default=False)] = None,
    executor_id: Annotated[
        str | None,
        typer.Option(
            envvar="DBOS_PAI_EXECUTOR_ID",
            show_envvar=True,
            help="This worker's id: unique in the fleet and stable across restarts (a StatefulSet pod name).",
        ),
    ] = None,
    app_version: Annotated[
        str | None,
        typer.Option(
            envvar="DBOS_PAI_APP_VERSION",
            show_envvar=True,
            help="The pinned application version (a release tag); bump it when a change breaks the replay of runs.",
        ),
    ] = None,
    app_name: Annotated[
        str,
        typer.Option(
            envvar="DBOS_PAI_APP_NAME",
            show_envvar=True,
            help="The DBOS application name: the same in every worker of the fleet (DBOS scopes queues by it).",
        ),
    ] = "dbos-pydantic-ai",
    dead_after: Annotated[
        float, typer.Option(min=0.001, help="Seconds of silence after which peers take over this worker's runs.")
    ] = 30.0,
    heartbeat_interval: Annotated[
        float | None,
        typer.Option(min=0.001, help="Seconds between heartbeats (default: dead-after / 5).", show_default=False),
    ] = None,
    grace: Annotated[
        float,
        typer.Option(min=0, help="On SIGTERM, seconds the runs in flight get to finish before they are handed off."),
    ] = 30.0,
    health_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve GET /healthz on this port (200 while serving, 503 otherwise).",
            show_default=False,
        ),
    ] = None,
    health_host: Annotated[str, typer.Option(help="The address the health endpoint binds.")] = "0.0.0.0",
    health_file: Annotated[
        Path | None,
        typer.Option(
            help="Touch this file at each heartbeat while the worker is healthy; it is removed on drain (for exec "
            "probes).",
            show_default=False,
        ),
    ] = None,
    metrics: Annotated[
        bool,
        typer.Option(
            help="Also serve Prometheus metrics at GET /metrics on the health port (the whole fleet's numbers, read "
            "from the database: scrape one worker or the console, not every worker)."
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="Level of DBOS's own logger (INFO shows its launch).")] = "WARNING",
) -> None:
    """Run a fleet worker: import your agents, launch DBOS, serve queues; SIGTERM drains it gracefully."""
    from ._queue_spec import parse_queue_spec
    from .exceptions import DatabaseUnreachableError, WorkerConfigError
    from .worker import WorkerSettings, run_worker

    if not executor_id:
        raise _fail(
            "no executor id: pass --executor-id ID or set DBOS_PAI_EXECUTOR_ID. Each worker needs an id unique in "
            "the fleet that stays the same across restarts (a StatefulSet pod name, a host name)."
        )
    if not app_version:
        raise _fail(
            "no application version: pass --app-version V or set DBOS_PAI_APP_VERSION (a release tag, say). DBOS's "
            "default is a hash of the code, which strands unfinished runs at every deploy."
        )
    if not queue:
        raise _fail("no queue to listen to: pass --queue NAME[:WORKER_CONCURRENCY] (e.g. --queue runs:4).")
    try:
        settings = WorkerSettings(
            modules=modules,
            database_url=database_url,
            executor_id=executor_id,
            app_version=app_version,
            queues=[parse_queue_spec(spec) for spec in queue],
            app_name=app_name,
            dead_after=dead_after,
            heartbeat_interval=heartbeat_interval,
            grace=grace,
            health_port=health_port,
            health_host=health_host,
            health_file=health_file,
            metrics=metrics,
            log_level=log_level,
        )
    except WorkerConfigError as error:
        raise _fail(str(error)) from None
    _configure_logging()
    try:
        run_worker(settings)
    except (WorkerConfigError, DatabaseUnreachableError) as error:
        raise _fail(str(error)) from None
    # Stopped and handed off: end the process now. A sync run still executing after the grace period keeps a
    # non-daemon thread that the interpreter would wait for at exit; its run already belongs to another worker.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
