"""Calibration: does an agent's stated confidence match how its actions turned out?

An agent may state a confidence (0 to 1) with each action (``act(..., confidence=0.8)``, the HTTP
body's ``confidence``, MCP ``_meta["interlock/confidence"]``); the manifest's ``confidence`` section
and ``low_confidence`` stop rules route on it. Routing on a number is only as good as the number, so
for each agent every action it stated a confidence for, in a window, is matched with its outcome:

- ``approved`` — a person approved it (or resumed the run at its handoff unchanged);
- ``ran`` — it ran without review and did not fail;
- ``rejected`` — a person rejected it (or stopped the run at its handoff);
- ``corrected`` — a person resumed it with edited arguments;
- ``failed`` — it ran (alone or once approved) and the tool failed.

``approved`` and ``ran`` count as right, the other three as wrong. Actions still waiting for a person,
denied by policy, refused as invalid or limited, expired or cancelled approvals and outcome-unknown
calls have no outcome that judges the agent, and are left out (``undecided`` counts those waiting).

The actions fall into ten buckets of stated confidence, ``[0.0, 0.1)`` … ``[0.9, 1.0]``. Per bucket:
the sample size ``n``, the mean stated confidence, the share that turned out right, and the gap
between the two. The **expected calibration error** (ECE) is the gap averaged over buckets weighted
by their size, ``Σ n_b/N · |right_b - confidence_b|``: 0 for an agent whose 80%-sure actions are
right 80% of the time, 0.3 for one that says 90% and is right 60% of the time. Below
:data:`MIN_SAMPLES` judged actions an agent gets "not enough data" instead of an error figure: with
thirty actions spread over a few buckets, one action moves a bucket's share by more than ten points.
Buckets with fewer than :data:`MIN_BUCKET` actions are drawn faded.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.engine import Engine

from interlock._internal.store.engine import reading
from interlock._internal.store.tables import approvals, handoffs, runs, steps

OUTCOMES = ("approved", "ran", "rejected", "corrected", "failed")
RIGHT = frozenset({"approved", "ran"})
BUCKETS = 10
# The smallest sample an agent's calibration error is given for (documented in docs/operations.md).
MIN_SAMPLES = 30
# A bucket with fewer actions than this is shown, but faded: its share is mostly noise.
MIN_BUCKET = 5
# An ECE at or under this is "well calibrated": within five points on average.
WELL_CALIBRATED_ECE = 0.05

_HANDOFF_OUTCOMES = {"resume": "approved", "resume_with_arguments": "corrected", "stop": "rejected"}


def bucket_of(confidence: float) -> int:
    """0 … 9; 1.0 falls in the last bucket. The epsilon keeps 0.3 (0.30000000000000004 * 10) in 3."""
    return max(0, min(BUCKETS - 1, math.floor(confidence * BUCKETS + 1e-9)))


def judged_actions(
    engine: Engine, workflow: str, *, start: float, end: float
) -> list[tuple[str, float, str]]:
    """``(agent, confidence, outcome)`` of every action of ``workflow`` created in ``[start, end)`` with
    a stated confidence and an outcome that judges it; ``outcome`` is ``undecided`` while a person
    has still to decide."""
    # One statement, one pass over the window's steps: each step with its approval (if it asked
    # for one) and its handoff (if a stop rule held it), both found through their run_id index.
    query = (
        select(
            steps.c.status,
            steps.c.confidence,
            runs.c.agent_id,
            approvals.c.state.label("approval_state"),
            approvals.c.outcome.label("approval_outcome"),
            handoffs.c.state.label("handoff_state"),
            handoffs.c.resolution.label("handoff_resolution"),
        )
        .select_from(
            steps.join(runs, runs.c.id == steps.c.run_id)
            .outerjoin(
                approvals,
                and_(
                    approvals.c.run_id == steps.c.run_id,
                    approvals.c.step_id == steps.c.id,
                    steps.c.status == "pending_approval",
                ),
            )
            .outerjoin(
                handoffs,
                and_(
                    handoffs.c.run_id == steps.c.run_id,
                    handoffs.c.step_id == steps.c.id,
                    steps.c.status == "escalated",
                ),
            )
        )
        .where(
            runs.c.workflow == workflow,
            steps.c.created_at >= start,
            steps.c.created_at < end,
            steps.c.confidence.is_not(None),
            steps.c.kind == "tool",
            steps.c.status.in_(["executed", "failed", "pending_approval", "escalated"]),
        )
    )
    with reading(engine) as conn:
        rows = conn.execute(query).all()
    out: list[tuple[str, float, str]] = []
    for row in rows:
        asked = None if row.approval_state is None else (row.approval_state, row.approval_outcome)
        handed = None if row.handoff_state is None else (row.handoff_state, row.handoff_resolution)
        outcome = _outcome(row.status, asked, handed)
        if outcome is not None:
            out.append((str(row.agent_id), float(row.confidence), outcome))
    return out


def _outcome(status: str, approval: tuple[str, Any] | None, handoff: tuple[str, Any] | None) -> str | None:
    if status == "executed":
        return "ran"
    if status == "failed":
        return "failed"
    if status == "pending_approval":
        if approval is None:
            return None
        state, result = approval
        if state == "pending":
            return "undecided"
        if state == "rejected":
            return "rejected"
        if state == "approved":
            failed = isinstance(result, dict) and result.get("status") == "failed"
            return "failed" if failed else "approved"
        return None  # expired or cancelled: nobody judged it
    if handoff is not None:  # escalated
        state, resolution = handoff
        if state == "open":
            return "undecided"
        action = resolution.get("action") if isinstance(resolution, dict) else None
        return _HANDOFF_OUTCOMES.get(str(action))
    return None


def summarize(samples: list[tuple[float, str]]) -> dict[str, Any]:
    """One agent's calibration from ``(confidence, outcome)`` pairs (``undecided`` ones are counted
    apart). See the module docstring for the figures."""
    judged = [(c, o) for c, o in samples if o in OUTCOMES]
    outcomes = Counter(o for _, o in judged)
    by_bucket: dict[int, list[tuple[float, str]]] = defaultdict(list)
    for confidence, outcome in judged:
        by_bucket[bucket_of(confidence)].append((confidence, outcome))
    buckets: list[dict[str, Any]] = []
    ece = 0.0
    for index in range(BUCKETS):
        members = by_bucket.get(index, [])
        n = len(members)
        mean = sum(c for c, _ in members) / n if n else None
        right = sum(1 for _, o in members if o in RIGHT) / n if n else None
        gap = None if mean is None or right is None else right - mean
        if gap is not None:
            ece += n / len(judged) * abs(gap)
        buckets.append(
            {
                "low": index / BUCKETS,
                "high": (index + 1) / BUCKETS,
                "n": n,
                "mean_confidence": mean,
                "right_rate": right,
                "gap": gap,
                "few": 0 < n < MIN_BUCKET,
                "outcomes": {name: sum(1 for _, o in members if o == name) for name in OUTCOMES},
            }
        )
    total = len(judged)
    enough = total >= MIN_SAMPLES
    mean_confidence = sum(c for c, _ in judged) / total if total else None
    right_rate = sum(1 for _, o in judged if o in RIGHT) / total if total else None
    if not enough:
        verdict = "not enough data"
    elif ece <= WELL_CALIBRATED_ECE:
        verdict = "well calibrated"
    elif mean_confidence is not None and right_rate is not None and mean_confidence > right_rate:
        verdict = "overconfident"
    else:
        verdict = "underconfident"
    return {
        "samples": total,
        "undecided": sum(1 for _, o in samples if o == "undecided"),
        "enough_data": enough,
        "ece": ece if enough else None,
        "max_gap": max((abs(b["gap"]) for b in buckets if b["gap"] is not None), default=None)
        if enough
        else None,
        "mean_confidence": mean_confidence,
        "right_rate": right_rate,
        "verdict": verdict,
        "note": (
            ""
            if enough
            else f"not enough data: {total} judged action{'' if total == 1 else 's'}, "
            f"the calibration error needs at least {MIN_SAMPLES}"
        ),
        "outcomes": {name: outcomes.get(name, 0) for name in OUTCOMES},
        "buckets": buckets,
    }


def calibration(engine: Engine, workflow: str, *, start: float, end: float) -> dict[str, Any]:
    """Every agent's calibration in ``workflow`` over ``[start, end)``, as JSON-ready data.

    Keys: ``window`` (epoch seconds), ``min_samples``, ``min_bucket``, ``outcomes`` (their order),
    ``right`` (the outcomes counted as right) and ``agents``: one entry per agent that stated a
    confidence in the window, most judged actions first, each :func:`summarize` plus ``agent``.
    """
    per_agent: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for agent, confidence, outcome in judged_actions(engine, workflow, start=start, end=end):
        per_agent[agent].append((confidence, outcome))
    return {
        "window": {"start": start, "end": end},
        "min_samples": MIN_SAMPLES,
        "min_bucket": MIN_BUCKET,
        "outcomes": list(OUTCOMES),
        "right": sorted(RIGHT),
        "agents": [
            {"agent": agent, **summarize(per_agent[agent])}
            for agent in sorted(per_agent, key=lambda a: (-len(per_agent[a]), a))
        ],
    }


# ---- the chart ----------------------------------------------------------------------------------


def reliability_chart(agent: dict[str, Any], *, size: int = 280) -> dict[str, Any]:
    """Geometry for a reliability diagram (drawn by the ``calibration_chart`` template macro): stated
    confidence across, share right up, one bar per bucket with a sample, the diagonal for "as sure as
    right", and a dot at each bucket's mean confidence."""
    left, bottom, top, right = 40, 34, 12, 12
    plot = size - left - right
    plot_h = size - bottom - top
    base_y = size - bottom

    def x_at(value: float) -> float:
        return round(left + value * plot, 1)

    def y_at(value: float) -> float:
        return round(base_y - value * plot_h, 1)

    bars = []
    for b in agent["buckets"]:
        if not b["n"]:
            continue
        height = b["right_rate"] * plot_h
        bars.append(
            {
                "x": round(x_at(b["low"]) + 1, 1),
                "y": round(base_y - height, 1),
                "w": round(plot / BUCKETS - 2, 1),
                "h": round(height, 1),
                "dot_x": x_at(b["mean_confidence"]),
                "dot_y": y_at(b["right_rate"]),
                "few": b["few"],
                "title": (
                    f"{b['low']:.1f}-{b['high']:.1f}: {b['n']} action{'' if b['n'] == 1 else 's'}, "
                    f"stated {b['mean_confidence'] * 100:.0f}% on average, right {b['right_rate'] * 100:.0f}%"
                ),
            }
        )
    ticks = [{"value": f"{v / 10:.1f}", "x": x_at(v / 10), "y": y_at(v / 10)} for v in range(0, 11, 2)]
    return {
        "width": size,
        "height": size,
        "left": left,
        "top": top,
        "right": left + plot,
        "base_y": base_y,
        "diagonal": {"x1": x_at(0), "y1": y_at(0), "x2": x_at(1), "y2": y_at(1)},
        "bars": bars,
        "ticks": ticks,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def calibration_view(data: dict[str, Any], *, window: str) -> dict[str, Any]:
    """:func:`calibration`'s data as the ``calibration`` template macro shows it: texts and charts."""
    agents = []
    for a in data["agents"]:
        agents.append(
            {
                "agent": a["agent"],
                "samples": a["samples"],
                "undecided": a["undecided"],
                "enough_data": a["enough_data"],
                "verdict": a["verdict"],
                "note": a["note"],
                "ece": "n/a" if a["ece"] is None else f"{a['ece'] * 100:.1f} points",
                "mean_confidence": _pct(a["mean_confidence"]),
                "right_rate": _pct(a["right_rate"]),
                "outcomes": a["outcomes"],
                "rows": [
                    {
                        "range": f"{b['low']:.1f}-{b['high']:.1f}",
                        "n": b["n"],
                        "stated": _pct(b["mean_confidence"]),
                        "right": _pct(b["right_rate"]),
                        "gap": "n/a" if b["gap"] is None else f"{b['gap'] * 100:+.0f} pp",
                        "few": b["few"],
                        "outcomes": b["outcomes"],
                    }
                    for b in a["buckets"]
                    if b["n"]
                ],
                "chart": reliability_chart(a),
            }
        )
    return {
        "window": window,
        "min_samples": data["min_samples"],
        "min_bucket": data["min_bucket"],
        "outcomes": data["outcomes"],
        "agents": agents,
    }


__all__ = [
    "BUCKETS",
    "MIN_BUCKET",
    "MIN_SAMPLES",
    "OUTCOMES",
    "RIGHT",
    "bucket_of",
    "calibration",
    "calibration_view",
    "judged_actions",
    "reliability_chart",
    "summarize",
]
