"""The pure part of the pipeline: what schema, risk, Cedar, stop rules and confidence routing say
about one intent, before any counter or record is touched."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interlock._internal.audit.canonical import canonical_json, sha256_hex
from interlock._internal.gateway.dataflow import Carried, check_flow, class_names
from interlock._internal.gateway.models import (
    ActionStatus,
    Decision,
    Reason,
    Run,
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


Paused = tuple[str, str] | None  # (reason code, message) when a pause holds the run


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


@dataclass
class Checking:
    """One intent on its way through the pure checks: what each stage has learned so far."""

    runtime: WorkflowRuntime
    agent_id: str
    environment: str
    intent: Intent
    steps: int = 0
    tool_calls: int = 0
    carried: tuple[Carried, ...] = ()  # what the run's earlier steps brought in (dataflow.py)
    base: dict[str, Any] = field(default_factory=dict)
    tool: ToolRuntime | None = None
    risk: list[str] = field(default_factory=list)
    policy_ids: list[str] = field(default_factory=list)
    outcome: Outcome = "deny"
    reasons: list[Reason] = field(default_factory=list)

    def refuse(self, reason: Reason, status: ActionStatus = "denied") -> Verdict:
        kind = "escalate" if status == "escalated" else "deny"
        decision = Decision(decision=kind, reasons=[reason], risk=self.risk, **self.base)
        return Verdict(decision, status, self.tool)

    def verdict(self) -> Verdict:
        """What the checks concluded, once every stage has let the intent through."""
        decision = Decision(
            decision=self.outcome,
            reasons=self.reasons,
            risk=self.risk,
            policy_ids=self.policy_ids,
            **self.base,
        )
        status: ActionStatus = {
            "allow": "executed",
            "deny": "denied",
            "require_approval": "pending_approval",
        }[self.outcome]  # type: ignore[assignment]
        return Verdict(decision, status, self.tool)


# ---- the pure stages, in pipeline order: each returns the verdict that stops the intent, or None.


def check_schema(c: Checking) -> Verdict | None:
    """The tool exists, the arguments are JSON within the size limit and pass its input schema;
    their hash (what approvals bind to) is taken here."""
    runtime = c.runtime
    c.base = {
        "manifest_version": runtime.version_id,
        "policy_version": runtime.compiled.sha256,
        "confidence": c.intent.confidence,
    }
    tool_rt = runtime.tools.get(c.intent.tool)
    if tool_rt is None:
        c.base["tool"] = c.intent.tool
        return c.refuse(
            Reason(code="unknown_tool", message=f"unknown tool {c.intent.tool!r} (deny by default)")
        )
    c.tool = tool_rt
    c.base.update(tool=tool_rt.spec.name, verb=tool_rt.spec.verb)
    args = c.intent.arguments
    try:
        encoded = canonical_json(args)  # once: for the size check and the hash approvals bind to
        args_hash = sha256_hex(encoded)
        if len(encoded) > MAX_ARGUMENT_BYTES:
            raise ArgumentsInvalid(f"arguments exceed {MAX_ARGUMENT_BYTES} bytes", field="arguments")
        tool_rt.validate(args)
    except ArgumentsInvalid as exc:
        reason = Reason(code="invalid_arguments", message=f"{exc.field}: {exc.message}", field=exc.field)
        return c.refuse(reason, "invalid")
    except (ValueError, TypeError) as exc:  # not JSON at all (NaN, sets, objects)
        reason = Reason(code="invalid_arguments", message=f"arguments are not JSON: {exc}", field="arguments")
        return c.refuse(reason, "invalid")
    c.base["args_hash"] = args_hash
    return None


def classify_risk(c: Checking) -> Verdict | None:
    """The tool's traits plus those its risk conditions add for these arguments."""
    assert c.tool is not None
    c.risk = c.tool.risk(c.intent.arguments)
    return None


