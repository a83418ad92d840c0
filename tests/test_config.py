"""`dbos_config()`: where the database is, SQLite in WAL mode, identity settings, and URLs safe to print."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from dbos import DBOS, DBOSClient, DBOSConfig
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from dbos_pydantic_ai import DBOSAgent, dbos_config
from dbos_pydantic_ai.config import check_database_url, redact_url
from dbos_pydantic_ai.exceptions import DatabaseUnreachableError, UserError
from dbos_pydantic_ai.serializer import JSONSerializer

Launch = Callable[[DBOSConfig], None]


@pytest.fixture
def launch_with() -> Iterator[Launch]:
    """Launch DBOS with a config of the test's making; destroy it afterwards."""
    DBOS.destroy()

    def launch(config: DBOSConfig) -> None:
        DBOS(config=config)
        DBOS.launch()

    yield launch
    DBOS.destroy()


def journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    connection.close()
    return str(mode)


def test_default_database_is_a_wal_sqlite_file_in_the_working_directory(
    agent_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launch_with: Launch
) -> None:
    """Without a URL the database is `sqlite:///{name}.sqlite` here, created in WAL mode, and DBOS uses it.

    (Only SQLite: the default is a SQLite file by definition.)
    """
    monkeypatch.delenv("DBOS_SYSTEM_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)

    config = dbos_config("shop", application_version="test")

    assert config["system_database_url"] == "sqlite:///shop.sqlite"
    database = tmp_path / "shop.sqlite"
    assert journal_mode(database) == "wal"

    durable = DBOSAgent(Agent(TestModel(), name=agent_name))
    launch_with(config)
    durable.run_sync("hi")
    assert journal_mode(database) == "wal"  # DBOS's migrations kept it
    with sqlite3.connect(database) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM workflow_status")]
    connection.close()
    assert names == [f"{agent_name}.run_sync"]


def test_explicit_sqlite_url_is_put_in_wal_mode(tmp_path: Path) -> None:
    """A given SQLite URL is created in WAL mode too, and the URL is kept as given."""
    url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    assert dbos_config("app", database_url=url)["system_database_url"] == url
    assert journal_mode(tmp_path / "app.sqlite") == "wal"


def test_environment_variable_is_honoured(
    agent_name: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launch_with: Launch
) -> None:
    """`DBOS_SYSTEM_DATABASE_URL` picks the database when no URL is passed: runs land there, not in a default file."""
    monkeypatch.setenv("DBOS_SYSTEM_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    config = dbos_config("app", application_version="test")
    assert config["system_database_url"] == database_url

    durable = DBOSAgent(Agent(TestModel(), name=agent_name))
    launch_with(config)
    durable.run_sync("hi")

    client = DBOSClient(system_database_url=database_url, serializer=JSONSerializer())
    try:
        assert [w.name for w in client.list_workflows()] == [f"{agent_name}.run_sync"]
    finally:
        client.destroy()
    assert not (tmp_path / "app.sqlite").exists()


def test_explicit_url_beats_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBOS_SYSTEM_DATABASE_URL", f"sqlite:///{tmp_path / 'from_env.sqlite'}")
    url = f"sqlite:///{tmp_path / 'given.sqlite'}"
    assert dbos_config("app", database_url=url)["system_database_url"] == url
    assert not (tmp_path / "from_env.sqlite").exists()


def test_executor_id_and_application_version_reach_dbos(
    agent_name: str, database_url: str, launch_with: Launch
) -> None:
    """executor_id and application_version are passed to DBOS, which stamps them on every run."""
    config = dbos_config(
        "app",
        database_url=database_url,
        executor_id="worker-7",
        application_version="v42",
        notification_listener_polling_interval_sec=0.05,
    )
    assert (config["executor_id"], config["application_version"]) == ("worker-7", "v42")
    assert config["notification_listener_polling_interval_sec"] == 0.05  # other keys pass through

    durable = DBOSAgent(Agent(TestModel(), name=agent_name))
    launch_with(config)
    durable.run_sync("hi")
    (status,) = DBOS.list_workflows()
    assert (status.executor_id, status.app_version) == ("worker-7", "v42")


def test_identity_keys_are_left_to_dbos_when_not_given(tmp_path: Path) -> None:
    config = dbos_config("app", database_url=f"sqlite:///{tmp_path / 'app.sqlite'}")
    assert "executor_id" not in config
    assert "application_version" not in config


def test_check_false_skips_the_reachability_check() -> None:
    """`check=False` builds the config without connecting (for a database that comes up later)."""
    url = "postgresql://postgres@127.0.0.1:1/app"
    assert dbos_config("app", database_url=url, check=False)["system_database_url"] == url


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://alice:s3cret@db.example.com:5432/app", "postgresql://alice:***@db.example.com:5432/app"),
        ("postgresql+psycopg://alice:p%40ss:word@10.0.0.1/app?sslmode=require", None),
        ("postgresql://alice@db.example.com/app", "postgresql://alice@db.example.com/app"),
        ("postgresql://db.example.com/app", "postgresql://db.example.com/app"),
        ("sqlite:///tmp/app.sqlite", "sqlite:///tmp/app.sqlite"),
    ],
)
def test_redact_url_hides_passwords(url: str, redacted: str | None) -> None:
    """A URL printed in an error or log never shows its password; the rest stays readable."""
    shown = redact_url(url)
    if redacted is not None:
        assert shown == redacted
    assert "s3cret" not in shown
    assert "p%40ss" not in shown
    assert "word" not in shown
    assert "alice" in shown or "alice" not in url


