"""The console's FastAPI application: the JSON API under `/api` and the page from `static/` at `/`.

Safety rules (see docs/console.md):

- With a token, every request needs it: `Authorization: Bearer <token>`, `?token=<token>` (the page's
  EventSource cannot send headers), or the cookie set when the page was opened with `?token=` (so the
  page's own scripts and styles load).
- Requests that change anything are POSTs, and a POST whose `Origin` or `Sec-Fetch-Site` header is not
  same-origin is refused (403), token or not.
- `allowed_hosts` (the CLI passes the loopback names when it binds to loopback) refuses other `Host`
  headers, which defeats DNS rebinding.
- Request values are only strings and numbers: nothing a browser sends is ever unpickled. Bodies over
  64 KiB are refused (413) and a 422 quotes at most the start of what was sent.
- Live tails share one `DBOSClient` (opened at startup, closed at shutdown) and are bounded: beyond
  `max_live_readers` at once, a new one is refused with 503, so open tabs cannot exhaust the database's
  connections.
- Workflow ids may hold `/`: the page sends it as `%2F`, and ids are read from the raw path.
- Every response carries a Content-Security-Policy that forbids inline scripts: what a model or tool
  wrote can never run in the page, even if it reached the DOM as HTML.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from dbos import DBOSClient
from fastapi import Body, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._compat import client_status_table
from .._serialization import serializer_for
from ..approvals import ApprovalRejected
from ..names import TRACE_EVENT
from ..tracing import check_trace_url, trace_link
from .data import STATUSES, ConsoleData, InvalidCursor, RunNotFound, approval_json
from .fleet_data import FleetData

__all__ = ["DEFAULT_MAX_LIVE_READERS", "LIVE_READER_POOL_SIZE", "TOKEN_COOKIE", "create_app", "token_cookie_value"]

STATIC_DIR = Path(__file__).parent / "static"
TOKEN_COOKIE = "dbos_pai_console_token"
KEEPALIVE_SECONDS = 15.0
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_MAX_ID = 1000  # longest workflow id, agent name or search text accepted
_MAX_INT = 2**31 - 1
_MAX_BODY = 64 * 1024  # the largest request body: a decision's reason is at most 10,000 characters
_MAX_QUOTED = 200  # how much of a rejected value a 422 quotes back
_MAX_ERRORS = 20  # validation errors listed in a 422
DEFAULT_MAX_LIVE_READERS = 32
"""Live tails (`/api/runs/{id}/events`) one console serves at once; more are refused with 503."""
LIVE_READER_POOL_SIZE = 4
"""Database connections the live tails share (one `DBOSClient`'s pool)."""

PLACEHOLDER_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>dbos-pydantic-ai console</title>
</head><body><h1>dbos-pydantic-ai console</h1><p>The page is not installed; the JSON API is at
<a href="api/runs">api/runs</a>.</p></body></html>"""


# --- Request bodies -----------------------------------------------------------------------------------


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    args_digest: str = Field(min_length=1, max_length=200, description="The digest of the arguments reviewed.")


class DenyBody(ApproveBody):
    reason: str | None = Field(default=None, max_length=10_000, description="Told to the model.")


class ForkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start_step: int = Field(ge=1, le=_MAX_INT, description="Re-run the run from this step (a model request's id).")


# --- Security middleware --------------------------------------------------------------------------------


def token_cookie_value(token: str) -> str:
    """What the console's cookie holds for `token`: its sha256, so the cookie jar never holds the token."""
    return hashlib.sha256(f"dbos-pai-console:{token}".encode()).hexdigest()


def _same(presented: str, expected: str) -> bool:
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def _json_response(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class _Guard:
    """Token check, cross-origin refusal for POSTs, refusal of NUL characters, and security headers."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token
        # The cookie holds a digest of the token, never the token itself (and any token is a safe cookie value).
        self.cookie_value = None if token is None else token_cookie_value(token)

    def _authorized(self, scope: Scope, headers: dict[str, str]) -> tuple[bool, bool]:
        """Whether the request presents the token, and whether it did so in the query string."""
        assert self.token is not None and self.cookie_value is not None
        authorization = headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            return _same(authorization[7:].strip(), self.token), False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return _same(query["token"][0], self.token), True
        cookie: SimpleCookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is no token
            return False, False
        morsel = cookie.get(TOKEN_COOKIE)
        return morsel is not None and _same(morsel.value, self.cookie_value), False

    @staticmethod
    def _cross_origin(headers: dict[str, str], scheme: str) -> str | None:
        site = headers.get("sec-fetch-site")
        if site is not None and site != "same-origin":
            return f"Sec-Fetch-Site is {site!r}"
        origin = headers.get("origin")
        if origin is not None:
            host = headers.get("host", "")
            parts = urlsplit(origin)
            if origin == "null" or parts.scheme != scheme or parts.netloc.lower() != host.lower():
                return f"Origin {origin!r} is not this console"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        set_cookie = False
        rejection: tuple[int, str] | None = None
        raw_query = unquote(scope.get("query_string", b"").decode("latin-1"))
        if "\x00" in scope["path"] or "\x00" in raw_query:
            rejection = (422, "NUL characters are not allowed in the path or query.")
        elif _too_large(headers.get("content-length")):
            rejection = (413, f"Request body too large: the console accepts at most {_MAX_BODY} bytes.")
        elif self.token is not None:
            authorized, from_query = self._authorized(scope, headers)
            if not authorized:
                rejection = (401, "This console needs its token: Authorization: Bearer <token>, or ?token=.")
            set_cookie = authorized and from_query
        if rejection is None and scope["method"] == "POST":
            problem = self._cross_origin(headers, scope.get("scheme", "http"))
            if problem is not None:
                rejection = (403, f"Cross-origin request refused: {problem}.")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = list(SECURITY_HEADERS)
                if set_cookie:
                    cookie = f"{TOKEN_COOKIE}={self.cookie_value}; Path=/; HttpOnly; SameSite=Strict"
                    extra.append((b"set-cookie", cookie.encode("latin-1")))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if rejection is not None:
            response = _json_response(*rejection)
            if rejection[0] == 401:
                response.headers["www-authenticate"] = "Bearer"
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _too_large(content_length: str | None) -> bool:
    if content_length is None:
        return False
    try:
        return int(content_length) > _MAX_BODY
    except ValueError:
        return True


class _PathIds:
    """Reads each `/api/runs/...` path segment from the raw path, so a workflow id may contain `/` (sent as `%2F`).

    The server decodes `%2F` into `/` before routing, which would split such an id in two. Here each
    raw segment is decoded on its own and put back with `%` and `/` escaped; `_unescape` (on the path
    parameters) undoes that, so every id arrives exactly as the page encoded it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/runs/"):
            path: str = scope["path"]
            raw = scope.get("raw_path")
            segments = path.split("/")
            if raw:
                raw_segments = [unquote(segment) for segment in raw.decode("latin-1").split("/")]
                if raw_segments[:3] == ["", "api", "runs"]:  # the raw path is this path (no root path in front)
                    segments = raw_segments
            escaped = "/".join(segment.replace("%", "%25").replace("/", "%2F") for segment in segments)
            scope = {**scope, "path": escaped}
        await self.app(scope, receive, send)


def _unescape(value: str) -> str:
    """A path parameter as it was sent, from its form escaped by `_PathIds`."""
    value = unquote(value)
    if len(value) > _MAX_ID:
        raise ValueError(f"at most {_MAX_ID} characters")
    return value


def _quoted(value: Any) -> Any:
    """A rejected value as a 422 quotes it: itself when short, else the start of its JSON and its length."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(jsonable_encoder(value), ensure_ascii=False, default=str)
    if len(text) <= _MAX_QUOTED:
        return value if isinstance(value, str) else jsonable_encoder(value)
    return f"{text[:_MAX_QUOTED]}... ({len(text)} characters)"


def _validation_error(error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, but quoting at most the start of each rejected value, and at most 20 errors."""
    errors = []
    for item in error.errors()[:_MAX_ERRORS]:
        item = dict(item)
        if "input" in item:
            item["input"] = _quoted(item["input"])
        errors.append(item)
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


class _LiveReaders:
    """The console's live tails: one shared `DBOSClient` (opened at startup, closed at shutdown), a bounded number.

    Each tail would otherwise open a client of its own, with its own connections; a browser that
    reconnects often, or many open tabs, would then exhaust the database's connections.
    """

    def __init__(self, database_url: str, limit: int) -> None:
        self.database_url = database_url
        self.limit = limit
        self.active = 0
        self.client: DBOSClient | None = None

    async def open(self) -> None:
        from ..streams import pushes_notifications

        self.client = await asyncio.to_thread(
            DBOSClient,
            system_database_url=self.database_url,
            system_database_pool_size=LIVE_READER_POOL_SIZE,
            serializer=serializer_for(),
            use_listen_notify=pushes_notifications(self.database_url),  # live tails woken by PostgreSQL's push
        )

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await asyncio.to_thread(client.destroy)

    def acquire(self) -> tuple[DBOSClient, Callable[[], None]]:
        """The shared client and the function that gives the slot back (call it once); 503 when none is free."""
        if self.client is None:
            raise HTTPException(503, "The console is not serving live output: it is starting or shutting down.")
        if self.active >= self.limit:
            raise HTTPException(
                503,
                f"This console already serves {self.limit} live streams, its limit. Close a tab that follows a "
                "run and reload, or start the console with a higher --max-live-readers.",
                headers={"retry-after": "5"},
            )
        self.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active -= 1

        return self.client, release


class _ReleasingStream(StreamingResponse):
    """A streaming response that gives its live-reader slot back however it ends."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


# --- The app --------------------------------------------------------------------------------------------

WorkflowId = Annotated[str, PathParam(min_length=1, max_length=3 * _MAX_ID), AfterValidator(_unescape)]
CallId = Annotated[str, PathParam(min_length=1, max_length=3 * _MAX_ID), AfterValidator(_unescape)]


def create_app(
    database_url: str,
    *,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    max_live_readers: int = DEFAULT_MAX_LIVE_READERS,
    trust_pickle: bool = False,
    trace_url: str | None = None,
) -> FastAPI:
    """The console for the DBOS system database at `database_url`.

    Args:
        database_url: The workers' system database (`sqlite:///...` or `postgresql://...`).
        token: When set, every request must present it (see the module docstring).
        allowed_hosts: Accepted `Host` header names (e.g. the loopback names); None accepts any.
        max_live_readers: Live tails served at once (they share `LIVE_READER_POOL_SIZE` connections);
            more are refused with 503 until one ends.
        trust_pickle: Unpickle values stored as pickle to show them (runs code the rows name: only for a
            database whose writers you trust). Without it they show as "stored as pickle, not displayed".
        trace_url: A URL template with `{trace_id}`: each traced run links to its trace there (tracing.py).
    """
    if token is not None and not token:
        raise ValueError("An empty token would let everyone in: pass None or a non-empty token.")
    if isinstance(max_live_readers, bool) or not isinstance(max_live_readers, int) or max_live_readers < 1:
        raise ValueError(f"max_live_readers must be an int >= 1, not {max_live_readers!r}.")
    if trace_url is not None:
        check_trace_url(trace_url)
    data = ConsoleData(database_url, trust_pickle=trust_pickle)
    fleet = FleetData(*client_status_table(data.client))
    live = _LiveReaders(database_url, max_live_readers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await live.open()
        try:
            yield
        finally:
            try:
                await live.close()
            finally:
                data.close()

    app = FastAPI(
        title="dbos-pydantic-ai console",
        summary="Durable agent runs, their conversations, costs, approvals and live output.",
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    app.state.data = data
    app.state.fleet = fleet
    app.state.live_readers = live

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return _validation_error(error)

    async def blocking(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await run_in_threadpool(func, *args, **kwargs)
        except RunNotFound as error:
            raise HTTPException(404, f"No durable agent run {error.args[0]!r}.") from None

    def with_takeovers(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The runs, each with `takeovers`: the fleet's takeovers of it (from which worker, by which, when)."""
        found = fleet.takeovers(run["workflow_id"] for run in runs)
        for run in runs:
            run["takeovers"] = found.get(run["workflow_id"], [])
        return runs

    async def detail(workflow_id: str) -> dict[str, Any]:
        run: dict[str, Any] = await blocking(data.run, workflow_id)
        await run_in_threadpool(with_takeovers, [run])
        return run

    @app.get("/api/agents")
    async def agents() -> dict[str, list[str]]:
        """The names of the agents that have durable runs."""
        return {"agents": await blocking(data.agents)}

    @app.get("/api/runs")
    async def runs(
        agent: Annotated[str | None, Query(max_length=_MAX_ID)] = None,
        status: Annotated[Literal[STATUSES] | None, Query()] = None,  # type: ignore[valid-type]
        q: Annotated[str | None, Query(max_length=_MAX_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=4 * _MAX_ID)] = None,
    ) -> dict[str, Any]:
        """Durable agent runs, newest first; pass `next_cursor` back as `cursor` for the next page."""
        try:
            page, next_cursor = await blocking(
                data.list_runs, agent=agent, status=status, q=q, limit=limit, cursor=cursor
            )
        except InvalidCursor:
            raise HTTPException(422, "Invalid cursor: pass a next_cursor this console returned.") from None
        return {"runs": await run_in_threadpool(with_takeovers, page), "next_cursor": next_cursor}

    @app.get("/api/runs/{workflow_id}")
    async def run(workflow_id: WorkflowId) -> dict[str, Any]:
        """A run: its summary, conversation, steps, model requests, children, pending approvals, output, takeovers."""
        found = await detail(workflow_id)
        if trace_url is not None:  # a link to the run's latest trace (tracing.py)
            from .._safe_read import safe_get_event  # never unpickled (DBOS's get_event would)

            trust = data.trust_pickle
            stored = await blocking(safe_get_event, data.client, workflow_id, TRACE_EVENT, trust_pickle=trust)
            found["trace"] = trace_link(stored, trace_url, workflow_id)
        return found

    @app.get("/api/compare")
    async def compare(
        left: Annotated[str, Query(min_length=1, max_length=_MAX_ID)],
        right: Annotated[str, Query(min_length=1, max_length=_MAX_ID)],
    ) -> dict[str, Any]:
        """Two runs side by side (a fork and its original, say)."""
        return {"left": await detail(left), "right": await detail(right)}

    @app.get("/api/workers")
    async def workers() -> dict[str, Any]:
        """The fleet's workers: state (alive, silent, stopped, dead), heartbeat age by the database's clock, runs
        in flight, takeovers. Empty, with `fleet` false, while no worker has joined a fleet on this database."""
        result: dict[str, Any] = await run_in_threadpool(fleet.workers)
        return result

    @app.get("/api/queues")
    async def queues() -> dict[str, Any]:
        """Each queue's depth: its ENQUEUED and PENDING runs, and the live workers that listen to it."""
        return {"queues": await run_in_threadpool(fleet.queues)}

    @app.get("/api/approvals")
    async def approvals(agent: Annotated[str | None, Query(max_length=_MAX_ID)] = None) -> dict[str, Any]:
        """Tool calls that waiting runs need a decision on, oldest first."""
        pending = await blocking(data.inbox.list_pending, agent_name=agent or None)
        return {"approvals": [approval_json(approval) for approval in pending]}

    async def decide(func: Callable[..., None], workflow_id: str, call_id: str, **kwargs: Any) -> dict[str, bool]:
        await blocking(data.status_of, workflow_id)
        try:
            await blocking(func, workflow_id, call_id, **kwargs)
        except ApprovalRejected as error:
            raise HTTPException(409, str(error)) from None
        return {"ok": True}

    @app.post("/api/runs/{workflow_id}/approvals/{call_id}/approve")
    async def approve_call(
        workflow_id: WorkflowId,
        call_id: CallId,
        body: Annotated[ApproveBody, Body()],
    ) -> dict[str, bool]:
        """Approve a pending tool call, bound to the digest of the arguments reviewed (409 when refused)."""
        return await decide(data.inbox.approve, workflow_id, call_id, args_digest=body.args_digest)

    @app.post("/api/runs/{workflow_id}/approvals/{call_id}/deny")
    async def deny_call(
        workflow_id: WorkflowId,
        call_id: CallId,
        body: Annotated[DenyBody, Body()],
    ) -> dict[str, bool]:
        """Deny a pending tool call; the model is told `reason` (409 when refused)."""
        return await decide(
            data.inbox.deny, workflow_id, call_id, args_digest=body.args_digest, reason=body.reason or None
        )

    @app.post("/api/runs/{workflow_id}/cancel")
    async def cancel(workflow_id: WorkflowId) -> dict[str, bool]:
        """Cancel a run that has not finished (409 for one that succeeded or failed)."""
        status = await blocking(data.status_of, workflow_id)
        if status in ("SUCCESS", "ERROR"):
            raise HTTPException(409, f"Run {workflow_id!r} is {status}: there is nothing to cancel.")
        await blocking(data.client.cancel_workflow, workflow_id)
        return {"ok": True}

    @app.post("/api/runs/{workflow_id}/resume")
    async def resume(workflow_id: WorkflowId) -> dict[str, bool]:
        """Resume a cancelled (or stuck) run from its last completed step; a worker picks it up."""
        status = await blocking(data.status_of, workflow_id)
        if status in ("SUCCESS", "ERROR"):
            raise HTTPException(409, f"Run {workflow_id!r} is {status}: fork it to run it again.")
        await blocking(data.client.resume_workflow, workflow_id)
        return {"ok": True}

    @app.post("/api/runs/{workflow_id}/continue")
    async def continue_(workflow_id: WorkflowId) -> dict[str, Any]:
        """Continue a run that gave up (or was cancelled) while a model request kept failing, from that request.

        The run keeps its id and a worker picks it up; 409, saying why, for a run that cannot be continued so.
        """
        from pydantic_ai.exceptions import UserError

        from ..retries import continue_run

        await blocking(data.status_of, workflow_id)
        try:
            step = await blocking(continue_run, workflow_id, database_url=database_url)
        except UserError as error:
            raise HTTPException(409, str(error)) from None
        return {"ok": True, "step": step}

    @app.post("/api/runs/{workflow_id}/fork")
    async def fork(workflow_id: WorkflowId, body: Annotated[ForkBody, Body()]) -> dict[str, str]:
        """Start a new run that replays this one's steps before `start_step` and runs the rest again."""
        await blocking(data.status_of, workflow_id)
        handle = await blocking(data.client.fork_workflow, workflow_id, body.start_step)
        return {"workflow_id": handle.get_workflow_id()}

    @app.get("/api/runs/{workflow_id}/events", response_class=StreamingResponse)
    async def events(
        workflow_id: WorkflowId,
        from_offset: Annotated[int | None, Query(ge=0, le=_MAX_INT)] = None,
        last_event_id: Annotated[str | None, Header(max_length=20)] = None,
    ) -> StreamingResponse:
        """The run's events as server-sent events (`id:` is the offset); resumes after `Last-Event-ID`."""
        await blocking(data.status_of, workflow_id)
        start = from_offset or 0
        if last_event_id is not None and last_event_id.strip():
            try:
                start = int(last_event_id)
            except ValueError:
                raise HTTPException(422, "Last-Event-ID must be an event offset.") from None
            if not 0 <= start <= _MAX_INT:
                raise HTTPException(422, "Last-Event-ID must be an event offset.")
        client, release = live.acquire()
        return _ReleasingStream(
            sse_stream(workflow_id, start, client, trust_pickle=data.trust_pickle),
            release,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    # Prometheus metrics at /metrics (metrics.py), from the console's own client and approvals connection.
    from ..metrics import RunMetrics
    from ..metrics import router as metrics_router

    app.include_router(metrics_router(RunMetrics(data.client, data.inbox)))

    if (STATIC_DIR / "index.html").exists():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    else:

        @app.get("/", include_in_schema=False)
        async def placeholder() -> HTMLResponse:
            return HTMLResponse(PLACEHOLDER_PAGE)

    app.add_middleware(_GuardMiddleware, token=token, allowed_hosts=allowed_hosts)
    return app


class _GuardMiddleware:
    """`_Guard` (and the trusted-host check) as a FastAPI middleware, so it wraps error responses too."""

    def __init__(self, app: ASGIApp, token: str | None, allowed_hosts: Sequence[str] | None) -> None:
        inner: ASGIApp = _Guard(_PathIds(app), token)
        if allowed_hosts is not None:
            inner = TrustedHostMiddleware(inner, allowed_hosts=list(allowed_hosts))
        self.app = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def event_json(offset: int, event: Any) -> dict[str, Any]:
    """One stream event as the JSON of an SSE message: `offset`, `kind`, and the fields that kind has."""
    from pydantic_ai.messages import (
        FinalResultEvent,
        FunctionToolCallEvent,
        FunctionToolResultEvent,
        PartDeltaEvent,
        PartEndEvent,
        PartStartEvent,
        RetryPromptPart,
        TextPart,
        TextPartDelta,
        ThinkingPart,
        ThinkingPartDelta,
        ToolCallPart,
        ToolCallPartDelta,
    )

    from ..streams import ModelRequestStarted, Superseded
    from .data import jsonable

    data: dict[str, Any] = {
        "offset": offset,
        "kind": "other",
        "text": None,
        "tool_name": None,
        "args": None,
        "content": None,
        "superseded_from": None,
        "index": getattr(event, "index", None),
        "part_kind": None,
        "tool_call_id": None,
        "step_id": getattr(event, "step_id", None),
    }
    if isinstance(event, ModelRequestStarted):
        data["kind"] = "model_request_started"
    elif isinstance(event, Superseded):
        data.update(kind="superseded", superseded_from=event.discard_from)
    elif isinstance(event, PartStartEvent | PartEndEvent):
        part = event.part
        data["kind"] = "part_start" if isinstance(event, PartStartEvent) else "part_end"
        data["part_kind"] = part.part_kind
        if isinstance(part, TextPart | ThinkingPart):
            data["text"] = part.content
        elif isinstance(part, ToolCallPart):
            data.update(tool_name=part.tool_name, args=jsonable(part.args), tool_call_id=part.tool_call_id)
    elif isinstance(event, PartDeltaEvent):
        delta = event.delta
        data["kind"] = "part_delta"
        if isinstance(delta, TextPartDelta):
            data.update(part_kind="text", text=delta.content_delta)
        elif isinstance(delta, ThinkingPartDelta):
            data.update(part_kind="thinking", text=delta.content_delta)
        elif isinstance(delta, ToolCallPartDelta):
            data.update(
                part_kind="tool-call",
                tool_name=delta.tool_name_delta,
                args=jsonable(delta.args_delta),
                tool_call_id=delta.tool_call_id,
            )
    elif isinstance(event, FunctionToolCallEvent):
        part = event.part
        data.update(
            kind="tool_call", tool_name=part.tool_name, args=jsonable(part.args), tool_call_id=part.tool_call_id
        )
    elif isinstance(event, FunctionToolResultEvent):
        result = event.part
        # Typed a ToolReturnPart; a RetryPromptPart (the deprecated way to report a retry) has `model_response()`.
        content = result.model_response() if isinstance(result, RetryPromptPart) else result.model_response_str()
        data.update(kind="tool_result", tool_name=result.tool_name, content=content, tool_call_id=result.tool_call_id)
    elif isinstance(event, FinalResultEvent):
        data.update(kind="final_result", tool_name=event.tool_name, tool_call_id=event.tool_call_id)
    else:
        data["kind"] = str(getattr(event, "event_kind", type(event).__name__))
    return data


async def sse_stream(
    workflow_id: str, from_offset: int, client: DBOSClient, *, trust_pickle: bool = False
) -> AsyncIterator[str]:
    """SSE messages for a run's events after `from_offset`, a comment every 15 s while idle, then `event: end`.

    Read through `client`, the console's shared one (left open).
    """
    from ..streams import read_events

    queue: asyncio.Queue[tuple[int, Any] | BaseException | None] = asyncio.Queue()

    async def produce() -> None:
        try:
            async for offset, event in read_events(
                workflow_id, from_offset=from_offset, client=client, trust_pickle=trust_pickle
            ):
                await queue.put((offset, event))
        except Exception as error:
            await queue.put(error)
        else:
            await queue.put(None)

    producer: asyncio.Task[None] = asyncio.create_task(produce())
    try:
        yield "retry: 2000\n\n"
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if item is None:
                yield "event: end\ndata: {}\n\n"
                return
            if isinstance(item, BaseException):
                detail = json.dumps({"error": f"{type(item).__name__}: {item}"})
                yield f"event: error\ndata: {detail}\n\n"
                return
            offset, event = item
            yield f"id: {offset}\ndata: {json.dumps(event_json(offset, event), ensure_ascii=False)}\n\n"
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
