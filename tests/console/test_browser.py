"""The console page in a real browser: headless Debian chromium driven by Playwright.

The console serves a database filled with real durable runs (`console_env` / `console_server` from
conftest.py), and this process is the worker that runs them, so approving, forking and live runs really
happen while the page watches. Every test also fails on an uncaught JavaScript error in the page.

Set `DBOS_PAI_CONSOLE_SCREENSHOTS=DIR` to save screenshots of the main views there (docs/images).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import pytest
from console_support import (
    CRASH_EXECUTOR,
    FAILURE_MESSAGE,
    INJECTION_ARG,
    INJECTION_TEXT,
    LIVE_CHUNK,
    OUTAGE_ERROR,
    ConsoleEnv,
    ConsoleServer,
)
from dbos import SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelServerError
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from dbos_pydantic_ai import DBOSAgent, ModelRetryPolicy

playwright_sync = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000  # generous: the CPU is shared, and the page refreshes every few seconds
SCREENSHOTS = os.environ.get("DBOS_PAI_CONSOLE_SCREENSHOTS")
expect.set_options(timeout=TIMEOUT_MS)
T = TypeVar("T")

if not Path(CHROMIUM).exists():
    reason = f"{CHROMIUM} is missing: `bash scripts/test` installs it (apt-get install chromium)"
    if os.environ.get("CI", "").lower() == "true" or os.environ.get("DBOS_PAI_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason}. The browser tests are required here (CI).", pytrace=False)
    pytestmark = pytest.mark.skip(reason=reason)


@pytest.fixture(scope="module")
def browser(console_env: ConsoleEnv) -> Iterator[Browser]:
    """Started after the database is filled: Playwright's sync API keeps an event loop running in this thread."""
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class Watched:
    """A page plus what would betray an injection or a broken script: dialogs and uncaught errors."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        # The page's own confirm() (cancel) is accepted; anything else is recorded and dismissed.
        dialog.accept() if dialog.type == "confirm" else dialog.dismiss()


def _new_page(browser: Browser, **context_options: Any) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1400, "height": 900}, **context_options)
    context.set_default_timeout(TIMEOUT_MS)
    watched = Watched(context.new_page())
    yield watched
    context.close()
    assert watched.errors == [], f"uncaught errors in the page: {watched.errors}"


@pytest.fixture
def web(browser: Browser) -> Iterator[Watched]:
    yield from _new_page(browser)


def off_loop(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a `ConsoleEnv` helper in another thread: DBOS's sync APIs refuse to run in a thread whose event
    loop is running, and Playwright's sync API keeps one running in the test's thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(func, *args, **kwargs).result()


def api(server: ConsoleServer, path: str) -> Any:
    """GET the console's JSON API directly (what the page should show)."""
    with urllib.request.urlopen(server.url + path, timeout=30) as response:
        return json.load(response)


def screenshot(page: Page, name: str, full_page: bool = True) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"console-{name}.png"), full_page=full_page)


def fmt_cost(usd: float | None) -> str:
    """The page's cost format (app.js fmtCost)."""
    if usd is None:
        return "unknown"
    if usd == 0:
        return "$0"
    if usd < 0.01:
        return "$" + f"{usd:.2g}"
    return "$" + (f"{usd:.4f}" if usd < 1 else f"{usd:.2f}")


# --- Runs table ------------------------------------------------------------------------------------------


