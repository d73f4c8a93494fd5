"""Run replay: a recorded run's actions judged again by the policy in force now, or by a candidate.

Nothing executes. Each recorded step goes through the pure :func:`evaluate` with the run's agent
and environment, the recorded arguments and confidence, and the run's counters as they stood
before that step; the recorded tool outputs stand in for the upstream. The report lists every
step whose decision differs, and is a function of its inputs only (no clock, no randomness).

What a replay cannot know, and how it is treated:

- **Redacted arguments.** Steps store arguments after redaction (``j***@example.com``,
  ``[REDACTED]``). A step's arguments are *exact* when their hash equals the recorded argument
  hash (or, for steps that never got a hash, when they carry no redaction mark). When they are
  not exact and the schema check is what differs (either side is ``invalid_arguments``), the step
  is reported ``not_comparable``: the mask, not the policy, changed the answer. Any other
  difference on redacted arguments is reported as ``changed`` with ``arguments_exact: false``.
- **The moment.** A pause, a run that was no longer running, its duration limit and pipeline
  errors are facts about the moment, not about the policy: unless the policy now denies outright,
  they hold again. Refusals taken while reserving from counters the record does not keep (rate
  limits, budgets, locks) hold again only for an action the policy still lets run alone. An
  action a person approved stays allowed while the policy allows or reviews it, as the pipeline
  executes approved actions.
- **History.** Rules that read the run's earlier steps are judged again from the recorded steps
  under the candidate (:mod:`.history`), never taken as recorded: step and tool-call caps, loop
  detection (``max_repeats``), ``conflicting_records`` stop rules, and ``sequence_failure`` stop
  rules on a failed call. A step whose failure tripped a sequence rule counts as ``escalate``
  (the run was handed to a person at that step), with the reason ``sequence_failure``.
- **Consequences.** Each step is judged on its own. The replay does not guess what the agent
  would have done after a step that now ends differently.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.engine import Engine

from interlock._internal.audit.canonical import canonical_json, hash_value, sha256_hex
from interlock._internal.gateway.decide import Intent, evaluate
from interlock._internal.gateway.models import Reason
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.limits import value_limits
from interlock._internal.manifest.loader import LoadedManifest, load_manifest_text
from interlock._internal.manifest.models import Manifest
from interlock._internal.runs.history import (
    HISTORY_CODES,
    SEQUENCE_FAILURE,
    VALUE_CODES,
    Prior,
    cap_refusal,
    history_refusal,
    sequence_failure,
)
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading
from interlock._internal.telemetry.redaction import MASK
from interlock.exceptions import ConfigError, NotFound

EXPORT_FORMAT = "interlock.run-export/1"

# Every reason code the pure `evaluate` gives: schema, identity, stop rules judged from the intent,
# Cedar, and confidence routing. A recorded decision with one of these was made by the policy.
POLICY_CODES = frozenset(
    {
        "unknown_tool",
        "invalid_arguments",
        "agent_not_in_manifest",
        "environment_mismatch",
        "missing_data",
        "low_confidence",
        "sensitive_category",
        "outside_category",
        "permitted",
        "review_required",
        "forbidden",
        "not_granted",
        "no_policy_permits",
        "policy_error",
        "low_confidence_rejected",
        "confidence_review",
    }
)
# The run's step and tool-call caps: from the manifest, so a replay re-applies the candidate's.
CAP_CODES = frozenset({"step_cap_reached", "tool_call_cap_reached"})
# Brakes the pipeline applies to anything the policy does not deny outright.
RUN_BRAKES = frozenset(
    {
        "workflow_paused",
        "agent_paused",
        "environment_paused",
        "run_not_active",
        "run_duration_exceeded",
        "pipeline_error",
    }
)
# A person approved the action; the pipeline runs it if the policy still allows or reviews it.
APPROVED = "approved"
# Statuses of steps that took a tool call from the run's cap (see the pipeline's reservation).
_CALLED = frozenset({"executed", "failed"})
# Refusals judged again from the record under the candidate, never taken as recorded.
_REJUDGED = CAP_CODES | HISTORY_CODES | VALUE_CODES

Outcome = Literal["same", "changed", "not_comparable"]
Basis = Literal["policy", "approved", "brake", "held"]


def reconcile(recorded: str, codes: Collection[str], now: str) -> tuple[str, Basis]:
    """The decision the pipeline would reach now, given the policy's answer ``now`` and the
    recorded decision with its reason codes.

    Whatever else decided at the time is taken as recorded, but only where the pipeline would
    consult it again: run-level brakes apply unless the policy denies outright; refusals taken
    while reserving (loop detection, history stop rules, rate limits, budgets, locks, caps) apply
    only to an action the policy lets run alone.
    """
    if now == "deny":
        return "deny", "policy"
    found = set(codes)
    if APPROVED in found:
        return ("allow" if now in ("allow", "require_approval") else now), "approved"
    if found & RUN_BRAKES:
        return recorded, "brake"
    if not found or found & POLICY_CODES:
        return now, "policy"
    return (recorded, "held") if now == "allow" else (now, "policy")


def rejudge(
    manifest: Manifest,
    *,
    recorded: str,
    codes: Collection[str],
    policy_now: str,
    tool: str,
    args_hash: str | None,
    status: str | None,
    history: Sequence[Prior],
    steps_before: int,
    calls_before: int,
    values: Callable[[], Reason | None] | None = None,
) -> tuple[str, Basis, Reason | None]:
    """The decision the pipeline would reach under ``manifest`` for a recorded action, given the
    policy's answer ``policy_now``: :func:`reconcile`, except that what the run's history decides
    is judged again from ``history`` (the earlier steps) rather than taken as recorded, in the
    reservation's order: loop detection and history stop rules, then the step and tool-call caps,
    then value limits over time (``values``: the candidate's judgement against the workflow's
    recorded amounts), then, for a call that failed, sequence rules. Returns the decision, its
    basis, and the history rule's reason when one decided it."""
    now: str
    basis: Basis
    # Without ``values`` (a rollout's shadow) a value limit's refusal is taken as recorded.
    rejudged = _REJUDGED if values is not None else _REJUDGED - VALUE_CODES
    if set(codes) & rejudged and policy_now != "deny":
        now, basis = policy_now, "policy"
    else:
        now, basis = reconcile(recorded, codes, policy_now)
    if now != "allow" or basis not in ("policy", "approved"):
        return now, basis, None
    refused = history_refusal(manifest, tool=tool, args_hash=args_hash, history=history)
    if refused is not None:
        return "escalate", basis, refused
    cap = cap_refusal(manifest, steps_before=steps_before, calls_before=calls_before)
    if basis == "policy" and cap is not None:
        return "deny", basis, cap
    over = values() if values is not None else None
    if over is not None:
        return "deny", basis, over
    if status == "failed":
        broken = sequence_failure(manifest, tool=tool, history=history)
        if broken is not None:
            return "escalate", basis, broken
    return now, basis, None


