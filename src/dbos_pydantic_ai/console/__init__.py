"""The console: a web page and JSON API over the workers' system database (`dbos-pydantic-ai console`).

Needs FastAPI and uvicorn (`pip install 'dbos-pydantic-ai[console]'`). `create_app(database_url, token=...)`
builds the FastAPI application; the CLI serves it with uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["create_app"]


def create_app(
    database_url: str,
    *,
    token: str | None = None,
    allowed_hosts: Any = None,
    max_live_readers: int | None = None,
    trust_pickle: bool = False,
    trace_url: str | None = None,
) -> FastAPI:
    """The console's FastAPI app for the system database at `database_url` (see `console.app.create_app`)."""
    from .app import DEFAULT_MAX_LIVE_READERS
    from .app import create_app as create

    limit = DEFAULT_MAX_LIVE_READERS if max_live_readers is None else max_live_readers
    return create(
        database_url,
        token=token,
        allowed_hosts=allowed_hosts,
        max_live_readers=limit,
        trust_pickle=trust_pickle,
        trace_url=trace_url,
    )
