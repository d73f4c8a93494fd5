"""Model usage the agent reports: checked against the model tiers, priced, recorded, charged to
every budget.

Model routing (the manifest's ``models``): each task class (extraction, classification,
planning, ...) has a tier, and each tier lists the models allowed in it with their prices. A
reported call names its ``task``; a model outside its task's tier (or, without a task, in no tier
at all) is *off tier*. With ``on_unlisted: flag`` the call is recorded with the note
``model_off_tier``; with ``refuse`` it is recorded too (the spend happened) and refused: the run
stops (``model_refused``), so the agent's next action is denied, as when a budget is spent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from interlock._internal.audit.chain import append_event
from interlock._internal.gateway.models import (
    ModelCall,
    ModelCallResult,
    Reason,
)
from interlock._internal.gateway.records import bump_steps
from interlock._internal.gateway.statements import ADD_USAGE, INSERT_STEP
from interlock._internal.ids import new_id
from interlock._internal.limits.budgets import (
    charge,
    scopes_for,
    usd_to_micros,
    warn_nearly_spent,
)
from interlock._internal.manifest.models import Manifest
from interlock._internal.runs.state import set_state
from interlock._internal.store.engine import transaction
from interlock.exceptions import (
    NotFound,
)

if TYPE_CHECKING:
    from interlock._internal.gateway.pipeline import Pipeline


@dataclass(frozen=True)
class Priced:
    """What the manifest says about one model call: its cost, its tier, and any objection."""

    cost_usd: float
    tier: str | None = None
    off_tier: bool = False
    notes: list[Reason] = field(default_factory=list)
    refused: Reason | None = None  # off tier under ``on_unlisted: refuse``

    def usage_fields(self, task: str | None) -> dict[str, Any]:
        """What the step and the audit event add about routing (nothing when there is none)."""
        out: dict[str, Any] = {}
        if task is not None:
            out["task"] = task
        if self.tier is not None:
            out["tier"] = self.tier
        if self.off_tier:
            out["off_tier"] = True
        return out


def route_and_price(
    manifest: Manifest,
    fallback_prices: dict[str, dict[str, float]],
    *,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cost_usd: float | None,
    task: str | None,
) -> Priced:
    """Check the model against its task's tier and price the call (the reported cost wins; then
    the tier's price, the manifest's ``budgets.model_prices``, the settings' ``model_prices``)."""
    tier: str | None = None
    problem: str | None = None
    routing = manifest.models
    if routing is not None:
        if task is not None:
            tier_name = routing.tasks.get(task)
            spec = None if tier_name is None else routing.tier(tier_name)
            if spec is None:
                known = ", ".join(sorted(routing.tasks)) or "none"
                problem = f"task class {task!r} is not declared under models.tasks (known: {known})"
            elif model in spec.models:
                tier = spec.name
            else:
                problem = (
                    f"model {model!r} is not in tier {spec.name!r} for {task} "
                    f"(allowed: {', '.join(spec.models)})"
                )
        else:
            tier = next((t.name for t in routing.tiers if model in t.models), None)
            if tier is None:
                problem = f"model {model!r} is in no tier of models.tiers"
    notes: list[Reason] = []
    refused: Reason | None = None
    if problem is not None and routing is not None:
        if routing.on_unlisted == "refuse":
            refused = Reason(
                code="model_refused",
                message=f"{problem}; the run stops (models.on_unlisted: refuse)",
                policy_id="models:on_unlisted",
            )
        else:
            notes.append(Reason(code="model_off_tier", message=problem, policy_id="models:on_unlisted"))
    if cost_usd is None:
        table: dict[str, float] | None = None
        if routing is not None:
            listed = next((t.models[model] for t in routing.tiers if model in t.models), None)
            table = None if listed is None else listed.model_dump()
        if table is None:
            price = manifest.budgets.model_prices.get(model)
            table = price.model_dump() if price is not None else fallback_prices.get(model)
        if table is None:
            # Usage is self-reported, so refusing it would protect nothing and lose the token
            # count; it is recorded unpriced and says so.
            notes.append(
                Reason(
                    code="unpriced_model",
                    message=f"no price for model {model!r}: tokens counted, cost 0; "
                    "report cost_usd or add it to the price table",
                )
            )
            cost_usd = 0.0
        else:
            cost_usd = (input_tokens * table["input"] + output_tokens * table["output"]) / 1_000_000
    return Priced(cost_usd, tier, problem is not None, notes, refused)


def record_model_call(p: Pipeline, token: str, run_id: str, call: ModelCall) -> ModelCallResult:
    """Record a model call the agent made and charge it to every budget.

    The spend already happened, so it is always recorded; when it passes a budget the run
    stops and the agent's next action is denied.
    """
    principal, run, _paused = p.authenticate(token, run_id)  # the pipeline's first two stages
    if run.agent_id != principal.agent_id:
        raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
    runtime = p.runtime_for(run)[0]  # a canary run's version, while its rollout runs
    priced = route_and_price(
        runtime.manifest,
        p.model_prices,
        model=call.model,
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        cost_usd=call.cost_usd,
        task=call.task,
    )
    cost_usd, notes = priced.cost_usd, list(priced.notes)
    cost = usd_to_micros(cost_usd)
    tokens = call.input_tokens + call.output_tokens
    step_id = new_id("stp")
    now = time.time()
    scopes = scopes_for(runtime.manifest, run_id=run.id, agent_id=run.agent_id, now=now)
    with transaction(p.engine) as conn:
        seq = bump_steps(conn, run.id)
        conn.execute(ADD_USAGE, {"run_id": run.id, "c_cost": cost, "c_tokens": tokens})
        usage = {
            "model": call.model,
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
            **priced.usage_fields(call.task),
        }
        conn.execute(
            INSERT_STEP,
            {
                "id": step_id,
                "run_id": run.id,
                "seq": seq,
                "kind": "model",
                "tool": None,
                "verb": None,
                "status": "refused" if priced.refused is not None else "recorded",
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
        warn_nearly_spent(conn, scopes, workflow=run.workflow, run_id=run.id, ratio=p.budget_warn_ratio)
        append_event(
            conn,
            kind="model.call",
            actor=f"agent:{run.agent_id}",
            workflow=run.workflow,
            run_id=run.id,
            data={
                **usage,
                "step": step_id,
                "seq": seq,
                "cost_micros": cost,
                **({"package": run.package_id} if run.package_id is not None else {}),
            },
        )
        state = run.state
        stop = priced.refused or over
        if stop is not None and run.state == "running":
            set_state(
                conn,
                run.id,
                "stopped",
                reason=stop.message,
                actor="interlock",
                workflow=run.workflow,
                data={"code": stop.code, "step": step_id},
            )
            state = "stopped"
    p.metrics.spend.labels(run.workflow, "model").inc(cost / 1_000_000)
    p.metrics.tokens.labels(run.workflow, call.model).inc(tokens)
    p.tracing.model_call(
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
        reasons=[r for r in (priced.refused, over) if r is not None] + notes,
    )
