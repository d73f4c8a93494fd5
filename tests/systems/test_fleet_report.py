"""The executive view on weeks built row by row, so every figure is known exactly; on both databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from interlock._internal.cli.report import app
from interlock._internal.evals.fleet import fleet_figures, render_fleet_html
from interlock._internal.manifest.loader import load_manifest_text
from interlock._internal.settings import DatabaseSettings
from interlock._internal.store import tables as t
from interlock._internal.store.engine import make_engine
from interlock._internal.store.migrate import upgrade

WEEK_ENDING = date(2026, 3, 15)
START = datetime(2026, 3, 9, tzinfo=UTC).timestamp()
PREV = START - 7 * 86_400
MANIFEST = """name: {name}
version: "1"
owner: {name}-owner@example.com
objective: triage
success_metric: {{name: done}}
environments: [production]
tools: [{{name: t, verb: read}}]
{extra}
"""
A_EXTRA = """budgets: {per_workflow_day: {max_cost_usd: 2}}
baseline: {cycle_time_s: 3600, error_rate: 0.05, cost_per_task_usd: 5, description: before agents}
"""


class Rows:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.n = 0

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n:05d}"

    def run(self, wf: str, at: float, state: str, *, took: float | None = None, cost: int = 0) -> str:
        rid = self._id("run")
        with self.engine.begin() as conn:
            conn.execute(
                t.runs.insert().values(
                    id=rid,
                    workflow=wf,
                    workflow_version_id=f"{wf}@1",
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

    def step(self, wf: str, run_id: str, at: float, status: str, *, approved: bool = False) -> None:
        sid = self._id("stp")
        with self.engine.begin() as conn:
            conn.execute(
                t.decisions.insert().values(
                    id=sid,
                    run_id=run_id,
                    workflow=wf,
                    decision="allow",
                    created_at=at,
                    policy_ids=[],
                    risk=[],
                    reasons=[{"code": "approved" if approved else "permitted", "message": "-"}],
                )
            )
            conn.execute(
                t.steps.insert().values(
                    id=sid,
                    run_id=run_id,
                    seq=self.n,
                    kind="tool",
                    tool="t",
                    status=status,
                    decision_id=sid,
                    cost_micros=0,
                    created_at=at,
                )
            )

    def deny(self, wf: str, at: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                t.decisions.insert().values(
                    id=self._id("dec"),
                    workflow=wf,
                    decision="deny",
                    created_at=at,
                    policy_ids=[],
                    risk=[],
                    reasons=[{"code": "forbidden", "message": "-"}],
                )
            )

    def approval(self, wf: str, run_id: str, at: float, state: str, latency: float | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                t.approvals.insert().values(
                    id=self._id("apr"),
                    run_id=run_id,
                    step_id="s",
                    decision_id="d",
                    workflow=wf,
                    agent_id="bot",
                    tool="t",
                    verb="refund",
                    args_hash="0" * 64,
                    state=state,
                    reasons=[],
                    package={},
                    quorum=1,
                    expires_at=at + 86_400,
                    created_at=at,
                    decided_at=None if latency is None else at + latency,
                )
            )


def _populate(engine: Engine) -> None:
    with engine.begin() as conn:
        for name, extra in (("wf-a", A_EXTRA), ("wf-b", "")):
            conn.execute(
                t.workflow_versions.insert().values(
                    id=f"{name}@1",
                    workflow=name,
                    version="1",
                    sha256="0" * 64,
                    policy_sha256="0" * 64,
                    manifest=MANIFEST.format(name=name, extra=extra),
                    cedar_policies="",
                    created_at=PREV,
                )
            )
            conn.execute(
                t.workflows.insert().values(
                    name=name, active_version_id=f"{name}@1", paused=False, updated_at=PREV
                )
            )
    r = Rows(engine)
    # wf-a, this week: three completed runs (10, 20, 30 minutes; $1, $2, $3) and one failed ($0.50).
    done = [
        r.run("wf-a", START + i * 3600, "completed", took=600 * (i + 1), cost=1_000_000 * (i + 1))
        for i in range(3)
    ]
    failed = r.run("wf-a", START + 86_400, "failed", took=30, cost=500_000)
    for i in range(6):
        r.step("wf-a", done[i % 3], START + i * 60, "executed", approved=i < 2)  # two ran after approval
    r.step("wf-a", failed, START + 86_400, "failed")
    r.step("wf-a", failed, START + 86_401, "failed")
    r.step("wf-a", done[0], START + 10, "escalated")
    for i in range(3):
        r.deny("wf-a", START + i * 3600)
    r.approval("wf-a", done[0], START + 100, "approved", 600)
    r.approval("wf-a", done[1], START + 200, "rejected", 1800)
    r.approval("wf-a", done[2], START + 300, "pending", None)
    # wf-b, this week: one completed run ($1), two actions alone, one denial.
    b = r.run("wf-b", START + 7200, "completed", took=100, cost=1_000_000)
    r.step("wf-b", b, START + 7200, "executed")
    r.step("wf-b", b, START + 7300, "executed")
    r.deny("wf-b", START + 7400)
    # wf-a, the week before: one completed run ($4), two actions alone, one denial.
    p = r.run("wf-a", PREV + 3600, "completed", took=900, cost=4_000_000)
    r.step("wf-a", p, PREV + 3600, "executed")
    r.step("wf-a", p, PREV + 3700, "executed")
    r.deny("wf-a", PREV + 3800)
    r.run("wf-a", START + 7 * 86_400, "completed", took=5, cost=9)  # next week: not counted


def _manifests() -> list:  # type: ignore[type-arg]
    return [
        load_manifest_text(MANIFEST.format(name=n, extra=e)).manifest
        for n, e in (("wf-a", A_EXTRA), ("wf-b", ""))
    ]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(DatabaseSettings(url=db_url))
    upgrade(eng)
    _populate(eng)
    yield eng
    eng.dispose()


def test_fleet_figures(engine: Engine) -> None:
    report = fleet_figures(engine, _manifests(), WEEK_ENDING)
    assert report["week"] == {"start": "2026-03-09", "end": "2026-03-15"}
    assert len(report["weeks"]) == 8
    assert report["weeks"][-1] == "2026-03-15"
    fleet = {k: v["value"] for k, v in report["fleet"]["figures"].items()}
    assert fleet["actions_ran"] == 10
    assert fleet["autonomy_rate"] == pytest.approx(8 / 10)
    assert fleet["approvals"] == 3
    assert fleet["approval_latency_median_s"] == pytest.approx(1200)
    assert fleet["escalations"] == 1
    assert fleet["denials"] == 4
    assert fleet["spend_usd"] == pytest.approx(7.5)
    assert fleet["budget_usd"] == pytest.approx(14)  # only wf-a declares a cap: $2 a day
    assert fleet["spend_of_budget"] == pytest.approx(7.5 / 14)
    assert fleet["cost_per_completed_usd"] == pytest.approx(7 / 4)
    # Week over week: the week before had two actions, both alone.
    autonomy = report["fleet"]["figures"]["autonomy_rate"]
    assert autonomy["previous"] == pytest.approx(1.0)
    assert autonomy["delta"] == pytest.approx(-0.2)
    assert autonomy["series"] == [None] * 6 + [pytest.approx(1.0), pytest.approx(0.8)]
    assert report["fleet"]["figures"]["denials"]["series"][-2:] == [1, 4]

    a, b = report["workflows"]
    assert a["workflow"] == "wf-a"
    fa = {k: v["value"] for k, v in a["figures"].items()}
    assert fa["autonomy_rate"] == pytest.approx(6 / 8)
    assert fa["error_rate"] == pytest.approx(2 / 8)
    assert fa["cycle_time_median_s"] == pytest.approx(1200)
    assert fa["cost_per_completed_usd"] == pytest.approx(2.0)
    assert a["figures"]["cost_per_completed_usd"]["previous"] == pytest.approx(4.0)
    base = a["baseline"]
    assert base["cycle_time_median_s"]["change"] == pytest.approx(1200 - 3600)
    assert base["error_rate"]["change"] == pytest.approx(0.25 - 0.05)
    assert base["cost_per_completed_usd"]["change"] == pytest.approx(2.0 - 5.0)
    assert base["cost_per_completed_usd"]["ratio"] == pytest.approx(0.4)
    assert b["baseline"] is None
    assert b["figures"]["autonomy_rate"]["value"] == pytest.approx(1.0)

    html = render_fleet_html(report)
    assert "<script" not in html
    assert "80.0%" in html  # the fleet's autonomy rate
    assert "-40m 00s" in html  # wf-a's cycle time against its baseline
    assert html.count("<svg") == 13 * 3  # a week-over-week chart per figure, fleet and each workflow


def test_report_fleet_command_writes_html_and_json(engine: Engine, db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    result = CliRunner().invoke(
        app, ["fleet", "--db", db_url, "--week-ending", "2026-03-15", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["fleet"]["figures"]["autonomy_rate"]["value"] == pytest.approx(0.8)
    assert [w["workflow"] for w in data["workflows"]] == ["wf-a", "wf-b"]
    assert json.loads((out / "fleet-2026-03-15.json").read_text())["fleet"]["workflows"] == 2
    assert "Fleet report" in (out / "fleet-2026-03-15.html").read_text()
