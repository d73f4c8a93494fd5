"""Limit checks on SQLite and on PostgreSQL, side by side in one run.

(a) a budget reservation: ``reserve`` then ``settle`` in one transaction, over the three scopes a
    manifest with run, agent-day and workflow-day budgets has (run cost, agent cost and steps,
    workflow cost);
(b) the floor under (a): one single-row UPDATE and its commit (what a write transaction costs alone);
(c) a rate-limit check: ``RateLimiter.check_tool`` on a tool with ``per_minute``, ``burst`` and
    ``per_agent_per_minute`` (three counters, one statement, one transaction).

Both engines run in the same process, in rounds that alternate engine and operation, so that
noise from other work on the machine hits every figure alike. PostgreSQL is found at
``INTERLOCK_TEST_PG`` (default: the local ``test`` database, as the tests use); the benchmark
works in a throwaway schema and drops it afterwards. When PostgreSQL does not answer, its
figures are skipped with a notice.

Run: python bench/limits.py [--n 2000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PG_BASE = os.environ.get("INTERLOCK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

MANIFEST = """
name: bench-limits
version: "1"
owner: bench@example.com
objective: measure limit checks
success_metric: {name: speed}
environments: [production]
agents:
  - {id: bot, environment: production, roles: [worker]}
roles:
  worker: {verbs: [refund]}
tools:
  - name: payments.refund
    verb: refund
    traits: [money]
    cost_usd: 0.01
    input_schema: {type: object, properties: {amount: {type: number}}}
    rate_limit: {per_minute: 1000000, burst: 1000000, per_agent_per_minute: 1000000}
rules:
  allow:
    - {id: refunds, verb: refund}
budgets:
  per_run: {max_cost_usd: 1000000000}
  per_agent_day: {max_cost_usd: 1000000000, max_steps: 100000000}
  per_workflow_day: {max_cost_usd: 1000000000}
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min) on {os.cpu_count()} cores"


@contextmanager
def postgres_schema() -> Iterator[str | None]:
    """A URL whose search_path is a fresh schema, dropped afterwards; None when PostgreSQL is away."""
    try:
        import psycopg
    except ImportError:
        print("PostgreSQL skipped: psycopg is not installed")
        yield None
        return
    raw = PG_BASE.replace("postgresql+psycopg://", "postgresql://")
    schema = "bench_" + uuid.uuid4().hex[:12]
    try:
        with psycopg.connect(raw, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except Exception as exc:  # any failure means: not available here
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"PostgreSQL skipped: it did not answer at {PG_BASE}: {why}")
        yield None
        return
    sep = "&" if "?" in PG_BASE else "?"
    try:
        yield f"{PG_BASE}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(raw, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class Subject:
    """One engine, migrated, with the operations to time."""

    def __init__(self, name: str, url: str) -> None:
        from interlock._internal.limits.budgets import reserve, scopes_for, settle
        from interlock._internal.limits.ratelimit import RateLimiter
        from interlock._internal.manifest.loader import load_manifest_text
        from interlock._internal.settings import DatabaseSettings
        from interlock._internal.store.engine import make_engine, transaction
        from interlock._internal.store.migrate import upgrade

        self.name = name
        self.engine = make_engine(DatabaseSettings(url=url))
        upgrade(self.engine)
        manifest = load_manifest_text(MANIFEST, file="bench.yaml").manifest
        self.tool = manifest.tools[0]
        self.scopes = scopes_for(manifest, run_id="run_bench", agent_id="bot", now=time.time())
        assert len(self.scopes) == 3, self.scopes
        self.limiter = RateLimiter(self.engine)

        def budget() -> None:
            with transaction(self.engine) as conn:
                reserve(conn, self.scopes, cost_micros=10_000)
                settle(conn, self.scopes, reserved_micros=10_000, actual_micros=10_000)

        from sqlalchemy import update

        from interlock._internal.store import tables as t

        counters = t.budget_counters
        one_row = (
            update(counters)
            .where(counters.c.scope == "run", counters.c.key == "run_bench", counters.c.period == "")
            .values(updated_at=counters.c.updated_at + 1)
        )

        def floor() -> None:
            with transaction(self.engine) as conn:
                conn.execute(one_row)

        def rate() -> None:
            refused = self.limiter.check_tool("bot", self.tool, workflow=manifest.name)
            assert refused is None, refused

        self.ops: dict[str, Callable[[], None]] = {"budget": budget, "floor": floor, "rate": rate}
        self.times: dict[str, list[float]] = {op: [] for op in self.ops}
        self.describe = self._describe(url)

    def _describe(self, url: str) -> str:
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            level = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(int(sync or 0), str(sync))
            return f"SQLite {sys.modules['sqlite3'].sqlite_version}, WAL, synchronous={level}"
        with self.engine.connect() as conn:
            version = conn.exec_driver_sql("SHOW server_version").scalar()
            commit = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
        return (
            f"PostgreSQL {version} on 127.0.0.1, synchronous_commit={commit} (rate limits set it off locally)"
        )

    def warm(self, n: int) -> None:
        for op in self.ops.values():
            for _ in range(n):
                op()

    def measure(self, op: str, n: int) -> None:
        fn, out = self.ops[op], self.times[op]
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)

    def close(self) -> None:
        self.engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="timed calls per operation and engine")
    parser.add_argument("--rounds", type=int, default=10, help="rounds the calls are split into")
    opts = parser.parse_args()

    print(f"load average at start: {loadavg()}")
    print(f"python {sys.version.split()[0]}; one thread, one operation at a time")
    with tempfile.TemporaryDirectory() as tmp, postgres_schema() as pg_url:
        subjects = [Subject("SQLite", f"sqlite:///{Path(tmp) / 'limits.db'}")]
        if pg_url is not None:
            subjects.append(Subject("PostgreSQL", pg_url))
        try:
            for s in subjects:
                print(f"  {s.name}: {s.describe}")
                s.warm(200)
            per_round = max(1, opts.n // opts.rounds)
            for k in range(opts.rounds):
                # Alternate which engine and which operation go first, round by round.
                order = subjects if k % 2 == 0 else list(reversed(subjects))
                ops = ("budget", "floor", "rate") if k % 2 == 0 else ("rate", "floor", "budget")
                for s in order:
                    for op in ops:
                        s.measure(op, per_round)
            print()
            labels = {
                "budget": "budget reserve+settle, 3 scopes, 1 transaction",
                "floor": "floor: 1-row UPDATE + commit",
                "rate": "rate-limit check_tool, 3 counters",
            }
            for op in ("budget", "floor", "rate"):
                for s in subjects:
                    us = [t * 1e6 for t in s.times[op]]
                    print(
                        f"  {s.name:<11} {labels[op]:<48} median {statistics.median(us):8.1f} µs   "
                        f"p99 {pct(us, 0.99):8.1f} µs   n={len(us)}"
                    )
            if len(subjects) == 2:
                print()
                for op in ("budget", "floor", "rate"):
                    lite, pg = (statistics.median(s.times[op]) for s in subjects)
                    print(f"  PostgreSQL / SQLite median, {op:<6} {pg / lite:5.2f}x")
        finally:
            for s in subjects:
                s.close()
    print(f"\nload average at end: {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
