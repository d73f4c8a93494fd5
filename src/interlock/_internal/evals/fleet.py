"""The executive view: every workflow's figures for a week, the fleet's totals, eight weeks of each
figure for a week-over-week chart, and each workflow against the baseline its manifest declares.

Weeks are seven UTC days ending with ``week_ending`` (see weekly.py). Runs belong to the week they
started in; steps, decisions and approvals to the week they were created in. The figures:

- **autonomy rate** — tool actions that ran (executed or failed) without a person approving them
  ÷ tool actions that ran;
- **approvals** — approval requests; **approval latency** — median ``decided_at - created_at`` of
  approvals approved or rejected;
- **escalations** — steps handed to a person (status ``escalated``); **denials** — ``deny`` decisions;
- **spend** — ``cost_micros`` of the week's runs (tools and models), in USD; **budget** — seven
  times each workflow's ``budgets.per_workflow_day.max_cost_usd`` (workflows without one add none);
- **cost per completed task** — cost of completed runs ÷ completed runs;
- **cycle time** (median of completed runs) and **error rate** (failed ÷ ran), compared with the
  manifest's ``baseline`` (the team's figures before agents).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from interlock._internal.evals.weekly import DAY_S, fmt, fmt_delta, week_bounds
from interlock._internal.manifest.models import Manifest
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading
from interlock.exceptions import ConfigError

WEEKS = 8
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("autonomy_rate", "Autonomy rate (ran without a person)", "rate"),
    ("actions_ran", "Actions that ran", "count"),
    ("approvals", "Approvals requested", "count"),
    ("approval_latency_median_s", "Approval latency, median", "duration"),
    ("escalations", "Escalations", "count"),
    ("denials", "Denials", "count"),
    ("spend_usd", "Spend", "usd"),
    ("budget_usd", "Budget", "usd"),
    ("spend_of_budget", "Spend of budget", "rate"),
    ("cost_per_completed_usd", "Cost per completed task", "usd"),
    ("completed_runs", "Completed tasks", "count"),
    ("cycle_time_median_s", "Cycle time, median", "duration"),
    ("error_rate", "Error rate", "rate"),
)
KINDS = {name: kind for name, _, kind in FIGURES}
LABELS = {name: label for name, label, _ in FIGURES}
BASELINE = (
    ("cycle_time_median_s", "cycle_time_s", "duration"),
    ("error_rate", "error_rate", "rate"),
    ("cost_per_completed_usd", "cost_per_task_usd", "usd"),
)


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


class _Bucket:
    def __init__(self) -> None:
        self.ran = 0
        self.with_person = 0
        self.failed = 0
        self.approvals = 0
        self.latencies: list[float] = []
        self.escalations = 0
        self.denials = 0
        self.spend = 0
        self.completed = 0
        self.completed_cost = 0
        self.cycle: list[float] = []

    def figures(self, budget_usd: float | None) -> dict[str, float | None]:
        spend = self.spend / 1_000_000
        return {
            "autonomy_rate": (self.ran - self.with_person) / self.ran if self.ran else None,
            "actions_ran": self.ran,
            "approvals": self.approvals,
            "approval_latency_median_s": _median(self.latencies),
            "escalations": self.escalations,
            "denials": self.denials,
            "spend_usd": spend,
            "budget_usd": budget_usd,
            "spend_of_budget": spend / budget_usd if budget_usd else None,
            "cost_per_completed_usd": self.completed_cost / self.completed / 1_000_000
            if self.completed
            else None,
            "completed_runs": self.completed,
            "cycle_time_median_s": _median(self.cycle),
            "error_rate": self.failed / self.ran if self.ran else None,
        }


def fleet_figures(engine: Engine, manifests: list[Manifest], week_ending: date) -> dict[str, Any]:
    """Every figure of the executive view, as JSON-ready data (the console and the CLI share it)."""
    end_start, end = week_bounds(week_ending)
    start = end - WEEKS * 7 * DAY_S
    starts = [start + i * 7 * DAY_S for i in range(WEEKS)]
    names = sorted({m.name for m in manifests})
    by_name = {m.name: m for m in manifests}
    buckets: dict[str | None, list[_Bucket]] = {n: [_Bucket() for _ in starts] for n in [None, *names]}

    def week_of(ts: float) -> int | None:
        index = int((ts - start) // (7 * DAY_S))
        return index if 0 <= index < WEEKS else None

    def add(workflow: str | None, ts: float, what: str, value: Any = 1) -> None:
        index = week_of(ts)
        if index is None or workflow not in buckets:
            return
        for key in (None, workflow):
            bucket = buckets[key][index]
            current = getattr(bucket, what)
            if isinstance(current, list):
                current.append(value)
            else:
                setattr(bucket, what, current + value)

    with reading(engine) as conn:
        for run in conn.execute(
            select(
                t.runs.c.workflow,
                t.runs.c.state,
                t.runs.c.started_at,
                t.runs.c.ended_at,
                t.runs.c.cost_micros,
            ).where(t.runs.c.started_at >= start, t.runs.c.started_at < end)
        ):
            add(run.workflow, run.started_at, "spend", int(run.cost_micros or 0))
            if run.state == "completed":
                add(run.workflow, run.started_at, "completed")
                add(run.workflow, run.started_at, "completed_cost", int(run.cost_micros or 0))
                if run.ended_at is not None:
                    add(run.workflow, run.started_at, "cycle", float(run.ended_at - run.started_at))
        for step in conn.execute(
            select(t.runs.c.workflow, t.steps.c.status, t.steps.c.created_at, t.decisions.c.reasons)
            .select_from(
                t.steps.join(t.runs, t.runs.c.id == t.steps.c.run_id).outerjoin(
                    t.decisions, t.decisions.c.id == t.steps.c.decision_id
                )
            )
            .where(
                t.steps.c.created_at >= start,
                t.steps.c.created_at < end,
                t.steps.c.kind == "tool",
                t.steps.c.status.in_(["executed", "failed", "escalated"]),
            )
        ):
            if step.status == "escalated":
                add(step.workflow, step.created_at, "escalations")
                continue
            add(step.workflow, step.created_at, "ran")
            if step.status == "failed":
                add(step.workflow, step.created_at, "failed")
            codes = {r.get("code") for r in step.reasons or [] if isinstance(r, dict)}
            if "approved" in codes:
                add(step.workflow, step.created_at, "with_person")
        for row in conn.execute(
            select(t.decisions.c.workflow, t.decisions.c.created_at).where(
                t.decisions.c.created_at >= start,
                t.decisions.c.created_at < end,
                t.decisions.c.decision == "deny",
            )
        ):
            add(row.workflow, row.created_at, "denials")
        for approval in conn.execute(
            select(
                t.approvals.c.workflow,
                t.approvals.c.created_at,
                t.approvals.c.decided_at,
                t.approvals.c.state,
            ).where(t.approvals.c.created_at >= start, t.approvals.c.created_at < end)
        ):
            add(approval.workflow, approval.created_at, "approvals")
            if approval.decided_at is not None and approval.state in ("approved", "rejected"):
                add(
                    approval.workflow,
                    approval.created_at,
                    "latencies",
                    float(approval.decided_at - approval.created_at),
                )

    def budget(name: str | None) -> float | None:
        chosen = names if name is None else [name]
        caps = [by_name[n].budgets.per_workflow_day.max_cost_usd for n in chosen]
        declared = [c for c in caps if c is not None]
        return sum(declared) * 7 if declared else None

    def figures_of(name: str | None) -> dict[str, Any]:
        series = [b.figures(budget(name)) for b in buckets[name]]
        out: dict[str, Any] = {}
        for figure, _, _ in FIGURES:
            values = [s[figure] for s in series]
            value, previous = values[-1], values[-2]
            out[figure] = {
                "value": value,
                "previous": previous,
                "delta": None if value is None or previous is None else value - previous,
                "series": values,
            }
        return out

    workflows = []
    for name in names:
        figures = figures_of(name)
        declared = by_name[name].baseline
        base: dict[str, Any] | None = None
        if declared is not None:
            base = {"description": declared.description}
            for figure, key, _ in BASELINE:
                before = getattr(declared, key)
                now = figures[figure]["value"]
                base[figure] = {
                    "baseline": before,
                    "value": now,
                    "change": None if before is None or now is None else now - before,
                    "ratio": None if not before or now is None else now / before,
                }
        workflows.append(
            {"workflow": name, "owner": by_name[name].owner, "figures": figures, "baseline": base}
        )
    return {
        "week": {"start": _day(end_start), "end": week_ending.isoformat()},
        "weeks": [_day(s + 6 * DAY_S) for s in starts],
        "fleet": {"workflows": len(names), "figures": figures_of(None)},
        "workflows": workflows,
    }


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


# ---- rendering ----------------------------------------------------------------------------------


def chart(series: list[float | None], weeks: list[str], kind: str) -> dict[str, Any]:
    """Bars for eight weeks of one figure: coordinates for an inline SVG, and a title per bar."""
    width, height, bottom = 240, 46, 12
    peak = max([v for v in series if v is not None] + [0.0]) or 1.0
    slot = width / len(series)
    bars = []
    for i, value in enumerate(series):
        h = 0.0 if value is None else value / peak * (height - bottom - 4)
        bars.append(
            {
                "x": round(i * slot + slot * 0.15, 1),
                "y": round(height - bottom - h, 1),
                "w": round(slot * 0.7, 1),
                "h": round(h, 1),
                "title": f"week ending {weeks[i]}: {fmt(value, kind)}",
                "last": i == len(series) - 1,
            }
        )
    return {
        "width": width,
        "height": height,
        "bars": bars,
        "axis": height - bottom,
        "first": weeks[0][5:],
        "last": weeks[-1][5:],
    }


def view_rows(report: dict[str, Any]) -> dict[str, Any]:
    """What the HTML page and the console page show: formatted figures with their charts."""
    weeks = report["weeks"]

    def rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for name, label, kind in FIGURES:
            f = figures[name]
            out.append(
                {
                    "name": name,
                    "label": label,
                    "value": fmt(f["value"], kind),
                    "previous": fmt(f["previous"], kind),
                    "delta": fmt_delta(f["delta"], kind),
                    "chart": chart(f["series"], weeks, kind),
                }
            )
        return out

    workflows = []
    for w in report["workflows"]:
        base = []
        if w["baseline"] is not None:
            for figure, _, kind in BASELINE:
                b = w["baseline"][figure]
                base.append(
                    {
                        "label": LABELS[figure],
                        "baseline": fmt(b["baseline"], kind),
                        "value": fmt(b["value"], kind),
                        "change": fmt_delta(b["change"], kind),
                    }
                )
        workflows.append(
            {
                "workflow": w["workflow"],
                "owner": w["owner"],
                "rows": rows(w["figures"]),
                "baseline": base,
                "baseline_note": (w["baseline"] or {}).get("description"),
            }
        )
    return {"fleet": rows(report["fleet"]["figures"]), "workflows": workflows}


def render_fleet_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page: inline CSS and SVG, no scripts, no external files."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, select_autoescape

    templates = Path(__file__).resolve().parent.parent / "ui" / "templates"
    env = Environment(
        loader=FileSystemLoader(str(templates)),
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
    )
    try:
        return env.get_template("fleet_report.html").render(r=report, v=view_rows(report))
    except TemplateError as exc:
        raise ConfigError(f"fleet report template: {exc}") from exc


def write_fleet_report(
    engine: Engine, manifests: list[Manifest], *, week_ending: date, out_dir: Path
) -> tuple[Path, Path, dict[str, Any]]:
    """Write ``fleet-<date>.html`` and ``.json`` into ``out_dir``; return both paths and the data."""
    report = fleet_figures(engine, manifests, week_ending)
    report["generated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    stem = f"fleet-{week_ending.isoformat()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        html_path, json_path = out_dir / f"{stem}.html", out_dir / f"{stem}.json"
        json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        html_path.write_text(render_fleet_html(report), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the fleet report to {out_dir}: {exc.strerror}") from exc
    return html_path, json_path, report


__all__ = ["FIGURES", "chart", "fleet_figures", "render_fleet_html", "view_rows", "write_fleet_report"]