def looks_redacted(value: Any) -> bool:
    """Whether a stored value carries a redaction mark (used only where no hash can tell)."""
    text = json.dumps(value, ensure_ascii=False)
    return MASK[:-1] in text or "***@" in text


def arguments_exact(arguments: Any, args_hash: str | None) -> bool:
    """Whether stored arguments are the ones the agent sent, byte for byte."""
    if args_hash is not None:
        try:
            return hash_value(arguments) == args_hash
        except (TypeError, ValueError):
            return False
    return not looks_redacted(arguments)


# ---- the record ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """A run as recorded: the run row, its steps with their decisions, and its manifest."""

    run: dict[str, Any]
    steps: list[dict[str, Any]]
    manifest: dict[str, Any]

    @property
    def run_id(self) -> str:
        return str(self.run["id"])

    def content(self) -> dict[str, Any]:
        return {"format": EXPORT_FORMAT, "run": self.run, "steps": self.steps, "manifest": self.manifest}

    def export(self) -> dict[str, Any]:
        """The self-contained export: the content and a SHA-256 over its canonical JSON."""
        body = self.content()
        return {**body, "sha256": sha256_hex(canonical_json(body))}


def load_run(engine: Engine, run_id: str) -> RunRecord:
    """Read one run, its steps (redacted as stored) with their decisions, and its manifest text."""
    with reading(engine) as conn:
        run = conn.execute(select(t.runs).where(t.runs.c.id == run_id)).mappings().first()
        if run is None:
            raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
        rows = conn.execute(
            select(t.steps, t.decisions)
            .select_from(t.steps.outerjoin(t.decisions, t.decisions.c.id == t.steps.c.decision_id))
            .where(t.steps.c.run_id == run_id)
            .order_by(t.steps.c.seq)
        ).all()
        version = (
            conn.execute(
                select(t.workflow_versions).where(t.workflow_versions.c.id == run["workflow_version_id"])
            )
            .mappings()
            .first()
        )
        # A failed call that broke a declared sequence escalated the run at that step.
        broke = {
            h.step_id: {"code": h.reason_code, "message": h.message}
            for h in conn.execute(
                select(t.handoffs.c.step_id, t.handoffs.c.reason_code, t.handoffs.c.message).where(
                    t.handoffs.c.run_id == run_id, t.handoffs.c.reason_code == SEQUENCE_FAILURE
                )
            )
        }
    steps = []
    for row in rows:
        m = row._mapping
        decision = None
        if m[t.decisions.c.decision] is not None:
            decision = {
                "decision": m[t.decisions.c.decision],
                "reasons": m[t.decisions.c.reasons],
                "policy_ids": m[t.decisions.c.policy_ids],
                "risk": m[t.decisions.c.risk],
                "args_hash": m[t.decisions.c.args_hash],
                "manifest_version": m[t.decisions.c.manifest_version],
                "policy_version": m[t.decisions.c.policy_version],
            }
        steps.append(
            {
                "id": m[t.steps.c.id],
                "seq": m[t.steps.c.seq],
                "kind": m[t.steps.c.kind],
                "tool": m[t.steps.c.tool],
                "verb": m[t.steps.c.verb],
                "status": m[t.steps.c.status],
                "args_hash": m[t.steps.c.args_hash],
                "arguments": m[t.steps.c.arguments],
                "result": m[t.steps.c.result],
                "error": m[t.steps.c.error],
                "reasoning": m[t.steps.c.reasoning],
                "confidence": m[t.steps.c.confidence],
                "evidence": m[t.steps.c.evidence],
                "created_at": m[t.steps.c.created_at],
                "decision": decision,
                "sequence_failure": broke.get(m[t.steps.c.id]),
            }
        )
    manifest: dict[str, Any] = {"version_id": run["workflow_version_id"], "text": None}
    if version is not None:
        manifest.update(
            workflow=version["workflow"],
            version=version["version"],
            sha256=version["sha256"],
            policy_sha256=version["policy_sha256"],
            text=version["manifest"],
        )
    return RunRecord(run=dict(run), steps=steps, manifest=manifest)


