"""The weekly review: one workflow's week in figures, against the week before and its success metric,
ending in a recommendation to scale, tighten, or pause and redesign.

A week is seven UTC days ending with ``week_ending`` (inclusive). Runs belong to the week they
started in; steps, decisions and approvals to the week they were created in. The figures:

- **cycle time** — ``ended_at - started_at`` of completed runs: median, and p90 by nearest rank;
- **error rate** — failed steps ÷ (executed + failed steps);
- **escalation rate** — runs that escalated (state ``escalated`` or any escalated step) ÷ runs;
- **denial rate** — ``deny`` decisions ÷ all decisions;
- **cost per completed task** — ``cost_micros`` summed over completed runs ÷ completed runs, in USD;
- **approval latency** — median ``decided_at - created_at`` of approvals approved or rejected;
- **model spend per tier** — model calls by tier, and what the same tokens would have cost a tier
  up (:mod:`interlock._internal.evals.model_spend`);
- **success rate** — runs completed without an escalation ÷ runs no longer running. This stands in
  for the manifest's success metric, which Interlock cannot observe directly; its ``target`` (a
  ratio, or a percentage when ``unit`` is ``%``/``percent`` or the target is above 1) is the bar.

The recommendation follows :data:`RULES`, first match wins; the report prints each rule and the
figures it looked at, so a reader can check the conclusion by hand. Below :data:`MIN_RUNS` runs in
the week there is no recommendation, only "Not enough data": with fewer runs a single run moves a
rate by more than ten points, as much as the thresholds themselves. A workflow this database has
never seen is refused rather than reported on as an empty week.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from interlock._internal.evals.cache_review import read_cache
from interlock._internal.evals.calibration import calibration, calibration_view
from interlock._internal.evals.model_spend import model_spend, routing_of
from interlock._internal.store.engine import reading
from interlock._internal.store.tables import approvals, decisions, runs, steps, workflow_versions, workflows
from interlock.exceptions import ArgumentsInvalid, ConfigError, NotFound

DAY_S = 86_400
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$")
DECISIONS = ("allow", "require_approval", "escalate", "deny")

# The thresholds, named once: the code, the JSON and the HTML all read them from here.
PAUSE_ERROR_RATE = 0.10
PAUSE_ESCALATION_RATE = 0.30
TIGHTEN_DENIAL_RATE = 0.20
TIGHTEN_APPROVAL_LATENCY_S = 4 * 3600.0

RULES: tuple[tuple[str, str], ...] = (
    ("pause_and_redesign", "error rate > 10% or escalation rate > 30%"),
    ("tighten", "denial rate > 20% or median approval latency > 4 h"),
    ("scale", "none of the above, and the success metric meets its target"),
    (
        "tighten",
        "none of the above, but the success metric is below target or not measurable: "
        "keep the current scope and fix what holds it back",
    ),
)
ACTIONS = {
    "scale": "Scale",
    "tighten": "Tighten",
    "pause_and_redesign": "Pause and redesign",
    "not_enough_data": "Not enough data",
}
# The smallest week the rules are applied to (documented in docs/operations.md).
MIN_RUNS = 10


def week_bounds(week_ending: date) -> tuple[float, float]:
    """[start, end) in epoch seconds of the seven UTC days ending with ``week_ending``."""
    start = datetime(week_ending.year, week_ending.month, week_ending.day, tzinfo=UTC) - timedelta(days=6)
    return start.timestamp(), start.timestamp() + 7 * DAY_S


def default_week_ending(now: float | None = None) -> date:
    """Yesterday (UTC): the last whole day."""
    return (datetime.fromtimestamp(time.time() if now is None else now, UTC) - timedelta(days=1)).date()


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def p90(values: Sequence[float]) -> float | None:
    """Nearest-rank 90th percentile: the smallest value with at least 90% of values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)])


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _week(conn: Connection, workflow: str, start: float, end: float) -> dict[str, Any]:
    run_rows = conn.execute(
        select(
            runs.c.id,
            runs.c.state,
            runs.c.started_at,
            runs.c.ended_at,
            runs.c.cost_micros,
            runs.c.workflow_version_id,
        ).where(runs.c.workflow == workflow, runs.c.started_at >= start, runs.c.started_at < end)
    ).all()
    run_ids = {r.id for r in run_rows}
    escalated_steps = {
        row[0]
        for row in conn.execute(
            select(steps.c.run_id)
            .select_from(steps.join(runs, runs.c.id == steps.c.run_id))
            .where(
                runs.c.workflow == workflow,
                runs.c.started_at >= start,
                runs.c.started_at < end,
                steps.c.status == "escalated",
            )
            .distinct()
        )
    }
    escalated = {r.id for r in run_rows if r.state == "escalated"} | (escalated_steps & run_ids)
    completed = [r for r in run_rows if r.state == "completed"]
    cycle = [float(r.ended_at - r.started_at) for r in completed if r.ended_at is not None]
    finished = [r for r in run_rows if r.state != "running"]
    successes = [r for r in completed if r.id not in escalated]

    status_counts = Counter(
        row[0]
        for row in conn.execute(
            select(steps.c.status)
            .select_from(steps.join(runs, runs.c.id == steps.c.run_id))
            .where(runs.c.workflow == workflow, steps.c.created_at >= start, steps.c.created_at < end)
        )
    )
    executed, failed = status_counts.get("executed", 0), status_counts.get("failed", 0)

    decision_rows = conn.execute(
        select(decisions.c.decision, decisions.c.created_at, decisions.c.reasons).where(
            decisions.c.workflow == workflow, decisions.c.created_at >= start, decisions.c.created_at < end
        )
    ).all()
    by_decision = Counter(r.decision for r in decision_rows)
    by_day: list[dict[str, Any]] = []
    for offset in range(7):
        day_start = start + offset * DAY_S
        counts = Counter(r.decision for r in decision_rows if day_start <= r.created_at < day_start + DAY_S)
        by_day.append(
            {
                "date": datetime.fromtimestamp(day_start, UTC).date().isoformat(),
                **{d: counts.get(d, 0) for d in DECISIONS},
            }
        )
    denial_reasons: Counter[str] = Counter()
    for row in decision_rows:
        if row.decision == "deny":
            for reason in row.reasons or []:
                code = reason.get("code") if isinstance(reason, dict) else None
                denial_reasons[str(code or "unspecified")] += 1

    latencies = [
        float(r.decided_at - r.created_at)
        for r in conn.execute(
            select(approvals.c.created_at, approvals.c.decided_at).where(
                approvals.c.workflow == workflow,
                approvals.c.created_at >= start,
                approvals.c.created_at < end,
                approvals.c.decided_at.is_not(None),
                approvals.c.state.in_(["approved", "rejected"]),
            )
        )
    ]
    cost_micros = sum(int(r.cost_micros or 0) for r in completed)
    return {
        "figures": {
            "runs": len(run_rows),
            "completed_runs": len(completed),
            "escalated_runs": len(escalated),
            "cycle_time_median_s": median(cycle),
            "cycle_time_p90_s": p90(cycle),
            "error_rate": _ratio(failed, executed + failed),
            "escalation_rate": _ratio(len(escalated), len(run_rows)),
            "denial_rate": _ratio(by_decision.get("deny", 0), len(decision_rows)),
            "cost_per_completed_usd": (cost_micros / len(completed) / 1_000_000) if completed else None,
            "approval_latency_median_s": median(latencies),
            "success_rate": _ratio(len(successes), len(finished)),
        },
        "counts": {
            "steps_executed": executed,
            "steps_failed": failed,
            "decisions": len(decision_rows),
            "approvals_decided": len(latencies),
            "runs_finished": len(finished),
            "runs_succeeded": len(successes),
            "cost_completed_micros": cost_micros,
        },
        "actions_by_decision": {d: by_decision.get(d, 0) for d in DECISIONS},
        "decisions_by_day": by_day,
        "denial_reasons": dict(denial_reasons),
        # Which manifest version each run used (a canary rollout runs two at once).
        "runs_by_version": dict(Counter(str(r.workflow_version_id) for r in run_rows)),
    }


