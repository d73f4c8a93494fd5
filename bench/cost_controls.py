"""What read caching saves and what value limits cost, in the embedded pipeline, side by side.

(a) A read of a tool whose upstream takes ``--upstream-ms`` (a help desk answering in 20 ms, say):
    the same governed read answered by the upstream (cache miss: a fresh ticket each time) and from
    the cache (hit: a ticket read before). Policy, limits and the record are paid either way.
(b) A refund through the whole pipeline with and without two value limits on it (per ticket and
    per workflow per day): what the reservation, the holds and their settlement add per action.

The two sides alternate action by action so that noise from other work on the machine hits both
alike. Medians and p90 in milliseconds, and their ratio. SQLite by default; ``--db URL`` for
PostgreSQL.

Run: python bench/cost_controls.py [--n 300] [--upstream-ms 20] [--db URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

TOOLS = """
import time

DELAY = float(__import__("os").environ.get("BENCH_UPSTREAM_MS", "20")) / 1000


def get_ticket(ticket_id):
    time.sleep(DELAY)
    return {"ticket_id": ticket_id, "subject": "Where is my order?", "status": "open"}


def refund(ticket_id, amount, currency):
    return {"refund_id": "R-1", "ticket_id": ticket_id, "amount": amount, "currency": currency}
"""

MANIFEST = """
name: {name}
version: "1"
owner: bench@example.com
objective: measure read caching and value limits
success_metric: {{name: latency}}
environments: [production]
agents:
  - {{id: bot-{name}, environment: production, roles: [worker]}}
roles:
  worker: {{verbs: [read, refund]}}
tools:
  - name: tickets.get
    verb: read
    idempotent: true
    input_schema:
      type: object
      properties: {{ticket_id: {{type: string}}}}
      required: [ticket_id]
    upstream: {{kind: python, callable: "bench_tools:get_ticket"}}
    cache: {{ttl_s: 3600, scope: workflow, key: [ticket_id]}}
  - name: payments.refund
    verb: refund
    traits: [money]
    input_schema:
      type: object
      properties:
        ticket_id: {{type: string}}
        amount: {{type: number}}
        currency: {{enum: [USD, EUR]}}
      required: [ticket_id, amount, currency]
    upstream: {{kind: python, callable: "bench_tools:refund"}}
rules:
  allow:
    - {{id: all, verb: [read, refund]}}
budgets:
  value_limits: {limits}
"""

LIMITS = """
    - {id: per-ticket, tool: payments.refund, argument: amount, max: 1000000000, per: [ticket_id], unit: USD}
    - {id: per-day, tool: payments.refund, argument: amount, max: 1000000000, unit: USD}"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(q * len(ordered) + 0.5) - 1)]


def row(label: str, values: list[float]) -> str:
    return f"  {label:<28} median {statistics.median(values):7.2f} ms   p90 {pct(values, 0.9):7.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="actions per side")
    parser.add_argument("--upstream-ms", type=float, default=20.0)
    parser.add_argument("--db", default=None, help="database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    os.environ["BENCH_UPSTREAM_MS"] = str(args.upstream_ms)

    from interlock import Interlock, Settings

    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        folder = Path(tmp)
        (folder / "bench_tools.py").write_text(TOOLS)
        (folder / "limited.yaml").write_text(MANIFEST.format(name="limited", limits=LIMITS))
        (folder / "plain.yaml").write_text(MANIFEST.format(name="plain", limits="[]"))
        url = args.db or f"sqlite:///{folder / 'bench.db'}"
        il = Interlock(Settings(database={"url": url}))  # type: ignore[arg-type]
        il.migrate()
        tokens, runs = {}, {}
        for name in ("limited", "plain"):
            il.load_workflow(folder / f"{name}.yaml")
            creds = il.agents.create(f"bot-{name}", workflow=name, environment="production", actor="bench")
            tokens[name] = il.issue_token(creds.client_id, creds.client_secret).token
            runs[name] = il.start_run(tokens[name]).id

        def timed(workflow: str, tool: str, arguments: dict[str, object]) -> float:
            started = time.perf_counter()
            result = il.act(tokens[workflow], runs[workflow], tool, arguments)
            elapsed = (time.perf_counter() - started) * 1000
            assert result.executed, result.decision.reasons
            return elapsed

        timed("plain", "tickets.get", {"ticket_id": "T-warm"})  # the one cached ticket
        miss: list[float] = []
        hit: list[float] = []
        with_limits: list[float] = []
        without: list[float] = []
        for i in range(args.n):
            sides = [
                (miss, ("plain", "tickets.get", {"ticket_id": f"T-{i}"})),
                (hit, ("plain", "tickets.get", {"ticket_id": "T-warm"})),
            ]
            for bucket, call in sides if i % 2 else reversed(sides):
                bucket.append(timed(*call))
            refund = {"ticket_id": f"T-{i % 50}", "amount": 12.34, "currency": "USD"}
            pair = [(with_limits, "limited"), (without, "plain")]
            for bucket, workflow in pair if i % 2 else reversed(pair):
                bucket.append(timed(workflow, "payments.refund", refund))
        il.close()

    engine = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    print(f"cost controls on {engine}, {args.n} actions per side, load average {os.getloadavg()[0]:.2f}")
    print(f"(a) a governed read, upstream {args.upstream_ms:g} ms")
    print(row("from the upstream (miss)", miss))
    print(row("from the cache (hit)", hit))
    print(f"  hit / miss median: {statistics.median(hit) / statistics.median(miss):.2f}")
    print("(b) a governed refund")
    print(row("no value limits", without))
    print(row("two value limits", with_limits))
    print(f"  with / without median: {statistics.median(with_limits) / statistics.median(without):.2f}")


if __name__ == "__main__":
    main()