def write_export(record: RunRecord, path: Path) -> str:
    """Write the export file; returns its content hash."""
    data = record.export()
    path.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return str(data["sha256"])


def read_export(path: Path) -> RunRecord:
    """Read an export file, refusing one whose content no longer matches its hash."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}", code="export_unreadable") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not a run export: {exc}", code="export_invalid") from exc
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ConfigError(f"{path}: not a run export ({EXPORT_FORMAT})", code="export_invalid")
    claimed = data.pop("sha256", None)
    if claimed != sha256_hex(canonical_json(data)):
        raise ConfigError(
            f"{path}: content does not match its sha256; the file was altered", code="export_altered"
        )
    try:
        return RunRecord(run=dict(data["run"]), steps=list(data["steps"]), manifest=dict(data["manifest"]))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: incomplete run export: {exc}", code="export_invalid") from exc


def recorded_manifest(record: RunRecord, *, base_dir: Path) -> LoadedManifest:
    """The manifest the run was made under, from the record's own copy."""
    text = record.manifest.get("text")
    if not isinstance(text, str):
        raise NotFound(
            f"the manifest {record.manifest.get('version_id')} of run {record.run_id} is not stored",
            code="manifest_not_stored",
        )
    return load_manifest_text(text, file=f"<{record.manifest.get('version_id')}>", base_dir=base_dir)


def active_manifest(engine: Engine, workflow: str) -> LoadedManifest | None:
    """The version of a workflow that is active in this database, or None if it has none."""
    with reading(engine) as conn:
        row = (
            conn.execute(
                select(
                    t.workflow_versions.c.manifest,
                    t.workflow_versions.c.source_path,
                    t.workflow_versions.c.id,
                )
                .select_from(
                    t.workflows.join(
                        t.workflow_versions, t.workflow_versions.c.id == t.workflows.c.active_version_id
                    )
                )
                .where(t.workflows.c.name == workflow)
            )
            .mappings()
            .first()
        )
    if row is None:
        return None
    source = Path(row["source_path"]) if row["source_path"] else None
    base_dir = source.parent if source is not None and source.parent.is_dir() else Path.cwd()
    return load_manifest_text(row["manifest"], file=str(source or f"<{row['id']}>"), base_dir=base_dir)


