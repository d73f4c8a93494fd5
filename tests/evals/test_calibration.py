"""Calibration of stated confidence: the arithmetic on chosen samples, and the whole path (pipeline,
approvals, handoffs, store, weekly review, console) on runs whose outcomes are known, on SQLite and
PostgreSQL."""

from __future__ import annotations

import html
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import calibration_scenario as scenario
from conftest import Harness
from interlock._internal.cli.report import app
from interlock._internal.evals.calibration import (
    MIN_SAMPLES,
    bucket_of,
    calibration,
    calibration_view,
    reliability_chart,
    summarize,
)
from interlock._internal.evals.weekly import render_weekly_html, weekly_figures
from interlock._internal.server import create_app


def words(page: str) -> str:
    """What a reader sees: tags dropped, entities decoded, whitespace squashed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())


def test_buckets_are_tenths_with_one_in_the_last() -> None:
    assert [bucket_of(c) for c in (0.0, 0.05, 0.1, 0.3, 0.7, 0.79999, 0.9, 0.99, 1.0)] == [
        0,
        0,
        1,
        3,
        7,
        7,
        9,
        9,
        9,
    ]


def test_a_perfectly_calibrated_agent_has_no_error() -> None:
    # 40 actions at 0.75 (30 right) and 40 at 0.25 (10 right).
    samples = [(0.75, "ran")] * 30 + [(0.75, "rejected")] * 10 + [(0.25, "approved")] * 10
    samples += [(0.25, "failed")] * 30
    got = summarize(samples)
    assert got["samples"] == 80
    assert got["ece"] == pytest.approx(0.0)
    assert got["verdict"] == "well calibrated"
    assert [b["n"] for b in got["buckets"]] == [0, 0, 40, 0, 0, 0, 0, 40, 0, 0]
    assert got["buckets"][7]["right_rate"] == pytest.approx(0.75)
    assert got["buckets"][2]["outcomes"] == {
        "approved": 10,
        "ran": 0,
        "rejected": 0,
        "corrected": 0,
        "failed": 30,
    }


def test_an_overconfident_agent() -> None:
    # Says 0.9, right 60% of the time; says 0.6, right 60% of the time.
    samples = (
        [(0.9, "approved")] * 18 + [(0.9, "corrected")] * 12 + [(0.6, "ran")] * 6 + [(0.6, "failed")] * 4
    )
    got = summarize(samples)
    assert got["ece"] == pytest.approx(30 / 40 * 0.3)
    assert got["max_gap"] == pytest.approx(0.3)
    assert got["verdict"] == "overconfident"
    assert got["buckets"][9]["gap"] == pytest.approx(-0.3)
    under = summarize([(0.55, "ran")] * 40)
    assert under["ece"] == pytest.approx(0.45)
    assert under["verdict"] == "underconfident"


def test_under_the_minimum_there_is_no_error_figure() -> None:
    samples = [(0.9, "ran")] * (MIN_SAMPLES - 1) + [(0.9, "undecided")] * 5
    got = summarize(samples)
    assert got["samples"] == MIN_SAMPLES - 1
    assert got["undecided"] == 5
    assert got["enough_data"] is False
    assert got["ece"] is None
    assert got["verdict"] == "not enough data"
    assert (
        got["note"]
        == f"not enough data: {MIN_SAMPLES - 1} judged actions, the calibration error needs at least 30"
    )
    assert got["buckets"][9]["n"] == MIN_SAMPLES - 1  # the counts are still shown
    assert summarize([(0.9, "ran")] * MIN_SAMPLES)["enough_data"] is True


def test_the_chart_puts_bars_and_dots_where_the_figures_say() -> None:
    agent = summarize([(0.95, "ran")] * 3 + [(0.95, "failed")] + [(0.15, "failed")] * 10)
    chart = reliability_chart(agent, size=240)
    assert chart["diagonal"] == {"x1": 40, "y1": 206, "x2": 228, "y2": 12}
    low, high = chart["bars"]
    assert (low["x"], low["w"], low["h"]) == (59.8, 16.8, 0.0)  # nothing right at 0.1–0.2
    assert low["few"] is False
    assert high["few"] is True  # four actions
    assert high["h"] == pytest.approx(0.75 * 194, abs=0.1)
    assert high["dot_x"] == pytest.approx(40 + 0.95 * 188, abs=0.1)
    assert "4 actions, stated 95% on average, right 75%" in high["title"]


@pytest.fixture
def built(harness: Harness) -> Harness:
    scenario.build(harness)
    return harness


def test_outcomes_of_real_runs_land_in_their_buckets(built: Harness) -> None:
    now = time.time()
    data = calibration(built.il.engine, built.workflow, start=now - 3600, end=now + 1)
    agents = {a["agent"]: a for a in data["agents"]}
    assert sorted(agents) == ["reporter", "triage-bot"]
    bot = agents["triage-bot"]
    assert bot["samples"] == scenario.JUDGED
    assert bot["undecided"] == 1  # the refund still waiting for a person
    for index, (n, right, outcomes) in scenario.BUCKETS.items():
        bucket = bot["buckets"][index]
        assert bucket["n"] == n, index
        assert bucket["right_rate"] == pytest.approx(right / n), index
        assert {k: v for k, v in bucket["outcomes"].items() if v} == outcomes, index
    assert sum(b["n"] for b in bot["buckets"]) == scenario.JUDGED
    assert bot["ece"] == pytest.approx(scenario.ECE)
    assert bot["verdict"] == "overconfident"
    assert bot["outcomes"] == {"approved": 7, "ran": 16, "rejected": 3, "corrected": 1, "failed": 4}

    reporter = agents["reporter"]
    assert (reporter["samples"], reporter["enough_data"], reporter["ece"]) == (2, False, None)
    assert reporter["verdict"] == "not enough data"

    # Another window, another workflow: nothing.
    assert calibration(built.il.engine, built.workflow, start=now - 7200, end=now - 3600)["agents"] == []
    assert calibration(built.il.engine, "other-flow", start=now - 3600, end=now + 1)["agents"] == []


def test_the_weekly_review_shows_calibration(built: Harness, tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    report = weekly_figures(built.il.engine, built.workflow, today)
    bot = {a["agent"]: a for a in report["calibration"]["agents"]}["triage-bot"]
    assert bot["ece"] == pytest.approx(scenario.ECE)
    page = render_weekly_html(report)
    assert "Confidence calibration" in page
    assert "triage-bot: overconfident, expected calibration error 12.6 points" in words(page)
    assert "reporter: Not enough data" in words(page)
    assert page.count('class="bucket"') == 4  # three buckets for triage-bot, one for reporter
    assert "0.9-1.0" in page

    out = CliRunner().invoke(
        app,
        [
            "weekly",
            built.workflow,
            "--db",
            str(built.il.engine.url.render_as_string(hide_password=False)),
            "--week-ending",
            today.isoformat(),
            "--out",
            str(tmp_path),
        ],
    )
    assert out.exit_code == 0, out.output
    assert (
        "calibration of triage-bot: overconfident, expected calibration error 12.6 points (31 judged actions)"
        in words(out.output)
    )
    assert "calibration of reporter: not enough data (2 judged actions)" in words(out.output)
    written = json.loads(next(tmp_path.glob("weekly-*.json")).read_text())
    assert written["calibration"]["min_samples"] == MIN_SAMPLES
    assert "calibration-agent" in next(tmp_path.glob("weekly-*.html")).read_text()


def test_the_workflow_page_shows_calibration(built: Harness) -> None:
    _, token = built.il.operators.create("olga", roles=["owner"], workflows=[built.workflow], actor="test")
    client = TestClient(create_app(interlock=built.il), follow_redirects=False)
    form = client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]*)"', form.text)
    assert csrf
    assert client.post("/ui/login", data={"token": token, "csrf": csrf.group(1)}).status_code == 303
    page = client.get(f"/ui/workflows/{built.workflow}")
    assert page.status_code == 200
    text = words(page.text)
    assert "The last 28 days: each agent's stated confidence" in text
    assert "triage-bot: overconfident, expected calibration error 12.6 points" in text
    assert "31 judged actions, 1 still waiting for a person" in text
    assert "reporter: Not enough data" in text
    assert "The calibration error needs at least 30 judged actions" in text
    assert 'aria-label="Reliability diagram for triage-bot' in page.text
    assert "style=" not in page.text.split('id="calibration"')[1]  # the console's CSP forbids inline style


def test_the_view_words_an_empty_period() -> None:
    view = calibration_view(
        {"min_samples": 30, "min_bucket": 5, "outcomes": [], "agents": []}, window="This week"
    )
    assert view["agents"] == []
