"""A rollout: a candidate manifest version on trial beside the active one, and who gets it.

In **shadow** the candidate judges every action of the runs started during the rollout and its
decisions are recorded, never enforced. As a **canary** it is enforced for a share of new runs
(stable per run: the run id's SHA-256 read as a fraction, below the share), for named agents, or
for runs whose trigger has a named value; the active version judges those runs in shadow, so
every action of the rollout is compared both ways.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from interlock._internal.gateway.runtime import WorkflowRuntime

Mode = Literal["shadow", "canary"]
State = Literal["running", "promoted", "aborted"]
Arm = Literal["active", "candidate"]


def bucket(run_id: str) -> float:
    """Where a run falls in [0, 1): its id's SHA-256, first 8 bytes, as a fraction. A run's
    bucket never changes, so neither does its version, on any replica."""
    return int.from_bytes(hashlib.sha256(run_id.encode("utf-8")).digest()[:8], "big") / 2**64


def trigger_matches(triggers: dict[str, list[str]], trigger: Any) -> bool:
    """Whether a run's trigger (a JSON object) has one of the named values at a named field."""
    if not triggers or not isinstance(trigger, dict):
        return False
    for name, values in triggers.items():
        value = trigger.get(name)
        if value is not None and not isinstance(value, dict | list) and str(value) in values:
            return True
    return False


@dataclass(frozen=True)
class Rollout:
    id: str
    workflow: str
    candidate_version_id: str
    active_version_id: str
    mode: Mode
    share: float
    agents: tuple[str, ...]
    triggers: dict[str, list[str]]
    max_denial_increase: float | None
    max_escalation_increase: float | None
    min_decisions: int
    state: State
    started_by: str
    started_at: float
    decisions: int = 0
    active_denials: int = 0
    candidate_denials: int = 0
    active_escalations: int = 0
    candidate_escalations: int = 0
    ended_by: str | None = None
    ended_at: float | None = None
    end_reason: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Rollout:
        return cls(
            id=row["id"],
            workflow=row["workflow"],
            candidate_version_id=row["candidate_version_id"],
            active_version_id=row["active_version_id"],
            mode=row["mode"],
            share=float(row["share"]),
            agents=tuple(row["agents"] or ()),
            triggers={str(k): [str(v) for v in vs] for k, vs in (row["triggers"] or {}).items()},
            max_denial_increase=row["max_denial_increase"],
            max_escalation_increase=row["max_escalation_increase"],
            min_decisions=int(row["min_decisions"]),
            state=row["state"],
            started_by=row["started_by"],
            started_at=float(row["started_at"]),
            decisions=int(row["decisions"]),
            active_denials=int(row["active_denials"]),
            candidate_denials=int(row["candidate_denials"]),
            active_escalations=int(row["active_escalations"]),
            candidate_escalations=int(row["candidate_escalations"]),
            ended_by=row["ended_by"],
            ended_at=row["ended_at"],
            end_reason=row["end_reason"],
        )

    def includes(self, *, run_id: str, agent_id: str, trigger: Any) -> bool:
        """Whether a new run is in the canary (enforced under the candidate)."""
        if self.mode != "canary":
            return False
        if agent_id in self.agents or trigger_matches(self.triggers, trigger):
            return True
        return bucket(run_id) < self.share

    def rates(self) -> dict[str, float]:
        """Denial and escalation rates of each version over the compared decisions."""
        n = max(self.decisions, 1)
        return {
            "active_denial": self.active_denials / n,
            "candidate_denial": self.candidate_denials / n,
            "active_escalation": self.active_escalations / n,
            "candidate_escalation": self.candidate_escalations / n,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow": self.workflow,
            "candidate_version": self.candidate_version_id,
            "active_version": self.active_version_id,
            "mode": self.mode,
            "share": self.share,
            "agents": list(self.agents),
            "triggers": self.triggers,
            "thresholds": {
                "max_denial_increase": self.max_denial_increase,
                "max_escalation_increase": self.max_escalation_increase,
                "min_decisions": self.min_decisions,
            },
            "state": self.state,
            "started_by": self.started_by,
            "started_at": self.started_at,
            "ended_by": self.ended_by,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "decisions": self.decisions,
            "rates": self.rates(),
        }


@dataclass(frozen=True)
class Lane:
    """How one action of a run in a running rollout is judged: ``enforced`` decides it, ``other``
    judges it in shadow; ``arm`` names the version enforced."""

    rollout_id: str
    arm: Arm
    enforced: WorkflowRuntime
    other: WorkflowRuntime


def breached(rollout: Rollout) -> str | None:
    """Why the rollout must abort itself now, or None: the candidate's denial (or escalation)
    rate exceeds the active version's by more than its threshold, once enough decisions are in."""
    n = rollout.decisions
    if n == 0 or n < rollout.min_decisions:
        return None
    checks = (
        ("denial", rollout.max_denial_increase, rollout.candidate_denials, rollout.active_denials),
        (
            "escalation",
            rollout.max_escalation_increase,
            rollout.candidate_escalations,
            rollout.active_escalations,
        ),
    )
    for name, limit, candidate, active in checks:
        if limit is not None and (candidate - active) / n > limit:
            return (
                f"candidate {name} rate {candidate / n:.1%} exceeds the active version's "
                f"{active / n:.1%} by more than {limit:.1%} over {n} decisions"
            )
    return None
