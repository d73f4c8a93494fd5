"""Rules that depend on a run's earlier steps, judged from its record.

The pipeline judges loop detection and ``conflicting_records`` stop rules inside the reservation
(from the steps table), and ``sequence_failure`` after a call fails. Replay, what-if and a
rollout's shadow judge the same rules of *another* manifest from the recorded history instead of
taking the recorded answer: these functions are that judgement, with the pipeline's reasons and
messages, over a list of earlier steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from interlock._internal.gateway.models import Reason
from interlock._internal.limits import value_limits
from interlock._internal.limits.stop_rules import applies, records_conflict, sequence_reason
from interlock._internal.manifest.models import Manifest
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading

# Steps that took a tool call (and count toward loop detection), as the reservation counts them.
CALLED = frozenset({"executed", "failed"})
# Refusals the reservation takes from the run's history: re-judged, never taken as recorded.
HISTORY_CODES = frozenset({"loop_detected", "conflicting_records"})
# Refusals taken from the workflow's history (value limits over time): re-judged from a ledger.
VALUE_CODES = frozenset({value_limits.CODE})
SEQUENCE_FAILURE = "sequence_failure"


@dataclass(frozen=True)
class Prior:
    """One earlier step of a run, as recorded: what history rules look at."""

    tool: str | None
    args_hash: str | None
    status: str
    result: Any = None


def prior_steps(engine: Engine, run_id: str, *, before_seq: int | None = None) -> list[Prior]:
    """A run's recorded tool steps in order, those before ``before_seq`` when given."""
    s = t.steps
    query = select(s.c.tool, s.c.args_hash, s.c.status, s.c.result).where(
        s.c.run_id == run_id, s.c.kind == "tool"
    )
    if before_seq is not None:
        query = query.where(s.c.seq < before_seq)
    with reading(engine) as conn:
        rows = conn.execute(query.order_by(s.c.seq)).all()
    return [Prior(tool=r[0], args_hash=r[1], status=str(r[2]), result=r[3]) for r in rows]


def value_ledger(
    engine: Engine, manifest: Manifest, *, since: float | None, until: float | None
) -> value_limits.Ledger:
    """The amounts ``manifest``'s value limits count, from every action of its workflow that
    executed from the start of the widest window before ``since`` up to ``until`` (an empty ledger
    when the manifest has no value limit: nothing is refused)."""
    limits = manifest.budgets.value_limits
    if not limits:
        return value_limits.Ledger(manifest, ())
    s, r = t.steps, t.runs
    tools = sorted({name for limit in limits for name in limit.tool_list()})
    query = (
        select(s.c.tool, s.c.arguments, s.c.run_id, s.c.created_at, r.c.agent_id)
        .select_from(s.join(r, r.c.id == s.c.run_id))
        .where(r.c.workflow == manifest.name, s.c.kind == "tool", s.c.status == "executed")
        .where(s.c.tool.in_(tools))
    )
    if since is not None:
        query = query.where(s.c.created_at >= since - max(value_limits.WINDOW_S[v.window] for v in limits))
    if until is not None:
        query = query.where(s.c.created_at < until)
    with reading(engine) as conn:
        prior = [
            value_limits.Prior(
                tool=str(row[0]), arguments=row[1], run_id=str(row[2]), at=float(row[3]), agent_id=str(row[4])
            )
            for row in conn.execute(query)
        ]
    return value_limits.Ledger(manifest, prior)


def needs_history(manifest: Manifest) -> bool:
    """Whether any rule of ``manifest`` reads the run's earlier steps."""
    return manifest.budgets.per_run.max_repeats is not None or any(
        rule.kind in ("conflicting_records", SEQUENCE_FAILURE) for rule in manifest.stop_rules
    )


def history_refusal(
    manifest: Manifest, *, tool: str, args_hash: str | None, history: Sequence[Prior]
) -> Reason | None:
    """What the reservation would refuse before ``tool`` runs, given the run's earlier steps:
    loop detection (``max_repeats``), then ``conflicting_records`` stop rules. Both escalate."""
    max_repeats = manifest.budgets.per_run.max_repeats
    if max_repeats is not None and args_hash is not None:
        repeats = sum(
            1 for p in history if p.tool == tool and p.args_hash == args_hash and p.status in CALLED
        )
        if repeats >= max_repeats:
            return Reason(
                code="loop_detected",
                message=f"{tool} with these arguments already ran {repeats} times "
                f"in this run (max_repeats={max_repeats})",
            )
    for rule in manifest.stop_rules:
        if rule.kind != "conflicting_records" or not rule.key or not rule.sources or not applies(rule, tool):
            continue
        executed = ((p.tool, p.result) for p in history if p.status == "executed" and p.tool in rule.sources)
        reason = records_conflict(rule, ((str(name), result) for name, result in executed))
        if reason is not None:
            return reason
    return None


def cap_refusal(manifest: Manifest, *, steps_before: int, calls_before: int) -> Reason | None:
    """The run's step or tool-call cap, as the reservation applies it to the counters before the
    action (a denial that stops the run)."""
    budget = manifest.budgets.per_run
    if budget.max_steps is not None and steps_before >= budget.max_steps:
        return Reason(code="step_cap_reached", message=f"run reached max_steps={budget.max_steps}")
    if budget.max_tool_calls is not None and calls_before >= budget.max_tool_calls:
        return Reason(
            code="tool_call_cap_reached", message=f"run reached max_tool_calls={budget.max_tool_calls}"
        )
    return None


def sequence_failure(manifest: Manifest, *, tool: str, history: Sequence[Prior]) -> Reason | None:
    """The ``sequence_failure`` stop rule a failed call of ``tool`` trips, given what executed
    before it in the run, or None."""
    for rule in manifest.stop_rules:
        if rule.kind != SEQUENCE_FAILURE or tool not in rule.sequence:
            continue
        earlier = rule.sequence[: rule.sequence.index(tool)]
        done = [str(p.tool) for p in history if p.status == "executed" and p.tool in earlier]
        if done:
            return sequence_reason(rule, tool, done)
    return None


__all__ = [
    "CALLED",
    "HISTORY_CODES",
    "SEQUENCE_FAILURE",
    "VALUE_CODES",
    "Prior",
    "cap_refusal",
    "history_refusal",
    "needs_history",
    "prior_steps",
    "sequence_failure",
    "value_ledger",
]
