"""Replay judges the rules that read a run's history again under the candidate, on both engines:
loop detection, conflicting records and sequence failures are not taken as recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import Harness
from interlock._internal.gateway.runtime import build_runtime
from interlock._internal.manifest.loader import LoadedManifest, load_manifest_text
from interlock._internal.runs.replay import load_run, replay_run

NO_LOOP_RULE = ("    max_repeats: 3\n", "")
SEQUENCE_RULE = (
    "stop_rules:\n",
    "stop_rules:\n  - {id: update-then-refund, kind: sequence_failure, sequence: [tickets.update, payments.refund]}\n",
)
CONFLICT_RULE = (
    "stop_rules:\n",
    "stop_rules:\n  - {id: one-status, kind: conflicting_records, tool: payments.refund,"
    " sources: [tickets.get, tickets.update], key: ticket_id}\n",
)


def variant(path: Path, old: str, new: str) -> LoadedManifest:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    return load_manifest_text(text.replace(old, new, 1), base_dir=path.parent)


@pytest.fixture
def make(db_url: str):  # type: ignore[no-untyped-def]
    made: list[Harness] = []

    def build(manifest: Any) -> Harness:
        made.append(Harness(db_url, manifest=manifest))
        return made[-1]

    yield build
    for h in made:
        h.close()


def read_four_times(h: Harness) -> str:
    run = h.run()
    for _ in range(4):
        h.act(run, "tickets.get", {"ticket_id": "T-1001"})
    return run


def test_without_the_loop_rule_the_loop_no_longer_escalates(make, support_manifest_path: Path) -> None:
    h = make(support_manifest_path)
    run = read_four_times(h)
    record = load_run(h.il.engine, run)
    assert [s["decision"]["decision"] for s in record.steps] == ["allow", "allow", "allow", "escalate"]
    assert replay_run(record, h.runtime).changed == []
    report = replay_run(record, build_runtime(variant(support_manifest_path, *NO_LOOP_RULE)))
    [step] = report.changed
    assert (step.seq, step.recorded, step.now, step.recorded_reasons) == (
        4,
        "escalate",
        "allow",
        ["loop_detected"],
    )
    assert step.now_reasons[0]["code"] == "permitted"


def test_a_new_loop_rule_newly_escalates(make, support_manifest_path: Path) -> None:
    h = make(variant(support_manifest_path, *NO_LOOP_RULE))
    run = read_four_times(h)
    record = load_run(h.il.engine, run)
    assert [s["status"] for s in record.steps] == ["executed"] * 4
    report = replay_run(
        record, build_runtime(variant(support_manifest_path, "    max_repeats: 3\n", "    max_repeats: 2\n"))
    )
    assert [(s.seq, s.recorded, s.now, s.now_reasons[0]["code"]) for s in report.changed] == [
        (3, "allow", "escalate", "loop_detected"),
        (4, "allow", "escalate", "loop_detected"),
    ]
    assert "already ran 2 times" in report.changed[0].now_reasons[0]["message"]


def test_without_the_sequence_rule_a_failed_step_no_longer_escalates(
    make, support_manifest_path: Path
) -> None:
    h = make(variant(support_manifest_path, *SEQUENCE_RULE))
    run = h.run()
    assert (
        h.act(run, "tickets.update", {"ticket_id": "T-1001", "fields": {"priority": "high"}}).status
        == "executed"
    )
    failed = h.act(
        run, "payments.refund", {"ticket_id": "T-9999", "amount": 30, "currency": "USD", "reason": "dup"}
    )
    assert failed.status == "failed"
    assert h.il.get_run(run).state == "escalated"
    record = load_run(h.il.engine, run)
    same = replay_run(record, h.runtime)
    assert same.changed == []
    assert same.steps[1].now == "escalate"
    assert same.steps[1].now_reasons[-1]["code"] == "sequence_failure"
    report = replay_run(record, build_runtime(support_manifest_loaded(support_manifest_path)))
    [step] = report.changed
    assert (step.seq, step.tool, step.recorded, step.now) == (2, "payments.refund", "escalate", "allow")
    assert "sequence_failure" in step.recorded_reasons


def test_a_new_conflict_rule_escalates_and_dropping_it_allows(make, support_manifest_path: Path) -> None:
    h = make(support_manifest_path)
    run = h.run()
    h.act(run, "tickets.get", {"ticket_id": "T-1001"})
    h.act(run, "tickets.update", {"ticket_id": "T-1002", "fields": {"priority": "low"}})
    refund = {"ticket_id": "T-1001", "amount": 20, "currency": "USD", "reason": "duplicate"}
    assert h.act(run, "payments.refund", refund).status == "executed"
    record = load_run(h.il.engine, run)
    strict = build_runtime(variant(support_manifest_path, *CONFLICT_RULE))
    [step] = replay_run(record, strict).changed
    assert (step.seq, step.recorded, step.now, step.now_reasons[0]["code"]) == (
        3,
        "allow",
        "escalate",
        "conflicting_records",
    )

    # Recorded under the rule, the refund escalated; without it, the replay allows it.
    h2 = h
    strict_rt = h.il.load_workflow(variant(support_manifest_path, *CONFLICT_RULE))
    run2 = h2.run()
    h2.act(run2, "tickets.get", {"ticket_id": "T-1001"})
    h2.act(run2, "tickets.update", {"ticket_id": "T-1002", "fields": {"priority": "low"}})
    assert h2.act(run2, "payments.refund", refund).status == "escalated"
    record2 = load_run(h2.il.engine, run2)
    assert replay_run(record2, strict_rt).changed == []
    [back] = replay_run(record2, build_runtime(support_manifest_loaded(support_manifest_path))).changed
    assert (back.seq, back.recorded, back.now) == (3, "escalate", "allow")


def support_manifest_loaded(path: Path) -> LoadedManifest:
    return load_manifest_text(path.read_text(encoding="utf-8"), base_dir=path.parent)