def _active_manifest(conn: Connection, workflow: str) -> Any:
    """The workflow's active manifest as parsed YAML, or None."""
    text = conn.execute(
        select(workflow_versions.c.manifest)
        .select_from(
            workflows.join(workflow_versions, workflow_versions.c.id == workflows.c.active_version_id)
        )
        .where(workflows.c.name == workflow)
    ).scalar()
    return None if text is None else yaml.safe_load(text)


def _success_metric(conn: Connection, workflow: str) -> dict[str, Any] | None:
    text = conn.execute(
        select(workflow_versions.c.manifest)
        .select_from(
            workflows.join(workflow_versions, workflow_versions.c.id == workflows.c.active_version_id)
        )
        .where(workflows.c.name == workflow)
    ).scalar()
    if text is None:
        return None
    data = yaml.safe_load(text)
    metric = data.get("success_metric") if isinstance(data, dict) else None
    return metric if isinstance(metric, dict) else None


def _target_ratio(metric: dict[str, Any] | None) -> float | None:
    target = None if metric is None else metric.get("target")
    if not isinstance(target, (int, float)) or isinstance(target, bool):
        return None
    unit = str(metric.get("unit") or "").strip().lower() if metric else ""
    return float(target) / 100 if unit in ("%", "percent", "pct") or target > 1 else float(target)


