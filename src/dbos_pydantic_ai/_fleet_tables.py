"""The fleet's two tables, in the DBOS system database: workers (heartbeats) and takeovers.

Written by workers (`fleet.py`), read by the console and the CLI. Times are seconds since the epoch by the
*database's* clock (`db_now`), so workers on machines whose clocks disagree still agree on who is silent.
"""

from __future__ import annotations

import sqlalchemy as sa

from .names import TAKEOVERS_TABLE, WORKERS_TABLE

__all__ = [
    "ALIVE",
    "DEAD",
    "STOPPED",
    "FleetTables",
    "create_fleet_tables",
    "db_now",
    "fleet_tables",
]

ALIVE = "alive"
"""The worker holds its executor id and heartbeats."""
STOPPED = "stopped"
"""The worker stopped on purpose (SIGTERM) and handed its unfinished runs back to their queues."""
DEAD = "dead"
"""Another worker found it silent for longer than `dead_after` and took over its runs."""


class FleetTables:
    """The two tables, bound to one schema (`dbos` on PostgreSQL by default, none on SQLite)."""

    def __init__(self, schema: str | None) -> None:
        metadata = sa.MetaData(schema=schema)
        self.workers = sa.Table(
            WORKERS_TABLE,
            metadata,
            sa.Column("executor_id", sa.Text, primary_key=True),
            sa.Column("app_version", sa.Text, nullable=False),
            sa.Column("incarnation", sa.Text, nullable=False),  # a new uuid each time a process takes the id
            sa.Column("state", sa.Text, nullable=False),  # ALIVE, STOPPED or DEAD
            sa.Column("hostname", sa.Text, nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("queues", sa.Text, nullable=False),  # comma-separated names the worker listens to
            sa.Column("dead_after", sa.Float, nullable=False),  # its own setting, seconds
            sa.Column("started_at", sa.Float, nullable=False),
            sa.Column("heartbeat_at", sa.Float, nullable=False),
            sa.Column("stopped_at", sa.Float, nullable=True),
            sa.Column("taken_over_by", sa.Text, nullable=True),
            sa.Column("taken_over_at", sa.Float, nullable=True),
        )
        self.takeovers = sa.Table(
            TAKEOVERS_TABLE,
            metadata,
            sa.Column("workflow_id", sa.Text, primary_key=True),
            sa.Column("from_executor_id", sa.Text, primary_key=True),
            sa.Column("by_executor_id", sa.Text, nullable=False),
            sa.Column("taken_at", sa.Float, nullable=False),
        )


def fleet_tables(schema: str | None) -> FleetTables:
    return FleetTables(schema)


def create_fleet_tables(engine: sa.Engine, tables: FleetTables) -> None:
    """Create the tables (and, on PostgreSQL, their schema) if they do not exist yet."""
    schema = tables.workers.schema
    for table in (tables.workers, tables.takeovers):
        try:
            with engine.begin() as connection:
                if schema is not None and engine.dialect.name == "postgresql":
                    connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                table.create(connection, checkfirst=True)
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
            # Another worker created it at the same moment; anything else fails on first use.
            pass


def db_now(engine: sa.Engine) -> sa.ColumnElement[float]:
    """The database's clock, in seconds since the epoch, as an SQL expression."""
    if engine.dialect.name == "postgresql":
        return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float)
    return sa.cast((sa.func.julianday("now") - 2440587.5) * 86400.0, sa.Float)
