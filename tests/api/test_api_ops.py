"""Kill switches below the workflow and handoffs over REST (``/v1/pauses``, ``/v1/handoffs``), on the
reference workflow, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import Harness
from interlock._internal.server import create_app

WF = "support-triage"
TICKET = {"ticket_id": "T-1001"}


class Ops:
    """The reference workflow behind the app, with operators of every kind."""

    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.il = harness.il
        self.http = TestClient(create_app(interlock=harness.il))
        self.headers: dict[str, dict[str, str]] = {}
        for name, roles, workflows in (
            ("admin", ["admin"], None),
            ("wf-admin", ["admin"], [WF]),
            ("olga", ["owner"], [WF]),
            ("ana", ["approver"], [WF]),
            ("audrey", ["auditor"], [WF]),
            ("oncall", ["approver"], [WF]),  # a pause owner in the reference manifest
            ("sam", ["owner", "approver"], ["other-flow"]),
        ):
            _, token = self.il.operators.create(name, roles=roles, workflows=workflows, actor="test")
            self.headers[name] = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, who: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, headers=self.headers[who], **kw)

    def post(self, path: str, who: str, body: Any = None) -> httpx.Response:
        return self.http.post(path, headers=self.headers[who], json=body)

    def delete(self, path: str, who: str) -> httpx.Response:
        return self.http.delete(path, headers=self.headers[who])

    def looped(self) -> tuple[str, str]:
        """A run whose fourth identical read escalated; returns (run id, handoff id)."""
        run = self.h.run()
        for _ in range(3):
            assert self.h.act(run, "tickets.get", TICKET).executed
        assert self.h.act(run, "tickets.get", TICKET).status == "escalated"
        [handoff] = [x for x in self.il.handoffs.list(workflow=WF) if x.run_id == run]
        return run, handoff.id


@pytest.fixture
def ops(harness: Harness) -> Iterator[Ops]:
    o = Ops(harness)
    yield o
    o.http.close()


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["code"] == code, body
    assert body["message"]
    return body


# ---- pauses ---------------------------------------------------------------------------------------


def test_agent_pause_denies_its_next_action_and_resume_lets_it_act(ops: Ops) -> None:
    run = ops.h.run()
    other = ops.h.run("reporter")
    r = ops.post("/v1/pauses", "olga", {"scope": "agent", "key": "triage-bot", "reason": "odd refunds"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["scope"] == "agent"
    assert body["key"] == "triage-bot"
    assert body["workflow"] == WF
    assert body["paused_by"] == "operator:olga"
    assert body["reason"] == "odd refunds"
    assert body["since"] > 0

    denied = ops.h.act(run, "tickets.get", TICKET)
    assert denied.status == "denied"
    assert denied.decision.reason_codes == ["agent_paused"]
    assert ops.h.act(other, "tickets.get", TICKET, agent="reporter").executed  # only that agent

    [listed] = ops.get("/v1/pauses", "audrey").json()
    assert listed == body
    again = ops.post("/v1/pauses", "olga", {"scope": "agent", "key": "triage-bot", "reason": "twice"})
    assert again.status_code == 200
    assert again.json()["reason"] == "odd refunds"  # the standing pause is kept as it was

    lifted = ops.delete("/v1/pauses/agent/triage-bot", "olga")
    assert lifted.status_code == 200, lifted.text
    assert lifted.json()["reason"] == "odd refunds"
    assert ops.h.act(run, "tickets.get", TICKET).executed
    assert ops.get("/v1/pauses", "olga").json() == []
    error(ops.delete("/v1/pauses/agent/triage-bot", "olga"), 404, "not_paused")


def test_environment_pauses_need_an_admin_of_every_workflow(ops: Ops) -> None:
    body = {"scope": "environment", "key": "production", "reason": "incident 42"}
    error(ops.post("/v1/pauses", "ana", body), 403, "forbidden")
    error(ops.post("/v1/pauses", "olga", body), 403, "forbidden")
    error(ops.post("/v1/pauses", "wf-admin", body), 403, "forbidden")
    assert ops.get("/v1/pauses", "admin").json() == []

    run = ops.h.run()
    r = ops.post("/v1/pauses", "admin", body)
    assert r.status_code == 201, r.text
    assert r.json()["workflow"] is None
    assert ops.h.act(run, "tickets.get", TICKET).decision.reason_codes == ["environment_paused"]
    # Every operator sees an environment pause: it stops their workflows too.
    assert [p["key"] for p in ops.get("/v1/pauses", "sam").json()] == ["production"]
    error(ops.delete("/v1/pauses/environment/production", "ana"), 403, "forbidden")
    assert ops.delete("/v1/pauses/environment/production", "admin").status_code == 200
    assert ops.h.act(run, "tickets.get", TICKET).executed

    unknown = {"scope": "environment", "key": "moon", "reason": "x"}
    error(ops.post("/v1/pauses", "admin", unknown), 404, "unknown_environment")


def test_workflow_pauses_follow_the_kill_switch_rules(ops: Ops) -> None:
    body = {"scope": "workflow", "key": WF, "reason": "refund storm"}
    error(ops.post("/v1/pauses", "ana", body), 403, "forbidden")
    assert not ops.il.is_paused(WF)
    r = ops.post("/v1/pauses", "oncall", body)  # listed in pause_owners
    assert r.status_code == 201, r.text
    assert ops.il.is_paused(WF)
    [listed] = ops.get("/v1/pauses", "audrey").json()
    assert listed["scope"] == "workflow"
    assert listed["paused_by"] == "operator:oncall"
    assert listed["since"] > 0
    assert ops.get("/v1/pauses", "sam").json() == []  # no role on this workflow
    assert ops.delete(f"/v1/pauses/workflow/{WF}", "olga").status_code == 200
    assert not ops.il.is_paused(WF)
    error(ops.delete(f"/v1/pauses/workflow/{WF}", "olga"), 404, "not_paused")
    error(ops.post("/v1/pauses", "admin", {**body, "key": "no-such-flow"}), 404, "unknown_workflow")


def test_agent_pauses_need_an_admin_or_owner_of_its_workflow(ops: Ops) -> None:
    body = {"scope": "agent", "key": "triage-bot", "reason": "odd"}
    error(ops.post("/v1/pauses", "ana", body), 403, "forbidden")
    error(ops.post("/v1/pauses", "audrey", body), 403, "forbidden")
    error(ops.post("/v1/pauses", "sam", body), 404, "unknown_agent")  # not theirs to see
    error(ops.post("/v1/pauses", "admin", {**body, "key": "ghost"}), 404, "unknown_agent")
    assert ops.post("/v1/pauses", "wf-admin", body).status_code == 201
    error(ops.delete("/v1/pauses/agent/triage-bot", "ana"), 403, "forbidden")
    assert ops.get("/v1/pauses", "sam").json() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scope": "agent", "key": "triage-bot"}, "reason"),
        ({"scope": "agent", "key": "triage-bot", "reason": "   "}, "reason"),
        ({"scope": "tool", "key": "triage-bot", "reason": "x"}, "scope"),
        ({"scope": "agent", "key": "bad key", "reason": "x"}, "key"),
        ({"scope": "agent", "key": "triage-bot", "reason": "x", "until": 5}, "until"),
    ],
)
def test_bad_pause_bodies_are_422_naming_the_field(ops: Ops, body: dict[str, Any], field: str) -> None:
    assert error(ops.post("/v1/pauses", "admin", body), 422, "invalid_request")["field"] == field
    assert ops.get("/v1/pauses", "admin").json() == []


def test_pause_routes_want_an_operator_token(ops: Ops) -> None:
    assert ops.http.get("/v1/pauses").status_code == 401
    agent = {"Authorization": f"Bearer {ops.h.tokens['triage-bot']}"}
    error(ops.http.get("/v1/pauses", headers=agent), 401, "wrong_token_type")
    assert error(ops.delete("/v1/pauses/tool/x", "admin"), 422, "invalid_request")["field"] == "scope"


# ---- handoffs -------------------------------------------------------------------------------------


def test_a_loop_detected_run_is_stopped_over_rest(ops: Ops) -> None:
    run, handoff_id = ops.looped()
    [listed] = ops.get("/v1/handoffs", "audrey").json()
    assert listed["id"] == handoff_id
    assert listed["reason_code"] == "loop_detected"
    assert listed["tool"] == "tickets.get"
    assert listed["arguments"] == TICKET
    assert ops.get(f"/v1/handoffs?workflow={WF}", "ana").json()[0]["id"] == handoff_id
    assert ops.get("/v1/handoffs", "sam").json() == []
    one = ops.get(f"/v1/handoffs/{handoff_id}", "audrey")
    assert one.status_code == 200
    assert one.json()["state"] == "open"
    error(ops.get(f"/v1/handoffs/{handoff_id}", "sam"), 404, "unknown_handoff")

    error(ops.post(f"/v1/handoffs/{handoff_id}/resolve", "audrey", {"action": "stop"}), 403, "forbidden")
    error(ops.post(f"/v1/handoffs/{handoff_id}/resolve", "sam", {"action": "stop"}), 404, "unknown_handoff")
    assert ops.il.get_run(run).state == "escalated"

    r = ops.post(f"/v1/handoffs/{handoff_id}/resolve", "ana", {"action": "stop", "comment": "looping"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["action_result"] is None
    assert body["handoff"]["state"] == "stopped"
    assert body["handoff"]["resolved_by"] == "operator:ana"
    assert body["handoff"]["resolution"] == {"action": "stop", "comment": "looping"}
    assert ops.il.get_run(run).state == "stopped"
    assert ops.h.act(run, "tickets.get", {"ticket_id": "T-1002"}).decision.reason_codes == ["run_not_active"]

    error(
        ops.post(f"/v1/handoffs/{handoff_id}/resolve", "olga", {"action": "resume"}), 409, "already_decided"
    )
    assert ops.get("/v1/handoffs", "ana").json() == []
    assert [h["state"] for h in ops.get("/v1/handoffs?state=all", "ana").json()] == ["stopped"]
    assert ops.get("/v1/handoffs?state=stopped", "ana").json()[0]["id"] == handoff_id
    error(ops.post("/v1/handoffs/nope/resolve", "ana", {"action": "stop"}), 404, "unknown_handoff")
    error(ops.get("/v1/handoffs/nope", "ana"), 404, "unknown_handoff")
    assert error(ops.get("/v1/handoffs?state=closed", "ana"), 422, "invalid_request")["field"] == "state"


def test_resume_with_arguments_runs_the_edited_action_through_the_pipeline(ops: Ops, desk: Any) -> None:
    run, handoff_id = ops.looped()
    r = ops.post(
        f"/v1/handoffs/{handoff_id}/resolve",
        "olga",
        {"action": "resume_with_arguments", "arguments": {"ticket_id": "T-1002"}, "comment": "other one"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["handoff"]["state"] == "resumed"
    result = body["action_result"]
    assert result["status"] == "executed"
    assert result["run_id"] == run
    assert result["result"]["ticket_id"] == "T-1002"
    assert ops.il.get_run(run).state == "running"
    assert ops.h.act(run, "tickets.get", {"ticket_id": "T-1003"}).executed


def test_an_edited_refund_above_the_limit_waits_for_approval(ops: Ops, desk: Any) -> None:
    refund = {"ticket_id": "T-1002", "amount": 20, "currency": "USD", "reason": "late delivery"}
    run = ops.h.run()
    for _ in range(3):
        assert ops.h.act(run, "payments.refund", refund).executed
    assert ops.h.act(run, "payments.refund", refund).status == "escalated"
    [handoff] = ops.il.handoffs.list(workflow=WF)
    r = ops.post(
        f"/v1/handoffs/{handoff.id}/resolve",
        "olga",
        {"action": "resume_with_arguments", "arguments": {**refund, "amount": 120}},
    )
    assert r.status_code == 200, r.text
    result = r.json()["action_result"]
    assert result["status"] == "pending_approval"
    assert result["approval_id"]
    assert ops.il.get_run(run).state == "running"
    assert desk.refunds_total() == 60


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "resume_with_arguments"}, "arguments"),
        ({"action": "resume", "arguments": {"ticket_id": "T-1002"}}, "arguments"),
        ({"action": "stop", "arguments": {}}, "arguments"),
        ({"action": "pause"}, "action"),
        ({"action": "resume_with_arguments", "arguments": ["T-1002"]}, "arguments"),
        ({"action": "stop", "why": "x"}, "why"),
    ],
)
def test_bad_resolutions_are_422_and_leave_the_handoff_open(
    ops: Ops, body: dict[str, Any], field: str
) -> None:
    run, handoff_id = ops.looped()
    r = ops.post(f"/v1/handoffs/{handoff_id}/resolve", "ana", body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert ops.il.handoffs.get(handoff_id).state == "open"
    assert ops.il.get_run(run).state == "escalated"
