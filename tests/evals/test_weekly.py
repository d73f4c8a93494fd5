"""The weekly review on a week built row by row, so every figure is known exactly."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from interlock._internal.cli.report import app
from interlock._internal.evals.weekly import (
    default_week_ending,
    median,
    p90,
    recommend,
    render_weekly_html,
    week_bounds,
    weekly_figures,
)
from interlock._internal.settings import DatabaseSettings
from interlock._internal.store import tables as t
from interlock._internal.store.engine import make_engine
from interlock._internal.store.migrate import upgrade

WF = "support-triage"
WEEK_ENDING = date(2026, 3, 15)
START = datetime(2026, 3, 9, tzinfo=UTC).timestamp()
PREV = START - 7 * 86_400
DAY = 86_400.0
VERSION = "support-triage@1.0.0#000000000000"
MANIFEST = """name: support-triage
version: "1.0.0"
owner: ops@example.com
objective: triage
success_metric: {name: tickets triaged without human rework, target: 0.9, unit: ratio}
environments: [production]
tools: [{name: t, verb: read}]
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INTERLOCK_DATABASE__URL", raising=False)


class Week:
    """Inserts runs, steps, decisions and approvals with chosen timestamps."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.n = 0

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n:05d}"

    def run(self, at: float, state: str, *, took: float | None = None, cost: int = 0, wf: str = WF) -> str:
        rid = self._id("run")
        with self.engine.begin() as conn:
            conn.execute(
                t.runs.insert().values(
                    id=rid,
                    workflow=wf,
                    workflow_version_id=VERSION,
                    agent_id="bot",
                    environment="production",
                    state=state,
                    steps=0,
                    tool_calls=0,
                    cost_micros=cost,
                    started_at=at,
                    ended_at=None if took is None else at + took,
                )
            )
        return rid

    def step(self, run_id: str, at: float, status: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                t.steps.insert().values(
                    id=self._id("stp"),
                    run_id=run_id,
                    seq=self.n,
                    kind="tool",
                    tool="t",
                    status=status,
                    cost_micros=0,
                    created_at=at,
                )
            )

    def decision(self, at: float, decision: str, codes: tuple[str, ...] = ()) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                t.decisions.insert().values(
                    id=self._id("dec"),
                    workflow=WF,
                    decision=decision,
                    created_at=at,
                    reasons=[{"code": c, "message": c} for c in codes],
                    policy_ids=[],
                    risk=[],
                )
            )

    def approval(self, run_id: str, at: float, state: str, latency: float | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                t.approvals.insert().values(
                    id=self._id("apr"),
                    run_id=run_id,
                    step_id="s",
                    decision_id="d",
                    workflow=WF,
                    agent_id="bot",
                    tool="t",
                    verb="refund",
                    args_hash="0" * 64,
                    state=state,
                    reasons=[],
                    package={},
                    quorum=1,
                    expires_at=at + DAY,
                    created_at=at,
                    decided_at=None if latency is None else at + latency,
                )
            )


def _populate(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            t.workflow_versions.insert().values(
                id=VERSION,
                workflow=WF,
                version="1.0.0",
                sha256="0" * 64,
                policy_sha256="0" * 64,
                manifest=MANIFEST,
                cedar_policies="",
                created_at=PREV,
            )
        )
        conn.execute(
            t.workflows.insert().values(name=WF, active_version_id=VERSION, paused=False, updated_at=PREV)
        )
    w = Week(engine)
    # This week: 10 runs. Six complete (one of them escalated on the way), one fails, two are
    # escalated, one still runs.
    completed = []
    for i, (took, cost) in enumerate(
        [(60, 100_000), (120, 200_000), (180, 300_000), (240, 400_000), (300, 500_000), (600, 600_000)]
    ):
        completed.append(w.run(START + i * 3600, "completed", took=took, cost=cost))
    failed = w.run(START + DAY, "failed", took=30, cost=999_000)
    w.run(START + 2 * DAY, "escalated")
    w.run(START + 2 * DAY + 60, "escalated")
    w.run(START + 6 * DAY + 3600, "running")
    w.run(START + 7 * DAY, "completed", took=5, cost=1)  # next week: not counted
    w.run(START - 1, "completed", took=5, cost=1, wf="other")  # another workflow: not counted
    for i in range(20):
        w.step(completed[i % 6], START + i * 60, "executed")
    w.step(failed, START + DAY, "failed")
    w.step(failed, START + DAY + 1, "failed")
    w.step(completed[0], START + 10, "denied")
    w.step(completed[5], START + 20, "escalated")  # completed[5] counts as escalated too
    # Decisions: 14 allow, 4 require_approval, 1 escalate, 6 deny, spread over the week.
    kinds = ["allow"] * 14 + ["require_approval"] * 4 + ["escalate"] + ["deny"] * 6
    no_reason: list[tuple[str, ...]] = [()]
    codes = no_reason * 19 + [("forbidden",)] * 3 + [("not_granted",)] * 2 + [("invalid_arguments",)]
    for i, (kind, why) in enumerate(zip(kinds, codes, strict=True)):
        w.decision(START + (i % 7) * DAY + 3600, kind, why)
    w.approval(completed[0], START + 100, "approved", 600)
    w.approval(completed[1], START + 200, "rejected", 1200)
    w.approval(completed[2], START + 300, "approved", 1800)
    w.approval(completed[3], START + 400, "pending", None)
    w.approval(completed[4], START + 500, "expired", 86_400)  # expiry is not a person deciding

    # Previous week: four completed runs, nothing failed, denied or escalated.
    prev = [w.run(PREV + i * 3600, "completed", took=100 * (i + 1), cost=250_000) for i in range(4)]
    for i in range(10):
        w.step(prev[i % 4], PREV + i * 60, "executed")
        w.decision(PREV + i * 60, "allow")
    w.approval(prev[0], PREV + 100, "approved", 3600)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(DatabaseSettings(url=db_url))
    upgrade(eng)
    _populate(eng)
    yield eng
    eng.dispose()


def test_week_bounds_and_statistics() -> None:
    assert week_bounds(WEEK_ENDING) == (START, START + 7 * DAY)
    assert default_week_ending(datetime(2026, 3, 16, 9, tzinfo=UTC).timestamp()) == WEEK_ENDING
    assert median([]) is None
    assert median([3, 1, 2]) == 2
    assert median([1, 2, 3, 4]) == 2.5
    assert p90([]) is None
    assert p90(list(range(1, 11))) == 9  # nearest rank: the 9th of 10
    assert p90(list(range(1, 12))) == 10  # ceil(9.9) = 10th of 11
    assert p90([5]) == 5


def test_figures_of_a_known_week(engine: Engine) -> None:
    r = weekly_figures(engine, WF, WEEK_ENDING)
    assert r["week"] == {"start": "2026-03-09", "end": "2026-03-15"}
    assert r["previous_week"] == {"start": "2026-03-02", "end": "2026-03-08"}
    f = {name: fig["value"] for name, fig in r["figures"].items()}
    assert f == {
        "runs": 10,
        "completed_runs": 6,
        "escalated_runs": 3,
        "cycle_time_median_s": 210.0,
        "cycle_time_p90_s": 600.0,
        "error_rate": 2 / 22,
        "escalation_rate": 0.3,
        "denial_rate": 6 / 25,
        "cost_per_completed_usd": 0.35,
        "approval_latency_median_s": 1200.0,
        "success_rate": 5 / 9,
    }
    p = {name: fig["previous"] for name, fig in r["figures"].items()}
    assert p == {
        "runs": 4,
        "completed_runs": 4,
        "escalated_runs": 0,
        "cycle_time_median_s": 250.0,
        "cycle_time_p90_s": 400.0,
        "error_rate": 0.0,
        "escalation_rate": 0.0,
        "denial_rate": 0.0,
        "cost_per_completed_usd": 0.25,
        "approval_latency_median_s": 3600.0,
        "success_rate": 1.0,
    }
    assert r["figures"]["runs"]["delta"] == 6
    assert r["figures"]["cycle_time_median_s"]["delta"] == -40.0
    assert r["figures"]["approval_latency_median_s"]["delta"] == -2400.0
    assert r["figures"]["cost_per_completed_usd"]["delta"] == pytest.approx(0.10)
    assert r["actions_by_decision"] == {
        "allow": {"value": 14, "previous": 10, "delta": 4},
        "require_approval": {"value": 4, "previous": 0, "delta": 4},
        "escalate": {"value": 1, "previous": 0, "delta": 1},
        "deny": {"value": 6, "previous": 0, "delta": 6},
    }
    assert r["top_denial_reasons"] == [
        {"code": "forbidden", "count": 3, "previous": 0},
        {"code": "not_granted", "count": 2, "previous": 0},
        {"code": "invalid_arguments", "count": 1, "previous": 0},
    ]
    assert [
        sum(d[k] for k in ("allow", "deny", "require_approval", "escalate")) for d in r["decisions_by_day"]
    ] == [4, 4, 4, 4, 3, 3, 3]
    assert r["decisions_by_day"][0]["date"] == "2026-03-09"
    assert r["counts"]["steps_failed"] == {"value": 2, "previous": 0}
    assert r["success_metric"] == {
        "name": "tickets triaged without human rework",
        "target": 0.9,
        "unit": "ratio",
        "target_ratio": 0.9,
        "measured_as": "runs completed without an escalation / runs no longer running",
        "value": 5 / 9,
        "previous": 1.0,
        "met": False,
    }
    rec = r["recommendation"]
    # Error 9.1% and escalation 30.0% stay at or under the pause bars; denials at 24% pass 20%.
    assert (rec["action"], rec["rule_number"]) == ("tighten", 2)
    assert rec["rule"] == "denial rate > 20% or median approval latency > 4 h"
    assert [(c["figure"], c["fired"]) for c in rec["checks"]] == [
        ("error_rate", False),
        ("escalation_rate", False),
        ("denial_rate", True),
        ("approval_latency_median_s", False),
    ]
    assert json.loads(json.dumps(r)) == r  # JSON-ready as it is


def test_an_empty_week(engine: Engine) -> None:
    r = weekly_figures(engine, WF, date(2025, 1, 5))
    assert r["figures"]["runs"] == {"value": 0, "previous": 0, "delta": 0}
    assert r["figures"]["error_rate"] == {"value": None, "previous": None, "delta": None}
    assert r["top_denial_reasons"] == []
    # No runs at all: no recommendation, and the report says why.
    assert r["recommendation"]["action"] == "not_enough_data"
    assert "0 runs this week; the rules need at least 10" in r["recommendation"]["rule"]
    assert "Recommendation: Not enough data" in render_weekly_html(r)
    assert "<svg" in render_weekly_html(r)


def _figures(**overrides: float | None) -> dict[str, Any]:
    base: dict[str, float | None] = {
        "error_rate": 0.05,
        "escalation_rate": 0.1,
        "denial_rate": 0.05,
        "approval_latency_median_s": 600.0,
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("figures", "met", "action", "rule"),
    [
        (_figures(error_rate=0.11), True, "pause_and_redesign", 1),
        (_figures(escalation_rate=0.31, denial_rate=0.5), True, "pause_and_redesign", 1),
        (_figures(error_rate=0.10, escalation_rate=0.30), True, "scale", 3),
        (_figures(approval_latency_median_s=4 * 3600 + 1), True, "tighten", 2),
        (_figures(denial_rate=0.21), True, "tighten", 2),
        (_figures(), False, "tighten", 4),
        (_figures(), None, "tighten", 4),
        (_figures(error_rate=None, escalation_rate=None), True, "scale", 3),
    ],
)
def test_recommendation_rules(figures: dict[str, Any], met: bool | None, action: str, rule: int) -> None:
    success = {"value": 0.95, "target_ratio": 0.9, "met": met}
    rec = recommend(figures, success)
    assert (rec["action"], rec["rule_number"]) == (action, rule)
    assert len(rec["rules"]) == 4


def test_html_report_renders_the_figures(engine: Engine) -> None:
    r = weekly_figures(engine, WF, WEEK_ENDING)
    html = render_weekly_html(r)
    assert "Recommendation: Tighten" in html
    assert "Rule 2: denial rate &gt; 20% or median approval latency &gt; 4 h." in html
    for text in (
        "24.0%",
        "9.1%",
        "30.0%",
        "3m 30s",
        "10m 00s",
        "$0.3500",
        "20m 00s",
        "55.6%",
        "forbidden",
        "tickets triaged without human rework",
        "+24.0 pp",
        "-40s",
    ):
        assert text in html, text
    # Self-contained: inline SVG charts, no scripts and nothing fetched from elsewhere.
    assert html.count("<svg") == 2
    assert "<script" not in html
    assert not re.search(r"""(src|href)\s*=""", html)
    assert "@import" not in html


def test_report_command_writes_html_and_json(db_url: str, engine: Engine, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "reports"
    result = runner.invoke(
        app, ["weekly", WF, "--db", db_url, "--week-ending", "2026-03-15", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "recommendation: Tighten" in result.output
    html = out / "weekly-support-triage-2026-03-15.html"
    data = json.loads((out / "weekly-support-triage-2026-03-15.json").read_text())
    assert data["figures"]["denial_rate"]["value"] == 0.24
    assert "Recommendation: Tighten" in html.read_text()
    result = runner.invoke(
        app, ["weekly", WF, "--db", db_url, "--week-ending", "2026-03-15", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recommendation"]["action"] == "tighten"
    assert runner.invoke(app, ["weekly", WF, "--db", db_url, "--week-ending", "15/03/2026"]).exit_code == 2
    bad = runner.invoke(app, ["weekly", "../escape", "--db", db_url, "--out", str(out)])
    assert bad.exit_code == 1
    assert "is not a workflow name" in bad.output
