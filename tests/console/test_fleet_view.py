"""The console's fleet view: workers, queue depths and the takeovers of runs, on SQLite and PostgreSQL.

The database holds real runs of one agent (`fleet_view`), made by two workers of the application `fleet_view`:

- `w-silent`, a worker process started here that began `silent-direct` (started directly) and `silent-queued` (on
  queue `batch`) and was SIGKILLed while both waited in their model request: two PENDING runs of a dead process.
- this test process, the worker `w-live`: `fleet-ok` (finished), `live-direct` (started directly, held in its
  model request) and `live-q1`..`live-q3` on queue `runs` (one run at a time per worker): `live-q1` held PENDING,
  `live-q2` and `live-q3` ENQUEUED behind it.

The fleet's tables are then created (`create_fleet_tables`) and filled directly, with times relative to the
database's clock (`WORKERS`, `TAKEOVERS`). Before that, the console already served the same database without them:
`env.before_tables` holds what it answered then.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from console_support import ConsoleServer, _postgres_database
from dbos import DBOS, SetWorkflowID
from fastapi.testclient import TestClient
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from dbos_pydantic_ai import DBOSAgent, dbos_config
from dbos_pydantic_ai._fleet_tables import ALIVE, DEAD, STOPPED, FleetTables, create_fleet_tables, db_now
from dbos_pydantic_ai.console import create_app

pytestmark = pytest.mark.timeout(600)

WAIT_SECONDS = 120.0  # generous: a shared 2-core machine starts Python and DBOS slowly
APP_NAME = "fleet_view"
APP_VERSION = "fleet-view-1"
AGENT_NAME = "fleet_view"

# --- The agent (the worker process defines the same one) ---------------------------------------------------

_release = threading.Event()  # lets this process's held runs answer


def _prompt(messages: list[ModelMessage]) -> str:
    first = messages[0]
    assert isinstance(first, ModelRequest)
    return next(str(part.content) for part in first.parts if part.part_kind == "user-prompt")


async def fleet_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Answers at once, except a prompt starting with "hold", which waits for `_release` (on the durable loop)."""
    prompt = _prompt(messages)
    if prompt.startswith("hold"):
        deadline = time.monotonic() + 600
        while not _release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    return ModelResponse(parts=[TextPart(f"done: {prompt}")])


fleet_agent = DBOSAgent(Agent(FunctionModel(fleet_model, model_name="gpt-4o"), name=AGENT_NAME))

SILENT_WORKER = f"""
import asyncio, sys, time
from dbos import DBOS
from pydantic_ai import Agent
from pydantic_ai.messages import ModelResponse, TextPart
from pydantic_ai.models.function import FunctionModel
from dbos_pydantic_ai import DBOSAgent, dbos_config

url = sys.argv[1]

async def model(messages, info):
    await asyncio.sleep(3600)
    return ModelResponse(parts=[TextPart("never")])

durable = DBOSAgent(Agent(FunctionModel(model, model_name="gpt-4o"), name={AGENT_NAME!r}))
DBOS(config=dbos_config({APP_NAME!r}, database_url=url, application_version={APP_VERSION!r}, executor_id="w-silent"))
DBOS.launch()
DBOS.register_queue("batch", worker_concurrency=4, polling_interval_sec=0.1)
durable.start_sync("Summarise ticket 1.", workflow_id="silent-direct")
durable.start_sync("Summarise ticket 2.", queue="batch", workflow_id="silent-queued")
while True:
    found = DBOS.list_workflows(workflow_ids=["silent-direct", "silent-queued"], status="PENDING", load_input=False)
    if len(found) == 2:
        break
    time.sleep(0.05)
print("SILENT-WORKER-READY", flush=True)
time.sleep(3600)
"""

# --- The fleet's rows: (executor id, state, heartbeat age s, dead_after s, queues, extra columns) ----------------

