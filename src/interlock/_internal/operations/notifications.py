"""Notification deliveries as an operator sees them: only the workflows they hold a role on (and
what concerns everyone, like a circuit that opened). The API and ``interlock notifications`` call
this; the notifier keeps the record (:mod:`interlock._internal.notify.notifier`)."""

from __future__ import annotations

from interlock._internal.identity.operators import Operator
from interlock._internal.notify.notifier import Delivery
from interlock._internal.permissions import may_view
from interlock._internal.service import Interlock
from interlock.exceptions import ArgumentsInvalid

DELIVERY_STATES = ("pending", "delivered", "failed")
_BATCH = 500


def visible_deliveries(
    interlock: Interlock,
    operator: Operator | None,
    *,
    run_id: str | None = None,
    status: str | None = None,
    event_kind: str | None = None,
    target: str | None = None,
    limit: int = 200,
) -> list[Delivery]:
    """Deliveries, newest event first, cut to ``limit`` after the operator's view is applied (so a
    busy workflow they cannot see never hides the ones they can)."""
    if status is not None and status not in DELIVERY_STATES:
        raise ArgumentsInvalid(
            f"status must be one of {', '.join(DELIVERY_STATES)}, not {status!r}", field="status"
        )
    found: list[Delivery] = []
    before: int | None = None
    while len(found) < limit:
        batch = interlock.notifications.history(
            run_id=run_id,
            status=status,
            event_kind=event_kind,
            target=target,
            before_seq=before,
            limit=_BATCH,
        )
        if not batch:
            break
        found.extend(d for d in batch if operator is None or may_view(operator, d.workflow))
        # A batch may end inside one event's deliveries: go on from the last whole event.
        last = batch[-1].event_seq
        if len(batch) < _BATCH:
            break
        if all(d.event_seq == last for d in batch):
            raise ArgumentsInvalid("too many targets for one event to page through", field="limit")
        found = [d for d in found if d.event_seq != last]
        before = last + 1
    return found[:limit]


__all__ = ["DELIVERY_STATES", "visible_deliveries"]
