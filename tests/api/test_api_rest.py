"""The REST API over real HTTP on 127.0.0.1, on the reference workflow, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SUPPORT_TRIAGE, Harness
from interlock import ConfigError, ManifestError, StorageError
from interlock._internal.api.errors import status_for
from interlock._internal.api.routes_runs import action_response
from interlock._internal.gateway.models import ActionResult, Decision, Reason
from interlock._internal.server import create_app
from interlock.exceptions import (
    ArgumentsInvalid,
    AuditIntegrityError,
    AuthenticationError,
    ConflictError,
    InterlockError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    TokenScopeError,
    UpstreamError,
)
from servers import LiveServer

WF = "support-triage"


class Api:
    """A running server on the reference workflow, with both agents and an all-roles operator."""

    def __init__(self, harness: Harness, base_url: str) -> None:
        self.h = harness
        self.il = harness.il
        self.http = httpx.Client(base_url=base_url, timeout=30)
        _, self.admin = self.il.operators.create(
            "ops", roles=["admin", "owner", "auditor"], workflows=None, actor="test"
        )

    def operator(self, op_id: str, *roles: str, workflows: list[str] | None = None) -> dict[str, str]:
        _, token = self.il.operators.create(op_id, roles=list(roles), workflows=workflows, actor="test")
        return {"Authorization": f"Bearer {token}"}

    def agent(self, agent: str = "triage-bot") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.h.tokens[agent]}"}

    @property
    def ops(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    def start_run(self, agent: str = "triage-bot") -> str:
        r = self.http.post("/v1/runs", headers=self.agent(agent), json={"trigger": {"ticket": "T-1001"}})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def act(
        self, run_id: str, tool: str, arguments: Any, agent: str = "triage-bot", **extra: Any
    ) -> httpx.Response:
        headers = {**self.agent(agent), **extra.pop("headers", {})}
        body = {"tool": tool, "arguments": arguments, **extra}
        return self.http.post(f"/v1/runs/{run_id}/actions", headers=headers, json=body)


def _serve(harness: Harness) -> Iterator[Api]:
    with LiveServer(create_app(interlock=harness.il)) as url:
        api = Api(harness, url)
        try:
            yield api
        finally:
            api.http.close()
    harness.close()


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    yield from _serve(Harness(db_url))


def refund(amount: float, ticket: str = "T-1002") -> dict[str, Any]:
    return {"ticket_id": ticket, "amount": amount, "currency": "USD", "reason": "late delivery"}


def assert_error_shape(body: dict[str, Any], code: str) -> dict[str, Any]:
    assert set(body) >= {"error"}, body
    error = body["error"]
    assert error["code"] == code, body
    assert isinstance(error["message"], str)
    assert error["message"]
    return dict(error)


# ---- authentication -------------------------------------------------------------------------------


def test_client_credentials_by_form_and_by_basic(api: Api) -> None:
    secret = api.h.secrets["triage-bot"]
    form = {"grant_type": "client_credentials", "client_id": "triage-bot", "client_secret": secret}
    r = api.http.post("/oauth/token", data=form)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 900
    assert r.headers["cache-control"] == "no-store"
    run = api.http.post("/v1/runs", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert run.status_code == 201
    assert run.headers["location"] == f"/v1/runs/{run.json()['id']}"

    basic = base64.b64encode(f"triage-bot:{secret}".encode()).decode()
    r = api.http.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}"}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        (
            {"grant_type": "client_credentials", "client_id": "triage-bot", "client_secret": "ilsk_wrong"},
            401,
            "invalid_client",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "ilsk_x"},
            401,
            "invalid_client",
        ),
        ({"grant_type": "client_credentials"}, 401, "invalid_client"),
        (
            {"grant_type": "password", "client_id": "triage-bot", "client_secret": "x"},
            400,
            "unsupported_grant_type",
        ),
        ({"client_id": "triage-bot", "client_secret": "x"}, 400, "invalid_request"),
    ],
)
def test_token_endpoint_errors_use_oauth_shape(
    api: Api, form: dict[str, str], status: int, error: str
) -> None:
    r = api.http.post("/oauth/token", data=form)
    assert r.status_code == status
    assert r.json()["error"] == error
    assert r.json()["error_description"]
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Basic")


def test_no_token_is_401_with_bearer_challenge(api: Api) -> None:
    run = api.start_run()
    for method, path in (
        ("POST", "/v1/runs"),
        ("POST", f"/v1/runs/{run}/actions"),
        ("GET", "/v1/tools"),
        ("GET", f"/v1/runs/{run}"),
        ("GET", "/v1/workflows"),
        ("GET", "/v1/agents"),
    ):
        r = api.http.request(method, path, json={"tool": "tickets.get", "arguments": {}})
        assert r.status_code == 401, (path, r.text)
        assert_error_shape(r.json(), "unauthenticated")
        # RFC 9728 §5.1: the challenge names the REST API's protected-resource metadata, and
        # RFC 6750 §3.1: no error attribute when no token was presented.
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="interlock", resource_metadata="'), challenge
        assert "error=" not in challenge
        metadata = challenge.split('resource_metadata="', 1)[1].split('"', 1)[0]
        assert metadata.endswith("/.well-known/oauth-protected-resource/v1"), metadata
        described = api.http.get(urlsplit(metadata).path)
        assert described.status_code == 200
        assert described.json()["resource"].endswith("/v1")


def test_wrong_token_type_is_401(api: Api) -> None:
    run = api.start_run()
    r = api.http.post(
        f"/v1/runs/{run}/actions", headers=api.ops, json={"tool": "tickets.get", "arguments": {}}
    )
    assert r.status_code == 401
    assert "operator token" in assert_error_shape(r.json(), "wrong_token_type")["message"]
    r = api.http.get("/v1/workflows", headers=api.agent())
    assert r.status_code == 401
    assert_error_shape(r.json(), "wrong_token_type")
    r = api.http.get("/v1/tools", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401
    assert_error_shape(r.json(), "token_invalid")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert "resource_metadata=" in r.headers["www-authenticate"]


def test_revoked_agent_is_refused_on_its_next_call(api: Api) -> None:
    run = api.start_run()
    r = api.http.post("/v1/agents/triage-bot/revoke", headers=api.ops, json={"reason": "leaked"})
    assert r.status_code == 200
    assert r.json()["status"] == "revoked"
    r = api.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert r.status_code == 401
    assert_error_shape(r.json(), "agent_revoked")


# ---- actions: one status code per outcome -------------------------------------------------------


def test_small_refund_executes_200(api: Api, desk: Any) -> None:
    run = api.start_run()
    r = api.act(
        run, "payments.refund", refund(30), reasoning="late", confidence=0.9, evidence=["https://x/1"]
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "executed"
    assert body["decision"]["decision"] == "allow"
    assert body["decision"]["policy_ids"] == ["allow:small-refunds"]
    assert body["result"]["status"] == "succeeded"
    assert desk.refunds_total() == 30


def test_large_refund_waits_202_with_approval_id(api: Api, desk: Any) -> None:
    run = api.start_run()
    r = api.act(run, "payments.refund", refund(120))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "pending_approval"
    assert body["approval_id"]
    assert body["decision"]["policy_ids"] == ["review:refund-review"]
    assert desk.refunds_total() == 0


def test_refund_above_hard_limit_is_403(api: Api, desk: Any) -> None:
    run = api.start_run()
    r = api.act(run, "payments.refund", refund(900))
    assert r.status_code == 403
    body = r.json()
    error = assert_error_shape(body, "denied")
    assert [x["code"] for x in error["reasons"]] == ["forbidden"]
    assert body["action"]["status"] == "denied"
    assert "forbid:refund-hard-limit" in body["action"]["decision"]["policy_ids"]
    assert desk.refunds_total() == 0


def test_customer_delete_is_403_and_not_listed(api: Api) -> None:
    run = api.start_run()
    r = api.act(run, "customers.delete", {"customer_id": "C-1001"})
    assert r.status_code == 403
    assert r.json()["action"]["decision"]["policy_ids"] == ["forbid:no-deletes"]
    tools = api.http.get("/v1/tools", headers=api.agent()).json()
    names = {t["name"] for t in tools}
    assert "customers.delete" not in names
    assert {"payments.refund", "tickets.get", "emails.send"} <= names


def test_unknown_argument_is_422_naming_it(api: Api, desk: Any) -> None:
    run = api.start_run()
    r = api.act(run, "payments.refund", {**refund(10), "note": "hi"})
    assert r.status_code == 422
    error = assert_error_shape(r.json(), "invalid_arguments")
    assert error["field"] == "note"
    assert "note" in error["message"]
    assert r.json()["action"]["status"] == "invalid"
    assert desk.refunds_total() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tool": "tickets.get", "arguments": {}, "toool": 1}, "toool"),
        ({"tool": "tickets.get", "arguments": {}, "confidence": 2}, "confidence"),
        ({"arguments": {}}, "tool"),
        ({"tool": "tickets.get", "arguments": [1]}, "arguments"),
    ],
)
def test_malformed_request_body_is_422_naming_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    run = api.start_run()
    r = api.http.post(f"/v1/runs/{run}/actions", headers=api.agent(), json=body)
    assert r.status_code == 422
    error = assert_error_shape(r.json(), "invalid_request")
    assert error["field"] == field
    assert error["message"].startswith(field)


def test_unknown_run_is_404(api: Api) -> None:
    r = api.act("run_does_not_exist", "tickets.get", {"ticket_id": "T-1001"})
    assert r.status_code == 404
    assert_error_shape(r.json(), "unknown_run")
    r = api.http.get("/v1/runs/run_does_not_exist", headers=api.agent())
    assert r.status_code == 404


def test_low_confidence_escalates_409(api: Api) -> None:
    run = api.start_run()
    r = api.act(
        run, "tickets.update", {"ticket_id": "T-1001", "fields": {"priority": "high"}}, confidence=0.2
    )
    assert r.status_code == 409
    body = r.json()
    assert_error_shape(body, "escalated")
    assert body["action"]["status"] == "escalated"
    assert body["action"]["decision"]["reasons"][0]["code"]


def test_tool_call_cap_is_429(api: Api) -> None:
    run = api.start_run()
    for i in range(30):  # the reference workflow's max_tool_calls
        assert api.act(run, "tickets.search", {"query": f"refund {i}"}).status_code == 200
    r = api.act(run, "tickets.search", {"query": "one more"})
    assert r.status_code == 429
    body = r.json()
    error = assert_error_shape(body, "limited")
    assert error["reasons"][0]["code"] == "tool_call_cap_reached"
    assert body["action"]["status"] == "limited"
    # A cap does not reset, so no Retry-After is promised.
    assert "retry-after" not in r.headers


def test_rate_limit_is_429_with_retry_after(tmp_path: Path, sqlite_url: str) -> None:
    manifest = _variant(tmp_path, "rate_limit: {per_minute: 600}", "rate_limit: {per_minute: 2}")
    for api in _serve(Harness(sqlite_url, manifest=manifest)):
        run = api.start_run()
        for query in ("a", "b"):
            assert api.act(run, "tickets.search", {"query": query}).status_code == 200
        r = api.act(run, "tickets.search", {"query": "c"})
        assert r.status_code == 429
        error = assert_error_shape(r.json(), "limited")
        assert error["reasons"][0]["code"] == "rate_limited"
        assert error["retry_after"] > 0
        assert int(r.headers["retry-after"]) >= 1


def test_upstream_failure_is_502(api: Api) -> None:
    run = api.start_run()
    r = api.act(run, "tickets.get", {"ticket_id": "T-99999"})
    assert r.status_code == 502
    body = r.json()
    assert_error_shape(body, "upstream_error")
    assert body["action"]["status"] == "failed"


def test_idempotency_key_by_header_or_body_executes_once(api: Api, desk: Any) -> None:
    run = api.start_run()
    first = api.act(run, "payments.refund", refund(20), headers={"Idempotency-Key": "refund-T-1002"})
    again = api.act(run, "payments.refund", refund(20), idempotency_key="refund-T-1002")
    assert first.status_code == again.status_code == 200
    assert first.json()["replayed"] is False
    assert again.json()["replayed"] is True
    assert again.json()["step_id"] == first.json()["step_id"]
    assert desk.refunds_total() == 20

    reused = api.act(run, "payments.refund", refund(21), idempotency_key="refund-T-1002")
    assert reused.status_code == 409
    assert_error_shape(reused.json(), "idempotency_key_reused")
    clash = api.act(run, "payments.refund", refund(20), idempotency_key="a", headers={"Idempotency-Key": "b"})
    assert clash.status_code == 422
    assert assert_error_shape(clash.json(), "invalid_arguments")["field"] == "idempotency_key"


def test_action_response_table() -> None:
    decision = Decision(decision="deny", reasons=[Reason(code="rate_limited", message="slow down")])
    limited = ActionResult(status="limited", decision=decision, run_id="r", retry_after=2.2)
    response = action_response(limited)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"


# ---- runs ---------------------------------------------------------------------------------------


def test_run_view_for_its_agent_and_for_operators(api: Api) -> None:
    run = api.start_run()
    api.act(run, "tickets.get", {"ticket_id": "T-1001"})
    api.act(run, "payments.refund", refund(900))
    api.act(run, "replies.draft", {"ticket_id": "T-1001", "body": "On its way."})
    r = api.http.get(f"/v1/runs/{run}", headers=api.agent())
    assert r.status_code == 200
    view = r.json()
    assert view["agent_id"] == "triage-bot"
    assert [s["seq"] for s in view["steps_detail"]] == [1, 2, 3]
    assert [s["status"] for s in view["steps_detail"]] == ["executed", "denied", "executed"]
    assert view["trigger"] == {"ticket": "T-1001"}

    assert api.http.get(f"/v1/runs/{run}", headers=api.agent("reporter")).status_code == 404
    assert api.http.get(f"/v1/runs/{run}", headers=api.ops).status_code == 200
    approver = api.operator("ann", "approver", workflows=[WF])
    assert api.http.get(f"/v1/runs/{run}", headers=approver).status_code == 200
    elsewhere = api.operator("bea", "owner", workflows=["billing"])
    assert api.http.get(f"/v1/runs/{run}", headers=elsewhere).status_code == 404


def test_reporter_sees_only_reads(api: Api) -> None:
    tools = api.http.get("/v1/tools", headers=api.agent("reporter")).json()
    assert {t["verb"] for t in tools} == {"read"}
    assert all(set(t) == {"name", "description", "verb", "traits", "input_schema"} for t in tools)


# ---- workflows --------------------------------------------------------------------------------------


def test_workflow_list_and_operating_model(api: Api) -> None:
    r = api.http.get("/v1/workflows", headers=api.ops)
    assert r.status_code == 200
    assert [w["name"] for w in r.json()] == [WF]
    detail = api.http.get(f"/v1/workflows/{WF}", headers=api.ops).json()
    assert detail["objective"].startswith("Triage incoming support tickets")
    assert detail["owner"] == "support-ops@example.com"
    assert {r["id"] for r in detail["rules"]["forbid"]} == {"refund-hard-limit", "no-deletes", "no-bulk"}
    assert {r["id"] for r in detail["rules"]["require_approval"]} == {"customer-email", "refund-review"}
    assert detail["budgets"]["per_run"]["max_tool_calls"] == 30
    assert detail["pause_owners"] == ["support-lead", "oncall"]
    assert detail["policy_version"] == api.h.runtime.compiled.sha256
    assert api.http.get("/v1/workflows/nope", headers=api.ops).status_code == 404
    other = api.operator("bea", "owner", workflows=["billing"])
    assert api.http.get("/v1/workflows", headers=other).json() == []
    assert api.http.get(f"/v1/workflows/{WF}", headers=other).status_code == 403


def test_pause_and_resume(api: Api, desk: Any) -> None:
    run = api.start_run()
    approver = api.operator("ann", "approver")
    r = api.http.post(f"/v1/workflows/{WF}/pause", headers=approver)
    assert r.status_code == 403
    assert_error_shape(r.json(), "forbidden")

    owner = api.operator("olga", "owner", workflows=[WF])
    r = api.http.post(f"/v1/workflows/{WF}/pause", headers=owner, json={"reason": "refund storm"})
    assert r.status_code == 200
    assert r.json() == {
        "name": WF,
        "paused": True,
        "paused_by": "operator:olga",
        "paused_reason": "refund storm",
    }
    r = api.act(run, "payments.refund", refund(10))
    assert r.status_code == 403
    assert r.json()["error"]["reasons"][0]["code"] == "workflow_paused"
    assert desk.refunds_total() == 0

    r = api.http.post(f"/v1/workflows/{WF}/resume", headers=owner)
    assert r.json()["paused"] is False
    assert api.act(run, "payments.refund", refund(10)).status_code == 200


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the reference workflow (and its help desk module) with one line changed."""
    folder = tmp_path / "wf"
    folder.mkdir()
    shutil.copy(SUPPORT_TRIAGE.parent / "support_desk.py", folder)
    text = SUPPORT_TRIAGE.read_text()
    assert old in text
    (folder / "workflow.yaml").write_text(text.replace(old, new))
    return folder / "workflow.yaml"