WORKERS: list[tuple[str, str, float, float, str, dict[str, Any]]] = [
    ("w-live", ALIVE, 0, 3600, "runs", {}),
    ("w-silent", ALIVE, 120, 60, "batch", {}),  # older than its own dead_after: silent
    ("w-slow", ALIVE, 40, 3600, "runs,batch", {}),  # 40 s, but its own dead_after is an hour: alive
    ("w-dead", DEAD, 500, 30, "runs", {"taken_over_by": "w-live", "taken_over_at": 400}),
    ("w-stopped", STOPPED, 300, 10, "runs", {"stopped_at": 300}),  # an old heartbeat, but stopped on purpose
]
# (workflow id, from, by, seconds ago)
TAKEOVERS = [
    ("fleet-ok", "w-older", "w-dead", 1000),
    ("fleet-ok", "w-dead", "w-live", 400),
    ("gone-1", "w-dead", "w-live", 400),
    ("gone-2", "w-dead", "w-live", 399),
]


# --- The environment --------------------------------------------------------------------------------------


@dataclass
class FleetEnv:
    database_url: str
    api: TestClient
    before_tables: dict[str, Any] = field(default_factory=dict)


def _engine(database_url: str) -> sa.Engine:
    url = sa.make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return sa.create_engine(url)


def _wait(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_SECONDS:.0f} s waiting for {what}")
        time.sleep(0.05)


def _statuses(*workflow_ids: str) -> list[str | None]:
    found = {
        s.workflow_id: s.status
        for s in DBOS.list_workflows(workflow_ids=list(workflow_ids), load_input=False, load_output=False)
    }
    return [found.get(workflow_id) for workflow_id in workflow_ids]


def _run_silent_worker(database_url: str, folder: Path) -> None:
    """Start the `w-silent` worker process, wait until both its runs are PENDING, SIGKILL it."""
    script = folder / "silent_worker.py"
    script.write_text(SILENT_WORKER)
    log = folder / "silent_worker.log"
    env = {k: v for k, v in os.environ.items() if k != "DBOS_SYSTEM_DATABASE_URL"}
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, str(script), database_url], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:

        def ready() -> bool:
            if worker.poll() is not None:
                raise AssertionError(f"the w-silent worker exited early:\n{log.read_text(errors='replace')[-3000:]}")
            return "SILENT-WORKER-READY" in log.read_text(errors="replace")

        _wait(ready, "the w-silent worker's two runs")
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)


def _fill_fleet_tables(database_url: str) -> None:
    engine = _engine(database_url)
    try:
        tables = FleetTables(None if engine.dialect.name == "sqlite" else "dbos")
        create_fleet_tables(engine, tables)
        now = db_now(engine)
        with engine.begin() as connection:
            for executor_id, state, age, dead_after, queues, extra in WORKERS:
                connection.execute(
                    sa.insert(tables.workers).values(
                        executor_id=executor_id,
                        app_version=APP_VERSION,
                        incarnation=f"{executor_id}-incarnation",
                        state=state,
                        hostname=f"host-{executor_id}",
                        pid=1000 + len(executor_id),
                        queues=queues,
                        dead_after=dead_after,
                        started_at=now - 5000,
                        heartbeat_at=now - age,
                        **{
                            column: (value if column == "taken_over_by" else now - value)
                            for column, value in extra.items()
                        },
                    )
                )
            for workflow_id, from_id, by_id, ago in TAKEOVERS:
                connection.execute(
                    sa.insert(tables.takeovers).values(
                        workflow_id=workflow_id, from_executor_id=from_id, by_executor_id=by_id, taken_at=now - ago
                    )
                )
    finally:
        engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fleet_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetEnv]:
    folder = tmp_path_factory.mktemp("fleet_view")
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'dbos.sqlite'}"
    else:
        url, drop = _postgres_database()
    DBOS.destroy()
    _release.clear()
    launched = False
    try:
        # The worker process first: every worker of an application serves every queue registered in the database,
        # so this process, launched meanwhile, could dequeue `silent-queued` itself.
        _run_silent_worker(url, folder)
        DBOS(config=dbos_config(APP_NAME, database_url=url, application_version=APP_VERSION, executor_id="w-live"))
        DBOS.launch()
        launched = True
        DBOS.register_queue("runs", worker_concurrency=1, polling_interval_sec=0.1)
        with SetWorkflowID("fleet-ok"):
            fleet_agent.run_sync("Summarise ticket 0.")
        fleet_agent.start_sync("hold direct", workflow_id="live-direct")
        for i in (1, 2, 3):
            fleet_agent.start_sync(f"hold queued {i}", queue="runs", workflow_id=f"live-q{i}")
        _wait(
            lambda: (
                _statuses("live-direct", "live-q1", "live-q2", "live-q3")
                == ["PENDING", "PENDING", "ENQUEUED", "ENQUEUED"]
            ),
            "live-direct and live-q1 running, live-q2 and live-q3 queued",
        )
        with TestClient(create_app(url)) as api:
            env = FleetEnv(url, api)
            for path in ("/api/workers", "/api/queues", "/api/runs/fleet-ok", "/api/runs?limit=500"):
                env.before_tables[path] = _get(api, path)
            _fill_fleet_tables(url)
            yield env
    finally:
        _release.set()
        try:
            if launched:
                _wait(
                    lambda: _statuses("live-direct", "live-q1", "live-q2", "live-q3") == ["SUCCESS"] * 4,
                    "the held runs to finish",
                )
        finally:
            DBOS.destroy()
            if drop is not None:
                drop()


