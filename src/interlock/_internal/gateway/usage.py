"""Model usage the agent reports: recorded, priced, charged to every budget."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

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
from interlock._internal.runs.state import set_state
from interlock._internal.store.engine import transaction
from interlock.exceptions import (
    NotFound,
)

if TYPE_CHECKING:
    from interlock._internal.gateway.pipeline import Pipeline


def record_model_call(p: Pipeline, token: str, run_id: str, call: ModelCall) -> ModelCallResult:
    """Record a model call the agent made and charge it to every budget.

    The spend already happened, so it is always recorded; when it passes a budget the run
    stops and the agent's next action is denied.
    """
    principal, run, _paused = p.authenticate(token, run_id)  # the pipeline's first two stages
    if run.agent_id != principal.agent_id:
        raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
    runtime = p.runtime(run.workflow)
    cost_usd = call.cost_usd
    notes: list[Reason] = []
    if cost_usd is None:
        price = runtime.manifest.budgets.model_prices.get(call.model)
        table = price.model_dump() if price is not None else p.model_prices.get(call.model)
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
            cost_usd = (call.input_tokens * table["input"] + call.output_tokens * table["output"]) / 1_000_000
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
        reasons=([over] if over is not None else []) + notes,
    )