def test_pause_owner_listed_in_manifest(tmp_path: Path, sqlite_url: str) -> None:
    manifest = _variant(tmp_path, "pause_owners: [support-lead, oncall]", "pause_owners: [oncall]")
    for api in _serve(Harness(sqlite_url, manifest=manifest)):
        oncall = api.operator("oncall", "approver", workflows=[WF])
        r = api.http.post(f"/v1/workflows/{WF}/pause", headers=oncall)
        assert r.status_code == 200, r.text
        assert api.il.is_paused(WF)


# ---- agents admin -----------------------------------------------------------------------------------


def test_agents_admin(api: Api) -> None:
    r = api.http.get("/v1/agents", headers=api.ops)
    assert r.status_code == 200
    assert [a["id"] for a in r.json()] == ["reporter", "triage-bot"]
    assert all("secret" not in str(a) for a in r.json())

    r = api.http.post(
        "/v1/agents", headers=api.ops, json={"id": "night-bot", "workflow": WF, "environment": "staging"}
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["client_secret"].startswith("ilsk_")
    assert created["status"] == "active"
    token = api.http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "night-bot",
            "client_secret": created["client_secret"],
        },
    )
    assert token.status_code == 200
    assert "client_secret" not in str(api.http.get("/v1/agents", headers=api.ops).json())

    again = api.http.post(
        "/v1/agents", headers=api.ops, json={"id": "night-bot", "workflow": WF, "environment": "staging"}
    )
    assert again.status_code == 409
    bad_env = api.http.post(
        "/v1/agents", headers=api.ops, json={"id": "x", "workflow": WF, "environment": "qa"}
    )
    assert bad_env.status_code == 422
    assert bad_env.json()["error"]["field"] == "environment"
    unknown = api.http.post(
        "/v1/agents", headers=api.ops, json={"id": "x", "workflow": "nope", "environment": "qa"}
    )
    assert unknown.status_code in (403, 404)

    owner = api.operator("olga", "owner", workflows=[WF])
    assert (
        api.http.post(
            "/v1/agents", headers=owner, json={"id": "y", "workflow": WF, "environment": "staging"}
        ).status_code
        == 403
    )
    assert api.http.get("/v1/agents", headers=owner).status_code == 200
    approver = api.operator("ann", "approver")
    assert api.http.get("/v1/agents", headers=approver).status_code == 403
    assert api.http.post("/v1/agents/night-bot/revoke", headers=approver).status_code == 403
    assert api.http.post("/v1/agents/nobody/revoke", headers=api.ops).status_code == 404
    r = api.http.post("/v1/agents/night-bot/revoke", headers=owner)
    assert r.status_code == 200
    assert r.json()["revoked_by"] == "operator:olga"


