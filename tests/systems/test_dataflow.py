"""Classification that follows the data: a run that read a customer's PII trying to email it outside
the customer's domain, on SQLite and PostgreSQL; and Cedar conditions on systems and data classes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update
from systems_fixtures import support_copy

from conftest import Harness
from interlock._internal.gateway.dataflow import Carried
from interlock._internal.gateway.decide import Intent, evaluate
from interlock._internal.gateway.runtime import build_runtime
from interlock._internal.manifest.loader import load_manifest
from interlock._internal.store import tables as t

EMAIL_ALONE = {
    "    - {id: customer-email, tool: emails.send, description: Every email to a customer is reviewed.}\n": "",
    "    - {id: drafts, verb: draft}\n": "    - {id: drafts, verb: draft}\n    - {id: emails, tool: emails.send}\n",
}


def _email(to: str) -> dict[str, str]:
    return {"ticket_id": "T-1001", "to": to, "subject": "Your invoice", "body": "We refunded the charge."}


@pytest.fixture
def alone(db_url: str, tmp_path: Path) -> Iterator[Harness]:
    """The reference workflow with emails allowed alone, so only the flow rule asks for a person."""
    h = Harness(db_url, support_copy(tmp_path, edit=EMAIL_ALONE))
    yield h
    h.close()


def test_pii_to_another_domain_needs_approval_naming_the_step(alone: Harness) -> None:
    run = alone.run()
    # Before any PII is read, an email runs alone.
    assert alone.act(run, "emails.send", _email("someone@elsewhere.example")).status == "executed"
    read = alone.act(run, "customers.get", {"customer_id": "C-1001"})
    assert read.status == "executed"
    res = alone.act(run, "emails.send", _email("maria.okafor@gmail.example"))
    assert res.status == "pending_approval", res
    first = res.decision.reasons[0]
    assert first.code == "data_flow_review"
    assert first.policy_id == "flow:pii-leaves"
    assert f"brought in by step {read.seq} (customers.get, {read.step_id})" in first.message
    assert "gmail.example" in first.message
    assert res.decision.data_classes == ["pii"]
    # The approval package and the run timeline show the run's classes.
    with alone.il.engine.connect() as conn:
        package = conn.execute(
            select(t.approvals.c.package).where(t.approvals.c.id == res.approval_id)
        ).scalar_one()
    assert package["data_classes"] == ["pii"]
    assert any("customers.get" in r["message"] for r in package["policy_reasons"])
    view = alone.il.get_run(run)
    brought = {s.tool: s.data_classes for s in view.steps_detail if s.data_classes}
    assert brought == {"customers.get": {"classes": ["pii"], "subject_domains": ["example.com"]}}
    assert view.steps_detail[-1].decision.data_classes == ["pii"]


def test_pii_back_to_the_customers_own_domain_runs_alone(alone: Harness) -> None:
    run = alone.run()
    alone.act(run, "customers.get", {"customer_id": "C-1001"})
    res = alone.act(run, "emails.send", _email("maria.okafor@example.com"))
    assert res.status == "executed", res
    assert res.decision.data_classes == ["pii"]


def test_the_manifest_can_deny_the_flow(db_url: str, tmp_path: Path) -> None:
    edit = {
        **EMAIL_ALONE,
        "    outcome: require_approval\n    except_subject_domain": "    outcome: deny\n    except_subject_domain",
    }
    h = Harness(db_url, support_copy(tmp_path, edit=edit))
    try:
        run = h.run()
        h.act(run, "customers.get", {"customer_id": "C-1001"})
        res = h.act(run, "emails.send", _email("attacker@elsewhere.example"))
        assert res.status == "denied"
        assert res.decision.reason_codes == ["data_flow_denied"]
        assert "customers.get" in res.decision.reasons[0].message
    finally:
        h.close()


def test_a_flow_no_rule_covers_is_denied(db_url: str, tmp_path: Path) -> None:
    edit = {
        **EMAIL_ALONE,
        "    classes: [pii]\n    to: [external, public]": "    classes: [pii]\n    to: [public]",
    }
    h = Harness(db_url, support_copy(tmp_path, edit=edit))
    try:
        run = h.run()
        h.act(run, "customers.get", {"customer_id": "C-1001"})
        res = h.act(run, "emails.send", _email("maria.okafor@example.com"))
        assert res.status == "denied"
        assert res.decision.reasons[0].policy_id == "flow:not-cleared"
        assert "no flow rule covers it" in res.decision.reasons[0].message
    finally:
        h.close()


def test_reference_workflow_keeps_its_review_and_adds_the_flow_reason(harness: Harness) -> None:
    run = harness.run()
    harness.act(run, "customers.get", {"customer_id": "C-1001"})
    res = harness.act(run, "emails.send", _email("maria@outside.example"))
    assert res.status == "pending_approval"
    assert res.decision.reason_codes == ["review_required", "data_flow_review"]
    own = harness.act(run, "emails.send", _email("maria.okafor@example.com"))
    assert own.decision.reason_codes == ["review_required"]


def test_an_approved_flow_executes_once(alone: Harness) -> None:
    run = alone.run()
    alone.act(run, "customers.get", {"customer_id": "C-1001"})
    res = alone.act(run, "emails.send", _email("maria.okafor@gmail.example"))
    assert res.approval_id
    with alone.il.engine.begin() as conn:
        conn.execute(update(t.approvals).where(t.approvals.c.id == res.approval_id).values(state="approved"))
    result = alone.il.pipeline.execute_approved(res.approval_id)
    assert result is not None
    assert result.status == "executed", result
    assert alone.il.pipeline.execute_approved(res.approval_id) is None
    done = alone.il.get_run(run).steps_detail[-1]
    assert done.tool == "emails.send"
    assert done.status == "executed"
    assert done.decision.reason_codes[0] == "approved"


# ---- Cedar conditions on system attributes and the run's classes -------------------------------

POLICY = """\
@id("forbid:tier1-refunds-after-pii")
forbid (principal, action == Interlock::Action::"refund", resource)
when { resource has system && resource.system.tier == 1 && context.data_classes.contains("pii") };
"""


def test_cedar_conditions_on_system_tier_and_data_classes(tmp_path: Path) -> None:
    (tmp_path / "systems.cedar").write_text(POLICY)
    path = support_copy(tmp_path, edit={"pause_owners:": "policies: [systems.cedar]\n\npause_owners:"})
    runtime = build_runtime(load_manifest(path))
    try:
        refund = Intent(
            "payments.refund", {"ticket_id": "T-1", "amount": 20, "currency": "USD", "reason": "late"}
        )
        clean = evaluate(runtime, agent_id="triage-bot", environment="production", intent=refund)
        assert clean.decision.decision == "allow"
        pii = (Carried("pii", "stp_1", 1, "customers.get", ("example.com",)),)
        after = evaluate(runtime, agent_id="triage-bot", environment="production", intent=refund, carried=pii)
        assert after.decision.decision == "deny"
        assert after.decision.policy_ids == ["forbid:tier1-refunds-after-pii"]
        # A tier-2 system is not covered by the forbid.
        draft = Intent("replies.draft", {"ticket_id": "T-1", "body": "hello"})
        assert (
            evaluate(
                runtime, agent_id="triage-bot", environment="production", intent=draft, carried=pii
            ).decision.decision
            == "allow"
        )
        assert "data_classes" in runtime.compiled.text
        assert runtime.flow_tools
    finally:
        runtime.close()
