"""Classification that follows the data.

A tool declares the data classes its result carries (``returns``) and, optionally, whose data it
is (``data_subject``: a result path holding an email address or a domain). When such a step
executes, its classes and the subject's domain are recorded on the step; from then on the run
carries them. A tool with a ``destination`` is checked against what the run carries: a class the
destination is not cleared for is allowed, sent to a person or denied as the first matching
``flow_rules`` entry says, and denied when no rule matches. The reason names the step that
brought the class in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine

from interlock._internal.gateway.models import Reason
from interlock._internal.manifest.models import FlowRule, Manifest, ToolSpec
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading

LOAD_CLASSES = (
    select(t.steps.c.id, t.steps.c.seq, t.steps.c.tool, t.steps.c.data_classes)
    .where(
        t.steps.c.run_id == bindparam("run_id"),
        t.steps.c.data_classes.is_not(None),
        t.steps.c.status == "executed",
    )
    .order_by(t.steps.c.seq)
)


@dataclass(frozen=True)
class Carried:
    """One class a run carries, and the step that brought it in."""

    data_class: str
    step_id: str
    seq: int
    tool: str
    domains: tuple[str, ...] = ()  # the data subject's domains, when the tool names them


@dataclass(frozen=True)
class FlowVerdict:
    outcome: Literal["require_approval", "deny"]
    reason: Reason


def carried_classes(engine: Engine, run_id: str) -> tuple[Carried, ...]:
    """Every class the run's executed steps brought in, oldest first (one read)."""
    with reading(engine) as conn:
        rows = conn.execute(LOAD_CLASSES, {"run_id": run_id}).all()
    out: list[Carried] = []
    for row in rows:
        data = row.data_classes if isinstance(row.data_classes, dict) else {}
        domains = tuple(str(d) for d in data.get("subject_domains") or [])
        for name in data.get("classes") or []:
            out.append(Carried(str(name), row.id, int(row.seq), str(row.tool), domains))
    return tuple(out)


def carried_for(engine: Engine, flow_tools: frozenset[str], run_id: str, tool: str) -> tuple[Carried, ...]:
    """What the decision about ``tool`` needs to know of the run's classes: nothing (and no
    query) unless the tool sends data somewhere or policies speak of data classes."""
    if tool not in flow_tools:
        return ()
    return carried_classes(engine, run_id)


def class_names(carried: tuple[Carried, ...]) -> list[str]:
    return sorted({c.data_class for c in carried})


def _value_at(value: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def domain_of(value: Any) -> str | None:
    """``someone@Example.com`` → ``example.com``; a bare domain is itself."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().lower()
    domain = text.rsplit("@", 1)[1] if "@" in text else text
    return domain.rstrip(".") or None


def classes_of(tool: ToolSpec, result: Any) -> dict[str, Any] | None:
    """What an executed step brings into its run (stored on the step), or None."""
    if not tool.returns:
        return None
    domains: list[str] = []
    if tool.data_subject is not None:
        found = _value_at(result, tool.data_subject)
        for item in found if isinstance(found, list) else [found]:
            domain = domain_of(item)
            if domain is not None and domain not in domains:
                domains.append(domain)
    return {"classes": sorted(set(tool.returns)), "subject_domains": domains}


def _rule_for(manifest: Manifest, data_class: str, kind: str) -> FlowRule | None:
    for rule in manifest.flow_rules:
        if data_class in rule.classes and kind in rule.to:
            return rule
    return None


def check_flow(
    manifest: Manifest, tool: ToolSpec, arguments: Any, carried: tuple[Carried, ...]
) -> FlowVerdict | None:
    """Whether sending what the run carries to ``tool``'s destination needs a person or is
    denied; None when every class is cleared (or a rule allows it)."""
    destination = tool.destination
    if destination is None or not carried:
        return None
    cleared = {"public", *destination.cleared}
    system = manifest.system(tool.system) if tool.system is not None else None
    if destination.kind == "internal" and system is not None:
        cleared.update(system.data_classes)  # a system may receive what it already holds
    recipient = None
    if destination.recipient is not None:
        recipient = domain_of(_value_at(arguments, destination.recipient))
    first: dict[str, Carried] = {}
    origins: dict[str, list[Carried]] = {}
    for item in carried:
        first.setdefault(item.data_class, item)
        origins.setdefault(item.data_class, []).append(item)
    worst: FlowVerdict | None = None
    for data_class, origin in first.items():
        if data_class in cleared:
            continue
        rule = _rule_for(manifest, data_class, destination.kind)
        # Cleared by the subject's domain only when every piece of this class came from the
        # recipient's own domain: one other customer's data in the run keeps the flow uncleared.
        if (
            rule is not None
            and rule.except_subject_domain
            and recipient is not None
            and all(o.domains and set(o.domains) == {recipient} for o in origins[data_class])
        ):
            continue
        outcome = rule.outcome if rule is not None else "deny"
        if outcome == "allow":
            continue
        where = f" at {recipient}" if recipient is not None else ""
        message = (
            f"the run carries {data_class} data brought in by step {origin.seq} ({origin.tool}, "
            f"{origin.step_id}); {tool.name} sends to an {destination.kind} destination{where} "
            f"not cleared for {data_class}"
        )
        if rule is None:
            message += " and no flow rule covers it (deny by default)"
        elif rule.description:
            message += f": {rule.description}"
        verdict = FlowVerdict(
            outcome,
            Reason(
                code="data_flow_denied" if outcome == "deny" else "data_flow_review",
                message=message,
                policy_id=f"flow:{rule.id}" if rule is not None else "flow:not-cleared",
            ),
        )
        if outcome == "deny":
            return verdict
        worst = worst or verdict
    return worst


__all__ = [
    "Carried",
    "FlowVerdict",
    "carried_classes",
    "carried_for",
    "check_flow",
    "class_names",
    "classes_of",
    "domain_of",
]