def test_audit_verify(api: Api) -> None:
    api.act(api.start_run(), "tickets.get", {"ticket_id": "T-1001"})
    auditor = api.operator("aud", "auditor")
    r = api.http.get("/v1/audit/verify", headers=auditor)
    assert r.status_code == 200
    assert r.json()["ok"] is True
    assert r.json()["events"] > 0
    scoped = api.operator("aud2", "auditor", workflows=[WF])
    assert api.http.get("/v1/audit/verify", headers=scoped).status_code == 403


# ---- probes, metrics and error shapes -----------------------------------------------------------------


def test_probes_and_metrics(api: Api) -> None:
    assert api.http.get("/healthz").json() == {"status": "ok"}
    ready = api.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["workflows"] == [WF]
    run = api.start_run()
    api.act(run, "payments.refund", refund(30))
    api.act(run, "payments.refund", refund(900))
    api.act(run, "no.such.tool", {})
    api.act("run_nope", "tickets.get", {"ticket_id": "T-1001"})
    r = api.http.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    # The pipeline's metrics: actions by workflow, tool, decision and status; latency by tool.
    refund_tool = {"workflow": WF, "tool": "payments.refund"}
    assert value("interlock_actions_total", **refund_tool, decision="allow", status="executed") == 1
    assert value("interlock_actions_total", **refund_tool, decision="deny", status="denied") == 1
    assert value("interlock_pipeline_seconds_count", **refund_tool) == 2
    assert "no.such.tool" not in r.text
    # The HTTP layer's own.
    assert value("interlock_http_runs_started_total", workflow=WF) == 1
    assert value("interlock_http_action_errors_total", code="unknown_run") == 1


