"""Handoffs: what a stop rule leaves for a person — resume, resume with edited arguments, or stop —
and what a call with an unknown outcome leaves — it happened (with evidence), it did not happen,
or retry now with the same upstream key (see :mod:`interlock._internal.gateway.recovery`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from interlock._internal.runs.state import set_state
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading, transaction
from interlock.exceptions import ArgumentsInvalid, ConflictError, NotFound

Resolution = Literal["resume", "resume_with_arguments", "stop", "happened", "not_happened", "retry"]
UNKNOWN_RESOLUTIONS = ("happened", "not_happened", "retry")


class Handoff(BaseModel):
    id: str
    run_id: str
    step_id: str | None
    workflow: str
    tool: str | None
    arguments: Any
    reason_code: str
    message: str
    state: str
    created_at: float
    resolved_at: float | None = None
    resolved_by: str | None = None
    resolution: Any = None


class HandoffStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def list(
        self,
        *,
        workflow: str | None = None,
        state: str | None = "open",
        run_id: str | None = None,
        limit: int = 200,
    ) -> list[Handoff]:
        """Newest first; one run's in the order they happened."""
        if run_id is not None:
            query = select(t.handoffs).where(t.handoffs.c.run_id == run_id).order_by(t.handoffs.c.created_at)
        else:
            query = select(t.handoffs).order_by(t.handoffs.c.created_at.desc())
        query = query.limit(limit)
        if workflow is not None:
            query = query.where(t.handoffs.c.workflow == workflow)
        if state is not None:
            query = query.where(t.handoffs.c.state == state)
        with reading(self.engine) as conn:
            return [Handoff(**r) for r in conn.execute(query).mappings()]

    def activity(self, workflows: Sequence[str]) -> tuple[int, str]:
        """How many handoffs of ``workflows`` are open, and a token that changes whenever one is
        opened or resolved there (the console's live inbox polls it)."""
        h = t.handoffs.c
        query = select(
            func.count().filter(h.state == "open"), func.max(h.created_at), func.max(h.resolved_at)
        ).where(h.workflow.in_(list(workflows)))
        with reading(self.engine) as conn:
            waiting, created, resolved = conn.execute(query).one()
        return int(waiting or 0), f"{int(waiting or 0)}:{created or 0:.6f}:{resolved or 0:.6f}"

    def get(self, handoff_id: str) -> Handoff:
        with reading(self.engine) as conn:
            row = conn.execute(select(t.handoffs).where(t.handoffs.c.id == handoff_id)).mappings().first()
        if row is None:
            raise NotFound(f"unknown handoff {handoff_id!r}", code="unknown_handoff")
        return Handoff(**row)

    def resolve(
        self, handoff_id: str, *, action: Resolution, actor: str, comment: str | None = None
    ) -> Handoff:
        """Close the handoff and move the run: back to ``running`` or ``stopped``. Decided once."""
        with transaction(self.engine) as conn:
            row = (
                conn.execute(select(t.handoffs).where(t.handoffs.c.id == handoff_id).with_for_update())
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound(f"unknown handoff {handoff_id!r}", code="unknown_handoff")
            if row["state"] != "open":
                raise ConflictError(
                    f"handoff {handoff_id} was already {row['state']}", code="already_decided"
                )
            if row["reason_code"] == "outcome_unknown" or action in UNKNOWN_RESOLUTIONS:
                raise ArgumentsInvalid(
                    "an outcome-unknown handoff is resolved with happened, not_happened or retry, "
                    "and only such a handoff is",
                    field="action",
                )
            new_state = "stopped" if action == "stop" else "running"
            conn.execute(
                update(t.handoffs)
                .where(t.handoffs.c.id == handoff_id)
                .values(
                    state="stopped" if action == "stop" else "resumed",
                    resolved_at=time.time(),
                    resolved_by=actor,
                    resolution={"action": action, "comment": comment},
                )
            )
            set_state(
                conn,
                row["run_id"],
                new_state,
                reason=f"handoff {action} by {actor}" + (f": {comment}" if comment else ""),
                actor=actor,
                workflow=row["workflow"],
                data={"handoff": handoff_id, "action": action},
            )
        return self.get(handoff_id)
