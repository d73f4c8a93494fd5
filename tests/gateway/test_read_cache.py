"""Read caching on the reference workflow (SQLite and PostgreSQL): `tickets.get` is cached for five
minutes per workflow and `tickets.update` makes the ticket's copy stale. A cached answer skips
only the upstream call: policy, brakes and limits still decide, and the step is recorded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from sqlalchemy import select

from conftest import SUPPORT_TRIAGE, Harness
from interlock._internal.audit.chain import iter_events
from interlock._internal.gateway.transports.base import CallContext
from interlock._internal.gateway.transports.python import PythonTransport
from interlock._internal.manifest.loader import load_manifest_text
from interlock._internal.manifest.models import ToolSpec
from interlock._internal.store import tables as t


class Counting:
    """The example's Python tools, with every upstream call counted by tool."""

    def __init__(self) -> None:
        self.inner = PythonTransport(base_dir=SUPPORT_TRIAGE.parent)
        self.calls: list[str] = []

    def call(self, tool: ToolSpec, arguments: dict[str, Any], ctx: CallContext) -> Any:
        self.calls.append(tool.name)
        return self.inner.call(tool, arguments, ctx)

    def close(self) -> None:
        self.inner.close()


def variant(edit: Any) -> Any:
    data = yaml.safe_load(SUPPORT_TRIAGE.read_text())
    edit(data)
    return load_manifest_text(
        yaml.safe_dump(data, sort_keys=False), file="variant.yaml", base_dir=SUPPORT_TRIAGE.parent
    )


def forbid_reporter_tickets(data: dict[str, Any]) -> None:
    data["rules"]["forbid"].append({"id": "reporter-no-tickets", "tool": "tickets.get", "roles": ["analyst"]})


@pytest.fixture
def setup(db_url: str) -> Iterator[tuple[Harness, Counting]]:
    h = Harness(db_url)
    upstream = Counting()
    h.il.load_workflow(variant(forbid_reporter_tickets), transports={"*": upstream})
    yield h, upstream
    h.close()
    upstream.close()


def gets(upstream: Counting) -> int:
    return upstream.calls.count("tickets.get")


def cache_metric(h: Harness, result: str) -> float:
    text = generate_latest(h.il.metrics.registry).decode()
    prefix = (
        f'interlock_cache_requests_total{{result="{result}",tool="tickets.get",workflow="support-triage"}}'
    )
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def test_a_hit_skips_the_upstream_but_not_policy(setup: tuple[Harness, Counting]) -> None:
    h, upstream = setup
    first_run, second_run = h.run(), h.run()
    first = h.act(first_run, "tickets.get", {"ticket_id": "T-1001"})
    assert first.executed
    assert gets(upstream) == 1
    # Another run of the workflow reads the same ticket: answered from the cache.
    again = h.act(second_run, "tickets.get", {"ticket_id": "T-1001"})
    assert again.executed
    assert gets(upstream) == 1
    assert again.result == first.result
    assert again.decision.reason_codes == ["permitted"]
    assert again.step_id != first.step_id
    [step] = [s for s in h.il.get_run(second_run).steps_detail if s.id == again.step_id]
    assert step.cached_from == first.step_id
    assert step.status == "executed"
    assert h.il.get_run(second_run).tool_calls == 1  # the limits counted it
    # A denied agent stays denied, cached answer or not: policy decides before the cache.
    reporter = h.run("reporter")
    denied = h.act(reporter, "tickets.get", {"ticket_id": "T-1001"}, agent="reporter")
    assert denied.status == "denied"
    assert denied.decision.reason_codes == ["forbidden"]
    assert denied.result is None
    # A pause holds a cached read like any other action.
    h.il.pause("workflow", "support-triage", actor="ops", reason="incident")
    paused = h.act(second_run, "tickets.get", {"ticket_id": "T-1001"})
    assert paused.decision.reason_codes == ["workflow_paused"]
    h.il.resume("workflow", "support-triage", actor="ops")
    assert gets(upstream) == 1
    # Recorded as a step of its own: an action.executed event naming its source, no upstream call.
    events = list(iter_events(h.il.engine, run_id=second_run))
    executed = [e for e in events if e.kind == "action.executed"]
    assert executed[0].data["cached_from"] == first.step_id
    assert not [e for e in events if e.kind == "execution.started"]
    assert cache_metric(h, "hit") == 1
    assert cache_metric(h, "miss") == 1


