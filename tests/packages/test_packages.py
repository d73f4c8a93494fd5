"""Signed work packages on SQLite and PostgreSQL: bounds across actions, refusals, offline checks."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
from sqlalchemy import select

from interlock import AuthenticationError, ConflictError, Interlock, Settings
from interlock._internal.audit.chain import iter_events
from interlock._internal.audit.evidence import export_bundle
from interlock._internal.audit.keys import AuditKey
from interlock._internal.packages.models import PackageRequest
from interlock._internal.packages.service import PackageService
from interlock._internal.packages.signing import PackageKey, verify_package
from interlock._internal.store import tables as t

REFUND_CAP = {
    "tools": {
        "tickets.get": {},
        "payments.refund": {
            "max_calls": 5,
            "arguments": {"amount": {"max": 50, "max_total": 100}, "currency": {"one_of": ["EUR"]}},
        },
    }
}


def refund(amount: float, ticket: str = "T-1002", currency: str = "EUR") -> dict[str, object]:
    return {"ticket_id": ticket, "amount": amount, "currency": currency, "reason": "late delivery"}


def issue(harness, agent: str = "triage-bot", **extra: object):  # type: ignore[no-untyped-def]
    request = PackageRequest.model_validate(
        {"workflow": harness.workflow, "agent": agent, "task": "refund T-1002", **REFUND_CAP, **extra}
    )
    return harness.il.packages.issue(request, actor="operator:ci")


def start(harness, package: str, agent: str = "triage-bot") -> str:  # type: ignore[no-untyped-def]
    return harness.il.start_run(harness.tokens[agent], package=package).id


def test_bounds_hold_across_several_actions(harness, desk) -> None:
    package = issue(harness)
    run = start(harness, package.token)
    assert harness.act(run, "tickets.get", {"ticket_id": "T-1002"}).status == "executed"
    first = harness.act(run, "payments.refund", refund(30))
    assert first.status == "executed", first
    assert first.decision.package_id == package.id
    assert harness.act(run, "payments.refund", refund(40, "T-1003")).status == "executed"
    # 30 + 40 + 45 = 115 > 100 in total, though 45 alone is within policy and the per-action max.
    over = harness.act(run, "payments.refund", refund(45, "T-1004"))
    assert over.status == "denied"
    assert over.decision.reason_codes == ["package_bound"]
    assert "total" in over.decision.reasons[0].message
    assert harness.act(run, "payments.refund", refund(30, "T-1004")).status == "executed"  # exactly 100
    # Per-action bounds and tools the package does not name.
    assert harness.act(run, "payments.refund", refund(51)).decision.reason_codes == ["package_bound"]
    assert harness.act(run, "payments.refund", refund(5, currency="USD")).decision.reason_codes == [
        "package_bound"
    ]
    draft = harness.act(run, "replies.draft", {"ticket_id": "T-1002", "body": "hello"})
    assert draft.decision.reason_codes == ["package_tool_not_allowed"]
    # The stricter wins: what policy forbids stays forbidden whatever the package says.
    assert harness.act(run, "customers.delete", {"customer_id": "C-1001"}).decision.reason_codes == [
        "forbidden"
    ]
    assert desk.refunds_total() == 100
    assert harness.il.packages.usage(package.id)["payments.refund:amount"] == {
        "used": 100_000_000,
        "max_total": 100_000_000,
    }

    # The package id is on every decision, every audit event of the run and the evidence bundle.
    with harness.il.engine.connect() as conn:
        ids = (
            conn.execute(select(t.decisions.c.package_id).where(t.decisions.c.run_id == run)).scalars().all()
        )
    assert ids
    assert set(ids) == {package.id}
    assert {s.decision.package_id for s in harness.il.get_run(run).steps_detail} == {package.id}
    events = list(iter_events(harness.il.engine, run_id=run))
    assert events
    assert [e.kind for e in events if e.data.get("package") != package.id] == []
    harness.il.finish_run(harness.tokens["triage-bot"], run)
    bundle = export_bundle(harness.il.engine, run, AuditKey.from_seed("evidence-test-seed"))
    assert bundle["run"]["package_id"] == package.id
    assert bundle["package"]["id"] == package.id
    assert verify_package(bundle["package"]["token"], harness.il.packages.public_pem)["jti"] == package.id


def test_approved_actions_count_against_the_package(harness, desk) -> None:
    package = issue(harness, tools={"payments.refund": {"arguments": {"amount": {"max_total": 150}}}})
    run = start(harness, package.token)
    big = harness.act(run, "payments.refund", refund(120))
    assert big.status == "pending_approval"
    assert big.decision.package_id == package.id
    assert harness.act(run, "payments.refund", refund(40, "T-1003")).status == "executed"
    approvals = harness.il.approvals
    record, _ = harness.il.operators.create("boss", roles=["approver"], workflows=None, actor="test")
    boss = record.principal()
    approvals.decide(big.approval_id, approve=True, operator=boss)
    outcome = approvals.get(big.approval_id).outcome
    assert outcome is not None
    assert outcome.decision.reason_codes == ["package_bound"]  # 40 + 120 > 150
    assert desk.refunds_total() == 40
    events = list(iter_events(harness.il.engine, run_id=run))
    assert {"approval.requested", "approval.approved"} <= {e.kind for e in events}
    assert [e.kind for e in events if e.data.get("package") != package.id] == []


def test_a_package_starts_one_run_only(harness) -> None:
    package = issue(harness)
    start(harness, package.token)
    with pytest.raises(AuthenticationError) as replayed:
        start(harness, package.token)
    assert replayed.value.code == "package_used"


def test_two_runners_racing_with_one_package_start_one_run(harness) -> None:
    package = issue(harness)
    outcomes: list[str] = []

    def go() -> None:
        try:
            outcomes.append(start(harness, package.token))
        except AuthenticationError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert sorted(o.startswith("run_") for o in outcomes) == [False, False, False, True], outcomes
    assert harness.il.packages.get(package.id).state == "used"


def test_tampered_and_foreign_packages_are_refused(harness) -> None:
    package = issue(harness)
    header, payload, signature = package.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["tools"]["payments.refund"]["arguments"]["amount"]["max_total"] = 100000
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthenticationError) as tampered:
        start(harness, f"{header}.{forged}.{signature}")
    assert tampered.value.code == "package_invalid"
    other = PackageKey.from_seed("somebody-else").sign(claims)
    with pytest.raises(AuthenticationError) as foreign:
        start(harness, other)
    assert foreign.value.code == "package_invalid"
    with pytest.raises(AuthenticationError):
        start(harness, "not-a-package")
    # The genuine package still works afterwards.
    assert start(harness, package.token).startswith("run_")


def test_expired_package_is_refused(harness) -> None:
    past = PackageService(
        harness.il.engine,
        PackageKey.from_seed(harness.il.settings.packages.signing_seed),
        runtimes=harness.il.runtime,
        clock=lambda: time.time() - 7200,
    )
    request = PackageRequest.model_validate(
        {"workflow": harness.workflow, "agent": "triage-bot", **REFUND_CAP}
    )
    package = past.issue(request, actor="operator:ci")
    with pytest.raises(AuthenticationError) as expired:
        start(harness, package.token)
    assert expired.value.code == "package_expired"
    assert harness.il.packages.get(package.id).state == "issued"


def test_package_for_another_agent_or_version_is_refused(harness) -> None:
    package = issue(harness, agent="reporter")
    with pytest.raises(AuthenticationError) as scope:
        start(harness, package.token)
    assert scope.value.code == "package_scope"
    stale = issue(harness, manifest_version="support-triage@0.0.1#000000000000")
    with pytest.raises(ConflictError):
        start(harness, stale.token)


def test_revoked_package_denies_the_next_action(harness, desk) -> None:
    package = issue(harness)
    run = start(harness, package.token)
    assert harness.act(run, "payments.refund", refund(10)).status == "executed"
    harness.il.packages.revoke(package.id, actor="operator:sec", reason="task cancelled")
    after = harness.act(run, "payments.refund", refund(10, "T-1003"))
    assert after.decision.reason_codes == ["package_revoked"]
    fresh = issue(harness)
    harness.il.packages.revoke(fresh.id, actor="operator:sec")
    with pytest.raises(AuthenticationError) as revoked:
        start(harness, fresh.token)
    assert revoked.value.code == "package_revoked"
    assert desk.refunds_total() == 10


def test_offline_verification_with_the_public_key(harness) -> None:
    package = issue(harness)
    pem = harness.il.packages.public_pem
    claims = verify_package(package.token, pem)
    assert claims["jti"] == package.id
    assert claims["tools"]["payments.refund"]["arguments"]["amount"]["max_total"] == 100
    with pytest.raises(AuthenticationError) as late:
        verify_package(package.token, pem, now=claims["exp"] + 60)
    assert late.value.code == "package_expired"
    with pytest.raises(AuthenticationError):
        verify_package(package.token, PackageKey.from_seed("another").public_pem)


def test_totals_hold_with_two_replicas_acting_at_once(db_url: str, harness, desk) -> None:
    package = issue(harness, tools={"payments.refund": {"arguments": {"amount": {"max_total": 100}}}})
    run = start(harness, package.token)
    other = Interlock(Settings(database={"url": db_url}))  # type: ignore[arg-type]
    other.load_workflow(harness.runtime.loaded)
    token = harness.tokens["triage-bot"]
    results: list[str] = []
    lock = threading.Lock()

    def act(replica: Interlock, i: int) -> None:
        res = replica.act(token, run, "payments.refund", refund(30, f"T-10{10 + i}"))
        with lock:
            results.append(res.status)

    threads = [threading.Thread(target=act, args=(harness.il if i % 2 else other, i)) for i in range(8)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=180)
    finally:
        other.close()
    assert sorted(results).count("executed") == 3, results  # 3 × 30 = 90; a fourth would be 120
    assert desk.refunds_total() == 90