# ---- the replay ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepReplay:
    seq: int
    tool: str | None
    recorded: str | None
    now: str
    outcome: Outcome
    recorded_reasons: list[str]
    now_reasons: list[dict[str, Any]]
    arguments_exact: bool
    note: str | None = None
    output_problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "tool": self.tool,
            "recorded": self.recorded,
            "now": self.now,
            "outcome": self.outcome,
            "recorded_reasons": self.recorded_reasons,
            "now_reasons": self.now_reasons,
            "arguments_exact": self.arguments_exact,
            "note": self.note,
            "output_problem": self.output_problem,
        }


@dataclass(frozen=True)
class ReplayReport:
    run_id: str
    workflow: str
    agent_id: str
    environment: str
    recorded_manifest_version: str | None
    manifest_version: str
    policy_version: str
    steps: list[StepReplay] = field(default_factory=list)

    @property
    def changed(self) -> list[StepReplay]:
        return [s for s in self.steps if s.outcome == "changed"]

    @property
    def not_comparable(self) -> list[StepReplay]:
        return [s for s in self.steps if s.outcome == "not_comparable"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "agent_id": self.agent_id,
            "environment": self.environment,
            "recorded_manifest_version": self.recorded_manifest_version,
            "manifest_version": self.manifest_version,
            "policy_version": self.policy_version,
            "summary": {
                "steps": len(self.steps),
                "same": sum(1 for s in self.steps if s.outcome == "same"),
                "changed": len(self.changed),
                "not_comparable": len(self.not_comparable),
            },
            "steps": [s.as_dict() for s in self.steps],
        }


def record_ledger(record: RunRecord, manifest: Manifest) -> value_limits.Ledger:
    """Value limits' ledger from the run's own executed steps: what an export alone can tell
    (:func:`interlock._internal.runs.history.value_ledger` reads the workflow's other runs too)."""
    agent = str(record.run["agent_id"])
    prior = [
        value_limits.Prior(
            tool=str(step["tool"]),
            arguments=step.get("arguments"),
            agent_id=agent,
            run_id=record.run_id,
            at=float(step["created_at"]),
        )
        for step in record.steps
        if step.get("kind", "tool") == "tool" and step.get("status") == "executed" and step.get("tool")
    ]
    return value_limits.Ledger(manifest, prior)


def replay_run(
    record: RunRecord, runtime: WorkflowRuntime, *, ledger: value_limits.Ledger | None = None
) -> ReplayReport:
    """Judge every recorded step of a run again under ``runtime``'s policy. Executes nothing.
    Value limits over time are judged against ``ledger`` (the workflow's recorded amounts), or,
    without one, against what the run itself moved."""
    if ledger is None:
        ledger = record_ledger(record, runtime.manifest)
    run = record.run
    if runtime.name != run["workflow"]:
        raise ConfigError(
            f"run {record.run_id} belongs to workflow {run['workflow']!r}, not {runtime.name!r}",
            code="workflow_mismatch",
        )
    calls = 0
    out: list[StepReplay] = []
    history: list[Prior] = []
    for step in sorted(record.steps, key=lambda s: int(s["seq"])):
        if step.get("kind", "tool") == "tool":
            out.append(_replay_step(runtime, run, step, calls_before=calls, history=history, ledger=ledger))
            history.append(
                Prior(
                    tool=step.get("tool"),
                    args_hash=step.get("args_hash"),
                    status=str(step.get("status")),
                    result=step.get("result"),
                )
            )
        if step.get("status") in _CALLED:
            calls += 1
    return ReplayReport(
        run_id=record.run_id,
        workflow=str(run["workflow"]),
        agent_id=str(run["agent_id"]),
        environment=str(run["environment"]),
        recorded_manifest_version=record.manifest.get("version_id"),
        manifest_version=runtime.version_id,
        policy_version=runtime.compiled.sha256,
        steps=out,
    )