def test_a_write_makes_the_records_copy_stale(setup: tuple[Harness, Counting]) -> None:
    h, upstream = setup
    run = h.run()
    before = h.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert h.act(run, "tickets.get", {"ticket_id": "T-1002"}).executed
    assert gets(upstream) == 2
    priority = "low" if before.result["priority"] != "low" else "high"
    updated = h.act(run, "tickets.update", {"ticket_id": "T-1001", "fields": {"priority": priority}})
    assert updated.executed
    other = h.act(h.run(), "tickets.get", {"ticket_id": "T-1001"})
    assert gets(upstream) == 3  # stale after the update: read upstream again
    assert other.result["priority"] == priority
    [step] = [s for s in h.il.get_run(other.run_id).steps_detail if s.id == other.step_id]
    assert step.cached_from is None
    # Another ticket's copy is untouched by that update.
    assert h.act(h.run(), "tickets.get", {"ticket_id": "T-1002"}).executed
    assert gets(upstream) == 3
    # And the fresh copy of T-1001 is served again.
    assert h.act(h.run(), "tickets.get", {"ticket_id": "T-1001"}).result["priority"] == priority
    assert gets(upstream) == 3


def test_an_answer_fetched_before_a_write_is_never_served_after_it(setup: tuple[Harness, Counting]) -> None:
    from interlock._internal.gateway import cache

    h, upstream = setup
    runtime = h.il.runtime("support-triage")
    run = h.il.get_run(h.run())
    fetched = time.time()
    # A write's outcome lands (its mark) while a slow read of the same ticket is still in flight...
    assert h.act(run.id, "tickets.update", {"ticket_id": "T-1003", "fields": {"priority": "urgent"}}).executed
    # ...and the slow read then stores what it fetched before the write.
    with h.il.engine.begin() as conn:
        cache.store(
            conn,
            runtime,
            run,
            "tickets.get",
            {"ticket_id": "T-1003"},
            {"stale": True},
            step_id="s",
            fetched_at=fetched,
        )
    assert cache.lookup(h.il.engine, runtime, run, "tickets.get", {"ticket_id": "T-1003"}) is None
    fresh = h.act(run.id, "tickets.get", {"ticket_id": "T-1003"})
    assert fresh.result["priority"] == "urgent"
    assert gets(upstream) == 1


def test_answers_expire_after_their_ttl_and_run_scope_stays_in_its_run(db_url: str) -> None:
    def edit(data: dict[str, Any]) -> None:
        forbid_reporter_tickets(data)
        get = next(tool for tool in data["tools"] if tool["name"] == "tickets.get")
        get["cache"] = {"ttl_s": 0.5, "scope": "run", "key": ["ticket_id"]}

    h = Harness(db_url)
    upstream = Counting()
    h.il.load_workflow(variant(edit), transports={"*": upstream})
    try:
        run = h.run()
        assert h.act(run, "tickets.get", {"ticket_id": "T-1004"}).executed
        assert h.act(run, "tickets.get", {"ticket_id": "T-1004"}).executed
        assert gets(upstream) == 1
        assert h.act(h.run(), "tickets.get", {"ticket_id": "T-1004"}).executed  # another run: its own
        assert gets(upstream) == 2
        time.sleep(0.6)
        assert h.act(run, "tickets.get", {"ticket_id": "T-1004"}).executed  # expired: upstream again
        assert gets(upstream) == 3
        with h.il.engine.connect() as conn:
            assert conn.execute(select(t.cache_entries.c.scope)).scalars().all()
        from interlock._internal.gateway import cache

        assert cache.purge_expired(h.il.engine, now=time.time() + 1) >= 2
    finally:
        h.close()
        upstream.close()


def test_the_cached_copy_is_the_stored_redacted_form(setup: tuple[Harness, Counting], tmp_path: Path) -> None:
    h, _ = setup
    run = h.run()
    first = h.act(run, "tickets.get", {"ticket_id": "T-1001"})
    cached = h.act(h.run(), "tickets.get", {"ticket_id": "T-1001"})
    with h.il.engine.connect() as conn:
        stored = conn.execute(select(t.steps.c.result).where(t.steps.c.id == first.step_id)).scalar_one()
        entry = conn.execute(
            select(t.cache_entries.c.result).where(t.cache_entries.c.scope == "")
        ).scalar_one()
    assert entry == stored
    assert cached.result == stored


