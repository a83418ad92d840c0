"""A small MCP server for tests that records, server-side, every request it handles.

Each request (`server/discover`, `initialize`, `tools/list`, `tools/call`, ...) and each process start
is appended as one JSON line to the file named by `--log` (or the `MCP_COUNT_LOG` environment
variable), so a test can count how many sessions were opened and how many times a tool really ran.

Run it over stdio (`python counting_server.py --log calls.jsonl`) or streamable HTTP
(`python counting_server.py --log calls.jsonl --transport http --port 8123`, served at `/mcp`).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

INSTRUCTIONS = "Counting server: call get_weather to learn the weather of a city."


class CallLog:
    """Appends one JSON line per event; each write is a single `O_APPEND` write, so lines never interleave."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, **event: Any) -> None:
        line = (json.dumps({"pid": os.getpid(), **event}) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def build_server(log: CallLog) -> MCPServer[Any]:
    """The server: one tool that returns data, one that always fails, and instructions."""

    async def record_requests(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        params = ctx.params or {}
        name = params.get("name") if isinstance(params, dict) else None
        log.write(event="request", method=ctx.method, tool=name if isinstance(name, str) else None)
        return await call_next(ctx)

    server: MCPServer[Any] = MCPServer(
        "counting", instructions=INSTRUCTIONS, middleware=[record_requests], log_level="WARNING"
    )

    @server.tool()
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        log.write(event="tool", name="get_weather", args={"city": city})
        return f"sunny in {city}, 21 degrees"

    @server.tool()
    def always_fails(reason: str) -> str:
        """A tool that always fails, with the given reason."""
        log.write(event="tool", name="always_fails", args={"reason": reason})
        # A ToolError is an anticipated failure: the client gets `is_error=True` with this message.
        raise ToolError(f"always_fails refused: {reason}")

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--log", default=os.environ.get("MCP_COUNT_LOG"), help="file to append events to")
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if not args.log:
        parser.error("pass --log or set MCP_COUNT_LOG")
    log = CallLog(args.log)
    log.write(event="process_start", transport=args.transport)
    server = build_server(log)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