def test_runs_table_lists_filters_pages_and_refreshes(web: Watched, console_server: ConsoleServer) -> None:
    page, env = web.page, console_server.env
    assert env is not None
    page.goto(console_server.url + "/#/runs")
    rows = page.locator("#runs-table tbody tr.run-row")
    for key in ("succeeded", "failed", "cancelled", "waiting", "forked", "streamed", "parent"):
        expect(page.locator(f'tr[data-workflow-id="{env.runs[key]}"]')).to_be_visible()
    expect(page.locator(f'tr[data-workflow-id="{env.runs["failed"]}"] .badge')).to_have_text("ERROR")
    expect(page.locator(f'tr[data-workflow-id="{env.runs["cancelled"]}"] .badge')).to_have_text("CANCELLED")
    expect(page.locator(f'tr[data-workflow-id="{env.runs["waiting"]}"] .badge')).to_have_text("PENDING")
    succeeded = page.locator(f'tr[data-workflow-id="{env.runs["succeeded"]}"]')
    expect(succeeded.locator(".badge")).to_have_text("SUCCESS")
    summary = next(r for r in api(console_server, "/api/runs?limit=500")["runs"] if r["workflow_id"] == "support-ok-1")
    assert summary["cost_usd"] is not None  # gpt-4o has a price
    expect(succeeded.locator("td.cost")).to_have_text(fmt_cost(summary["cost_usd"]))
    expect(page.locator(f'tr[data-workflow-id="{env.runs["streamed"]}"] td.cost')).to_have_text("unknown")
    screenshot(page, "runs", full_page=False)

    # Newest first: the order of the API.
    ids = rows.evaluate_all("rows => rows.map(r => r.dataset.workflowId)")
    assert ids == [r["workflow_id"] for r in api(console_server, "/api/runs")["runs"]]

    # Filter by agent, by status, by text.
    page.select_option("#filter-agent", "console_flaky")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-workflow-id", env.runs["failed"])
    assert "agent=console_flaky" in page.url
    page.select_option("#filter-agent", "")
    page.select_option("#filter-status", "CANCELLED")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-workflow-id", env.runs["cancelled"])
    page.select_option("#filter-status", "")
    page.fill("#filter-q", "support-ok")
    expect(rows).to_have_count(2)
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.workflowId)")) == {"support-ok-1", "support-ok-2"}

    # Pages of 3 through next_cursor: every run once, in the API's order.
    page.goto(console_server.url + "/#/runs?limit=3")
    page.reload()
    seen: list[str] = []
    expect(page.locator("#page-prev")).to_be_disabled()
    while True:
        expect(rows.first).to_be_visible()
        page_ids = rows.evaluate_all("rows => rows.map(r => r.dataset.workflowId)")
        assert 1 <= len(page_ids) <= 3
        seen += page_ids
        if page.locator("#page-next").is_disabled():
            break
        page.click("#page-next")
        expect(rows.first).not_to_have_attribute("data-workflow-id", page_ids[0])
    assert seen == [r["workflow_id"] for r in api(console_server, "/api/runs?limit=500")["runs"]]
    page.click("#page-prev")
    expect(page.locator("#page-next")).to_be_enabled()

    # It refreshes by itself: a run started now appears without a reload.
    page.goto(console_server.url + "/#/runs")
    expect(rows.first).to_be_visible()
    new_id = off_loop(env.start_waiting_run)
    expect(page.locator(f'tr[data-workflow-id="{new_id}"] .badge')).to_have_text("PENDING")


# --- A run -----------------------------------------------------------------------------------------------


