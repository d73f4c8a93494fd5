"""Manifest → Cedar: deny by default, forbid wins, decisions named by @id, user policy files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SUPPORT_TRIAGE
from interlock import PolicyError
from interlock._internal.gateway.decide import Intent, evaluate
from interlock._internal.gateway.runtime import build_runtime
from interlock._internal.manifest.loader import load_manifest, load_manifest_text
from interlock._internal.policy.compiler import compile_manifest


def runtime_with(tmp_path: Path, edit: Any = None, files: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    data = yaml.safe_load(SUPPORT_TRIAGE.read_text())
    if edit:
        edit(data)
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    (tmp_path / "support_desk.py").write_text((SUPPORT_TRIAGE.parent / "support_desk.py").read_text())
    loaded = load_manifest_text(yaml.safe_dump(data, sort_keys=False), file="w.yaml", base_dir=tmp_path)
    return build_runtime(loaded)


def decide(runtime, tool: str, args: dict[str, Any], agent: str = "triage-bot"):  # type: ignore[no-untyped-def]
    return evaluate(
        runtime, agent_id=agent, environment="production", intent=Intent(tool=tool, arguments=args)
    ).decision


REFUND = {"ticket_id": "T-1001", "currency": "USD", "reason": "r"}


def test_compiled_policy_names_every_rule_and_validates() -> None:
    compiled = compile_manifest(load_manifest(SUPPORT_TRIAGE))
    for policy_id in ("grant:role-grants", "allow:reads", "review:refund-review", "forbid:refund-hard-limit"):
        assert f'@id("{policy_id}")' in compiled.text
    assert len(compiled.sha256) == 64
    # Parsed once: the handles are reused for every decision of this version.
    runtime = build_runtime(load_manifest(SUPPORT_TRIAGE))
    handle = runtime.compiled.policy_set
    decide(runtime, "tickets.get", {"ticket_id": "T-1001"})
    assert runtime.compiled.policy_set is handle


@pytest.mark.parametrize(
    ("amount", "decision", "policies"),
    [
        (10, "allow", ["allow:small-refunds"]),
        (50, "allow", ["allow:small-refunds"]),
        (50.01, "require_approval", ["review:refund-review"]),
        (500, "require_approval", ["review:refund-review"]),
        (500.0001, "deny", ["forbid:refund-hard-limit"]),
        (900, "deny", ["forbid:refund-hard-limit"]),
    ],
)
def test_refund_thresholds(amount: float, decision: str, policies: list[str]) -> None:
    runtime = build_runtime(load_manifest(SUPPORT_TRIAGE))
    got = decide(runtime, "payments.refund", {**REFUND, "amount": amount})
    assert got.decision == decision
    assert got.policy_ids == policies


def test_deny_by_default_when_no_rule_permits(tmp_path: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["rules"]["allow"] = [r for r in data["rules"]["allow"] if r["id"] != "drafts"]

    got = decide(runtime_with(tmp_path, edit), "replies.draft", {"ticket_id": "T-1001", "body": "hi"})
    assert (got.decision, got.reason_codes) == ("deny", ["no_policy_permits"])


def test_role_grants_limit_what_a_role_may_attempt() -> None:
    runtime = build_runtime(load_manifest(SUPPORT_TRIAGE))
    got = decide(
        runtime, "tickets.update", {"ticket_id": "T-1001", "fields": {"priority": "low"}}, agent="reporter"
    )
    assert got.reason_codes == ["not_granted"]
    assert got.policy_ids == ["grant:role-grants"]


def test_derived_risk_trait_triggers_a_trait_rule(tmp_path: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["rules"]["forbid"].append({"id": "no-bulk-reads", "trait": "bulk"})

    runtime = runtime_with(tmp_path, edit)
    assert decide(runtime, "tickets.search", {"query": "x", "limit": 10}).decision == "allow"
    bulk = decide(runtime, "tickets.search", {"query": "x", "limit": 80})
    assert bulk.decision == "deny"
    assert "bulk" in bulk.risk
    assert bulk.policy_ids == ["forbid:no-bulk-reads"]


def test_user_cedar_files_join_the_policy(tmp_path: Path) -> None:
    extra = """
@id("forbid:no-eur-refunds")
forbid (principal, action == Interlock::Action::"refund", resource)
when { context.args has currency && context.args.currency == "EUR" };

