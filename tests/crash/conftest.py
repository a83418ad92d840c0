"""Fixtures of the crash suite.

`crash_run(scenario, mode, script, delay_turns=...)` starts a `ScriptedOpenAIServer` and returns a
`CrashRun` bound to this test's database (the `database_url` fixture: SQLite file or fresh PostgreSQL
database) and a work folder. Every worker it launched is killed, and the server closed, at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from crash_harness import CrashRun
from openai_server import Outage, ScriptedOpenAIServer


@pytest.fixture
def crash_run(database_url: str, tmp_path: Path) -> Iterator[Callable[..., CrashRun]]:
    """Make the test's `CrashRun` (one per test); everything it started is stopped at teardown."""
    runs: list[CrashRun] = []

    def make(
        scenario: str,
        mode: str,
        script: list[dict[str, Any]],
        *,
        delay_turns: Collection[int] = (),
        pause_mid_stream_turns: Collection[int] = (),
        outage: Outage | None = None,
        latency_seconds: float = 0.0,
    ) -> CrashRun:
        server = ScriptedOpenAIServer(
            script,
            delay_turns=delay_turns,
            pause_mid_stream_turns=pause_mid_stream_turns,
            outage=outage,
            latency_seconds=latency_seconds,
        ).start()
        workdir = tmp_path / "work"
        workdir.mkdir()
        run = CrashRun(scenario, mode, database_url, workdir, server)
        runs.append(run)
        return run

    try:
        yield make
    finally:
        for run in runs:
            run.close()
