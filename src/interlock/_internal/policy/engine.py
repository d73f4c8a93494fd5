"""Ask Cedar about one action and turn its answer into allow / deny / require_approval."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import cedarpy
import orjson

from interlock._internal.policy.compiler import NS, CompiledPolicy
from interlock._internal.store.json_text import has_non_finite

Outcome = Literal["allow", "deny", "require_approval"]


@dataclass(frozen=True)
class PolicyDecision:
    outcome: Outcome
    policy_ids: tuple[str, ...]
    # Why, in one machine-readable code: permitted | review_required | forbidden | not_granted
    # | no_policy_permits | policy_error
    code: str
    errors: tuple[str, ...] = ()


def decide(
    compiled: CompiledPolicy,
    *,
    agent_id: str,
    verb: str,
    tool: str,
    context: dict[str, Any],
) -> PolicyDecision:
    request = {
        "principal": {"type": f"{NS}::Agent", "id": agent_id},
        "action": {"type": f"{NS}::Action", "id": verb},
        "resource": {"type": f"{NS}::Tool", "id": tool},
        "context": _context_text(context),
    }
    try:
        result = cedarpy.is_authorized(request, *compiled.for_tool(tool))
    except (ValueError, TypeError, RuntimeError) as exc:  # fail closed on anything Cedar rejects
        return PolicyDecision("deny", (), "policy_error", (str(exc),))
    diag = result.diagnostics
    names = diag.id_annotations_by_reason
    ids = tuple(sorted({names.get(r, r) for r in diag.reasons}))
    if diag.errors:
        # A policy that errored is skipped by Cedar; that may hide a forbid, so deny.
        return PolicyDecision("deny", ids, "policy_error", tuple(str(e) for e in diag.errors))
    if not result.allowed:
        if not ids:
            return PolicyDecision("deny", (), "no_policy_permits")
        if all(i.startswith("grant:") for i in ids):
            return PolicyDecision("deny", ids, "not_granted")
        return PolicyDecision("deny", ids, "forbidden")
    review = tuple(i for i in ids if i.startswith("review:"))
    if review:
        return PolicyDecision("require_approval", review, "review_required")
    return PolicyDecision("allow", ids, "permitted")


def _context_text(context: dict[str, Any]) -> str | dict[str, Any]:
    """The context as JSON text, written by orjson instead of by cedarpy with ``json`` (cedarpy
    takes either). What the two would write differently (orjson refuses an integer past 64 bits
    or a lone surrogate, and writes NaN as null) goes to cedarpy as the dict, as before, so Cedar
    judges and rejects exactly what it did."""
    try:
        text = orjson.dumps(context)
    except TypeError:
        return context
    if b"null" in text and has_non_finite(context):  # orjson writes NaN as null, json as NaN
        return context
    return text.decode("utf-8")