def check_policy(c: Checking) -> Verdict | None:
    """The agent is declared for this environment, then Cedar decides (deny by default)."""
    assert c.tool is not None
    runtime, spec = c.runtime, c.tool.spec
    agent = runtime.manifest.agent(c.agent_id)
    if agent is None:
        return c.refuse(
            Reason(
                code="agent_not_in_manifest", message=f"agent {c.agent_id} is not declared in {runtime.name}"
            )
        )
    if agent.environment != c.environment:
        return c.refuse(
            Reason(
                code="environment_mismatch",
                message=f"agent {c.agent_id} acts in {agent.environment}, not in {c.environment}",
            )
        )
    bound = runtime.bound(c.tool, c.environment)
    if bound is None:
        # No fallback: a tool whose system does not bind this environment is not callable here.
        return c.refuse(
            Reason(
                code="no_binding",
                message=f"system {spec.system} has no binding for environment {c.environment}; "
                f"{spec.name} cannot be called from it",
            )
        )
    c.tool, c.base["binding"] = bound
    if c.carried:
        c.base["data_classes"] = class_names(c.carried)
    try:
        context: dict[str, Any] = {
            "workflow": runtime.name,
            "environment": c.environment,
            "tool": spec.name,
            "risk": c.risk,
            "steps": c.steps,
            "tool_calls": c.tool_calls,
            "args": args_to_cedar(c.intent.arguments, spec.input_schema),
            "data_classes": class_names(c.carried),
        }
        if c.intent.confidence is not None:
            context["confidence"] = {"__extn": {"fn": "decimal", "arg": decimal_text(c.intent.confidence)}}
    except CedarValueError as exc:
        reason = Reason(code="invalid_arguments", message=f"{exc} (cannot be judged exactly by policy)")
        return c.refuse(reason, "invalid")
    verdict = policy_engine.decide(
        runtime.compiled, agent_id=c.agent_id, verb=spec.verb, tool=spec.name, context=context
    )
    message = _POLICY_MESSAGES[verdict.code]
    if verdict.errors:
        message += ": " + "; ".join(verdict.errors)[:500]
    c.reasons = [Reason(code=verdict.code, message=message, policy_id=p) for p in verdict.policy_ids] or [
        Reason(code=verdict.code, message=message)
    ]
    c.policy_ids = list(verdict.policy_ids)
    c.outcome = verdict.outcome
    if verdict.outcome == "deny":
        return c.verdict()
    flow = check_flow(runtime.manifest, spec, c.intent.arguments, c.carried)
    if flow is not None:
        # What the data may not reach is decided here, like a policy forbid, before stop rules.
        c.policy_ids.append(flow.reason.policy_id or "flow")
        if flow.outcome == "deny":
            c.outcome, c.reasons = "deny", [flow.reason]
            return c.verdict()
        c.reasons = [flow.reason, *c.reasons] if c.outcome == "allow" else [*c.reasons, flow.reason]
        c.outcome = "require_approval"
    return None


def check_stop_rules(c: Checking) -> Verdict | None:
    """Stop rules judged from the intent, then confidence routing. They judge only what policy
    lets through: a forbidden action is denied, not escalated (escalating it would hand a person
    a decision policy already made)."""
    assert c.tool is not None
    manifest = c.runtime.manifest
    stop = check_intent(
        manifest,
        tool=c.tool.spec.name,
        arguments=c.intent.arguments,
        risk=c.risk,
        confidence=c.intent.confidence,
    )
    if stop is not None:
        decision = Decision(
            decision="escalate", reasons=[stop], risk=c.risk, policy_ids=c.policy_ids, **c.base
        )
        return Verdict(decision, "escalated", c.tool)
    routed = _route_by_confidence(manifest, c.outcome, c.intent.confidence)
    if routed is not None:
        c.outcome, reason = routed
        c.reasons = [reason, *c.reasons] if c.outcome == "require_approval" else [reason]
        if c.outcome == "deny":
            return c.verdict()
    return None


def run_brakes(c: Checking, run: Run, paused: Paused) -> Verdict | None:
    """Run-level brakes on everything that would act or ask a person to act: a pause over the
    workflow, agent or environment, a run that is no longer running, the run's duration."""
    if paused is not None:
        return c.refuse(Reason(code=paused[0], message=paused[1]))
    if run.state != "running":
        message = f"run is {run.state}: {run.state_reason or ''}".strip(": ")
        return c.refuse(Reason(code="run_not_active", message=message))
    budget = c.runtime.manifest.budgets.per_run
    if budget.max_duration_s is not None and time.time() - run.started_at > budget.max_duration_s:
        reason = Reason(
            code="run_duration_exceeded", message=f"run exceeded max_duration_s={budget.max_duration_s:g}"
        )
        return c.refuse(reason, "limited")
    return None


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
    """Schema, risk, then policy (the system binding, Cedar, data flow), then stop rules and
    confidence routing: the pure stages in order. Never raises for bad input: it denies.
    ``carried`` is what the run's earlier steps brought in (see dataflow.py)."""
    c = Checking(runtime, agent_id, environment, intent, steps, tool_calls, carried)
    return check_schema(c) or classify_risk(c) or check_policy(c) or check_stop_rules(c) or c.verdict()


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
