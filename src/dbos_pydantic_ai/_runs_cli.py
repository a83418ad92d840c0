"""`dbos-pydantic-ai runs ...`: look at a run's retry state, and continue a run that gave up during an outage.

Like `approvals`, every command reads the system database from `--database-url` or `DBOS_SYSTEM_DATABASE_URL`, so it
works from any machine that can reach the workers' database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console

from ._cli_options import DatabaseUrl

__all__ = ["runs_app"]

runs_app = typer.Typer(
    help="Durable runs: their model retry state, and continuing one after an outage.", no_args_is_help=True
)
console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)


@runs_app.command("continue")
def continue_(
    workflow_id: Annotated[str, typer.Argument(help="The run's workflow id.")],
    database_url: DatabaseUrl,
) -> None:
    """Continue a run that failed (or was cancelled) while a model request kept failing: rewind it to that request.

    The run keeps its id; what finished before the request is not redone. A worker of the run's application version
    picks it up. Exit code 1 when the run cannot be continued this way.
    """
    from pydantic_ai.exceptions import UserError

    from .config import check_database_url
    from .exceptions import DatabaseUnreachableError
    from .retries import continue_run

    try:
        check_database_url(database_url)
        step = continue_run(workflow_id, database_url=database_url)
    except (UserError, DatabaseUnreachableError) as error:
        error_console.print(f"[bold red]Not continued:[/] {error}")
        raise typer.Exit(code=1) from None
    console.print(f"Run {workflow_id} continues from step {step}, its failed model request.")


@runs_app.command("retry-state")
def retry_state(
    workflow_id: Annotated[str, typer.Argument(help="The run's workflow id.")],
    database_url: DatabaseUrl,
) -> None:
    """Whether a run's model request is waiting to retry: the attempt, the next try and the last error."""
    from dbos import DBOSClient

    from .config import check_database_url
    from .exceptions import DatabaseUnreachableError
    from .names import RETRY_EVENT

    try:
        check_database_url(database_url)
    except DatabaseUnreachableError as error:
        error_console.print(f"[bold red]Error:[/] {error}")
        raise typer.Exit(code=2) from None
    client = DBOSClient(system_database_url=database_url)
    try:
        from ._safe_read import safe_get_event

        state = safe_get_event(client, workflow_id, RETRY_EVENT)  # never unpickled: a pickled one shows as none
    finally:
        client.destroy()
    if not isinstance(state, dict):
        console.print(f"Run {workflow_id}: no model request of it has failed.")
        return
    next_try = state.get("next_try_at")
    when = "" if next_try is None else f", next try at {datetime.fromtimestamp(next_try, tz=UTC).isoformat()}"
    console.print(f"Run {workflow_id}: {state['state']} after attempt {state['attempt']}{when}")
    console.print(f"Last error: {state['last_error']}", markup=False)
