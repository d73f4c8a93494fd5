"""Approvals over real HTTP on 127.0.0.1, on SQLite and PostgreSQL: operators decide, the agent
that asked reads and long-polls its own, and every refusal has its status and code."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from conftest import SUPPORT_TRIAGE, Harness
from interlock._internal.manifest.loader import load_manifest_text
from interlock._internal.server import create_app
from interlock._internal.store import tables as t
from servers import LiveServer

REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}
EMAIL = {"ticket_id": "T-1001", "to": "customer@example.com", "subject": "Your order", "body": "On its way."}
AGENT_FIELDS = {
    "id",
    "run_id",
    "tool",
    "state",
    "expires_at",
    "decided_at",
    "decided_by",
    "comment",
    "execution",
    "outcome",
}


class Api:
    def __init__(self, harness: Harness, base_url: str) -> None:
        self.h = harness
        self.il = harness.il
        self.http = httpx.Client(base_url=base_url, timeout=60)

    def operator(self, op_id: str, *roles: str, workflows: list[str] | None = None) -> dict[str, str]:
        _, token = self.il.operators.create(
            op_id, roles=list(roles) or ["approver"], workflows=workflows, actor="test"
        )
        return {"Authorization": f"Bearer {token}"}

    def agent(self, agent: str = "triage-bot") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.h.tokens[agent]}"}

    def act(self, run_id: str, tool: str, arguments: Any, **extra: Any) -> httpx.Response:
        return self.http.post(
            f"/v1/runs/{run_id}/actions",
            headers=self.agent(),
            json={"tool": tool, "arguments": arguments, **extra},
        )

    def pending(
        self, tool: str = "payments.refund", arguments: Any = REFUND, **extra: Any
    ) -> tuple[str, str]:
        run = self.h.run()
        r = self.act(run, tool, arguments, **extra)
        assert r.status_code == 202, r.text
        return run, str(r.json()["approval_id"])


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


@pytest.fixture
def api_quorum2(sqlite_url: str) -> Iterator[Api]:
    text = SUPPORT_TRIAGE.read_text(encoding="utf-8").replace("  quorum: 1\n", "  quorum: 2\n")
    loaded = load_manifest_text(text, file=str(SUPPORT_TRIAGE), base_dir=SUPPORT_TRIAGE.parent)
    yield from _serve(Harness(sqlite_url, manifest=loaded))


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    return body


def test_operator_approves_and_the_agent_long_polls_the_outcome(api: Api, desk: Any) -> None:
    alice = api.operator("alice")
    run, approval_id = api.pending(idempotency_key="r-1", reasoning="broken on arrival")

    listed = api.http.get("/v1/approvals", headers=alice)
    assert listed.status_code == 200, listed.text
    [item] = listed.json()
    assert item["id"] == approval_id
    assert item["state"] == "pending"
    assert item["package"]["reasoning"] == "broken on arrival"
    assert item["package"]["impact_if_rejected"]
    assert item["run"]["id"] == run
    assert [a["id"] for a in api.http.get("/v1/approvals?risk=money", headers=alice).json()] == [approval_id]
    assert api.http.get("/v1/approvals?risk=external", headers=alice).json() == []
    assert api.http.get("/v1/approvals?min_age_s=3600", headers=alice).json() == []
    assert (
        api.http.get("/v1/approvals?workflow=support-triage&state=all", headers=alice).json()[0]["id"]
        == approval_id
    )

    mine = api.http.get(f"/v1/approvals/{approval_id}", headers=api.agent())
    assert mine.status_code == 200, mine.text
    assert set(mine.json()) == AGENT_FIELDS
    assert mine.json()["state"] == "pending"

    polled: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        r = api.http.get(f"/v1/approvals/{approval_id}?wait=20", headers=api.agent())
        polled.update(status=r.status_code, body=r.json(), took=time.monotonic() - started)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.6)
    decided = api.http.post(
        f"/v1/approvals/{approval_id}/approve", headers=alice, json={"comment": "photo ok"}
    )
    assert decided.status_code == 200, decided.text
    body = decided.json()
    assert body["state"] == "approved"
    assert body["decided_by"] == ["alice"]
    assert body["comment"] == "photo ok"
    assert body["execution"] == "done"
    assert body["outcome"]["status"] == "executed"
    poller.join(timeout=30)
    assert polled["status"] == 200
    assert polled["body"]["state"] == "approved"
    assert 0.5 < polled["took"] < 10

    settled = api.http.get(f"/v1/approvals/{approval_id}?wait=20", headers=api.agent(), timeout=5)
    assert settled.json()["execution"] == "done"  # settled: answered at once
    assert settled.json()["outcome"]["result"]["amount"] == 120
    retry = api.act(run, "payments.refund", REFUND, idempotency_key="r-1")
    assert retry.status_code == 200
    assert retry.json()["replayed"] is True
    assert desk.refunds_total() == 120


def test_rejection_reaches_the_agent(api: Api, desk: Any) -> None:
    bob = api.operator("bob")
    run, approval_id = api.pending(idempotency_key="r-2")
    r = api.http.post(
        f"/v1/approvals/{approval_id}/reject", headers=bob, json={"comment": "refund 50 instead"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "rejected"
    mine = api.http.get(f"/v1/approvals/{approval_id}", headers=api.agent()).json()
    assert mine["state"] == "rejected"
    assert mine["comment"] == "refund 50 instead"
    assert mine["decided_by"] == ["bob"]
    retry = api.act(run, "payments.refund", REFUND, idempotency_key="r-2")
    body = error(retry, 403, "denied")
    assert body["action"]["decision"]["reasons"][0]["code"] == "rejected"
    assert "refund 50 instead" in body["error"]["message"]
    assert desk.refunds_total() == 0


def test_refusals_have_their_status_and_code(api: Api) -> None:
    alice = api.operator("alice")
    auditor = api.operator("audrey", "auditor")
    elsewhere = api.operator("elsa", "approver", workflows=["billing"])
    _, approval_id = api.pending()
    path = f"/v1/approvals/{approval_id}"

    error(api.http.post(f"{path}/approve", headers=api.agent()), 401, "wrong_token_type")
    error(api.http.post(f"{path}/approve"), 401, "unauthenticated")
    error(api.http.post(f"{path}/approve", headers=auditor), 403, "not_eligible")
    error(api.http.post(f"{path}/reject", headers=auditor), 403, "not_eligible")
    error(api.http.post(f"{path}/approve", headers=elsewhere), 404, "unknown_approval")
    error(api.http.get(path, headers=elsewhere), 404, "unknown_approval")
    assert api.http.get("/v1/approvals", headers=elsewhere).json() == []
    error(api.http.get(path, headers=api.agent("reporter")), 404, "unknown_approval")
    error(api.http.post("/v1/approvals/apr_nope/approve", headers=alice), 404, "unknown_approval")
    error(
        api.http.post(f"{path}/approve", headers=alice, json={"comment": "ok", "extra": 1}),
        422,
        "invalid_request",
    )
    error(api.http.get("/v1/approvals?state=bogus", headers=alice), 422, "invalid_request")
    error(api.http.get(f"{path}?wait=31", headers=alice), 422, "invalid_request")
    assert api.http.get(path, headers=auditor).json()["state"] == "pending"  # any role may read

    assert api.http.post(f"{path}/approve", headers=alice).status_code == 200
    error(api.http.post(f"{path}/approve", headers=api.operator("bob")), 409, "already_decided")
    error(api.http.post(f"{path}/cancel", headers=alice), 409, "already_decided")

    carol = api.operator("carol")
    own_run = api.il.start_run(api.h.tokens["triage-bot"], started_by="operator:carol").id
    own = api.act(own_run, "emails.send", EMAIL).json()["approval_id"]
    error(api.http.post(f"/v1/approvals/{own}/approve", headers=carol), 403, "self_approval_forbidden")
    cancelled = api.http.post(f"/v1/approvals/{own}/cancel", headers=carol, json={"comment": "not needed"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"

    _, late = api.pending("emails.send", {**EMAIL, "subject": "Late"})
    with api.il.engine.begin() as conn:
        conn.execute(update(t.approvals).where(t.approvals.c.id == late).values(expires_at=time.time() - 1))
    error(api.http.post(f"/v1/approvals/{late}/approve", headers=alice), 409, "approval_expired")
    assert api.http.get(f"/v1/approvals/{late}", headers=api.agent()).json()["state"] == "expired"


def test_long_poll_ends_unchanged_when_time_is_up(api: Api) -> None:
    alice = api.operator("alice")
    _, approval_id = api.pending()
    started = time.monotonic()
    r = api.http.get(f"/v1/approvals/{approval_id}?wait=0.6", headers=alice)
    assert r.status_code == 200
    assert r.json()["state"] == "pending"
    assert r.json()["package"]["tool"] == "payments.refund"  # operators get the full view
    assert 0.5 <= time.monotonic() - started < 5


def test_quorum_over_http(api_quorum2: Api, desk: Any) -> None:
    api = api_quorum2
    alice, bob = api.operator("alice"), api.operator("bob")
    _, approval_id = api.pending()
    first = api.http.post(f"/v1/approvals/{approval_id}/approve", headers=alice, json={"comment": "one"})
    assert first.status_code == 200
    assert first.json()["state"] == "pending"
    assert first.json()["approve_votes"] == 1
    error(api.http.post(f"/v1/approvals/{approval_id}/approve", headers=alice), 409, "already_voted")
    second = api.http.post(f"/v1/approvals/{approval_id}/approve", headers=bob)
    assert second.json()["state"] == "approved"
    assert second.json()["decided_by"] == ["alice", "bob"]
    assert desk.refunds_total() == 120


def test_openapi_lists_the_approval_routes(api: Api) -> None:
    paths = api.http.get("/openapi.json").json()["paths"]
    assert {"/v1/approvals", "/v1/approvals/{approval_id}", "/v1/approvals/{approval_id}/approve"} <= set(
        paths
    )
    assert "/v1/approvals/{approval_id}/reject" in paths
    assert "/v1/approvals/{approval_id}/cancel" in paths
