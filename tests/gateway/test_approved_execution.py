"""An approved action runs once, with exactly the approved arguments, through the pipeline."""

from __future__ import annotations

import threading

from sqlalchemy import select, update

from interlock._internal.store import tables as t


def approve_row(h, approval_id: str) -> None:
    with h.il.engine.begin() as conn:
        conn.execute(update(t.approvals).where(t.approvals.c.id == approval_id).values(state="approved"))


def test_approved_refund_runs_once_and_answers_the_idempotency_key(harness, desk) -> None:
    run = harness.run()
    args = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}
    pending = harness.act(run, "payments.refund", args, idempotency_key="r-1003")
    assert pending.status == "pending_approval"
    approve_row(harness, pending.approval_id)
    results: list[object] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(harness.il.pipeline.execute_approved(pending.approval_id))
        )
        for _ in range(4)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    executed = [r for r in results if r is not None]
    assert len(executed) == 1
    assert executed[0].status == "executed"
    assert desk.refunds_total() == 120
    retry = harness.act(run, "payments.refund", args, idempotency_key="r-1003")
    assert retry.status == "executed"
    assert retry.replayed
    with harness.il.engine.connect() as conn:
        row = (
            conn.execute(select(t.approvals).where(t.approvals.c.id == pending.approval_id)).mappings().one()
        )
    assert row["execution"] == "done"
    assert row["payload"] is None
    assert row["outcome"]["status"] == "executed"


def test_paused_workflow_holds_an_approved_action(harness, desk) -> None:
    run = harness.run()
    pending = harness.act(
        run, "payments.refund", {"ticket_id": "T-1003", "amount": 80, "currency": "USD", "reason": "late"}
    )
    approve_row(harness, pending.approval_id)
    harness.il.set_paused(harness.workflow, paused=True, actor="ops", reason="incident")
    assert harness.il.pipeline.execute_approved(pending.approval_id) is None
    assert desk.refunds_total() == 0
    harness.il.set_paused(harness.workflow, paused=False, actor="ops")
    # Resuming releases what the pause held: it ran once, and there is nothing left to run.
    assert desk.refunds_total() == 80
    assert harness.il.pipeline.execute_approved(pending.approval_id) is None
    assert harness.il.approvals.get(pending.approval_id).execution == "done"


def test_revoking_the_agent_withdraws_its_approved_action(harness, desk) -> None:
    run = harness.run()
    pending = harness.act(
        run, "payments.refund", {"ticket_id": "T-1003", "amount": 90, "currency": "USD", "reason": "late"}
    )
    harness.il.agents.revoke("triage-bot", actor="security")
    approve_row(harness, pending.approval_id)
    result = harness.il.pipeline.execute_approved(pending.approval_id)
    assert result is not None
    assert result.status == "denied"
    assert result.decision.reason_codes == ["agent_revoked"]
    assert desk.refunds_total() == 0
    assert harness.il.approvals.get(pending.approval_id).execution == "refused"