def _get(api: TestClient, path: str) -> Any:
    response = api.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def _by_id(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in items}


# --- The API ----------------------------------------------------------------------------------------------


def test_before_any_worker_joined_a_fleet_the_views_are_empty_not_errors(fleet_env: FleetEnv) -> None:
    before = fleet_env.before_tables
    assert before["/api/workers"]["fleet"] is False
    assert before["/api/workers"]["workers"] == []
    # Queue depths come from DBOS's own table: there already, with no live worker listening.
    assert before["/api/queues"]["queues"] == [
        {"queue_name": "batch", "enqueued": 0, "pending": 1, "workers": [], "internal": False},
        {"queue_name": "runs", "enqueued": 2, "pending": 1, "workers": [], "internal": False},
    ]
    assert before["/api/runs/fleet-ok"]["takeovers"] == []
    assert before["/api/runs/fleet-ok"]["executor_id"] == "w-live"
    assert all(run["takeovers"] == [] for run in before["/api/runs?limit=500"]["runs"])


def test_workers_show_their_state_heartbeat_runs_in_flight_and_takeovers(fleet_env: FleetEnv) -> None:
    data = _get(fleet_env.api, "/api/workers")
    assert data["fleet"] is True
    workers = _by_id(data["workers"], "executor_id")
    assert list(workers) == sorted(executor_id for executor_id, *_ in WORKERS)
    assert {w: workers[w]["state"] for w in workers} == {
        "w-live": "alive",
        "w-silent": "silent",
        "w-slow": "alive",
        "w-dead": "dead",
        "w-stopped": "stopped",
    }
    assert workers["w-silent"]["recorded_state"] == "alive"
    # PENDING runs of each executor id: live-direct and live-q1 here, the two runs of the killed process.
    assert {w: workers[w]["runs_in_flight"] for w in workers} == {
        "w-live": 2,
        "w-silent": 2,
        "w-slow": 0,
        "w-dead": 0,
        "w-stopped": 0,
    }
    assert {w: (workers[w]["runs_taken_over_from_it"], workers[w]["runs_taken_over_by_it"]) for w in workers} == {
        "w-live": (0, 3),
        "w-silent": (0, 0),
        "w-slow": (0, 0),
        "w-dead": (3, 1),
        "w-stopped": (0, 0),
    }
    dead = workers["w-dead"]
    assert dead["taken_over_by"] == "w-live"
    assert dead["taken_over_at"] is not None
    assert workers["w-live"]["taken_over_by"] is None and workers["w-live"]["taken_over_at"] is None
    assert workers["w-stopped"]["stopped_at"] is not None
    for executor_id, _state, age, dead_after, queues, _extra in WORKERS:
        worker = workers[executor_id]
        assert worker["app_version"] == APP_VERSION
        assert worker["hostname"] == f"host-{executor_id}"
        assert worker["pid"] == 1000 + len(executor_id)
        assert worker["queues"] == queues.split(",")
        assert worker["dead_after_seconds"] == dead_after
        # By the database's clock: at least the age it was written with (and the test takes less than an hour).
        assert age - 0.01 <= worker["heartbeat_age_seconds"] < age + 3600


