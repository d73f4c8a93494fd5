"""The pipeline end to end on the reference workflow, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from interlock import AuthenticationError, NotFound
from interlock._internal.audit.canonical import hash_value
from interlock._internal.store import tables as t


def test_read_is_allowed_and_executes(harness) -> None:
    run = harness.run()
    res = harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert res.status == "executed"
    assert res.decision.decision == "allow"
    assert res.decision.policy_ids == ["allow:reads"]
    assert res.result["ticket_id"] == "T-1001"
    assert res.decision.manifest_version == harness.runtime.version_id
    view = harness.il.get_run(run)
    assert [s.status for s in view.steps_detail] == ["executed"]
    assert view.steps_detail[0].decision.policy_version == harness.runtime.compiled.sha256


def test_unknown_tool_is_denied_by_default(harness) -> None:
    run = harness.run()
    res = harness.act(run, "tickets.merge", {"a": 1})
    assert res.status == "denied"
    assert res.decision.reason_codes == ["unknown_tool"]


def test_role_without_grant_is_denied(harness) -> None:
    run = harness.run("reporter")
    assert harness.act(run, "tickets.search", {"query": "refund"}, agent="reporter").status == "executed"
    res = harness.act(run, "replies.draft", {"ticket_id": "T-1001", "body": "hi"}, agent="reporter")
    assert res.status == "denied"
    assert res.decision.reason_codes == ["not_granted"]


def test_forbid_wins_over_permit(harness, desk) -> None:
    run = harness.run()
    # 900 matches the review permit (amount > 50) and the hard-limit forbid (amount > 500).
    res = harness.act(
        run,
        "payments.refund",
        {"ticket_id": "T-1001", "amount": 900, "currency": "USD", "reason": "double charge"},
    )
    assert res.status == "denied"
    assert res.decision.reason_codes == ["forbidden"]
    assert "forbid:refund-hard-limit" in res.decision.policy_ids
    delete = harness.act(run, "customers.delete", {"customer_id": "C-1001"})
    assert delete.decision.policy_ids == ["forbid:no-deletes"]
    assert desk.refunds_total() == 0


def test_small_refund_runs_and_large_one_waits_for_approval(harness, desk) -> None:
    run = harness.run()
    small = harness.act(
        run,
        "payments.refund",
        {"ticket_id": "T-1002", "amount": 30, "currency": "USD", "reason": "late delivery"},
    )
    assert small.status == "executed", small
    args = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}
    big = harness.act(run, "payments.refund", args, reasoning="customer sent photos")
    assert big.status == "pending_approval"
    assert big.decision.decision == "require_approval"
    assert big.decision.policy_ids == ["review:refund-review"]
    assert big.approval_id
    with harness.il.engine.connect() as conn:
        row = conn.execute(select(t.approvals).where(t.approvals.c.id == big.approval_id)).mappings().one()
    assert row["state"] == "pending"
    assert row["args_hash"] == hash_value(args)
    assert row["package"]["impact_if_accepted"]
    assert row["package"]["reasoning"] == "customer sent photos"
    assert desk.refunds_total() == 30


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"ticket_id": "T-1001", "amount": 10, "currency": "USD", "reason": "x", "note": "hi"}, "note"),
        ({"ticket_id": "T-1001", "amount": "10", "currency": "USD", "reason": "x"}, "amount"),
        ({"ticket_id": "T-1001", "amount": -5, "currency": "USD", "reason": "x"}, "amount"),
        ({"ticket_id": "T-1001", "amount": 10, "currency": "GBP", "reason": "x"}, "currency"),
        ({"ticket_id": "T-1001", "amount": 10, "currency": "USD"}, "reason"),
    ],
)
def test_schema_rejections_name_the_field(harness, desk, args, field) -> None:
    run = harness.run()
    res = harness.act(run, "payments.refund", args)
    assert res.status == "invalid"
    assert res.decision.reason_codes == ["invalid_arguments"]
    assert res.decision.reasons[0].field == field
    assert desk.refunds_total() == 0


def test_more_precision_than_policy_can_judge_is_refused(harness, desk) -> None:
    run = harness.run()
    res = harness.act(
        run, "payments.refund", {"ticket_id": "T-1001", "amount": 50.00001, "currency": "USD", "reason": "x"}
    )
    assert res.status == "invalid"
    assert desk.refunds_total() == 0


def test_revoked_agent_is_refused_on_next_call(harness) -> None:
    run = harness.run()
    assert harness.act(run, "tickets.get", {"ticket_id": "T-1001"}).executed
    harness.il.agents.revoke("triage-bot", actor="test")
    with pytest.raises(AuthenticationError) as err:
        harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert err.value.code == "agent_revoked"


def test_expired_token_is_refused(harness) -> None:
    from interlock._internal.identity.tokens import TokenService

    run = harness.run()
    later = TokenService(harness.il.settings.identity, clock=lambda: __import__("time").time() + 3600)
    harness.il.pipeline.tokens = later
    with pytest.raises(AuthenticationError) as err:
        harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert err.value.code == "token_expired"


def test_agent_in_another_environment_is_denied(harness) -> None:
    creds = harness.il.agents.create(
        "staging-bot", workflow=harness.workflow, environment="staging", actor="t"
    )
    token = harness.il.issue_token(creds.client_id, creds.client_secret).token
    run = harness.il.start_run(token)
    res = harness.il.act(token, run.id, "tickets.get", {"ticket_id": "T-1001"})
    assert res.status == "denied"
    assert res.decision.reason_codes == ["agent_not_in_manifest"]


def test_token_cannot_act_on_another_agents_run(harness) -> None:
    run = harness.run("triage-bot")
    with pytest.raises(NotFound):
        harness.act(run, "tickets.get", {"ticket_id": "T-1001"}, agent="reporter")


def test_idempotent_retry_executes_once(harness, desk) -> None:
    run = harness.run()
    args = {"ticket_id": "T-1004", "amount": 20, "currency": "USD", "reason": "coupon not applied"}
    first = harness.act(run, "payments.refund", args, idempotency_key="refund-T-1004")
    second = harness.act(run, "payments.refund", args, idempotency_key="refund-T-1004")
    assert first.status == second.status == "executed"
    assert second.replayed
    assert not first.replayed
    assert second.result == first.result
    assert desk.refunds_total() == 20
    from interlock import ConflictError

    with pytest.raises(ConflictError):
        harness.act(run, "payments.refund", {**args, "amount": 25}, idempotency_key="refund-T-1004")


def test_step_cap_stops_the_run(db_url) -> None:
    from conftest import SUPPORT_TRIAGE, Harness
    from interlock._internal.manifest.loader import load_manifest_text

    text_ = SUPPORT_TRIAGE.read_text().replace("max_steps: 40", "max_steps: 3")
    h = Harness(db_url, load_manifest_text(text_, file="capped.yaml", base_dir=SUPPORT_TRIAGE.parent))
    run = h.run()
    for n in range(3):
        assert h.act(run, "tickets.get", {"ticket_id": f"T-100{n + 1}"}).executed
    res = h.act(run, "tickets.get", {"ticket_id": "T-1004"})
    assert res.status == "limited"
    assert res.decision.reason_codes == ["step_cap_reached"]
    assert h.il.get_run(run).state == "stopped"
    again = h.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert again.decision.reason_codes == ["run_not_active"]
    h.close()


def test_low_confidence_escalates(harness) -> None:
    run = harness.run()
    res = harness.act(
        run, "tickets.update", {"ticket_id": "T-1001", "fields": {"priority": "high"}}, confidence=0.2
    )
    assert res.status == "escalated"
    assert res.decision.decision == "escalate"
    assert harness.il.get_run(run).state == "escalated"


def test_paused_workflow_denies(harness) -> None:
    run = harness.run()
    harness.il.set_paused(harness.workflow, paused=True, actor="ops", reason="incident")
    res = harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert res.decision.reason_codes[0] == "workflow_paused"
    harness.il.set_paused(harness.workflow, paused=False, actor="ops")
    assert harness.act(run, "tickets.get", {"ticket_id": "T-1001"}).executed


def test_every_step_is_in_the_audit_chain(harness) -> None:
    run = harness.run()
    harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    harness.act(run, "customers.delete", {"customer_id": "C-1001"})
    report = harness.il.verify_audit()
    assert report.ok
    with harness.il.engine.connect() as conn:
        kinds = [r[0] for r in conn.execute(text("select kind from audit_events order by seq"))]
    assert "action.executed" in kinds
    assert "action.denied" in kinds


def test_secrets_and_pii_are_redacted_before_storage(harness) -> None:
    run = harness.run()
    body = "Card 4111 1111 1111 1111, key sk-abcdefghijklmnop1234 thanks"
    res = harness.act(run, "replies.draft", {"ticket_id": "T-1001", "body": body})
    assert res.executed
    with harness.il.engine.connect() as conn:
        dump = " ".join(str(r) for r in conn.execute(select(t.steps)).all())
        dump += " ".join(str(r) for r in conn.execute(select(t.audit_events)).all())
    assert "4111 1111" not in dump
    assert "sk-abcdefghijklmnop1234" not in dump


def test_the_agent_sees_the_result_the_database_keeps_it_redacted(harness) -> None:
    run = harness.run()
    res = harness.act(run, "customers.get", {"customer_id": "C-1001"})
    assert res.executed
    email = res.result["email"]
    assert "***" not in email  # the agent needs the address to write to the customer
    [step] = harness.il.get_run(run).steps_detail
    assert step.result["email"] != email
    assert "***@" in step.result["email"]


def test_a_forbidden_action_is_denied_not_escalated(harness) -> None:
    # Low confidence would escalate an allowed action; a forbidden one is simply denied.
    run = harness.run()
    res = harness.act(run, "customers.delete", {"customer_id": "C-1001"}, confidence=0.1)
    assert res.status == "denied"
    assert harness.il.get_run(run).state == "running"


def test_nul_characters_are_refused_in_names_and_replaced_in_text(harness) -> None:
    from interlock import ArgumentsInvalid

    run = harness.run()
    with pytest.raises(NotFound):
        harness.act(run + "\x00", "tickets.get", {"ticket_id": "T-1001"})
    with pytest.raises(ArgumentsInvalid):
        harness.act(run, "tickets.get\x00", {"ticket_id": "T-1001"})
    with pytest.raises(ArgumentsInvalid):
        harness.act(run, "tickets.get", {"ticket_id": "T-1001"}, idempotency_key="k\x00")
    res = harness.act(run, "tickets.get", {"ticket_id": "T-1001"}, reasoning="look\x00here")
    assert res.executed
    [step] = harness.il.get_run(run).steps_detail
    assert step.reasoning == "look\ufffdhere"


def test_lone_surrogates_are_refused_in_arguments_and_names_and_replaced_in_text(harness) -> None:
    """A string no database can store (a lone UTF-16 surrogate, which JSON's \\ud800 escape can
    carry) is refused before anything is decided or recorded, naming where it is; in the agent's
    free text it becomes U+FFFD, as NUL does."""
    from interlock import ArgumentsInvalid

    run = harness.run()
    with pytest.raises(NotFound):
        harness.act(run + "\ud800", "tickets.get", {"ticket_id": "T-1001"})
    with pytest.raises(ArgumentsInvalid) as caught:
        harness.act(run, "tickets.get", {"ticket_id": "T-\ud800"})
    assert caught.value.field == "arguments.ticket_id"
    with pytest.raises(ArgumentsInvalid) as caught:
        harness.act(run, "tickets.search", {"query": "refund", "tags": ["ok", "x\udfff"]})
    assert caught.value.field == "arguments.tags[1]"
    with pytest.raises(ArgumentsInvalid) as caught:
        harness.act(run, "tickets.search", {"query": "refund", "\ud800": 1})
    assert caught.value.field == "arguments"
    with pytest.raises(ArgumentsInvalid):
        harness.act(run, "tickets.get\ud800", {"ticket_id": "T-1001"})
    with pytest.raises(ArgumentsInvalid):
        harness.act(run, "tickets.get", {"ticket_id": "T-1001"}, idempotency_key="k\ud800")
    assert harness.il.get_run(run).steps_detail == []  # nothing was decided or recorded
    res = harness.act(run, "tickets.get", {"ticket_id": "T-1001"}, reasoning="look\ud800here")
    assert res.executed
    [step] = harness.il.get_run(run).steps_detail
    assert step.reasoning == "look\ufffdhere"