def _replay_step(
    runtime: WorkflowRuntime,
    run: dict[str, Any],
    step: dict[str, Any],
    *,
    calls_before: int,
    history: list[Prior],
    ledger: value_limits.Ledger,
) -> StepReplay:
    seq = int(step["seq"])
    steps_before = seq - 1  # every step, whatever its outcome, takes exactly one sequence number
    recorded = step.get("decision")
    arguments = step.get("arguments")
    args_hash = (recorded or {}).get("args_hash") or step.get("args_hash")
    exact = arguments_exact(arguments, args_hash)
    intent = Intent(tool=str(step.get("tool") or ""), arguments=arguments, confidence=step.get("confidence"))
    verdict = evaluate(
        runtime,
        agent_id=str(run["agent_id"]),
        environment=str(run["environment"]),
        intent=intent,
        steps=steps_before,
        tool_calls=calls_before,
    )
    output_problem = _output_problem(verdict.tool, step)
    if recorded is None:
        return StepReplay(
            seq=seq,
            tool=step.get("tool"),
            recorded=None,
            now=verdict.decision.decision,
            outcome="not_comparable",
            recorded_reasons=[],
            now_reasons=[r.model_dump(exclude_none=True) for r in verdict.decision.reasons],
            arguments_exact=exact,
            note="no decision was recorded for this step",
            output_problem=output_problem,
        )
    recorded_kind = str(recorded["decision"])
    recorded_reasons: list[dict[str, Any]] = list(recorded.get("reasons") or [])
    recorded_codes = [str(r.get("code")) for r in recorded_reasons]
    broke = step.get("sequence_failure")
    policy_now: str = verdict.decision.decision
    reasons: list[Reason] = list(verdict.decision.reasons)
    note: str | None = None
    tool_name = str(step.get("tool") or "")
    now, basis, decided = rejudge(
        runtime.manifest,
        recorded=recorded_kind,
        codes=recorded_codes,
        policy_now=policy_now,
        tool=tool_name,
        args_hash=args_hash,
        status=step.get("status"),
        history=history,
        steps_before=steps_before,
        calls_before=calls_before,
        values=None
        if step.get("created_at") is None
        else partial(
            ledger.refusal,
            tool_name,
            arguments,
            agent_id=str(run["agent_id"]),
            run_id=str(run["id"]),
            at=float(step["created_at"]),
        ),
    )
    if basis in ("brake", "held"):
        reasons = [Reason(**r) for r in recorded_reasons]
        note = "decided by the run's state or limits at the time, taken as recorded"
    elif basis == "approved":
        reasons = [Reason(**r) for r in recorded_reasons if r.get("code") == APPROVED] + reasons
        note = "approved by a person; the approval still covers what the policy allows or reviews"
    if decided is not None:
        # A failed call keeps the policy's reasons; a refusal replaces them, as the reservation does.
        reasons = [*reasons, decided] if decided.code == SEQUENCE_FAILURE else [decided]
    if isinstance(broke, dict):
        # The call failed and broke a declared sequence: the run was escalated at this step.
        recorded_kind = "escalate"
        recorded_codes = [*recorded_codes, str(broke.get("code"))]
    now_codes = [r.code for r in reasons]
    outcome: Outcome = "same" if recorded_kind == now else "changed"
    if outcome == "changed" and not exact and "invalid_arguments" in (*recorded_codes, *now_codes):
        outcome = "not_comparable"
        note = "arguments were redacted before storage; the schema check cannot be repeated on them"
    return StepReplay(
        seq=seq,
        tool=step.get("tool"),
        recorded=recorded_kind,
        now=now,
        outcome=outcome,
        recorded_reasons=recorded_codes,
        now_reasons=[r.model_dump(exclude_none=True) for r in reasons],
        arguments_exact=exact,
        note=note,
        output_problem=output_problem,
    )


def _output_problem(tool: Any, step: dict[str, Any]) -> str | None:
    """The recorded (redacted) output checked against the candidate's output schema."""
    if tool is None or step.get("status") != "executed" or step.get("result") is None:
        return None
    problem: str | None = tool.output_errors(step["result"])
    return problem


__all__ = [
    "EXPORT_FORMAT",
    "ReplayReport",
    "RunRecord",
    "StepReplay",
    "active_manifest",
    "arguments_exact",
    "load_run",
    "read_export",
    "reconcile",
    "recorded_manifest",
    "rejudge",
    "replay_run",
    "write_export",
]
