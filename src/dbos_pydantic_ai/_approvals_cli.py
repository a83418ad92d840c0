"""`dbos-pydantic-ai approvals ...`: list the calls waiting runs need a decision on, and decide them.

Every command reads the system database from `--database-url` or `DBOS_SYSTEM_DATABASE_URL`, so it
works from any machine that can reach the workers' database. Without `--digest`, a decision uses the
digest of the arguments the command printed, which it read from the pending list a moment before.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from .approvals import PendingApproval

__all__ = ["approvals_app"]

approvals_app = typer.Typer(
    help="Approvals that durable runs wait for (DBOSAgent(..., approvals='wait')): list, approve, deny, deliver.",
    no_args_is_help=True,
)
console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)

DatabaseUrl = Annotated[
    str,
    typer.Option(
        envvar="DBOS_SYSTEM_DATABASE_URL",
        help="The workers' system database: 'sqlite:///file.sqlite' or 'postgresql://...'.",
        show_envvar=True,
    ),
]
Digest = Annotated[
    str | None,
    typer.Option(
        help="The arguments digest (or its first 8+ characters) you decided on, as `approvals list` shows it. "
        "Default: the digest of the arguments printed by this command."
    ),
]


def _fail(message: str, code: int) -> typer.Exit:
    error_console.print(f"[bold red]{'Rejected' if code == 1 else 'Error'}:[/] {message}")
    return typer.Exit(code=code)


def _call_text(pending: PendingApproval) -> str:
    return f"{pending.tool_name}({json.dumps(pending.args, ensure_ascii=False, sort_keys=True)})"


@approvals_app.command("list")
def list_(
    database_url: DatabaseUrl,
    agent: Annotated[str | None, typer.Option(help="Only runs of this DBOSAgent.")] = None,
    run: Annotated[str | None, typer.Option(help="Only this run (workflow id).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the tool calls that waiting runs need a decision on, oldest first."""
    from .approvals import list_pending_approvals

    try:
        pending = list_pending_approvals(agent_name=agent, workflow_id=run, database_url=database_url)
    except Exception as error:
        raise _fail(str(error), 2) from None
    if as_json:
        rows = [
            {
                "workflow_id": p.workflow_id,
                "agent_name": p.agent_name,
                "tool_call_id": p.tool_call_id,
                "tool_name": p.tool_name,
                "kind": p.kind,
                "args": p.args,
                "args_digest": p.args_digest,
                "metadata": p.metadata,
                "requested_at": p.requested_at.isoformat(),
                "deadline": p.deadline.isoformat() if p.deadline else None,
            }
            for p in pending
        ]
        console.print_json(json.dumps(rows, default=str))
        return
    if not pending:
        console.print("No tool calls are waiting for a decision.")
        return
    table = Table(title="Waiting for a decision")
    for column in ("Run", "Agent", "Call", "Kind", "Tool call", "Digest", "Asked (UTC)", "Deadline (UTC)"):
        table.add_column(column, overflow="fold")
    for p in pending:
        table.add_row(
            p.workflow_id,
            p.agent_name,
            p.tool_call_id,
            p.kind,
            _call_text(p),
            p.args_digest[:12],
            p.requested_at.strftime("%Y-%m-%d %H:%M:%S"),
            p.deadline.strftime("%Y-%m-%d %H:%M:%S") if p.deadline else "none",
        )
    console.print(table)


def _decide(run: str, call: str, digest: str | None, database_url: str, decide: Any, verb: str) -> None:
    """Resolve the digest from the pending list (printing what is decided on), then make the decision."""
    from .approvals import ApprovalRejected, list_pending_approvals

    try:
        pending = next(
            (p for p in list_pending_approvals(workflow_id=run, database_url=database_url) if p.tool_call_id == call),
            None,
        )
        if pending is not None and (digest is None or (len(digest) >= 8 and pending.args_digest.startswith(digest))):
            digest = pending.args_digest
            console.print(f"{verb} {_call_text(pending)} [call {call} of run {run}, digest {digest[:12]}]")
        # Not pending (or another digest): the API names the exact reason and sends nothing.
        decide(digest or "")
    except ApprovalRejected as error:
        raise _fail(str(error), 1) from None
    except Exception as error:
        raise _fail(f"{type(error).__name__}: {error}", 2) from None
    console.print("[green]Sent:[/] the run continues once every pending call of this wait is decided.")


@approvals_app.command()
def approve(
    run: Annotated[str, typer.Argument(help="The run's workflow id.")],
    call: Annotated[str, typer.Argument(help="The tool call id.")],
    database_url: DatabaseUrl,
    digest: Digest = None,
    override_args: Annotated[
        str | None, typer.Option(help="JSON object: run the tool with these arguments instead.")
    ] = None,
) -> None:
    """Approve a pending tool call: the run executes it."""
    from .approvals import approve as approve_call

    try:
        overrides = json.loads(override_args) if override_args is not None else None
    except json.JSONDecodeError as error:
        raise _fail(f"--override-args is not JSON: {error}", 2) from None
    if overrides is not None and not isinstance(overrides, dict):
        raise _fail("--override-args must be a JSON object of arguments.", 2)
    _decide(
        run,
        call,
        digest,
        database_url,
        lambda d: approve_call(run, call, args_digest=d, override_args=overrides, database_url=database_url),
        "Approving",
    )


@approvals_app.command()
def deny(
    run: Annotated[str, typer.Argument(help="The run's workflow id.")],
    call: Annotated[str, typer.Argument(help="The tool call id.")],
    database_url: DatabaseUrl,
    reason: Annotated[str | None, typer.Option(help="Why: the model sees it.")] = None,
    digest: Digest = None,
) -> None:
    """Deny a pending tool call: the model is told, with the reason when given."""
    from .approvals import deny as deny_call

    _decide(
        run,
        call,
        digest,
        database_url,
        lambda d: deny_call(run, call, args_digest=d, reason=reason, database_url=database_url),
        "Denying",
    )


@approvals_app.command()
def deliver(
    run: Annotated[str, typer.Argument(help="The run's workflow id.")],
    call: Annotated[str, typer.Argument(help="The tool call id.")],
    result: Annotated[str, typer.Option(help="The call's result, as JSON (a JSON string for plain text).")],
    database_url: DatabaseUrl,
    digest: Digest = None,
) -> None:
    """Deliver the result of a call deferred with CallDeferred (kind 'external' or 'question')."""
    from .approvals import deliver_result

    try:
        value = json.loads(result)
    except json.JSONDecodeError as error:
        raise _fail(f"--result is not JSON: {error}", 2) from None
    _decide(
        run,
        call,
        digest,
        database_url,
        lambda d: deliver_result(run, call, args_digest=d, result=value, database_url=database_url),
        "Delivering the result of",
    )
