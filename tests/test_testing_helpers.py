"""interlock.testing: users test their workflows through the real pipeline with stub upstreams."""

from __future__ import annotations

from conftest import SUPPORT_TRIAGE
from interlock.testing import embedded


def test_embedded_kit_runs_the_real_pipeline_with_stub_upstreams() -> None:
    with embedded(SUPPORT_TRIAGE) as kit:
        kit.stub(
            "payments.refund",
            lambda **a: {
                "refund_id": "R-0001",
                "ticket_id": a["ticket_id"],
                "amount": a["amount"],
                "currency": a["currency"],
                "status": "succeeded",
            },
        )
        run = kit.run("triage-bot")
        small = kit.act(
            run, "payments.refund", {"ticket_id": "T-1", "amount": 30, "currency": "USD", "reason": "x"}
        )
        assert small.status == "executed"
        assert small.result["refund_id"] == "R-0001"
        big = kit.act(
            run, "payments.refund", {"ticket_id": "T-1", "amount": 900, "currency": "USD", "reason": "x"}
        )
        assert big.status == "denied"
        assert [c.tool for c in kit.upstream.calls] == ["payments.refund"]  # the denied one never ran
        unstubbed = kit.act(run, "tickets.get", {"ticket_id": "T-1"})
        assert unstubbed.status == "failed"
        assert "no in-memory stub" in (unstubbed.error or "")
        kinds = [e.kind for e in kit.audit(run_id=run)]
        assert kinds[0] == "run.started"
        assert "action.executed" in kinds
        assert "action.denied" in kinds