def test_queue_depths_count_enqueued_and_pending_runs_and_the_live_listeners(fleet_env: FleetEnv) -> None:
    queues = _get(fleet_env.api, "/api/queues")["queues"]
    assert queues == [
        # w-silent listens to `batch` but is silent: not a live listener.
        {"queue_name": "batch", "enqueued": 0, "pending": 1, "workers": ["w-slow"], "internal": False},
        # live-q1 (PENDING), live-q2 and live-q3 (ENQUEUED); w-dead and w-stopped are not listening any more.
        {"queue_name": "runs", "enqueued": 2, "pending": 1, "workers": ["w-live", "w-slow"], "internal": False},
    ]


def test_runs_show_their_worker_and_takeovers(fleet_env: FleetEnv) -> None:
    run = _get(fleet_env.api, "/api/runs/fleet-ok")
    assert run["executor_id"] == "w-live"
    assert [(t["from_executor_id"], t["by_executor_id"]) for t in run["takeovers"]] == [
        ("w-older", "w-dead"),
        ("w-dead", "w-live"),
    ]
    assert all(isinstance(t["taken_at"], str) for t in run["takeovers"])
    assert run["takeovers"][0]["taken_at"] < run["takeovers"][1]["taken_at"]
    silent = _get(fleet_env.api, "/api/runs/silent-queued")
    assert (silent["executor_id"], silent["status"], silent["takeovers"]) == ("w-silent", "PENDING", [])

    runs = _by_id(_get(fleet_env.api, "/api/runs?limit=500")["runs"], "workflow_id")
    assert runs["fleet-ok"]["takeovers"] == run["takeovers"]
    assert {workflow_id for workflow_id, r in runs.items() if r["takeovers"]} == {"fleet-ok"}
    assert runs["silent-direct"]["executor_id"] == "w-silent"
    assert runs["live-q2"]["status"] == "ENQUEUED"

    compare = _get(fleet_env.api, "/api/compare?left=fleet-ok&right=silent-direct")
    assert compare["left"]["takeovers"] == run["takeovers"] and compare["right"]["takeovers"] == []


# --- The page ---------------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("DBOS_PAI_CONSOLE_SCREENSHOTS")  # as in test_browser.py: save the page's picture there


def test_the_workers_page_shows_states_runs_and_queue_depths(fleet_env: FleetEnv) -> None:
    playwright_sync = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI", "").lower() == "true" or os.environ.get("DBOS_PAI_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{CHROMIUM} is missing: `bash scripts/test` installs it (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing: `bash scripts/test` installs it (apt-get install chromium)")
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    with ConsoleServer(fleet_env.database_url) as server, playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"], headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url + "/#/runs")
            page.click('a[data-nav="workers"]')
            for executor_id, state in (("w-live", "alive"), ("w-silent", "silent"), ("w-dead", "dead")):
                row = page.locator(f'#workers-table tr[data-executor-id="{executor_id}"]')
                expect(row.locator("td.state")).to_have_text(state)
            silent = page.locator('#workers-table tr[data-executor-id="w-silent"]')
            expect(silent.locator("td.in-flight")).to_have_text("2")
            expect(silent.locator("td.heartbeat")).to_contain_text("ago")
            dead = page.locator('#workers-table tr[data-executor-id="w-dead"]')
            expect(dead.locator("td.taken-from")).to_have_text("3")
            expect(dead.locator("td.taken-over")).to_contain_text("by w-live at ")
            runs_queue = page.locator('#queues-table tr[data-queue="runs"]')
            expect(runs_queue.locator("td.enqueued")).to_have_text("2")
            expect(runs_queue.locator("td.pending")).to_have_text("1")
            expect(runs_queue.locator("td.listeners")).to_have_text("w-live, w-slow")
            if SCREENSHOTS:
                Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(Path(SCREENSHOTS) / "console-workers.png"), full_page=True)

            # The run taken over: marked in the runs list, its takeovers in its page.
            page.goto(server.url + "/#/runs")
            expect(page.locator('tr[data-workflow-id="fleet-ok"] .tag.taken-over')).to_be_visible()
            page.goto(server.url + "/#/run/fleet-ok")
            takeovers = page.locator("#run-takeovers li")
            expect(takeovers).to_have_count(2)
            expect(takeovers.nth(1)).to_contain_text("taken over from worker w-dead by w-live at ")
            expect(page.locator("#run-worker")).to_contain_text("w-live")
            assert errors == [], f"uncaught errors in the page: {errors}"
        finally:
            browser.close()
