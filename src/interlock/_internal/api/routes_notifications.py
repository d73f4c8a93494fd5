"""What Interlock told people, over HTTP: ``GET /v1/notifications`` (operator, any role).

Each row is one notice (approval requested, escalation, outcome unknown, pause, budget nearly
spent, circuit open) to one target: its status, attempts, the last answer and, for ticket
targets, the issue key the ticket system answered with. Filtered to the workflows the operator
holds a role on, then cut to ``limit``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from interlock._internal.api.deps import InterlockDep, OperatorDep
from interlock._internal.api.schemas import error_responses
from interlock._internal.notify.notifier import Delivery
from interlock._internal.operations.notifications import visible_deliveries

router = APIRouter(prefix="/v1")

_Text = Annotated[str | None, Query(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]


@router.get(
    "/notifications",
    response_model=list[Delivery],
    tags=["notifications"],
    responses=error_responses(401, 422),
)
def list_notifications(
    operator: OperatorDep,
    interlock: InterlockDep,
    run: Annotated[_Text, Query(description="Only this run's.")] = None,
    status: Annotated[
        str | None, Query(pattern=r"^(pending|delivered|failed)$", description="Only in this state.")
    ] = None,
    event: Annotated[_Text, Query(description="Only this event kind, e.g. approval.requested.")] = None,
    target: Annotated[_Text, Query(description="Only to this target (its name in settings).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> list[Delivery]:
    """Notices sent to webhooks, chat and ticket systems, newest first, with how each ended."""
    return visible_deliveries(
        interlock, operator, run_id=run, status=status, event_kind=event, target=target, limit=limit
    )


__all__ = ["router"]
