"""A fleet of workers on one system database: heartbeats, a lease, and failover without Conductor.

Open-source DBOS recovers a worker's unfinished runs only when a process with the same executor id launches again.
A `FleetMember` makes the fleet take care of itself:

- **Heartbeat.** Each worker writes the database's clock into its row of `dbos_pai_workers` every
  `heartbeat_interval` seconds, with the incarnation (a new uuid per process) that holds the executor id.
- **Takeover.** A worker of the same application version finds a peer silent for longer than the peer's
  `dead_after`, marks it dead (one conditional update: one taker wins), and hands the peer's PENDING runs back to
  their queues through DBOS's own recovery path. Each run moves once (`_compat.reenqueue_pending_runs`), and the
  queue's dequeue admits one runner: whichever live worker dequeues it resumes it from its last recorded step.
- **Lease.** A worker may run steps only while its last heartbeat is younger than `dead_after` by its own
  monotonic clock. The clock keeps counting while a process is paused (SIGSTOP, a VM freeze, a long GC), so a
  worker that wakes up after it may have been declared dead runs no new step until its next heartbeat says
  whether its id is still its own. If it is not (it was *fenced*: taken over, or its id taken by a new process),
  its steps stay parked and `on_fenced` runs: by default it hands back the runs it holds and exits the process.

The remaining at-least-once boundary is a step already *executing* when the worker lost its lease (paused
mid-request): its side effect may happen again on the new owner. DBOS refuses the old owner's record of it
(ownership tokens), so the run's history holds one result. docs/fleet.md says this precisely.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import sqlalchemy as sa

from ._compat import dbos_instance, dbos_launched, reenqueue_pending_runs
from ._fleet_tables import ALIVE, DEAD, STOPPED, FleetTables, create_fleet_tables, db_now
from .config import redact_url, system_engine

__all__ = ["FleetMember", "current_member"]

logger = logging.getLogger("dbos_pydantic_ai.fleet")

_FENCED_EXIT_CODE = 3
_POLL_SECONDS = 0.05
_SWEEP_WINDOW_SECONDS = 3600.0
"""How long after a peer stopped or was declared dead its leftover PENDING runs are still looked for. They are
handed back when it stops or is taken over; this sweep only catches a hand-off cut short (a taker that died
half-way), and the window keeps every heartbeat from querying each worker that ever left."""

FORGET_AFTER_SECONDS = 7 * 24 * 3600.0
"""How long a stopped or dead worker's row stays in the workers table (and the console's Workers view) by default.
Workers with a new id per start (a Deployment) would otherwise leave a row each, forever. Takeovers stay."""

_current: FleetMember | None = None


def current_member() -> FleetMember | None:
    """The `FleetMember` started with this process's DBOS, if any (stopped or not)."""
    member = _current
    return member if member is not None and member._dbos is dbos_instance() else None


