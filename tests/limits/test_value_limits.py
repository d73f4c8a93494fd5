"""Value limits on the reference workflow (SQLite and PostgreSQL): refunds capped per ticket and
per workflow per day, reserved with the budgets, released when the action does not happen, and
shown to approvers as headroom."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from conftest import SUPPORT_TRIAGE, Harness
from interlock._internal.limits import value_limits
from interlock._internal.manifest.loader import load_manifest_text
from interlock._internal.store import tables as t


def variant(edit: Any) -> Any:
    data = yaml.safe_load(SUPPORT_TRIAGE.read_text())
    edit(data)
    return load_manifest_text(
        yaml.safe_dump(data, sort_keys=False), file="variant.yaml", base_dir=SUPPORT_TRIAGE.parent
    )


def refund(ticket: str, amount: float, reason: str = "damaged", currency: str = "USD") -> dict[str, Any]:
    return {"ticket_id": ticket, "amount": amount, "currency": currency, "reason": reason}


def counters(h: Harness) -> dict[tuple[str, str], tuple[int, int]]:
    c = t.value_counters
    with h.il.engine.connect() as conn:
        rows = conn.execute(select(c.c.limit_id, c.c.key, c.c.used_micros, c.c.reserved_micros)).all()
    return {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}


def used(h: Harness, limit: str) -> float:
    return sum(u for (lim, _), (u, _r) in counters(h).items() if lim == limit) / 1_000_000


def test_per_ticket_cap_refuses_with_the_headroom_and_other_tickets_still_pass(
    harness: Harness, desk
) -> None:
    run = harness.run()
    for i, amount in enumerate((*[50] * 9, 35)):  # 485 on T-1001
        result = harness.act(run, "payments.refund", refund("T-1001", amount, f"case {i}"))
        assert result.executed, result.decision.reasons
    refused = harness.act(run, "payments.refund", refund("T-1001", 50, "case over"))
    assert refused.status == "limited"
    [reason] = refused.decision.reasons
    assert reason.code == "value_limit_exceeded"
    assert reason.policy_id == "value:refunds-per-ticket-day"
    assert "refunds-per-ticket-day" in reason.message
    assert "485 USD already used today for ticket_id T-1001" in reason.message
    assert "headroom 15 USD" in reason.message
    assert "asks 50 USD" in reason.message
    assert harness.il.get_run(run).state == "running"  # a value limit does not stop the run
    # What fits still runs, on the same ticket and on another one.
    assert harness.act(run, "payments.refund", refund("T-1001", 15, "fits")).executed
    assert harness.act(run, "payments.refund", refund("T-1002", 50, "other ticket")).executed
    assert used(harness, "refunds-per-ticket-day") == pytest.approx(550)
    assert used(harness, "refunds-per-workflow-day") == pytest.approx(550)
    assert desk.refunds_total("USD") == pytest.approx(550)
    # EUR refunds are outside both USD limits (their `when`).
    assert harness.act(run, "payments.refund", refund("T-1001", 50, "eur", "EUR")).executed


def test_a_refusal_by_one_limit_takes_nothing_from_the_others(db_url: str) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["budgets"]["value_limits"][1]["max"] = 60  # the workflow's day: 60 USD

    h = Harness(db_url, variant(edit))
    run = h.run()
    assert h.act(run, "payments.refund", refund("T-1001", 40)).executed
    refused = h.act(run, "payments.refund", refund("T-1002", 30, "second"))
    assert refused.decision.reasons[0].policy_id == "value:refunds-per-workflow-day"
    assert "headroom 20 USD" in refused.decision.reasons[0].message
    # The per-ticket limit (checked first, by id) reserved 30 for T-1002, then rolled back with it.
    per_ticket = {k: v for (lim, k), v in counters(h).items() if lim == "refunds-per-ticket-day"}
    assert per_ticket == {'["workflow","","T-1001"]': (40_000_000, 0)}
    with h.il.engine.connect() as conn:
        assert conn.execute(select(t.value_holds.c.state)).scalars().all() == ["used", "used"]
    h.close()


def test_a_failed_refund_releases_its_reservation(harness: Harness) -> None:
    run = harness.run()
    failed = harness.act(run, "payments.refund", refund("T-9999", 50))  # no such ticket upstream
    assert failed.status == "failed"
    assert counters(harness)
    assert all(v == (0, 0) for v in counters(harness).values())
    with harness.il.engine.connect() as conn:
        states = {r[0] for r in conn.execute(select(t.value_holds.c.state))}
    assert states == {"released"}


def test_the_approval_package_shows_the_headroom(harness: Harness) -> None:
    run = harness.run()
    assert harness.act(run, "payments.refund", refund("T-1003", 50)).executed
    assert harness.act(run, "payments.refund", refund("T-1003", 45.5, "second")).executed
    pending = harness.act(run, "payments.refund", refund("T-1003", 120, "big"))
    assert pending.status == "pending_approval"
    view = harness.il.approvals.get(pending.approval_id)
    limits = {v["id"]: v for v in view.package.model_dump()["value_limits"]}
    ticket = limits["refunds-per-ticket-day"]
    assert ticket["max"] == 500
    assert ticket["used"] == pytest.approx(95.5)
    assert ticket["headroom"] == pytest.approx(404.5)
    assert ticket["amount"] == 120
    assert ticket["fits"] is True
    assert ticket["scope"] == "for ticket_id T-1003"
    assert limits["refunds-per-workflow-day"]["headroom"] == pytest.approx(4904.5)
    # Approved and executed, it counts like any other refund.
    approver, _ = harness.il.operators.create("alice", roles=["approver"], workflows=None, actor="test")
    harness.il.approvals.decide(pending.approval_id, operator=approver.principal(), approve=True)
    assert used(harness, "refunds-per-ticket-day") == pytest.approx(215.5)


def test_an_approved_refund_past_the_cap_is_refused_when_it_executes(db_url: str) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["budgets"]["value_limits"][0]["max"] = 150

    h = Harness(db_url, variant(edit))
    run = h.run()
    pending = h.act(run, "payments.refund", refund("T-1004", 120, "big"))
    assert h.act(run, "payments.refund", refund("T-1004", 50, "small")).executed
    view = h.il.approvals.get(pending.approval_id)
    [ticket] = [v for v in view.package.model_dump()["value_limits"] if v["id"] == "refunds-per-ticket-day"]
    assert ticket["fits"] is True  # when it was asked, 150 were left
    approver, _ = h.il.operators.create("alice", roles=["approver"], workflows=None, actor="test")
    decided = h.il.approvals.decide(pending.approval_id, operator=approver.principal(), approve=True)
    assert decided.execution == "refused"
    assert decided.outcome is not None
    assert decided.outcome.decision.reason_codes == ["value_limit_exceeded"]
    assert "headroom 100 USD" in decided.outcome.decision.reasons[0].message
    assert used(h, "refunds-per-ticket-day") == pytest.approx(50)
    h.close()


def test_200_concurrent_refunds_over_20_runs_move_exactly_the_cap(db_url: str, desk) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["budgets"]["per_run"] = {"max_steps": 10_000, "max_tool_calls": 10_000}
        data["budgets"]["value_limits"] = [
            {"id": "day-cap", "tool": "payments.refund", "argument": "amount", "max": 1234, "unit": "USD"}
        ]

    h = Harness(db_url, variant(edit))
    runs = [h.run() for _ in range(20)]
    barrier = threading.Barrier(200)
    statuses: list[str] = []

    def one(i: int) -> None:
        barrier.wait()
        statuses.append(
            h.act(runs[i % 20], "payments.refund", refund(f"T-{1001 + i % 20}", 12.34, f"c{i}")).status
        )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(200)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    counts = Counter(statuses)
    assert counts == {"executed": 100, "limited": 100}, counts
    assert counters(h) == {("day-cap", '["workflow",""]'): (1_234_000_000, 0)}
    assert desk.refunds_total() == pytest.approx(1234)
    h.close()


def test_outcome_unknown_counts_until_a_person_says_it_did_not_happen(harness: Harness) -> None:
    from interlock._internal.gateway import recovery

    run = harness.run()
    manifest = harness.runtime.manifest
    spec = manifest.tool("payments.refund")
    assert spec is not None
    now = time.time()
    # A call journaled and reserved by a process that then died: only its hold and journal row.
    with harness.il.engine.begin() as conn:
        value_limits.reserve(
            conn,
            manifest,
            spec,
            refund("T-1005", 80),
            workflow=harness.workflow,
            agent_id="triage-bot",
            run_id=run,
            step_id="stp_dead",
            now=now,
        )
        conn.execute(
            t.executions.insert().values(
                id="stp_dead",
                run_id=run,
                workflow=harness.workflow,
                agent_id="triage-bot",
                tool="payments.refund",
                args_hash="x",
                upstream_key="il1-dead",
                seq=1,
                state="executing",
                attempts=1,
                decision={"decision": "allow", "reasons": [], "tool": "payments.refund", "verb": "refund"},
                payload=refund("T-1005", 80),
                cost_micros=0,
                lease_expires_at=now - 1,
                created_at=now - 60,
            )
        )
    assert used(harness, "refunds-per-ticket-day") == 0
    assert recovery.recover_expired(harness.il.engine) == ["stp_dead"]
    assert used(harness, "refunds-per-ticket-day") == 80  # it may have happened: it counts
    [handoff] = harness.il.handoffs.list(workflow=harness.workflow)
    harness.il.resolve_handoff(handoff.id, action="not_happened", actor="ops@example.com")
    assert used(harness, "refunds-per-ticket-day") == 0


# ---- the pure judgement replay uses ------------------------------------------------------------


def test_check_history_re_judges_from_recorded_actions() -> None:
    loaded = load_manifest_text(SUPPORT_TRIAGE.read_text(), base_dir=SUPPORT_TRIAGE.parent)
    manifest = loaded.manifest
    spec = manifest.tool("payments.refund")
    assert spec is not None
    day = datetime(2026, 12, 3, 12, tzinfo=UTC).timestamp()
    prior = [
        value_limits.Prior("payments.refund", refund("T-1001", 300), "triage-bot", "run_a", day - 3600),
        value_limits.Prior("payments.refund", refund("T-1001", 150), "triage-bot", "run_b", day - 60),
        value_limits.Prior(
            "payments.refund", refund("T-1001", 400, currency="EUR"), "triage-bot", "run_b", day
        ),
        value_limits.Prior("payments.refund", refund("T-1002", 400), "triage-bot", "run_b", day),
        value_limits.Prior("payments.refund", refund("T-1001", 400), "triage-bot", "run_c", day - 86_400),
    ]

    def judge(amount: float) -> Any:
        return value_limits.check_history(
            manifest,
            spec,
            refund("T-1001", amount),
            agent_id="triage-bot",
            run_id="run_d",
            at=day,
            prior=prior,
        )

    assert judge(50) is None  # 450 used on T-1001 today (EUR, other tickets and yesterday apart)
    refused = judge(50.01)
    assert refused is not None
    assert refused.policy_id == "value:refunds-per-ticket-day"
    assert "headroom 50 USD" in refused.message
    assert "asks 50.01 USD" in refused.message


def test_replay_and_what_if_re_judge_value_limits_from_the_workflows_history(harness: Harness, desk) -> None:
    """Recorded under the reference cap (500 USD per ticket per day), three runs each refund 50 USD
    on T-1001. Under a candidate capping 120 USD, the third refund no longer fits beside the 100
    the two earlier runs moved; under a candidate without value limits, a recorded refusal passes."""
    from interlock._internal.evals.whatif import what_if
    from interlock._internal.gateway.runtime import build_runtime
    from interlock._internal.runs.history import value_ledger
    from interlock._internal.runs.replay import load_run, replay_run

    engine = harness.il.engine
    runs = []
    for i in range(3):
        run = harness.run()
        assert harness.act(run, "payments.refund", refund("T-1001", 50, f"case {i}")).executed
        runs.append(run)
    for i, amount in enumerate((*[50] * 9, 35)):  # 485 on T-1002, then one the recorded cap refuses
        assert harness.act(runs[0], "payments.refund", refund("T-1002", amount, f"more {i}")).executed
    over = harness.act(runs[0], "payments.refund", refund("T-1002", 50, "one too many"))
    assert over.decision.reasons[0].code == "value_limit_exceeded"

    def refunds(candidate: Any, run_id: str) -> list[Any]:
        record = load_run(engine, run_id)
        times = [float(s["created_at"]) for s in record.steps]
        ledger = value_ledger(engine, candidate.manifest, since=min(times), until=max(times) + 1)
        runtime = build_runtime(candidate)
        try:
            report = replay_run(record, runtime, ledger=ledger)
        finally:
            runtime.close()
        return [s for s in report.steps if s.tool == "payments.refund"]

    tight = variant(lambda d: d["budgets"]["value_limits"][0].update(max=120))
    [first] = refunds(tight, runs[1])
    assert (first.recorded, first.now, first.outcome) == ("allow", "allow", "same")
    [third] = refunds(tight, runs[2])
    assert (third.recorded, third.now, third.outcome) == ("allow", "deny", "changed")
    [reason] = third.now_reasons
    assert reason["code"] == "value_limit_exceeded"
    assert "100 USD already used today for ticket_id T-1001" in reason["message"]

    unlimited = variant(lambda d: d["budgets"].pop("value_limits"))
    last = refunds(unlimited, runs[0])[-1]
    assert (last.recorded, last.now, last.outcome) == ("deny", "allow", "changed")

    # What-if over the same history counts the same changes.
    tight_report = what_if(engine, tight, workers=1)
    assert tight_report.transitions.get("allow->deny", 0) >= 1
    examples = tight_report.examples["allow->deny"]
    assert any(e["new_reasons"][0]["code"] == "value_limit_exceeded" for e in examples)
    assert what_if(engine, unlimited, workers=1).transitions.get("deny->allow") == 1
