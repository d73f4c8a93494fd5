"""Policy what-if over a constructed history of decisions, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from interlock._internal.audit.canonical import hash_value
from interlock._internal.cli.whatif import app
from interlock._internal.evals import whatif as whatif_module
from interlock._internal.evals.whatif import cedar_reads, judge, parse_since, what_if
from interlock._internal.gateway.runtime import build_runtime
from interlock._internal.manifest.loader import LoadedManifest, load_manifest_text
from interlock._internal.runs.replay import reconcile
from interlock._internal.settings import DatabaseSettings
from interlock._internal.store import tables as t
from interlock._internal.store.engine import make_engine, transaction
from interlock._internal.store.migrate import upgrade
from interlock._internal.telemetry.redaction import redact
from interlock.exceptions import ConfigError

runner = CliRunner()
NOW = time.time()
DAY = 86_400.0


def variant(manifest: Path, *edits: tuple[str, str]) -> LoadedManifest:
    text = manifest.read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return load_manifest_text(text, base_dir=manifest.parent)


REFUNDS_OVER_100 = ('when: "amount > 500"', 'when: "amount > 100"')


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(DatabaseSettings(url=db_url))
    upgrade(eng)
    yield eng
    eng.dispose()


class History:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        tool: str,
        args: Any,
        decision: str,
        *codes: str,
        n: int = 1,
        agent: str = "triage-bot",
        age_days: float = 1.0,
        workflow: str = "support-triage",
        confidence: float | None = None,
        hashed: bool = True,
    ) -> None:
        for _ in range(n):
            i = len(self.rows)
            self.rows.append(
                {
                    "id": f"dec_{i:06d}",
                    "run_id": f"run_{i:06d}",
                    "step_id": f"dec_{i:06d}",
                    "agent_id": agent,
                    "workflow": workflow,
                    "environment": "production",
                    "tool": tool,
                    "verb": None,
                    "decision": decision,
                    "reasons": [{"code": c, "message": c} for c in codes],
                    "policy_ids": [],
                    "risk": [],
                    "args_hash": hash_value(args) if hashed else None,
                    "arguments": redact(args),
                    "manifest_version": "support-triage@1.0.0",
                    "policy_version": "test",
                    "confidence": confidence,
                    "created_at": NOW - age_days * DAY + i,
                }
            )

    def save(self) -> None:
        with transaction(self.engine) as conn:
            conn.execute(t.decisions.insert(), self.rows)


def refund(amount: float, ticket: str = "T-1001", **extra: Any) -> dict[str, Any]:
    return {"ticket_id": ticket, "amount": amount, "currency": "USD", "reason": "late delivery", **extra}


def constructed(engine: Engine) -> History:
    h = History(engine)
    h.add("payments.refund", refund(30), "allow", "permitted", n=10)
    h.add("payments.refund", refund(120), "require_approval", "review_required", n=6)
    h.add("payments.refund", refund(300, "T-1002"), "require_approval", "review_required", n=4)
    h.add("payments.refund", refund(900), "deny", "forbidden", n=3)
    h.add("tickets.get", {"ticket_id": "T-1001"}, "allow", "permitted", n=5)
    h.add("customers.delete", {"customer_id": "C-1001"}, "deny", "forbidden", n=2)
    # A pause denied these; it would deny them again, whatever the candidate says.
    h.add("payments.refund", refund(120), "deny", "workflow_paused", n=2)
    # Loop detection escalated this allowed refund; it holds while the candidate still allows it.
    h.add("payments.refund", refund(40), "escalate", "loop_detected")
    # Outside the window, and another workflow's: neither is counted.
    h.add("payments.refund", refund(300), "require_approval", "review_required", n=5, age_days=30)
    h.add("payments.refund", refund(300), "require_approval", "review_required", n=2, workflow="other")
    h.save()
    return h


def test_counts_per_transition_on_a_constructed_history(engine: Engine, support_manifest_path: Path) -> None:
    constructed(engine)
    candidate = variant(support_manifest_path, REFUNDS_OVER_100)
    report = what_if(engine, candidate, since=parse_since("7d"), workers=1)
    assert report.transitions == {"require_approval->deny": 10}
    assert (report.total, report.unchanged, report.held, report.not_comparable) == (33, 20, 3, 0)
    assert report.changed == 10
    assert report.change_rate == pytest.approx(10 / 33)
    assert report.exceeds(max_changes=9)
    assert not report.exceeds(max_changes=10)
    assert report.exceeds(max_change_rate=0.3)
    assert not report.exceeds(max_change_rate=0.31)
    examples = report.examples["require_approval->deny"]
    assert len(examples) == 2  # one per distinct decision: 120 on T-1001 and 300 on T-1002
    assert {e["arguments"]["amount"] for e in examples} == {120, 300}
    assert examples[0]["old_reasons"][0]["code"] == "review_required"
    assert examples[0]["new_reasons"][0]["policy_id"] == "forbid:refund-hard-limit"
    # Identical decisions were judged once.
    assert report.distinct == 7


def test_the_recorded_policy_changes_nothing_and_the_window_counts(
    engine: Engine, support_manifest_path: Path
) -> None:
    constructed(engine)
    same = variant(support_manifest_path)
    report = what_if(engine, same, since=parse_since("7d"), workers=1)
    assert report.changed == 0
    assert report.total == 33
    everything = what_if(engine, same, since=None, workers=1)
    assert everything.total == 38  # the old rows too, never the other workflow's


def test_redacted_arguments_that_fail_a_tighter_schema_are_not_comparable(
    engine: Engine, support_manifest_path: Path
) -> None:
    h = History(engine)
    email = {"ticket_id": "T-1001", "to": "maria.okafor@example.com", "subject": "Hi", "body": "Done."}
    h.add("emails.send", email, "require_approval", "review_required", n=3)
    plain = {"ticket_id": "T-1001", "to": "a@b.io", "subject": "Hi", "body": "Done."}
    h.add("emails.send", plain, "require_approval", "review_required")  # under 8 characters: not masked
    h.save()
    tighter = variant(
        support_manifest_path,
        (
            "to: {type: string, format: email, maxLength: 254}",
            'to: {type: string, format: email, maxLength: 254, pattern: "^[a-z.]+@[a-z.]+$"}',
        ),
    )
    report = what_if(engine, tighter, workers=1)
    assert (report.not_comparable, report.unchanged, report.changed) == (3, 1, 0)


def test_policy_reads_come_from_the_cedar_ast(support_manifest_path: Path) -> None:
    runtime = build_runtime(variant(support_manifest_path))
    reads = cedar_reads(runtime.compiled.text)
    assert reads.args == frozenset({("amount",)})
    assert reads.attributes == frozenset({"risk"})
    whole = cedar_reads('permit (principal, action, resource) when { context.args == {"a": 1} };')
    assert whole.args is None
    nested = cedar_reads('permit (principal, action, resource) when { context.args.fields.priority == "x" };')
    assert nested.args == frozenset({("fields", "priority")})


# ---- the cache of equivalent decisions is exact -------------------------------------------------

CANDIDATES = {
    "refunds over 100": [REFUNDS_OVER_100],
    "urgent updates need review": [
        (
            "  require_approval:\n",
            "  require_approval:\n"
            "    - {id: urgent, tool: tickets.update, when: 'fields.priority == \"urgent\"'}\n",
        )
    ],
    "bulk at 20, drafts escalate on refund words": [
        ('when: "limit > 50"', 'when: "limit > 20"'),
        (
            "stop_rules:\n",
            "stop_rules:\n"
            "  - {id: refund-talk, kind: sensitive_category, tool: replies.draft, categories: [money]}\n",
        ),
    ],
    "confidence routing": [
        (
            "approvals:\n  expires_after_s",
            "confidence: {auto: 0.8, review: 0.3}\n\napprovals:\n  expires_after_s",
        )
    ],
}


def random_args(rng: random.Random, tool: str) -> Any:
    """Arguments of every kind: valid, invalid, redacted, lookalike, inexact numbers."""
    ticket = rng.choice(["T-1001", "T-1002", "T-10x", "T-1003"])
    if tool == "payments.refund":
        amount = rng.choice([10, 50, 50.0, 50.01, 99.99, 100, 100.00001, 120, 500, 501, -1, "30", True])
        args: dict[str, Any] = refund(amount, ticket)
        if rng.random() < 0.1:
            args["approved_by"] = "ceo"
        if rng.random() < 0.1:
            del args["reason"]
        return args
    if tool == "tickets.update":
        fields = rng.choice(
            [
                {"priority": "urgent"},
                {"priority": "low"},
                {"priority": "urgent", "group": "x"},
                {},
                {"tags": [1]},
            ]
        )
        return {"ticket_id": ticket, "fields": fields}
    if tool == "tickets.search":
        return {"query": rng.choice(["refund", "a" * 600, ""]), "limit": rng.choice([5, 21, 51, 100, 0, 2.0])}
    if tool == "replies.draft":
        return {
            "ticket_id": ticket,
            "body": rng.choice(["Your refund is on its way", "Hello", "", "wire it"]),
        }
    if tool == "emails.send":
        to = rng.choice(["maria.okafor@example.com", "jo@x.io"])
        return {"ticket_id": ticket, "to": to, "subject": "s", "body": "b"}
    return rng.choice([{"customer_id": "C-1001"}, [], None, {"ticket_id": "T-1001"}])


TOOLS = [
    "payments.refund",
    "tickets.update",
    "tickets.search",
    "replies.draft",
    "emails.send",
    "customers.delete",
    "nope.tool",
]
RECORDED = [
    ("allow", "permitted"),
    ("deny", "forbidden"),
    ("require_approval", "review_required"),
    ("escalate", "loop_detected"),
    ("deny", "run_not_active"),
    ("deny", "invalid_arguments"),
]


def random_history(engine: Engine, seed: int, n: int = 400) -> History:
    rng = random.Random(seed)
    h = History(engine)
    for _ in range(n):
        tool = rng.choice(TOOLS)
        decision, code = rng.choice(RECORDED)
        h.add(
            tool,
            random_args(rng, tool),
            decision,
            code,
            confidence=rng.choice([None, None, 0.2, 0.5, 0.9, 0.123456]),
            agent=rng.choice(["triage-bot", "triage-bot", "reporter"]),
            hashed=code != "invalid_arguments",
        )
    h.save()
    return h


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_equivalent_decisions_share_a_judgement_exactly(
    engine: Engine, support_manifest_path: Path, name: str
) -> None:
    history = random_history(engine, seed=len(name))
    candidate = variant(support_manifest_path, *CANDIDATES[name])
    report = what_if(engine, candidate, workers=1)
    # The same history judged row by row, without any cache.
    runtime = build_runtime(candidate)
    expected: Counter[str] = Counter()
    for row in history.rows:
        codes = [r["code"] for r in row["reasons"]]
        if "run_not_active" in codes:
            expected["held"] += 1
            continue
        verdict = judge(
            runtime,
            agent_id=row["agent_id"],
            environment="production",
            tool=row["tool"],
            arguments=row["arguments"],
            confidence=row["confidence"],
        )
        now, basis = reconcile(row["decision"], codes, verdict.decision)
        exact = row["args_hash"] is not None and hash_value(row["arguments"]) == row["args_hash"]
        if row["args_hash"] is None:
            exact = "***@" not in json.dumps(row["arguments"]) and "[REDACTED" not in json.dumps(
                row["arguments"]
            )
        if now == row["decision"]:
            expected["held" if basis in ("brake", "held") else "unchanged"] += 1
        elif not exact and "invalid_arguments" in (*codes, *verdict.codes):
            expected["not_comparable"] += 1
        else:
            expected[f"{row['decision']}->{now}"] += 1
    got = Counter(
        {
            **report.transitions,
            "unchanged": report.unchanged,
            "held": report.held,
            "not_comparable": report.not_comparable,
        }
    )
    assert +got == +expected
    assert report.distinct < len(history.rows)


def test_worker_processes_give_the_same_answer(
    engine: Engine, support_manifest_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    random_history(engine, seed=3, n=300)
    candidate = variant(support_manifest_path, REFUNDS_OVER_100)
    alone = what_if(engine, candidate, workers=1).as_dict()
    monkeypatch.setattr(whatif_module, "POOL_THRESHOLD", 10)
    monkeypatch.setattr(whatif_module, "_CHUNK", 20)
    pooled = what_if(engine, candidate, workers=2).as_dict()
    for report in (alone, pooled):
        report.pop("elapsed_s")
    assert pooled == alone


def test_parse_since() -> None:
    assert parse_since("7d", now=1_000_000) == 1_000_000 - 7 * DAY
    assert parse_since("90m", now=10_000) == 10_000 - 5400
    assert parse_since("2024-01-01") == 1704067200.0
    with pytest.raises(ConfigError):
        parse_since("last tuesday")


def test_cli_gates_on_the_threshold(
    engine: Engine, db_url: str, support_manifest_path: Path, tmp_path: Path
) -> None:
    constructed(engine)
    candidate = tmp_path / "workflow.yaml"
    candidate.write_text(support_manifest_path.read_text().replace(*REFUNDS_OVER_100, 1))
    base = ["--manifest", str(candidate), "--db", db_url, "--since", "7d", "--workers", "1"]
    over = runner.invoke(app, [*base, "--max-changes", "9", "--json"])
    assert over.exit_code == 1, over.output
    data = json.loads(over.stdout)
    assert data["transitions"] == {"require_approval->deny": 10}
    assert data["threshold"] == {"max_changes": 9, "max_change_rate": None, "exceeded": True}
    within = runner.invoke(app, [*base, "--max-change-rate", "0.5"])
    assert within.exit_code == 0, within.output
    assert "needed approval → denied" in within.stdout
    assert "forbid:refund-hard-limit" in within.stdout
    missing = runner.invoke(app, ["--manifest", str(tmp_path / "nope.yaml"), "--db", db_url, "--json"])
    assert missing.exit_code == 2


def test_cli_writes_junit_and_a_markdown_summary(
    engine: Engine, db_url: str, support_manifest_path: Path, tmp_path: Path
) -> None:
    import xml.etree.ElementTree as ET

    constructed(engine)
    candidate = tmp_path / "workflow.yaml"
    candidate.write_text(support_manifest_path.read_text().replace(*REFUNDS_OVER_100, 1))
    junit, summary = tmp_path / "whatif.xml", tmp_path / "whatif.md"
    base = ["--manifest", str(candidate), "--db", db_url, "--workers", "1", "--junit", str(junit)]
    over = runner.invoke(app, [*base, "--summary", str(summary), "--max-changes", "9"])
    assert over.exit_code == 1, over.output
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    gate = cases["change-gate"].find("failure")
    assert gate is not None
    assert gate.get("message", "").startswith("10 of ")
    out = cases["require_approval->deny"].find("system-out")
    assert out is not None
    assert (out.text or "").startswith("10 decisions: needed approval → denied")
    text = summary.read_text()
    assert "❌ too many changes" in text
    assert "| needed approval → denied | 10 |" in text
    within = runner.invoke(app, [*base, "--max-changes", "10"])
    assert within.exit_code == 0, within.output
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("failures") == "0"


# ---- rules that read the run's history are judged from its steps, not held -----------------------

NO_LOOP_RULE = ("    max_repeats: 3\n", "")


def test_history_rules_are_judged_again_from_the_runs_steps(db_url: str, support_manifest_path: Path) -> None:
    from conftest import Harness

    h = Harness(db_url)
    try:
        looped = h.run()
        for _ in range(4):  # the fourth identical read escalates (max_repeats: 3)
            h.act(looped, "tickets.get", {"ticket_id": "T-1001"})
        other = h.run()
        for _ in range(3):  # three identical reads: allowed today, a loop under max_repeats: 2
            h.act(other, "tickets.get", {"ticket_id": "T-1002"})
        same = what_if(h.il.engine, variant(support_manifest_path), workers=1)
        assert (same.changed, same.total) == (0, 7)
        assert same.held == 0  # the loop escalation is judged again (and agrees), not held

        lenient = what_if(h.il.engine, variant(support_manifest_path, NO_LOOP_RULE), workers=1)
        assert lenient.transitions == {"escalate->allow": 1}
        [example] = lenient.examples["escalate->allow"]
        assert example["old_reasons"][0]["code"] == "loop_detected"

        strict = what_if(
            h.il.engine,
            variant(support_manifest_path, ("    max_repeats: 3\n", "    max_repeats: 2\n")),
            workers=1,
        )
        # Third and fourth read of the looped run, third of the other: each had run twice before.
        assert strict.transitions == {"allow->escalate": 2}
        assert strict.unchanged == 5
        assert {e["new_reasons"][0]["code"] for e in strict.examples["allow->escalate"]} == {"loop_detected"}
    finally:
        h.close()
