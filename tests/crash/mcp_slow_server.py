"""A stdio MCP server for crash tests: one tool, `slow_echo`, that hangs on its first call.

Every call appends `start <pid>` to the `--log` file before working and `end <pid>` after (each line
fsynced), so a test can see a call in flight and count how often the tool really ran. The first call
ever (no earlier `start` in the log) waits until its client dies; later calls answer at once. The server
exits as soon as its parent process is gone, so a killed worker never leaves it behind.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer

MAX_HANG_SECONDS = 300.0


def append_line(path: Path, line: str) -> None:
    """Append one line durably: a killed process cannot lose it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def build_server(log: Path) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("slow")

    @server.tool()
    async def slow_echo(text: str) -> str:
        """Echo the text back (slowly, the first time)."""
        first_call = not (log.exists() and "start" in log.read_text())
        append_line(log, f"start {os.getpid()}")
        if first_call:
            parent = os.getppid()
            with anyio.move_on_after(MAX_HANG_SECONDS):
                while os.getppid() == parent:
                    await anyio.sleep(0.1)
            os._exit(0)  # the client died (or we gave up): never answer the first call
        append_line(log, f"end {os.getpid()}")
        return f"echo: {text}"

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--log", required=True, type=Path, help="file to append call records to")
    args = parser.parse_args()
    build_server(args.log).run("stdio")


if __name__ == "__main__":
    main()
