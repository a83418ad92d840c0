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
) -> None:
    """Kill a durable agent's worker with SIGKILL mid-run, relaunch it, and show that nothing finished is redone."""
    from .demo import DemoError, DemoOptions, run_demo
    from .exceptions import DatabaseUnreachableError

    options = DemoOptions(model=model, database_url=database_url, workdir=workdir, keep=keep)
    try:
        result = run_demo(options, console)
    except (DemoError, DatabaseUnreachableError) as error:
        error_console.print(f"[bold red]Error:[/] {error}")
        raise typer.Exit(code=2) from None
    if not result.ok:
        raise typer.Exit(code=1)


def main() -> None:
    """Entry point of the `dbos-pydantic-ai` console script."""
    app()
