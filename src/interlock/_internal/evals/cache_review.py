"""The read cache in the weekly review: how many reads of cached tools were answered from the cache.

A read of a tool that declares a cache (in the workflow's active manifest) or that was answered
from the cache in the week counts; it is a hit when its step is marked ``cached_from``. Per tool
and in total, this week against the week before.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.engine import Connection

from interlock._internal.store.tables import runs, steps, workflow_versions, workflows


def _declared(conn: Connection, workflow: str) -> set[str]:
    text = conn.execute(
        select(workflow_versions.c.manifest)
        .select_from(
            workflows.join(workflow_versions, workflow_versions.c.id == workflows.c.active_version_id)
        )
        .where(workflows.c.name == workflow)
    ).scalar()
    data = yaml.safe_load(text) if text else None
    tools = data.get("tools") if isinstance(data, dict) else None
    return {
        str(tool["name"])
        for tool in tools or []
        if isinstance(tool, dict) and tool.get("cache") and isinstance(tool.get("name"), str)
    }


def _counts(conn: Connection, workflow: str, start: float, end: float) -> tuple[Counter[str], Counter[str]]:
    reads: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    rows = conn.execute(
        select(steps.c.tool, steps.c.cached_from)
        .select_from(steps.join(runs, runs.c.id == steps.c.run_id))
        .where(
            runs.c.workflow == workflow,
            steps.c.created_at >= start,
            steps.c.created_at < end,
            steps.c.status == "executed",
            steps.c.kind == "tool",
        )
    )
    for tool, cached_from in rows:
        reads[str(tool)] += 1
        if cached_from is not None:
            hits[str(tool)] += 1
    return reads, hits


def read_cache(
    conn: Connection, workflow: str, *, start: float, end: float, prev_start: float, prev_end: float
) -> dict[str, Any]:
    """Hits, reads and hit rate of cached tools, this week and the week before, with each tool."""
    reads, hits = _counts(conn, workflow, start, end)
    prev_reads, prev_hits = _counts(conn, workflow, prev_start, prev_end)
    tools = sorted(_declared(conn, workflow) | set(hits) | set(prev_hits))

    def rate(h: int, r: int) -> float | None:
        return h / r if r else None

    per_tool = [
        {
            "tool": tool,
            "reads": reads[tool],
            "hits": hits[tool],
            "hit_rate": rate(hits[tool], reads[tool]),
            "previous_hit_rate": rate(prev_hits[tool], prev_reads[tool]),
        }
        for tool in tools
    ]
    total_reads = sum(reads[t] for t in tools)
    total_hits = sum(hits[t] for t in tools)
    prev_total_reads = sum(prev_reads[t] for t in tools)
    prev_total_hits = sum(prev_hits[t] for t in tools)
    return {
        "reads": total_reads,
        "hits": total_hits,
        "hit_rate": rate(total_hits, total_reads),
        "previous_hit_rate": rate(prev_total_hits, prev_total_reads),
        "tools": per_tool,
    }


__all__ = ["read_cache"]