@id("review:updates-to-urgent")
permit (principal, action == Interlock::Action::"update", resource == Interlock::Tool::"tickets.update")
when { context.args has fields && context.args.fields has priority && context.args.fields.priority == "urgent" };
"""

    def edit(data: dict[str, Any]) -> None:
        data["policies"] = ["extra.cedar"]

    runtime = runtime_with(tmp_path, edit, {"extra.cedar": extra})
    eur = decide(runtime, "payments.refund", {**REFUND, "amount": 10, "currency": "EUR"})
    assert (eur.decision, eur.policy_ids) == ("deny", ["forbid:no-eur-refunds"])
    urgent = decide(runtime, "tickets.update", {"ticket_id": "T-1001", "fields": {"priority": "urgent"}})
    assert (urgent.decision, urgent.policy_ids) == ("require_approval", ["review:updates-to-urgent"])
    normal = decide(runtime, "tickets.update", {"ticket_id": "T-1001", "fields": {"priority": "low"}})
    assert normal.decision == "allow"


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("permit (principal, action, resource) when { ", "does not parse"),
        (
            '@id("x") permit (principal, action, resource) when { context.args.nope == 1 };',
            "fails validation",
        ),
        ('@id("y") permit (principal, action == Interlock::Action::"fly", resource);', "fails validation"),
    ],
)
def test_a_bad_policy_file_stops_the_load(tmp_path: Path, text: str, what: str) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["policies"] = ["bad.cedar"]

    with pytest.raises(PolicyError) as err:
        runtime_with(tmp_path, edit, {"bad.cedar": text})
    assert what in str(err.value)
    assert "bad.cedar" in str(err.value)


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=12,
)
TOOLS = [t["name"] for t in yaml.safe_load(SUPPORT_TRIAGE.read_text())["tools"]] + ["nope", ""]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    tool=st.sampled_from(TOOLS),
    args=JSONISH,
    agent=st.sampled_from(["triage-bot", "reporter", "ghost"]),
    confidence=st.none() | st.floats(min_value=0, max_value=1),
)
def test_random_arguments_get_a_decision_never_an_exception(
    tool: str, args: Any, agent: str, confidence: Any
) -> None:
    runtime = _RUNTIME
    verdict = evaluate(
        runtime,
        agent_id=agent,
        environment="production",
        intent=Intent(tool=tool, arguments=args, confidence=confidence),
    )
    assert verdict.decision.decision in ("allow", "deny", "require_approval", "escalate")
    assert verdict.decision.reasons


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    fields=st.fixed_dictionaries(
        {
            "ticket_id": st.text(max_size=12),
            "amount": st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=5),
            "currency": st.sampled_from(["USD", "EUR", "GBP", ""]),
            "reason": st.text(max_size=30),
        }
    )
)
def test_random_refunds_are_decided_and_over_500_never_allowed(fields: dict[str, Any]) -> None:
    decision = decide(_RUNTIME, "payments.refund", fields)
    amount = fields["amount"]
    if isinstance(amount, int | float) and not isinstance(amount, bool) and amount == amount and amount > 500:
        assert decision.decision != "allow"


_RUNTIME = build_runtime(load_manifest(SUPPORT_TRIAGE))


def test_changing_a_policy_file_needs_a_new_version(tmp_path: Path) -> None:
    from interlock import Interlock, Settings

    policy = tmp_path / "extra.cedar"
    policy.write_text(
        '@id("forbid:no-eur") forbid (principal, action, resource) when { context.environment == "x" };'
    )
    data = yaml.safe_load(SUPPORT_TRIAGE.read_text())
    data["policies"] = ["extra.cedar"]
    (tmp_path / "support_desk.py").write_text((SUPPORT_TRIAGE.parent / "support_desk.py").read_text())
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    il = Interlock(Settings(database={"url": f"sqlite:///{tmp_path / 'i.db'}"}))  # type: ignore[arg-type]
    il.migrate()
    il.load_workflow(path)
    il.load_workflow(path)  # same files: same version, fine
    policy.write_text(
        '@id("forbid:no-eur") forbid (principal, action, resource) when { context.environment == "y" };'
    )
    with pytest.raises(PolicyError) as err:
        il.load_workflow(path)
    assert err.value.field == "version"
    data["version"] = "1.0.1"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert il.load_workflow(path).manifest.version == "1.0.1"
    il.close()
