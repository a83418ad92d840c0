"""The `dbos-pydantic-ai` command line.

`app` is a Typer application; each command is a function registered on it, so later commands
(`approvals`, `tail`, `console`, ...) are added with `@app.command()` or as groups with
`app.add_typer(sub_app, name=...)`. Heavy imports (DBOS, pydantic-ai) happen inside the commands,
so `--help` and `--version` stay fast.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ._approvals_cli import approvals_app
from ._cli_options import TrustPickle
from ._runs_cli import runs_app
from ._worker_cli import worker_command

__all__ = ["app", "main"]

app = typer.Typer(
    name="dbos-pydantic-ai",
    help="Durable Pydantic AI agents on DBOS: crash-proof runs on SQLite or PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)


def package_version() -> str:
    """The installed version of dbos-pydantic-ai."""
    try:
        return version("dbos-pydantic-ai")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        console.print(f"dbos-pydantic-ai {package_version()}")
        raise typer.Exit()


@app.callback()
def root(
    version_: Annotated[
        bool,
        typer.Option("--version", help="Show the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """Durable Pydantic AI agents on DBOS: crash-proof runs on SQLite or PostgreSQL."""


@app.command()
def demo(
    model: Annotated[
        str | None,
        typer.Option(
            help="Use this pydantic-ai model (e.g. 'openai:gpt-5', key from the environment) instead of the "
            "scripted local model."
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="System database: 'sqlite:///file.sqlite' or 'postgresql://...'. Default: a SQLite file."),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Directory for the SQLite file, execution log and worker output (kept). Default: a temp dir.",
        ),
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the temporary directory instead of deleting it.")] = False,
    base_url: Annotated[
        str | None,
        typer.Option(
            help="An OpenAI-compatible server (llama.cpp, vLLM, Ollama), e.g. 'http://127.0.0.1:8080/v1', used via "
            "Chat Completions; --model is then the name of a model it serves.",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="API key for --base-url. Default: OPENAI_API_KEY if set; local servers usually need none."),
    ] = None,
) -> None:
    """Kill a durable agent's worker with SIGKILL mid-run, relaunch it, and show that nothing finished is redone."""
    from .demo import DemoError, DemoOptions, run_demo
    from .exceptions import DatabaseUnreachableError

    options = DemoOptions(
        model=model, database_url=database_url, workdir=workdir, keep=keep, base_url=base_url, api_key=api_key
    )
    try:
        result = run_demo(options, console)
    except (DemoError, DatabaseUnreachableError) as error:
        error_console.print(f"[bold red]Error:[/] {error}")
        raise typer.Exit(code=2) from None
    if not result.ok:
        raise typer.Exit(code=1)


# `approvals list|approve|deny|deliver`: decisions for runs that wait (see _approvals_cli.py).
app.add_typer(approvals_app, name="approvals")
# `runs continue|retry-state`: a run's model retries, and continuing it after an outage (see _runs_cli.py).
app.add_typer(runs_app, name="runs")
# `worker MODULE --queue runs:4`: a fleet worker that serves queues and drains on SIGTERM (see _worker_cli.py).
app.command("worker")(worker_command)


