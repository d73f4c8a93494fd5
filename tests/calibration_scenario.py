"""Runs of the reference workflow whose outcomes are known, for the calibration tests (store, weekly
review, console, browser): every action goes through the real pipeline, and people decide through the
approval and handoff services.

``triage-bot`` states:

- 0.95 on 20 reads: 16 run (T-1001 … T-1016), 4 fail on tickets that do not exist → right 80%;
- 0.85 on 9 refunds of 120 USD (above the 50 USD limit, so each waits for a person): 6 approved,
  2 rejected, 1 left waiting → right 6 of 8, the waiting one is not judged;
- 0.3 on 3 refunds the ``unsure`` stop rule (below 0.5) hands to a person: resumed as is,
  resumed with edited arguments, stopped → right 1 of 3.

31 judged actions: ECE = (20·0.15 + 8·0.10 + 3·|1/3 − 0.3|) / 31 = 3.9 / 31. ``reporter`` states 0.9
on two reads: not enough data.
"""

from __future__ import annotations

from typing import Any

from conftest import Harness

JUDGED = 31
ECE = 3.9 / 31
BUCKETS = {  # bucket index → (n, right, outcomes)
    9: (20, 16, {"ran": 16, "failed": 4}),
    8: (8, 6, {"approved": 6, "rejected": 2}),
    3: (3, 1, {"approved": 1, "corrected": 1, "rejected": 1}),
}


def refund(ticket: str, amount: float = 120) -> dict[str, Any]:
    return {"ticket_id": ticket, "amount": amount, "currency": "USD", "reason": "charged twice"}


def build(h: Harness) -> dict[str, Any]:
    """Act out the scenario on ``h``; returns the waiting approval's id."""
    approver, _ = h.il.operators.create("calib-approver", roles=["approver"], workflows=None, actor="test")
    person = approver.principal()

    run = h.run()
    for n in range(16):
        assert h.act(run, "tickets.get", {"ticket_id": f"T-{1001 + n}"}, confidence=0.95).executed
    for n in range(4):
        assert h.act(run, "tickets.get", {"ticket_id": f"T-{9001 + n}"}, confidence=0.95).status == "failed"
    h.il.finish_run(h.tokens["triage-bot"], run)

    waiting = ""
    for n in range(9):
        run = h.run()
        asked = h.act(run, "payments.refund", refund(f"T-{1001 + n}"), confidence=0.85)
        assert asked.status == "pending_approval", asked
        if n < 6:
            assert h.il.approvals.decide(asked.approval_id, operator=person, approve=True).state == "approved"
        elif n < 8:
            assert (
                h.il.approvals.decide(asked.approval_id, operator=person, approve=False).state == "rejected"
            )
        else:
            waiting = str(asked.approval_id)

    for action in ("resume", "resume_with_arguments", "stop"):
        run = h.run()
        held = h.act(run, "payments.refund", refund("T-1010", 20), confidence=0.3)
        assert held.status == "escalated", held
        [handoff] = [x for x in h.il.handoffs.list(workflow=h.workflow) if x.run_id == run]
        h.il.resolve_handoff(
            handoff.id,
            action=action,  # type: ignore[arg-type]
            actor="ops@example.com",
            arguments=refund("T-1010", 15) if action == "resume_with_arguments" else None,
        )

    run = h.run("reporter")
    for ticket in ("T-1001", "T-1002"):
        assert h.act(run, "tickets.get", {"ticket_id": ticket}, agent="reporter", confidence=0.9).executed
    return {"waiting": waiting}