def recommend(figures: dict[str, Any], success: dict[str, Any]) -> dict[str, Any]:
    """Apply :data:`RULES` to one week's figures; returns the action, the rule and every check made."""

    def above(name: str, limit: float) -> dict[str, Any]:
        value = figures.get(name)
        return {
            "figure": name,
            "value": value,
            "threshold": limit,
            "fired": value is not None and value > limit,
        }

    pause = [above("error_rate", PAUSE_ERROR_RATE), above("escalation_rate", PAUSE_ESCALATION_RATE)]
    tighten = [
        above("denial_rate", TIGHTEN_DENIAL_RATE),
        above("approval_latency_median_s", TIGHTEN_APPROVAL_LATENCY_S),
    ]
    met = {
        "figure": "success_rate",
        "value": success["value"],
        "threshold": success["target_ratio"],
        "fired": bool(success["met"]),
    }
    rules = [{"number": i + 1, "action": a, "label": ACTIONS[a], "rule": r} for i, (a, r) in enumerate(RULES)]
    runs = figures.get("runs")
    if isinstance(runs, int) and runs < MIN_RUNS:
        return {
            "action": "not_enough_data",
            "label": ACTIONS["not_enough_data"],
            "rule": f"{runs} run{'' if runs == 1 else 's'} this week; the rules need at least {MIN_RUNS}, "
            "so no recommendation is made",
            "rule_number": 0,
            "checks": [{"figure": "runs", "value": runs, "threshold": MIN_RUNS, "fired": True}],
            "rules": rules,
            "min_runs": MIN_RUNS,
        }
    if any(c["fired"] for c in pause):
        index, checks = 0, pause
    elif any(c["fired"] for c in tighten):
        index, checks = 1, [*pause, *tighten]
    elif met["fired"]:
        index, checks = 2, [*pause, *tighten, met]
    else:
        index, checks = 3, [*pause, *tighten, met]
    action, rule = RULES[index]
    return {
        "action": action,
        "label": ACTIONS[action],
        "rule": rule,
        "rule_number": index + 1,
        "checks": checks,
        "rules": rules,
        "min_runs": MIN_RUNS,
    }


