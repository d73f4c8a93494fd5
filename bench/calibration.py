"""Confidence calibration over a long history, on SQLite and PostgreSQL.

Inserts a year of synthetic history for the support-triage workflow (runs, their tool steps with a
stated confidence on about half, approvals for refunds above 50 USD and handoffs for low-confidence
steps, decided the way people decide) plus a second, busier workflow whose rows the query must
skip. Then times ``calibration()`` over the last 28 days (what the console's workflow page asks on
every load) and over one week (the weekly review), round by round, the two windows alternating, and
prints the medians and the number of judged actions each window found.

``--with-index`` adds, in the same run and on the same rows, an index on ``steps.created_at`` and
times the same calls again, for the side-by-side figure.

PostgreSQL comes from ``INTERLOCK_TEST_PG`` (default: the local ``test`` database); the script
works in a throwaway schema and drops it. When PostgreSQL does not answer, it says so and prints
the SQLite figures only.

Run: python bench/calibration.py [--steps 200000] [--rounds 9] [--with-index]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

DAY = 86_400.0
WF = "support-triage"
OTHER = "billing-sync"


def populate(engine: Any, steps_total: int, *, seed: int = 11) -> None:
    from interlock._internal.store import tables as t

    rng = random.Random(seed)
    now = time.time()
    runs: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    approvals: list[dict[str, Any]] = []
    handoffs: list[dict[str, Any]] = []
    n = 0
    while n < steps_total:
        workflow = WF if rng.random() < 0.4 else OTHER
        started = now - rng.uniform(0, 365 * DAY)
        run_id = f"run_{uuid.uuid4().hex[:20]}"
        runs.append(
            {
                "id": run_id,
                "workflow": workflow,
                "workflow_version_id": f"{workflow}@1#0",
                "agent_id": rng.choice(("triage-bot", "triage-bot", "reporter")),
                "environment": "production",
                "state": "completed",
                "steps": 0,
                "tool_calls": 0,
                "cost_micros": 0,
                "started_at": started,
                "ended_at": started + 60,
            }
        )
        for seq in range(rng.randint(3, 8)):
            n += 1
            step_id = f"stp_{uuid.uuid4().hex[:20]}"
            confidence = round(rng.uniform(0.2, 1.0), 2) if rng.random() < 0.5 else None
            roll = rng.random()
            status = "executed"
            if roll < 0.05:
                status = "failed"
            elif roll < 0.15:
                status = "pending_approval"
                approvals.append(
                    {
                        "id": f"apr_{uuid.uuid4().hex[:20]}",
                        "run_id": run_id,
                        "step_id": step_id,
                        "decision_id": "d",
                        "workflow": workflow,
                        "agent_id": "triage-bot",
                        "tool": "payments.refund",
                        "verb": "refund",
                        "args_hash": "0" * 64,
                        "state": rng.choice(("approved", "approved", "rejected", "expired")),
                        "reasons": [],
                        "package": {},
                        "quorum": 1,
                        "created_at": started + seq,
                        "expires_at": started + DAY,
                    }
                )
            elif roll < 0.18 and confidence is not None:
                status = "escalated"
                handoffs.append(
                    {
                        "id": f"hof_{uuid.uuid4().hex[:20]}",
                        "run_id": run_id,
                        "step_id": step_id,
                        "workflow": workflow,
                        "tool": "tickets.update",
                        "reason_code": "low_confidence",
                        "message": "unsure",
                        "state": "resumed",
                        "created_at": started + seq,
                        "resolution": {"action": rng.choice(("resume", "resume_with_arguments", "stop"))},
                    }
                )
            steps.append(
                {
                    "id": step_id,
                    "run_id": run_id,
                    "seq": seq + 1,
                    "kind": "tool",
                    "tool": "tickets.get",
                    "status": status,
                    "confidence": confidence,
                    "cost_micros": 0,
                    "created_at": started + seq,
                }
            )
    with engine.begin() as conn:
        for table, rows in (
            (t.runs, runs),
            (t.steps, steps),
            (t.approvals, approvals),
            (t.handoffs, handoffs),
        ):
            for i in range(0, len(rows), 5000):
                conn.execute(table.insert(), rows[i : i + 5000])
    print(
        f"  {len(runs):,} runs, {len(steps):,} steps, {len(approvals):,} approvals, {len(handoffs):,} handoffs"
    )


def measure(engine: Any, rounds: int) -> dict[str, tuple[float, int]]:
    from interlock._internal.evals.calibration import calibration

    windows = {"28 days (workflow page)": 28 * DAY, "7 days (weekly review)": 7 * DAY}
    times: dict[str, list[float]] = {k: [] for k in windows}
    found: dict[str, int] = {}
    for r in range(rounds):
        order = list(windows.items()) if r % 2 == 0 else list(reversed(windows.items()))
        for name, span in order:
            end = time.time()
            t0 = time.perf_counter()
            data = calibration(engine, WF, start=end - span, end=end)
            times[name].append(time.perf_counter() - t0)
            found[name] = sum(a["samples"] for a in data["agents"])
    return {name: (statistics.median(ts), found[name]) for name, ts in times.items()}


def report(label: str, figures: dict[str, tuple[float, int]]) -> None:
    for name, (median, judged) in figures.items():
        print(f"  {label:<18} {name:<26} median {median * 1000:8.1f} ms   ({judged:,} judged actions)")


def run_on(label: str, engine: Any, args: argparse.Namespace) -> None:
    from sqlalchemy import text

    from interlock._internal.store.migrate import upgrade

    upgrade(engine)
    print(f"{label}:")
    populate(engine, args.steps)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    before = measure(engine, args.rounds)
    report("as migrated", before)
    if args.with_index:
        with engine.begin() as conn:
            conn.execute(text("CREATE INDEX ix_bench_steps_created ON steps (created_at)"))
            if engine.dialect.name == "postgresql":
                conn.execute(text("ANALYZE steps"))
        after = measure(engine, args.rounds)
        report("+ steps.created_at", after)
        for name in before:
            print(f"  {'ratio':<18} {name:<26} {before[name][0] / after[name][0]:8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--with-index", action="store_true")
    args = parser.parse_args()

    from sqlalchemy import create_engine, text

    from interlock._internal.settings import DatabaseSettings
    from interlock._internal.store.engine import make_engine

    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(DatabaseSettings(url=f"sqlite:///{Path(tmp) / 'bench.db'}"))
        try:
            run_on("SQLite", engine, args)
        finally:
            engine.dispose()

    base = os.environ.get("INTERLOCK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    schema = f"bench_calibration_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(base)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # any failure to reach it means: SQLite only
        print(f"PostgreSQL did not answer ({type(exc).__name__}); SQLite figures only")
        return
    try:
        sep = "&" if "?" in base else "?"
        engine = make_engine(DatabaseSettings(url=f"{base}{sep}options=-csearch_path%3D{schema}"))
        try:
            run_on("PostgreSQL", engine, args)
        finally:
            engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
