"""Stop rules that can be judged from one intent alone: each one ends in ``escalate``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, select

from interlock._internal.gateway.models import Reason
from interlock._internal.manifest.models import Manifest, StopRule
from interlock._internal.store import tables as t
from interlock._internal.store.hot import Conn

_MISSING = object()

# Argument patterns for the built-in sensitive categories (used when a rule names categories).
CATEGORY_PATTERNS = {
    "money": r"\b(refund|chargeback|wire|payment|invoice|credit card|bank)\b",
    "access": r"\b(password|permission|admin|role|access|mfa|2fa|login)\b",
    "legal": r"\b(lawsuit|lawyer|attorney|subpoena|legal action|court)\b",
    "compliance": r"\b(gdpr|hipaa|ccpa|data (deletion|request|export)|right to be forgotten)\b",
    "security": r"\b(breach|hacked|vulnerability|phishing|compromised|malware)\b",
}


def _lookup(args: dict[str, Any], path: str) -> Any:
    value: Any = args
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _texts(v)]
    if isinstance(value, list):
        return [s for v in value for s in _texts(v)]
    return []


def _applies(rule: StopRule, tool: str) -> bool:
    tools = rule.tool_list()
    return not tools or tool in tools


def check_intent(
    manifest: Manifest, *, tool: str, arguments: dict[str, Any], risk: list[str], confidence: float | None
) -> Reason | None:
    """The first stop rule this intent trips, or None."""
    for rule in manifest.stop_rules:
        if not _applies(rule, tool):
            continue
        reason = _check(rule, arguments, risk, confidence)
        if reason is not None:
            return reason
    return None


def _check(rule: StopRule, args: dict[str, Any], risk: list[str], confidence: float | None) -> Reason | None:
    if rule.kind == "missing_data":
        for path in rule.required:
            value = _lookup(args, path)
            blank = isinstance(value, str) and not value.strip()  # whitespace says nothing either
            if value is _MISSING or value is None or blank or (isinstance(value, list | dict) and not value):
                return Reason(
                    code="missing_data",
                    message=f"required data {path!r} is missing or empty (stop rule {rule.id})",
                    policy_id=f"stop:{rule.id}",
                    field=path,
                )
    elif rule.kind == "low_confidence" and rule.threshold is not None:
        # An agent that reports no confidence is not judged by it; one that does is held to it.
        if confidence is not None and confidence < rule.threshold:
            return Reason(
                code="low_confidence",
                message=f"agent confidence {confidence:g} is below {rule.threshold:g} (stop rule {rule.id})",
                policy_id=f"stop:{rule.id}",
            )
    elif rule.kind == "sensitive_category":
        hit = sorted(set(rule.traits) & set(risk))
        if hit:
            return Reason(
                code="sensitive_category",
                message=f"action touches {', '.join(hit)} (stop rule {rule.id})",
                policy_id=f"stop:{rule.id}",
            )
        patterns = [rule.pattern] if rule.pattern else []
        patterns += [CATEGORY_PATTERNS[c] for c in rule.categories]
        for pattern in patterns:
            for text in _texts(args):
                if _regex(pattern).search(text):
                    return Reason(
                        code="sensitive_category",
                        message=f"arguments match a sensitive category (stop rule {rule.id})",
                        policy_id=f"stop:{rule.id}",
                    )
    elif rule.kind == "outside_category" and rule.field:
        value = _lookup(args, rule.field)
        if value is not _MISSING and value not in rule.allowed:
            return Reason(
                code="outside_category",
                message=f"{rule.field}={value!r} is outside the approved categories (stop rule {rule.id})",
                policy_id=f"stop:{rule.id}",
                field=rule.field,
            )
    return None


# ---- stop rules that read the run's history (inside the reservation transaction) ----------------

_EXECUTED = select(t.steps.c.tool, t.steps.c.result).where(
    t.steps.c.run_id == bindparam("h_run"),
    t.steps.c.status == "executed",
    t.steps.c.tool.in_(bindparam("h_tools", expanding=True)),
)


def check_history(conn: Conn, manifest: Manifest, *, run_id: str, tool: str) -> Reason | None:
    """Conflicting records: the outputs of the declared source tools disagree on the declared key."""
    for rule in manifest.stop_rules:
        if rule.kind != "conflicting_records" or not rule.key or not rule.sources or not _applies(rule, tool):
            continue
        rows = conn.execute(_EXECUTED, {"h_run": run_id, "h_tools": list(rule.sources)})
        reason = records_conflict(rule, ((src, result) for src, result in rows))
        if reason is not None:
            return reason
    return None


def records_conflict(rule: StopRule, executed: Iterable[tuple[str, Any]]) -> Reason | None:
    """A ``conflicting_records`` rule judged over (tool, stored result) of the run's executed
    steps of its sources: live in the reservation, and from the record in replay and what-if."""
    assert rule.key is not None
    seen: dict[str, set[str]] = {}
    for src, result in executed:
        value = _lookup(result, rule.key) if isinstance(result, dict) else _MISSING
        if value is not _MISSING and value is not None:
            seen.setdefault(json.dumps(value, sort_keys=True), set()).add(src)
    if len(seen) > 1:
        shown = "; ".join(f"{', '.join(sorted(v))} say {k}" for k, v in sorted(seen.items()))
        return Reason(
            code="conflicting_records",
            message=f"sources disagree on {rule.key!r}: {shown} (stop rule {rule.id})",
            policy_id=f"stop:{rule.id}",
            field=rule.key,
        )
    return None


def applies(rule: StopRule, tool: str) -> bool:
    """Whether a stop rule covers ``tool`` (a rule that names no tool covers every tool)."""
    return _applies(rule, tool)


def sequence_broken(conn: Conn, manifest: Manifest, *, run_id: str, tool: str) -> Reason | None:
    """A tool failed after an earlier tool of its declared sequence changed something."""
    for rule in manifest.stop_rules:
        if rule.kind != "sequence_failure" or tool not in rule.sequence:
            continue
        earlier = rule.sequence[: rule.sequence.index(tool)]
        if not earlier:
            continue
        done = [row[0] for row in conn.execute(_EXECUTED, {"h_run": run_id, "h_tools": earlier})]
        if done:
            return sequence_reason(rule, tool, done)
    return None


def sequence_reason(rule: StopRule, tool: str, done: Iterable[str]) -> Reason:
    """The reason a ``sequence_failure`` rule gives when ``tool`` failed after ``done`` executed."""
    return Reason(
        code="sequence_failure",
        message=f"{tool} failed after {', '.join(sorted(set(done)))} in the sequence "
        f"{' → '.join(rule.sequence)}; a person must finish or undo it (stop rule {rule.id})",
        policy_id=f"stop:{rule.id}",
    )
