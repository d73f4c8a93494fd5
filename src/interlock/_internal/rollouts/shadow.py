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
    SEQUENCE_FAILURE,
    Prior,
    needs_history,
    prior_steps,
    sequence_failure,
)
from interlock._internal.runs.replay import rejudge


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
    reasons: list[Reason] = list(verdict.decision.reasons)
    history: list[Prior] | None = None
    if needs_history(runtime.manifest):
        history = prior_steps(engine, run.id, before_seq=result.seq)
    now, basis, decided = rejudge(
        runtime.manifest,
        recorded=result.decision.decision,
        codes=result.decision.reason_codes,
        policy_now=verdict.decision.decision,
        tool=intent.tool,
        args_hash=verdict.decision.args_hash,
        status=result.status,
        history=history or [],
        steps_before=run.steps,
        calls_before=run.tool_calls,
    )
    if basis in ("brake", "held"):
        reasons = list(result.decision.reasons)  # what the moment decided holds for both versions
    if decided is not None:
        reasons = [*reasons, decided] if decided.code == SEQUENCE_FAILURE else [decided]
    return Word(now, _dump(reasons)), history
