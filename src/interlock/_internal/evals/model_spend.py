"""Model spend per tier for the weekly review, and what the same calls would have cost a tier up.

Every model call the week recorded (reported model calls, and verifiers' verdicts that name a
model) is put in its tier: the tier the call was checked against when it was recorded, else the
first tier of the active manifest's ``models.tiers`` that lists its model, else ``unlisted``. Per
tier: calls (and how many of them were off tier for their task class), tokens, what was spent,
and the same tokens priced at the next tier up, at that tier's reference price (the first model
it lists). The top tier and ``unlisted`` have no next tier.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.engine import Connection

from interlock._internal.manifest.models import ModelRouting
from interlock._internal.store.tables import runs, steps

UNLISTED = "unlisted"
_MODEL_KINDS = ("model", "verification")


def routing_of(manifest: Any) -> ModelRouting | None:
    """The ``models`` section of a manifest's parsed YAML, if it has a valid one."""
    data = manifest.get("models") if isinstance(manifest, dict) else None
    if not isinstance(data, dict):
        return None
    try:
        return ModelRouting.model_validate(data)
    except ValidationError:
        return None


def model_spend(
    conn: Connection, workflow: str, start: float, end: float, routing: ModelRouting | None
) -> list[dict[str, Any]]:
    """One row per tier with calls this week (tiers in manifest order, then ``unlisted``)."""
    rows = conn.execute(
        select(steps.c.arguments, steps.c.cost_micros)
        .select_from(steps.join(runs, runs.c.id == steps.c.run_id))
        .where(
            runs.c.workflow == workflow,
            steps.c.created_at >= start,
            steps.c.created_at < end,
            steps.c.kind.in_(_MODEL_KINDS),
        )
    ).all()
    totals: dict[str, dict[str, int]] = {}
    for arguments, cost in rows:
        if not isinstance(arguments, dict) or not isinstance(arguments.get("model"), str):
            continue
        tier = _tier(arguments, routing)
        acc = totals.setdefault(
            tier, {"calls": 0, "off_tier_calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_micros": 0}
        )
        acc["calls"] += 1
        acc["off_tier_calls"] += 1 if arguments.get("off_tier") else 0
        acc["input_tokens"] += int(arguments.get("input_tokens") or 0)
        acc["output_tokens"] += int(arguments.get("output_tokens") or 0)
        acc["cost_micros"] += int(cost or 0)
    order = [t.name for t in routing.tiers] if routing is not None else []
    out = []
    for tier in [*order, *sorted(set(totals) - set(order))]:
        found = totals.get(tier)
        if found is None:
            continue
        acc = found
        up = routing.next_tier(tier) if routing is not None else None
        row: dict[str, Any] = {
            "tier": tier,
            "calls": acc["calls"],
            "off_tier_calls": acc["off_tier_calls"],
            "input_tokens": acc["input_tokens"],
            "output_tokens": acc["output_tokens"],
            "cost_usd": acc["cost_micros"] / 1_000_000,
            "next_tier": None,
            "next_tier_model": None,
            "cost_at_next_tier_usd": None,
        }
        if up is not None:
            model, price = next(iter(up.models.items()))
            row.update(
                next_tier=up.name,
                next_tier_model=model,
                cost_at_next_tier_usd=(
                    acc["input_tokens"] * price.input + acc["output_tokens"] * price.output
                )
                / 1_000_000,
            )
        out.append(row)
    return out


def _tier(arguments: dict[str, Any], routing: ModelRouting | None) -> str:
    recorded = arguments.get("tier")
    if isinstance(recorded, str):
        return recorded
    if routing is not None:
        for tier in routing.tiers:
            if arguments["model"] in tier.models:
                return tier.name
    return UNLISTED


__all__ = ["UNLISTED", "model_spend", "routing_of"]
