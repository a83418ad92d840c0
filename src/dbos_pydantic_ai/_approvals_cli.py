"""`dbos-pydantic-ai approvals ...`: list the calls waiting runs need a decision on, and decide them.

Every command reads the system database from `--database-url` or `DBOS_SYSTEM_DATABASE_URL`, so it
works from any machine that can reach the workers' database. Without `--digest`, a decision uses the
digest of the arguments the command printed, which it read from the pending list a moment before.
A decision takes the call id or a prefix of it that only one call of the run still waiting has (the table
shows short ones: a full id does not fit an 80-column terminal).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._cli_options import DatabaseUrl, TrustPickle

if TYPE_CHECKING:
    from .approvals import PendingApproval

__all__ = ["approvals_app"]

approvals_app = typer.Typer(
    help="Approvals that durable runs wait for (DBOSAgent(..., approvals='wait')): list, approve, deny, deliver.",
    no_args_is_help=True,
)
console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)

Digest = Annotated[
    str | None,
    typer.Option(
        help="The arguments digest (or its first 8+ characters) you decided on, as `approvals list` shows it. "
        "Default: the digest of the arguments printed by this command."
    ),
]


def _fail(message: str, code: int) -> typer.Exit:
    error_console.print(f"[bold red]{'Rejected' if code == 1 else 'Error'}:[/] {escape(message)}")
    return typer.Exit(code=code)


SHORT_CALL_ID = 12  # characters of a call id the table shows, more only where two calls of a run share them


def _call_text(pending: PendingApproval) -> str:
    return f"{pending.tool_name}({json.dumps(pending.args, ensure_ascii=False, sort_keys=True)})"


def short_call_ids(pending: list[PendingApproval]) -> dict[tuple[str, str], str]:
    """The shortest prefix of each call id, from `SHORT_CALL_ID` characters on, that no other call of its run has.

    Keyed by (workflow id, tool call id); a prefix shown here is always accepted by approve/deny/deliver.
    """
    by_run: dict[str, list[str]] = {}
    for p in pending:
        by_run.setdefault(p.workflow_id, []).append(p.tool_call_id)
    short: dict[tuple[str, str], str] = {}
    for run, ids in by_run.items():
        for call in ids:
            length = SHORT_CALL_ID
            while length < len(call) and any(o != call and o.startswith(call[:length]) for o in ids):
                length += 1
            short[(run, call)] = call[:length]
    return short


class AmbiguousCall(Exception):
    """A call id prefix that more than one waiting call of the run starts with."""


def resolve_call(pending: list[PendingApproval], run: str, call: str) -> PendingApproval | None:
    """The waiting call of `run` whose id is `call`, or else the only one whose id starts with `call`.

    None when no waiting call matches (the decision API then names the reason: decided, timed out, no such call).
    """
    calls = [p for p in pending if p.workflow_id == run]
    exact = next((p for p in calls if p.tool_call_id == call), None)
    if exact is not None:
        return exact
    matches = [p for p in calls if p.tool_call_id.startswith(call)]
    if len(matches) > 1:
        listed = "; ".join(f"{p.tool_call_id} {_call_text(p)}" for p in matches)
        raise AmbiguousCall(
            f"{call!r} is the start of {len(matches)} calls waiting in run {run!r}: {listed}. "
            "Give more characters of the call id."
        )
    return matches[0] if matches else None


def _waiting_calls(pending: list[PendingApproval], run: str) -> str:
    """A sentence listing the calls of `run` that still wait, for a message about a call id that matched none."""
    calls = [p for p in pending if p.workflow_id == run]
    if not calls:
        return f"No call of run {run!r} is waiting for a decision."
    return f"Calls of run {run!r} waiting for a decision: " + "; ".join(
        f"{p.tool_call_id} {_call_text(p)}" for p in calls
    )


@approvals_app.command("list")
def list_(
    database_url: DatabaseUrl,
    agent: Annotated[str | None, typer.Option(help="Only runs of this DBOSAgent.")] = None,
    run: Annotated[str | None, typer.Option(help="Only this run (workflow id).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    trust_pickle: TrustPickle = False,
) -> None:
    """List the tool calls that waiting runs need a decision on, oldest first."""
    from .approvals import list_pending_approvals

    try:
        pending = list_pending_approvals(
            agent_name=agent, workflow_id=run, database_url=database_url, trust_pickle=trust_pickle
        )
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
    # Four columns, two lines a call: it fits an 80-column terminal. Ids and arguments are data, not markup.
    table = Table(
        title="Waiting for a decision",
        caption="Call: enough of the call id for approve, deny and deliver; --json shows it whole.",
        caption_justify="left",
    )
    table.add_column("Run / agent", overflow="fold", ratio=1)
    table.add_column("Call / digest", no_wrap=True)
    table.add_column("Tool call / kind", overflow="fold", ratio=1)
    table.add_column("Asked / due (UTC)", no_wrap=True)
    short = short_call_ids(pending)
    for p in pending:
        due = p.deadline.strftime("%Y-%m-%d %H:%M:%S") if p.deadline else "no deadline"
        table.add_row(
            f"{escape(p.workflow_id)}\n[dim]{escape(p.agent_name)}[/]",
            f"{escape(short[(p.workflow_id, p.tool_call_id)])}\n[dim]{p.args_digest[:12]}[/]",
            f"{escape(_call_text(p))}\n[dim]{p.kind}[/]",
            f"{p.requested_at.strftime('%Y-%m-%d %H:%M:%S')}\n[dim]{due}[/]",
        )
    console.print(table)


def _decide(run: str, call: str, digest: str | None, database_url: str, decide: Any, verb: str) -> None:
    """Resolve the call id and the digest from the pending list (printing what is decided on), then decide.

    `decide(call_id, digest)` makes the decision with the full call id.
    """
    from .approvals import ApprovalRejected, list_pending_approvals

    if not call.strip():
        raise _fail("the call id is empty: pass the id (or its start) that `approvals list` shows.", 2)
    waiting: list[PendingApproval] = []
    try:
        waiting = list_pending_approvals(workflow_id=run, database_url=database_url)
        pending = resolve_call(waiting, run, call)
        if pending is not None:
            call = pending.tool_call_id
            if digest is None or (len(digest) >= 8 and pending.args_digest.startswith(digest)):
                digest = pending.args_digest
                what = f"{verb} {_call_text(pending)} [call {call} of run {run}, digest {digest[:12]}]"
                console.print(escape(what))  # ids and arguments are data, not markup
        # Not pending (or another digest): the API names the exact reason and sends nothing.
        decide(call, digest or "")
    except AmbiguousCall as error:
        raise _fail(str(error), 2) from None
    except ApprovalRejected as error:
        matched = any(p.tool_call_id == call for p in waiting)
        raise _fail(str(error) if matched else f"{error} {_waiting_calls(waiting, run)}", 1) from None
    except Exception as error:
        raise _fail(f"{type(error).__name__}: {error}", 2) from None
    console.print("[green]Sent:[/] the run continues once every pending call of this wait is decided.")


@approvals_app.command()
def approve(
    run: Annotated[str, typer.Argument(help="The run's workflow id.")],
    call: Annotated[str, typer.Argument(help="The tool call id, or its start as `approvals list` shows it.")],
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
        lambda c, d: approve_call(run, c, args_digest=d, override_args=overrides, database_url=database_url),
        "Approving",
    )


@approvals_app.command()
def deny(
    run: Annotated[str, typer.Argument(help="The run's workflow id.")],
    call: Annotated[str, typer.Argument(help="The tool call id, or its start as `approvals list` shows it.")],
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
        lambda c, d: deny_call(run, c, args_digest=d, reason=reason, database_url=database_url),
        "Denying",
    )


@approvals_app.command()
def deliver(
    run: Annotated[str, typer.Argument(help="The run's workflow id.")],
    call: Annotated[str, typer.Argument(help="The tool call id, or its start as `approvals list` shows it.")],
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
        lambda c, d: deliver_result(run, c, args_digest=d, result=value, database_url=database_url),
        "Delivering the result of",
    )
