"""The one chokepoint. Every action from every interface goes through :meth:`Pipeline.submit`.

    authenticate → load run → validate intent (schema) → classify risk → stop rules → policy (Cedar)
    → limits (step and tool-call caps; atomic reservation) → approval gate
    → execute (injected credentials, idempotency key, timeout) → validate output → redact
    → record step + decision + audit event

Fail closed: an unexpected error anywhere before execution denies the action with reason
``pipeline_error``; nothing executes on error.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from interlock._internal.audit.canonical import canonical_json, hash_value
from interlock._internal.audit.chain import append_event
from interlock._internal.gateway.models import (
    ActionResult,
    ActionStatus,
    Decision,
    ModelCall,
    ModelCallResult,
    Reason,
    Run,
)
from interlock._internal.gateway.runtime import MAX_ARGUMENT_BYTES, ToolRuntime, WorkflowRuntime
from interlock._internal.gateway.transports.base import CallContext
from interlock._internal.identity.agents import AgentStore, auth_row
from interlock._internal.identity.tokens import AgentPrincipal, TokenService, admit_agent, authenticate_agent
from interlock._internal.ids import new_id
from interlock._internal.limits.budgets import (
    BudgetRefused,
    Scope,
    charge,
    reserve,
    scopes_for,
    settle,
    usd_to_micros,
)
from interlock._internal.limits.locks import acquire as lock_acquire
from interlock._internal.limits.locks import lock_key
from interlock._internal.limits.ratelimit import RateLimited, RateLimiter
from interlock._internal.limits.stop_rules import check_history, check_intent, sequence_broken
from interlock._internal.manifest.models import CredentialRef, Manifest, RuleSpec
from interlock._internal.policy import engine as policy_engine
from interlock._internal.policy.cedar_values import CedarValueError, args_to_cedar, decimal_text
from interlock._internal.policy.engine import Outcome
from interlock._internal.runs.state import open_handoff, set_state
from interlock._internal.runs.store import RunStore, run_from_row
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading, transaction
from interlock._internal.telemetry.metrics import Metrics
from interlock._internal.telemetry.redaction import mask_secrets, redact
from interlock._internal.telemetry.tracing import Tracing
from interlock.exceptions import (
    ArgumentsInvalid,
    ConfigError,
    ConflictError,
    InterlockError,
    NotFound,
    StorageError,
    TokenScopeError,
    UpstreamError,
)

log = logging.getLogger("interlock.pipeline")

# Built once: the hot path only binds parameters (SQLAlchemy then reuses its compiled form).
_AGENT_PAUSE = t.pauses.alias("agent_pause")
_ENV_PAUSE = t.pauses.alias("env_pause")
_LOAD_RUN = (
    select(
        t.runs,
        t.workflows.c.paused,
        t.workflows.c.paused_reason,
        _AGENT_PAUSE.c.reason.label("agent_paused_reason"),
        _AGENT_PAUSE.c.paused_by.label("agent_paused_by"),
        _ENV_PAUSE.c.reason.label("env_paused_reason"),
        _ENV_PAUSE.c.paused_by.label("env_paused_by"),
    )
    .select_from(
        t.runs.outerjoin(t.workflows, t.workflows.c.name == t.runs.c.workflow)
        .outerjoin(
            _AGENT_PAUSE, and_(_AGENT_PAUSE.c.scope == "agent", _AGENT_PAUSE.c.key == t.runs.c.agent_id)
        )
        .outerjoin(
            _ENV_PAUSE, and_(_ENV_PAUSE.c.scope == "environment", _ENV_PAUSE.c.key == t.runs.c.environment)
        )
    )
    .where(t.runs.c.id == bindparam("run_id"))
)
_AGENT = t.agents.alias("caller")
_LOAD_RUN_AND_AGENT = _LOAD_RUN.add_columns(*(c.label(f"a_{c.name}") for c in _AGENT.c)).outerjoin(
    _AGENT, _AGENT.c.id == bindparam("agent_id")
)


class _AgentColumns:
    """The caller's agent columns of a joined row, under their own names."""

    def __init__(self, mapping: Any) -> None:
        self._m = mapping

    def __getattr__(self, name: str) -> Any:
        return self._m[f"a_{name}"]


