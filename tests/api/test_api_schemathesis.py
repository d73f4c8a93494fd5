"""Property-based tests of the REST API from its own OpenAPI document (schemathesis).

Every operation gets generated requests, authenticated as the operation declares (an agent's
access token, or an admin operator's token), sent over real HTTP to a server on 127.0.0.1. No
response may be a server error, and every response must match what the document promises
(status codes, content types, bodies). The one 5xx the API documents, 502 for an upstream that
failed after policy allowed the call, is accepted when the body says exactly that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from conftest import Harness, _require_pg, fresh_pg_url
from interlock._internal.server import create_app

WF = "support-triage"


class _Server:
    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Live:
    def __init__(self, harness: Harness, url: str) -> None:
        self.url = url
        self.harness = harness
        _, admin = harness.il.operators.create(
            "fuzz-admin", roles=["admin", "owner", "approver", "auditor"], workflows=None, actor="test"
        )
        self.operator = {"Authorization": f"Bearer {admin}"}
        self.agent = {"Authorization": f"Bearer {harness.tokens['triage-bot']}"}
        self.run_id = harness.run()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'interlock.db'}"])
    else:
        _require_pg()  # skips with the shared notice, or fails when PostgreSQL is required
        urls = fresh_pg_url()
    db_url = next(urls)
    harness = Harness(db_url)
    try:
        with _Server(create_app(interlock=harness.il)) as url:
            yield Live(harness, url)
    finally:
        harness.close()
        for _ in urls:  # drops the PostgreSQL schema
            pass


def _document() -> dict[str, Any]:
    # Building the app does no work (no database, no manifest), so the document is known at
    # collection time and each operation becomes its own test.
    from interlock import Settings

    return create_app(Settings(database={"url": "sqlite://"})).openapi()  # type: ignore[arg-type]


SCHEMA = schemathesis.openapi.from_dict(_document())
OPERATIONS = [(op.method.upper(), op.path) for op in (r.ok() for r in SCHEMA.get_all_operations())]


def _auth(operation: Any, live: Live) -> dict[str, str]:
    schemes = {name for requirement in operation.definition.raw.get("security", []) for name in requirement}
    if "agentToken" in schemes:
        return live.agent
    if "operatorToken" in schemes:
        return live.operator
    return {}


# Operations whose bodies are judged beyond the OpenAPI schema: an action's arguments against
# the tool's own schema, a new agent's environment against the manifest, a work package's tools
# and argument bounds against the workflow, a rollout's candidate manifest, a token request's `resource` against this server's
# resources (RFC 8707 invalid_target). A schema-valid request may rightly be refused there.
_SEMANTIC_422 = {
    ("POST", "/v1/runs/{run_id}/actions"),
    ("POST", "/v1/agents"),
    ("POST", "/v1/packages"),
    ("POST", "/v1/workflows/{name}/rollout"),
    ("POST", "/oauth/token"),
}
_FUZZ = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_server_errors_and_responses_match_the_document(live: Live, method: str, path: str) -> None:
    operation = SCHEMA[path][method]
    headers = _auth(operation, live)

    def send(case: Any, excluded: list[Any]) -> None:
        # Half the generated run ids and workflow names are swapped for real ones, so requests
        # get past the 404 and into the pipeline and the workflow routes.
        params = case.path_parameters or {}
        if "run_id" in params and len(str(params["run_id"])) % 2 == 0:
            params["run_id"] = live.run_id
        if "name" in params and len(str(params["name"])) % 2 == 0:
            params["name"] = WF
        response = case.call(base_url=live.url, headers=headers)
        if response.status_code >= 500:
            upstream = response.status_code == 502 and response.json()["error"]["code"] == "upstream_error"
            assert upstream, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
            )
        case.validate_response(response, excluded_checks=[not_a_server_error, *excluded])

    positive_excluded = [positive_data_acceptance] if (method, path) in _SEMANTIC_422 else []

    @_FUZZ
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    def valid_requests(case: Any) -> None:
        send(case, positive_excluded)

    # Invalid requests must never be a server error and must answer as documented. Whether each
    # one is rejected is not asserted: the test puts the token back on requests generated without
    # one, and a repeated query parameter is read as its last value.
    @_FUZZ
    @given(case=operation.as_strategy(GenerationMode.NEGATIVE))
    def invalid_requests(case: Any) -> None:
        send(case, [negative_data_rejection, positive_data_acceptance])

    valid_requests()
    if (
        len(operation.path_parameters)
        or len(operation.query)
        or len(operation.headers)
        or len(operation.body)
    ):
        invalid_requests()  # an operation without inputs has no invalid request to make


def test_openapi_declares_both_token_kinds(live: Live) -> None:
    doc = httpx.get(f"{live.url}/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["agentToken"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schemes["agentToken"]["description"],
    }
    assert schemes["operatorToken"]["scheme"] == "bearer"
    ops = doc["paths"]
    assert ops["/v1/runs/{run_id}/actions"]["post"]["security"] == [{"agentToken": []}]
    assert ops["/v1/workflows"]["get"]["security"] == [{"operatorToken": []}]
    assert {"202", "403", "409", "422", "429", "502"} <= set(
        ops["/v1/runs/{run_id}/actions"]["post"]["responses"]
    )
