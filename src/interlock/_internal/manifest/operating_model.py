"""A workflow's operating model: the manifest reduced to what an owner or approver reads.

``interlock workflow show`` prints it and the console's workflow page renders it.
"""

from __future__ import annotations

from typing import Any

from interlock._internal.manifest.loader import LoadedManifest
from interlock._internal.manifest.models import RuleSpec


def operating_model(loaded: LoadedManifest) -> dict[str, Any]:
    """The manifest reduced to what an owner or approver needs to read."""
    m = loaded.manifest
    return {
        "name": m.name,
        "version": m.version,
        "version_id": loaded.version_id,
        "owner": m.owner,
        "objective": " ".join(m.objective.split()),
        "success_metric": m.success_metric.model_dump(exclude_none=True),
        "out_of_scope": list(m.out_of_scope),
        "environments": list(m.environments),
        "agents": [{"id": a.id, "environment": a.environment, "roles": list(a.roles)} for a in m.agents],
        "tools": [
            {
                "name": t.name,
                "verb": t.verb,
                "traits": list(t.traits),
                "risk_conditions": [{"when": r.when, "traits": list(r.traits)} for r in t.risk_conditions],
                "description": t.description,
            }
            for t in m.tools
        ],
        "runs_without_approval": [_rule(r) for r in m.rules.allow],
        "needs_approval": [_rule(r) for r in m.rules.require_approval],
        "forbidden": [_rule(r) for r in m.rules.forbid],
        "stop_rules": [
            {"id": s.id, "kind": s.kind, "tools": s.tool_list(), "description": s.description}
            for s in m.stop_rules
        ],
        "budgets": m.budgets.per_run.model_dump(exclude_none=True),
        "approvals": m.approvals.model_dump(),
        "pause_owners": list(m.pause_owners),
    }


def _rule(rule: RuleSpec) -> dict[str, Any]:
    return {"id": rule.id, "applies_to": describe_rule(rule), "description": rule.description}


def describe_rule(rule: RuleSpec) -> str:
    """A rule in words: ``payments.refund when amount <= 50``."""
    parts: list[str] = []
    if rule.tool is not None:
        parts.append(", ".join(rule.tool_list()))
    if rule.verb is not None:
        verbs = rule.verb_list()
        parts.append(("verb " if len(verbs) == 1 else "verbs ") + ", ".join(verbs))
    if rule.trait is not None:
        traits = rule.trait_list()
        parts.append(("trait " if len(traits) == 1 else "traits ") + ", ".join(traits))
    text = " with ".join(parts)
    if rule.roles:
        text += f" for {', '.join(rule.roles)}"
    if rule.environments:
        text += f" in {', '.join(rule.environments)}"
    if rule.when:
        text += f" when {rule.when}"
    return text


__all__ = ["describe_rule", "operating_model"]