def test_the_weekly_review_shows_the_hit_rate(setup: tuple[Harness, Counting]) -> None:
    from datetime import UTC, datetime

    from interlock._internal.evals.weekly import render_weekly_html, weekly_figures

    h, upstream = setup
    for _ in range(3):
        assert h.act(h.run(), "tickets.get", {"ticket_id": "T-1001"}).executed
    assert h.act(h.run(), "tickets.search", {"query": "refund"}).executed  # not cached: not counted
    assert gets(upstream) == 1
    report = weekly_figures(h.il.engine, "support-triage", datetime.now(UTC).date())
    cache = report["read_cache"]
    assert (cache["reads"], cache["hits"]) == (3, 2)
    assert cache["hit_rate"] == pytest.approx(2 / 3)
    assert cache["previous_hit_rate"] is None
    assert [c["tool"] for c in cache["tools"]] == ["tickets.get"]
    html = render_weekly_html(report)
    assert '<strong id="cache-hit-rate">66.7%</strong>' in html


def test_replicas_share_the_cache_and_its_invalidation(setup: tuple[Harness, Counting], db_url: str) -> None:
    from interlock import Interlock, Settings

    h, upstream = setup
    # A second replica: its own process state (engine, runtimes, metrics) on the same database.
    other = Interlock(Settings(database={"url": db_url}))  # type: ignore[arg-type]
    other_upstream = Counting()
    try:
        other.load_workflow(variant(forbid_reporter_tickets), transports={"*": other_upstream})
        token = other.issue_token("triage-bot", h.secrets["triage-bot"]).token
        assert h.act(h.run(), "tickets.get", {"ticket_id": "T-1005"}).executed
        run = other.start_run(token).id
        assert other.act(token, run, "tickets.get", {"ticket_id": "T-1005"}).executed
        assert (gets(upstream), gets(other_upstream)) == (1, 0)  # answered from the shared cache
        fields = {"ticket_id": "T-1005", "fields": {"status": "pending"}}
        assert other.act(token, run, "tickets.update", fields).executed
        assert h.act(h.run(), "tickets.get", {"ticket_id": "T-1005"}).result["status"] == "pending"
        assert gets(upstream) == 2  # the other replica's write made the copy stale here too
    finally:
        other.close()
        other_upstream.close()


def test_a_write_whose_outcome_became_unknown_makes_the_copy_stale(setup: tuple[Harness, Counting]) -> None:
    h, upstream = setup
    run = h.run()
    assert h.act(run, "tickets.get", {"ticket_id": "T-1006"}).executed
    assert h.act(h.run(), "tickets.get", {"ticket_id": "T-1006"}).executed
    assert gets(upstream) == 1
    now = time.time()
    # An update journaled by a process that died mid-call: whether it changed the ticket is unknown.
    with h.il.engine.begin() as conn:
        conn.execute(
            t.executions.insert().values(
                id="stp_dead",
                run_id=run,
                workflow="support-triage",
                agent_id="triage-bot",
                tool="tickets.update",
                args_hash="x",
                upstream_key="il1-dead",
                seq=2,
                state="executing",
                attempts=1,
                decision={"decision": "allow", "reasons": [], "tool": "tickets.update", "verb": "update"},
                payload={"ticket_id": "T-1006", "fields": {"priority": "urgent"}},
                cost_micros=0,
                lease_expires_at=now - 1,
                created_at=now - 60,
            )
        )
    assert h.il.recover() == ["stp_dead"]
    assert h.act(h.run(), "tickets.get", {"ticket_id": "T-1006"}).executed
    assert gets(upstream) == 2


def test_cached_answers_are_encrypted_at_rest_like_other_results(db_url: str) -> None:
    import secrets

    from sqlalchemy import text

    from interlock._internal.store.encryption import PREFIX

    storage = {"encryption_keys": {"k1": secrets.token_hex(32)}, "encryption_key_id": "k1"}
    h = Harness(db_url, storage=storage)
    try:
        first = h.act(h.run(), "tickets.get", {"ticket_id": "T-1001"})
        cached = h.act(h.run(), "tickets.get", {"ticket_id": "T-1001"})
        with h.il.engine.connect() as conn:
            [raw] = conn.execute(text("SELECT result FROM cache_entries WHERE result IS NOT NULL")).scalars()
            step = conn.execute(
                select(t.steps.c.cached_from).where(t.steps.c.id == cached.step_id)
            ).scalar_one()
        assert str(raw).startswith(PREFIX + "k1:")
        assert "T-1001" not in str(raw)
        assert step == first.step_id
        assert cached.result["ticket_id"] == "T-1001"
    finally:
        h.close()
