"""The other version's word on a live action: judged, recorded, never enforced.

The action has been decided (and perhaps executed) by the enforced version. The other version
judges the same intent through the pure stages (:func:`evaluate`) with the run's counters as they
stood before it, then the rules that read the run's history from its recorded steps
(:mod:`interlock._internal.runs.history`), exactly as replay and what-if re-judge history. What
decided besides the policy at that moment (a pause, a budget, a rate limit) is taken from the
enforced decision by the same :func:`reconcile` as what-if: both versions met the same moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from interlock._internal.gateway.dataflow import carried_for
from interlock._internal.gateway.decide import Intent, evaluate
from interlock._internal.gateway.models import ActionResult, Reason, Run
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.runs.history import (
    HISTORY_CODES,
    Prior,
    cap_refusal,
    history_refusal,
    needs_history,
    prior_steps,
    sequence_failure,
)
from interlock._internal.runs.replay import CAP_CODES, reconcile

_REJUDGED = CAP_CODES | HISTORY_CODES


@dataclass(frozen=True)
class Word:
    """One version's decision on an action, with its reasons (as stored)."""

    decision: str
    reasons: list[dict[str, Any]]


def _dump(reasons: list[Reason]) -> list[dict[str, Any]]:
    return [r.model_dump(exclude_none=True) for r in reasons]


def enforced_word(
    engine: Engine, runtime: WorkflowRuntime, *, run: Run, result: ActionResult, history: list[Prior] | None
) -> Word:
    """The enforced decision; a failed call that broke a declared sequence counts as escalated."""
    decision = result.decision
    if result.status == "failed" and decision.tool is not None:
        past = history if history is not None else prior_steps(engine, run.id, before_seq=result.seq)
        broken = sequence_failure(runtime.manifest, tool=decision.tool, history=past)
        if broken is not None:
            return Word("escalate", _dump([*decision.reasons, broken]))
    return Word(decision.decision, _dump(decision.reasons))


def other_word(
    engine: Engine,
    runtime: WorkflowRuntime,
    *,
    run: Run,
    agent_id: str,
    intent: Intent,
    result: ActionResult,
) -> tuple[Word, list[Prior] | None]:
    """What ``runtime`` (the version not enforced) decides for the action, and the history it read."""
    carried = carried_for(engine, runtime.flow_tools, run.id, intent.tool)
    verdict = evaluate(
        runtime,
        agent_id=agent_id,
        environment=run.environment,
        intent=intent,
        steps=run.steps,
        tool_calls=run.tool_calls,
        carried=carried,
    )
    now: str = verdict.decision.decision
    reasons: list[Reason] = list(verdict.decision.reasons)
    codes = result.decision.reason_codes
    if set(codes) & _REJUDGED and now != "deny":
        basis = "policy"  # caps and history are judged below, by this version's rules
    else:
        now, basis = reconcile(result.decision.decision, codes, now)
        if basis in ("brake", "held"):
            reasons = list(result.decision.reasons)
    history: list[Prior] | None = None
    if now == "allow" and basis in ("policy", "approved"):
        if needs_history(runtime.manifest):
            history = prior_steps(engine, run.id, before_seq=result.seq)
        refused = history_refusal(
            runtime.manifest, tool=intent.tool, args_hash=verdict.decision.args_hash, history=history or []
        )
        cap = cap_refusal(runtime.manifest, steps_before=run.steps, calls_before=run.tool_calls)
        if refused is not None:
            now, reasons = "escalate", [refused]
        elif cap is not None:
            now, reasons = "deny", [cap]
        elif result.status == "failed" and history:
            broken = sequence_failure(runtime.manifest, tool=intent.tool, history=history)
            if broken is not None:
                now, reasons = "escalate", [*reasons, broken]
    return Word(now, _dump(reasons)), history