def test_readyz_fails_without_workflows(sqlite_url: str) -> None:
    from interlock import Interlock, Settings

    il = Interlock(Settings(database={"url": sqlite_url}))  # type: ignore[arg-type]
    il.migrate()
    with LiveServer(create_app(interlock=il)) as url:
        r = httpx.get(f"{url}/readyz")
    il.close()
    assert r.status_code == 503
    assert assert_error_shape(r.json(), "not_ready")["check"] == "workflows"


def test_every_error_has_one_shape_and_no_trace(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    r = api.http.get("/v1/nope")
    assert r.status_code == 404
    assert_error_shape(r.json(), "not_found")
    r = api.http.delete("/v1/runs")
    assert r.status_code == 405
    assert_error_shape(r.json(), "method_not_allowed")
    r = api.http.post(
        "/v1/runs", headers={**api.agent(), "Content-Type": "application/json"}, content=b"{nope"
    )
    assert r.status_code == 422
    assert_error_shape(r.json(), "invalid_request")

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("secret internals at /srv/db")

    monkeypatch.setattr(api.il, "get_run", boom)
    r = api.http.get("/v1/runs/anything", headers=api.agent())
    assert r.status_code == 500
    assert_error_shape(r.json(), "internal_error")
    assert "secret" not in r.text
    assert "Traceback" not in r.text

    def db_down(*_a: object, **_k: object) -> None:
        raise StorageError("database error: OperationalError: connection to server at 10.1.2.3 failed")

    monkeypatch.setattr(api.il, "verify_audit", db_down)
    r = api.http.get("/v1/audit/verify", headers=api.ops)
    assert r.status_code == 503
    assert_error_shape(r.json(), "storage_error")
    assert "10.1.2.3" not in r.text
    assert r.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (NotFound("x"), 404),
        (AuthenticationError("x"), 401),
        (TokenScopeError("x"), 403),
        (PermissionDenied("x"), 403),
        (ArgumentsInvalid("x", field="f"), 422),
        (LimitExceeded("x", retry_after=1), 429),
        (ConflictError("x"), 409),
        (ManifestError("x"), 400),
        (ConfigError("x"), 500),
        (StorageError("x"), 503),
        (UpstreamError("x"), 502),
        (AuditIntegrityError("x"), 500),
        (InterlockError("x"), 500),
    ],
)
def test_status_for_every_error(exc: InterlockError, status: int) -> None:
    assert status_for(exc) == status