_BUMP_STEPS = (
    update(t.runs)
    .where(t.runs.c.id == bindparam("run_id"))
    .values(steps=t.runs.c.steps + 1)
    .returning(t.runs.c.steps)
)
_RESERVE = (
    update(t.runs)
    .where(
        t.runs.c.id == bindparam("run_id"),
        t.runs.c.state == "running",
        t.runs.c.steps < bindparam("max_steps"),
        t.runs.c.tool_calls < bindparam("max_tool_calls"),
    )
    .values(steps=t.runs.c.steps + 1, tool_calls=t.runs.c.tool_calls + 1)
    .returning(t.runs.c.steps)
)
# Claim an approved, not yet executed (or held) approval for execution, exactly once.
_CLAIM_APPROVAL = (
    update(t.approvals)
    .where(
        t.approvals.c.id == bindparam("a_id"),
        t.approvals.c.state == "approved",
        or_(t.approvals.c.execution.is_(None), t.approvals.c.execution == "held"),
    )
    .values(execution="executing")
    .returning(t.approvals)
)
_INT_MAX = 2**31 - 1  # runs.steps and runs.tool_calls are INTEGER on PostgreSQL
_ADD_COST = (
    update(t.runs)
    .where(t.runs.c.id == bindparam("run_id"))
    .values(cost_micros=t.runs.c.cost_micros + bindparam("c_cost"))
)
_ADD_USAGE = (
    update(t.runs)
    .where(t.runs.c.id == bindparam("run_id"))
    .values(
        cost_micros=t.runs.c.cost_micros + bindparam("c_cost"), tokens=t.runs.c.tokens + bindparam("c_tokens")
    )
)
_COUNT_REPEATS = select(func.count()).where(
    t.steps.c.run_id == bindparam("r_run"),
    t.steps.c.tool == bindparam("r_tool"),
    t.steps.c.args_hash == bindparam("r_hash"),
    t.steps.c.status.in_(("executed", "failed")),
)
_INSERT_STEP = t.steps.insert()
_INSERT_DECISION = t.decisions.insert()
_INSERT_IDEMPOTENCY = t.idempotency.insert()
_IDEMPOTENCY_KEY = and_(
    t.idempotency.c.agent_id == bindparam("k_agent"), t.idempotency.c.key == bindparam("k_key")
)
_FIND_IDEMPOTENCY = select(t.idempotency).where(_IDEMPOTENCY_KEY)
_DONE_IDEMPOTENCY = (
    update(t.idempotency)
    .where(_IDEMPOTENCY_KEY)
    .values(state="done", step_id=bindparam("k_step"), outcome=bindparam("k_outcome"))
)
_RELEASE_IDEMPOTENCY = delete(t.idempotency).where(_IDEMPOTENCY_KEY)

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
) -> Verdict:
    """Schema, risk, Cedar, then stop rules and confidence routing. Never raises for bad input:
    it denies."""
    manifest = runtime.manifest
    base = {
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
        args_hash = hash_value(args)
        if len(canonical_json(args)) > MAX_ARGUMENT_BYTES:
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
    try:
        context: dict[str, Any] = {
            "workflow": runtime.name,
            "environment": environment,
            "tool": spec.name,
            "risk": risk,
            "steps": steps,
            "tool_calls": tool_calls,
            "args": args_to_cedar(args, spec.input_schema),
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
    if verdict.outcome != "deny":
        # Stop rules judge what policy would let through: a forbidden action is denied, not
        # escalated (escalating it would hand a person a decision policy already made).
        stop = check_intent(manifest, tool=spec.name, arguments=args, risk=risk, confidence=intent.confidence)
        if stop is not None:
            return Verdict(
                Decision(
                    decision="escalate",
                    reasons=[stop],
                    risk=risk,
                    policy_ids=list(verdict.policy_ids),
                    **base,
                ),
                "escalated",
                tool_rt,
            )
    outcome = verdict.outcome
    routed = _route_by_confidence(manifest, outcome, intent.confidence)
    if routed is not None:
        outcome, reason = routed
        reasons = [reason, *reasons] if outcome == "require_approval" else [reason]
    decision = Decision(
        decision=outcome, reasons=reasons, risk=risk, policy_ids=list(verdict.policy_ids), **base
    )
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


class Pipeline:
    def __init__(
        self,
        *,
        engine: Engine,
        runtimes: Callable[[str], WorkflowRuntime],
        tokens: TokenService,
        agents: AgentStore,
        runs: RunStore,
        model_prices: dict[str, dict[str, float]] | None = None,
        rate_limiter: RateLimiter | None = None,
        tracing: Tracing | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.model_prices = model_prices or {}
        self.rate_limiter = rate_limiter
        self.tracing = tracing or Tracing()
        self.metrics = metrics or Metrics()
        self.engine = engine
        self._runtime = runtimes
        self.tokens = tokens
        self.agents = agents
        self.runs = runs

    # ---- the whole pipeline -------------------------------------------------------------------

    def submit(self, token: str, run_id: str, intent: Intent) -> ActionResult:
        claims = self.tokens.verify(token)
        intent = _clean(run_id, intent)
        # The run, any pause over it and the caller's agent row arrive in one query; the row
        # checks (revoked, rotated secret) are the same as authenticate_agent's.
        with reading(self.engine) as conn:
            row = conn.execute(_LOAD_RUN_AND_AGENT, {"run_id": run_id, "agent_id": claims.agent_id}).first()
        if row is None:
            authenticate_agent(token, tokens=self.tokens, store=self.agents)
            raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
        m = row._mapping
        agent_row = auth_row(_AgentColumns(m)) if m["a_id"] is not None else None
        principal = admit_agent(claims, agent_row, tokens=self.tokens, store=self.agents)
        return self._submit_loaded(principal, *self._run_from(m), intent)

    def submit_as(self, principal: AgentPrincipal, run_id: str, intent: Intent) -> ActionResult:
        """The pipeline for a person acting on an agent's run (an edited handoff): everything
        after authentication. Nothing here skips a check."""
        intent = _clean(run_id, intent)
        run, paused = self._load_run(run_id)
        return self._submit_loaded(principal, run, paused, intent)

    def _submit_loaded(
        self, principal: AgentPrincipal, run: Run, paused: tuple[str, str] | None, intent: Intent
    ) -> ActionResult:
        run_id = run.id
        if run.agent_id != principal.agent_id:
            # Another agent's run is indistinguishable from a missing one.
            raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
        if run.workflow != principal.workflow or run.environment != principal.environment:
            raise TokenScopeError(
                f"token for {principal.workflow}/{principal.environment} used on a run of "
                f"{run.workflow}/{run.environment}"
            )
        if intent.idempotency_key is not None:
            replay = self._replay(principal.agent_id, intent)
            if replay is not None:
                return replay
        started = time.perf_counter()
        with self.tracing.action(run, intent.tool) as span:
            result = self._decide_and_act(run, paused, principal.agent_id, intent)
            if span.is_recording():
                self.tracing.finish_action(
                    span,
                    result,
                    arguments=_safe_redact(intent.arguments) if self.tracing.capture_payloads else None,
                )
        self._count(run, result, time.perf_counter() - started)
        return result

    def _decide_and_act(
        self, run: Run, paused: tuple[str, str] | None, agent_id: str, intent: Intent
    ) -> ActionResult:
        try:
            runtime = self._runtime(run.workflow)
            verdict = self._gate(runtime, run, paused, agent_id, intent)
        except InterlockError as exc:
            verdict = self._error_verdict(intent, exc)
            runtime = None
        except Exception as exc:  # fail closed: never execute after an unexpected error
            log.exception("pipeline error before execution")
            verdict = self._error_verdict(intent, exc)
            runtime = None
        if verdict.decision.decision != "allow" or runtime is None or verdict.tool is None:
            return self._record_without_execution(run, agent_id, intent, verdict, runtime)
        return self._execute(run, agent_id, intent, verdict, runtime)

    def _count(self, run: Run, result: ActionResult, seconds: float) -> None:
        m = self.metrics
        # Unknown tool names would let a caller mint label values without bound.
        tool = result.decision.tool if result.decision.verb is not None else "(unknown)"
        m.actions.labels(run.workflow, tool, result.decision.decision, result.status).inc()
        m.latency.labels(run.workflow, tool).observe(seconds)
        if result.status == "escalated":
            m.escalations.labels(run.workflow, result.decision.reasons[0].code).inc()

    def _error_verdict(self, intent: Intent, exc: BaseException) -> Verdict:
        reason = Reason(
            code="pipeline_error", message=f"denied to fail closed: {type(exc).__name__}: {exc}"[:500]
        )
        return Verdict(Decision(decision="deny", reasons=[reason], tool=intent.tool), "denied", None)

    def _load_run(self, run_id: str) -> tuple[Run, tuple[str, str] | None]:
        """The run and, when its workflow, agent or environment is paused, why (one query)."""
        with reading(self.engine) as conn:
            row = conn.execute(_LOAD_RUN, {"run_id": run_id}).mappings().first()
        if row is None:
            raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
        return self._run_from(row)

    @staticmethod
    def _run_from(row: Any) -> tuple[Run, tuple[str, str] | None]:
        run = run_from_row(row)
        paused = None
        if row["paused"]:
            why = row["paused_reason"] or "no reason given"
            paused = ("workflow_paused", f"workflow {run.workflow} is paused: {why}")
        elif row["agent_paused_by"] is not None:
            why = row["agent_paused_reason"] or "no reason given"
            paused = ("agent_paused", f"agent {run.agent_id} is paused: {why}")
        elif row["env_paused_by"] is not None:
            why = row["env_paused_reason"] or "no reason given"
            paused = ("environment_paused", f"environment {run.environment} is paused: {why}")
        return run, paused

    def _gate(
        self,
        runtime: WorkflowRuntime,
        run: Run,
        paused: tuple[str, str] | None,
        agent_id: str,
        intent: Intent,
    ) -> Verdict:
        verdict = evaluate(
            runtime,
            agent_id=agent_id,
            environment=run.environment,
            intent=intent,
            steps=run.steps,
            tool_calls=run.tool_calls,
        )
        decision = verdict.decision
        if decision.decision == "deny" or verdict.status == "invalid":
            return verdict
        # Run-level brakes apply to everything that would act or ask a person to act.
        stop = self._run_brake(runtime, run, paused)
        if stop is not None:
            reason, status = stop
            return Verdict(
                decision.model_copy(update={"decision": "deny", "reasons": [reason], "policy_ids": []}),
                status,
                verdict.tool,
            )
        return verdict

    def _run_brake(
        self, runtime: WorkflowRuntime, run: Run, paused: tuple[str, str] | None
    ) -> tuple[Reason, ActionStatus] | None:
        if paused is not None:
            return _deny(*paused)
        if run.state != "running":
            return _deny("run_not_active", f"run is {run.state}: {run.state_reason or ''}".strip(": "))
        budget = runtime.manifest.budgets.per_run
        if budget.max_duration_s is not None and time.time() - run.started_at > budget.max_duration_s:
            return _deny(
                "run_duration_exceeded",
                f"run exceeded max_duration_s={budget.max_duration_s:g}",
                status="limited",
            )
        return None

    # ---- approved actions ---------------------------------------------------------------------

    def execute_approved(self, approval_id: str) -> ActionResult | None:
        """Run an approved action once, with exactly the approved arguments.

        Claims the execution atomically (two replicas or two approvers racing run it once), then
        goes through the pipeline again: a paused workflow, agent or environment holds it (None
        is returned and it stays approved, to run on resume); a policy that now forbids it refuses
        it; budgets, caps and locks apply as for any action. The outcome is stored on the approval
        and under the agent's idempotency key, so polling and retrying both see it.
        """
        with transaction(self.engine) as conn:
            claimed = conn.execute(_CLAIM_APPROVAL, {"a_id": approval_id}).first()
        if claimed is None:
            return None
        row = claimed._mapping
        run, paused = self._load_run(row["run_id"])
        arguments = row["payload"]
        intent = Intent(
            tool=row["tool"],
            arguments=arguments,
            idempotency_key=row["idempotency_key"],
            reasoning=f"approved: {approval_id}",
        )
        execution = "done"
        try:
            agent = self.agents.lookup(row["agent_id"])
            if agent is None or not agent.record.active:
                # Revoking an agent withdraws what it asked for, approved or not.
                runtime = self._runtime(run.workflow)
                gone = Reason(code="agent_revoked", message=f"agent {row['agent_id']} was revoked")
                denied = Verdict(
                    Decision(
                        decision="deny",
                        reasons=[gone],
                        tool=row["tool"],
                        verb=row["verb"],
                        args_hash=row["args_hash"],
                    ),
                    "denied",
                    None,
                )
                result = self._record_without_execution(run, row["agent_id"], intent, denied, runtime)
                result = result.model_copy(update={"approval_id": approval_id})
                self._set_execution(approval_id, "refused", result)
                return result
            if paused is not None:
                self._set_execution(approval_id, "held", None)
                return None
            if hash_value(arguments) != row["args_hash"]:
                raise ConflictError("approved arguments do not match their hash", code="approval_mismatch")
            runtime = self._runtime(run.workflow)
            verdict = evaluate(
                runtime,
                agent_id=row["agent_id"],
                environment=run.environment,
                intent=intent,
                steps=run.steps,
                tool_calls=run.tool_calls,
            )
            approved = Reason(
                code="approved", message=f"approved ({approval_id})", policy_id=f"approval:{approval_id}"
            )
            if verdict.decision.decision in ("allow", "require_approval") and verdict.tool is not None:
                decision = verdict.decision.model_copy(
                    update={"decision": "allow", "reasons": [approved, *verdict.decision.reasons]}
                )
                if run.state != "running":
                    reason = Reason(code="run_not_active", message=f"run is {run.state}")
                    result = self._record_without_execution(
                        run,
                        row["agent_id"],
                        intent,
                        self._refusal(Verdict(decision, "denied", verdict.tool), reason, "denied"),
                        runtime,
                    )
                    execution = "refused"
                else:
                    # The approval claim already makes this run once; the agent's idempotency key
                    # is answered with the outcome afterwards (see _set_execution).
                    once = Intent(tool=intent.tool, arguments=arguments, reasoning=intent.reasoning)
                    result = self._execute(
                        run, row["agent_id"], once, Verdict(decision, "executed", verdict.tool), runtime
                    )
                    execution = "done" if result.status in ("executed", "failed") else "refused"
            else:
                # Policy changed since the request: what is forbidden now is not run.
                result = self._record_without_execution(run, row["agent_id"], intent, verdict, runtime)
                execution = "refused"
        except Exception:
            self._set_execution(approval_id, None, None)
            raise
        result = result.model_copy(update={"approval_id": approval_id})
        self._set_execution(approval_id, execution, result)
        return result

    def _set_execution(self, approval_id: str, execution: str | None, result: ActionResult | None) -> None:
        values: dict[str, Any] = {"execution": execution}
        if result is not None:
            values["outcome"] = result.model_dump(mode="json")
            values["payload"] = None  # the exact arguments are no longer needed once acted upon
        with transaction(self.engine) as conn:
            conn.execute(update(t.approvals).where(t.approvals.c.id == approval_id).values(**values))
            if result is not None and result.status == "executed":
                row = conn.execute(
                    select(t.approvals.c.agent_id, t.approvals.c.idempotency_key).where(
                        t.approvals.c.id == approval_id
                    )
                ).first()
                if row is not None and row[1] is not None:
                    conn.execute(
                        _DONE_IDEMPOTENCY,
                        {
                            "k_agent": row[0],
                            "k_key": row[1],
                            "k_step": result.step_id,
                            "k_outcome": values["outcome"],
                        },
                    )

    # ---- model usage --------------------------------------------------------------------------

    def record_model_call(self, token: str, run_id: str, call: ModelCall) -> ModelCallResult:
        """Record a model call the agent made and charge it to every budget.

        The spend already happened, so it is always recorded; when it passes a budget the run
        stops and the agent's next action is denied.
        """
        principal = authenticate_agent(token, tokens=self.tokens, store=self.agents)
        run, _paused = self._load_run(run_id)
        if run.agent_id != principal.agent_id:
            raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
        runtime = self._runtime(run.workflow)
        cost_usd = call.cost_usd
        notes: list[Reason] = []
        if cost_usd is None:
            price = runtime.manifest.budgets.model_prices.get(call.model)
            table = price.model_dump() if price is not None else self.model_prices.get(call.model)
            if table is None:
                # Usage is self-reported, so refusing it would protect nothing and lose the token
                # count; it is recorded unpriced and says so.
                notes.append(
                    Reason(
                        code="unpriced_model",
                        message=f"no price for model {call.model!r}: tokens counted, cost 0; "
                        "report cost_usd or add it to the price table",
                    )
                )
                cost_usd = 0.0
            else:
                cost_usd = (
                    call.input_tokens * table["input"] + call.output_tokens * table["output"]
                ) / 1_000_000
        cost = usd_to_micros(cost_usd)
        tokens = call.input_tokens + call.output_tokens
        step_id = new_id("stp")
        now = time.time()
        scopes = scopes_for(runtime.manifest, run_id=run.id, agent_id=run.agent_id, now=now)
        with transaction(self.engine) as conn:
            seq = self._bump_steps(conn, run.id)
            conn.execute(_ADD_USAGE, {"run_id": run.id, "c_cost": cost, "c_tokens": tokens})
            usage = {
                "model": call.model,
                "input_tokens": call.input_tokens,
                "output_tokens": call.output_tokens,
            }
            conn.execute(
                _INSERT_STEP,
                {
                    "id": step_id,
                    "run_id": run.id,
                    "seq": seq,
                    "kind": "model",
                    "tool": None,
                    "verb": None,
                    "status": "recorded",
                    "decision_id": None,
                    "args_hash": None,
                    "arguments": usage,
                    "result": None,
                    "error": None,
                    "reasoning": None,
                    "confidence": None,
                    "evidence": None,
                    "duration_ms": call.duration_ms,
                    "cost_micros": cost,
                    "created_at": now,
                },
            )
            over = charge(conn, scopes, cost_micros=cost, tokens=tokens)
            append_event(
                conn,
                kind="model.call",
                actor=f"agent:{run.agent_id}",
                workflow=run.workflow,
                run_id=run.id,
                data={**usage, "step": step_id, "seq": seq, "cost_micros": cost},
            )
            state = run.state
            if over is not None and run.state == "running":
                set_state(
                    conn,
                    run.id,
                    "stopped",
                    reason=over.message,
                    actor="interlock",
                    workflow=run.workflow,
                    data={"code": over.code, "step": step_id},
                )
                state = "stopped"
        self.metrics.spend.labels(run.workflow, "model").inc(cost / 1_000_000)
        self.metrics.tokens.labels(run.workflow, call.model).inc(tokens)
        self.tracing.model_call(
            run,
            model=call.model,
            input_tokens=call.input_tokens,
            output_tokens=call.output_tokens,
            cost_usd=cost / 1_000_000,
        )
        return ModelCallResult(
            run_id=run.id,
            step_id=step_id,
            seq=seq,
            cost_usd=cost / 1_000_000,
            tokens=tokens,
            run_state=state,
            reasons=([over] if over is not None else []) + notes,
        )

    # ---- idempotency ------------------------------------------------------------------------

    def _replay(self, agent_id: str, intent: Intent) -> ActionResult | None:
        with reading(self.engine) as conn:
            row = (
                conn.execute(_FIND_IDEMPOTENCY, {"k_agent": agent_id, "k_key": intent.idempotency_key})
                .mappings()
                .first()
            )
        if row is None:
            return None
        try:
            args_hash = hash_value(intent.arguments)
        except (TypeError, ValueError):
            args_hash = ""
        if row["args_hash"] != args_hash:
            raise ConflictError(
                f"idempotency key {intent.idempotency_key!r} was used with different arguments",
                code="idempotency_key_reused",
            )
        if row["state"] == "in_flight" or row["outcome"] is None:
            raise ConflictError(
                f"an action with idempotency key {intent.idempotency_key!r} is still executing; "
                "retry shortly",
                code="idempotency_in_flight",
            )
        result = ActionResult.model_validate(row["outcome"])
        return result.model_copy(update={"replayed": True})

    # ---- recording --------------------------------------------------------------------------

    def _bump_steps(self, conn: Connection, run_id: str) -> int:
        return int(conn.execute(_BUMP_STEPS, {"run_id": run_id}).scalar_one())

    def _record_without_execution(
        self,
        run: Run,
        agent_id: str,
        intent: Intent,
        verdict: Verdict,
        runtime: WorkflowRuntime | None,
    ) -> ActionResult:
        decision = verdict.decision
        step_id = new_id("stp")
        approval_id: str | None = None
        stored_args = _safe_redact(intent.arguments)
        now = time.time()
        with transaction(self.engine) as conn:
            seq = self._bump_steps(conn, run.id)
            if decision.decision == "require_approval" and runtime is not None and verdict.tool is not None:
                approval_id = self._create_approval(
                    conn, run, agent_id, intent, decision, verdict.tool, runtime, step_id, stored_args, now
                )
            self._write_step(
                conn, run, agent_id, intent, decision, verdict.status, step_id, seq, stored_args, now
            )
            if verdict.status == "escalated":
                open_handoff(
                    conn,
                    run_id=run.id,
                    workflow=run.workflow,
                    step_id=step_id,
                    tool=decision.tool,
                    arguments=stored_args,
                    reason=decision.reasons[0],
                    actor="interlock",
                )
            elif verdict.stop_run:
                set_state(
                    conn,
                    run.id,
                    "stopped",
                    reason=decision.reasons[0].message,
                    actor="interlock",
                    workflow=run.workflow,
                    data={"code": decision.reasons[0].code, "step": step_id},
                )
            result = ActionResult(
                status=verdict.status,
                decision=decision,
                run_id=run.id,
                step_id=step_id,
                seq=seq,
                approval_id=approval_id,
                retry_after=verdict.retry_after,
            )
            if approval_id is not None and intent.idempotency_key is not None:
                self._store_outcome(
                    conn, agent_id, intent, run.id, step_id, decision.args_hash or "", result, now
                )
        return result

    def _create_approval(
        self,
        conn: Connection,
        run: Run,
        agent_id: str,
        intent: Intent,
        decision: Decision,
        tool: ToolRuntime,
        runtime: WorkflowRuntime,
        step_id: str,
        stored_args: Any,
        now: float,
    ) -> str:
        manifest = runtime.manifest
        rules = _rules_by_policy_id(manifest.rules.require_approval, "review")
        matched = [rules[p] for p in decision.policy_ids if p in rules]
        expires = min(
            [r.expires_after_s for r in matched if r.expires_after_s] or [manifest.approvals.expires_after_s]
        )
        quorum = max([r.quorum for r in matched if r.quorum] or [manifest.approvals.quorum])
        approval_id = new_id("apr")
        spec = tool.spec
        package = {
            "action": f"{spec.verb} via {spec.name}",
            "tool": spec.name,
            "verb": spec.verb,
            "description": spec.description,
            "arguments": stored_args,
            "reasoning": _safe_redact(intent.reasoning),
            "confidence": intent.confidence,
            "evidence": _safe_redact(list(intent.evidence or [])),
            "risk": decision.risk,
            "impact_if_accepted": spec.impact_if_accepted,
            "impact_if_rejected": spec.impact_if_rejected,
            "policy_reasons": [r.model_dump(exclude_none=True) for r in decision.reasons],
            "rules": [r.description for r in matched if r.description],
        }
        conn.execute(
            t.approvals.insert().values(
                id=approval_id,
                run_id=run.id,
                step_id=step_id,
                decision_id=step_id,
                workflow=run.workflow,
                agent_id=agent_id,
                tool=spec.name,
                verb=spec.verb,
                args_hash=decision.args_hash,
                arguments=stored_args,
                payload=intent.arguments,
                idempotency_key=intent.idempotency_key,
                state="pending",
                reasons=[r.model_dump() for r in decision.reasons],
                package=package,
                quorum=quorum,
                expires_at=now + expires,
                created_at=now,
            )
        )
        append_event(
            conn,
            kind="approval.requested",
            actor=f"agent:{agent_id}",
            workflow=run.workflow,
            run_id=run.id,
            data={
                "approval": approval_id,
                "step": step_id,
                "tool": spec.name,
                "verb": spec.verb,
                "args_hash": decision.args_hash,
                "quorum": quorum,
                "expires_at": now + expires,
            },
        )
        return approval_id

    def _write_step(
        self,
        conn: Connection,
        run: Run,
        agent_id: str,
        intent: Intent,
        decision: Decision,
        status: str,
        step_id: str,
        seq: int,
        stored_args: Any,
        now: float,
        *,
        result: Any = None,
        error: str | None = None,
        duration_ms: float | None = None,
        cost_micros: int = 0,
    ) -> None:
        reasons = [r.model_dump() for r in decision.reasons]
        conn.execute(
            _INSERT_DECISION,
            {
                "id": step_id,
                "run_id": run.id,
                "step_id": step_id,
                "agent_id": agent_id,
                "workflow": run.workflow,
                "environment": run.environment,
                "tool": decision.tool,
                "verb": decision.verb,
                "decision": decision.decision,
                "reasons": reasons,
                "policy_ids": decision.policy_ids,
                "risk": decision.risk,
                "args_hash": decision.args_hash,
                "arguments": stored_args,
                "manifest_version": decision.manifest_version,
                "policy_version": decision.policy_version,
                "confidence": intent.confidence,
                "created_at": now,
            },
        )
        conn.execute(
            _INSERT_STEP,
            {
                "id": step_id,
                "run_id": run.id,
                "seq": seq,
                "kind": "tool",
                "tool": decision.tool,
                "verb": decision.verb,
                "status": status,
                "decision_id": step_id,
                "args_hash": decision.args_hash,
                "arguments": stored_args,
                "result": result,
                "error": error,
                "reasoning": _safe_redact(intent.reasoning),
                "confidence": intent.confidence,
                "evidence": list(intent.evidence) if intent.evidence else None,
                "duration_ms": duration_ms,
                "cost_micros": cost_micros,
                "created_at": now,
            },
        )
        append_event(
            conn,
            kind="action." + status,
            actor=f"agent:{agent_id}",
            workflow=run.workflow,
            run_id=run.id,
            data={
                "step": step_id,
                "seq": seq,
                "tool": decision.tool,
                "verb": decision.verb,
                "args_hash": decision.args_hash,
                "decision": decision.decision,
                "reasons": [r.code for r in decision.reasons],
                "policy_ids": decision.policy_ids,
                "risk": decision.risk,
                "manifest_version": decision.manifest_version,
                "policy_version": decision.policy_version,
                "result_hash": None if result is None else hash_value(result),
                "error": error,
            },
        )

    def _store_outcome(
        self,
        conn: Connection,
        agent_id: str,
        intent: Intent,
        run_id: str,
        step_id: str,
        args_hash: str,
        result: ActionResult,
        now: float,
    ) -> None:
        outcome = result.model_dump(mode="json")
        updated = conn.execute(
            _DONE_IDEMPOTENCY,
            {"k_agent": agent_id, "k_key": intent.idempotency_key, "k_step": step_id, "k_outcome": outcome},
        ).rowcount
        if not updated:
            conn.execute(
                _INSERT_IDEMPOTENCY,
                {
                    "agent_id": agent_id,
                    "key": intent.idempotency_key,
                    "run_id": run_id,
                    "args_hash": args_hash,
                    "state": "done",
                    "step_id": step_id,
                    "outcome": outcome,
                    "created_at": now,
                },
            )

    # ---- execution --------------------------------------------------------------------------

    def _reserve(
        self, run: Run, agent_id: str, intent: Intent, verdict: Verdict, runtime: WorkflowRuntime
    ) -> tuple[int, list[Scope], int] | Verdict:
        """Take what the action needs before it runs, all or nothing.

        In order: the record's lock (may wait), then in one transaction loop detection and the
        stop rules that read the run's history, the run's step and tool-call caps, every budget
        scope, and the idempotency key. Returns (seq, budget scopes, reserved micros), or the
        verdict that refused it.
        """
        tool = verdict.tool
        assert tool is not None
        spec = tool.spec
        manifest = runtime.manifest
        args_hash = verdict.decision.args_hash or ""
        if self.rate_limiter is not None and spec.rate_limit is not None:
            limited = self.rate_limiter.check_tool(agent_id, spec, workflow=run.workflow)
            if limited is not None:
                return self._refusal(
                    verdict, _rate_reason(limited), "limited", retry_after=limited.retry_after
                )
        key = lock_key(run.workflow, spec, intent.arguments)
        if (
            key is not None
            and spec.lock is not None
            and not lock_acquire(
                self.engine, key, run_id=run.id, hold_s=spec.lock.hold_s, wait_s=spec.lock.wait_s
            )
        ):
            reason = Reason(
                code="conflict",
                message=f"another run is changing {key.split(':', 1)[1]}; waited {spec.lock.wait_s:g}s",
            )
            return self._refusal(verdict, reason, "denied")
        budget = manifest.budgets.per_run
        cost = usd_to_micros(spec.cost_usd)
        now = time.time()
        scopes = scopes_for(manifest, run_id=run.id, agent_id=agent_id, now=now)
        params = {
            "run_id": run.id,
            "max_steps": budget.max_steps if budget.max_steps is not None else _INT_MAX,
            "max_tool_calls": budget.max_tool_calls if budget.max_tool_calls is not None else _INT_MAX,
        }
        try:
            with transaction(self.engine) as conn:
                if budget.max_repeats is not None:
                    repeats = conn.execute(
                        _COUNT_REPEATS, {"r_run": run.id, "r_tool": spec.name, "r_hash": args_hash}
                    ).scalar_one()
                    if repeats >= budget.max_repeats:
                        reason = Reason(
                            code="loop_detected",
                            message=f"{spec.name} with these arguments already ran {repeats} times "
                            f"in this run (max_repeats={budget.max_repeats})",
                        )
                        raise _Refused(self._refusal(verdict, reason, "escalated"))
                history = check_history(conn, manifest, run_id=run.id, tool=spec.name)
                if history is not None:
                    raise _Refused(self._refusal(verdict, history, "escalated"))
                got = conn.execute(_RESERVE, params).first()
                if got is None:
                    raise _Refused(self._refuse_caps(conn, run, runtime, verdict))
                try:
                    reserve(conn, scopes, cost_micros=cost)
                except BudgetRefused as exc:
                    raise _Refused(self._refusal(verdict, exc.reason, "limited", stop_run=True)) from None
                if intent.idempotency_key is not None:
                    conn.execute(
                        _INSERT_IDEMPOTENCY,
                        {
                            "agent_id": agent_id,
                            "key": intent.idempotency_key,
                            "run_id": run.id,
                            "args_hash": args_hash,
                            "state": "in_flight",
                            "created_at": now,
                        },
                    )
                return int(got[0]), scopes, cost
        except _Refused as refused:
            return refused.verdict
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise ConflictError(
                    f"an action with idempotency key {intent.idempotency_key!r} is already in progress",
                    code="idempotency_in_flight",
                ) from exc
            raise

    @staticmethod
    def _refusal(
        verdict: Verdict,
        reason: Reason,
        status: ActionStatus,
        *,
        stop_run: bool = False,
        retry_after: float | None = None,
    ) -> Verdict:
        kind = "escalate" if status == "escalated" else "deny"
        decision = verdict.decision.model_copy(
            update={"decision": kind, "reasons": [reason], "policy_ids": []}
        )
        return Verdict(decision, status, verdict.tool, stop_run=stop_run, retry_after=retry_after)

    def _refuse_caps(self, conn: Connection, run: Run, runtime: WorkflowRuntime, verdict: Verdict) -> Verdict:
        budget = runtime.manifest.budgets.per_run
        row = conn.execute(select(t.runs.c.state, t.runs.c.steps).where(t.runs.c.id == run.id)).one()
        if row[0] != "running":
            return self._refusal(verdict, Reason(code="run_not_active", message=f"run is {row[0]}"), "denied")
        if budget.max_steps is not None and row[1] >= budget.max_steps:
            code, limit = "step_cap_reached", f"max_steps={budget.max_steps}"
        else:
            code, limit = "tool_call_cap_reached", f"max_tool_calls={budget.max_tool_calls}"
        reason = Reason(code=code, message=f"run reached {limit}; the run is stopped")
        return self._refusal(verdict, reason, "limited", stop_run=True)

    def _execute(
        self, run: Run, agent_id: str, intent: Intent, verdict: Verdict, runtime: WorkflowRuntime
    ) -> ActionResult:
        decision = verdict.decision
        tool = verdict.tool
        assert tool is not None
        args_hash = decision.args_hash or ""
        reserved = self._reserve(run, agent_id, intent, verdict, runtime)
        if isinstance(reserved, Verdict):
            return self._record_without_execution(run, agent_id, intent, reserved, runtime)
        seq, scopes, cost = reserved
        step_id = new_id("stp")
        credential: str | None = None
        started = time.perf_counter()
        result: Any = None
        error: str | None = None
        try:
            credential = resolve_credential(tool.spec.credential, base_dir=runtime.loaded.base_dir)
            ctx = CallContext(
                run_id=run.id,
                step_id=step_id,
                agent_id=agent_id,
                workflow=run.workflow,
                idempotency_key=intent.idempotency_key or step_id,
                credential=credential,
                timeout_s=tool.spec.timeout_s,
            )
            result = runtime.transport_for(tool.spec).call(tool.spec, intent.arguments, ctx)
            problem = tool.output_errors(result)
            if problem is not None:
                error = f"output failed the tool's output_schema: {problem}"
                result = None
        except (UpstreamError, ConfigError, NotFound) as exc:
            error = exc.message
        except Exception as exc:  # a transport bug must not take the record with it
            log.exception("transport error")
            error = f"{type(exc).__name__}: {exc}"
        duration_ms = (time.perf_counter() - started) * 1000
        secrets = (credential,) if credential else ()
        stored_result = _safe_redact(result, secrets)
        if error is not None:
            error = str(_safe_redact(error, secrets))
        status: ActionStatus = "failed" if error else "executed"
        stored_args = _safe_redact(intent.arguments, secrets)
        now = time.time()
        outcome = ActionResult(
            status=status,
            decision=decision,
            run_id=run.id,
            step_id=step_id,
            result=stored_result,
            error=error,
            seq=seq,
        )
        # The agent gets the tool's answer as the tool gave it, less the injected credential; the
        # database (and an idempotent replay) keeps the redacted form.
        returned = outcome.model_copy(update={"result": _mask_only(result, secrets)})
        spent = cost if error is None else 0  # a failed call releases its reservation
        if spent:
            self.metrics.spend.labels(run.workflow, "tool").inc(spent / 1_000_000)
        # Lock order in every transaction: the run row, then budget rows, then the audit tip
        # (appended last). Reservations take the same order, so concurrent actions never deadlock.
        with transaction(self.engine) as conn:
            conn.execute(_ADD_COST, {"run_id": run.id, "c_cost": spent})
            if scopes:
                settle(conn, scopes, reserved_micros=cost, actual_micros=spent)
            if intent.idempotency_key is not None:
                if error is None:
                    self._store_outcome(conn, agent_id, intent, run.id, step_id, args_hash, outcome, now)
                else:
                    # A failed call releases its key so a retry can run again; the upstream saw
                    # the same idempotency key and can deduplicate on its side.
                    conn.execute(_RELEASE_IDEMPOTENCY, {"k_agent": agent_id, "k_key": intent.idempotency_key})
            self._write_step(
                conn,
                run,
                agent_id,
                intent,
                decision,
                status,
                step_id,
                seq,
                stored_args,
                now,
                result=stored_result,
                error=error,
                duration_ms=duration_ms,
                cost_micros=spent,
            )
            if error is not None:
                broken = sequence_broken(conn, runtime.manifest, run_id=run.id, tool=tool.spec.name)
                if broken is not None:
                    open_handoff(
                        conn,
                        run_id=run.id,
                        workflow=run.workflow,
                        step_id=step_id,
                        tool=tool.spec.name,
                        arguments=stored_args,
                        reason=broken,
                        actor="interlock",
                    )
        return returned


def _clean(run_id: str, intent: Intent) -> Intent:
    """Refuse NUL characters in names (PostgreSQL text cannot hold them, and no real name has
    one); in free text they become U+FFFD so the agent's words are still recorded."""
    if "\x00" in run_id:
        raise NotFound("unknown run", code="unknown_run")
    for name, value in (("tool", intent.tool), ("idempotency_key", intent.idempotency_key)):
        if value is not None and "\x00" in value:
            raise ArgumentsInvalid(f"{name} contains a NUL character", field=name)
    if intent.reasoning is not None and "\x00" in intent.reasoning:
        return replace(intent, reasoning=intent.reasoning.replace("\x00", "\ufffd"))
    return intent


def _rate_reason(limited: RateLimited) -> Reason:
    return Reason(code="rate_limited", message=limited.error().message, policy_id=f"rate:{limited.scope}")


def _rules_by_policy_id(rules: list[RuleSpec], prefix: str) -> dict[str, RuleSpec]:
    kind = "require_approval" if prefix == "review" else prefix
    return {f"{prefix}:{r.id or f'{kind}[{i}]'}": r for i, r in enumerate(rules)}


def _mask_only(value: Any, secrets: tuple[str, ...]) -> Any:
    """The value with only the given secrets masked (what the agent may see of a result)."""
    try:
        canonical_json(value)
    except (TypeError, ValueError):
        return {"unserialisable": type(value).__name__}
    if not secrets:
        return value
    return mask_secrets(value, secrets)


def _safe_redact(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    try:
        canonical_json(value)
    except (TypeError, ValueError):
        return {"unserialisable": type(value).__name__}
    return redact(value, extra_secrets=secrets)
