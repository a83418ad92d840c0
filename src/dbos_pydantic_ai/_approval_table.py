"""The approval decisions table: one row per tool call and wait, the arbiter between humans and the timeout.

Its primary key (run, wait, tool call id) admits one row per call: a human's decision (`approve`, `deny`, `result`)
or the run's own `timed_out`. Whoever inserts first wins. Both sides use this module: the run in a worker
(`_approval_wait.py`) and the deciding side in any process (`approvals.py`).
"""

from __future__ import annotations

import weakref
from typing import Any

import sqlalchemy as sa

from ._compat import LaunchedSystemDatabase, launched_system_database
from .names import DECISIONS_BY_TIME_INDEX, DECISIONS_TABLE

__all__ = ["TIMED_OUT", "create_decisions_table", "decisions_table", "launched_decisions", "wait_rows"]

TIMED_OUT = "timed_out"
"""The decision the run records for a call nobody decided before the deadline."""


def decisions_table(schema: str | None) -> sa.Table:
    table = sa.Table(
        DECISIONS_TABLE,
        sa.MetaData(schema=schema),
        sa.Column("workflow_id", sa.Text, primary_key=True),
        sa.Column("wait_id", sa.Integer, primary_key=True),
        sa.Column("tool_call_id", sa.Text, primary_key=True),
        sa.Column("decision", sa.Text, nullable=False),  # approve, deny, result or timed_out
        sa.Column("args_digest", sa.Text, nullable=False),
        sa.Column("decided_at_epoch_ms", sa.BigInteger, nullable=False),
    )
    sa.Index(DECISIONS_BY_TIME_INDEX, table.c.decided_at_epoch_ms)
    return table


def create_decisions_table(engine: sa.Engine, table: sa.Table) -> None:
    try:
        with engine.begin() as connection:
            table.create(connection, checkfirst=True)  # with its index
    except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
        # Another process created it at the same time; anything else fails on first use.
        pass
    for index in table.indexes:  # a table created by an earlier version has no index yet
        try:
            with engine.begin() as connection:
                index.create(connection, checkfirst=True)
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
            pass


_launched_tables: weakref.WeakKeyDictionary[Any, sa.Table] = weakref.WeakKeyDictionary()


def launched_decisions() -> tuple[LaunchedSystemDatabase, sa.Table]:
    """The launched DBOS's system database and the decisions table there (created at first use)."""
    sys_db = launched_system_database()
    table = _launched_tables.get(sys_db.key)
    if table is None:
        table = decisions_table(sys_db.schema)
        create_decisions_table(sys_db.engine, table)
        _launched_tables[sys_db.key] = table
    return sys_db, table


def _row_dict(row: Any) -> dict[str, Any]:
    return {"decision": row.decision, "args_digest": row.args_digest, "decided_at_epoch_ms": row.decided_at_epoch_ms}


def wait_rows(connection: sa.Connection, table: sa.Table, workflow_id: str, wait_id: int) -> dict[str, dict[str, Any]]:
    """Every decision recorded for one wait, by tool call id."""
    rows = connection.execute(
        sa.select(table.c.tool_call_id, table.c.decision, table.c.args_digest, table.c.decided_at_epoch_ms).where(
            table.c.workflow_id == workflow_id, table.c.wait_id == wait_id
        )
    )
    return {row.tool_call_id: _row_dict(row) for row in rows}
