"""Readers of the system database fail clearly: bad `read_events()` arguments at once, a missing SQLite file
without creating it, and an unreachable server with its real cause (connection refused), for `read_events`,
`tail` and `console`. The missing-role case of `dbos_config(check=True)` is in test_config.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from dbos_pydantic_ai import read_events
from dbos_pydantic_ai.cli import app
from dbos_pydantic_ai.exceptions import DatabaseUnreachableError, UserError

POSTGRES_SERVER_URL = os.environ.get("DBOS_PAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/app"  # nothing listens on port 1


def postgres_server() -> str:
    engine = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return POSTGRES_SERVER_URL
    except Exception as error:
        pytest.skip(f"PostgreSQL at {POSTGRES_SERVER_URL} is not reachable: {error}")
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"from_offset": -5}, r"from_offset=-5.*int >= 0"),
        ({"from_offset": "abc"}, r"from_offset='abc'.*int >= 0"),
        ({"from_offset": 2.5}, r"from_offset=2\.5"),
        ({"from_offset": True}, r"from_offset=True"),
        ({"polling_interval_sec": 0}, r"polling_interval_sec=0.*>= 0\.001"),
        ({"polling_interval_sec": float("nan")}, r"polling_interval_sec=nan"),
    ],
)
def test_bad_read_events_arguments_fail_at_the_call(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    """Checked when read_events() is called, before any database is opened (the URL here does not exist)."""
    with pytest.raises(UserError, match=message):
        read_events("wf-1", database_url=f"sqlite:///{tmp_path / 'none.sqlite'}", **kwargs)
    with pytest.raises(UserError, match="workflow id"):
        read_events("", database_url=f"sqlite:///{tmp_path / 'none.sqlite'}")
    assert not (tmp_path / "none.sqlite").exists()


async def first_event(**kwargs: Any) -> Any:
    return await anext(read_events("wf-1", **kwargs))


def test_read_events_on_a_missing_sqlite_file_does_not_create_it(tmp_path: Path) -> None:
    typo = tmp_path / "typo.sqlite"
    with pytest.raises(DatabaseUnreachableError, match="the file does not exist"):
        asyncio.run(first_event(database_url=f"sqlite:///{typo}"))
    assert not typo.exists()


def test_read_events_on_an_unreachable_server_says_connection_refused() -> None:
    with pytest.raises(DatabaseUnreachableError, match=r"(?i)Cannot reach PostgreSQL.*connection refused") as caught:
        asyncio.run(first_event(database_url=UNREACHABLE))
    assert "No DBOS system database" not in str(caught.value)


def test_tail_on_a_missing_sqlite_file_does_not_create_it(tmp_path: Path) -> None:
    typo = tmp_path / "typo.sqlite"
    result = CliRunner().invoke(app, ["tail", "wf-1", "--database-url", f"sqlite:///{typo}"])
    assert result.exit_code == 2
    assert "the file does not exist" in result.output and "Traceback" not in result.output
    assert not typo.exists()


@pytest.mark.parametrize("command", ["tail", "console"])
def test_tail_and_console_on_an_unreachable_server_say_connection_refused(command: str) -> None:
    args = ["tail", "wf-1", "--database-url", UNREACHABLE] if command == "tail" else ["console", "--database-url"]
    if command == "console":
        args.append(UNREACHABLE)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "Connection refused" in output and "Cannot reach PostgreSQL" in output, output
    assert "No DBOS system database" not in output


def test_console_names_a_missing_postgres_database_and_one_without_dbos_tables() -> None:
    server = postgres_server()
    missing = CliRunner().invoke(app, ["console", "--database-url", f"{server}/dbos_pai_no_such_db_7f3a"])
    assert missing.exit_code == 2
    assert "the database 'dbos_pai_no_such_db_7f3a' does not exist" in " ".join(missing.output.split())
    empty = CliRunner().invoke(app, ["console", "--database-url", f"{server}/postgres"])  # a database, not DBOS's
    assert empty.exit_code == 2
    assert "No DBOS system database" in empty.output and "Cannot reach" not in empty.output


@pytest.mark.parametrize("surface", ["python", "cli"])
def test_approvals_on_an_unreachable_server_say_connection_refused(surface: str, tmp_path: Path) -> None:
    from dbos_pydantic_ai import list_pending_approvals

    if surface == "python":
        with pytest.raises(UserError) as caught:
            list_pending_approvals(database_url=UNREACHABLE)
        output = str(caught.value)
    else:
        result = CliRunner().invoke(app, ["approvals", "list", "--database-url", UNREACHABLE])
        assert result.exit_code != 0
        output = " ".join(result.output.split())
    assert "Connection refused" in output and "Cannot reach PostgreSQL" in output, output
    assert "No DBOS system database" not in output

    typo = tmp_path / "typo.sqlite"
    with pytest.raises(UserError, match="the file does not exist"):
        list_pending_approvals(database_url=f"sqlite:///{typo}")
    assert not typo.exists()
