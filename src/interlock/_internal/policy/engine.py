"""Ask Cedar about one action and turn its answer into allow / deny / require_approval."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
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
        "context": _context_text(context, unread_context(compiled.text)),
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


# What the pipeline puts in every request's context from its own state (always valid Cedar
# values). Cedar reads a context attribute only where a policy names it, and turning each one from
# JSON into a Cedar value is most of what a request costs; so those no policy names are left out.
# The arguments (the agent's own values) are always sent, so Cedar refuses what it refused before.
_OWN_ATTRIBUTES = (
    "workflow",
    "environment",
    "tool",
    "risk",
    "steps",
    "tool_calls",
    "data_classes",
    "confidence",
)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTEXT_USE = re.compile(r"\bcontext\b\s*(\.|\[|has\b)?")


@lru_cache(maxsize=64)
def unread_context(text: str) -> frozenset[str]:
    """The pipeline's own context attributes that no policy in ``text`` can read: those whose name
    appears nowhere in it (an attribute is read as ``context.name``, ``context["name"]`` or
    ``context has name``; Cedar has no computed attribute names). Nothing is left out when the
    text has an escape (a name could hide in one) or uses ``context`` other than by attribute."""
    if "\\" in text:
        return frozenset()
    if any(m.group(1) is None for m in _CONTEXT_USE.finditer(text)):
        return frozenset()
    words = set(_WORD.findall(text))
    return frozenset(name for name in _OWN_ATTRIBUTES if name not in words)


def _context_text(context: dict[str, Any], unread: frozenset[str] = frozenset()) -> str | dict[str, Any]:
    """The context as JSON text, written by orjson instead of by cedarpy with ``json`` (cedarpy
    takes either). What the two would write differently (orjson refuses an integer past 64 bits
    or a lone surrogate, and writes NaN as null) goes to cedarpy as the dict, as before, so Cedar
    judges and rejects exactly what it did."""
    if unread:
        context = {k: v for k, v in context.items() if k not in unread}
    try:
        text = orjson.dumps(context)
    except TypeError:
        return context
    if b"null" in text and has_non_finite(context):  # orjson writes NaN as null, json as NaN
        return context
    return text.decode("utf-8")
