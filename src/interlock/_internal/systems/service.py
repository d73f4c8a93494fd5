"""What the graph command and the Systems page read: the registered workflows, this week's activity
per system and environment, and a drawing of the graph laid out in columns (SVG coordinates)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from interlock._internal.manifest.models import Manifest
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading
from interlock.exceptions import InterlockError

WEEK_S = 7 * 86_400


def registered_manifests(engine: Engine) -> tuple[list[Manifest], list[str]]:
    """Every workflow's active manifest in the database, and a line per one that no longer loads
    here (its shared systems file or policies moved, say)."""
    from interlock._internal.manifest.loader import load_manifest_text

    with reading(engine) as conn:
        rows = conn.execute(
            select(
                t.workflow_versions.c.id, t.workflow_versions.c.manifest, t.workflow_versions.c.source_path
            )
            .select_from(
                t.workflows.join(
                    t.workflow_versions, t.workflow_versions.c.id == t.workflows.c.active_version_id
                )
            )
            .order_by(t.workflows.c.name)
        ).all()
    out: list[Manifest] = []
    problems: list[str] = []
    for row in rows:
        source = Path(row.source_path) if row.source_path else None
        base_dir = source.parent if source is not None and source.parent.is_dir() else Path.cwd()
        try:
            out.append(
                load_manifest_text(row.manifest, file=str(source or row.id), base_dir=base_dir).manifest
            )
        except InterlockError as exc:
            problems.append(f"{row.id}: {exc}")
    return out, problems


def activity(engine: Engine, manifests: list[Manifest], *, now: float | None = None) -> dict[str, Any]:
    """Decisions of the last seven days per system and environment, by outcome."""
    since = (time.time() if now is None else now) - WEEK_S
    system_of = {(m.name, tool.name): tool.system or "(no system)" for m in manifests for tool in m.tools}
    with reading(engine) as conn:
        rows = conn.execute(
            select(
                t.decisions.c.workflow,
                t.decisions.c.tool,
                t.decisions.c.environment,
                t.decisions.c.decision,
                func.count().label("n"),
            )
            .where(t.decisions.c.created_at >= since)
            .group_by(
                t.decisions.c.workflow, t.decisions.c.tool, t.decisions.c.environment, t.decisions.c.decision
            )
        ).all()
    out: dict[str, dict[str, Counter[str]]] = {}
    for row in rows:
        system = system_of.get((row.workflow, row.tool))
        if system is None:
            continue
        out.setdefault(system, {}).setdefault(row.environment or "?", Counter())[row.decision] += int(row.n)
    return {system: {env: dict(c) for env, c in envs.items()} for system, envs in out.items()}


# ---- drawing ------------------------------------------------------------------------------------

_COLUMNS = ("workflow", "agent", "tool", "system", "data_class", "environment")
_DRAWN_EDGES = ("has_agent", "may", "acts_on", "holds", "bound_in")
_FILL = {
    "workflow": "#e3f2fd",
    "agent": "#fff3e0",
    "tool": "#f5f5f5",
    "system": "#e8f5e9",
    "data_class": "#fce4ec",
    "environment": "#ede7f6",
}
_TITLES = {
    "workflow": "Workflows",
    "agent": "Agents",
    "tool": "Tools",
    "system": "Systems",
    "data_class": "Data classes",
    "environment": "Environments",
}


def layout(graph: dict[str, Any]) -> dict[str, Any]:
    """Column positions for every node and a path for every drawn edge, for an inline SVG."""
    col_w, box_w, box_h, gap, top = 150, 136, 34, 14, 40
    columns: dict[str, list[dict[str, Any]]] = {kind: [] for kind in _COLUMNS}
    for n in graph["nodes"]:
        columns[n["kind"]].append(n)
    pos: dict[str, tuple[float, float]] = {}
    boxes = []
    for c, kind in enumerate(_COLUMNS):
        for r, n in enumerate(columns[kind]):
            x, y = 10 + c * col_w, top + r * (box_h + gap)
            pos[n["id"]] = (x, y)
            sub = ""
            if kind == "system" and "tier" in n:
                sub = f"tier {n['tier']}"
            elif kind in ("agent", "tool") and n.get("workflow"):
                sub = n["workflow"]
            boxes.append(
                {
                    "x": x,
                    "y": y,
                    "w": box_w,
                    "h": box_h,
                    "label": n["label"][:21],
                    "sub": sub,
                    "fill": _FILL[kind],
                    "kind": kind,
                    "id": n["id"],
                }
            )
    lines = []
    for e in graph["edges"]:
        if e["kind"] not in _DRAWN_EDGES or e["source"] not in pos or e["target"] not in pos:
            continue
        (x1, y1), (x2, y2) = pos[e["source"]], pos[e["target"]]
        if x2 < x1:
            (x1, y1), (x2, y2) = (x2, y2), (x1, y1)
        sx, sy, tx, ty = x1 + box_w, y1 + box_h / 2, x2, y2 + box_h / 2
        mid = (sx + tx) / 2
        color = "#9e9e9e"
        if e["kind"] == "may":
            color = (
                "#c62828"
                if "forbidden" in e["outcomes"]
                else "#f9a825"
                if "approval" in e["outcomes"]
                else "#2e7d32"
            )
        lines.append(
            {
                "d": f"M{sx:.0f},{sy:.0f} C{mid:.0f},{sy:.0f} {mid:.0f},{ty:.0f} {tx:.0f},{ty:.0f}",
                "color": color,
                "kind": e["kind"],
            }
        )
    rows = max([len(v) for v in columns.values()] + [1])
    return {
        "width": 10 + len(_COLUMNS) * col_w,
        "height": top + rows * (box_h + gap) + 10,
        "boxes": boxes,
        "lines": lines,
        "titles": [{"x": 10 + c * col_w, "label": _TITLES[k]} for c, k in enumerate(_COLUMNS)],
    }


__all__ = ["activity", "layout", "registered_manifests"]
