"""Retention: old payloads become hashes, the audit chain still verifies, evidence still checks out."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import SUPPORT_TRIAGE, Harness
from interlock._internal.audit.canonical import hash_value
from interlock._internal.audit.chain import iter_events
from interlock._internal.audit.evidence import export_bundle, verify_bundle
from interlock._internal.audit.keys import AuditKey
from interlock._internal.audit.verify import verify_chain
from interlock._internal.cli.purge import purge
from interlock._internal.manifest.loader import load_manifest_text
from interlock._internal.runs.retention import PURGE_EVENT, is_marker, parse_age, purge_payloads
from interlock._internal.store import tables as t
from interlock.exceptions import ArgumentsInvalid

DAY = 86_400.0
REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INTERLOCK_DATABASE__URL", raising=False)


def _activity(h: Harness) -> dict[str, Any]:
    """A run with a result, a failure, a denial, one approval still pending and one rejected."""
    run = h.run()
    read = h.act(run, "tickets.get", {"ticket_id": "T-1001"})
    h.act(run, "tickets.get", {"ticket_id": "T-9999"})
    h.act(run, "customers.delete", {"customer_id": "C-1001"})
    pending = h.act(run, "payments.refund", REFUND)
    rejected = h.act(run, "payments.refund", {**REFUND, "ticket_id": "T-1005", "amount": 80})
    # Rejected through the service, so the audit log records it (a direct UPDATE would be a forgery
    # `audit verify` reports).
    bob, _ = h.il.operators.create("bob", roles=["approver"], workflows=None, actor="test")
    h.il.approvals.decide(rejected.approval_id, operator=bob.principal(), approve=False)
    return {"run": run, "read": read.step_id, "pending": pending, "rejected": rejected}


def _payloads(h: Harness) -> dict[str, dict[str, Any]]:
    with h.il.engine.connect() as conn:
        steps = {r.id: (r.arguments, r.result) for r in conn.execute(select(t.steps))}
        decisions = {r.id: r.arguments for r in conn.execute(select(t.decisions))}
        approvals = {r.id: (r.arguments, r.package) for r in conn.execute(select(t.approvals))}
    return {"steps": steps, "decisions": decisions, "approvals": approvals}


def test_purge_replaces_payloads_with_hashes_and_keeps_the_chain(db_url: str) -> None:
    h = Harness(db_url)
    try:
        act = _activity(h)
        before = _payloads(h)
        engine = h.il.engine
        now = time.time() + 1

        dry = purge_payloads(engine, older_than_s=0, dry_run=True, now=now)
        assert _payloads(h) == before  # a dry run writes nothing
        counts = {
            "runs.trigger": 1,
            "steps.arguments": 4,  # all but the step whose approval is still pending
            "steps.result": 1,
            "decisions.arguments": 4,
            "approvals.arguments": 1,
            "approvals.package.arguments": 1,
        }
        assert dry.purged[0].counts == counts
        assert dry.purged[0].event_seq is None

        report = purge_payloads(engine, older_than_s=0, actor="tester", now=now)
        assert report.total == 12
        assert report.purged[0].counts == counts
        after = _payloads(h)

        # Each purged payload is now its hash; the read step's arguments were never redacted, so
        # the marker equals the argument hash the audit event recorded.
        args, result = after["steps"][act["read"]]
        assert args == {"purged": True, "sha256": hash_value(before["steps"][act["read"]][0])}
        assert args["sha256"] == hash_value({"ticket_id": "T-1001"})
        action = next(e for e in iter_events(engine, kinds=["action.executed"]))
        assert result == {"purged": True, "sha256": action.data["result_hash"]}
        assert after["decisions"][act["read"]]["purged"] is True

        pending_step = act["pending"].step_id
        assert after["steps"][pending_step] == before["steps"][pending_step]
        assert after["decisions"][pending_step] == before["decisions"][pending_step]
        assert (
            after["approvals"][act["pending"].approval_id] == before["approvals"][act["pending"].approval_id]
        )
        r_args, r_package = after["approvals"][act["rejected"].approval_id]
        assert is_marker(r_args)
        assert is_marker(r_package["arguments"])
        assert (
            r_package["impact_if_accepted"]
            == before["approvals"][act["rejected"].approval_id][1]["impact_if_accepted"]
        )
        assert "T-1005" not in json.dumps(after["approvals"][act["rejected"].approval_id])
        assert "T-1005" not in json.dumps(after["steps"][act["rejected"].step_id])

        # The purge is on the record, and the chain verifies with it.
        event = list(iter_events(engine, kinds=[PURGE_EVENT]))
        assert len(event) == 1
        assert event[0].seq == report.purged[0].event_seq
        assert event[0].actor == "tester"
        assert event[0].workflow == "support-triage"
        assert event[0].data == {
            "cutoff": now,
            "basis": "older than 0s",
            "counts": counts,
            "rows": 12,
        }
        assert verify_chain(engine).ok

        # Nothing is purged twice, and no event is written for a purge that found nothing.
        again = purge_payloads(engine, older_than_s=0, now=now + 5)
        assert again.total == 0
        assert len(list(iter_events(engine, kinds=[PURGE_EVENT]))) == 1

        # An evidence bundle of the purged run still verifies: purged results still match their hashes.
        key = AuditKey.from_seed("retention-test-seed")
        bundle = export_bundle(engine, act["run"], key)
        report_b = verify_bundle(json.loads(json.dumps(bundle)), key.public)
        assert report_b.ok, report_b.problems
        assert {p["arguments"] for p in bundle["payloads"]["steps"]} == {"purged", "bound"}
    finally:
        h.close()


def _manifest_with_retention(days: int) -> Any:
    text = SUPPORT_TRIAGE.read_text(encoding="utf-8") + f"\nretention_days: {days}\n"
    return load_manifest_text(text, file="workflow.yaml", base_dir=SUPPORT_TRIAGE.parent)


def test_retention_days_from_the_manifest(db_url: str) -> None:
    h = Harness(db_url, manifest=_manifest_with_retention(30))
    try:
        act = _activity(h)
        engine = h.il.engine
        now = time.time()
        early = purge_payloads(engine, now=now + 29 * DAY)
        assert early.total == 0
        assert early.purged[0].basis == "retention_days 30"
        assert early.purged[0].cutoff == pytest.approx(now - DAY)
        late = purge_payloads(engine, now=now + 31 * DAY, workflow="support-triage")
        assert late.total == 12
        assert is_marker(_payloads(h)["steps"][act["read"]][1])
        assert verify_chain(engine).ok
    finally:
        h.close()


def test_workflows_without_retention_are_skipped(sqlite_url: str) -> None:
    h = Harness(sqlite_url)
    try:
        _activity(h)
        before = _payloads(h)
        report = purge_payloads(h.il.engine, now=time.time() + 3650 * DAY)
        assert report.purged == []
        assert report.skipped == {"support-triage": "its active manifest sets no retention_days"}
        assert _payloads(h) == before
    finally:
        h.close()


def test_parse_age() -> None:
    assert parse_age("30d") == 30 * DAY
    assert parse_age("12h") == 12 * 3600
    assert parse_age(" 2w ") == 14 * DAY
    assert parse_age("90s") == 90
    assert parse_age("0s") == 0
    for bad in ("30", "d", "-1d", "1y", "1.5.2d"):
        with pytest.raises(ArgumentsInvalid):
            parse_age(bad)


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(purge)
    return app


def test_purge_command(sqlite_url: str) -> None:
    h = Harness(sqlite_url)
    try:
        _activity(h)
    finally:
        h.close()
    runner = CliRunner()
    result = runner.invoke(_cli(), ["--db", sqlite_url, "--older-than", "0s", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["dry_run"], data["total"]) == (True, 12)
    result = runner.invoke(_cli(), ["--db", sqlite_url, "--older-than", "0s", "--workflow", "support-triage"])
    assert result.exit_code == 0, result.output
    assert "purged 12 payload(s)" in result.output
    result = runner.invoke(_cli(), ["--db", sqlite_url])
    assert result.exit_code == 0, result.output
    assert "skipped support-triage: its active manifest sets no retention_days" in result.output
    result = runner.invoke(_cli(), ["--db", sqlite_url, "--older-than", "soon"])
    assert result.exit_code == 1
    assert "expected a number and a unit" in result.output


def test_triggers_are_stored_redacted_and_purged(db_url: str) -> None:
    h = Harness(db_url)
    try:
        trigger = {"from": "maria.okafor@example.com", "text": "card 4111 1111 1111 1111, order 77"}
        run = h.il.start_run(h.tokens["triage-bot"], trigger=trigger).id
        with h.il.engine.connect() as conn:
            stored = conn.execute(select(t.runs.c.trigger).where(t.runs.c.id == run)).scalar()
        assert "4111 1111" not in json.dumps(stored)
        assert "maria.okafor@example.com" not in json.dumps(stored)
        assert "order 77" in json.dumps(stored)
        [started] = [e for e in iter_events(h.il.engine, kinds=["run.started"]) if e.run_id == run]
        assert started.data["trigger_hash"] == hash_value(trigger)
        purge_payloads(h.il.engine, older_than_s=0, now=time.time() + 1)
        with h.il.engine.connect() as conn:
            purged = conn.execute(select(t.runs.c.trigger).where(t.runs.c.id == run)).scalar()
        assert is_marker(purged)
        assert "order 77" not in json.dumps(purged)
    finally:
        h.close()


def test_a_server_applies_the_manifests_retention_on_its_own(db_url: str) -> None:
    import asyncio

    from sqlalchemy import update

    from interlock._internal.api.housekeeping import housekeeping

    text = SUPPORT_TRIAGE.read_text(encoding="utf-8") + "\nretention_days: 1\n"
    manifest = load_manifest_text(text, file=str(SUPPORT_TRIAGE), base_dir=SUPPORT_TRIAGE.parent)
    h = Harness(db_url, manifest=manifest)
    try:
        run = h.run()
        step = h.act(run, "tickets.get", {"ticket_id": "T-1001"}).step_id
        old = time.time() - 3 * 86_400
        with h.il.engine.begin() as conn:
            conn.execute(update(t.steps).values(created_at=old))
            conn.execute(update(t.runs).values(started_at=old))

        def stored() -> Any:
            with h.il.engine.connect() as conn:
                return conn.execute(select(t.steps.c.arguments).where(t.steps.c.id == step)).scalar()

        async def serve() -> None:
            async with housekeeping(h.il, every_s=0.05)():
                for _ in range(2400):  # generous: the machine may be loaded
                    if is_marker(stored()):
                        return
                    await asyncio.sleep(0.05)

        asyncio.run(serve())
        assert is_marker(stored())
        [event] = list(iter_events(h.il.engine, kinds=[PURGE_EVENT]))
        assert event.actor == "interlock:retention"
        assert event.data["basis"] == "retention_days 1"
    finally:
        h.close()
