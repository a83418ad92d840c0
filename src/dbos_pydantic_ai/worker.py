"""A fleet worker: import the user's agents, launch DBOS, serve queues, and stop gracefully.

`dbos-pydantic-ai worker myapp.agents --queue runs:4` (see `_worker_cli.py` and docs/worker.md) is `run_worker()`:

1. import the user's modules, which create the `DBOSAgent`s (and must not configure or launch DBOS themselves);
2. configure DBOS with `dbos_config(...)` (pinned executor id and application version), listen only to the given
   queues, claim the executor id in the fleet (`FleetMember.claim()`), launch DBOS (which recovers this executor's
   own unfinished runs), register the queues with their limits, and start heartbeating (`FleetMember.start()`);
3. serve until SIGTERM or SIGINT, then drain: stop dequeuing at once, let the runs in flight finish within a grace
   period, hand the rest back to their queues for other workers (`FleetMember.stop(hand_off=True)`), destroy DBOS.

A health endpoint (`GET /healthz`, FastAPI + uvicorn on a thread) and a health file (touched while the lease holds)
serve liveness and readiness probes. Everything is usable from Python: `run_worker(WorkerSettings(...))`.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from ._queue_spec import QUEUE_SPEC_SYNTAX, QueueSpec, parse_queue_spec
from ._worker_health import (
    DRAINING,
    FENCED,
    NOT_HEARTBEATING,
    SERVING,
    STARTING,
    STOPPED,
    HealthServer,
    WorkerStatus,
)
from .exceptions import WorkerConfigError

if TYPE_CHECKING:
    from .fleet import FleetMember
    from .metrics import RunMetrics

__all__ = [
    "DEFAULT_APP_NAME",
    "QueueSpec",
    "WorkerConfigError",
    "WorkerResult",
    "WorkerSettings",
    "import_agent_modules",
    "parse_queue_spec",
    "run_worker",
]

logger = logging.getLogger("dbos_pydantic_ai.worker")

DEFAULT_APP_NAME = "dbos-pydantic-ai"
"""The DBOS application name of a worker that is given none. DBOS scopes queues, recovery and versions by it, so
every member of a fleet (and every process that starts runs with a DBOS of its own) must use the same name."""

_APP_NAME = re.compile(r"^[a-z0-9_\-]{3,256}$")


# --- Settings -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSettings:
    """Everything `run_worker()` needs; the `worker` command builds it from its flags and environment.

    Args:
        modules: Modules to import (dotted names, as `python -m` takes them; the working directory is on the path).
            They create the `DBOSAgent`s and must not configure or launch DBOS.
        database_url: The fleet's system database (PostgreSQL for workers on several machines).
        executor_id: This worker's unique, stable id (a StatefulSet pod name, a systemd instance name).
        app_version: The pinned application version stamped on runs; bump it when a change breaks replay.
        queues: The queues to listen to, with their limits (`parse_queue_spec` reads the command's syntax).
        app_name: The DBOS application name: the same for every member of the fleet.
        dead_after: Seconds of silence after which peers take over this worker's runs.
        heartbeat_interval: Seconds between heartbeats (default `dead_after / 5`).
        grace: Seconds that runs in flight get to finish after SIGTERM before they are handed off.
        health_port: Serve `GET /healthz` on this port (0: any free port; None: no endpoint).
        health_host: The address the health endpoint binds.
        health_file: Touch this file while the worker holds its lease; it is removed when the worker drains.
        metrics: Also serve Prometheus metrics at `GET /metrics` on the health port (read from the database: the
            whole fleet's numbers, so scrape one worker or the console, not every worker).
        log_level: The level of DBOS's own logger.
        dbos_options: Other `DBOSConfig` keys, passed to `dbos_config()`.
    """

    modules: Sequence[str]
    database_url: str
    executor_id: str
    app_version: str
    queues: Sequence[QueueSpec]
    app_name: str = DEFAULT_APP_NAME
    dead_after: float = 30.0
    heartbeat_interval: float | None = None
    grace: float = 30.0
    health_port: int | None = None
    health_host: str = "0.0.0.0"
    health_file: Path | None = None
    metrics: bool = False
    log_level: str = "WARNING"
    dbos_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.modules:
            raise WorkerConfigError("Name at least one module to import: the one that creates your DBOSAgents.")
        if not self.executor_id:
            raise WorkerConfigError(
                "The worker has no executor id. Pass --executor-id ID or set DBOS_PAI_EXECUTOR_ID: a name unique in "
                "the fleet that stays the same across restarts (a StatefulSet pod name, a host name)."
            )
        if not self.app_version:
            raise WorkerConfigError(
                "The worker has no application version. Pass --app-version V or set DBOS_PAI_APP_VERSION (a release "
                "tag, say): DBOS's default is a hash of the code, which strands unfinished runs at every deploy."
            )
        if not _APP_NAME.match(self.app_name):
            raise WorkerConfigError(
                f"App name {self.app_name!r} is not a DBOS application name: use 3 to 256 lowercase letters, digits, "
                "'-' or '_' (and the same name in every worker of the fleet)."
            )
        if not self.queues:
            raise WorkerConfigError(
                f"Give the worker at least one queue to listen to: --queue {QUEUE_SPEC_SYNTAX} (e.g. --queue runs:4)."
            )
        names = [queue.name for queue in self.queues]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise WorkerConfigError(f"Queue {twice[0]!r} is given twice: give each queue one --queue spec.")
        if not self.dead_after > 0:
            raise WorkerConfigError(f"--dead-after must be a positive number of seconds, not {self.dead_after!r}.")
        if not self.grace >= 0:
            raise WorkerConfigError(f"--grace must be zero or a positive number of seconds, not {self.grace!r}.")
        if self.metrics and self.health_port is None:
            raise WorkerConfigError("--metrics serves GET /metrics on the health endpoint: give --health-port too.")
        if self.health_port is not None and not 0 <= self.health_port <= 65535:
            raise WorkerConfigError(f"--health-port must be from 0 to 65535, not {self.health_port!r}.")
        if self.health_file is not None:
            folder = Path(self.health_file).resolve().parent
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise WorkerConfigError(
                    f"--health-file {str(self.health_file)!r}: the folder {str(folder)!r} does not exist or is not "
                    "writable. Create it first (an emptyDir volume in Kubernetes)."
                )


# --- Importing the user's modules ----------------------------------------------------------------------------


def import_agent_modules(modules: Sequence[str]) -> list[str]:
    """Import `modules` as `python -m` would find them (the working directory first on `sys.path`); return the names
    of the `DBOSAgent`s they created. Raises `WorkerConfigError` naming the module and the cause when one cannot be
    imported, or when one configured or launched DBOS itself (the worker must do it, with the fleet's settings)."""
    from . import agent as agent_module
    from ._compat import dbos_instance, dbos_launched

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    before = set(agent_module._registered_names)
    for module in modules:
        _check_module_name(module)
        if dbos_instance() is not None:
            raise _configured_dbos_error(module, dbos_launched(), before_import=True)
        try:
            importlib.import_module(module)
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                raise
            raise WorkerConfigError(_import_error_message(module, error, cwd)) from error
        if dbos_instance() is not None:
            raise _configured_dbos_error(module, dbos_launched(), before_import=False)
    return sorted(set(agent_module._registered_names) - before)


def _check_module_name(module: str) -> None:
    if module.endswith(".py") or "/" in module or "\\" in module:
        dotted = module.removesuffix(".py").replace("\\", "/").strip("/").replace("/", ".")
        raise WorkerConfigError(
            f"{module!r} is a file path; the worker imports modules by their dotted name, as `python -m` does: "
            f"pass {dotted!r} (run from the folder that contains the package)."
        )
    if not all(part.isidentifier() for part in module.split(".")):
        raise WorkerConfigError(f"{module!r} is not a module name: pass a dotted name such as 'myapp.agents'.")


def _configured_dbos_error(module: str, launched: bool, *, before_import: bool) -> WorkerConfigError:
    done = "launched" if launched else "configured (`DBOS(config=...)`)"
    where = f"before module {module!r} was imported" if before_import else f"by module {module!r} when imported"
    return WorkerConfigError(
        f"DBOS was already {done} {where}. The worker configures and launches DBOS itself, with the fleet's executor "
        "id, version and queues, and DBOS keeps the first configuration of a process: move `DBOS(config=...)` and "
        "`DBOS.launch()` out of the agents module (e.g. under `if __name__ == '__main__':`)."
    )


def _import_error_message(module: str, error: BaseException, cwd: str) -> str:
    if isinstance(error, ModuleNotFoundError) and error.name and (module + ".").startswith(error.name + "."):
        return (
            f"Cannot import module {module!r}: no module named {error.name!r}. The worker looks in the working "
            f"directory ({cwd}) and the installed packages: run it from the folder that contains the package, or "
            "install your application (pip install -e .)."
        )
    if isinstance(error, SyntaxError):
        return f"Cannot import module {module!r}: SyntaxError: {error.msg} ({error.filename}, line {error.lineno})."
    # Where it happened in the user's code: the innermost frame outside importlib and installed packages.
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if "importlib" not in frame.filename]
    own = [frame for frame in frames if "site-packages" not in frame.filename] or frames
    location = f" ({own[-1].filename}, line {own[-1].lineno})" if own else ""
    cause = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return f"Cannot import module {module!r}: {cause}{location}. Fix the error in the module and start again."


# --- The worker -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerResult:
    """How a worker stopped: the runs that finished during the drain, and those handed off to other workers."""

    drained: list[str]
    handed_off: list[str]


class _Worker:
    """One worker's life: start, serve, drain. `run_worker` drives it."""

    def __init__(self, settings: WorkerSettings, stop: threading.Event) -> None:
        self.settings = settings
        self.stop_requested = stop
        self.hurry = threading.Event()  # a second signal: end the grace period now
        self.state = STARTING
        self.member: FleetMember | None = None
        self.claimed = False
        self.health: HealthServer | None = None
        self.metrics: RunMetrics | None = None
        self._file_thread: threading.Thread | None = None
        self._file_stop = threading.Event()

    # status

    def status(self) -> WorkerStatus:
        from ._compat import active_workflow_ids

        state = self.state
        member = self.member
        if member is not None and member.fenced:
            state = FENCED
        elif state == SERVING and (member is None or not member.healthy()):
            state = NOT_HEARTBEATING
        return WorkerStatus(
            executor_id=self.settings.executor_id,
            app_version=self.settings.app_version,
            state=state,
            runs_in_flight=len(active_workflow_ids()),
            queues=[queue.name for queue in self.settings.queues],
        )

    def _health_file_loop(self, path: Path, interval: float) -> None:
        warned = False
        while not self._file_stop.is_set():
            if self.status().healthy:
                try:
                    path.touch()
                    warned = False
                except OSError as error:
                    if not warned:
                        logger.warning("Worker %r: cannot touch the health file: %s", self.settings.executor_id, error)
                    warned = True
            self._file_stop.wait(interval)

    # signals

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.stop_requested.is_set():
            logger.info("Worker %r: %s received, stopping.", self.settings.executor_id, name)
            self.stop_requested.set()
        elif not self.hurry.is_set():
            logger.warning(
                "Worker %r: %s received again: ending the grace period now.", self.settings.executor_id, name
            )
            self.hurry.set()

    # phases

    def start(self) -> None:
        """Import, configure, claim, launch, register, heartbeat. Raises `WorkerConfigError` (or
        `DatabaseUnreachableError`) for what the user must fix."""
        from dbos import DBOS

        from .config import dbos_config
        from .fleet import FleetMember

        settings = self.settings
        agents = import_agent_modules(settings.modules)
        if not agents:
            logger.warning(
                "Module(s) %s created no DBOSAgent: this worker will only run other DBOS workflows they define.",
                ", ".join(settings.modules),
            )
        config = dbos_config(
            settings.app_name,
            database_url=settings.database_url,
            executor_id=settings.executor_id,
            application_version=settings.app_version,
            log_level=settings.log_level,
            **settings.dbos_options,
        )
        try:
            self.member = FleetMember(
                str(config["system_database_url"]),
                executor_id=settings.executor_id,
                app_version=settings.app_version,
                dead_after=settings.dead_after,
                heartbeat_interval=settings.heartbeat_interval,
                queues=[queue.name for queue in settings.queues],
                schema=settings.dbos_options.get("dbos_system_schema"),
            )
        except ValueError as error:
            raise WorkerConfigError(f"{error} (--dead-after, --heartbeat-interval)") from None
        if settings.health_port is not None:
            routers = []
            if settings.metrics:
                from .metrics import router

                routers.append(router(lambda: self.metrics))  # opened once DBOS has launched (it needs the tables)
            self.health = HealthServer(settings.health_host, settings.health_port, self.status, routers)
            self.health.start()
            shown = f"[{settings.health_host}]" if ":" in settings.health_host else settings.health_host
            logger.info("Worker %r: health on http://%s:%d/healthz", settings.executor_id, shown, self.health.port)
        self.member.claim()  # creates the system database and the fleet's tables if needed; may wait (fleet.py)
        self.claimed = True
        DBOS(config=config)
        DBOS.listen_queues([queue.name for queue in settings.queues])
        DBOS.launch()
        if settings.metrics:
            from .metrics import RunMetrics

            self.metrics = RunMetrics.open(settings.database_url)
        for queue in settings.queues:
            queue.register()
        self.member.start()
        self.state = SERVING
        if settings.health_file is not None:
            path = Path(settings.health_file)
            self._file_thread = threading.Thread(
                target=self._health_file_loop,
                args=(path, self.member.heartbeat_interval),
                name="dbos-pai-health-file",
                daemon=True,
            )
            self._file_thread.start()
        logger.info(
            "Worker %r (version %r, app %r) serving queues %s; agents: %s",
            settings.executor_id,
            settings.app_version,
            settings.app_name,
            ", ".join(queue.describe() for queue in settings.queues),
            ", ".join(agents) or "none",
        )

    def drain(self) -> WorkerResult:
        """Stop dequeuing, wait up to the grace period for the runs in flight, hand the rest off, destroy DBOS."""
        from dbos import DBOS

        from ._compat import active_workflow_ids, dbos_launched, stop_dequeuing

        settings = self.settings
        me = settings.executor_id
        self.state = DRAINING
        self._stop_health_file(remove=True)
        drained: list[str] = []
        handed_off: list[str] = []
        if dbos_launched():
            stop_dequeuing()
            in_flight = active_workflow_ids()
            logger.info(
                "Worker %r: draining %d run(s) (grace %g s)%s",
                me,
                len(in_flight),
                settings.grace,
                f": {', '.join(in_flight)}" if in_flight else "",
            )
            deadline = time.monotonic() + settings.grace
            while active_workflow_ids() and time.monotonic() < deadline and not self.hurry.is_set():
                time.sleep(0.1)
            still = set(active_workflow_ids())
            drained = [workflow_id for workflow_id in in_flight if workflow_id not in still]
            if still:
                logger.info("Worker %r: %d run(s) finished, %d still running", me, len(drained), len(still))
            elif in_flight:
                logger.info("Worker %r: all %d run(s) finished", me, len(drained))
        if self.member is not None:
            handed_off = self.member.stop(hand_off=True)
            logger.info(
                "Worker %r: handed off %d run(s) to their queues%s",
                me,
                len(handed_off),
                f": {', '.join(handed_off)}" if handed_off else "",
            )
        DBOS.destroy(workflow_completion_timeout_sec=0)
        self.state = STOPPED
        self._stop_health_server()
        logger.info("Worker %r: stopped", me)
        return WorkerResult(drained=drained, handed_off=handed_off)

    def abort(self) -> None:
        """After a failed start: give the executor id back, and tear down what was started."""
        from dbos import DBOS

        self._stop_health_file(remove=True)
        if self.member is not None and self.claimed:
            try:
                self.member.stop(hand_off=False)
            except Exception as error:  # the database may be what failed
                logger.warning("Worker %r: could not mark itself stopped: %s", self.settings.executor_id, error)
        DBOS.destroy(workflow_completion_timeout_sec=0)
        self._stop_health_server()

    def _stop_health_server(self) -> None:
        if self.health is not None:
            self.health.stop()
        if self.metrics is not None:
            self.metrics.close()

    def _stop_health_file(self, *, remove: bool) -> None:
        self._file_stop.set()
        if self._file_thread is not None:
            self._file_thread.join(timeout=5)
        if remove and self.settings.health_file is not None:
            Path(self.settings.health_file).unlink(missing_ok=True)


def run_worker(settings: WorkerSettings, *, stop: threading.Event | None = None) -> WorkerResult:
    """Run a fleet worker until SIGTERM or SIGINT (or until `stop` is set), then drain it; see the module docstring.

    Called from the main thread, it handles SIGTERM and SIGINT itself (a second signal ends the grace period at
    once) and restores the previous handlers on return. Raises `WorkerConfigError` or `DatabaseUnreachableError`
    when the worker cannot start as configured; nothing is left running then.

    Returns the runs that finished while draining and those handed back to their queues. Sync workflow code still
    running after the grace period keeps its thread: a process should exit once this returns (the command does).
    """
    worker = _Worker(settings, stop if stop is not None else threading.Event())
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, worker.on_signal)
    try:
        try:
            worker.start()
        except BaseException:
            worker.abort()
            raise
        while not worker.stop_requested.wait(0.5):
            pass
        return worker.drain()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
