"""The approval state machine on SQLite and PostgreSQL: who may decide, quorum, four eyes, expiry,
exactly-once execution with exactly the approved arguments, restarts, and the audit record."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, update

from conftest import SUPPORT_TRIAGE, Harness
from interlock import Interlock, Settings
from interlock._internal.approvals.models import AgentApprovalView
from interlock._internal.audit.chain import iter_events
from interlock._internal.identity.operators import Operator
from interlock._internal.manifest.loader import LoadedManifest, load_manifest_text
from interlock._internal.store import tables as t
from interlock.exceptions import ArgumentsInvalid, ConflictError, NotFound, PermissionDenied

WF = "support-triage"
REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}
EMAIL = {"ticket_id": "T-1001", "to": "customer@example.com", "subject": "Your order", "body": "On its way."}
APPROVALS_BLOCK = "approvals:\n  expires_after_s: 86400\n  quorum: 1\n  allow_self_approval: false\n"


def manifest(
    *, quorum: int = 1, self_approval: bool = False, roles: list[str] | None = None
) -> LoadedManifest:
    text = SUPPORT_TRIAGE.read_text(encoding="utf-8")
    assert APPROVALS_BLOCK in text
    block = (
        f"approvals:\n  expires_after_s: 86400\n  quorum: {quorum}\n"
        f"  allow_self_approval: {'true' if self_approval else 'false'}\n"
    )
    if roles is not None:
        block += f"  approver_roles: [{', '.join(roles)}]\n"
    return load_manifest_text(
        text.replace(APPROVALS_BLOCK, block), file=str(SUPPORT_TRIAGE), base_dir=SUPPORT_TRIAGE.parent
    )


def operator(h: Harness, op_id: str, *roles: str, workflows: list[str] | None = None) -> Operator:
    record, _ = h.il.operators.create(
        op_id, roles=list(roles) or ["approver"], workflows=workflows, actor="test"
    )
    return record.principal()


def events(h: Harness, *kinds: str) -> list[Any]:
    return list(iter_events(h.il.engine, kinds=kinds or None))


def approval_row(h: Harness, approval_id: str) -> dict[str, Any]:
    with h.il.engine.connect() as conn:
        return dict(conn.execute(select(t.approvals).where(t.approvals.c.id == approval_id)).mappings().one())


def set_expiry(h: Harness, approval_id: str, expires_at: float) -> None:
    with h.il.engine.begin() as conn:
        conn.execute(update(t.approvals).where(t.approvals.c.id == approval_id).values(expires_at=expires_at))


@pytest.fixture
def quorum2(db_url: str) -> Iterator[Harness]:
    h = Harness(db_url, manifest=manifest(quorum=2))
    yield h
    h.close()


# ---- the happy paths -----------------------------------------------------------------------------


def test_approve_runs_the_action_once_and_records_who_and_why(harness: Harness, desk: Any) -> None:
    alice = operator(harness, "alice")
    run = harness.run()
    pending = harness.act(
        run, "payments.refund", REFUND, idempotency_key="r-1", reasoning="item arrived broken", confidence=0.9
    )
    assert pending.status == "pending_approval"
    view = harness.il.approvals.get(pending.approval_id)
    assert view.state == "pending"
    assert view.quorum == 1
    assert view.approve_votes == 0
    assert view.package.tool == "payments.refund"
    assert view.package.reasoning == "item arrived broken"
    assert view.package.impact_if_accepted
    assert view.package.impact_if_rejected
    assert view.risk == ["money"]
    assert view.run is not None
    assert view.run.id == run
    assert view.expires_in_s is not None
    assert view.expires_in_s > 86000

    decided = harness.il.approvals.decide(
        pending.approval_id, operator=alice, approve=True, comment="photo checks out"
    )
    assert decided.state == "approved"
    assert decided.decided_by == ["alice"]
    assert decided.comment == "photo checks out"
    assert decided.execution == "done"
    assert decided.outcome is not None
    assert decided.outcome.status == "executed"
    assert decided.outcome.result["amount"] == 120
    assert decided.expires_in_s is None
    assert desk.refunds_total() == 120
    assert approval_row(harness, pending.approval_id)["payload"] is None

    retry = harness.act(run, "payments.refund", REFUND, idempotency_key="r-1")
    assert retry.status == "executed"
    assert retry.replayed
    assert harness.il.pipeline.execute_approved(pending.approval_id) is None
    assert desk.refunds_total() == 120

    [event] = events(harness, "approval.approved")
    assert event.actor == "operator:alice"
    assert event.run_id == run
    assert event.data["comment"] == "photo checks out"
    assert event.data["decided_by"] == ["alice"]
    assert event.data["args_hash"] == view.args_hash
    assert harness.il.verify_audit().ok


def test_reject_tells_the_agent_why(harness: Harness, desk: Any) -> None:
    bob = operator(harness, "bob")
    run = harness.run()
    pending = harness.act(run, "payments.refund", REFUND, idempotency_key="r-2")
    view = harness.il.approvals.decide(
        pending.approval_id, operator=bob, approve=False, comment="  refund 50 instead, per policy  "
    )
    assert view.state == "rejected"
    assert view.decided_by == ["bob"]
    assert view.comment == "refund 50 instead, per policy"
    assert view.outcome is not None
    assert view.outcome.status == "denied"
    assert view.outcome.decision.reasons[0].code == "rejected"
    agent_view = AgentApprovalView.of(harness.il.approvals.get(pending.approval_id))
    assert agent_view.state == "rejected"
    assert agent_view.comment == "refund 50 instead, per policy"
    assert agent_view.decided_by == ["bob"]

    retry = harness.act(run, "payments.refund", REFUND, idempotency_key="r-2")
    assert retry.status == "denied"
    assert retry.replayed
    assert retry.approval_id == pending.approval_id
    [reason] = retry.decision.reasons
    assert reason.code == "rejected"
    assert "refund 50 instead, per policy" in reason.message
    assert desk.refunds_total() == 0
    assert approval_row(harness, pending.approval_id)["payload"] is None
    assert harness.il.pipeline.execute_approved(pending.approval_id) is None

    [event] = events(harness, "approval.rejected")
    assert event.actor == "operator:bob"
    assert event.data["comment"] == "refund 50 instead, per policy"


def test_cancel_withdraws_a_request(harness: Harness, desk: Any) -> None:
    owner = operator(harness, "olga", "owner")
    auditor = operator(harness, "audrey", "auditor")
    run = harness.run()
    pending = harness.act(run, "emails.send", EMAIL, idempotency_key="e-1")
    with pytest.raises(PermissionDenied) as denied:
        harness.il.approvals.cancel(pending.approval_id, operator=auditor)
    assert denied.value.code == "not_eligible"
    view = harness.il.approvals.cancel(pending.approval_id, operator=owner, comment="ticket closed meanwhile")
    assert view.state == "cancelled"
    assert view.decided_by == ["olga"]
    retry = harness.act(run, "emails.send", EMAIL, idempotency_key="e-1")
    assert retry.status == "denied"
    assert retry.decision.reasons[0].code == "approval_cancelled"
    [event] = events(harness, "approval.cancelled")
    assert event.actor == "operator:olga"
    assert event.data["comment"] == "ticket closed meanwhile"


# ---- invalid transitions -------------------------------------------------------------------------


def test_only_pending_approvals_move(harness: Harness) -> None:
    alice, bob = operator(harness, "alice"), operator(harness, "bob")
    run = harness.run()
    approved = harness.act(run, "emails.send", EMAIL).approval_id
    rejected = harness.act(run, "emails.send", {**EMAIL, "subject": "Other"}).approval_id
    cancelled = harness.act(run, "emails.send", {**EMAIL, "subject": "Third"}).approval_id
    harness.il.approvals.decide(approved, operator=alice, approve=True)
    harness.il.approvals.decide(rejected, operator=alice, approve=False)
    harness.il.approvals.cancel(cancelled, operator=alice)
    for approval_id, state in ((approved, "approved"), (rejected, "rejected"), (cancelled, "cancelled")):
        for approve in (True, False):
            with pytest.raises(ConflictError) as err:
                harness.il.approvals.decide(approval_id, operator=bob, approve=approve)
            assert err.value.code == "already_decided"
            assert err.value.details["state"] == state
        with pytest.raises(ConflictError) as err:
            harness.il.approvals.cancel(approval_id, operator=bob)
        assert err.value.code == "already_decided"
        assert harness.il.approvals.get(approval_id).state == state
    with pytest.raises(NotFound) as missing:
        harness.il.approvals.decide("apr_missing", operator=alice, approve=True)
    assert missing.value.code == "unknown_approval"
    with pytest.raises(ArgumentsInvalid):
        harness.il.approvals.decide(approved, operator=bob, approve=True, comment="x" * 2001)
    # Refused transitions leave no trace: one audit event per real transition.
    assert len(events(harness, "approval.approved", "approval.rejected", "approval.cancelled")) == 3


def test_expiry_when_read_when_swept_and_when_decided(harness: Harness) -> None:
    alice = operator(harness, "alice")
    run = harness.run()
    read = harness.act(run, "payments.refund", REFUND, idempotency_key="x-1").approval_id
    swept = harness.act(run, "emails.send", EMAIL).approval_id
    decided = harness.act(run, "emails.send", {**EMAIL, "subject": "Late"}).approval_id
    fresh = harness.act(run, "emails.send", {**EMAIL, "subject": "Fresh"}).approval_id
    past = time.time() - 1
    for approval_id in (read, swept, decided):
        set_expiry(harness, approval_id, past)

    view = harness.il.approvals.get(read)  # expired lazily, when read
    assert view.state == "expired"
    assert view.decided_by == []
    assert view.expires_in_s is None
    retry = harness.act(run, "payments.refund", REFUND, idempotency_key="x-1")
    assert retry.status == "denied"
    assert retry.decision.reasons[0].code == "approval_expired"

    with pytest.raises(ConflictError) as err:  # deciding too late expires it, and says so
        harness.il.approvals.decide(decided, operator=alice, approve=True)
    assert err.value.code == "approval_expired"
    assert approval_row(harness, decided)["state"] == "expired"
    assert approval_row(harness, decided)["payload"] is None

    assert harness.il.approvals.expire_due() == [swept]
    assert harness.il.approvals.expire_due() == []
    assert harness.il.approvals.get(fresh).state == "pending"
    assert harness.il.approvals.expire_due(now=time.time() + 86400 + 60) == [fresh]
    expired = events(harness, "approval.expired")
    assert sorted(e.data["approval"] for e in expired) == sorted([read, swept, decided, fresh])
    assert {e.actor for e in expired} == {"interlock"}


# ---- who may decide ------------------------------------------------------------------------------


def test_only_eligible_operators_decide(db_url: str) -> None:
    h = Harness(db_url, manifest=manifest(roles=["owner"]))
    try:
        run = h.run()
        approval_id = h.act(run, "emails.send", EMAIL).approval_id
        for op in (
            operator(h, "appr", "approver"),  # not an approver role in this manifest
            operator(h, "adm", "admin"),  # admin does not imply approving
            operator(h, "aud", "auditor"),
            operator(h, "elsewhere", "owner", workflows=["billing"]),
        ):
            for approve in (True, False):
                with pytest.raises(PermissionDenied) as denied:
                    h.il.approvals.decide(approval_id, operator=op, approve=approve)
                assert denied.value.code == "not_eligible"
        assert h.il.approvals.get(approval_id).votes == []
        owner = operator(h, "own", "owner", workflows=[WF])
        assert h.il.approvals.decide(approval_id, operator=owner, approve=True).state == "approved"
    finally:
        h.close()


def test_the_operator_who_started_the_run_cannot_vote(harness: Harness, desk: Any) -> None:
    carol, dave = operator(harness, "carol"), operator(harness, "dave")
    run = harness.il.start_run(harness.tokens["triage-bot"], started_by="operator:carol").id
    approval_id = harness.act(run, "payments.refund", REFUND).approval_id
    for approve in (True, False):
        with pytest.raises(PermissionDenied) as denied:
            harness.il.approvals.decide(approval_id, operator=carol, approve=approve)
        assert denied.value.code == "self_approval_forbidden"
    assert harness.il.approvals.get(approval_id).state == "pending"
    assert harness.il.approvals.decide(approval_id, operator=dave, approve=True).execution == "done"
    assert desk.refunds_total() == 120


def test_self_approval_when_the_manifest_allows_it(db_url: str, desk: Any) -> None:
    h = Harness(db_url, manifest=manifest(self_approval=True))
    try:
        carol = operator(h, "carol")
        run = h.il.start_run(h.tokens["triage-bot"], started_by="carol").id
        approval_id = h.act(run, "payments.refund", REFUND).approval_id
        assert h.il.approvals.decide(approval_id, operator=carol, approve=True).execution == "done"
        assert desk.refunds_total() == 120
    finally:
        h.close()


# ---- quorum --------------------------------------------------------------------------------------


def test_quorum_of_two_distinct_operators(quorum2: Harness, desk: Any) -> None:
    h = quorum2
    alice, bob = operator(h, "alice"), operator(h, "bob")
    run = h.run()
    approval_id = h.act(run, "payments.refund", REFUND, idempotency_key="q-1").approval_id
    first = h.il.approvals.decide(approval_id, operator=alice, approve=True, comment="fine by me")
    assert first.state == "pending"
    assert first.approve_votes == 1
    assert first.quorum == 2
    assert [(v.operator_id, v.vote, v.comment) for v in first.votes] == [("alice", "approve", "fine by me")]
    assert desk.refunds_total() == 0
    with pytest.raises(ConflictError) as twice:
        h.il.approvals.decide(approval_id, operator=alice, approve=True)
    assert twice.value.code == "already_voted"
    with pytest.raises(ConflictError):
        h.il.approvals.decide(approval_id, operator=alice, approve=False)
    assert h.act(run, "payments.refund", REFUND, idempotency_key="q-1").status == "pending_approval"

    second = h.il.approvals.decide(approval_id, operator=bob, approve=True, comment="agreed")
    assert second.state == "approved"
    assert second.decided_by == ["alice", "bob"]
    assert second.execution == "done"
    assert desk.refunds_total() == 120
    [vote] = events(h, "approval.voted")
    assert vote.actor == "operator:alice"
    assert vote.data["comment"] == "fine by me"
    [done] = events(h, "approval.approved")
    assert done.actor == "operator:bob"
    assert done.data["comment"] == "agreed"


def test_one_reject_rejects_despite_approve_votes(quorum2: Harness, desk: Any) -> None:
    alice, bob = operator(quorum2, "alice"), operator(quorum2, "bob")
    approval_id = quorum2.act(quorum2.run(), "payments.refund", REFUND).approval_id
    quorum2.il.approvals.decide(approval_id, operator=alice, approve=True)
    view = quorum2.il.approvals.decide(approval_id, operator=bob, approve=False, comment="duplicate refund")
    assert view.state == "rejected"
    assert view.decided_by == ["bob"]
    assert view.approve_votes == 1
    assert desk.refunds_total() == 0


# ---- concurrency ---------------------------------------------------------------------------------


def _race(calls: list[Any]) -> tuple[list[Any], list[BaseException]]:
    barrier = threading.Barrier(len(calls))
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(call: Any) -> None:
        barrier.wait()
        try:
            value = call()
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    return results, errors


def test_approvers_deciding_at_once_decide_once(harness: Harness, desk: Any) -> None:
    ops = [operator(harness, f"op{i}") for i in range(4)]
    approval_id = harness.act(harness.run(), "payments.refund", REFUND).approval_id
    results, errors = _race(
        [
            lambda op=op, i=i: harness.il.approvals.decide(approval_id, operator=op, approve=i != 3)
            for i, op in enumerate(ops)
        ]
    )
    assert len(results) == 1, errors
    assert len(errors) == 3
    assert all(isinstance(e, ConflictError) and e.code == "already_decided" for e in errors)
    final = harness.il.approvals.get(approval_id)
    assert len(final.votes) == 1
    assert final.decided_by == [final.votes[0].operator_id]
    assert desk.refunds_total() == (120 if final.state == "approved" else 0)
    assert len(events(harness, "approval.approved", "approval.rejected")) == 1


def test_quorum_completed_by_two_at_once_runs_once(quorum2: Harness, desk: Any) -> None:
    alice, bob = operator(quorum2, "alice"), operator(quorum2, "bob")
    approval_id = quorum2.act(quorum2.run(), "payments.refund", REFUND).approval_id
    results, errors = _race(
        [
            lambda op=op: quorum2.il.approvals.decide(approval_id, operator=op, approve=True)
            for op in (alice, bob)
        ]
    )
    assert not errors
    assert len(results) == 2
    assert quorum2.il.approvals.get(approval_id).state == "approved"
    assert desk.refunds_total() == 120
    assert len(events(quorum2, "approval.voted")) == 1
    assert len(events(quorum2, "approval.approved")) == 1


# ---- bound to the arguments ----------------------------------------------------------------------


def test_changed_arguments_need_a_new_approval(harness: Harness, desk: Any) -> None:
    alice = operator(harness, "alice")
    run = harness.run()
    first = harness.act(run, "payments.refund", REFUND, idempotency_key="swap")
    view = harness.il.approvals.decide(first.approval_id, operator=alice, approve=True)
    assert view.outcome is not None
    assert view.outcome.result["amount"] == 120

    swapped = {**REFUND, "amount": 450}
    with pytest.raises(ConflictError) as reused:
        harness.act(run, "payments.refund", swapped, idempotency_key="swap")
    assert reused.value.code == "idempotency_key_reused"
    second = harness.act(run, "payments.refund", swapped)
    assert second.status == "pending_approval"
    assert second.approval_id != first.approval_id
    assert harness.il.approvals.get(second.approval_id).args_hash != view.args_hash
    assert harness.il.approvals.get(second.approval_id).state == "pending"
    assert desk.refunds_total() == 120


def test_swap_between_votes_does_not_change_what_runs(quorum2: Harness, desk: Any) -> None:
    h = quorum2
    alice, bob = operator(h, "alice"), operator(h, "bob")
    run = h.run()
    first = h.act(run, "payments.refund", REFUND, idempotency_key="swap")
    h.il.approvals.decide(first.approval_id, operator=alice, approve=True)
    swapped = {**REFUND, "amount": 450}
    with pytest.raises(ConflictError) as reused:
        h.act(run, "payments.refund", swapped, idempotency_key="swap")
    assert reused.value.code == "idempotency_key_reused"
    other = h.act(run, "payments.refund", swapped).approval_id
    done = h.il.approvals.decide(first.approval_id, operator=bob, approve=True)
    assert done.outcome is not None
    assert done.outcome.result["amount"] == 120
    assert desk.refunds_total() == 120
    assert h.il.approvals.get(other).state == "pending"
    assert h.il.approvals.get(other).approve_votes == 0


# ---- restarts and pauses -------------------------------------------------------------------------


def test_pending_approval_survives_a_restart(db_url: str, desk: Any) -> None:
    first = Harness(db_url)
    run = first.run()
    approval_id = first.act(run, "payments.refund", REFUND, idempotency_key="boot").approval_id
    operator(first, "alice")
    first.close()

    with Interlock(Settings(database={"url": db_url})) as il:
        il.load_workflow(SUPPORT_TRIAGE)
        alice = il.operators.get("alice").principal()
        assert [v.id for v in il.approvals.list()] == [approval_id]
        view = il.approvals.decide(approval_id, operator=alice, approve=True)
        assert view.execution == "done"
        assert il.pipeline.execute_approved(approval_id) is None
        assert il.approvals.resume_held() == []
        assert desk.refunds_total() == 120
        with il.engine.connect() as conn:
            executed = conn.execute(
                select(func.count()).where(
                    t.steps.c.run_id == run,
                    t.steps.c.tool == "payments.refund",
                    t.steps.c.status == "executed",
                )
            ).scalar_one()
        assert executed == 1


def test_approved_while_paused_is_held_then_resumed(harness: Harness, desk: Any) -> None:
    alice = operator(harness, "alice")
    approval_id = harness.act(harness.run(), "payments.refund", REFUND).approval_id
    harness.il.set_paused(WF, paused=True, actor="ops", reason="incident")
    view = harness.il.approvals.decide(approval_id, operator=alice, approve=True)
    assert view.state == "approved"
    assert view.execution == "held"
    assert desk.refunds_total() == 0
    assert harness.il.approvals.resume_held() == []  # still paused: held again
    # Resuming the workflow releases what it held, once.
    harness.il.set_paused(WF, paused=False, actor="ops")
    assert harness.il.approvals.get(approval_id).execution == "done"
    assert harness.il.approvals.resume_held() == []
    assert desk.refunds_total() == 120


# ---- listing -------------------------------------------------------------------------------------


def test_list_filters(harness: Harness) -> None:
    alice = operator(harness, "alice")
    run = harness.run()
    refund = harness.act(run, "payments.refund", REFUND).approval_id
    email = harness.act(run, "emails.send", EMAIL).approval_id
    done = harness.act(run, "emails.send", {**EMAIL, "subject": "Done"}).approval_id
    harness.il.approvals.decide(done, operator=alice, approve=False)
    with harness.il.engine.begin() as conn:
        conn.execute(
            update(t.approvals).where(t.approvals.c.id == refund).values(created_at=time.time() - 3600)
        )

    listing = harness.il.approvals.list
    assert [v.id for v in listing()] == [refund, email]  # oldest first
    assert [v.id for v in listing(risk="money")] == [refund]
    assert [v.id for v in listing(risk="external")] == [email]
    assert [v.id for v in listing(older_than_s=600)] == [refund]
    assert [v.id for v in listing(state="rejected")] == [done]
    assert {v.id for v in listing(state="all")} == {refund, email, done}
    assert {v.id for v in listing(state=None)} == {refund, email, done}
    assert listing(workflow="billing") == []
    assert [v.id for v in listing(limit=1)] == [refund]
    assert [v.id for v in listing(risk="external", limit=1)] == [email]
    assert listing(operator=operator(harness, "other", workflows=["billing"])) == []
    assert len(listing(operator=operator(harness, "mine", workflows=[WF]))) == 2
    with pytest.raises(ArgumentsInvalid):
        listing(state="approvedish")
    email_view = next(v for v in listing() if v.id == email)
    assert email_view.arguments["to"] == "c***@example.com"  # redacted for display
