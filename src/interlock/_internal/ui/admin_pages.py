"""The workflow page (operating model, this week's figures, calibration, kill switch) and the agents page."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from interlock._internal.evals.calibration import calibration, calibration_view
from interlock._internal.evals.weekly import fmt, weekly_figures
from interlock._internal.identity.operators import Operator
from interlock._internal.manifest.models import Approvals
from interlock._internal.manifest.operating_model import operating_model
from interlock._internal.permissions import (
    may_admin_agents,
    may_pause_workflow,
    may_view,
    runtime_for,
    visible_workflows,
)
from interlock._internal.service import Interlock
from interlock._internal.ui import words

FIGURES: tuple[tuple[str, str, str], ...] = (
    ("runs", "Runs", "count"),
    ("completed_runs", "Completed runs", "count"),
    ("success_rate", "Success rate (completed without escalation)", "rate"),
    ("escalation_rate", "Escalation rate", "rate"),
    ("denial_rate", "Denial rate", "rate"),
    ("error_rate", "Error rate", "rate"),
    ("cycle_time_median_s", "Cycle time, median", "duration"),
    ("approval_latency_median_s", "Approval wait, median", "duration"),
    ("cost_per_completed_usd", "Cost per completed task", "usd"),
)


_BUDGETS = {
    "max_steps": "Steps",
    "max_tool_calls": "Tool calls",
    "max_cost_usd": "Cost",
    "max_tokens": "Model tokens",
    "max_duration_s": "Duration",
    "max_repeats": "Same call, at most",
}


def budget_items(budgets: dict[str, Any]) -> list[tuple[str, str]]:
    items = []
    for key, value in budgets.items():
        if key == "max_cost_usd":
            text = words.usd(value)
        elif key == "max_duration_s":
            text = words.fmt_span(value)
        elif key == "max_repeats":
            text = f"{value} times"
        else:
            text = f"{value:,}" if isinstance(value, int) else words.value_text(value)
        items.append((_BUDGETS.get(key, key.replace("_", " ")), text))
    return items


def approvals_text(approvals: Approvals) -> str:
    roles = list(approvals.approver_roles)
    who = roles[0] if len(roles) == 1 else ", ".join(roles[:-1]) + " or " + roles[-1]
    count = "1 approval" if approvals.quorum == 1 else f"{approvals.quorum} approvals from different people"
    text = f"{count} from {who}; requests expire after {words.fmt_span(approvals.expires_after_s)}."
    if not approvals.allow_self_approval:
        text += " Whoever started a run cannot approve its actions."
    return text


def pause_state(interlock: Interlock, workflow: str) -> dict[str, Any]:
    row = interlock.workflow_state(workflow)
    return {
        "paused": bool(row["paused"]),
        "by": row["paused_by"] or "",
        "reason": row["paused_reason"] or "",
        "since": words.fmt_time(row["updated_at"]) if row["paused"] else "",
    }


def workflows_list(interlock: Interlock, operator: Operator) -> list[dict[str, Any]]:
    items = []
    for name in visible_workflows(interlock, operator):
        m = interlock.runtime(name).manifest
        items.append(
            {
                "name": name,
                "version": m.version,
                "owner": m.owner,
                "objective": " ".join(m.objective.split()),
                **{f"pause_{k}": v for k, v in pause_state(interlock, name).items()},
            }
        )
    return items


def _figures(interlock: Interlock, workflow: str) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    report = weekly_figures(interlock.engine, workflow, today)
    rows = []
    for key, label, kind in FIGURES:
        figure = report["figures"].get(key)
        if figure is None:
            continue
        rows.append(
            {"label": label, "value": fmt(figure["value"], kind), "previous": fmt(figure["previous"], kind)}
        )
    rec = report.get("recommendation") or {}
    return {
        "week": report["week"],
        "rows": rows,
        "recommendation": str(rec.get("label") or rec.get("action") or ""),
        "rule": str(rec.get("rule") or ""),
    }


def workflow_page(interlock: Interlock, operator: Operator, name: str) -> dict[str, Any]:
    runtime = runtime_for(interlock, operator, name)
    model = operating_model(runtime.loaded)
    reads: dict[str, list[str]] = {}
    writes: dict[str, list[str]] = {}
    for spec in runtime.manifest.tools:
        system = words.system_of(spec.name, spec.upstream)
        (reads if spec.verb == "read" else writes).setdefault(system, []).append(spec.name)
    metric = model["success_metric"]
    target = metric.get("target")
    return {
        "name": runtime.name,
        "version": runtime.manifest.version,
        "version_id": runtime.version_id,
        "owner": model["owner"],
        "objective": model["objective"],
        "success_metric": metric.get("name", ""),
        "success_target": "" if target is None else f"{target:g} {metric.get('unit') or ''}".strip(),
        "out_of_scope": model["out_of_scope"],
        "environments": model["environments"],
        "agents": model["agents"],
        "systems_read": [{"system": k, "tools": v} for k, v in sorted(reads.items())],
        "systems_written": [{"system": k, "tools": v} for k, v in sorted(writes.items())],
        "tools": model["tools"],
        "runs_alone": model["runs_without_approval"],
        "needs_approval": model["needs_approval"],
        "forbidden": model["forbidden"],
        "stop_rules": model["stop_rules"],
        "budgets": budget_items(model["budgets"]),
        "approvals": approvals_text(runtime.manifest.approvals),
        "pause_owners": model["pause_owners"],
        "state": pause_state(interlock, runtime.name),
        "can_pause": may_pause_workflow(operator, runtime),
        "figures": _figures(interlock, runtime.name),
        "calibration": _calibration(interlock, runtime.name),
    }


# The workflow page judges calibration over four weeks: a week is often too few actions per agent.
CALIBRATION_DAYS = 28


def _calibration(interlock: Interlock, workflow: str) -> dict[str, Any]:
    end = time.time()
    data = calibration(interlock.engine, workflow, start=end - CALIBRATION_DAYS * 86_400, end=end)
    return calibration_view(data, window=f"The last {CALIBRATION_DAYS} days")


def agents_page(interlock: Interlock, operator: Operator) -> list[dict[str, Any]]:
    return [
        {
            "id": r.id,
            "workflow": r.workflow,
            "environment": r.environment,
            "status": r.status,
            "last_seen": words.fmt_time(r.last_seen_at) if r.last_seen_at else "never",
            "last_seen_ago": words.age(r.last_seen_at) + " ago" if r.last_seen_at else "",
            "created": words.fmt_time(r.created_at),
            "revoked": words.fmt_time(r.revoked_at) if r.revoked_at else "",
            "revoked_by": r.revoked_by or "",
            "can_revoke": r.status == "active" and may_admin_agents(operator, r.workflow),
        }
        for r in interlock.agents.list()
        if may_view(operator, r.workflow)
    ]


__all__ = ["FIGURES", "agents_page", "pause_state", "workflow_page", "workflows_list"]
