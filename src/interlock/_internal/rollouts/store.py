"""Rollouts in the database, so every replica agrees on who runs which version.

One running rollout per workflow (a unique constraint on ``(workflow, live)``). Each compared
action adds a row and bumps the rollout's counters in one transaction; the replica whose update
crosses a threshold aborts the rollout in that same transaction, with the audit event
``rollout.aborted``, and every replica's next action sees it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from interlock._internal.audit.chain import append_event
from interlock._internal.evals.whatif import LABELS
from interlock._internal.ids import new_id
from interlock._internal.rollouts.model import Arm, Mode, Rollout, breached
from interlock._internal.rollouts.shadow import Word
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading, transaction
from interlock.exceptions import ConflictError, NotFound, StorageError

R = t.rollouts
D = t.rollout_decisions


class RolloutStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---- reads ---------------------------------------------------------------------------------

    def get(self, rollout_id: str) -> Rollout:
        with reading(self.engine) as conn:
            row = conn.execute(select(R).where(R.c.id == rollout_id)).mappings().first()
        if row is None:
            raise NotFound(f"unknown rollout {rollout_id!r}", code="unknown_rollout")
        return Rollout.from_row(row)

    def running(self, workflow: str) -> Rollout | None:
        """The workflow's running rollout, if any."""
        with reading(self.engine) as conn:
            row = conn.execute(select(R).where(R.c.workflow == workflow, R.c.live == 1)).mappings().first()
        return None if row is None else Rollout.from_row(row)

    def latest(self, workflow: str) -> Rollout | None:
        """The running rollout, or else the one that ended last."""
        query = select(R).where(R.c.workflow == workflow).order_by(R.c.live.is_(None), R.c.started_at.desc())
        with reading(self.engine) as conn:
            row = conn.execute(query.limit(1)).mappings().first()
        return None if row is None else Rollout.from_row(row)

    def for_run_start(self, workflow: str, version_id: str) -> tuple[Rollout | None, str | None]:
        """In one read: the running rollout, and the version a promotion made active if this
        process still serves the version that promotion replaced (another replica promoted)."""
        query = select(R).where(
            R.c.workflow == workflow,
            (R.c.live == 1) | ((R.c.state == "promoted") & (R.c.active_version_id == version_id)),
        )
        with reading(self.engine) as conn:
            rows = [Rollout.from_row(r) for r in conn.execute(query).mappings()]
        running = next((r for r in rows if r.state == "running"), None)
        promoted = [r for r in rows if r.state == "promoted" and r.candidate_version_id != version_id]
        newest = max(promoted, key=lambda r: r.ended_at or 0.0) if promoted else None
        return running, None if newest is None else newest.candidate_version_id

    # ---- start and end -------------------------------------------------------------------------

    def start(
        self,
        *,
        workflow: str,
        candidate_version_id: str,
        active_version_id: str,
        mode: Mode,
        share: float,
        agents: list[str],
        triggers: dict[str, list[str]],
        max_denial_increase: float | None,
        max_escalation_increase: float | None,
        min_decisions: int,
        actor: str,
    ) -> Rollout:
        now = time.time()
        row: dict[str, Any] = {
            "id": new_id("rol"),
            "workflow": workflow,
            "candidate_version_id": candidate_version_id,
            "active_version_id": active_version_id,
            "mode": mode,
            "share": share,
            "agents": sorted(set(agents)),
            "triggers": {k: sorted(set(v)) for k, v in sorted(triggers.items())},
            "max_denial_increase": max_denial_increase,
            "max_escalation_increase": max_escalation_increase,
            "min_decisions": min_decisions,
            "state": "running",
            "live": 1,
            "decisions": 0,
            "active_denials": 0,
            "candidate_denials": 0,
            "active_escalations": 0,
            "candidate_escalations": 0,
            "started_by": actor,
            "started_at": now,
            "ended_by": None,
            "ended_at": None,
            "end_reason": None,
        }
        try:
            with transaction(self.engine) as conn:
                conn.execute(R.insert().values(**row))
                settings = {k: row[k] for k in ("mode", "share", "agents", "triggers", "min_decisions")}
                append_event(
                    conn,
                    kind="rollout.started",
                    actor=actor,
                    workflow=workflow,
                    data={
                        "rollout": row["id"],
                        "candidate_version": candidate_version_id,
                        "active_version": active_version_id,
                        "max_denial_increase": max_denial_increase,
                        "max_escalation_increase": max_escalation_increase,
                        **settings,
                    },
                )
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise ConflictError(
                    f"workflow {workflow} already has a running rollout; promote or abort it first",
                    code="rollout_running",
                ) from exc
            raise
        return Rollout.from_row(row)

    def end(
        self,
        workflow: str,
        *,
        state: str,
        actor: str,
        reason: str | None,
        on_end: Callable[[Connection, Rollout], None] | None = None,
    ) -> Rollout:
        """Promote or abort the workflow's running rollout; ``on_end`` runs in the transaction
        (a promotion makes the candidate active there)."""
        current = self.running(workflow)
        if current is None:
            raise NotFound(f"workflow {workflow} has no running rollout", code="no_rollout")
        with transaction(self.engine) as conn:
            if not _close(conn, current.id, state=state, actor=actor, reason=reason):
                raise ConflictError(f"rollout {current.id} already ended", code="rollout_ended")
            if on_end is not None:
                on_end(conn, current)
            append_event(
                conn,
                kind=f"rollout.{state}",
                actor=actor,
                workflow=workflow,
                data={
                    "rollout": current.id,
                    "candidate_version": current.candidate_version_id,
                    "reason": reason,
                },
            )
        return self.get(current.id)

    # ---- comparisons ---------------------------------------------------------------------------

    def observe(
        self,
        rollout_id: str,
        *,
        run_id: str,
        step_id: str | None,
        agent_id: str,
        tool: str,
        arm: Arm,
        active: Word,
        candidate: Word,
    ) -> Rollout | None:
        """Record one action judged by both versions and count it; abort the rollout when a
        threshold is crossed. Returns the rollout if this call aborted it."""
        now = time.time()
        bump = {
            "decisions": R.c.decisions + 1,
            "active_denials": R.c.active_denials + int(active.decision == "deny"),
            "candidate_denials": R.c.candidate_denials + int(candidate.decision == "deny"),
            "active_escalations": R.c.active_escalations + int(active.decision == "escalate"),
            "candidate_escalations": R.c.candidate_escalations + int(candidate.decision == "escalate"),
        }
        with transaction(self.engine) as conn:
            row = (
                conn.execute(update(R).where(R.c.id == rollout_id, R.c.live == 1).values(**bump).returning(R))
                .mappings()
                .first()
            )
            if row is None:
                return None  # it ended meanwhile: nothing more to compare
            conn.execute(
                D.insert().values(
                    id=new_id("rod"),
                    rollout_id=rollout_id,
                    run_id=run_id,
                    step_id=step_id,
                    agent_id=agent_id,
                    tool=tool,
                    arm=arm,
                    active_decision=active.decision,
                    candidate_decision=candidate.decision,
                    active_reasons=active.reasons,
                    candidate_reasons=candidate.reasons,
                    created_at=now,
                )
            )
            rollout = Rollout.from_row(row)
            why = breached(rollout)
            if why is None or not _close(conn, rollout_id, state="aborted", actor="interlock", reason=why):
                return None
            append_event(
                conn,
                kind="rollout.aborted",
                actor="interlock",
                workflow=rollout.workflow,
                data={
                    "rollout": rollout_id,
                    "candidate_version": rollout.candidate_version_id,
                    "reason": why,
                    "automatic": True,
                    "decisions": rollout.decisions,
                    "rates": rollout.rates(),
                },
            )
        return self.get(rollout_id)

    def comparison(self, rollout: Rollout, *, examples: int = 3) -> dict[str, Any]:
        """How the candidate's decisions differ from the active version's on the rollout's live
        traffic, counted by transition as what-if counts them (active → candidate)."""
        with reading(self.engine) as conn:
            counts = conn.execute(
                select(D.c.arm, D.c.active_decision, D.c.candidate_decision, func.count())
                .where(D.c.rollout_id == rollout.id)
                .group_by(D.c.arm, D.c.active_decision, D.c.candidate_decision)
            ).all()
            runs = conn.execute(
                select(t.runs.c.workflow_version_id, func.count())
                .where(t.runs.c.rollout_id == rollout.id)
                .group_by(t.runs.c.workflow_version_id)
            ).all()
            transitions: dict[str, int] = {}
            by_arm: dict[str, int] = {}
            unchanged = 0
            for arm, old, new, n in counts:
                by_arm[arm] = by_arm.get(arm, 0) + int(n)
                if old == new:
                    unchanged += int(n)
                else:
                    label = f"{old}->{new}"
                    transitions[label] = transitions.get(label, 0) + int(n)
            shown: dict[str, list[dict[str, Any]]] = {}
            for label in sorted(transitions):
                old, new = label.split("->")
                rows = conn.execute(
                    select(D)
                    .where(
                        D.c.rollout_id == rollout.id,
                        D.c.active_decision == old,
                        D.c.candidate_decision == new,
                    )
                    .order_by(D.c.created_at)
                    .limit(examples)
                ).mappings()
                shown[label] = [
                    {
                        "run_id": r["run_id"],
                        "step_id": r["step_id"],
                        "agent_id": r["agent_id"],
                        "tool": r["tool"],
                        "enforced": r["arm"],
                        "recorded_at": r["created_at"],
                        "old_reasons": _brief(r["active_reasons"]),
                        "new_reasons": _brief(r["candidate_reasons"]),
                    }
                    for r in rows
                ]
        changed = sum(transitions.values())
        return {
            "rollout": rollout.as_dict(),
            "total": rollout.decisions,
            "unchanged": unchanged,
            "changed": changed,
            "change_rate": changed / rollout.decisions if rollout.decisions else 0.0,
            "transitions": dict(sorted(transitions.items())),
            "labels": {k: LABELS.get(k, k) for k in sorted(transitions)},
            "examples": shown,
            "enforced": {"active": by_arm.get("active", 0), "candidate": by_arm.get("candidate", 0)},
            "runs_by_version": {str(v): int(n) for v, n in sorted(runs)},
        }


def _close(conn: Connection, rollout_id: str, *, state: str, actor: str, reason: str | None) -> bool:
    done = conn.execute(
        update(R)
        .where(R.c.id == rollout_id, R.c.live == 1)
        .values(state=state, live=None, ended_by=actor, ended_at=time.time(), end_reason=reason)
    ).rowcount
    return bool(done)


def _brief(reasons: Any) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k in ("code", "policy_id", "message") and v is not None}
        for r in reasons or []
        if isinstance(r, dict)
    ]
