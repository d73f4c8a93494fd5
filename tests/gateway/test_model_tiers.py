"""Model routing on SQLite and PostgreSQL: reported model calls checked against their task class's
tier (flagged or refused), priced from the tier, and the weekly review's spend per tier with what
the same calls would have cost a tier up."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import Harness
from interlock._internal.audit.chain import iter_events
from interlock._internal.cli.report import app as report_app
from interlock._internal.evals.weekly import weekly_figures
from interlock._internal.identity.tokens import authenticate_agent
from verifier_manifest import verifier_manifest

REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}


@pytest.fixture
def flag(db_url: str) -> Iterator[Harness]:
    h = Harness(db_url, manifest=verifier_manifest(on_unlisted="flag"))
    yield h
    h.close()


@pytest.fixture
def refuse(db_url: str) -> Iterator[Harness]:
    h = Harness(db_url, manifest=verifier_manifest(on_unlisted="refuse"))
    yield h
    h.close()


def report(h: Harness, run: str, model: str, task: str | None, tokens: tuple[int, int] = (1000, 100)):  # type: ignore[no-untyped-def]
    return h.il.report_model_call(
        h.tokens["triage-bot"], run, model=model, input_tokens=tokens[0], output_tokens=tokens[1], task=task
    )


def test_a_model_in_its_tier_is_priced_from_the_tier(flag: Harness) -> None:
    run = flag.run()
    ok = report(flag, run, "mini-1", "classification")
    assert ok.reasons == []
    assert ok.cost_usd == pytest.approx((1000 * 0.2 + 100 * 0.8) / 1_000_000)
    # Without a task the model's own tier is found.
    plain = report(flag, run, "big-1", None)
    assert plain.reasons == []
    [step] = [s for s in flag.il.get_run(run).steps_detail if s.kind == "model"][:1]
    assert step.arguments == {
        "model": "mini-1",
        "input_tokens": 1000,
        "output_tokens": 100,
        "task": "classification",
        "tier": "small",
    }
    [event, _] = list(iter_events(flag.il.engine, run_id=run, kinds=["model.call"]))
    assert event.data["tier"] == "small"


def test_an_unlisted_model_is_flagged_and_the_run_goes_on(flag: Harness) -> None:
    run = flag.run()
    off = report(flag, run, "mini-1", "planning")  # planning needs the large tier
    assert [r.code for r in off.reasons] == ["model_off_tier"]
    assert "not in tier 'large' for planning" in off.reasons[0].message
    assert off.run_state == "running"
    unknown = report(flag, run, "mini-1", "poetry")
    assert [r.code for r in unknown.reasons] == ["model_off_tier"]
    assert "task class 'poetry' is not declared" in unknown.reasons[0].message
    stranger = report(flag, run, "gpt-unknown", None)
    assert [r.code for r in stranger.reasons] == ["model_off_tier", "unpriced_model"]
    assert flag.act(run, "tickets.get", {"ticket_id": "T-1001"}).status == "executed"


def test_an_unlisted_model_is_refused_and_the_run_stops(refuse: Harness) -> None:
    run = refuse.run()
    refused = report(refuse, run, "big-1", "extraction")  # a large model for a small task
    assert [r.code for r in refused.reasons] == ["model_refused"]
    assert refused.run_state == "stopped"
    # The spend happened, so it is counted; the next action is denied.
    assert refused.cost_usd == pytest.approx((1000 * 5.0 + 100 * 20.0) / 1_000_000)
    view = refuse.il.get_run(run)
    assert view.state == "stopped"
    assert [s.status for s in view.steps_detail if s.kind == "model"] == ["refused"]
    after = refuse.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert after.status == "denied"
    assert after.decision.reasons[0].code == "run_not_active"


def test_the_weekly_review_shows_spend_per_tier_and_the_next_tier_up(flag: Harness, tmp_path: Path) -> None:
    run = flag.run()
    for _ in range(3):
        report(flag, run, "mini-1", "extraction", (10_000, 1_000))  # small: 0.0028 each
    report(flag, run, "mid-1", None, (4_000, 500))  # medium: 0.006
    report(flag, run, "big-1", "planning", (2_000, 1_000))  # large: 0.03
    report(flag, run, "mini-1", "planning", (1_000, 0))  # off tier, priced as small
    report(flag, run, "no-such-model", None, (1_000, 0))  # unlisted, unpriced
    # A verifier's verdict that names its model counts in its tier too.
    pending = flag.act(run, "payments.refund", REFUND)
    checker = authenticate_agent(flag.tokens["refund-checker"], tokens=flag.il.tokens, store=flag.il.agents)
    view = flag.il.verifications.get(checker, pending.approval_id)
    flag.il.verifications.decide(
        checker,
        pending.approval_id,
        verdict="escalate",
        args_hash=view.args_hash,
        model="mid-2",
        input_tokens=2_000,
        output_tokens=200,
        task="verification",
    )

    today = datetime.now(UTC).date()
    tiers = {
        row["tier"]: row for row in weekly_figures(flag.il.engine, "support-triage", today)["model_tiers"]
    }
    assert list(tiers) == ["small", "medium", "large", "unlisted"]
    small = tiers["small"]
    assert (small["calls"], small["off_tier_calls"]) == (4, 1)
    assert (small["input_tokens"], small["output_tokens"]) == (31_000, 3_000)
    assert small["cost_usd"] == pytest.approx(3 * 0.0028 + 0.0002)
    assert small["next_tier"] == "medium"
    assert small["next_tier_model"] == "mid-1"
    # The same tokens at mid-1's price: 31000 x 1.0/M + 3000 x 4.0/M
    assert small["cost_at_next_tier_usd"] == pytest.approx(0.043)
    medium = tiers["medium"]
    assert medium["calls"] == 2
    assert medium["cost_usd"] == pytest.approx(0.006 + (2_000 * 1.5 + 200 * 5.0) / 1_000_000)
    assert medium["cost_at_next_tier_usd"] == pytest.approx((6_000 * 5.0 + 700 * 20.0) / 1_000_000)
    assert tiers["large"]["next_tier"] is None
    assert tiers["large"]["cost_at_next_tier_usd"] is None
    assert tiers["unlisted"]["calls"] == 1

    url = flag.il.engine.url.render_as_string(hide_password=False)
    out = CliRunner().invoke(
        report_app,
        ["weekly", "support-triage", "--db", url, "--week-ending", today.isoformat(), "--out", str(tmp_path)],
    )
    assert out.exit_code == 0, out.output
    html = next(tmp_path.glob("weekly-*.html")).read_text(encoding="utf-8")
    assert 'id="model-tiers"' in html
    assert "medium (mid-1)" in html
