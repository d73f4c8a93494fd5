"""The per-action routes answered before FastAPI (``api/hot_routes.py``): the ordinary request is
served by the lean path, every other one by the FastAPI route, and a client cannot tell them
apart: same statuses, error shapes, headers and bodies, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Harness
from interlock._internal.api.app import InterlockApi
from interlock._internal.api.hot_routes import ACTIONS, HotRoutes, _parse
from interlock._internal.api.schemas import ActionRequest
from interlock._internal.server import create_app
from servers import LiveServer

JSON = {"content-type": "application/json"}
# A media type the route accepts (RFC 6839 structured suffix) and the lean path leaves to it.
VENDOR_JSON = {"content-type": "application/vnd.interlock+json"}


class Served:
    """A live server whose lean path records each request it handed to the FastAPI route."""

    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.app = create_app(interlock=harness.il)
        assert isinstance(self.app, InterlockApi)
        assert self.app.hot is not None
        self.handed_over: list[str] = []
        hot = self.app.hot
        original = hot.serve

        async def serve(
            match: tuple[str, str],
            scope: dict[str, Any],
            receive: Callable[[], Awaitable[Any]],
            send: Callable[[Any], Awaitable[None]],
            *,
            fallback: Callable[..., Awaitable[None]],
        ) -> None:
            async def recording(*args: Any) -> None:
                self.handed_over.append(scope["path"])
                await fallback(*args)

            await original(match, scope, receive, send, fallback=recording)

        hot.serve = serve  # type: ignore[method-assign]
        self.http: httpx.Client

    def agent(self, agent: str = "triage-bot", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.h.tokens[agent]}", **extra}

    def start_run(self) -> str:
        r = self.http.post("/v1/runs", headers=self.agent(), json={})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def post(self, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
        content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
        return self.http.post(path, headers=headers, content=content)

    def lean(self, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
        """POST that the lean path must serve itself."""
        before = len(self.handed_over)
        r = self.post(path, body, headers)
        assert self.handed_over[before:] == [], f"handed to the route: {r.status_code} {r.text}"
        return r

    def routed(self, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
        """POST that the lean path must hand to the FastAPI route."""
        before = len(self.handed_over)
        r = self.post(path, body, headers)
        assert self.handed_over[before:] == [path], f"served lean: {r.status_code} {r.text}"
        return r


@pytest.fixture
def served(db_url: str) -> Iterator[Served]:
    harness = Harness(db_url)
    s = Served(harness)
    with LiveServer(s.app) as url, httpx.Client(base_url=url, timeout=30) as client:
        s.http = client
        yield s
    harness.close()


def search(query: str) -> dict[str, Any]:
    return {"tool": "tickets.search", "arguments": {"query": query}}


def error_of(r: httpx.Response, code: str) -> dict[str, Any]:
    body = r.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return dict(body["error"])


def same_shape(a: Any, b: Any) -> bool:
    """Same keys and value types all the way down (ids and times differ between two actions)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_shape(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_shape(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b)


def test_an_ordinary_action_is_served_lean_and_answers_as_the_route(served: Served) -> None:
    run = served.start_run()
    path = f"/v1/runs/{run}/actions"
    lean = served.lean(path, search("refund"), served.agent(**JSON))
    routed = served.routed(path, search("refund"), served.agent(**VENDOR_JSON))
    assert lean.status_code == routed.status_code == 200
    assert lean.headers["content-type"] == routed.headers["content-type"] == "application/json"
    assert int(lean.headers["content-length"]) == len(lean.content)
    assert lean.json()["status"] == routed.json()["status"] == "executed"
    assert same_shape(lean.json(), routed.json())
    # Outcomes that are not 2xx carry the same envelope either way.
    denied = {"tool": "customers.delete", "arguments": {"customer_id": "C-1001"}}
    lean = served.lean(path, denied, served.agent(**JSON))
    routed = served.routed(path, denied, served.agent(**VENDOR_JSON))
    assert lean.status_code == routed.status_code == 403
    error_of(lean, "denied")
    assert same_shape(lean.json(), routed.json())
    bad = {"tool": "tickets.search", "arguments": {"query": "x", "nope": 1}}
    lean = served.lean(path, bad, served.agent(**JSON))
    routed = served.routed(path, bad, served.agent(**VENDOR_JSON))
    assert lean.status_code == routed.status_code == 422
    assert error_of(lean, "invalid_arguments")["field"] == error_of(routed, "invalid_arguments")["field"]


def test_idempotency_key_by_header_or_body_on_the_lean_path(served: Served) -> None:
    run = served.start_run()
    path = f"/v1/runs/{run}/actions"
    first = served.lean(path, search("once"), served.agent(**JSON, **{"Idempotency-Key": "k-1"}))
    again = served.lean(path, {**search("once"), "idempotency_key": "k-1"}, served.agent(**JSON))
    both = served.lean(
        path, {**search("once"), "idempotency_key": "k-1"}, served.agent(**JSON, **{"Idempotency-Key": "k-1"})
    )
    assert first.status_code == again.status_code == both.status_code == 200
    assert first.json()["replayed"] is False
    assert again.json()["replayed"] is both.json()["replayed"] is True
    assert again.json()["step_id"] == both.json()["step_id"] == first.json()["step_id"]
    reused = served.lean(path, {**search("other"), "idempotency_key": "k-1"}, served.agent(**JSON))
    assert reused.status_code == 409
    error_of(reused, "idempotency_key_reused")
    assert "action" not in reused.json()
    # What the route's parameters refuse is left to the route, which says why.
    clash = served.routed(
        path, {**search("once"), "idempotency_key": "a"}, served.agent(**JSON, **{"Idempotency-Key": "b"})
    )
    assert clash.status_code == 422
    assert error_of(clash, "invalid_arguments")["field"] == "idempotency_key"
    for key in ("", "k" * 201):
        r = served.routed(path, search("once"), served.agent(**JSON, **{"Idempotency-Key": key}))
        assert r.status_code == 422, key
        assert error_of(r, "invalid_request")["field"] == "Idempotency-Key"


def test_authentication_errors_are_the_routes(served: Served) -> None:
    run = served.start_run()
    path = f"/v1/runs/{run}/actions"
    _, operator = served.h.il.operators.create("ops", roles=["admin"], workflows=None, actor="test")
    cases = [
        ({}, "unauthenticated"),
        ({"Authorization": "Basic abc"}, "unauthenticated"),
        ({"Authorization": "Bearer"}, "unauthenticated"),
        ({"Authorization": f"Bearer {operator}"}, "wrong_token_type"),
        ({"Authorization": "Bearer not-a-jwt"}, "token_invalid"),
    ]
    for headers, code in cases:
        r = served.routed(path, search("x"), {**headers, **JSON})
        assert r.status_code == 401, (headers, r.text)
        error_of(r, code)
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="interlock", resource_metadata="'), challenge
        assert ("error=" in challenge) is (code != "unauthenticated")
    # Refused inside the pipeline (the agent was revoked after its token was issued): the lean
    # path answers, with the same challenge.
    served.h.il.agents.revoke("triage-bot", actor="test", reason="leaked")
    r = served.lean(path, search("x"), served.agent(**JSON))
    assert r.status_code == 401
    error_of(r, "agent_revoked")
    assert r.headers["www-authenticate"].endswith('error="invalid_token"')
    assert "/.well-known/oauth-protected-resource/v1" in r.headers["www-authenticate"]


def test_an_unknown_run_is_404_and_counted(served: Served) -> None:
    r = served.lean("/v1/runs/run_nope/actions", search("x"), served.agent(**JSON))
    assert r.status_code == 404
    error_of(r, "unknown_run")
    assert "action" not in r.json()
    metrics = served.http.get("/metrics").text
    counted = {
        s.labels.get("code"): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "interlock_http_action_errors_total"
    }
    assert counted == {"unknown_run": 1}


@pytest.mark.parametrize(
    ("body", "headers", "status", "code", "field"),
    [
        (b'{"tool": "tickets.search", "arguments": {}', JSON, 422, "invalid_request", None),  # cut short
        (b"", JSON, 422, "invalid_request", None),
        (b"[]", JSON, 422, "invalid_request", None),
        ({"arguments": {}}, JSON, 422, "invalid_request", "tool"),
        ({**search("x"), "toool": 1}, JSON, 422, "invalid_request", "toool"),
        ({**search("x"), "confidence": 2}, JSON, 422, "invalid_request", "confidence"),
        ({**search("x"), "evidence": ["a"] * 51}, JSON, 422, "invalid_request", "evidence"),
        ({**search("x"), "reasoning": "a\x00b"}, JSON, 422, "invalid_request", "reasoning"),
        (search("x"), {"content-type": "text/plain"}, 422, "invalid_request", None),
        (search("x"), {}, 422, "invalid_request", None),
        (b"\xff\xfe", JSON, 422, "invalid_request", None),  # read as UTF-16, then not JSON
        (b'{"tool": "\xff"}', JSON, 400, "invalid_request", None),  # not UTF-8
    ],
)
def test_bodies_the_lean_path_does_not_take_get_the_routes_answer(
    served: Served, body: Any, headers: dict[str, str], status: int, code: str, field: str | None
) -> None:
    run = served.start_run()
    path = f"/v1/runs/{run}/actions"
    r = served.routed(path, body, served.agent(**headers))
    assert r.status_code == status, r.text
    error = error_of(r, code)
    if field is not None:
        assert error["field"] == field
    assert served.h.il.get_run(run).steps == 0


def test_json_the_standard_library_reads_and_orjson_does_not(served: Served) -> None:
    run = served.start_run()
    path = f"/v1/runs/{run}/actions"
    # An integer past 64 bits stays exact (orjson would read a float), on the lean path.
    big = b'{"tool": "tickets.search", "arguments": {"query": "q", "limit": 123456789012345678901234567890}}'
    r = served.lean(path, big, served.agent(**JSON))
    assert r.status_code == 422  # the tool's schema bounds limit; the value reached it exact
    assert error_of(r, "invalid_arguments")["field"] == "limit"
    request = _parse(ACTIONS, b"application/json", big)
    assert isinstance(request, ActionRequest)
    assert request.arguments["limit"] == 123456789012345678901234567890
    # NaN is JSON to the standard library only: the route reads it, and refuses it.
    r = served.routed(
        path,
        b'{"tool": "tickets.search", "arguments": {"query": "q"}, "confidence": NaN}',
        served.agent(**JSON),
    )
    assert r.status_code == 422
    assert error_of(r, "invalid_request")["field"] == "confidence"


def test_urls_the_lean_path_does_not_take(served: Served) -> None:
    long_id = "r" * 201
    r = served.http.post(f"/v1/runs/{long_id}/actions", headers=served.agent(**JSON), json=search("x"))
    assert r.status_code == 422
    assert error_of(r, "invalid_request")["field"] == "run_id"
    r = served.http.post("/v1/runs/run%00x/actions", headers=served.agent(**JSON), json=search("x"))
    assert r.status_code == 422
    assert error_of(r, "invalid_request")["field"] == "url"
    run = served.start_run()
    r = served.http.post(f"/v1/runs/{run}/actions?x=%00", headers=served.agent(**JSON), json=search("x"))
    assert r.status_code == 422
    assert error_of(r, "invalid_request")["field"] == "url"
    r = served.http.get(f"/v1/runs/{run}/actions", headers=served.agent())
    assert r.status_code == 405
    error_of(r, "method_not_allowed")
    r = served.http.post(f"/v1/runs/{run}/actions/", headers=served.agent(**JSON), json=search("x"))
    assert r.status_code in (307, 404)


def test_oversized_bodies_are_413_on_the_lean_path(served: Served) -> None:
    run = served.start_run()
    path = f"/v1/runs/{run}/actions"
    big = b'{"tool": "tickets.search", "arguments": {"query": "' + b"x" * 2_000_000 + b'"}}'
    r = served.lean(path, big, served.agent(**JSON))
    assert r.status_code == 413
    assert "1048576" in error_of(r, "body_too_large")["message"]

    def chunks() -> Iterator[bytes]:
        yield b'{"tool": "tickets.search", "arguments": {"query": "'
        for _ in range(20):
            yield b"x" * 100_000
        yield b'"}}'

    before = len(served.handed_over)
    r = served.http.post(path, headers=served.agent(**JSON), content=chunks())
    assert r.status_code == 413
    error_of(r, "body_too_large")
    assert served.handed_over[before:] == []
    # A chunked body within the limit is read whole and served.
    r = served.http.post(
        path,
        headers=served.agent(**JSON),
        content=iter([b'{"tool": "tickets.search", ', b'"arguments": {"query": "q"}}']),
    )
    assert r.status_code == 200, r.text
    assert served.h.il.get_run(run).steps == 1


def test_an_unexpected_failure_is_a_500_without_its_text(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("secret internals at /srv/db")

    run = served.start_run()
    monkeypatch.setattr(served.h.il, "act", boom)
    r = served.lean(f"/v1/runs/{run}/actions", search("x"), served.agent(**JSON))
    assert r.status_code == 500
    error_of(r, "internal_error")
    assert "secret" not in r.text


def test_model_calls_on_the_lean_path(served: Served) -> None:
    run = served.start_run()
    path = f"/v1/runs/{run}/model-calls"
    call = {"model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 300, "cost_usd": 0.002}
    lean = served.lean(path, call, served.agent(**JSON))
    routed = served.routed(path, call, served.agent(**VENDOR_JSON))
    assert lean.status_code == routed.status_code == 200, lean.text
    assert lean.json()["tokens"] == 1500
    assert lean.json()["cost_usd"] == pytest.approx(0.002)
    assert same_shape(lean.json(), routed.json())
    # An Idempotency-Key means nothing to this route, as before.
    r = served.lean(path, call, served.agent(**JSON, **{"Idempotency-Key": ""}))
    assert r.status_code == 200
    r = served.routed(path, {**call, "input_tokens": -1}, served.agent(**JSON))
    assert r.status_code == 422
    assert error_of(r, "invalid_request")["field"] == "input_tokens"
    r = served.routed(path, call, JSON)
    assert r.status_code == 401
    r = served.lean("/v1/runs/run_nope/model-calls", call, served.agent(**JSON))
    assert r.status_code == 404
    error_of(r, "unknown_run")


def test_the_openapi_document_still_describes_both_routes(served: Served) -> None:
    doc = served.http.get("/openapi.json").json()
    action = doc["paths"]["/v1/runs/{run_id}/actions"]["post"]
    assert action["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ActionRequest")
    assert {"200", "202", "401", "403", "404", "409", "422", "429", "502", "504"} <= set(action["responses"])
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in action["parameters"])
    assert action["security"] == [{"agentToken": []}]
    call = doc["paths"]["/v1/runs/{run_id}/model-calls"]["post"]
    assert call["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ModelCall")
    assert call["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ModelCallResult"
    )


def test_match_takes_only_the_two_routes() -> None:
    from interlock._internal.api.deps import ApiMetrics

    hot = HotRoutes(None, ApiMetrics(), max_body_bytes=1024, pipeline_threads=4)  # type: ignore[arg-type]

    def scope(path: str, method: str = "POST", query: bytes = b"", root_path: str = "") -> dict[str, Any]:
        return {"path": path, "method": method, "query_string": query, "root_path": root_path}

    assert hot.match(scope("/v1/runs/r1/actions")) == ("/actions", "r1")
    assert hot.match(scope("/v1/runs/r1/model-calls")) == ("/model-calls", "r1")
    for refused in (
        scope("/v1/runs/r1/actions", "GET"),
        scope("/v1/runs/r1/finish"),
        scope("/v1/runs//actions"),
        scope("/v1/runs/actions"),
        scope("/v1/runs/a/b/actions"),
        scope("/v1/runs/r1/actions/"),
        scope("/v1/runs/" + "r" * 201 + "/actions"),
        scope("/v1/runs/r\x001/actions"),
        scope("/v1/runs/r1/actions", query=b"a=%00"),
        scope("/v1/runs/r1/actions", root_path="/api"),
    ):
        assert hot.match(refused) is None, refused
