"""The one chokepoint. Every action from every interface goes through :meth:`Pipeline.submit`.

    authenticate → load run → validate intent (schema) → classify risk → policy (Cedar) → stop rules
    → limits (step and tool-call caps; atomic reservation) → approval gate
    → execute (injected credentials, idempotency key, timeout) → validate output → redact
    → record step + decision + audit event

Fail closed: an unexpected error anywhere before execution denies the action with reason
``pipeline_error``; nothing executes on error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from interlock._internal.audit.canonical import hash_value
from interlock._internal.gateway import approved, usage
from interlock._internal.gateway.dataflow import carried_for, classes_of
from interlock._internal.gateway.decide import Intent, Verdict, _deny, _Refused, evaluate, resolve_credential
from interlock._internal.gateway.models import (
    ActionResult,
    ActionStatus,
    Decision,
    ModelCall,
    ModelCallResult,
    Reason,
    Run,
)
from interlock._internal.gateway.records import (
    create_approval,
    mask_only,
    safe_redact,
    store_outcome,
    write_step,
)
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.gateway.statements import (
    ADD_COST,
    BUMP_STEPS,
    COUNT_REPEATS,
    FIND_IDEMPOTENCY,
    INSERT_IDEMPOTENCY,
    INT_MAX,
    LOAD_RUN,
    LOAD_RUN_AND_AGENT,
    RELEASE_IDEMPOTENCY,
    RESERVE,
    AgentColumns,
)
from interlock._internal.gateway.transports.base import CallContext
from interlock._internal.identity.agents import AgentStore, auth_row
from interlock._internal.identity.tokens import AgentPrincipal, TokenService, admit_agent, authenticate_agent
from interlock._internal.ids import new_id
from interlock._internal.limits.budgets import (
    DEFAULT_WARN_RATIO,
    BudgetRefused,
    Scope,
    reserve,
    scopes_for,
    settle,
    usd_to_micros,
    warn_nearly_spent,
)
from interlock._internal.limits.locks import acquire as lock_acquire
from interlock._internal.limits.locks import lock_key
from interlock._internal.limits.ratelimit import RateLimited, RateLimiter
from interlock._internal.limits.stop_rules import check_history, sequence_broken
from interlock._internal.packages import stage as package_stage
from interlock._internal.runs.state import open_handoff, set_state
from interlock._internal.runs.store import RunStore, run_from_row
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading, transaction
from interlock._internal.telemetry.metrics import Metrics
from interlock._internal.telemetry.redaction import redact
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
        budget_warn_ratio: float = DEFAULT_WARN_RATIO,
    ) -> None:
        self.budget_warn_ratio = budget_warn_ratio
        self.model_prices = model_prices or {}
        self._sqlite = engine.dialect.name == "sqlite"
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
            row = conn.execute(LOAD_RUN_AND_AGENT, {"run_id": run_id, "agent_id": claims.agent_id}).first()
        if row is None:
            authenticate_agent(token, tokens=self.tokens, store=self.agents)
            raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
        m = row._mapping
        agent_row = auth_row(AgentColumns(m)) if m["a_id"] is not None else None
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
                    arguments=safe_redact(intent.arguments) if self.tracing.capture_payloads else None,
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
            row = conn.execute(LOAD_RUN, {"run_id": run_id}).mappings().first()
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
            carried=carried_for(self.engine, runtime.flow_tools, run.id, intent.tool),
        )
        if run.package_id is not None:  # the work package and live policy: the stricter wins
            verdict = package_stage.gate(self.engine, run.package_id, intent, verdict, now=time.time())
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

    # ---- approved actions and model usage (bodies in approved.py and usage.py) -----------------

    def execute_approved(self, approval_id: str) -> ActionResult | None:
        """Run an approved action once, with exactly the approved arguments (see approved.py)."""
        return approved.execute_approved(self, approval_id)

    def record_model_call(self, token: str, run_id: str, call: ModelCall) -> ModelCallResult:
        """Record a model call the agent made and charge it to every budget (see usage.py)."""
        return usage.record_model_call(self, token, run_id, call)

    # ---- idempotency ------------------------------------------------------------------------

    def _replay(self, agent_id: str, intent: Intent) -> ActionResult | None:
        with reading(self.engine) as conn:
            row = (
                conn.execute(FIND_IDEMPOTENCY, {"k_agent": agent_id, "k_key": intent.idempotency_key})
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
        return int(conn.execute(BUMP_STEPS, {"run_id": run_id}).scalar_one())

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
        stored_args = safe_redact(intent.arguments)
        now = time.time()
        with transaction(self.engine) as conn:
            seq = self._bump_steps(conn, run.id)
            if decision.decision == "require_approval" and runtime is not None and verdict.tool is not None:
                approval_id = create_approval(
                    conn, run, agent_id, intent, decision, verdict.tool, runtime, step_id, stored_args, now
                )
            write_step(conn, run, agent_id, intent, decision, verdict.status, step_id, seq, stored_args, now)
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
                store_outcome(conn, agent_id, intent, run.id, step_id, decision.args_hash or "", result, now)
        return result

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
            "max_steps": budget.max_steps if budget.max_steps is not None else INT_MAX,
            "max_tool_calls": budget.max_tool_calls if budget.max_tool_calls is not None else INT_MAX,
        }
        try:
            with transaction(self.engine) as conn:
                if budget.max_repeats is not None:
                    repeats = conn.execute(
                        COUNT_REPEATS, {"r_run": run.id, "r_tool": spec.name, "r_hash": args_hash}
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
                got = conn.execute(RESERVE, params).first()
                if got is None:
                    raise _Refused(self._refuse_caps(conn, run, runtime, verdict))
                try:
                    reserve(conn, scopes, cost_micros=cost)
                except BudgetRefused as exc:
                    raise _Refused(self._refusal(verdict, exc.reason, "limited", stop_run=True)) from None
                if run.package_id is not None:
                    over = package_stage.reserve(
                        conn, run.package_id, spec.name, intent.arguments, cost_micros=cost, now=now
                    )
                    if over is not None:
                        raise _Refused(self._refusal(verdict, over, "denied"))
                if intent.idempotency_key is not None:
                    conn.execute(
                        INSERT_IDEMPOTENCY,
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
        stored_result = safe_redact(result, secrets)
        if error is not None:
            error = str(safe_redact(error, secrets))
        status: ActionStatus = "failed" if error else "executed"
        # The arguments passed the schema, so they are JSON: redact without re-checking that.
        stored_args = redact(intent.arguments, extra_secrets=secrets)
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
        returned = (
            outcome  # the tool's `redact_results: true`: the agent sees only the redacted form
            if tool.spec.redact_results
            else outcome.model_copy(update={"result": mask_only(result, secrets)})
        )
        spent = cost if error is None else 0  # a failed call releases its reservation
        if spent:
            self.metrics.spend.labels(run.workflow, "tool").inc(spent / 1_000_000)
        # Lock order in every transaction: the run row, then budget rows, then the audit tip
        # (appended last). Reservations take the same order, so concurrent actions never deadlock.
        # (SQLite locks the whole file per transaction, so there a zero-cost update is skipped.)
        with transaction(self.engine) as conn:
            if spent or not self._sqlite:
                conn.execute(ADD_COST, {"run_id": run.id, "c_cost": spent})
            if scopes:
                settle(conn, scopes, reserved_micros=cost, actual_micros=spent)
                warn_nearly_spent(
                    conn, scopes, workflow=run.workflow, run_id=run.id, ratio=self.budget_warn_ratio
                )
            if intent.idempotency_key is not None:
                if error is None:
                    store_outcome(conn, agent_id, intent, run.id, step_id, args_hash, outcome, now)
                else:
                    # A failed call releases its key so a retry can run again; the upstream saw
                    # the same idempotency key and can deduplicate on its side.
                    conn.execute(RELEASE_IDEMPOTENCY, {"k_agent": agent_id, "k_key": intent.idempotency_key})
            write_step(
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
                data_classes=classes_of(tool.spec, result) if error is None else None,
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
