"""Verifier gates and model tiers in the manifest: what loads, how it compiles to Cedar, and every
mistake named with its file, line and field."""

from __future__ import annotations

import pytest

from interlock._internal.gateway.runtime import build_runtime
from interlock._internal.manifest.loader import load_manifest_text
from interlock._internal.policy.verify import decide_settle
from interlock.exceptions import ManifestError

BASE = """\
name: wf
version: "1"
owner: owner@example.com
objective: Test verifier gates.
success_metric: {name: works}
environments: [prod]
roles:
  clerk:
    verbs: [read, refund]
  checker:
    verbs: [verify]
agents:
  - id: bot
    environment: prod
    roles: [clerk]
  - id: judge
    environment: prod
    roles: [checker]
tools:
  - name: pay
    verb: refund
    traits: [money]
    input_schema:
      type: object
      properties:
        amount: {type: number}
      required: [amount]
rules:
  require_approval:
    - {id: pay-review, tool: pay}
"""

VERIFICATION = """\
verification:
  verifiers:
    - agent: judge
      rules: [pay-review]
  settle:
    - {id: small-pay, tool: pay, when: "amount <= 200", verdict: approve}
  never_settle:
    - {id: no-irreversible, trait: irreversible}
"""

MODELS = """\
models:
  tiers:
    - name: small
      models: {mini: {input: 0.1, output: 0.4}}
    - name: large
      models: {big: {input: 3, output: 15}}
  tasks: {extraction: small, planning: large}
"""


def load(text: str) -> object:
    return load_manifest_text(text, file="wf.yaml")


def error(text: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load(text)
    return info.value


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_a_verifier_and_tiers_load_and_compile_to_settle_policies() -> None:
    loaded = load_manifest_text(BASE + VERIFICATION + MODELS, file="wf.yaml")
    runtime = build_runtime(loaded)
    text = runtime.compiled.text
    assert '@id("settle:small-pay")' in text
    assert '@id("never-settle:no-irreversible")' in text
    assert 'action == Interlock::Action::"verify"' in text

    def settle(amount: float, verdict: str = "approve", risk: list[str] | None = None) -> tuple[bool, str]:
        decided = decide_settle(
            runtime.compiled,
            verifier="judge",
            workflow="wf",
            environment="prod",
            tool="pay",
            verb="refund",
            risk=risk or ["money"],
            arguments={"amount": amount},
            input_schema=runtime.tools["pay"].spec.input_schema,
            data_classes=[],
            verdict=verdict,
        )
        return decided.settles, decided.code

    assert settle(150) == (True, "settle_permitted")
    assert settle(250) == (False, "no_settle_rule")
    assert settle(150, "reject") == (False, "no_settle_rule")  # the rule covers approve only
    assert settle(150, risk=["money", "irreversible"]) == (False, "settle_forbidden")
    # The proposing agent holds no verify grant: policy refuses it as a verifier.
    other = decide_settle(
        runtime.compiled,
        verifier="bot",
        workflow="wf",
        environment="prod",
        tool="pay",
        verb="refund",
        risk=["money"],
        arguments={"amount": 10},
        input_schema=runtime.tools["pay"].spec.input_schema,
        data_classes=[],
        verdict="approve",
    )
    assert not other.settles
    assert other.code == "not_granted"


def test_manifests_without_verify_compile_exactly_as_before() -> None:
    plain = BASE.replace("  checker:\n    verbs: [verify]\n", "").replace(
        "  - id: judge\n    environment: prod\n    roles: [checker]\n", ""
    )
    compiled = build_runtime(load_manifest_text(plain, file="wf.yaml")).compiled
    assert "verify" not in compiled.schema["Interlock"]["actions"]
    assert "verify" not in compiled.text


@pytest.mark.parametrize(
    ("change", "needle", "field", "message"),
    [
        (
            ("    - agent: judge\n", "    - agent: judg\n"),
            "agent: judg",
            "verification.verifiers[0].agent",
            "agent 'judg' is not declared under agents; did you mean 'judge'?",
        ),
        (
            ("    - agent: judge\n", "    - agent: bot\n"),
            "agent: bot",
            "verification.verifiers[0].agent",
            "agent 'bot' is a verifier, but none of its roles (clerk) grants the verb 'verify'",
        ),
        (
            ("      rules: [pay-review]\n", "      rules: [pay-reveiw]\n"),
            "rules: [pay-reveiw]",
            "verification.verifiers[0].rules[0]",
            "unknown require_approval rule 'pay-reveiw'; did you mean 'pay-review'?",
        ),
        (
            ('tool: pay, when: "amount <= 200"', 'tool: pya, when: "amount <= 200"'),
            "tool: pya",
            "verification.settle[0].tool",
            "unknown tool 'pya'; did you mean 'pay'?",
        ),
        (
            ('when: "amount <= 200"', 'when: "amount =< 200"'),
            "amount =< 200",
            "verification.settle[0].when",
            "invalid condition for tool 'pay'",
        ),
        (
            ("verdict: approve}", "verdict: accept}"),
            "verdict: accept",
            "verification.settle[0].verdict",
            "'accept' is not allowed",
        ),
        (
            ("{id: no-irreversible, trait: irreversible}", "{id: small-pay, trait: irreversible}"),
            "id: small-pay, trait",
            "verification.never_settle[0].id",
            "duplicate verification rule id 'small-pay'",
        ),
    ],
)
def test_bad_verifier_config_names_file_line_and_field(
    change: tuple[str, str], needle: str, field: str, message: str
) -> None:
    text = (BASE + VERIFICATION).replace(*change)
    problem = error(text)
    assert problem.file == "wf.yaml"
    assert problem.field == field
    assert problem.line == line_of(text, needle)
    assert message in problem.message


@pytest.mark.parametrize(
    ("change", "needle", "field", "message"),
    [
        (
            ("tasks: {extraction: small, planning: large}", "tasks: {extraction: smal, planning: large}"),
            "tasks:",
            "models.tasks.extraction",
            "tier 'smal' is not declared under models.tiers; did you mean 'small'?",
        ),
        (
            ("    - name: large\n", "    - name: small\n"),
            "- name: small\n      models: {big",
            "models.tiers[1].name",
            "duplicate model tier 'small'",
        ),
        (
            ("models: {big: {input: 3, output: 15}}", "models: {}"),
            "models: {}",
            "models.tiers[1].models",
            "needs at least 1 item",
        ),
        (
            ("models: {mini: {input: 0.1, output: 0.4}}", "models: {mini: {input: -1, output: 0.4}}"),
            "input: -1",
            "models.tiers[0].models.mini.input",
            "must be at least 0",
        ),
        (
            ("  tasks:", "  on_unlisted: block\n  tasks:"),
            "on_unlisted: block",
            "models.on_unlisted",
            "'block' is not allowed; expected one of flag, refuse",
        ),
    ],
)
def test_bad_tier_config_names_file_line_and_field(
    change: tuple[str, str], needle: str, field: str, message: str
) -> None:
    text = (BASE + MODELS).replace(*change)
    problem = error(text)
    assert problem.file == "wf.yaml"
    assert problem.field == field
    expected = text.index(needle)
    assert problem.line == text[:expected].count("\n") + 1
    assert message in problem.message


def test_a_tool_cannot_take_the_verb_verify() -> None:
    text = BASE.replace("    verb: refund\n    traits: [money]", "    verb: verify\n    traits: [money]")
    problem = error(text)
    assert problem.field == "tools[0].verb"
    assert "'verify' is not a verb" in problem.message