def weekly_figures(engine: Engine, workflow: str, week_ending: date) -> dict[str, Any]:
    """Every figure of the weekly review for ``workflow``, as JSON-ready data (the console reuses it).

    Keys: ``workflow``, ``week`` and ``previous_week`` (start/end dates), ``figures`` (each with
    ``value``, ``previous``, ``delta``), ``counts``, ``actions_by_decision``, ``decisions_by_day``,
    ``top_denial_reasons``, ``runs_by_version`` (the manifest version each run started on),
    ``success_metric``, ``model_tiers`` (spend per model tier and the cost a tier up),
    ``recommendation``, ``calibration`` (each agent's stated confidence against outcomes this
    week, see :mod:`interlock._internal.evals.calibration`) and ``read_cache`` (reads of cached
    tools answered from the cache, see :mod:`interlock._internal.evals.cache_review`).
    """
    start, end = week_bounds(week_ending)
    prev_start, prev_end = start - 7 * DAY_S, start
    with reading(engine) as conn:
        known = sorted(str(r[0]) for r in conn.execute(select(workflows.c.name)))
        if workflow not in known:
            close = difflib.get_close_matches(workflow, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known) or 'none'}"
            raise NotFound(f"no workflow {workflow!r} in this database{hint}", code="unknown_workflow")
        this = _week(conn, workflow, start, end)
        prev = _week(conn, workflow, prev_start, prev_end)
        metric = _success_metric(conn, workflow)
        cache = read_cache(conn, workflow, start=start, end=end, prev_start=prev_start, prev_end=prev_end)
        tiers = model_spend(conn, workflow, start, end, routing_of(_active_manifest(conn, workflow)))
    figures = {
        name: {
            "value": value,
            "previous": prev["figures"][name],
            "delta": _delta(value, prev["figures"][name]),
        }
        for name, value in this["figures"].items()
    }
    target = _target_ratio(metric)
    value = this["figures"]["success_rate"]
    success = {
        "name": None if metric is None else metric.get("name"),
        "target": None if metric is None else metric.get("target"),
        "unit": None if metric is None else metric.get("unit"),
        "target_ratio": target,
        "measured_as": "runs completed without an escalation / runs no longer running",
        "value": value,
        "previous": prev["figures"]["success_rate"],
        "met": None if target is None or value is None else value >= target,
    }
    reasons = Counter(this["denial_reasons"])
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return {
        "workflow": workflow,
        "week": {"start": _day(start), "end": week_ending.isoformat()},
        "previous_week": {"start": _day(prev_start), "end": _day(prev_end - DAY_S)},
        "figures": figures,
        "counts": {k: {"value": v, "previous": prev["counts"][k]} for k, v in this["counts"].items()},
        "actions_by_decision": {
            d: {
                "value": n,
                "previous": prev["actions_by_decision"][d],
                "delta": n - prev["actions_by_decision"][d],
            }
            for d, n in this["actions_by_decision"].items()
        },
        "decisions_by_day": this["decisions_by_day"],
        "top_denial_reasons": [
            {"code": code, "count": n, "previous": int(prev["denial_reasons"].get(code, 0))}
            for code, n in top
        ],
        "runs_by_version": [
            {
                "version": v,
                "runs": int(this["runs_by_version"].get(v, 0)),
                "previous": int(prev["runs_by_version"].get(v, 0)),
            }
            for v in sorted({*this["runs_by_version"], *prev["runs_by_version"]})
        ],
        "success_metric": success,
        "model_tiers": tiers,
        "thresholds": {
            "pause_error_rate": PAUSE_ERROR_RATE,
            "pause_escalation_rate": PAUSE_ESCALATION_RATE,
            "tighten_denial_rate": TIGHTEN_DENIAL_RATE,
            "tighten_approval_latency_s": TIGHTEN_APPROVAL_LATENCY_S,
        },
        "recommendation": recommend(this["figures"], success),
        "calibration": calibration(engine, workflow, start=start, end=end),
        "read_cache": cache,
    }


def _delta(value: float | None, previous: float | None) -> float | None:
    return None if value is None or previous is None else value - previous


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


# ---- rendering ------------------------------------------------------------------------------------

_LABELS = {
    "runs": ("Runs", "count"),
    "completed_runs": ("Completed runs", "count"),
    "escalated_runs": ("Escalated runs", "count"),
    "cycle_time_median_s": ("Cycle time, median", "duration"),
    "cycle_time_p90_s": ("Cycle time, p90", "duration"),
    "error_rate": ("Error rate", "rate"),
    "escalation_rate": ("Escalation rate", "rate"),
    "denial_rate": ("Denial rate", "rate"),
    "cost_per_completed_usd": ("Cost per completed task", "usd"),
    "approval_latency_median_s": ("Approval latency, median", "duration"),
    "success_rate": ("Success rate (metric proxy)", "rate"),
}
_COLORS = {"allow": "#2e7d32", "require_approval": "#f9a825", "escalate": "#6a1b9a", "deny": "#c62828"}


def fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "rate":
        return f"{value * 100:.1f}%"
    if kind == "usd":
        return f"${value:,.4f}" if abs(value) < 1 else f"${value:,.2f}"
    if kind == "duration":
        return _duration(value)
    return f"{value:,.0f}"


