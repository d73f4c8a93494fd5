"""Decision and whole-action latency on SQLite, in one process.

(a) the policy decision alone (schema, risk, stop rules, Cedar) for an allowed read;
(b) a whole allowed action through the pipeline: authenticate, load run, validate, decide,
    reserve, execute a no-op Python tool, durable audit append, record.

The CPU time of the calling thread is printed beside the wall time: on a busy machine the wall
time mostly measures waiting for a core, while the thread's CPU time stays close to what the
action costs (the WAL checkpointer runs on its own thread and is not counted).

Run: python bench/decision.py [--n 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NOOP_MANIFEST = """
name: bench
version: "1"
owner: bench@example.com
objective: measure the pipeline
success_metric: {name: speed}
environments: [production]
agents:
  - {id: bot, environment: production, roles: [worker]}
roles:
  worker: {verbs: [read]}
tools:
  - name: noop.read
    verb: read
    input_schema:
      type: object
      properties: {ticket_id: {type: string}, limit: {type: integer, minimum: 1, maximum: 100}}
      required: [ticket_id]
    upstream: {kind: python, callable: "noop_tool:noop"}
rules:
  allow:
    - {id: reads, verb: read}
  forbid:
    - {id: big, tool: noop.read, when: "limit > 90"}
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def show(label: str, seconds: list[float]) -> None:
    us = [s * 1e6 for s in seconds]
    print(f"{label:<48} median {statistics.median(us):8.1f} µs   p99 {pct(us, 0.99):8.1f} µs   n={len(us)}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    opts = parser.parse_args()

    from interlock import Interlock, Settings
    from interlock._internal.gateway.decide import Intent, evaluate

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "workflow.yaml").write_text(NOOP_MANIFEST)
        (d / "noop_tool.py").write_text("def noop(ticket_id, limit=1):\n    return {'ok': True}\n")
        il = Interlock(Settings(database={"url": f"sqlite:///{d / 'bench.db'}"}))  # type: ignore[arg-type]
        il.migrate()
        runtime = il.load_workflow(d / "workflow.yaml")
        creds = il.agents.create("bot", workflow="bench", environment="production", actor="bench")
        token = il.issue_token(creds.client_id, creds.client_secret).token
        intent = Intent(tool="noop.read", arguments={"ticket_id": "T-1", "limit": 5})

        for _ in range(200):
            evaluate(runtime, agent_id="bot", environment="production", intent=intent)
        decide: list[float] = []
        for _ in range(opts.n):
            t0 = time.perf_counter()
            v = evaluate(runtime, agent_id="bot", environment="production", intent=intent)
            decide.append(time.perf_counter() - t0)
        assert v.decision.decision == "allow", v

        run = il.start_run(token)
        whole: list[float] = []
        whole_cpu: list[float] = []
        runs_needed = opts.n // 1000 + 1
        run_ids = [il.start_run(token).id for _ in range(runs_needed)]
        for _ in range(100):
            il.act(token, run.id, "noop.read", {"ticket_id": "T-1", "limit": 5})
        for i in range(opts.n):
            rid = run_ids[i // 1000]
            c0 = time.thread_time()
            t0 = time.perf_counter()
            res = il.act(token, rid, "noop.read", {"ticket_id": "T-1", "limit": 5})
            whole.append(time.perf_counter() - t0)
            whole_cpu.append(time.thread_time() - c0)
        assert res.status == "executed", res
        print(
            f"SQLite synchronous={il.settings.database.sqlite_synchronous}, journal=WAL, python {sys.version.split()[0]}"
        )
        show("(a) policy decision (validate+risk+Cedar)", decide)
        show("(b) whole allowed action, durable audit", whole)
        show("(b) the same, CPU time of the calling thread", whole_cpu)
        print("targets: (a) <= 150 µs median; (b) <= 400 µs median and <= 1500 µs p99")
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        assert il.verify_audit().ok
        il.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
