"""Shadow and canary rollouts on both engines: shadow decisions recorded without effect, a canary
share that holds, canaries for named agents and triggers, an automatic abort, promote and abort,
and two replicas that agree because the state is in the database."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from conftest import Harness
from interlock._internal.evals.weekly import render_weekly_html, weekly_figures
from interlock._internal.manifest.loader import LoadedManifest, load_manifest_text
from interlock._internal.rollouts.model import bucket
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading
from interlock.exceptions import ArgumentsInvalid, ConflictError, NotFound

ALLOW_DELETES = (
    "    - {id: no-deletes, tool: customers.delete, description: Agents never delete customers.}\n",
    "",
)
FORBID_UPDATES = (
    "    - {id: no-deletes,",
    "    - {id: no-updates, tool: tickets.update}\n    - {id: no-deletes,",
)
FORBID_READS = (
    "    - {id: no-deletes,",
    "    - {id: no-reads, verb: read}\n    - {id: no-deletes,",
)


def variant(path: Path, *edits: tuple[str, str]) -> LoadedManifest:
    text = path.read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return load_manifest_text(text, base_dir=path.parent)


DELETES_ALLOWED = (
    "    - {id: drafts, verb: draft}\n",
    "    - {id: drafts, verb: draft}\n    - {id: deletes, tool: customers.delete}\n",
)


def events(h: Harness, kind: str) -> list[dict[str, Any]]:
    with reading(h.il.engine) as conn:
        rows = conn.execute(select(t.audit_events).where(t.audit_events.c.kind == kind)).mappings().all()
    return [{"actor": r["actor"], **json.loads(r["body"])} for r in rows]


def test_shadow_decisions_are_recorded_and_never_enforced(
    harness: Harness, support_manifest_path: Path, desk
) -> None:
    # The candidate forbids ticket updates and lets agents delete customers: the shadow must not.
    candidate = variant(support_manifest_path, FORBID_UPDATES, ALLOW_DELETES, DELETES_ALLOWED)
    rollout = harness.il.rollouts.start(candidate, actor="operator:lee")
    assert (rollout.mode, rollout.state, rollout.share) == ("shadow", "running", 0.0)
    assert rollout.active_version_id == harness.runtime.version_id
    run = harness.run()
    assert harness.il.get_run(run).workflow_version == harness.runtime.version_id  # shadow: active enforced
    update = harness.act(run, "tickets.update", {"ticket_id": "T-1001", "fields": {"priority": "urgent"}})
    assert update.status == "executed"
    assert update.decision.manifest_version == harness.runtime.version_id
    delete = harness.act(run, "customers.delete", {"customer_id": "C-1007"})
    assert (delete.status, delete.decision.reason_codes) == ("denied", ["forbidden"])
    harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    # The upstream saw only the active version's actions.
    assert desk.get_ticket("T-1001")["priority"] == "urgent"
    assert desk.get_customer("C-1007")["customer_id"] == "C-1007"

    status = harness.il.rollouts.status(harness.workflow)
    assert status["total"] == 3
    assert status["unchanged"] == 1
    assert status["transitions"] == {"allow->deny": 1, "deny->allow": 1}
    assert status["labels"]["allow->deny"] == "allowed → denied"
    [ex] = status["examples"]["allow->deny"]
    assert (ex["tool"], ex["enforced"], ex["new_reasons"][0]["policy_id"]) == (
        "tickets.update",
        "active",
        "forbid:no-updates",
    )
    assert status["enforced"] == {"active": 3, "candidate": 0}
    assert status["runs_by_version"] == {harness.runtime.version_id: 1}
    # The candidate is stored for the record, not activated.
    with reading(harness.il.engine) as conn:
        active = conn.execute(select(t.workflows.c.active_version_id)).scalar_one()
        stored = conn.execute(select(func.count()).select_from(t.workflow_versions)).scalar_one()
    assert (active, stored) == (harness.runtime.version_id, 2)
    assert events(harness, "rollout.started")[0]["actor"] == "operator:lee"


def test_a_canary_share_holds_within_a_binomial_tolerance(
    harness: Harness, support_manifest_path: Path
) -> None:
    candidate = variant(support_manifest_path, FORBID_UPDATES)
    harness.il.rollouts.start(candidate, actor="operator:lee", share=0.2)
    n, p = 500, 0.2
    runs = [harness.run() for _ in range(n)]
    versions = {r: harness.il.get_run(r).workflow_version for r in runs}
    canary = [r for r, v in versions.items() if v == candidate.version_id]
    assert set(versions.values()) == {candidate.version_id, harness.runtime.version_id}
    tolerance = 4 * math.sqrt(n * p * (1 - p))  # four standard deviations: ±35.8 runs
    assert abs(len(canary) - n * p) <= tolerance, len(canary)
    # Stable per run: exactly the runs whose id hashes below the share.
    assert sorted(canary) == sorted(r for r in runs if bucket(r) < p)
    # A canary run's actions are decided by the candidate; the others' by the active version.
    inside, outside = canary[0], next(r for r in runs if r not in canary)
    args = {"ticket_id": "T-1001", "fields": {"priority": "low"}}
    denied = harness.act(inside, "tickets.update", args)
    assert (denied.status, denied.decision.manifest_version) == ("denied", candidate.version_id)
    assert harness.act(outside, "tickets.update", args).status == "executed"
    status = harness.il.rollouts.status(harness.workflow)
    assert status["transitions"] == {"allow->deny": 2}
    assert status["enforced"] == {"active": 1, "candidate": 1}
    assert status["runs_by_version"][candidate.version_id] == len(canary)


def test_a_canary_for_named_agents_and_triggers(harness: Harness, support_manifest_path: Path) -> None:
    candidate = variant(support_manifest_path, FORBID_READS)
    harness.il.rollouts.start(
        candidate, actor="operator:lee", agents=["reporter"], triggers={"channel": ["email", "chat"]}
    )
    token = harness.tokens["triage-bot"]
    plain = harness.il.start_run(token, trigger={"ticket": "T-1001", "channel": "phone"}).id
    by_mail = harness.il.start_run(token, trigger={"ticket": "T-1001", "channel": "email"}).id
    reporter = harness.run("reporter")
    version = {r: harness.il.get_run(r).workflow_version for r in (plain, by_mail, reporter)}
    assert version == {
        plain: harness.runtime.version_id,
        by_mail: candidate.version_id,
        reporter: candidate.version_id,
    }
    # The weekly review counts the runs of each version.
    today = datetime.now(UTC).date()
    review = weekly_figures(harness.il.engine, harness.workflow, today)
    assert {v["version"]: v["runs"] for v in review["runs_by_version"]} == {
        harness.runtime.version_id: 1,
        candidate.version_id: 2,
    }
    assert "Runs by manifest version" in render_weekly_html(review)
    read = {"ticket_id": "T-1001"}
    assert harness.act(plain, "tickets.get", read).status == "executed"
    assert harness.act(by_mail, "tickets.get", read).decision.reason_codes == ["forbidden"]
    assert harness.act(reporter, "tickets.get", read, agent="reporter").decision.reason_codes == ["forbidden"]


def test_the_rollout_aborts_itself_when_the_candidate_denies_too_much(
    harness: Harness, support_manifest_path: Path
) -> None:
    candidate = variant(support_manifest_path, FORBID_READS)
    harness.il.rollouts.start(
        candidate, actor="operator:lee", share=1.0, max_denial_increase=0.5, min_decisions=4
    )
    run = harness.run()
    assert harness.il.get_run(run).workflow_version == candidate.version_id
    tickets = ["T-1001", "T-1002", "T-1003", "T-1004", "T-1005", "T-1006"]
    first = [harness.act(run, "tickets.get", {"ticket_id": tk}) for tk in tickets[:4]]
    assert [r.status for r in first] == ["denied"] * 4  # the canary enforced the candidate
    rollout = harness.il.rollouts.store.latest(harness.workflow)
    assert rollout is not None
    assert (rollout.state, rollout.ended_by, rollout.decisions) == ("aborted", "interlock", 4)
    assert "candidate denial rate 100.0%" in (rollout.end_reason or "")
    [aborted] = events(harness, "rollout.aborted")
    assert aborted["actor"] == "interlock"
    assert aborted["data"]["automatic"] is True
    assert aborted["data"]["rates"]["candidate_denial"] == 1.0
    # Everyone is back on the active version, the canary run included; nothing more is compared.
    after = [harness.act(run, "tickets.get", {"ticket_id": tk}) for tk in tickets[4:]]
    assert [(r.status, r.decision.manifest_version) for r in after] == [
        ("executed", harness.runtime.version_id)
    ] * 2
    assert harness.il.rollouts.store.get(rollout.id).decisions == 4
    assert harness.il.verify_audit().ok


def test_no_abort_below_the_threshold_or_the_minimum(harness: Harness, support_manifest_path: Path) -> None:
    candidate = variant(support_manifest_path, FORBID_UPDATES)
    harness.il.rollouts.start(candidate, actor="operator:lee", max_denial_increase=0.5, min_decisions=3)
    run = harness.run()
    harness.act(run, "tickets.update", {"ticket_id": "T-1001", "fields": {"priority": "low"}})
    harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    harness.act(run, "tickets.get", {"ticket_id": "T-1002"})
    rollout = harness.il.rollouts.store.latest(harness.workflow)
    assert rollout is not None
    # One denial in three is 33% above the active's 0%: under the 50% threshold.
    assert (rollout.state, rollout.decisions, rollout.candidate_denials) == ("running", 3, 1)


def test_promote_makes_the_candidate_active_for_everyone(
    harness: Harness, support_manifest_path: Path
) -> None:
    candidate = variant(support_manifest_path, FORBID_UPDATES)
    harness.il.rollouts.start(candidate, actor="operator:lee", agents=["reporter"])
    before = harness.run()  # triage-bot: active version
    args = {"ticket_id": "T-1001", "fields": {"priority": "low"}}
    assert harness.act(before, "tickets.update", args).status == "executed"
    promoted = harness.il.rollouts.promote(harness.workflow, actor="operator:lee", reason="looks right")
    assert (promoted.state, promoted.ended_by, promoted.end_reason) == (
        "promoted",
        "operator:lee",
        "looks right",
    )
    assert harness.il.runtime(harness.workflow).version_id == candidate.version_id
    with reading(harness.il.engine) as conn:
        assert conn.execute(select(t.workflows.c.active_version_id)).scalar_one() == candidate.version_id
    # The run that started on the old version now gets the promoted one, as does every new run.
    again = harness.act(before, "tickets.update", args)
    assert (again.status, again.decision.manifest_version) == ("denied", candidate.version_id)
    fresh = harness.run()
    assert harness.il.get_run(fresh).workflow_version == candidate.version_id
    assert harness.act(fresh, "tickets.update", args).status == "denied"
    [event] = events(harness, "rollout.promoted")
    assert event["actor"] == "operator:lee"
    activated = events(harness, "workflow.activated")[-1]
    assert activated["data"]["version_id"] == candidate.version_id
    with pytest.raises(NotFound):
        harness.il.rollouts.abort(harness.workflow, actor="operator:lee")


def test_abort_returns_every_run_to_the_active_version(harness: Harness, support_manifest_path: Path) -> None:
    candidate = variant(support_manifest_path, FORBID_UPDATES)
    harness.il.rollouts.start(candidate, actor="operator:lee", share=1.0)
    run = harness.run()
    args = {"ticket_id": "T-1001", "fields": {"priority": "low"}}
    assert harness.act(run, "tickets.update", args).status == "denied"
    aborted = harness.il.rollouts.abort(harness.workflow, actor="operator:lee", reason="not yet")
    assert aborted.state == "aborted"
    back = harness.act(run, "tickets.update", args)
    assert (back.status, back.decision.manifest_version) == ("executed", harness.runtime.version_id)
    assert harness.il.get_run(harness.run()).workflow_version == harness.runtime.version_id
    # The run still records the version it started with.
    assert harness.il.get_run(run).workflow_version == candidate.version_id
    assert events(harness, "rollout.aborted")[0]["data"]["reason"] == "not yet"


def test_one_running_rollout_and_clear_errors(harness: Harness, support_manifest_path: Path) -> None:
    candidate = variant(support_manifest_path, FORBID_UPDATES)
    with pytest.raises(ArgumentsInvalid, match="already the active version"):
        harness.il.rollouts.start(variant(support_manifest_path), actor="operator:lee")
    with pytest.raises(ArgumentsInvalid) as err:
        harness.il.rollouts.start(candidate, actor="operator:lee", share=1.5)
    assert err.value.field == "share"
    with pytest.raises(ArgumentsInvalid, match="'ghost' is not declared"):
        harness.il.rollouts.start(candidate, actor="operator:lee", agents=["ghost"])
    with pytest.raises(NotFound):
        harness.il.rollouts.status(harness.workflow)
    harness.il.rollouts.start(candidate, actor="operator:lee")
    with pytest.raises(ConflictError) as conflict:
        harness.il.rollouts.start(variant(support_manifest_path, FORBID_READS), actor="operator:lee")
    assert conflict.value.code == "rollout_running"


def test_replicas_agree_through_the_database(db_url: str, support_manifest_path: Path) -> None:
    a = Harness(db_url)
    from interlock import Interlock, Settings

    b = Interlock(Settings(database={"url": db_url}))  # type: ignore[arg-type]
    try:
        b.load_workflow(support_manifest_path)
        candidate = variant(support_manifest_path, FORBID_UPDATES)
        a.il.rollouts.start(candidate, actor="operator:lee", share=1.0)
        token = a.tokens["triage-bot"]
        run = b.start_run(token).id  # replica b never saw the candidate: it reads it from the database
        assert b.get_run(run).workflow_version == candidate.version_id
        args = {"ticket_id": "T-1001", "fields": {"priority": "low"}}
        assert b.act(token, run, "tickets.update", args).status == "denied"
        a.il.rollouts.promote(a.workflow, actor="operator:lee")
        assert b.runtime(a.workflow).version_id == a.runtime.version_id  # not yet seen by b
        fresh = b.start_run(token).id  # b follows the promotion at its next run start
        assert b.runtime(a.workflow).version_id == candidate.version_id
        assert b.get_run(fresh).workflow_version == candidate.version_id
        assert b.act(token, fresh, "tickets.update", args).status == "denied"
    finally:
        b.close()
        a.close()


def test_a_canary_runs_model_calls_are_priced_by_its_version(
    harness: Harness, support_manifest_path: Path
) -> None:
    priced = (
        "    max_repeats: 3\n",
        "    max_repeats: 3\n  model_prices:\n    bench-model: {input: 2.0, output: 4.0}\n",
    )
    candidate = variant(support_manifest_path, priced)
    harness.il.rollouts.start(candidate, actor="operator:lee", agents=["reporter"])
    token = harness.tokens["reporter"]
    canary, plain = harness.run("reporter"), harness.run()
    on_candidate = harness.il.report_model_call(
        token, canary, model="bench-model", input_tokens=1_000_000, output_tokens=0
    )
    on_active = harness.il.report_model_call(
        harness.tokens["triage-bot"], plain, model="bench-model", input_tokens=1_000_000, output_tokens=0
    )
    assert on_candidate.cost_usd == pytest.approx(2.0)
    assert on_active.cost_usd == 0.0
    assert [r.code for r in on_active.reasons] == ["unpriced_model"]