class FleetMember:
    """This process's membership in a fleet of workers sharing one system database.

    Call `claim()` before `DBOS.launch()` (the id must be this process's before DBOS recovers its runs; heartbeats
    start there), `start()` after it, and `stop()` on the way out, after draining. `dbos-pydantic-ai worker` does
    all three.

    Args:
        database_url: The system database, as given to DBOS.
        executor_id: This worker's DBOS executor id: unique in the fleet.
        app_version: The pinned application version; a worker takes over only peers of its own version (DBOS
            recovers a run only in a worker of the version that started it).
        dead_after: Seconds of silence after which peers declare this worker dead and take over its runs.
        heartbeat_interval: Seconds between heartbeats; default `dead_after / 5`.
        queues: The queues this worker listens to (shown in the console).
        schema: The DBOS system schema; default `dbos` on PostgreSQL, none on SQLite.
        on_fenced: Called once, from the heartbeat thread, when this worker learns it was fenced. Default: hand
            back the runs it still holds, log an error and exit the process with status 3.
        forget_after: Seconds after which the row of a worker that stopped or was declared dead is deleted (by
            any live worker); default a week. Its takeovers stay recorded.
    """

    def __init__(
        self,
        database_url: str,
        *,
        executor_id: str,
        app_version: str,
        dead_after: float = 30.0,
        heartbeat_interval: float | None = None,
        queues: Sequence[str] = (),
        schema: str | None = None,
        on_fenced: Callable[[], None] | None = None,
        forget_after: float = FORGET_AFTER_SECONDS,
    ) -> None:
        if not executor_id:
            raise ValueError("FleetMember needs an executor_id: a unique, stable name for this worker.")
        if not app_version:
            raise ValueError("FleetMember needs a pinned app_version: the version DBOS stamps on this worker's runs.")
        if dead_after <= 0:
            raise ValueError(f"dead_after must be a positive number of seconds, not {dead_after!r}.")
        interval = heartbeat_interval if heartbeat_interval is not None else dead_after / 5
        if not 0 < interval < dead_after / 2:
            raise ValueError(
                f"heartbeat_interval ({interval!r} s) must be positive and under half of dead_after ({dead_after} s), "
                "so that one late heartbeat does not get a live worker declared dead."
            )
        if forget_after <= _SWEEP_WINDOW_SECONDS:
            raise ValueError(
                f"forget_after ({forget_after!r} s) must be longer than an hour ({_SWEEP_WINDOW_SECONDS:.0f} s): a "
                "departed worker's row is how its leftover runs are found during that hour."
            )
        self.database_url = database_url
        self.executor_id = executor_id
        self.app_version = app_version
        self.dead_after = float(dead_after)
        self.forget_after = float(forget_after)
        self.heartbeat_interval = float(interval)
        self.queues = tuple(queues)
        self.incarnation = uuid.uuid4().hex
        self._on_fenced = on_fenced or self.exit_fenced
        # Its own small pool: a heartbeat must not queue behind a busy worker's step transactions.
        self._engine, default_schema = system_engine(
            database_url,
            postgres={
                "pool_size": 2,
                "max_overflow": 0,
                "pool_pre_ping": True,
                "pool_timeout": 10,
                "connect_args": {"connect_timeout": 5},
            },
        )
        self._tables = FleetTables(schema if schema is not None else default_schema)
        # Whether a silent worker's lease has surely run out by its own clock when peers see it silent for
        # `dead_after`: its lease ends `margin` earlier than that, counted from before its heartbeat was sent.
        self._margin = min(1.0, self.dead_after / 10)
        self._lease_until = 0.0  # time.monotonic() until which this worker may start steps
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dbos: object | None = None  # the DBOS instance it was started with
        self._started = False  # start() ran: this worker takes over silent peers
        self._stopped = False
        self._fenced = False
        self._connected_since: float | None = None  # first heartbeat of the current unbroken streak
        self._waiting_logged = False

    def __repr__(self) -> str:
        return f"FleetMember({self.executor_id!r}, version={self.app_version!r}, db={redact_url(self.database_url)})"

    # --- Membership ---------------------------------------------------------------------------------

    def claim(self) -> None:
        """Take the executor id for this process, before `DBOS.launch()`.

        If another process holds it and heartbeats (two workers configured with one id, or a restart faster than
        the previous holder's `dead_after`), wait until it has been silent for its `dead_after`: two live
        processes with one executor id would run the same steps twice. Heartbeats start here.
        """
        self._create_tables()
        workers = self._tables.workers
        announced = False
        while True:
            sent = time.monotonic()  # before the database reads its clock: the lease must not outlast the row
            claimed = False
            with self._engine.begin() as connection:
                now = connection.execute(sa.select(db_now(self._engine))).scalar_one()
                row = connection.execute(sa.select(workers).where(workers.c.executor_id == self.executor_id)).first()
                values = {
                    "app_version": self.app_version,
                    "incarnation": self.incarnation,
                    "state": ALIVE,
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "queues": ",".join(self.queues),
                    "dead_after": self.dead_after,
                    "started_at": now,
                    "heartbeat_at": now,
                    "stopped_at": None,
                    "taken_over_by": None,
                    "taken_over_at": None,
                }
                if row is None:
                    try:
                        connection.execute(sa.insert(workers).values(executor_id=self.executor_id, **values))
                    except sa.exc.IntegrityError:
                        continue  # another process inserted it first: look again
                    claimed = True
                elif not (row.state == ALIVE and now - row.heartbeat_at <= row.dead_after):
                    claimed = (
                        connection.execute(
                            sa.update(workers)
                            .where(workers.c.executor_id == self.executor_id, workers.c.incarnation == row.incarnation)
                            .values(**values)
                        ).rowcount
                        == 1
                    )
                    if not claimed:
                        continue  # someone else changed the row meanwhile: look again
            if claimed:  # committed: the heartbeat thread's first update sees the row
                self._claimed(sent)
                return
            assert row is not None  # held by a live process
            if not announced:
                logger.warning(
                    "Executor id %r is held by a live process (%s, pid %s, last heartbeat %.1f s ago): waiting until "
                    "it has been silent for %.0f s. Give each worker its own executor id; a restarted worker waits "
                    "like this once, while its previous process could still be running.",
                    self.executor_id,
                    row.hostname,
                    row.pid,
                    now - row.heartbeat_at,
                    row.dead_after,
                )
                announced = True
            time.sleep(min(self.heartbeat_interval, max(0.05, row.dead_after - (now - row.heartbeat_at))))

    def _create_tables(self) -> None:
        # Before launch the system database may not exist yet: DBOS's public `migrate` creates it as launch would
        # (a no-op when it is up to date), then our tables join it.
        from dbos import DBOS

        if self._engine.dialect.name == "postgresql":
            DBOS.migrate(self.database_url, schema=self._tables.workers.schema or "dbos")
        else:
            DBOS.migrate(self.database_url)
        create_fleet_tables(self._engine, self._tables)

    def _claimed(self, sent: float) -> None:
        # Heartbeats start now, not at `start()`: launching DBOS can take longer than `dead_after` (migrations, a
        # busy machine), and peers must not declare a worker dead while it launches. Takeovers wait for `start()`.
        self._renewed(sent)
        if self._thread is None:
            self._thread = threading.Thread(target=self._heartbeat_loop, name="dbos-pai-heartbeat", daemon=True)
            self._thread.start()

    def start(self) -> None:
        """After `DBOS.launch()`: steps of this process hold the lease from now on, and this worker takes over the
        runs of silent peers."""
        global _current
        if not dbos_launched():
            raise RuntimeError("FleetMember.start() needs DBOS launched: call claim(), DBOS.launch(), then start().")
        if self._thread is None:
            raise RuntimeError("FleetMember.start() needs the executor id: call claim() before DBOS.launch().")
        self._dbos = dbos_instance()
        _current = self
        self._started = True

    def stop(self, *, hand_off: bool = True) -> list[str]:
        """Stop heartbeating, mark this worker stopped and, with `hand_off`, give its unfinished runs back to their
        queues for live workers (returns their ids). Call after draining, before `DBOS.destroy()`.

        From here on this process starts no new step: a run still executing stays parked, and its new owner
        resumes it from its last recorded step.
        """
        self._stopped = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        workers = self._tables.workers
        with self._engine.begin() as connection:
            connection.execute(
                sa.update(workers)
                .where(
                    workers.c.executor_id == self.executor_id,
                    workers.c.incarnation == self.incarnation,
                    workers.c.state == ALIVE,
                )
                .values(state=STOPPED, stopped_at=db_now(self._engine))
            )
        handed_off = reenqueue_pending_runs(self.executor_id) if hand_off and dbos_launched() else []
        # This member stays `current_member()`, stopped: `hold_lease()` keeps parking the steps of runs that were
        # handed off above but still execute here, until this DBOS is destroyed.
        self._engine.dispose()
        return handed_off

    def healthy(self) -> bool:
        """Whether this worker heartbeats and holds its lease (for liveness probes)."""
        return self._started and not self._stopped and not self._fenced and time.monotonic() < self._lease_until

    @property
    def fenced(self) -> bool:
        """Whether this worker learnt it was declared dead (or its id was taken): it runs no more steps."""
        return self._fenced

    def runs_in_flight(self) -> int:
        """PENDING runs of this executor id, by the database."""
        from dbos import DBOS

        return len(
            DBOS.list_workflows(status="PENDING", executor_id=self.executor_id, load_input=False, load_output=False)
        )

    # --- The lease ---------------------------------------------------------------------------------

    def _renewed(self, sent: float) -> None:
        self._lease_until = sent + self.dead_after - self._margin

    def _may_run_steps(self) -> bool:
        return not self._stopped and not self._fenced and time.monotonic() < self._lease_until

    async def hold_lease(self) -> None:
        """Return once this worker may start a step: at once while the lease holds; after a pause, when the next
        heartbeat has renewed it. A fenced or stopped worker never returns: the step stays parked, unrecorded."""
        if self._may_run_steps():
            return
        if not self._stopped and not self._fenced and not self._waiting_logged:
            self._waiting_logged = True
            logger.warning("Worker %r: lease expired (paused or heartbeats failing): steps wait.", self.executor_id)
        self._wake.set()
        while not self._may_run_steps():
            await asyncio.sleep(_POLL_SECONDS)

    # --- The heartbeat thread ------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            if self._heartbeat() and self._started and not self._fenced:
                assert self._connected_since is not None
                # Only a worker that has itself been heard from for `dead_after` may call a peer silent: after a
                # database outage every worker's heartbeat is equally old, and the first one back must not take
                # over all the others.
                if time.monotonic() - self._connected_since >= self.dead_after:
                    try:
                        self._take_over_silent_peers()
                    except Exception as error:
                        logger.warning("Worker %r: looking for silent peers failed (%s).", self.executor_id, error)
            if self._fenced:
                self._on_fenced()
                return
            self._wake.wait(self.heartbeat_interval)
            self._wake.clear()

    def _heartbeat(self) -> bool:
        """One heartbeat; whether it went through. Logs when heartbeats start failing and when they are back."""
        try:
            self._beat()
        except Exception as error:
            if self._connected_since is not None or not self._waiting_logged:
                logger.warning("Worker %r: heartbeat failed (%s); retrying.", self.executor_id, error)
                self._waiting_logged = True
            self._connected_since = None
            return False
        if self._connected_since is None:
            if self._waiting_logged:
                logger.warning("Worker %r: heartbeats go through again.", self.executor_id)
            self._connected_since = time.monotonic()
            self._waiting_logged = False
        return True

    def _beat(self) -> None:
        workers = self._tables.workers
        sent = time.monotonic()
        with self._engine.begin() as connection:
            held = connection.execute(
                sa.update(workers)
                .where(
                    workers.c.executor_id == self.executor_id,
                    workers.c.incarnation == self.incarnation,
                    workers.c.state == ALIVE,
                )
                .values(heartbeat_at=db_now(self._engine))
            ).rowcount
        if held == 1:
            self._renewed(sent)
        elif not self._stopped:
            self._fenced = True

    def _take_over_silent_peers(self) -> None:
        """Declare dead the peers of this version silent past their `dead_after`, forget the workers that left more
        than `forget_after` ago, then move the PENDING runs of every peer that is dead or stopped (and not claimed by
        a live taker) back to their queues."""
        workers = self._tables.workers
        now = db_now(self._engine)
        with self._engine.begin() as connection:
            connection.execute(
                sa.update(workers)
                .where(
                    workers.c.app_version == self.app_version,
                    workers.c.executor_id != self.executor_id,
                    workers.c.state == ALIVE,
                    workers.c.heartbeat_at < now - workers.c.dead_after,
                )
                .values(state=DEAD, taken_over_by=self.executor_id, taken_over_at=now)
            )
            connection.execute(
                sa.delete(workers).where(
                    sa.or_(
                        sa.and_(workers.c.state == STOPPED, workers.c.stopped_at < now - self.forget_after),
                        sa.and_(workers.c.state == DEAD, workers.c.taken_over_at < now - self.forget_after),
                    )
                )
            )
            live_takers = sa.select(workers.c.executor_id).where(
                workers.c.state == ALIVE, workers.c.heartbeat_at >= now - workers.c.dead_after
            )
            recent = now - _SWEEP_WINDOW_SECONDS
            orphans: Sequence[str] = (
                connection.execute(
                    sa.select(workers.c.executor_id).where(
                        workers.c.app_version == self.app_version,
                        workers.c.executor_id != self.executor_id,
                        sa.or_(
                            sa.and_(workers.c.state == STOPPED, workers.c.stopped_at >= recent),
                            sa.and_(
                                workers.c.state == DEAD,
                                workers.c.taken_over_at >= recent,
                                sa.or_(
                                    workers.c.taken_over_by == self.executor_id,
                                    workers.c.taken_over_by.not_in(live_takers),
                                ),
                            ),
                        ),
                    )
                )
                .scalars()
                .all()
            )
        for peer in orphans:
            moved = reenqueue_pending_runs(peer)
            if moved:
                self._record_takeovers(peer, moved)
                logger.warning(
                    "Worker %r took over %d unfinished run(s) of worker %r: %s",
                    self.executor_id,
                    len(moved),
                    peer,
                    ", ".join(moved),
                )

    def _record_takeovers(self, peer: str, workflow_ids: list[str]) -> None:
        takeovers = self._tables.takeovers
        with self._engine.begin() as connection:
            taken_at = connection.execute(sa.select(db_now(self._engine))).scalar_one()
            for workflow_id in workflow_ids:
                exists = connection.execute(
                    sa.select(takeovers.c.workflow_id).where(
                        takeovers.c.workflow_id == workflow_id, takeovers.c.from_executor_id == peer
                    )
                ).first()
                if exists is None:
                    connection.execute(
                        sa.insert(takeovers).values(
                            workflow_id=workflow_id,
                            from_executor_id=peer,
                            by_executor_id=self.executor_id,
                            taken_at=taken_at,
                        )
                    )

    def exit_fenced(self) -> None:
        """The default `on_fenced`: hand back the runs this worker started since it was taken over (they would
        otherwise wait for its executor id to come back), log why, and exit the process with status 3. A custom
        `on_fenced` may do other things first, then call this."""
        try:
            handed_off = reenqueue_pending_runs(self.executor_id)
        except Exception:  # the database is unreachable: peers sweep them up once it is back
            handed_off = []
        logger.error(
            "Worker %r was declared dead by its peers (silent for longer than %.0f s, or its executor id was taken "
            "by another process) and its runs were taken over. Exiting so that nothing it was running runs twice%s.",
            self.executor_id,
            self.dead_after,
            f"; handed back {len(handed_off)} run(s) it had started since" if handed_off else "",
        )
        logging.shutdown()
        os._exit(_FENCED_EXIT_CODE)


async def hold_lease() -> None:
    """Called before every step this library runs: wait while this process's fleet lease is not held (a no-op
    outside a fleet)."""
    member = _current
    if member is not None and member._dbos is dbos_instance():
        await member.hold_lease()