def test_run_shows_conversation_steps_and_cost(web: Watched, console_server: ConsoleServer) -> None:
    page, env = web.page, console_server.env
    assert env is not None
    page.goto(console_server.url + "/#/runs")
    page.click(f'a[href="#/run/{env.runs["succeeded"]}"]')
    expect(page.locator("h1.run-id")).to_have_text(env.runs["succeeded"])

    items = page.locator("#conversation li.item")
    expect(items.first).to_be_visible()
    kinds = items.evaluate_all("items => items.map(i => i.className.replace('item item-', ''))")
    assert kinds[0] == "user" and kinds[-1] == "output"
    assert {"tool_call", "tool_result", "model_text"} <= set(kinds)
    expect(page.locator("#conversation .item-user .text")).to_have_text("Where is my order A1?")
    tool_call = page.locator("#conversation .item-tool_call")
    expect(tool_call.locator(".tool-name")).to_have_text("look_up_order")
    assert json.loads(tool_call.locator("pre.args").inner_text()) == {"order_id": "A1"}
    expect(page.locator("#conversation .item-tool_result .text")).to_have_text("Order A1 shipped on Monday.")
    expect(page.locator("#conversation .item-output .text")).to_have_text("Order A1 shipped on Monday. (answer #1)")

    detail = api(console_server, f"/api/runs/{env.runs['succeeded']}")
    assert detail["cost_usd"] is not None and len(detail["model_requests"]) == 2
    expect(page.locator("#total-cost")).to_have_text(fmt_cost(detail["cost_usd"]))
    cost_rows = page.locator("#costs tbody tr")
    expect(cost_rows).to_have_count(2)
    for row, request in zip(cost_rows.all(), detail["model_requests"], strict=True):
        expect(row.locator("td").nth(1)).to_have_text(request["model_name"])
        expect(row.locator("td").nth(2)).to_have_text(f"{request['input_tokens']:,}")
        expect(row.locator("td.cost")).to_have_text(fmt_cost(request["cost_usd"]))
    steps = page.locator("#timeline tbody tr")
    expect(steps).to_have_count(len(detail["steps"]))
    expect(steps.nth(0)).to_contain_text("console_support__model.request")
    expect(page.locator("#timeline")).to_contain_text("console_support__tool.look_up_order")
    expect(page.locator("#timeline .tag.kind-tool")).to_have_count(1)
    screenshot(page, "run")

    # An unpriced model: cost "unknown", per request and in total.
    page.goto(console_server.url + f"/#/run/{env.runs['streamed']}")
    expect(page.locator("#total-cost")).to_have_text("unknown")
    expect(page.locator("#costs tbody td.cost").first).to_have_text("unknown")
    expect(page.locator("#conversation .item-output .text")).to_have_text("Once upon a time, a run survived a crash.")

    # A failed run shows its error; a parent links its child run.
    page.goto(console_server.url + f"/#/run/{env.runs['failed']}")
    expect(page.locator("#run-error")).to_contain_text(FAILURE_MESSAGE)
    page.goto(console_server.url + f"/#/run/{env.runs['parent']}")
    child_link = page.locator(f'#children a[href="#/run/{env.runs["child"]}"]')
    expect(child_link).to_be_visible()
    child_link.click()
    expect(page.locator("h1.run-id")).to_have_text(env.runs["child"])
    expect(page.locator("#conversation .item-output .text")).to_contain_text("The expert says:")
    expect(page.locator(".summary")).to_contain_text(env.runs["parent"])  # "Parent run" link back


# --- Approvals -------------------------------------------------------------------------------------------


def test_approve_in_inbox_and_watch_the_run_complete(web: Watched, console_server: ConsoleServer) -> None:
    page, env = web.page, console_server.env
    assert env is not None
    run_id = off_loop(env.start_waiting_run)
    page.goto(console_server.url + "/#/approvals")
    card = page.locator(f'.approval[data-workflow-id="{run_id}"]')
    expect(card).to_be_visible()
    expect(card.locator(".tool-name")).to_have_text("refund")
    assert json.loads(card.locator("pre.args").inner_text()) == {"order_id": "A7", "amount": 250}
    expect(page.locator(f'.approval[data-workflow-id="{env.runs["waiting"]}"]')).to_be_visible()
    screenshot(page, "approvals")

    card.locator("button.approve").click()
    expect(card.locator(".decision-result")).to_have_text("Approved.")
    # The inbox drops the decided call on its next refresh.
    expect(page.locator(f'.approval[data-workflow-id="{run_id}"]')).to_have_count(0)

    page.goto(console_server.url + f"/#/run/{run_id}")
    expect(page.locator(".summary .badge")).to_have_text("SUCCESS")  # the run view refreshes while it runs
    expect(page.locator("#conversation .item-output .text")).to_have_text("Refund: refunded 250 on A7")
    expect(page.locator("#timeline")).to_contain_text("console_refunds__tool.refund")

    # Deciding again is refused with the reason, shown to the reviewer.
    second = off_loop(env.start_waiting_run)
    page.goto(console_server.url + f"/#/run/{second}")
    card = page.locator(f'#run-approvals .approval[data-workflow-id="{second}"]')
    card.locator("input.reason").fill("Refunds over 200 go to the manager.")
    card.locator("button.deny").click()
    expect(page.locator(".summary .badge")).to_have_text("SUCCESS")
    expect(page.locator("#conversation .item-output .text")).to_have_text("Refund: Refunds over 200 go to the manager.")
    assert "console_refunds__tool.refund" not in page.locator("#timeline").inner_text()


