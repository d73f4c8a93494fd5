"""The one chokepoint. Every action from every interface goes through :meth:`Pipeline.submit`,
which reads as its stages, in this order:

    authenticate → load run → schema → risk → policy (system binding, Cedar, data flow)
    → run brakes (pauses, run state) → stop rules (and confidence routing) → work package
    → approval gate
    → limits and reservation (rate, lock, loop, caps, budgets, idempotency key) + journal "executing"
    → execute (circuit breaker, injected credentials, upstream idempotency key, timeout)
    → output check → redact → record (outcome, journal closed, step, decision, audit event)

Policy runs before the brakes and stop rules so that what is forbidden is denied, not escalated.
A caller on an event loop (the MCP gateway) enters through :meth:`Pipeline.submit_async`, the same
stage functions in the same order, with the upstream call awaited (an MCP session on that very
loop) instead of blocking a thread. Approved actions (:mod:`.approved`) and a person's
"retry now" (:mod:`.recovery`) go through the same stage functions from the policy stage on;
model calls (:mod:`.usage`) through authenticate, load run and record.

Fail closed: an unexpected error in any stage before execution denies the action with reason
``pipeline_error``; nothing executes on error. Once the journal says ``executing``, the call is
never started again by any path: if the process dies, housekeeping turns its expired lease into
"outcome unknown" for a person (:mod:`.recovery`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from sqlalchemy.engine import Engine

from interlock._internal.audit.canonical import hash_value
from interlock._internal.gateway import approved, cache, usage
from interlock._internal.gateway.dataflow import carried_for
from interlock._internal.gateway.decide import (
    Checking,
    Intent,
    Paused,
    Verdict,
    check_policy,
    check_schema,
    check_stop_rules,
    classify_risk,
    run_brakes,
)
from interlock._internal.gateway.execute import (
    Call,
    Outcome,
    cached_outcome,
    check_output,
    execute,
    execute_async,
    redact_outcome,
)
from interlock._internal.gateway.models import (
    ActionResult,
    Decision,
    ModelCall,
    ModelCallResult,
    Reason,
    Run,
)
from interlock._internal.gateway.records import record_decision, record_outcome, safe_redact
from interlock._internal.gateway.reservation import reserve_and_journal
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.gateway.statements import (
    FIND_IDEMPOTENCY,
    LOAD_RUN,
    LOAD_RUN_AND_AGENT,
    AgentColumns,
)
from interlock._internal.identity.agents import AgentStore, auth_row
from interlock._internal.identity.tokens import AgentPrincipal, TokenService, admit_agent, authenticate_agent
from interlock._internal.limits.budgets import DEFAULT_WARN_RATIO
from interlock._internal.limits.ratelimit import RateLimiter
from interlock._internal.packages.stage import gate as work_package
from interlock._internal.runs.store import RunStore, run_from_row
from interlock._internal.store.hot import hot_read
from interlock._internal.telemetry.metrics import Metrics
from interlock._internal.telemetry.tracing import Tracing
from interlock.exceptions import (
    ArgumentsInvalid,
    ConflictError,
    InterlockError,
    NotFound,
    TokenScopeError,
)

if TYPE_CHECKING:
    from interlock._internal.rollouts.model import Lane
    from interlock._internal.rollouts.service import RolloutService

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
        lease_margin_s: float = 30.0,
        budget_warn_ratio: float = DEFAULT_WARN_RATIO,
        rollouts: RolloutService | None = None,
    ) -> None:
        self.rollouts = rollouts
        self.budget_warn_ratio = budget_warn_ratio
        self.model_prices = model_prices or {}
        self.sqlite = engine.dialect.name == "sqlite"
        self.rate_limiter = rate_limiter
        self.tracing = tracing or Tracing()
        self.metrics = metrics or Metrics()
        self.engine = engine
        self.runtime = runtimes
        self.tokens = tokens
        self.agents = agents
        self.runs = runs
        self.lease_margin_s = lease_margin_s

    # ---- the whole pipeline -------------------------------------------------------------------

    def submit(self, token: str, run_id: str, intent: Intent) -> ActionResult:
        principal, run, paused = self.authenticate(token, run_id)  # authenticate + load run
        return self.govern(principal, run, paused, intent)

    async def submit_async(
        self, token: str, run_id: str, intent: Intent, *, principal: AgentPrincipal | None = None
    ) -> ActionResult:
        """:meth:`submit` for a caller on an event loop (the MCP gateway): the same stages, in
        the same order, on the caller's loop. The database stages are short and run in place;
        the upstream call is awaited, on the running loop when its transport is asynchronous
        (an MCP session), in a worker thread otherwise. ``principal`` is the agent the caller
        authenticated from ``token`` on this very request (the gateway does, row checks
        included): the token is then not verified a second time, and only the run is loaded."""
        if principal is None:
            principal, run, paused = self.authenticate(token, run_id)
        else:
            run, paused = self.load_run(run_id)
        return await self.govern_async(principal, run, paused, intent)

    def submit_as(self, principal: AgentPrincipal, run_id: str, intent: Intent) -> ActionResult:
        """The pipeline for a person acting on an agent's run (an edited handoff): everything
        after authentication. Nothing here skips a check."""
        run, paused = self.load_run(run_id)
        return self.govern(principal, run, paused, intent)

    def govern(self, principal: AgentPrincipal, run: Run, paused: Paused, intent: Intent) -> ActionResult:
        """Everything after authentication and loading the run, for one action."""
        intent, replay = self._admit(principal, run, intent)
        if replay is not None:
            return replay
        started = time.perf_counter()
        with self.tracing.action(run, intent.tool) as span:
            result, lane = self._stages(run, paused, principal.agent_id, intent)
            self._trace(span, result, intent)
        self._after(principal, run, intent, result, lane, started)
        return result

    async def govern_async(
        self, principal: AgentPrincipal, run: Run, paused: Paused, intent: Intent
    ) -> ActionResult:
        """:meth:`govern` on an event loop (see :meth:`submit_async`)."""
        intent, replay = self._admit(principal, run, intent)
        if replay is not None:
            return replay
        started = time.perf_counter()
        with self.tracing.action(run, intent.tool) as span:
            result, lane = await self._stages_async(run, paused, principal.agent_id, intent)
            self._trace(span, result, intent)
        self._after(principal, run, intent, result, lane, started)
        return result

    def _admit(
        self, principal: AgentPrincipal, run: Run, intent: Intent
    ) -> tuple[Intent, ActionResult | None]:
        """The intent cleaned and scoped to the caller's run, and the stored answer if its
        idempotency key was used before."""
        intent = _clean(intent)
        _check_scope(principal, run)
        if intent.idempotency_key is not None:
            return intent, self.replay(principal.agent_id, intent)
        return intent, None

    def _trace(self, span: Any, result: ActionResult, intent: Intent) -> None:
        if span.is_recording():
            self.tracing.finish_action(
                span,
                result,
                arguments=safe_redact(intent.arguments) if self.tracing.capture_payloads else None,
            )

    def _after(
        self,
        principal: AgentPrincipal,
        run: Run,
        intent: Intent,
        result: ActionResult,
        lane: Lane | None,
        started: float,
    ) -> None:
        self._count(run, result, time.perf_counter() - started)
        if lane is not None and self.rollouts is not None:
            # The other version of a running rollout judges the action too: recorded, never enforced.
            self.rollouts.observe(lane, run, principal.agent_id, intent, result)

    def runtime_for(self, run: Run) -> tuple[WorkflowRuntime, Lane | None]:
        """The version that decides the run's actions: the workflow's active one, or, for a run
        started during a rollout, the version the rollout gives it (with the other version to
        judge in shadow while the rollout runs)."""
        if run.rollout_id is not None and self.rollouts is not None:
            lane = self.rollouts.lane(run)
            if lane is not None:
                return lane.enforced, lane
        return self.runtime(run.workflow), None

    def _stages(
        self, run: Run, paused: Paused, agent_id: str, intent: Intent
    ) -> tuple[ActionResult, Lane | None]:
        verdict, runtime, lane = self._judge(run, paused, agent_id, intent)
        if verdict.decision.decision != "allow" or runtime is None:
            # A denial, an escalation, or the approval gate's request for a person.
            return record_decision(self.engine, run, agent_id, intent, verdict, runtime), lane
        return self.carry_out(run, agent_id, intent, verdict, runtime), lane

    async def _stages_async(
        self, run: Run, paused: Paused, agent_id: str, intent: Intent
    ) -> tuple[ActionResult, Lane | None]:
        verdict, runtime, lane = self._judge(run, paused, agent_id, intent)
        if verdict.decision.decision != "allow" or runtime is None:
            return record_decision(self.engine, run, agent_id, intent, verdict, runtime), lane
        return await self.carry_out_async(run, agent_id, intent, verdict, runtime), lane

    def _judge(
        self, run: Run, paused: Paused, agent_id: str, intent: Intent
    ) -> tuple[Verdict, WorkflowRuntime | None, Lane | None]:
        """Schema, risk, policy, brakes, stop rules, work package: the verdict, with the runtime
        that judged it (None when judging failed: the verdict then denies)."""
        try:
            runtime, lane = self.runtime_for(run)
            carried = carried_for(self.engine, runtime.flow_tools, run.id, intent.tool)
            c = Checking(runtime, agent_id, run.environment, intent, run.steps, run.tool_calls, carried)
            verdict = (
                check_schema(c)
                or classify_risk(c)
                or check_policy(c)
                or run_brakes(c, run, paused)
                or check_stop_rules(c)
                or c.verdict()
            )
            if run.package_id is not None:  # the work package and live policy: the stricter wins
                verdict = work_package(self.engine, run.package_id, intent, verdict, now=time.time())
        except Exception as exc:  # fail closed: never execute after an error
            return self.error_verdict(intent, exc), None, None
        return verdict, runtime, lane

    def carry_out(
        self,
        run: Run,
        agent_id: str,
        intent: Intent,
        verdict: Verdict,
        runtime: WorkflowRuntime,
        *,
        approval_id: str | None = None,
    ) -> ActionResult:
        """The stages of an allowed action: limits and reservation with the journal, execute,
        output check, redact, record. Approved actions come in here too. A read with a fresh
        cached answer takes the same limits and is recorded the same way; only the upstream
        call (and its journal entry) is replaced by the stored answer."""
        reserved = self._reserve(run, agent_id, intent, verdict, runtime, approval_id=approval_id)
        if isinstance(reserved, ActionResult):
            return reserved
        call, hit = reserved
        outcome = cached_outcome(call, hit) if hit is not None else execute(call)
        return self._conclude(call, outcome)

    async def carry_out_async(
        self, run: Run, agent_id: str, intent: Intent, verdict: Verdict, runtime: WorkflowRuntime
    ) -> ActionResult:
        """:meth:`carry_out` on an event loop, the upstream call awaited. Once the journal says
        "executing", cancelling the caller (a client that hangs up) does not stop the call or
        its record: the outcome is recorded, as on the synchronous path."""
        reserved = self._reserve(run, agent_id, intent, verdict, runtime, approval_id=None)
        if isinstance(reserved, ActionResult):
            return reserved
        call, hit = reserved
        if hit is not None:
            return self._conclude(call, cached_outcome(call, hit))
        result: ActionResult | None = None
        with anyio.CancelScope(shield=True):
            result = self._conclude(call, await execute_async(call))
        assert result is not None  # a shielded scope is not cancelled: its body ran to the end
        return result

    def _reserve(
        self,
        run: Run,
        agent_id: str,
        intent: Intent,
        verdict: Verdict,
        runtime: WorkflowRuntime,
        *,
        approval_id: str | None,
    ) -> ActionResult | tuple[Call, cache.Hit | None]:
        """Limits and the reservation with the journal: the journaled call (and a fresh cached
        answer, if the tool has one), or the recorded refusal."""
        hit: cache.Hit | None = None
        try:
            hit = cache.lookup(self.engine, runtime, run, intent.tool, intent.arguments)
        except Exception:  # a cache that cannot be read is a miss, never a failure
            log.warning("cache lookup failed for %s", intent.tool, exc_info=True)
        try:
            call = reserve_and_journal(
                self.engine,
                run,
                agent_id,
                intent,
                verdict,
                runtime,
                rate_limiter=self.rate_limiter,
                lease_margin_s=self.lease_margin_s,
                approval_id=approval_id,
                claim_key=approval_id is None,
                cached=hit is not None,
            )
        except ConflictError:
            raise  # the key is in flight or the action already ran: nothing to record
        except Exception as exc:  # fail closed: the reservation did not commit, nothing was called
            call = self.error_verdict(intent, exc)
        if isinstance(call, Verdict):
            return record_decision(self.engine, run, agent_id, intent, call, runtime)
        if intent.tool in cache.plan(runtime).caches:
            self.metrics.cache.labels(run.workflow, intent.tool, "hit" if hit else "miss").inc()
        return call, hit

    def _conclude(self, call: Call, outcome: Outcome) -> ActionResult:
        """Output check and redaction (an upstream answer; a cached one is stored redacted
        already), then the record: outcome, journal closed, budget settled."""
        if not outcome.cached:
            outcome = redact_outcome(call, check_output(call, outcome))
        if not outcome.failed and call.cost_micros:
            self.metrics.spend.labels(call.run.workflow, "tool").inc(call.cost_micros / 1_000_000)
        return record_outcome(
            self.engine, call, outcome, sqlite=self.sqlite, budget_warn_ratio=self.budget_warn_ratio
        )

    # ---- stages of their own --------------------------------------------------------------------

    def authenticate(self, token: str, run_id: str) -> tuple[AgentPrincipal, Run, Paused]:
        """Verify the token, then load the run, any pause over it and the caller's agent row in
        one query; the row checks (revoked, rotated secret) are the same as authenticate_agent's."""
        claims = self.tokens.verify(token)
        _check_run_id(run_id)
        with hot_read(self.engine) as conn:
            m = (
                conn.execute(LOAD_RUN_AND_AGENT, {"run_id": run_id, "agent_id": claims.agent_id})
                .mappings()
                .first()
            )
        if m is None:
            authenticate_agent(token, tokens=self.tokens, store=self.agents)
            raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
        agent_row = auth_row(AgentColumns(m)) if m["a_id"] is not None else None
        principal = admit_agent(claims, agent_row, tokens=self.tokens, store=self.agents)
        run, paused = _run_from(m)
        return principal, run, paused

    def load_run(self, run_id: str) -> tuple[Run, Paused]:
        """The run and, when its workflow, agent or environment is paused, why (one query)."""
        _check_run_id(run_id)
        with hot_read(self.engine) as conn:
            row = conn.execute(LOAD_RUN, {"run_id": run_id}).mappings().first()
        if row is None:
            raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
        return _run_from(row)

    def replay(self, agent_id: str, intent: Intent) -> ActionResult | None:
        """The stored answer for an idempotency key already used, if any."""
        with hot_read(self.engine) as conn:
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

    @staticmethod
    def error_verdict(intent: Intent, exc: BaseException) -> Verdict:
        if not isinstance(exc, InterlockError):
            log.exception("pipeline error before execution", exc_info=exc)
        reason = Reason(
            code="pipeline_error", message=f"denied to fail closed: {type(exc).__name__}: {exc}"[:500]
        )
        return Verdict(Decision(decision="deny", reasons=[reason], tool=intent.tool), "denied", None)

    def _count(self, run: Run, result: ActionResult, seconds: float) -> None:
        m = self.metrics
        # Unknown tool names would let a caller mint label values without bound.
        tool = result.decision.tool if result.decision.verb is not None else "(unknown)"
        m.action(run.workflow, str(tool), result.decision.decision, result.status, seconds)
        if result.status == "escalated":
            m.escalations.labels(run.workflow, result.decision.reasons[0].code).inc()

    # ---- approved actions and model usage (bodies in approved.py and usage.py) -----------------

    def execute_approved(self, approval_id: str) -> ActionResult | None:
        """Run an approved action once, with exactly the approved arguments (see approved.py)."""
        return approved.execute_approved(self, approval_id)

    def record_model_call(self, token: str, run_id: str, call: ModelCall) -> ModelCallResult:
        """Record a model call the agent made and charge it to every budget (see usage.py)."""
        return usage.record_model_call(self, token, run_id, call)