def fmt_delta(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    sign = "+" if value > 0 else "-" if value < 0 else "±"
    if kind == "rate":
        return f"{sign}{abs(value) * 100:.1f} pp"
    return sign + fmt(abs(value), kind)


def _duration(seconds: float) -> str:
    s = abs(seconds)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    if s < DAY_S:
        return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"
    return f"{int(s // DAY_S)}d {int(s % DAY_S // 3600):02d}h"


def _check_kind(figure: str) -> str:
    return _LABELS.get(figure, (figure, "rate"))[1]


def _decisions_chart(days: list[dict[str, Any]]) -> dict[str, Any]:
    width, height, left, bottom, top = 640, 240, 40, 30, 16
    plot_h = height - bottom - top
    peak = max([sum(d[k] for k in DECISIONS) for d in days] + [1])
    slot = (width - left - 10) / len(days)
    bars, labels = [], []
    for i, day in enumerate(days):
        x = left + i * slot + slot * 0.2
        y = height - bottom
        for kind in DECISIONS:
            h = day[kind] / peak * plot_h
            if h > 0:
                y -= h
                bars.append(
                    {
                        "x": round(x, 1),
                        "y": round(y, 1),
                        "w": round(slot * 0.6, 1),
                        "h": round(h, 1),
                        "color": _COLORS[kind],
                        "title": f"{day['date']}: {day[kind]} {kind}",
                    }
                )
        total = sum(day[k] for k in DECISIONS)
        labels.append(
            {
                "x": round(x + slot * 0.3, 1),
                "date": day["date"][5:],
                "total": total,
                "total_y": round(y - 4, 1),
            }
        )
    return {
        "width": width,
        "height": height,
        "bars": bars,
        "labels": labels,
        "peak": peak,
        "axis_y": height - bottom,
        "left": left,
        "top": top,
        "legend": [{"name": k, "color": _COLORS[k]} for k in DECISIONS],
    }


def _reasons_chart(reasons: list[dict[str, Any]]) -> dict[str, Any]:
    width, row_h, label_w = 640, 26, 220
    peak = max([r["count"] for r in reasons] + [1])
    bars = [
        {
            "y": i * row_h + 4,
            "w": round(r["count"] / peak * (width - label_w - 60), 1),
            "code": r["code"],
            "count": r["count"],
        }
        for i, r in enumerate(reasons)
    ]
    return {"width": width, "height": max(row_h, len(reasons) * row_h + 8), "label_w": label_w, "bars": bars}


def render_weekly_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page: inline CSS and SVG, no scripts, no external files."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, select_autoescape

    rows = []
    for name, fig in report["figures"].items():
        label, kind = _LABELS.get(name, (name, "count"))
        rows.append(
            {
                "name": name,
                "label": label,
                "value": fmt(fig["value"], kind),
                "previous": fmt(fig["previous"], kind),
                "delta": fmt_delta(fig["delta"], kind),
            }
        )
    checks = [
        {
            **c,
            "label": _LABELS.get(c["figure"], (c["figure"], ""))[0],
            "value_text": fmt(c["value"], _check_kind(c["figure"])),
            "threshold_text": fmt(c["threshold"], _check_kind(c["figure"])),
        }
        for c in report["recommendation"]["checks"]
    ]
    templates = Path(__file__).resolve().parent.parent / "ui" / "templates"
    env = Environment(
        loader=FileSystemLoader(str(templates)),
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
    )
    try:
        return env.get_template("weekly_report.html").render(
            r=report,
            rows=rows,
            checks=checks,
            success_value=fmt(report["success_metric"]["value"], "rate"),
            success_target=fmt(report["success_metric"]["target_ratio"], "rate"),
            decisions_chart=_decisions_chart(report["decisions_by_day"]),
            reasons_chart=_reasons_chart(report["top_denial_reasons"]),
            colors=_COLORS,
            calibration=calibration_view(report["calibration"], window="This week"),
            fmt_rate=lambda v: fmt(v, "rate"),
        )
    except TemplateError as exc:
        raise ConfigError(f"weekly report template: {exc}") from exc


def write_weekly_report(
    engine: Engine, workflow: str, *, week_ending: date, out_dir: Path
) -> tuple[Path, Path, dict[str, Any]]:
    """Write ``weekly-<workflow>-<date>.html`` and ``.json`` into ``out_dir``; return both paths and the data.

    Raises :class:`ArgumentsInvalid` for a workflow name that is not a manifest name (it becomes part
    of a file name).
    """
    if not _NAME.match(workflow):
        raise ArgumentsInvalid(f"workflow {workflow!r} is not a workflow name", field="workflow")
    report = weekly_figures(engine, workflow, week_ending)
    report["generated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    stem = f"weekly-{workflow}-{week_ending.isoformat()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        html_path, json_path = out_dir / f"{stem}.html", out_dir / f"{stem}.json"
        json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        html_path.write_text(render_weekly_html(report), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the weekly report to {out_dir}: {exc.strerror}") from exc
    return html_path, json_path, report


__all__ = [
    "MIN_RUNS",
    "RULES",
    "default_week_ending",
    "median",
    "p90",
    "recommend",
    "render_weekly_html",
    "week_bounds",
    "weekly_figures",
    "write_weekly_report",
]
