"""The workflow page's confidence calibration in a real browser, with a screenshot in test-artifacts/."""

from __future__ import annotations

from typing import Any

import pytest
from test_console import Server, browser, page, server, shot  # noqa: F401  (shared fixtures)

import calibration_scenario as scenario

pytestmark = pytest.mark.e2e


def test_workflow_page_draws_the_calibration_chart(page: Any, server: Server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    scenario.build(server.harness)
    page.goto(f"{server.url}/ui/workflows/support-triage")
    section = page.locator("#calibration")
    expect(section.get_by_role("heading", name="Confidence calibration")).to_be_visible()
    bot = section.locator('[data-agent="triage-bot"]')
    expect(bot.get_by_role("heading")).to_contain_text("overconfident")
    expect(bot.get_by_role("heading")).to_contain_text("expected calibration error 12.6 points")
    chart = bot.get_by_role("img", name="Reliability diagram for triage-bot")
    expect(chart).to_be_visible()
    expect(chart.locator("rect.bucket")).to_have_count(3)
    expect(chart.locator("line.diagonal")).to_have_count(1)
    rows = bot.locator("table tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.filter(has_text="0.9-1.0")).to_contain_text("20")
    box = chart.bounding_box()
    assert box is not None
    assert box["width"] > 200
    assert box["height"] > 200
    reporter = section.locator('[data-agent="reporter"]')
    expect(reporter.get_by_role("heading")).to_contain_text("Not enough data")
    full = shot(page, "console-calibration.png")
    section.screenshot(path=str(full.with_name("console-calibration-section.png")))
