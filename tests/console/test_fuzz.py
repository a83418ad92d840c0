"""The console API's OpenAPI schema fuzzed with schemathesis: no input makes it answer 500 or crash.

Runs against a database filled by real durable runs (`console_env`, SQLite and PostgreSQL). Random
workflow ids match no run and answer 404 or 422; so the fuzzer also draws the ids of real runs, seeded
for it: a run waiting for approval, a finished one, one that gave up during an outage (the actions may
cancel, resume, fork, continue and decide them), plus the module's filled runs for the read-only
operations (and the finished ones only for the live tail, which follows a running run until it ends).
Each operation taking a run id must answer something other than 404/422 at least once. The last test
checks that the filled runs are untouched afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from console_support import ConsoleEnv
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.schemas import OpenApiSchema

from dbos_pydantic_ai.console import create_app

# schemathesis' strategies use `random` inside hypothesis, which hypothesis warns about.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")


@pytest.fixture(scope="module")
def console_app(console_env: ConsoleEnv) -> Iterator[FastAPI]:
    yield create_app(console_env.database_url)


@pytest.fixture(scope="module")
def api_schema(console_app: FastAPI) -> OpenApiSchema:
    return schemathesis.openapi.from_asgi("/api/openapi.json", console_app)


@pytest.fixture(scope="module")
def seeded(console_env: ConsoleEnv) -> dict[str, list[str]]:
    """Real run ids for the fuzzer: its own runs for the actions, the filled runs for reading."""
    own = [console_env.start_waiting_run(), console_env.start_gave_up_run()]
    own.append(console_env.runs["succeeded_2"])  # a finished run: actions on it are refused (409) or fork it
    finished = [console_env.runs[key] for key in ("succeeded", "failed", "cancelled", "streamed", "gave_up")]
    return {"act": own, "read": [*finished, console_env.runs["waiting"]], "tail": finished}


OPERATIONS = [
    ("GET", "/api/runs"),
    ("GET", "/api/agents"),
    ("GET", "/api/runs/{workflow_id}"),
    ("GET", "/api/runs/{workflow_id}/events"),
    ("GET", "/api/approvals"),
    ("GET", "/api/compare"),
    ("GET", "/api/workers"),
    ("GET", "/api/queues"),
    ("POST", "/api/runs/{workflow_id}/approvals/{call_id}/approve"),
    ("POST", "/api/runs/{workflow_id}/approvals/{call_id}/deny"),
    ("POST", "/api/runs/{workflow_id}/cancel"),
    ("POST", "/api/runs/{workflow_id}/resume"),
    ("POST", "/api/runs/{workflow_id}/fork"),
    ("POST", "/api/runs/{workflow_id}/continue"),
]


# schemathesis' own pytest plugin (`from_fixture`) does not run on pytest 9: drive each operation's
# hypothesis strategy directly instead.
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_input_makes_the_api_fail(
    api_schema: OpenApiSchema, seeded: dict[str, list[str]], method: str, path: str
) -> None:
    operation = api_schema[path][method]
    statuses: list[int] = []
    ids = seeded["act"] if method == "POST" else seeded["tail"] if path.endswith("/events") else seeded["read"]

    @given(case=operation.as_strategy(), real=st.one_of(st.none(), st.sampled_from(ids)), other=st.sampled_from(ids))
    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def check(case: schemathesis.Case, real: str | None, other: str) -> None:
        if real is not None and "{workflow_id}" in path:
            case.path_parameters = {**(case.path_parameters or {}), "workflow_id": real}
        elif real is not None and path == "/api/compare":
            case.query = {**(case.query or {}), "left": real, "right": other}
        response = case.call()
        statuses.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, response.text

    check()
    assert statuses  # hypothesis made requests
    if "{workflow_id}" in path or path == "/api/compare":
        # Real ids reached the run's own logic: an answer, or a refusal about that run (not 404/422 only).
        assert set(statuses) - {404, 422}, statuses
    else:
        assert 200 in statuses  # valid inputs reached the database, not only the validation


def test_the_schema_covers_every_api_operation(api_schema: OpenApiSchema) -> None:
    operations = {(op.method.upper(), op.path) for op in (r.ok() for r in api_schema.get_all_operations())}
    assert operations == set(OPERATIONS)


def test_the_filled_runs_are_untouched_by_the_fuzzing(console_env: ConsoleEnv) -> None:
    assert console_env.status(console_env.runs["waiting"]) == "PENDING"
    assert console_env.status(console_env.runs["succeeded"]) == "SUCCESS"
    assert console_env.status(console_env.runs["cancelled"]) == "CANCELLED"