@app.command()
def tail(
    workflow_id: Annotated[str, typer.Argument(help="The run's workflow id.")],
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="DBOS_SYSTEM_DATABASE_URL",
            help="System database of the run: 'sqlite:///file.sqlite' or 'postgresql://...'.",
        ),
    ] = None,
    from_offset: Annotated[
        int, typer.Option(min=0, help="Continue after this offset (printed when you interrupt tail).")
    ] = 0,
    trust_pickle: TrustPickle = False,
) -> None:
    """Print a run's events live (agents with stream_events=True): text as it arrives, tool calls as they happen."""
    import asyncio

    from pydantic_ai.exceptions import UserError

    if database_url is None:
        error_console.print("[bold red]Error:[/] pass --database-url or set DBOS_SYSTEM_DATABASE_URL.")
        raise typer.Exit(code=2)
    progress = [from_offset]  # the last offset printed, kept up to date for an interrupt
    try:
        shown = asyncio.run(_tail(workflow_id, database_url, progress, trust_pickle=trust_pickle))
        status, error_text = _final_status(workflow_id, database_url, trust_pickle=trust_pickle)
    except KeyboardInterrupt:
        error_console.print(f"\n[dim]stopped; continue with --from-offset {progress[0]}[/]")
        raise typer.Exit(code=130) from None
    except UserError as error:  # an unreachable or missing database: the message says which, and what to do
        error_console.print(f"[bold red]Error:[/] {error}")
        raise typer.Exit(code=2) from None
    except Exception as error:  # a missing run, say: name it briefly
        error_console.print(f"[bold red]Error:[/] {type(error).__name__}: {error}")
        raise typer.Exit(code=2) from None
    if status != "SUCCESS":
        what = {"CANCELLED": "was cancelled", "ERROR": "failed"}.get(status, f"ended {status}")
        reason = f": {error_text}" if error_text else "."
        error_console.print(f"Run {workflow_id} {what}{reason}", markup=False, highlight=False)
        raise typer.Exit(code=TAIL_RUN_FAILED)
    if shown == 0 and from_offset == 0:
        error_console.print(
            f"Run {workflow_id} finished without recording any events: its agent was not created with "
            "stream_events=True (DBOSAgent(agent, stream_events=True) records them). Its output is in the "
            "console, or in DBOS's workflow result.",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(code=TAIL_NO_EVENTS)


TAIL_RUN_FAILED = 1
"""`tail`'s exit code when the run failed or was cancelled (its error is printed)."""
TAIL_NO_EVENTS = 3
"""`tail`'s exit code when the run finished without recording events (its agent had no stream_events=True)."""


async def _tail(workflow_id: str, database_url: str, progress: list[int], *, trust_pickle: bool = False) -> int:
    """Print the events of one run after offset `progress[0]` until it ends, updating `progress[0]`.

    Returns how many events were read.
    """
    from .streams import read_events

    count = 0
    async for offset, event in read_events(
        workflow_id, from_offset=progress[0], database_url=database_url, trust_pickle=trust_pickle
    ):
        count += 1
        text = render_event(event)
        if text:
            console.out(text, end="", highlight=False)
        progress[0] = offset
    if count:
        console.out("")
    return count


def _final_status(workflow_id: str, database_url: str, *, trust_pickle: bool = False) -> tuple[str, str | None]:
    """The status of a run that has ended, and its error as `Type: message` (None when it has none)."""
    from dbos import DBOSClient

    from ._safe_read import safe_list_workflows

    client = DBOSClient(system_database_url=database_url)
    try:
        statuses = safe_list_workflows(client, workflow_ids=[workflow_id], trust_pickle=trust_pickle)
    finally:
        client.destroy()
    if not statuses:  # deleted while tail read it
        return "UNKNOWN", "the run is no longer in the database"
    error = statuses[0].error
    if error is not None and not isinstance(error, BaseException):  # stored as pickle, not displayed
        return statuses[0].status, str(error)
    text = None if error is None else (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    return statuses[0].status, text


def render_event(event: object) -> str:
    """How `tail` shows one event: text as is, tool calls and results and retries on lines of their own."""
    from pydantic_ai.messages import (
        FunctionToolCallEvent,
        FunctionToolResultEvent,
        PartDeltaEvent,
        PartStartEvent,
        RetryPromptPart,
        TextPart,
        TextPartDelta,
    )

    from .serializer import StoredAsPickle
    from .streams import Superseded

    if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
        return event.part.content
    if isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
        return event.delta.content_delta
    if isinstance(event, FunctionToolCallEvent):
        return f"\n[tool call] {event.part.tool_name}({event.part.args_as_json_str()})\n"
    if isinstance(event, FunctionToolResultEvent):
        part = event.part
        content = str(part.content) if isinstance(part, RetryPromptPart) else part.model_response_str()
        return f"[tool result] {part.tool_name}: {content}\n"
    if isinstance(event, StoredAsPickle):
        return "\n[an event stored as pickle, not displayed: pass --trust-pickle to show it]\n"
    if isinstance(event, Superseded):
        return f"\n[model request retried: the text from offset {event.discard_from} on is void]\n"
    return ""


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _is_loopback(host: str) -> bool:
    """Whether `host` is `localhost` or a loopback address (127.0.0.0/8, ::1)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@app.command("console")
def console_command(
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="DBOS_SYSTEM_DATABASE_URL",
            help="System database of the workers: 'sqlite:///file.sqlite' or 'postgresql://...'.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind. Anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="DBOS_PAI_CONSOLE_TOKEN",
            help="Require this token on every request (Authorization: Bearer, or ?token= in the page's URL).",
        ),
    ] = None,
    max_live_readers: Annotated[
        int,
        typer.Option(min=1, help="Live outputs served at once (they share a few database connections); more get 503."),
    ] = 32,
    trust_pickle: TrustPickle = False,
    trace_url: Annotated[
        str | None,
        typer.Option(
            envvar="DBOS_PAI_TRACE_URL",
            help="Link traced runs to their trace: a URL template with {trace_id} (Logfire, Jaeger, Tempo, ...).",
        ),
    ] = None,
) -> None:
    """Serve the web console: runs, conversations, costs, approvals and live output (needs the `console` extra)."""
    if database_url is None:
        error_console.print("[bold red]Error:[/] pass --database-url or set DBOS_SYSTEM_DATABASE_URL.")
        raise typer.Exit(code=2)
    if token is not None and not token.strip():
        error_console.print("[bold red]Error:[/] --token must not be empty.")
        raise typer.Exit(code=2)
    loopback = _is_loopback(host)
    if not loopback and token is None:
        error_console.print(
            f"[bold red]Error:[/] refusing to serve the console on {host!r} without a token: anyone who can reach "
            "it could approve tool calls and cancel runs. Pass --token SECRET (or bind to 127.0.0.1)."
        )
        raise typer.Exit(code=2)
    try:
        import uvicorn

        from .console import create_app
    except ImportError as error:
        error_console.print(
            f"[bold red]Error:[/] the console needs FastAPI and uvicorn ({error.name} is missing): "
            "pip install 'dbos-pydantic-ai[console]'."
        )
        raise typer.Exit(code=2) from None
    from pydantic_ai.exceptions import UserError

    try:
        # Bound to loopback, accept only loopback Host headers: a DNS-rebinding page cannot reach the API.
        allowed = [*LOOPBACK_HOSTS, "[::1]", host] if loopback else None
        web_app = create_app(
            database_url,
            token=token,
            allowed_hosts=allowed,
            max_live_readers=max_live_readers,
            trust_pickle=trust_pickle,
            trace_url=trace_url,
        )
    except UserError as error:
        error_console.print(f"[bold red]Error:[/] {error}")
        raise typer.Exit(code=2) from None
    shown_host = f"[{host}]" if ":" in host else host
    console.print(f"dbos-pydantic-ai console on http://{shown_host}:{port}/" + ("?token=..." if token else ""))
    uvicorn.run(web_app, host=host, port=port, log_level="warning")


def main() -> None:
    """Entry point of the `dbos-pydantic-ai` console script."""
    app()
