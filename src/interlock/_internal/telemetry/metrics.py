"""Prometheus metrics, one registry per Interlock (two in a process never clash).

Counters and histograms are fed by the pipeline as actions happen; figures that live in the
database (approvals pending, time to decision) are read when Prometheus scrapes, so every replica
reports the same truth.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


# How many of the newest audit events the outcome-unknown figure looks at: a bounded read per scrape.
RECENT_EVENTS = 10_000


class Metrics:
    def __init__(
        self, engine: Engine | None = None, *, open_circuits: Callable[[], int] | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.actions = Counter(
            "interlock_actions",
            "Actions through the pipeline, by decision and outcome.",
            ["workflow", "tool", "decision", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "interlock_pipeline_seconds",
            "Time from intent to recorded outcome, upstream call included.",
            ["workflow", "tool"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.spend = Counter(
            "interlock_spend_usd",
            "Spend charged to budgets, in USD.",
            ["workflow", "kind"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "interlock_model_tokens",
            "Model tokens reported by agents.",
            ["workflow", "model"],
            registry=self.registry,
        )
        self.cache = Counter(
            "interlock_cache_requests",
            "Reads of tools with a cache, by result: hit (answered from the cache) or miss.",
            ["workflow", "tool", "result"],
            registry=self.registry,
        )
        self.escalations = Counter(
            "interlock_escalations",
            "Actions escalated to a person, by reason.",
            ["workflow", "reason"],
            registry=self.registry,
        )
        # The labelled children an action feeds, by (workflow, tool, decision, status): looked up
        # once, not per action (the labels are bounded: manifest tools, or "(unknown)").
        self._action_children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        if engine is not None:
            self.registry.register(_ApprovalFigures(engine))
            self.registry.register(_AuditFigures(engine))
        if open_circuits is not None:
            self.registry.register(_CircuitFigures(open_circuits))

    def action(self, workflow: str, tool: str, decision: str, status: str, seconds: float) -> None:
        """Count one action through the pipeline and its latency."""
        key = (workflow, tool, decision, status)
        children = self._action_children.get(key)
        if children is None:
            children = (self.actions.labels(*key), self.latency.labels(workflow, tool))
            self._action_children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class _CircuitFigures(Collector):
    """Circuit breakers open in this process (breakers are per replica)."""

    def __init__(self, open_circuits: Callable[[], int]) -> None:
        self.open_circuits = open_circuits

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "interlock_circuits_open", "Upstream circuit breakers open in this replica."
        )
        gauge.add_metric([], float(self.open_circuits()))
        yield gauge


class _AuditFigures(Collector):
    """The audit log's health: seconds since the last signed checkpoint, and actions whose outcome
    is unknown (a replica died mid-call) among the newest audit events, each waiting for a person."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "interlock_audit_checkpoint_age_seconds",
            "Seconds since the newest signed audit checkpoint (since the first event when there is none).",
        )
        unknown = GaugeMetricFamily(
            "interlock_outcome_unknown_recent",
            f"action.outcome_unknown events among the newest {RECENT_EVENTS} audit events.",
        )
        e = t.audit_events
        newest = select(e.c.kind).order_by(e.c.seq.desc()).limit(RECENT_EVENTS).subquery()
        try:
            with reading(self.engine) as conn:
                last = conn.execute(select(func.max(t.audit_checkpoints.c.ts))).scalar()
                if last is None:
                    last = conn.execute(select(e.c.ts).order_by(e.c.seq).limit(1)).scalar()
                count = conn.execute(
                    select(func.count()).select_from(newest).where(newest.c.kind == "action.outcome_unknown")
                ).scalar()
        except Exception:  # a scrape must not fail because the database is briefly away
            return
        if last is not None:
            age.add_metric([], max(0.0, time.time() - float(last)))
            yield age
        unknown.add_metric([], float(count or 0))
        yield unknown


class _ApprovalFigures(Collector):
    """Approvals pending now and how long decisions took over the last day, from the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "interlock_approvals_pending", "Approvals waiting for a person.", labels=["workflow"]
        )
        latency = GaugeMetricFamily(
            "interlock_approval_decision_seconds_avg",
            "Mean time from request to decision over the last 24 hours.",
            labels=["workflow"],
        )
        a = t.approvals
        since = time.time() - 86_400
        try:
            with reading(self.engine) as conn:
                for workflow, count in conn.execute(
                    select(a.c.workflow, func.count()).where(a.c.state == "pending").group_by(a.c.workflow)
                ):
                    pending.add_metric([workflow], float(count))
                for workflow, avg in conn.execute(
                    select(a.c.workflow, func.avg(a.c.decided_at - a.c.created_at))
                    .where(a.c.decided_at.is_not(None), a.c.decided_at >= since)
                    .group_by(a.c.workflow)
                ):
                    latency.add_metric([workflow], float(avg or 0))
        except Exception:  # a scrape must not fail because the database is briefly away
            return
        yield pending
        yield latency
