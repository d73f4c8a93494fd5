"""May this verifier settle this action alone? One Cedar request on the verb ``verify``.

The request is the verified action's own (its tool as the resource, its risk, arguments and the
data classes its run carries in the context), with the verifier as the principal, the action's
verb as ``context.verb`` and the verdict weighed as ``context.verdict``. The answer:

- a ``settle:*`` permit is satisfied and nothing forbids → the verdict settles the approval;
- a forbid fires (``never-settle:*``, a manifest ``forbid`` rule on the tool, or the role grants
  when the verifier's roles lack ``verify``) → a person must decide; the verdict is advice;
- no ``settle:*`` permit applies → likewise a person decides. Permits of other kinds (``allow:*``,
  ``review:*`` without a verb) say what an agent may *do*, not what a verifier may settle, and
  are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cedarpy

from interlock._internal.manifest.models import VERIFY
from interlock._internal.policy.cedar_values import CedarValueError, args_to_cedar
from interlock._internal.policy.compiler import NS, CompiledPolicy

SETTLE = "settle:"


@dataclass(frozen=True)
class SettleDecision:
    settles: bool
    # settle_permitted | settle_forbidden | not_granted | no_settle_rule | policy_error
    code: str
    message: str
    policy_ids: tuple[str, ...] = ()


def decide_settle(
    compiled: CompiledPolicy,
    *,
    verifier: str,
    workflow: str,
    environment: str,
    tool: str,
    verb: str,
    risk: list[str],
    arguments: Any,
    input_schema: dict[str, Any],
    data_classes: list[str],
    verdict: str,
) -> SettleDecision:
    try:
        args = args_to_cedar(arguments if isinstance(arguments, dict) else {}, input_schema)
    except CedarValueError as exc:
        return SettleDecision(False, "policy_error", f"arguments cannot be judged by policy: {exc}")
    request = {
        "principal": {"type": f"{NS}::Agent", "id": verifier},
        "action": {"type": f"{NS}::Action", "id": VERIFY},
        "resource": {"type": f"{NS}::Tool", "id": tool},
        "context": {
            "workflow": workflow,
            "environment": environment,
            "tool": tool,
            "risk": sorted(risk),
            "steps": 0,
            "tool_calls": 0,
            "args": args,
            "data_classes": sorted(data_classes),
            "verb": verb,
            "verdict": verdict,
        },
    }
    try:
        result = cedarpy.is_authorized(request, *compiled.for_tool(tool))
    except (ValueError, TypeError, RuntimeError) as exc:  # fail closed: a person decides
        return SettleDecision(False, "policy_error", f"policy evaluation failed: {exc}"[:500])
    diag = result.diagnostics
    names = diag.id_annotations_by_reason
    ids = tuple(sorted({names.get(r, r) for r in diag.reasons}))
    if diag.errors:
        errors = "; ".join(str(e) for e in diag.errors)
        return SettleDecision(False, "policy_error", f"policy evaluation failed: {errors}"[:500], ids)
    if not result.allowed:
        if not ids:
            return SettleDecision(False, "no_settle_rule", "no settle rule lets a verifier settle this alone")
        if all(i.startswith("grant:") for i in ids):
            return SettleDecision(
                False, "not_granted", f"the verifier's roles do not grant the verb '{VERIFY}'", ids
            )
        forbids = tuple(i for i in ids if not i.startswith("grant:"))
        return SettleDecision(
            False, "settle_forbidden", f"a person must decide this ({', '.join(forbids)})", forbids
        )
    settles = tuple(i for i in ids if i.startswith(SETTLE))
    if not settles:
        return SettleDecision(False, "no_settle_rule", "no settle rule lets a verifier settle this alone")
    return SettleDecision(
        True, "settle_permitted", f"a verifier may settle this ({', '.join(settles)})", settles
    )


__all__ = ["SETTLE", "SettleDecision", "decide_settle"]
