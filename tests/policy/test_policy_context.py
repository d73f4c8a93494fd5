"""Cedar is sent only the context attributes a policy can read: the same decisions, cheaper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_policy_compiler import REFUND, runtime_with

from interlock._internal.gateway.decide import Intent, evaluate
from interlock._internal.policy import engine
from interlock._internal.policy.engine import unread_context

OWN = {"workflow", "environment", "tool", "risk", "steps", "tool_calls", "data_classes", "confidence"}


@pytest.mark.parametrize(
    ("text", "unread"),
    [
        (
            "permit (principal, action, resource) when { context.args has limit && context.args.limit > 9 };",
            OWN,
        ),
        ("permit (principal, action, resource) when { context has confidence };", OWN - {"confidence"}),
        ('permit (principal, action, resource) when { context.risk.contains("pii") };', OWN - {"risk"}),
        ('permit (principal, action, resource) when { context["steps"] > 3 };', OWN - {"steps"}),
        ('permit (principal, action, resource) when { context has "tool_calls" };', OWN - {"tool_calls"}),
        # A name mentioned anywhere (a comment, an id) is sent: the reading is deliberately crude.
        ("// workflow\npermit (principal, action, resource);", OWN - {"workflow"}),
        # The context used whole, or a string escape a name could hide in: everything is sent.
        ("permit (principal, action, resource) when { context == {} };", set()),
        ('permit (principal, action, resource) when { context["\\u{74}ool"] == "x" };', set()),
    ],
)
def test_unread_context_is_what_no_policy_names(text: str, unread: set[str]) -> None:
    assert unread_context(text) == unread


EXTRA = """
@id("forbid:no-late-refunds")
forbid (principal, action == Interlock::Action::"refund", resource)
when { context.steps >= 3 || context.environment == "staging" };

@id("review:pii-updates")
permit (principal, action == Interlock::Action::"update", resource)
when { context.risk.contains("pii") && context.workflow like "support*" };
"""

CASES: list[tuple[str, dict[str, Any], int]] = [
    ("payments.refund", {**REFUND, "amount": 10}, 0),
    ("payments.refund", {**REFUND, "amount": 10}, 3),
    ("payments.refund", {**REFUND, "amount": 499}, 1),
    ("payments.refund", {**REFUND, "amount": 900}, 0),
    ("tickets.get", {"ticket_id": "T-1001"}, 5),
    ("tickets.search", {"query": "x", "limit": 80}, 0),
    ("tickets.update", {"ticket_id": "T-1001", "fields": {"priority": "urgent"}}, 2),
]


@pytest.mark.parametrize("extra", [None, EXTRA])
def test_decisions_are_those_of_the_whole_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str | None
) -> None:
    def edit(data: dict[str, Any]) -> None:
        if extra is not None:
            data["policies"] = ["extra.cedar"]

    runtime = runtime_with(tmp_path, edit, {"extra.cedar": extra} if extra else None)

    def decide_all() -> list[Any]:
        return [
            evaluate(
                runtime,
                agent_id="triage-bot",
                environment="production",
                intent=Intent(tool=tool, arguments=args, confidence=0.9),
                steps=steps,
                tool_calls=steps,
            ).decision
            for tool, args, steps in CASES
        ]

    assert unread_context(runtime.compiled.text)  # something is left out here
    pruned = decide_all()
    monkeypatch.setattr(engine, "unread_context", lambda text: frozenset())
    assert pruned == decide_all()
    if extra is not None:  # the user's policies read the attributes they name
        assert "forbid:no-late-refunds" in pruned[1].policy_ids
