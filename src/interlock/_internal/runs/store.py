"""Runs and their steps: creation, reads, and the timeline view."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import String, cast, exists, func, or_, select
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.sql.elements import ColumnElement

from interlock._internal.audit.canonical import hash_value
from interlock._internal.audit.chain import append_event
from interlock._internal.gateway.models import Decision, Reason, Run, RunView, Step
from interlock._internal.ids import new_id
from interlock._internal.runs.record_history import MAX_HISTORY, RecordAction, record_history
from interlock._internal.runs.state import set_state
from interlock._internal.store import tables as t
from interlock._internal.store.engine import insert_ignore, reading, transaction
from interlock._internal.telemetry.redaction import redact_payload
from interlock.exceptions import LimitExceeded, NotFound

MICROS = 1_000_000


def run_from_row(row: RowMapping) -> Run:
    return Run(
        id=row["id"],
        workflow=row["workflow"],
        workflow_version=row["workflow_version_id"],
        agent_id=row["agent_id"],
        environment=row["environment"],
        state=row["state"],
        state_reason=row["state_reason"],
        trigger=row["trigger"],
        started_by=row["started_by"],
        steps=row["steps"],
        tool_calls=row["tool_calls"],
        cost_usd=row["cost_micros"] / MICROS,
        tokens=row.get("tokens") or 0,
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        package_id=row.get("package_id"),
        rollout_id=row.get("rollout_id"),
    )


class RunStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(
        self,
        *,
        workflow: str,
        workflow_version_id: str,
        agent_id: str,
        environment: str,
        trigger: Any = None,
        started_by: str | None = None,
        max_concurrent: int | None = None,
        package_id: str | None = None,
        on_create: Callable[[Connection, str], None] | None = None,
        assign: Callable[[Connection, str], tuple[str, str] | None] | None = None,
    ) -> Run:
        """Insert a running run. ``on_create`` runs in the same transaction (a work package is
        consumed there, so the run and the package's single use commit together). ``assign``
        (a rollout's) may give the run another manifest version and its rollout id, from the
        run's id, in that transaction too."""
        now = time.time()
        row: dict[str, Any] = {
            "id": new_id("run"),
            "workflow": workflow,
            "workflow_version_id": workflow_version_id,
            "agent_id": agent_id,
            "environment": environment,
            "state": "running",
            "state_reason": None,
            # Triggers carry whatever started the run (a ticket, an e-mail): stored redacted, like
            # every payload, and purged with them (runs/retention.py).
            "trigger": None if trigger is None else redact_payload(trigger),
            "started_by": started_by,
            "steps": 0,
            "tool_calls": 0,
            "cost_micros": 0,
            "tokens": 0,
            "started_at": now,
            "ended_at": None,
            "package_id": package_id,
            "rollout_id": None,
        }
        with transaction(self.engine) as conn:
            if max_concurrent is not None:
                self._check_concurrency(conn, workflow, max_concurrent, now)
            chosen = assign(conn, row["id"]) if assign is not None else None
            if chosen is not None:
                row["workflow_version_id"], row["rollout_id"] = chosen
            conn.execute(t.runs.insert().values(**row))
            if on_create is not None:
                on_create(conn, row["id"])
            data = {
                "agent": agent_id,
                "environment": environment,
                "manifest_version": row["workflow_version_id"],
            }
            if package_id is not None:
                data["package"] = package_id
            if row["rollout_id"] is not None:
                data["rollout"] = row["rollout_id"]
            trigger_hash = None if trigger is None else _trigger_hash(trigger)
            if trigger_hash is not None:
                data["trigger_hash"] = trigger_hash
            append_event(
                conn,
                kind="run.started",
                actor=started_by or f"agent:{agent_id}",
                workflow=workflow,
                run_id=row["id"],
                data=data,
            )
        return run_from_row(row)  # type: ignore[arg-type]

    @staticmethod
    def _check_concurrency(conn: Connection, workflow: str, limit: int, now: float) -> None:
        # Lock one row per workflow so two replicas cannot both count N-1 and both start a run.
        insert_ignore(
            conn,
            t.budget_counters,
            {
                "scope": "workflow_runs",
                "key": workflow,
                "period": "",
                "used_micros": 0,
                "reserved_micros": 0,
                "used_tokens": 0,
                "used_steps": 0,
                "used_tool_calls": 0,
                "updated_at": now,
            },
        )
        conn.execute(
            select(t.budget_counters.c.key)
            .where(t.budget_counters.c.scope == "workflow_runs", t.budget_counters.c.key == workflow)
            .with_for_update()
        ).first()
        running = conn.execute(
            select(func.count()).where(t.runs.c.workflow == workflow, t.runs.c.state == "running")
        ).scalar_one()
        if running >= limit:
            raise LimitExceeded(
                f"workflow {workflow} already has {running} running runs (max_concurrent_runs={limit})",
                code="concurrency_limit",
                retry_after=5.0,
            )

    def get(self, run_id: str, *, conn: Connection | None = None) -> Run:
        if conn is not None:
            return self._get(conn, run_id)
        with reading(self.engine) as c:
            return self._get(c, run_id)

    def _get(self, conn: Connection, run_id: str) -> Run:
        row = conn.execute(select(t.runs).where(t.runs.c.id == run_id)).mappings().first()
        if row is None:
            raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
        return run_from_row(row)

    def finish(self, run_id: str, *, state: str, reason: str | None, actor: str) -> Run:
        """End or change a run's state (completed, failed, stopped; or back to running)."""
        with transaction(self.engine) as conn:
            run = self._get(conn, run_id)
            set_state(conn, run_id, state, reason=reason, actor=actor, workflow=run.workflow)
        return self.get(run_id)

    def list(self, *, workflow: str | None = None, limit: int = 100) -> list[Run]:
        query = select(t.runs).order_by(t.runs.c.started_at.desc()).limit(limit)
        if workflow:
            query = query.where(t.runs.c.workflow == workflow)
        with reading(self.engine) as conn:
            return [run_from_row(r) for r in conn.execute(query).mappings()]

    def search(
        self,
        *,
        workflows: Sequence[str],
        agent: str | None = None,
        tool: str | None = None,
        state: str | None = None,
        text: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[builtins.list[Run], int]:
        """Runs of ``workflows`` only (the caller's permitted ones: the filter is in the query, so a
        page and the total count only what the caller may see), newest first, and how many match.
        ``tool``: runs with a step on it; ``text``: in the run id, agent or trigger."""
        r = t.runs.c
        where: builtins.list[ColumnElement[bool]] = [r.workflow.in_(builtins.list(workflows))]
        if agent:
            where.append(r.agent_id == agent)
        if state:
            where.append(r.state == state)
        if tool:
            where.append(exists().where(t.steps.c.run_id == r.id, t.steps.c.tool == tool))
        if text:
            needle = "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append(
                or_(
                    func.lower(r.id).like(needle, escape="\\"),
                    func.lower(r.agent_id).like(needle, escape="\\"),
                    func.lower(cast(r.trigger, String)).like(needle, escape="\\"),
                )
            )
        query = select(t.runs).where(*where).order_by(r.started_at.desc(), r.id).offset(offset).limit(limit)
        with reading(self.engine) as conn:
            total = int(conn.execute(select(func.count()).select_from(t.runs).where(*where)).scalar() or 0)
            return [run_from_row(row) for row in conn.execute(query).mappings()], total

    def history(
        self,
        keys: Mapping[str, Any],
        *,
        workflows: Sequence[str],
        exclude_run: str | None = None,
        limit: int = MAX_HISTORY,
    ) -> tuple[builtins.list[RecordAction], bool]:
        """Other actions on the same record (see :mod:`interlock._internal.runs.record_history`)."""
        return record_history(
            self.engine, keys=keys, workflows=workflows, exclude_run=exclude_run, limit=limit
        )

    def view(self, run_id: str) -> RunView:
        with reading(self.engine) as conn:
            run = self._get(conn, run_id)
            rows = conn.execute(
                select(t.steps, t.decisions)
                .select_from(t.steps.outerjoin(t.decisions, t.decisions.c.id == t.steps.c.decision_id))
                .where(t.steps.c.run_id == run_id)
                .order_by(t.steps.c.seq)
            ).all()
        steps = []
        for row in rows:
            m = row._mapping
            decision = None
            if m[t.decisions.c.decision] is not None:
                decision = Decision(
                    decision=m[t.decisions.c.decision],
                    reasons=[Reason(**r) for r in m[t.decisions.c.reasons]],
                    tool=m[t.decisions.c.tool],
                    verb=m[t.decisions.c.verb],
                    risk=m[t.decisions.c.risk],
                    policy_ids=m[t.decisions.c.policy_ids],
                    args_hash=m[t.decisions.c.args_hash],
                    manifest_version=m[t.decisions.c.manifest_version],
                    policy_version=m[t.decisions.c.policy_version],
                    confidence=m[t.decisions.c.confidence],
                    package_id=m[t.decisions.c.package_id],
                    binding=m[t.decisions.c.binding],
                    data_classes=m[t.decisions.c.data_classes] or [],
                )
            steps.append(
                Step(
                    id=m[t.steps.c.id],
                    run_id=run_id,
                    seq=m[t.steps.c.seq],
                    kind=m[t.steps.c.kind],
                    tool=m[t.steps.c.tool],
                    verb=m[t.steps.c.verb],
                    status=m[t.steps.c.status],
                    decision=decision,
                    arguments=m[t.steps.c.arguments],
                    result=m[t.steps.c.result],
                    error=m[t.steps.c.error],
                    reasoning=m[t.steps.c.reasoning],
                    confidence=m[t.steps.c.confidence],
                    evidence=m[t.steps.c.evidence],
                    duration_ms=m[t.steps.c.duration_ms],
                    created_at=m[t.steps.c.created_at],
                    data_classes=m[t.steps.c.data_classes],
                    cached_from=m[t.steps.c.cached_from],
                )
            )
        return RunView(**run.model_dump(), steps_detail=steps)


def _trigger_hash(trigger: Any) -> str | None:
    try:
        return hash_value(trigger)
    except (TypeError, ValueError):
        return None
