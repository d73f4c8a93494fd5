"""Policy what-if over a large history, on SQLite.

Inserts synthetic recorded decisions for the support-triage reference workflow into a temporary
database (a realistic mix: reads and searches, drafts, ticket updates, refunds of varying amounts,
e-mails, the odd forbidden delete, invalid arguments, low-confidence escalations and step-cap
denials), redacted and hashed the way the pipeline stores them, with decisions the reference
policy makes. Then it times ``what_if`` with a candidate that lowers the refund hard limit from
500 to 100 and lets drafts by the reporter through, and prints the figure.

Almost every row has distinct arguments (ticket ids, free-text reasons, e-mail bodies), so the
cache of identical decisions helps little and the figure is close to the worst case.

Run: python bench/whatif.py [--n 100000] [--workers N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "examples" / "support-triage" / "workflow.yaml"

_WORDS = (
    "refund",
    "invoice",
    "login",
    "password",
    "export",
    "shipping",
    "damaged",
    "sso",
    "gdpr",
    "charged",
    "twice",
    "cancel",
    "upgrade",
    "vat",
    "timezone",
    "api",
    "429",
    "order",
    "keyboard",
)
_REASONS = (
    "late delivery",
    "double charge",
    "damaged item",
    "accidental upgrade",
    "service outage",
    "unused seats",
    "goodwill gesture",
    "wrong item shipped",
)


def _reason(code: str, policy_id: str | None = None, message: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"code": code, "message": message or code, "field": None, "policy_id": policy_id}
    return out


def synth(
    rng: random.Random, i: int
) -> tuple[str, str, dict[str, Any], str, list[dict[str, Any]], float | None]:
    """One recorded action: (agent, tool, arguments, decision, reasons, confidence)."""
    ticket = f"T-{rng.randint(1, 99_999)}"
    roll = rng.random()
    confidence = round(rng.uniform(0.55, 1.0), 2) if rng.random() < 0.5 else None
    allow_read = [_reason("permitted", "allow:reads")]
    if roll < 0.30:
        return "triage-bot", "tickets.get", {"ticket_id": ticket}, "allow", allow_read, confidence
    if roll < 0.42:
        query = " ".join(rng.sample(_WORDS, rng.randint(1, 3)))
        limit = rng.choice((10, 10, 20, 25, 50, 100))
        return (
            "triage-bot",
            "tickets.search",
            {"query": query, "limit": limit},
            "allow",
            allow_read,
            confidence,
        )
    if roll < 0.50:
        cid = f"C-{rng.randint(1, 20_000)}"
        return "triage-bot", "customers.get", {"customer_id": cid}, "allow", allow_read, confidence
    if roll < 0.53:
        return "reporter", "tickets.get", {"ticket_id": ticket}, "allow", allow_read, None
    if roll < 0.54:
        body = {"ticket_id": ticket, "body": "Summary for the weekly report"}
        return "reporter", "replies.draft", body, "deny", [_reason("not_granted", "grant:analyst")], None
    if roll < 0.64:
        body = f"Hello, thanks for contacting us about {ticket}. We are looking into it (ref {i})."
        return (
            "triage-bot",
            "replies.draft",
            {"ticket_id": ticket, "body": body},
            "allow",
            [_reason("permitted", "allow:drafts")],
            confidence,
        )
    if roll < 0.74:
        fields: dict[str, Any] = {"priority": rng.choice(("low", "normal", "high", "urgent"))}
        if rng.random() < 0.5:
            fields["group"] = rng.choice(("billing", "engineering", "shipping", "support"))
        return (
            "triage-bot",
            "tickets.update",
            {"ticket_id": ticket, "fields": fields},
            "allow",
            [_reason("permitted", "allow:ticket-updates")],
            confidence,
        )
    if roll < 0.88:
        amount = round(min(rng.lognormvariate(3.6, 1.1), 2000.0), 2) or 1.0
        args = {
            "ticket_id": ticket,
            "amount": amount,
            "currency": rng.choice(("USD", "USD", "EUR")),
            "reason": f"{rng.choice(_REASONS)} on order {rng.randint(10_000, 99_999)}",
        }
        if amount > 500:
            reasons = [_reason("forbidden", "forbid:refund-hard-limit")]
            return "triage-bot", "payments.refund", args, "deny", reasons, confidence
        if amount > 50:
            reasons = [_reason("review_required", "review:refund-review")]
            return "triage-bot", "payments.refund", args, "require_approval", reasons, confidence
        reasons = [_reason("permitted", "allow:small-refunds")]
        return "triage-bot", "payments.refund", args, "allow", reasons, confidence
    if roll < 0.95:
        first = rng.choice(("maria", "jonas", "priya", "lucas", "emma", "kenji", "sofia", "daniel"))
        args = {
            "ticket_id": ticket,
            "to": f"{first}.{rng.randint(1, 9999)}@example.com",
            "subject": f"About your ticket {ticket}",
            "body": f"Dear customer, update #{i} on your request.",
        }
        return (
            "triage-bot",
            "emails.send",
            args,
            "require_approval",
            [_reason("review_required", "review:customer-email")],
            confidence,
        )
    if roll < 0.96:
        cid = f"C-{rng.randint(1, 20_000)}"
        return (
            "triage-bot",
            "customers.delete",
            {"customer_id": cid},
            "deny",
            [_reason("forbidden", "forbid:no-deletes")],
            confidence,
        )
    if roll < 0.97:
        args = {"ticket_id": ticket, "amount": -5, "currency": "GBP", "reason": "x"}
        return (
            "triage-bot",
            "payments.refund",
            args,
            "deny",
            [_reason("invalid_arguments", None, "amount: -5 is less than or equal to the minimum of 0")],
            None,
        )
    if roll < 0.98:
        return (
            "triage-bot",
            "tickets.update",
            {"ticket_id": ticket, "fields": {"status": "solved"}},
            "escalate",
            [_reason("low_confidence", "stop:unsure")],
            round(rng.uniform(0.05, 0.45), 2),
        )
    return (
        "triage-bot",
        "tickets.get",
        {"ticket_id": ticket},
        "deny",
        [_reason("tool_call_cap_reached", None, "run reached max_tool_calls=30")],
        None,
    )


def populate(db_url: str, n: int, *, seed: int = 7) -> float:
    from interlock._internal.audit.canonical import hash_value
    from interlock._internal.settings import DatabaseSettings
    from interlock._internal.store import tables as t
    from interlock._internal.store.engine import make_engine, transaction
    from interlock._internal.store.migrate import upgrade
    from interlock._internal.telemetry.redaction import redact

    rng = random.Random(seed)
    engine = make_engine(DatabaseSettings(url=db_url))
    upgrade(engine)
    now = time.time()
    rows = []
    for i in range(n):
        agent, tool, args, decision, reasons, confidence = synth(rng, i)
        valid = reasons[0]["code"] != "invalid_arguments"
        rows.append(
            {
                "id": f"dec_{i:08d}",
                "run_id": f"run_{i // 12:07d}",
                "step_id": f"dec_{i:08d}",
                "agent_id": agent,
                "workflow": "support-triage",
                "environment": "production",
                "tool": tool,
                "verb": None,
                "decision": decision,
                "reasons": reasons,
                "policy_ids": [r["policy_id"] for r in reasons if r["policy_id"]],
                "risk": [],
                "args_hash": hash_value(args) if valid else None,
                "arguments": redact(args),
                "manifest_version": "support-triage@1.0.0",
                "policy_version": "bench",
                "confidence": confidence,
                # Spread over the last six days, in order.
                "created_at": now - 6 * 86_400 + i * (6 * 86_400 / n),
            }
        )
    started = time.perf_counter()
    with transaction(engine) as conn:
        for k in range(0, n, 10_000):
            conn.execute(t.decisions.insert(), rows[k : k + 10_000])
    engine.dispose()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=None)
    opts = parser.parse_args()

    from interlock._internal.evals.whatif import LABELS, parse_since, what_if
    from interlock._internal.manifest.loader import load_manifest_text
    from interlock._internal.settings import DatabaseSettings
    from interlock._internal.store.engine import make_engine

    text = MANIFEST.read_text(encoding="utf-8")
    candidate_text = text.replace('when: "amount > 500"', 'when: "amount > 100"').replace(
        "analyst:\n    verbs: [read]", "analyst:\n    verbs: [read, draft]"
    )
    assert candidate_text != text
    candidate = load_manifest_text(candidate_text, file="candidate.yaml", base_dir=MANIFEST.parent)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'whatif.db'}"
        print(f"inserting {opts.n} recorded decisions …", flush=True)
        inserted = populate(url, opts.n)
        print(f"  inserted in {inserted:.1f}s")
        engine = make_engine(DatabaseSettings(url=url))
        started = time.perf_counter()
        report = what_if(engine, candidate, since=parse_since("7d"), workers=opts.workers)
        elapsed = time.perf_counter() - started
        engine.dispose()
    print(
        f"what-if: {report.total} decisions ({report.distinct} distinct) in {elapsed:.2f}s "
        f"= {report.total / elapsed:,.0f} decisions/s"
    )
    print(
        f"  unchanged {report.unchanged}, held {report.held}, not comparable {report.not_comparable}, "
        f"changed {report.changed} ({report.change_rate:.2%})"
    )
    for label, count in sorted(report.transitions.items()):
        print(f"  {LABELS.get(label, label)}: {count}")
    return 0 if elapsed < 30 else 1


if __name__ == "__main__":
    sys.exit(main())
