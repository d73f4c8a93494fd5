"""The pure part of the pipeline: what schema, risk, Cedar, stop rules and confidence routing say
about one intent, before any counter or record is touched."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interlock._internal.audit.canonical import canonical_json, sha256_hex
from interlock._internal.gateway.dataflow import Carried, check_flow, class_names
from interlock._internal.gateway.models import (
    ActionStatus,
    Decision,
    Reason,
)
from interlock._internal.gateway.runtime import MAX_ARGUMENT_BYTES, ToolRuntime, WorkflowRuntime
from interlock._internal.limits.stop_rules import check_intent
from interlock._internal.manifest.models import CredentialRef, Manifest
from interlock._internal.policy import engine as policy_engine
from interlock._internal.policy.cedar_values import CedarValueError, args_to_cedar, decimal_text
from interlock._internal.policy.engine import Outcome
from interlock.exceptions import (
    ArgumentsInvalid,
    ConfigError,
)

_POLICY_MESSAGES = {
    "permitted": "allowed by policy",
    "review_required": "policy requires a person to approve this action",
    "forbidden": "forbidden by policy",
    "not_granted": "the agent's roles are not granted this verb or tool",
    "no_policy_permits": "no policy permits this action (deny by default)",
    "policy_error": "policy evaluation failed; denied to fail closed",
}


@dataclass(frozen=True)
class Intent:
    tool: str
    arguments: Any
    idempotency_key: str | None = None
    reasoning: str | None = None
    confidence: float | None = None
    evidence: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Verdict:
    """The pure decision part of the pipeline, before any counter or record is touched."""

    decision: Decision
    status: ActionStatus
    tool: ToolRuntime | None
    stop_run: bool = False  # a cap or budget refused it: the run stops with this step
    retry_after: float | None = None  # a rate limit refused it: when to try again


class _Refused(Exception):
    """Raised inside the reservation so everything it took rolls back."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.decision.reasons[0].message)
        self.verdict = verdict


def _deny(
    code: str, message: str, *, status: ActionStatus = "denied", **kw: Any
) -> tuple[Reason, ActionStatus]:
    return Reason(code=code, message=message, **kw), status


def resolve_credential(ref: CredentialRef | None, *, base_dir: Path) -> str | None:
    """Read an upstream secret at call time. It is never stored, logged or returned.

    A relative ``file`` is found next to the manifest, like its Python tools and policy files."""
    if ref is None:
        return None
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise ConfigError(f"credential: environment variable {ref.env} is not set")
        return value
    try:
        return (base_dir / (ref.file or "")).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"credential: cannot read secret file: {exc.strerror}") from exc