def test_check_refuses_a_missing_role_but_accepts_a_missing_database() -> None:
    """Only a missing database is fine (DBOS creates it); a missing role fails here, not as a raw error at launch."""
    server = os.environ.get("DBOS_PAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
    try:
        check_database_url(f"{server}/postgres")
    except DatabaseUnreachableError as error:
        pytest.skip(f"no PostgreSQL server here: {error}")
    missing_database = f"{server}/dbos_pai_not_created_yet_5e1b"
    assert dbos_config("app", database_url=missing_database)["system_database_url"] == missing_database
    host = sa.make_url(server).set(username="dbos_pai_no_such_role", password=None)
    no_role = host.set(database="dbos_pai_not_created_yet_5e1b").render_as_string(hide_password=False)
    with pytest.raises(DatabaseUnreachableError, match='role "dbos_pai_no_such_role" does not exist'):
        dbos_config("app", database_url=no_role)


# --- Logging: quiet by default --------------------------------------------------------------------------

# A worker process: launches DBOS with dbos_config() (log_level from argv, if any) and runs `quiet.run_sync` under the
# workflow id given. With "crash" its model blocks after saying so (the test kills it); else the run finishes.
WORKER = """
import sys, time
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.messages import ModelResponse, TextPart
from pydantic_ai.models.function import FunctionModel
from dbos_pydantic_ai import DBOSAgent, dbos_config

mode, url, level, run_id = sys.argv[1:5]

def model(messages, info):
    if mode == "crash":
        print("in the model", flush=True)
        time.sleep(600)
    return ModelResponse(parts=[TextPart("done")])

durable = DBOSAgent(Agent(FunctionModel(model), name="quiet"))
options = {} if level == "default" else {"log_level": level}
DBOS(config=dbos_config("quiet_app", database_url=url, application_version="1", executor_id="w1", **options))
DBOS.launch()
with SetWorkflowID(run_id):
    print("output:", durable.run_sync("hi").output, flush=True)
DBOS.destroy()
"""


def worker_command(tmp_path: Path, mode: str, database_url: str, level: str, run_id: str) -> list[str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return [sys.executable, str(script), mode, database_url, level, run_id]


def run_worker(
    tmp_path: Path, mode: str, database_url: str, level: str, run_id: str = "quiet-run"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        worker_command(tmp_path, mode, database_url, level, run_id),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "DBOS_SYSTEM_DATABASE_URL"},
    )


def dbos_lines(stderr: str, level: str) -> list[str]:
    """The lines DBOS's console handler wrote at `level` (its format: `HH:MM:SS [    INFO] (dbos:...) ...`)."""
    return [line for line in stderr.splitlines() if f"[{level:>8}] (dbos:" in line]


def test_dbos_is_quiet_by_default_and_log_level_turns_it_up(database_url: str, tmp_path: Path) -> None:
    """A fresh database: DBOS's migrations and launch log nothing at the default level, a page of INFO at INFO."""
    quiet = run_worker(tmp_path, "run", database_url, "default")
    assert quiet.returncode == 0, quiet.stderr
    assert "output: done" in quiet.stdout
    assert dbos_lines(quiet.stderr, "INFO") == [] and quiet.stderr.strip() == "", quiet.stderr

    loud = run_worker(tmp_path, "run", database_url, "info")  # a level name in any case; this database is migrated
    assert loud.returncode == 0, loud.stderr
    assert dbos_lines(loud.stderr, "INFO"), loud.stderr  # e.g. "Initializing DBOS", the application version


def test_relaunch_warning_is_dropped_at_the_default_level(database_url: str, tmp_path: Path) -> None:
    """A worker killed mid-run, relaunched, starts its run again: DBOS's harmless queue warning is not shown.

    At INFO it is (so this test would see it if the filter stopped matching DBOS's text)."""
    for level, shown in (("INFO", True), ("default", False)):
        env = {k: v for k, v in os.environ.items() if k != "DBOS_SYSTEM_DATABASE_URL"}
        run_id = f"relaunched-{level}"
        crashed = subprocess.Popen(
            worker_command(tmp_path, "crash", database_url, level, run_id),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            assert crashed.stdout is not None and crashed.stdout.readline().strip() == "in the model"
        finally:
            crashed.kill()
            crashed.wait(timeout=30)
        relaunched = run_worker(tmp_path, "run", database_url, level, run_id)
        assert relaunched.returncode == 0 and "output: done" in relaunched.stdout, relaunched.stderr
        assert ("Workflow already exists in queue" in relaunched.stderr) is shown, relaunched.stderr


def test_an_unknown_log_level_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"log_level='LOUD'.*WARNING"):
        dbos_config("app", database_url=f"sqlite:///{tmp_path / 'app.sqlite'}", log_level="LOUD")