def test_a_refused_decision_shows_why(web: Watched, console_server: ConsoleServer) -> None:
    page, env = web.page, console_server.env
    assert env is not None
    run_id = off_loop(env.start_waiting_run)
    page.goto(console_server.url + "/#/approvals")
    card = page.locator(f'.approval[data-workflow-id="{run_id}"]')
    expect(card).to_be_visible()
    # Another reviewer decides first (through the API); this page's click must then be refused.
    pending = next(a for a in api(console_server, "/api/approvals")["approvals"] if a["workflow_id"] == run_id)
    request = urllib.request.Request(
        f"{console_server.url}/api/runs/{run_id}/approvals/{pending['tool_call_id']}/deny",
        data=json.dumps({"args_digest": pending["args_digest"], "reason": "no"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.load(response) == {"ok": True}
    card.locator("button.approve").click()
    expect(card.locator(".decision-result.error")).to_contain_text("409")
    assert off_loop(env.wait_for_status, run_id, "SUCCESS") == "SUCCESS"


# --- Live output -----------------------------------------------------------------------------------------


def _live_text(page: Page) -> str:
    return (
        page.locator("#live-output .live-text").all_inner_texts()[-1]
        if page.locator("#live-output .live-text").count()
        else ""
    )


def test_live_run_streams_into_the_page(web: Watched, console_server: ConsoleServer) -> None:
    page, env = web.page, console_server.env
    assert env is not None
    chunks = 30
    gate = threading.Event()  # the run holds before its last chunk until the test has seen it unfinished
    run_id = off_loop(env.start_live_run, chunks=chunks, delay=0.05, gate=gate)
    page.goto(console_server.url + f"/#/run/{run_id}")
    live = page.locator("#live-output")
    expect(live).to_contain_text(LIVE_CHUNK.format(i=2).strip())
    # Seen while the run is still going: the last chunk has not been written yet.
    partial = live.inner_text()
    assert LIVE_CHUNK.format(i=chunks - 1).strip() not in partial
    assert off_loop(env.status, run_id) == "PENDING"
    gate.set()
    expect(page.locator("#live-state")).to_have_text("run ended")
    full = "".join(LIVE_CHUNK.format(i=i) for i in range(chunks))
    assert re.sub(r"\s+", " ", _live_text(page)).strip() == full.strip()
    expect(page.locator(".summary .badge")).to_have_text("SUCCESS")
    expect(page.locator("#conversation .item-output .text")).to_have_text(full)


def test_live_run_with_a_token(browser: Browser, console_token_server: ConsoleServer) -> None:
    server, env = console_token_server, console_token_server.env
    assert env is not None and server.token
    for watched in _new_page(browser):
        page = watched.page
        page.goto(f"{server.url}/?token={server.token}#/runs")
        expect(page.locator(f'tr[data-workflow-id="{env.runs["succeeded"]}"]')).to_be_visible()
        run_id = off_loop(env.start_live_run, chunks=12, delay=0.2)
        page.goto(f"{server.url}/?token={server.token}#/run/{run_id}")
        expect(page.locator("#live-state")).to_have_text("run ended")
        assert _live_text(page).strip() == "".join(LIVE_CHUNK.format(i=i) for i in range(12)).strip()
    # Without the token, neither the page's data nor its stream is served.
    for path in ("/api/runs", f"/api/runs/{run_id}/events"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.url + path, timeout=30)
        assert refused.value.code == 401


class BrokenStream:
    """Streams a draft, holds on `first`, then breaks off with a 503 (retried durably); the retry streams the
    answer, holding on `second` before its end."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.attempts = 0
        # threading.Events polled from the model: it runs on the process's durable loop, not the test's
        self.first, self.second = threading.Event(), threading.Event()

    @staticmethod
    async def hold(gate: threading.Event) -> None:
        for _ in range(int(TIMEOUT_MS / 10)):
            if gate.is_set():
                return
            await asyncio.sleep(0.01)

    async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        self.attempts += 1
        if self.attempts == 1:
            yield "doomed draft "
            await self.hold(self.first)
            raise ModelServerError("local-writer", "503 mid-stream")
        yield "kept answer, "
        await self.hold(self.second)
        yield "complete."


broken_stream = BrokenStream()
retrying = DBOSAgent(
    Agent(FunctionModel(stream_function=broken_stream, model_name="local-writer"), name="console_retry_browser"),
    stream_events=True,
    model_retry=ModelRetryPolicy(initial_interval_seconds=0.05, max_interval_seconds=0.1, jitter=0),
)


def test_a_retried_request_s_abandoned_text_is_dropped_in_the_page(web: Watched, console_server: ConsoleServer) -> None:
    """The page shows a draft as it streams; when its request is retried, the draft goes and the retry's text
    takes its place (the run's `Superseded` marker)."""
    page, env = web.page, console_server.env
    assert env is not None
    broken_stream.reset()
    run_id = f"retried-{uuid.uuid4().hex[:8]}"
    env._in_thread(run_id, retrying.run_sync, "Write it.")
    off_loop(env.wait_for_status, run_id, "PENDING")
    try:
        page.goto(console_server.url + f"/#/run/{run_id}")
        live = page.locator("#live-output")
        expect(live).to_contain_text("doomed draft")
        broken_stream.first.set()  # the attempt breaks off; the retry streams
        expect(live).to_contain_text("kept answer,")
        expect(live).not_to_contain_text("doomed draft")
        expect(live.locator(".live-label").filter(has_text="earlier attempt")).to_have_count(1)
        broken_stream.second.set()
        expect(page.locator("#live-state")).to_have_text("run ended")
        assert _live_text(page).strip() == "kept answer, complete."
        expect(live).not_to_contain_text("doomed")
        expect(page.locator("#conversation .item-output .text")).to_have_text("kept answer, complete.")
    finally:
        broken_stream.first.set()
        broken_stream.second.set()
    assert broken_stream.attempts == 2


def test_the_page_reconnects_after_the_console_restarts_and_goes_on_after_its_last_event(
    browser: Browser, console_env: ConsoleEnv
) -> None:
    """The console stops while a page follows a run, and starts again on the same port: the page's EventSource
    reconnects with `Last-Event-ID`, and the run's text is shown whole, each chunk once."""
    env = console_env
    gate = threading.Event()
    chunks = 8
    run_id = off_loop(env.start_live_run, chunks=chunks, delay=0.02, gate=gate)
    first = ConsoleServer(env.database_url, env=env)
    second: ConsoleServer | None = None
    try:
        for watched in _new_page(browser):
            page = watched.page
            page.goto(first.url + f"/#/run/{run_id}")
            live = page.locator("#live-output")
            expect(live).to_contain_text(LIVE_CHUNK.format(i=chunks - 2).strip())  # all but the gated last chunk
            first.stop()
            expect(page.locator("#live-state")).to_have_text("reconnecting…")
            second = ConsoleServer(env.database_url, env=env, port=first.port)
            expect(page.locator("#live-state")).to_have_text("streaming")
            gate.set()
            expect(page.locator("#live-state")).to_have_text("run ended")
            assert _live_text(page).strip() == "".join(LIVE_CHUNK.format(i=i) for i in range(chunks)).strip()
        assert second is not None
        before = [last for path, last in first.last_event_ids if run_id in unquote(path)]
        after = [last for path, last in second.last_event_ids if run_id in unquote(path)]
        assert before == [None]  # the page's first connection started from the beginning
        assert after and after[0] is not None and int(after[0]) > 0  # the reconnection went on after its last event
    finally:
        gate.set()
        first.stop()
        if second is not None:
            second.stop()


# --- Model retries and recovered runs ---------------------------------------------------------------------


def test_a_run_waiting_to_retry_and_continuing_one_that_gave_up(web: Watched, console_server: ConsoleServer) -> None:
    page, env = web.page, console_server.env
    assert env is not None
    waiting = off_loop(env.start_waiting_to_retry_run)
    page.goto(console_server.url + "/#/runs")
    row = page.locator(f'tr[data-workflow-id="{waiting}"]')
    expect(row.locator(".badge")).to_have_text("PENDING")
    expect(row.locator(".retry-note")).to_contain_text("waiting to retry: attempt 1 failed, next try")
    page.goto(console_server.url + f"/#/run/{waiting}")
    expect(page.locator("#run-retry .retry-state")).to_contain_text("waiting to retry: attempt 1 failed")
    expect(page.locator("#run-retry")).to_contain_text(f"ModelServerError: {OUTAGE_ERROR}")
    expect(page.locator("#action-continue")).to_have_count(0)  # it retries by itself
    expect(page.locator("#timeline tr.step-retry")).to_have_count(1)

    gave_up = off_loop(env.start_gave_up_run)
    page.goto(console_server.url + f"/#/run/{gave_up}")
    expect(page.locator(".summary .badge")).to_have_text("ERROR")
    expect(page.locator("#run-retry .retry-state")).to_contain_text("gave up after")
    env.end_outage(gave_up)
    page.click("#action-continue")
    expect(page.locator(".summary .badge")).to_have_text("SUCCESS")
    expect(page.locator("#conversation .item-output .text")).to_have_text(
        f"Answered after the outage: Summarise ticket {gave_up}."
    )
    # The attempts before the last one stay recorded; the last one ran again and answered.
    expect(page.locator("#run-retry .retry-state")).to_contain_text("succeeded after")
    expect(page.locator("#action-continue")).to_have_count(0)


def test_a_recovered_run_is_marked_with_its_worker_and_the_gap(web: Watched, console_server: ConsoleServer) -> None:
    page, env = web.page, console_server.env
    assert env is not None
    run_id = env.recovered_run()  # worker processes killed and relaunched
    page.goto(console_server.url + "/#/runs")
    expect(page.locator(f'tr[data-workflow-id="{run_id}"] .tag.recovered')).to_be_visible()
    page.goto(console_server.url + f"/#/run/{run_id}")
    expect(page.locator("#run-recovery")).to_contain_text(re.compile(r"recovered once, gap .+ \(step 2 → step 3\)"))
    expect(page.locator("#run-recovery")).to_contain_text(CRASH_EXECUTOR)
    expect(page.locator("#run-worker")).to_contain_text(CRASH_EXECUTOR)
    expect(page.locator("#timeline tr.recovery-marker")).to_have_count(1)
    rows = page.locator("#timeline tbody tr").evaluate_all(
        "rows => rows.map(r => r.classList.contains('recovery-marker') ? 'recovered' : r.cells[0].textContent)"
    )
    assert rows == ["1", "2", "recovered", "3"]


# --- Fork and compare ------------------------------------------------------------------------------------


def test_fork_from_a_model_request_and_compare(web: Watched, console_server: ConsoleServer) -> None:
    page, env = web.page, console_server.env
    assert env is not None
    original = env.runs["succeeded_2"]
    detail = api(console_server, f"/api/runs/{original}")
    last_request = detail["model_requests"][-1]["function_id"]
    page.goto(console_server.url + f"/#/run/{original}")
    expect(page.locator("#fork-step option")).to_have_count(2)
    page.select_option("#fork-step", str(last_request))
    page.click("#action-fork")
    page.wait_for_url(re.compile(r"#/compare/"))
    fork_id = page.url.rsplit("/", 1)[1]
    assert fork_id != original
    columns = page.locator("#compare .compare-col")
    expect(columns).to_have_count(2)
    expect(columns.nth(0)).to_have_attribute("data-workflow-id", original)
    expect(columns.nth(1)).to_have_attribute("data-workflow-id", fork_id)
    expect(columns.nth(0).locator("h2")).to_contain_text("Original")
    expect(columns.nth(1).locator("h2")).to_contain_text("Fork")
    # The fork re-ran the last model request, which answers differently: the outputs differ, marked.
    expect(columns.nth(1).locator(".summary .badge")).to_have_text("SUCCESS")
    expect(columns.nth(0).locator(".output")).to_have_text("Order B2 shipped on Monday. (answer #1)")
    expect(columns.nth(1).locator(".output")).to_have_text("Order B2 shipped on Monday. (answer #2)")
    expect(columns.nth(1).locator(".output")).to_have_class(re.compile(r"\bdiffers\b"))
    # Both conversations are shown; the fork's first model request came back from the original's steps.
    expect(columns.nth(1).locator(".item-tool_call .tool-name")).to_have_text("look_up_order")
    screenshot(page, "compare")

    # The fork's own page links back to the comparison.
    page.goto(console_server.url + f"/#/run/{fork_id}")
    expect(page.locator(".summary")).to_contain_text(original)
    page.click("a.compare-link")
    expect(page.locator("#compare .compare-col")).to_have_count(2)


def test_cancel_and_resume_from_the_page(web: Watched, console_server: ConsoleServer) -> None:
    page, env = web.page, console_server.env
    assert env is not None
    run_id = off_loop(env.start_waiting_run)
    page.goto(console_server.url + f"/#/run/{run_id}")
    expect(page.locator("#action-cancel")).to_be_enabled()
    page.click("#action-cancel")
    assert any(d.startswith("confirm:") for d in web.dialogs)
    expect(page.locator(".summary .badge")).to_have_text("CANCELLED")
    expect(page.locator("#action-resume")).to_be_enabled()
    page.click("#action-resume")
    # Resumed, the run waits for its approval again.
    expect(page.locator("#run-approvals .approval")).to_be_visible()
    expect(page.locator(".summary .badge")).to_have_text("PENDING")


# --- Untrusted content -----------------------------------------------------------------------------------

HOSTILE_TAGS = "script:not([src]), img, svg, iframe, b, object, embed"

# Markup that runs script if it ever reaches the DOM as HTML, in element, attribute and URL contexts.
PAYLOAD = (
    "<script>window.__pwned = 'script'</script>"
    "<img src=x onerror=\"window.__pwned = 'img'\">"
    '"><svg onload="window.__pwned = \'svg\'">'
    "'><iframe src=\"javascript:window.parent.__pwned = 'iframe'\"></iframe>"
    "<a href=\"javascript:window.__pwned = 'href'\">link</a>"
)
HOSTILE_RUN_ID = '"><img src=x onerror="window.__pwned = \'id\'">'


async def hostile_stream(messages: list[ModelMessage], info: AgentInfo) -> Any:
    """Asks to call `echo` with the payload; once it returned, streams the payload as its answer, slowly."""
    last = messages[-1]
    if isinstance(last, ModelRequest) and any(isinstance(p, ToolReturnPart) for p in last.parts):
        for piece in [PAYLOAD[i : i + 25] for i in range(0, len(PAYLOAD), 25)]:
            await asyncio.sleep(0.1)
            yield piece
        return
    calls: DeltaToolCalls = {0: DeltaToolCall(name="echo", json_args=json.dumps({"text": PAYLOAD, "note": PAYLOAD}))}
    yield calls


hostile_agent: Agent[None, str] = Agent(
    FunctionModel(stream_function=hostile_stream, model_name="hostile-model"), name="console_hostile_browser"
)


@hostile_agent.tool_plain(requires_approval=True)
def echo(text: str, note: str) -> str:
    """Returns its argument: a tool result that carries the payload too."""
    return text


# Created at import, before the module's DBOS launch (console_env) registers the workflows.
hostile = DBOSAgent(hostile_agent, approvals="wait", approval_timeout=600, stream_events=True)


def _start_hostile_run() -> threading.Thread:
    def run() -> None:
        with SetWorkflowID(HOSTILE_RUN_ID), contextlib.suppress(BaseException):
            hostile.run_sync(PAYLOAD)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_hostile_markup_everywhere_stays_text_while_the_run_streams(
    browser: Browser, console_server: ConsoleServer
) -> None:
    """A run whose id, prompt, tool arguments, tool result, streamed text and output are all hostile markup,
    followed from the inbox to the live view to the end, with the CSP bypassed: nothing runs, all is text."""
    for watched in _new_page(browser, bypass_csp=True):
        page = watched.page
        page.add_init_script("window.alert = window.confirm = window.prompt = (m) => { window.__pwned = 'dialog'; };")
        thread = _start_hostile_run()
        page.goto(console_server.url + "/#/approvals")
        card = page.locator(".approval").filter(has_text="console_hostile_browser")
        expect(card).to_be_visible()
        assert json.loads(card.locator("pre.args").inner_text()) == {"text": PAYLOAD, "note": PAYLOAD}
        expect(card.locator("a.mono")).to_have_text(HOSTILE_RUN_ID)
        card.locator("input.reason").fill(PAYLOAD)
        card.locator("a.mono").click()  # to the run: its id is in the URL, percent-encoded
        expect(page.locator("h1.run-id")).to_have_text(HOSTILE_RUN_ID)
        expect(page.locator("#conversation .item-user .text")).to_have_text(PAYLOAD)
        page.locator("#run-approvals button.approve").click()
        # Live: the streamed answer appears as text, then the run ends with it as its output.
        expect(page.locator("#live-output .live-tool").first).to_contain_text("echo")
        expect(page.locator("#live-output .live-text").last).to_have_text(PAYLOAD)
        expect(page.locator("#live-state")).to_have_text("run ended")
        expect(page.locator(".summary .badge")).to_have_text("SUCCESS")
        expect(page.locator("#conversation .item-output .text")).to_have_text(PAYLOAD)
        expect(page.locator("#conversation .item-tool_result .text")).to_have_text(PAYLOAD)
        assert json.loads(page.locator("#conversation .item-tool_call pre.args").inner_text())["note"] == PAYLOAD
        assert page.locator(f"#app :is({HOSTILE_TAGS}, a[href^='javascript'])").count() == 0
        page.goto(console_server.url + "/#/runs")
        expect(page.locator(".run-row").filter(has_text="console_hostile_browser").locator("a.mono")).to_have_text(
            HOSTILE_RUN_ID
        )
        assert page.locator(f"#app :is({HOSTILE_TAGS}, a[href^='javascript'])").count() == 0
        page.wait_for_timeout(1500)  # give an onerror/onload handler time to fire, if any element existed
        assert page.evaluate("window.__pwned") is None
        assert watched.dialogs == []
        thread.join(timeout=30)


def test_model_output_and_tool_arguments_are_shown_literally_never_run(
    browser: Browser, console_server: ConsoleServer
) -> None:
    """Hostile markup from a model and a tool is text: no script runs, no element is created.

    The page is opened with the Content-Security-Policy bypassed, so it is the page's own escaping (not
    the CSP, a second line of defence) that is tested.
    """
    env = console_server.env
    assert env is not None
    run_id = env.runs["injection"]
    for watched in _new_page(browser, bypass_csp=True):
        page = watched.page
        page.add_init_script(
            "window.alert = window.confirm = window.prompt = (m) => { window.__pwned = 'dialog:' + m; };"
        )
        page.goto(console_server.url + f"/#/run/{run_id}")
        model_text = page.locator("#conversation .item-model_text .text")
        expect(model_text).to_have_text(INJECTION_TEXT)
        expect(page.locator("#conversation .item-output .text")).to_have_text(INJECTION_TEXT)
        args = page.locator("#conversation .item-tool_call pre.args").inner_text()
        assert json.loads(args) == {"order_id": INJECTION_ARG}
        expect(page.locator("#conversation .item-user .text")).to_contain_text("injection")
        assert page.locator(f"#app :is({HOSTILE_TAGS})").count() == 0

        page.goto(console_server.url + f"/#/compare/{run_id}/{run_id}")
        expect(page.locator("#compare .compare-col .output")).to_have_text([INJECTION_TEXT, INJECTION_TEXT])
        assert page.locator(f"#app :is({HOSTILE_TAGS})").count() == 0

        page.goto(console_server.url + "/#/runs")
        expect(page.locator(f'tr[data-workflow-id="{run_id}"]')).to_be_visible()
        page.wait_for_timeout(1500)  # give an onerror handler (a failed image load) time to fire
        assert page.evaluate("window.__pwned") is None
        assert watched.dialogs == []