def test_limit_exceeded_carries_retry_after(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def limited(*_a: object, **_k: object) -> None:
        raise LimitExceeded("rate limit: 600 per minute", code="rate_limited", retry_after=4.2)

    monkeypatch.setattr(api.il, "start_run", limited)
    r = api.http.post("/v1/runs", headers=api.agent())
    assert r.status_code == 429
    assert r.headers["retry-after"] == "5"
    assert assert_error_shape(r.json(), "rate_limited")["retry_after"] == 4.2


def test_nul_characters_are_refused_at_the_door(api: Api) -> None:
    # PostgreSQL cannot store U+0000 in text; both engines answer the same way.
    run = api.start_run()
    r = api.act(run, "tickets.search", {"query": "refund"}, reasoning="because\x00")
    assert r.status_code == 422
    assert assert_error_shape(r.json(), "invalid_request")["field"] == "reasoning"
    r = api.http.get("/v1/agents", params={"workflow": "a\x00"}, headers=api.ops)
    assert r.status_code == 422
    assert assert_error_shape(r.json(), "invalid_request")["field"] == "url"
    r = api.http.get("/v1/runs/run%00x", headers=api.agent())
    assert r.status_code == 422
    # Free JSON keeps it: arguments and triggers are stored as JSON on both engines.
    assert api.act(run, "tickets.search", {"query": "a\x00b"}).status_code == 200


def test_lone_surrogates_are_refused_naming_the_field(api: Api) -> None:
    """JSON's \\ud800 escape decodes to a string no database can store: refused with 422 naming
    the argument, on both engines, instead of failing while the decision is recorded."""
    run = api.start_run()
    body = b'{"tool": "tickets.search", "arguments": {"query": "a\\ud800b"}}'
    r = api.http.post(
        f"/v1/runs/{run}/actions", content=body, headers={**api.agent(), "content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert assert_error_shape(r.json(), "invalid_arguments")["field"] == "arguments.query"
    assert api.act(run, "tickets.search", {"query": "refund"}).status_code == 200  # the run goes on


# ---- request size ---------------------------------------------------------------------------------


def test_oversized_bodies_are_refused_with_413_before_parsing(api: Api) -> None:
    run_id = api.start_run()
    big = b'{"tool": "tickets.search", "arguments": {"query": "' + b"x" * 10_000_000 + b'"}}'
    r = api.http.post(
        f"/v1/runs/{run_id}/actions",
        headers={**api.agent(), "content-type": "application/json"},
        content=big,
    )
    assert r.status_code == 413, r.text
    assert "1048576" in assert_error_shape(r.json(), "body_too_large")["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds on what is read
        for _ in range(20):
            yield b" " * 100_000

    r = api.http.post(
        f"/v1/runs/{run_id}/actions",
        headers={**api.agent(), "content-type": "application/json"},
        content=chunks(),
    )
    assert r.status_code == 413, r.text
    r = api.http.post("/oauth/token", content=b"grant_type=" + b"x" * 2_000_000)
    assert r.status_code == 413
    assert r.json()["error"] == "invalid_request"
    # Nothing was recorded for the refused bodies, and a normal body still works.
    timeline = api.http.get(f"/v1/runs/{run_id}", headers=api.ops)
    assert timeline.status_code == 200, timeline.text
    assert timeline.json()["steps"] == 0
    ok = api.act(run_id, "tickets.search", {"query": "refund", "limit": 5})
    assert ok.status_code == 200, ok.text
