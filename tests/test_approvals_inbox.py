"""`ApprovalInbox`: the decision side on one connection kept open (for a console, a bot, a service)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from dbos_pydantic_ai import ApprovalInbox, ApprovalRejected
from test_approvals import Scripted, finish, pending_calls, refund_agent, start


def backend_connections(database_url: str) -> int:
    """Connections to the test's PostgreSQL database, this counting one excluded."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return int(connection.execute(sa.text(query)).scalar() or 0)
    finally:
        engine.dispose()


async def test_an_inbox_decides_several_runs_on_one_connection_and_closes_it(
    agent_name: str, launch_dbos: Callable[[], None], database_url: str
) -> None:
    executed: list[int] = []
    # Two agents: a Scripted model answers by its own request count, so each serves one run.
    agents = {
        f"wf-inbox-{index}": refund_agent(
            f"{agent_name}_{index}", Scripted([("refund", {"amount": 10}, "c1")]), executed
        )
        for index in (1, 2)
    }
    launch_dbos()
    tasks = {workflow_id: start(durable, "async", workflow_id) for workflow_id, durable in agents.items()}
    for workflow_id, task in tasks.items():
        await pending_calls(workflow_id, 1, task)
    postgres = database_url.startswith("postgresql")
    before = backend_connections(database_url) if postgres else 0

    inbox = await asyncio.to_thread(ApprovalInbox, database_url)
    with inbox:
        pending = await asyncio.to_thread(inbox.list_pending)
        assert sorted(p.workflow_id for p in pending) == ["wf-inbox-1", "wf-inbox-2"]
        for call in pending:
            await asyncio.to_thread(inbox.approve, call.workflow_id, call.tool_call_id, args_digest=call.args_digest)
        with pytest.raises(ApprovalRejected, match="already decided"):
            await asyncio.to_thread(
                inbox.approve, pending[0].workflow_id, pending[0].tool_call_id, args_digest=pending[0].args_digest
            )
        if postgres:
            assert backend_connections(database_url) > before  # it keeps its connection between calls
    for task in tasks.values():
        assert (await finish(task)).output == "refund: refunded 10"
    assert executed == [10, 10]
    if postgres:
        assert backend_connections(database_url) <= before  # closed with the inbox


async def test_an_inbox_in_the_worker_uses_the_launched_dbos(agent_name: str, launch_dbos: Callable[[], None]) -> None:
    model = Scripted([("refund", {"amount": 5}, "c1")])
    executed: list[int] = []
    durable = refund_agent(agent_name, model, executed)
    launch_dbos()
    task = start(durable, "async", "wf-inbox-local")
    [call] = await pending_calls("wf-inbox-local", 1, task)
    with ApprovalInbox() as inbox:
        await asyncio.to_thread(inbox.deny, call.workflow_id, call.tool_call_id, args_digest=call.args_digest)
    assert "denied" in (await finish(task)).output.lower()
    assert executed == []
