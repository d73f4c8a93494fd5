"""Verifier gates on SQLite and PostgreSQL: a verifier agent settles what policy lets it settle
(and the action runs exactly once, through the approved-execution path), refers what it may not
settle to a person, and its verdict is bound to the argument hash, costed, and audited."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update

from conftest import Harness
from interlock._internal.audit.chain import iter_events
from interlock._internal.audit.evidence import bundle_bytes, export_bundle, verify_bundle
from interlock._internal.audit.keys import AuditKey
from interlock._internal.identity.tokens import AgentPrincipal
from interlock._internal.store import tables as t
from interlock.exceptions import ConflictError, NotFound, PermissionDenied
from verifier_manifest import verifier_manifest

REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}
BIG_REFUND = {"ticket_id": "T-1004", "amount": 300, "currency": "EUR", "reason": "double charge"}
EMAIL = {"ticket_id": "T-1001", "to": "customer@example.com", "subject": "Your order", "body": "On its way."}


@pytest.fixture
def h(db_url: str) -> Iterator[Harness]:
    harness = Harness(db_url, manifest=verifier_manifest())
    yield harness
    harness.close()


def _principal(h: Harness, agent: str) -> AgentPrincipal:
    from interlock._internal.identity.tokens import authenticate_agent

    return authenticate_agent(h.tokens[agent], tokens=h.il.tokens, store=h.il.agents)


def kinds(h: Harness, run_id: str) -> list[str]:
    return [e.kind for e in iter_events(h.il.engine, run_id=run_id)]


def test_a_verifier_settles_a_medium_risk_refund_and_it_runs_exactly_once(h: Harness, desk: Any) -> None:
    run = h.run()
    pending = h.act(run, "payments.refund", REFUND, idempotency_key="r-1", reasoning="photo of the damage")
    assert pending.status == "pending_approval"
    verifier = _principal(h, "refund-checker")

    [waiting] = h.il.verifications.list(verifier)
    assert waiting.id == pending.approval_id
    assert waiting.verification == "awaiting"
    assert waiting.package.reasoning == "photo of the damage"  # the same package a person reads
    assert waiting.package.impact_if_accepted

    decided = h.il.verifications.decide(
        verifier,
        pending.approval_id,
        verdict="approve",
        args_hash=waiting.args_hash,
        reasoning="The photo shows the damage; 120 EUR matches the order.",
        model="mid-1",
        input_tokens=1000,
        output_tokens=200,
        task="verification",
    )
    assert decided.state == "approved"
    assert decided.verification == "settled"
    assert decided.decided_by == ["agent:refund-checker"]
    assert decided.execution == "done"
    assert decided.outcome is not None
    assert decided.outcome.status == "executed"
    assert decided.verdict is not None
    assert decided.verdict.settles
    assert decided.verdict.code == "settle_permitted"
    assert decided.verdict.policy_ids == ["settle:refunds"]
    # 1000 in at 1.0/M + 200 out at 4.0/M = 0.0018 USD, the verifier's own model cost
    assert decided.verdict.cost_usd == pytest.approx(0.0018)
    assert desk.refunds_total() == 120

    # Exactly once: the agent's retry replays the stored outcome, and a second execution is a no-op.
    retry = h.act(run, "payments.refund", REFUND, idempotency_key="r-1")
    assert retry.status == "executed"
    assert retry.replayed
    assert h.il.pipeline.execute_approved(pending.approval_id) is None
    assert desk.refunds_total() == 120
    with pytest.raises(ConflictError) as again:
        h.il.verifications.decide(
            verifier, pending.approval_id, verdict="approve", args_hash=waiting.args_hash
        )
    assert again.value.code == "already_verified"

    # The verdict's cost is a step of the run, counted in the run's cost.
    view = h.il.get_run(run)
    [step] = [s for s in view.steps_detail if s.kind == "verification"]
    assert step.status == "settled"
    assert step.reasoning == "The photo shows the damage; 120 EUR matches the order."
    assert view.cost_usd == pytest.approx(0.0018)
    assert "verification.verdict" in kinds(h, run)
    [approved] = list(iter_events(h.il.engine, kinds=["approval.approved"]))
    assert approved.actor == "agent:refund-checker"
    assert approved.data["verifier"] == "refund-checker"
    assert h.il.verify_audit().ok


def test_a_high_risk_refund_it_may_not_settle_goes_to_a_person(h: Harness, desk: Any) -> None:
    run = h.run()
    pending = h.act(run, "payments.refund", BIG_REFUND)
    verifier = _principal(h, "refund-checker")
    args_hash = h.il.verifications.get(verifier, pending.approval_id).args_hash

    referred = h.il.verifications.decide(
        verifier, pending.approval_id, verdict="approve", args_hash=args_hash, reasoning="looks fine to me"
    )
    assert referred.state == "pending"  # not settled: a person decides
    assert referred.verification == "escalated"
    assert referred.verdict is not None
    assert not referred.verdict.settles
    assert referred.verdict.code == "settle_forbidden"
    assert referred.verdict.policy_ids == ["never-settle:big-refunds-need-a-person"]
    assert desk.refunds_total() == 0
    assert h.il.verifications.list(verifier) == []

    # The person sees the verifier's verdict and reasoning in the package, then decides.
    person, _ = h.il.operators.create("alice", roles=["approver"], workflows=None, actor="test")
    view = h.il.approvals.get(pending.approval_id)
    assert view.verdict is not None
    assert view.verdict.reasoning == "looks fine to me"
    decided = h.il.approvals.decide(pending.approval_id, operator=person.principal(), approve=True)
    assert decided.state == "approved"
    assert decided.decided_by == ["alice"]
    assert desk.refunds_total() == 300
    assert h.il.verify_audit().ok


def test_no_settle_rule_and_escalate_both_leave_it_to_a_person(h: Harness) -> None:
    run = h.run()
    email = h.act(run, "emails.send", EMAIL)
    verifier = _principal(h, "refund-checker")
    view = h.il.verifications.get(verifier, email.approval_id)
    referred = h.il.verifications.decide(
        verifier, email.approval_id, verdict="reject", args_hash=view.args_hash
    )
    assert referred.state == "pending"
    assert referred.verdict is not None
    assert referred.verdict.code == "no_settle_rule"

    refund = h.act(run, "payments.refund", REFUND)
    view = h.il.verifications.get(verifier, refund.approval_id)
    escalated = h.il.verifications.decide(
        verifier, refund.approval_id, verdict="escalate", args_hash=view.args_hash, reasoning="unsure"
    )
    assert escalated.state == "pending"
    assert escalated.verification == "escalated"
    assert escalated.verdict is not None
    assert escalated.verdict.code == "escalated_by_verifier"


def test_a_settled_rejection_tells_the_agent_why(h: Harness, desk: Any) -> None:
    run = h.run()
    pending = h.act(run, "payments.refund", REFUND, idempotency_key="r-9")
    verifier = _principal(h, "refund-checker")
    view = h.il.verifications.get(verifier, pending.approval_id)
    rejected = h.il.verifications.decide(
        verifier,
        pending.approval_id,
        verdict="reject",
        args_hash=view.args_hash,
        reasoning="no photo attached",
    )
    assert rejected.state == "rejected"
    assert rejected.decided_by == ["agent:refund-checker"]
    retry = h.act(run, "payments.refund", REFUND, idempotency_key="r-9")
    assert retry.status == "denied"
    assert "no photo attached" in retry.decision.reasons[0].message
    assert desk.refunds_total() == 0
    assert h.il.verify_audit().ok


def test_a_verdict_is_bound_to_the_argument_hash(h: Harness, desk: Any) -> None:
    run = h.run()
    first = h.act(run, "payments.refund", REFUND)
    verifier = _principal(h, "refund-checker")
    judged = h.il.verifications.get(verifier, first.approval_id).args_hash

    # The same hash on another request (other arguments) is refused: it judged other arguments.
    other = h.act(run, "payments.refund", {**REFUND, "amount": 130})
    assert other.approval_id != first.approval_id
    with pytest.raises(ConflictError) as mismatch:
        h.il.verifications.decide(verifier, other.approval_id, verdict="approve", args_hash=judged)
    assert mismatch.value.code == "args_mismatch"

    # Approving the first covers only its own arguments: the 130 one still waits.
    h.il.verifications.decide(verifier, first.approval_id, verdict="approve", args_hash=judged)
    assert h.il.approvals.get(other.approval_id).state == "pending"
    assert desk.refunds_total() == 120
    with h.il.engine.connect() as conn:
        stored = conn.execute(
            select(t.approval_verdicts.c.args_hash).where(
                t.approval_verdicts.c.approval_id == first.approval_id
            )
        ).scalar_one()
    assert stored == judged


def test_only_the_designated_verifier_sees_and_decides(h: Harness) -> None:
    run = h.run()
    pending = h.act(run, "payments.refund", REFUND)
    bot = _principal(h, "triage-bot")  # the proposing agent: no verifier
    with pytest.raises(PermissionDenied) as refused:
        h.il.verifications.list(bot)
    assert refused.value.code == "not_a_verifier"
    with pytest.raises(PermissionDenied):
        h.il.verifications.decide(bot, pending.approval_id, verdict="approve", args_hash="0" * 64)
    with pytest.raises(NotFound):
        h.il.verifications.get(_principal(h, "refund-checker"), "apr_missing")
    # A request no verifier covers (no rule routes it) is not the verifier's to see.
    tickets = h.act(run, "tickets.search", {"query": "refund", "limit": 10})
    assert tickets.status == "executed"


# ---- evidence: the verdict is audited, and tampering with it is caught ---------------------------

SEED = "verifier-test-seed-0123456789abcdef"


def _settled(h: Harness) -> tuple[str, str]:
    run = h.run()
    pending = h.act(run, "payments.refund", REFUND)
    verifier = _principal(h, "refund-checker")
    args_hash = h.il.verifications.get(verifier, pending.approval_id).args_hash
    h.il.verifications.decide(
        verifier, pending.approval_id, verdict="approve", args_hash=args_hash, reasoning="fine", model="mid-1"
    )
    h.il.runs.finish(run, state="completed", reason=None, actor="test")
    assert pending.approval_id is not None
    return run, pending.approval_id


def test_audit_verify_holds_the_verdict_to_its_event(db_url: str) -> None:
    h = Harness(db_url, manifest=verifier_manifest(), audit={"signing_seed": SEED})
    try:
        _, approval_id = _settled(h)
        assert h.il.verify_audit().ok
        with h.il.engine.begin() as conn:
            conn.execute(
                update(t.approval_verdicts)
                .where(t.approval_verdicts.c.approval_id == approval_id)
                .values(settles=False, code="no_settle_rule")
            )
        report = h.il.verify_audit()
        assert not report.ok
        assert "the verdict's settles differs from its event" in report.message
        assert approval_id in report.message
    finally:
        h.close()


def test_an_evidence_bundle_carries_the_verdict_and_verifies(db_url: str) -> None:
    h = Harness(db_url, manifest=verifier_manifest(), audit={"signing_seed": SEED})
    try:
        run, approval_id = _settled(h)
        key = AuditKey.from_seed(SEED)
        bundle = json.loads(bundle_bytes(export_bundle(h.il.engine, run, key)))
    finally:
        h.close()
    [verdict] = bundle["approval_verdicts"]
    assert verdict["approval_id"] == approval_id
    assert verdict["settles"] is True
    assert "verification.verdict" in [json.loads(e["body"])["kind"] for e in bundle["events"]]
    report = verify_bundle(bundle, key.public)
    assert report.ok, report.problems

    forged = copy.deepcopy(bundle)
    forged["approval_verdicts"][0]["verdict"] = "reject"
    body = {k: v for k, v in forged.items() if k != "signature"}
    forged["signature"] = key.sign(body)
    refused = verify_bundle(forged, key.public)
    assert not refused.ok
    assert any("verdict's verdict differs from its event" in p for p in refused.problems)


# ---- a verifier and a person deciding at the same moment: the action runs once -------------------


def test_a_verifier_and_a_person_racing_run_the_action_once(h: Harness, desk: Any) -> None:
    person, _ = h.il.operators.create("bob", roles=["approver"], workflows=None, actor="test")
    verifier = _principal(h, "refund-checker")
    for round_ in range(3):
        run = h.run()
        pending = h.act(run, "payments.refund", {**REFUND, "ticket_id": f"T-100{round_ + 1}"})
        args_hash = h.il.verifications.get(verifier, pending.approval_id).args_hash
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def by_verifier(approval_id: str = str(pending.approval_id), args_hash: str = args_hash) -> None:
            barrier.wait()
            try:
                h.il.verifications.decide(verifier, approval_id, verdict="approve", args_hash=args_hash)
                outcomes.append("verifier")
            except ConflictError as exc:
                outcomes.append(exc.code)

        def by_person(approval_id: str = str(pending.approval_id)) -> None:
            barrier.wait()
            try:
                h.il.approvals.decide(approval_id, operator=person.principal(), approve=True)
                outcomes.append("person")
            except ConflictError as exc:
                outcomes.append(exc.code)

        threads = [threading.Thread(target=by_verifier), threading.Thread(target=by_person)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(outcomes) == 2
        assert sum(o in ("verifier", "person") for o in outcomes) >= 1
        view = h.il.approvals.get(str(pending.approval_id))
        assert view.state == "approved"
        assert view.execution == "done"
    assert desk.refunds_total() == 3 * 120  # each approved refund ran exactly once
    assert h.il.verify_audit().ok
