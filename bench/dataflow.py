"""What systems and data classes add to a decision, on the reference workflow, in one process.

(a) the decision alone for ``emails.send`` on a run that carries nothing, and on a run that
    carries PII (the flow check against the destination and the flow rules);
(b) reading the run's classes from the database (the one extra query, made only for tools with a
    destination or when policies speak of ``context.data_classes``), on SQLite with 1 and 40 steps;
(c) a whole ``customers.get`` action (which records the classes it brings in) against a read that
    records none.

Run: python bench/dataflow.py [--n 2000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMAIL = {"ticket_id": "T-1001", "to": "maria@elsewhere.example", "subject": "Invoice", "body": "Refunded."}


def show(label: str, seconds: list[float]) -> None:
    us = sorted(s * 1e6 for s in seconds)
    print(f"{label:<58} median {statistics.median(us):8.1f} µs   n={len(us)}")


def timed(n: int, fn) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    n = parser.parse_args().n

    import os

    from interlock import Interlock, Settings
    from interlock._internal.gateway.dataflow import Carried, carried_classes
    from interlock._internal.gateway.decide import Intent, evaluate

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SUPPORT_DESK_DB"] = str(Path(tmp) / "desk.db")
        il = Interlock(Settings(database={"url": f"sqlite:///{tmp}/il.db"}))  # type: ignore[arg-type]
        il.migrate()
        runtime = il.load_workflow(ROOT / "examples" / "support-triage" / "workflow.yaml")
        creds = il.agents.create("triage-bot", workflow="support-triage", environment="production", actor="b")
        token = il.issue_token(creds.client_id, creds.client_secret).token
        intent = Intent("emails.send", EMAIL)
        pii = (Carried("pii", "stp_1", 1, "customers.get", ("example.com",)),)

        def decide(carried: tuple[Carried, ...]) -> None:
            evaluate(runtime, agent_id="triage-bot", environment="production", intent=intent, carried=carried)

        show("(a) decide emails.send, run carries nothing", timed(n, lambda: decide(())))
        show("(a) decide emails.send, run carries pii (flow check)", timed(n, lambda: decide(pii)))

        run = il.start_run(token).id
        il.act(token, run, "customers.get", {"customer_id": "C-1001"})
        show("(b) read the run's classes, 1 step", timed(n, lambda: carried_classes(il.engine, run)))
        for _ in range(39):
            il.act(token, run, "tickets.search", {"query": "refund"})
        show("(b) read the run's classes, 40 steps", timed(n, lambda: carried_classes(il.engine, run)))

        small = max(60, n // 10)

        def act(tool: str, args: dict[str, str]) -> list[float]:
            out = []
            for i in range(small):
                if i % 3 == 0:  # the reference workflow escalates a fourth identical call (max_repeats)
                    r = il.start_run(token).id
                start = time.perf_counter()
                result = il.act(token, r, tool, args)
                out.append(time.perf_counter() - start)
                assert result.status == "executed", result
            return out

        show("(c) whole action tickets.get (no classes)", act("tickets.get", {"ticket_id": "T-1001"}))
        show("(c) whole action customers.get (records pii)", act("customers.get", {"customer_id": "C-1001"}))
        il.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
