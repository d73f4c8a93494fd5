"""Budgets, caps, stop rules, locks and pauses on the reference workflow (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections import Counter
from typing import Any

import pytest
import yaml

from conftest import SUPPORT_TRIAGE, Harness
from interlock import LimitExceeded
from interlock._internal.limits.budgets import usage
from interlock._internal.manifest.loader import load_manifest_text


def variant(edit: Any) -> Any:
    """The reference manifest with ``edit(data)`` applied, tools still next to it."""
    data = yaml.safe_load(SUPPORT_TRIAGE.read_text())
    edit(data)
    return load_manifest_text(
        yaml.safe_dump(data, sort_keys=False), file="variant.yaml", base_dir=SUPPORT_TRIAGE.parent
    )


def tool(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in data["tools"] if t["name"] == name)


def priced_refunds(data: dict[str, Any]) -> None:
    tool(data, "payments.refund")["cost_usd"] = 0.1
    data["budgets"]["per_run"] = {"max_cost_usd": 5.0, "max_steps": 10_000, "max_tool_calls": 10_000}


def refund(i: int) -> dict[str, Any]:
    return {"ticket_id": f"T-{1001 + i % 20}", "amount": 1 + i % 40, "currency": "USD", "reason": f"case {i}"}


def hammer(h: Harness, run: str, n: int, offset: int = 0) -> Counter[str]:
    """n refunds at once from n threads."""
    results: list[str] = []
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        results.append(h.act(run, "payments.refund", refund(offset + i)).status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return Counter(results)


def test_200_concurrent_refunds_against_a_budget_for_50(db_url, desk) -> None:
    h = Harness(db_url, variant(priced_refunds))
    run = h.run()
    counts = hammer(h, run, 200)
    assert counts["executed"] == 50, counts
    assert counts["executed"] + counts["limited"] + counts["denied"] == 200
    view = h.il.get_run(run)
    assert view.cost_usd == pytest.approx(5.0)
    assert view.state == "stopped"
    with h.il.engine.connect() as conn:
        spent = usage(conn, scope="run", key=run)
    assert spent["cost_usd"] == pytest.approx(5.0)
    assert spent["reserved_usd"] == 0
    refused = [s for s in view.steps_detail if s.status == "limited"]
    assert refused
    assert refused[0].decision.reason_codes == ["budget_exceeded"]
    assert len(desk.snapshot()["refunds"]) == 50
    h.close()


def _process_worker(db_url: str, desk_db: str, secret: str, run: str, offset: int, n: int, out: Any) -> None:
    import os

    os.environ["SUPPORT_DESK_DB"] = desk_db
    from interlock import Interlock, Settings

    il = Interlock(Settings(database={"url": db_url}))  # type: ignore[arg-type]
    il.load_workflow(variant(priced_refunds))
    token = il.issue_token("triage-bot", secret).token
    statuses: list[str] = []
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        statuses.append(il.act(token, run, "payments.refund", refund(offset + i)).status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out.put(json.dumps(dict(Counter(statuses))))
    il.close()


@pytest.mark.postgres
def test_budget_holds_across_two_processes_on_postgres(pg_url, desk, _desk_db) -> None:  # noqa: PT019
    h = Harness(pg_url, variant(priced_refunds))
    run = h.run()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_worker,
            args=(pg_url, str(_desk_db), h.secrets["triage-bot"], run, k * 100, 100, out),
        )
        for k in range(2)
    ]
    for p in procs:
        p.start()
    totals: Counter[str] = Counter()
    for _ in procs:
        totals.update(json.loads(out.get(timeout=240)))
    for p in procs:
        p.join(timeout=60)
    assert totals["executed"] == 50, totals
    assert sum(totals.values()) == 200
    assert h.il.get_run(run).cost_usd == pytest.approx(5.0)
    assert len(desk.snapshot()["refunds"]) == 50
    h.close()


def test_workflow_day_budget_spans_runs(db_url) -> None:
    def edit(data: dict[str, Any]) -> None:
        tool(data, "payments.refund")["cost_usd"] = 0.5
        data["budgets"]["per_workflow_day"] = {"max_cost_usd": 1.0}

    h = Harness(db_url, variant(edit))
    first, second = h.run(), h.run()
    assert h.act(first, "payments.refund", refund(1)).executed
    assert h.act(second, "payments.refund", refund(2)).executed
    third = h.act(second, "payments.refund", refund(3))
    assert third.status == "limited"
    assert third.decision.reasons[0].policy_id == "budget:workflow_day"
    h.close()


def test_model_calls_are_priced_and_stop_the_run_past_budget(db_url) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["budgets"]["per_run"]["max_cost_usd"] = 0.05
        data["budgets"]["model_prices"] = {"gpt-test": {"input": 10.0, "output": 30.0}}

    h = Harness(db_url, variant(edit))
    run = h.run()
    first = h.il.report_model_call(
        h.tokens["triage-bot"], run, model="gpt-test", input_tokens=1000, output_tokens=1000
    )
    assert first.cost_usd == pytest.approx(0.04)
    assert first.run_state == "running"
    second = h.il.report_model_call(
        h.tokens["triage-bot"], run, model="gpt-test", input_tokens=2000, output_tokens=0
    )
    assert second.run_state == "stopped"
    assert second.reasons[0].code == "budget_exceeded"
    after = h.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert after.decision.reason_codes == ["run_not_active"]
    unpriced = h.il.report_model_call(
        h.tokens["triage-bot"], run, model="unknown", input_tokens=1, output_tokens=1
    )
    assert unpriced.cost_usd == 0
    assert [r.code for r in unpriced.reasons][-1] == "unpriced_model"
    assert h.il.get_run(run).tokens == 4002
    h.close()


def test_loop_detection_escalates_with_a_handoff(harness) -> None:
    run = harness.run()
    for _ in range(3):
        assert harness.act(run, "tickets.get", {"ticket_id": "T-1001"}).executed
    looped = harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert looped.status == "escalated"
    assert looped.decision.reason_codes == ["loop_detected"]
    assert harness.il.get_run(run).state == "escalated"
    [handoff] = harness.il.handoffs.list(workflow=harness.workflow)
    assert handoff.reason_code == "loop_detected"
    assert handoff.run_id == run
    harness.il.resolve_handoff(handoff.id, action="stop", actor="ops@example.com")
    assert harness.il.get_run(run).state == "stopped"


STOP_RULES = [
    {"id": "need-reason", "kind": "missing_data", "tool": "tickets.update", "required": ["fields.group"]},
    {
        "id": "records-agree",
        "kind": "conflicting_records",
        "tool": "payments.refund",
        "sources": ["tickets.get", "customers.get"],
        "key": "customer_id",
    },
    {"id": "legal", "kind": "sensitive_category", "tool": "replies.draft", "categories": ["legal"]},
    {"id": "unsure", "kind": "low_confidence", "threshold": 0.5},
    {
        "id": "known-groups",
        "kind": "outside_category",
        "tool": "tickets.update",
        "field": "fields.group",
        "allowed": ["billing", "tier1", "tier2"],
    },
    {"id": "update-then-email", "kind": "sequence_failure", "sequence": ["tickets.update", "emails.send"]},
]


@pytest.fixture
def stop_harness(db_url):
    def edit(data: dict[str, Any]) -> None:
        data["stop_rules"] = STOP_RULES
        data["rules"]["allow"].append({"id": "emails-ok", "tool": "emails.send"})
        data["rules"]["require_approval"] = [
            r for r in data["rules"]["require_approval"] if r["tool"] != "emails.send"
        ]

    h = Harness(db_url, variant(edit))
    yield h
    h.close()


def escalated_with(h: Harness, run: str, tool_: str, args: dict[str, Any], code: str, **kw: Any) -> None:
    res = h.act(run, tool_, args, **kw)
    assert res.status == "escalated", res
    assert res.decision.reason_codes == [code]
    assert h.il.get_run(run).state == "escalated"
    assert any(x.reason_code == code for x in h.il.handoffs.list(workflow=h.workflow))


def test_stop_rule_missing_data(stop_harness) -> None:
    run = stop_harness.run()
    escalated_with(
        stop_harness,
        run,
        "tickets.update",
        {"ticket_id": "T-1001", "fields": {"priority": "high"}},
        "missing_data",
    )


def test_stop_rule_outside_category(stop_harness) -> None:
    run = stop_harness.run()
    escalated_with(
        stop_harness,
        run,
        "tickets.update",
        {"ticket_id": "T-1001", "fields": {"group": "sales"}},
        "outside_category",
    )


def test_stop_rule_sensitive_category(stop_harness) -> None:
    run = stop_harness.run()
    escalated_with(
        stop_harness,
        run,
        "replies.draft",
        {"ticket_id": "T-1001", "body": "Our attorney will answer about the lawsuit."},
        "sensitive_category",
    )


def test_stop_rule_low_confidence(stop_harness) -> None:
    run = stop_harness.run()
    escalated_with(
        stop_harness, run, "tickets.get", {"ticket_id": "T-1001"}, "low_confidence", confidence=0.3
    )


def test_stop_rule_conflicting_records(stop_harness, desk) -> None:
    run = stop_harness.run()
    ticket = stop_harness.act(run, "tickets.get", {"ticket_id": "T-1001"}).result
    other = "C-1002" if ticket["customer_id"] != "C-1002" else "C-1003"
    assert stop_harness.act(run, "customers.get", {"customer_id": other}).executed
    escalated_with(stop_harness, run, "payments.refund", refund(0), "conflicting_records")
    assert desk.refunds_total() == 0


def test_stop_rule_sequence_failure(stop_harness) -> None:
    run = stop_harness.run()
    ok = stop_harness.act(run, "tickets.update", {"ticket_id": "T-1001", "fields": {"group": "billing"}})
    assert ok.executed, ok
    # The email fails upstream (the desk refuses the ticket), half-way through the sequence.
    failed = stop_harness.act(
        run,
        "emails.send",
        {"ticket_id": "T-9999", "to": "a@example.com", "subject": "Update", "body": "Hello"},
    )
    assert failed.status == "failed"
    assert stop_harness.il.get_run(run).state == "escalated"
    [handoff] = stop_harness.il.handoffs.list(workflow=stop_harness.workflow)
    assert handoff.reason_code == "sequence_failure"
    # A person fixes the address and resumes with edited arguments: it runs through the pipeline.
    _, result = stop_harness.il.resolve_handoff(
        handoff.id,
        action="resume_with_arguments",
        actor="ops@example.com",
        arguments={"ticket_id": "T-1001", "to": "a@example.com", "subject": "Update", "body": "Hello"},
    )
    assert result is not None
    assert result.executed
    assert stop_harness.il.get_run(run).state == "running"


def test_confidence_routing(db_url) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["confidence"] = {"auto": 0.8, "review": 0.4}
        data["stop_rules"] = []

    h = Harness(db_url, variant(edit))
    run = h.run()
    args = {"ticket_id": "T-1001", "fields": {"priority": "high"}}
    assert h.act(run, "tickets.update", args, confidence=0.9).executed
    review = h.act(run, "tickets.update", args, confidence=0.6)
    assert review.status == "pending_approval"
    assert review.decision.reason_codes[0] == "confidence_review"
    rejected = h.act(run, "tickets.update", args, confidence=0.2)
    assert rejected.status == "denied"
    assert rejected.decision.reason_codes == ["low_confidence_rejected"]
    assert rejected.decision.confidence == 0.2
    h.close()


def test_resource_lock_conflict_between_runs(db_url) -> None:
    def edit(data: dict[str, Any]) -> None:
        tool(data, "tickets.update")["lock"] = {"key": "ticket_id", "wait_s": 0.2, "hold_s": 60}

    h = Harness(db_url, variant(edit))
    first, second = h.run(), h.run()
    args = {"ticket_id": "T-1001", "fields": {"priority": "high"}}
    assert h.act(first, "tickets.update", args).executed
    blocked = h.act(second, "tickets.update", args)
    assert blocked.status == "denied"
    assert blocked.decision.reason_codes == ["conflict"]
    assert h.act(second, "tickets.update", {**args, "ticket_id": "T-1002"}).executed
    assert h.act(first, "tickets.update", {**args, "fields": {"priority": "low"}}).executed  # re-entrant
    h.il.finish_run(h.tokens["triage-bot"], first)
    assert h.act(second, "tickets.update", args).executed
    h.close()


def test_max_concurrent_runs(db_url) -> None:
    h = Harness(db_url, variant(lambda d: d["budgets"].update({"max_concurrent_runs": 2})))
    first = h.run()
    h.run()
    with pytest.raises(LimitExceeded) as err:
        h.run()
    assert err.value.code == "concurrency_limit"
    h.il.finish_run(h.tokens["triage-bot"], first)
    h.run()
    h.close()


def test_pause_agent_and_environment(harness) -> None:
    run = harness.run()
    harness.il.pause("agent", "triage-bot", actor="ops", reason="odd behaviour")
    res = harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert res.decision.reason_codes == ["agent_paused"]
    harness.il.resume("agent", "triage-bot", actor="ops")
    harness.il.pause("environment", "production", actor="ops", reason="incident")
    assert harness.act(run, "tickets.get", {"ticket_id": "T-1001"}).decision.reason_codes == [
        "environment_paused"
    ]
    harness.il.resume("environment", "production", actor="ops")
    assert harness.act(run, "tickets.get", {"ticket_id": "T-1001"}).executed


def _pause_from_other_process(db_url: str) -> None:
    from interlock import Interlock, Settings

    il = Interlock(Settings(database={"url": db_url}))  # type: ignore[arg-type]
    il.load_workflow(SUPPORT_TRIAGE)
    il.set_paused("support-triage", paused=True, actor="oncall", reason="kill switch")
    il.close()


@pytest.mark.postgres
def test_pause_in_one_process_is_seen_by_another_on_next_action(pg_url) -> None:
    h = Harness(pg_url)
    run = h.run()
    assert h.act(run, "tickets.get", {"ticket_id": "T-1001"}).executed
    proc = multiprocessing.get_context("spawn").Process(target=_pause_from_other_process, args=(pg_url,))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == 0
    assert h.act(run, "tickets.get", {"ticket_id": "T-1002"}).decision.reason_codes == ["workflow_paused"]
    h.close()


def test_rate_limit_refuses_with_retry_after(db_url) -> None:
    def edit(data: dict[str, Any]) -> None:
        tool(data, "tickets.get")["rate_limit"] = {"per_minute": 100, "per_agent_per_minute": 2}

    h = Harness(db_url, variant(edit))
    run = h.run()
    assert h.act(run, "tickets.get", {"ticket_id": "T-1001"}).executed
    assert h.act(run, "tickets.get", {"ticket_id": "T-1002"}).executed
    third = h.act(run, "tickets.get", {"ticket_id": "T-1003"})
    assert third.status == "limited"
    assert third.decision.reason_codes == ["rate_limited"]
    assert third.retry_after is not None
    assert 0 < third.retry_after <= 60
    assert h.il.get_run(run).state == "running"  # a rate limit slows a run; it does not stop it
    h.close()


def test_a_scope_with_any_limit_is_limited() -> None:
    from interlock._internal.limits.budgets import _limited
    from interlock._internal.manifest.models import Limits

    assert not _limited(Limits())
    for name in Limits.model_fields:  # every field counts, and a new one fails here until it does
        assert _limited(Limits(**{name: 1})), name