def _check_scope(principal: AgentPrincipal, run: Run) -> None:
    if run.agent_id != principal.agent_id:
        # Another agent's run is indistinguishable from a missing one.
        raise NotFound(f"unknown run {run.id!r}", code="unknown_run")
    if run.workflow != principal.workflow or run.environment != principal.environment:
        raise TokenScopeError(
            f"token for {principal.workflow}/{principal.environment} used on a run of "
            f"{run.workflow}/{run.environment}"
        )


def _run_from(row: Any) -> tuple[Run, Paused]:
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


def _clean(intent: Intent) -> Intent:
    """Refuse what no database can store before anything is decided or recorded: NUL characters
    in names (PostgreSQL text cannot hold them, and no real name has one) and lone UTF-16
    surrogates (JSON's ``\\ud800`` escape decodes to one; no UTF-8 text can hold it) in names and
    arguments, naming where (a run id is checked where the run is loaded). In the agent's free
    text (reasoning, evidence) both become U+FFFD, so its words are still recorded."""
    for name, value in (("tool", intent.tool), ("idempotency_key", intent.idempotency_key)):
        if value is not None and "\x00" in value:
            raise ArgumentsInvalid(f"{name} contains a NUL character", field=name)
        if value is not None and _SURROGATE.search(value):
            raise ArgumentsInvalid(f"{name} contains a lone surrogate (not Unicode text)", field=name)
    try:
        orjson.dumps(intent.arguments)  # refuses lone surrogates, at C speed
    except TypeError:  # that, or something the schema stage refuses in its own words
        where = _surrogate_at(intent.arguments, "arguments")
        if where is not None:
            raise ArgumentsInvalid(
                f"{where} contains a lone surrogate (not Unicode text)", field=where
            ) from None
    reasoning, evidence = intent.reasoning, intent.evidence
    if reasoning is not None and ("\x00" in reasoning or _SURROGATE.search(reasoning)):
        reasoning = _SURROGATE.sub("\ufffd", reasoning.replace("\x00", "\ufffd"))
    if evidence is not None and any(_SURROGATE.search(e) for e in evidence):
        evidence = tuple(_SURROGATE.sub("\ufffd", e) for e in evidence)
    if reasoning is not intent.reasoning or evidence is not intent.evidence:
        return replace(intent, reasoning=reasoning, evidence=evidence)
    return intent


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_run_id(run_id: str) -> None:
    """A run id no database could hold (NUL, a lone surrogate) names no run."""
    if "\x00" in run_id or _SURROGATE.search(run_id):
        raise NotFound("unknown run", code="unknown_run")


def _surrogate_at(value: Any, path: str) -> str | None:
    """Where in ``value`` a string (or a key: then the object's own path) holds a lone surrogate."""
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and _SURROGATE.search(key):
                return path
            found = _surrogate_at(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _surrogate_at(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None
