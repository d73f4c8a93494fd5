"""What each event a person must act on says, and where in the console they act on it.

Notifications are driven by audit event kinds only: whatever emits one of these events (in any
module, on any replica) gets its people told, with nothing else to wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from interlock._internal.audit.chain import AuditEvent

# kind → (severity, title template). Templates read the event's data, workflow and run id.
EVENTS: dict[str, tuple[str, str]] = {
    "approval.requested": ("action", "Approval needed: {tool} in {workflow}"),
    "run.escalated": ("action", "Run escalated to a person in {workflow}: {reason}"),
    "action.outcome_unknown": ("critical", "Outcome unknown for {tool} in {workflow}: check it upstream"),
    "workflow.paused": ("warning", "Workflow {workflow} paused: {reason}"),
    "workflow.resumed": ("info", "Workflow {workflow} resumed"),
    "agent.paused": ("warning", "Agent {key} paused: {reason}"),
    "agent.resumed": ("info", "Agent {key} resumed"),
    "environment.paused": ("warning", "Environment {key} paused: {reason}"),
    "environment.resumed": ("info", "Environment {key} resumed"),
    "budget.nearly_spent": ("warning", "Budget nearly spent: {scope} {key} in {workflow}"),
    "breaker.opened": ("critical", "Circuit open for {tool_or_upstream}: calls are failing fast"),
}


@dataclass(frozen=True)
class Notice:
    event: str
    seq: int
    severity: str
    title: str
    text: str
    link: str | None
    workflow: str | None
    run_id: str | None
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "seq": self.seq,
            "severity": self.severity,
            "title": self.title,
            "text": self.text,
            "link": self.link,
            "workflow": self.workflow,
            "run_id": self.run_id,
            "data": self.data,
        }


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def _path(event: AuditEvent) -> str | None:
    data = event.data
    if event.kind == "approval.requested" and data.get("approval"):
        return f"/ui/approvals/{data['approval']}"
    if event.kind == "run.escalated" and data.get("handoff"):
        return f"/ui/handoffs/{data['handoff']}"
    if event.run_id:
        return f"/ui/runs/{event.run_id}"
    if event.kind.endswith((".paused", ".resumed")):
        return "/ui/handoffs"
    return "/ui/runs"


def notice_for(event: AuditEvent, *, public_url: str | None) -> Notice:
    severity, template = EVENTS.get(event.kind, ("info", event.kind))
    data = event.data
    fields = _Blank(
        {
            **{k: v for k, v in data.items() if isinstance(v, str | int | float)},
            "workflow": event.workflow or data.get("workflow") or "?",
            "reason": data.get("reason") or "no reason given",
            "tool_or_upstream": data.get("tool") or data.get("upstream") or data.get("key") or "?",
        }
    )
    title = template.format_map(fields)
    lines = [title]
    if event.run_id:
        lines.append(f"Run: {event.run_id}")
    for name in ("tool", "verb", "handoff", "approval", "code", "step"):
        if data.get(name) is not None:
            lines.append(f"{name.capitalize()}: {data[name]}")
    if event.actor:
        lines.append(f"By: {event.actor}")
    path = _path(event)
    link = f"{public_url.rstrip('/')}{path}" if public_url and path else path
    return Notice(
        event=event.kind,
        seq=event.seq,
        severity=severity,
        title=title[:300],
        text="\n".join(lines)[:3000],
        link=link,
        workflow=event.workflow,
        run_id=event.run_id,
        data=data,
    )


__all__ = ["EVENTS", "Notice", "notice_for"]