def evaluate(
    runtime: WorkflowRuntime,
    *,
    agent_id: str,
    environment: str,
    intent: Intent,
    steps: int = 0,
    tool_calls: int = 0,
    carried: tuple[Carried, ...] = (),
) -> Verdict:
    """Schema, risk, the system binding, Cedar, data flow, then stop rules and confidence
    routing. Never raises for bad input: it denies. ``carried`` is what the run's earlier steps
    brought in (see dataflow.py)."""
    manifest = runtime.manifest
    base: dict[str, Any] = {
        "manifest_version": runtime.version_id,
        "policy_version": runtime.compiled.sha256,
        "confidence": intent.confidence,
    }
    tool_rt = runtime.tools.get(intent.tool)
    if tool_rt is None:
        reason = Reason(code="unknown_tool", message=f"unknown tool {intent.tool!r} (deny by default)")
        return Verdict(Decision(decision="deny", reasons=[reason], tool=intent.tool, **base), "denied", None)
    spec = tool_rt.spec
    base.update(tool=spec.name, verb=spec.verb)
    args = intent.arguments
    try:
        encoded = canonical_json(args)  # once: for the size check and the hash approvals bind to
        args_hash = sha256_hex(encoded)
        if len(encoded) > MAX_ARGUMENT_BYTES:
            raise ArgumentsInvalid(f"arguments exceed {MAX_ARGUMENT_BYTES} bytes", field="arguments")
        tool_rt.validate(args)
    except ArgumentsInvalid as exc:
        reason = Reason(code="invalid_arguments", message=f"{exc.field}: {exc.message}", field=exc.field)
        return Verdict(Decision(decision="deny", reasons=[reason], **base), "invalid", tool_rt)
    except (ValueError, TypeError) as exc:  # not JSON at all (NaN, sets, objects)
        reason = Reason(code="invalid_arguments", message=f"arguments are not JSON: {exc}", field="arguments")
        return Verdict(Decision(decision="deny", reasons=[reason], **base), "invalid", tool_rt)
    base["args_hash"] = args_hash
    risk = tool_rt.risk(args)
    agent = manifest.agent(agent_id)
    if agent is None:
        reason = Reason(
            code="agent_not_in_manifest", message=f"agent {agent_id} is not declared in {runtime.name}"
        )
        return Verdict(Decision(decision="deny", reasons=[reason], risk=risk, **base), "denied", tool_rt)
    if agent.environment != environment:
        reason = Reason(
            code="environment_mismatch",
            message=f"agent {agent_id} acts in {agent.environment}, not in {environment}",
        )
        return Verdict(Decision(decision="deny", reasons=[reason], risk=risk, **base), "denied", tool_rt)
    bound = runtime.bound(tool_rt, environment)
    if bound is None:
        # No fallback: a tool whose system does not bind this environment is not callable here.
        reason = Reason(
            code="no_binding",
            message=f"system {spec.system} has no binding for environment {environment}; "
            f"{spec.name} cannot be called from it",
        )
        return Verdict(Decision(decision="deny", reasons=[reason], risk=risk, **base), "denied", tool_rt)
    tool_rt, base["binding"] = bound
    if carried:
        base["data_classes"] = class_names(carried)
    try:
        context: dict[str, Any] = {
            "workflow": runtime.name,
            "environment": environment,
            "tool": spec.name,
            "risk": risk,
            "steps": steps,
            "tool_calls": tool_calls,
            "args": args_to_cedar(args, spec.input_schema),
            "data_classes": class_names(carried),
        }
        if intent.confidence is not None:
            context["confidence"] = {"__extn": {"fn": "decimal", "arg": decimal_text(intent.confidence)}}
    except CedarValueError as exc:
        reason = Reason(code="invalid_arguments", message=f"{exc} (cannot be judged exactly by policy)")
        return Verdict(Decision(decision="deny", reasons=[reason], risk=risk, **base), "invalid", tool_rt)
    verdict = policy_engine.decide(
        runtime.compiled, agent_id=agent_id, verb=spec.verb, tool=spec.name, context=context
    )
    message = _POLICY_MESSAGES[verdict.code]
    if verdict.errors:
        message += ": " + "; ".join(verdict.errors)[:500]
    reasons = [Reason(code=verdict.code, message=message, policy_id=p) for p in verdict.policy_ids] or [
        Reason(code=verdict.code, message=message)
    ]
    outcome = verdict.outcome
    policy_ids = list(verdict.policy_ids)
    flow = check_flow(manifest, spec, args, carried) if outcome != "deny" else None
    if flow is not None:
        # What the data may not reach is decided before stop rules, like a policy forbid.
        policy_ids.append(flow.reason.policy_id or "flow")
        if flow.outcome == "deny":
            return Verdict(
                Decision(decision="deny", reasons=[flow.reason], risk=risk, policy_ids=policy_ids, **base),
                "denied",
                tool_rt,
            )
        reasons = [flow.reason, *reasons] if outcome == "allow" else [*reasons, flow.reason]
        outcome = "require_approval"
    if outcome != "deny":
        # Stop rules judge what policy would let through: a forbidden action is denied, not
        # escalated (escalating it would hand a person a decision policy already made).
        stop = check_intent(manifest, tool=spec.name, arguments=args, risk=risk, confidence=intent.confidence)
        if stop is not None:
            return Verdict(
                Decision(
                    decision="escalate",
                    reasons=[stop],
                    risk=risk,
                    policy_ids=policy_ids,
                    **base,
                ),
                "escalated",
                tool_rt,
            )
    routed = _route_by_confidence(manifest, outcome, intent.confidence)
    if routed is not None:
        outcome, reason = routed
        reasons = [reason, *reasons] if outcome == "require_approval" else [reason]
    decision = Decision(decision=outcome, reasons=reasons, risk=risk, policy_ids=policy_ids, **base)
    status: ActionStatus = {"allow": "executed", "deny": "denied", "require_approval": "pending_approval"}[
        outcome
    ]  # type: ignore[assignment]
    return Verdict(decision, status, tool_rt)


def _route_by_confidence(
    manifest: Manifest, outcome: str, confidence: float | None
) -> tuple[Outcome, Reason] | None:
    """Per-workflow thresholds: alone at or above ``auto``, review between, reject below ``review``."""
    thresholds = manifest.confidence
    if confidence is None or outcome == "deny" or (thresholds.auto <= 0 and thresholds.review <= 0):
        return None
    if confidence < thresholds.review:
        return "deny", Reason(
            code="low_confidence_rejected",
            message=f"confidence {confidence:g} is below the review threshold {thresholds.review:g}",
        )
    if outcome == "allow" and confidence < thresholds.auto:
        return "require_approval", Reason(
            code="confidence_review",
            message=f"confidence {confidence:g} is below {thresholds.auto:g}: a person reviews it",
        )
    return None
