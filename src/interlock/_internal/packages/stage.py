"""The work-package stage of the pipeline: every action of a run started with a package is checked
against the package and against live policy, and the stricter wins.

- :func:`check_action` (decision stage, after policy): the package is neither revoked nor expired,
  the tool is one it allows, and each argument is within its per-action bounds.
- :func:`reserve` (limits stage, inside the reserving transaction): cumulative bounds — an
  argument's total over the run, a tool's number of calls, the package budget — each taken with
  one conditional UPDATE that refuses to pass the limit, so they hold across replicas.

Nothing here can allow what policy denies: the stage only turns an allow or a review into a deny.
A failed call still counts against the totals: its effect upstream is unknown, so the package
stays on the safe side.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.engine import Engine

from interlock._internal.gateway.decide import Intent, Verdict
from interlock._internal.gateway.models import Reason
from interlock._internal.packages.models import BUDGET_KEY, CALLS, MICRO, ArgumentBound, ToolGrant, micros
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading
from interlock._internal.store.hot import Conn

_LOAD = select(t.work_packages.c.state, t.work_packages.c.expires_at, t.work_packages.c.claims).where(
    t.work_packages.c.id == bindparam("p_id")
)
_USAGE = select(t.package_usage.c.key, t.package_usage.c.used, t.package_usage.c.max_total).where(
    t.package_usage.c.package_id == bindparam("p_id")
)
_TAKE = (
    update(t.package_usage)
    .where(
        and_(
            t.package_usage.c.package_id == bindparam("p_id"),
            t.package_usage.c.key == bindparam("p_key"),
            t.package_usage.c.used + bindparam("p_amount") <= t.package_usage.c.max_total,
        )
    )
    .values(used=t.package_usage.c.used + bindparam("p_amount"))
)


def _refuse(code: str, message: str, package_id: str) -> Reason:
    return Reason(code=code, message=message, policy_id=f"package:{package_id}")


def _live(state: str, expires_at: float, package_id: str, now: float) -> Reason | None:
    if state == "revoked":
        return _refuse("package_revoked", f"work package {package_id} was revoked", package_id)
    if expires_at <= now:
        return _refuse("package_expired", f"work package {package_id} expired", package_id)
    return None


def gate(engine: Engine, package_id: str, intent: Intent, verdict: Verdict, *, now: float) -> Verdict:
    """The decision stage: stamp the package on the decision, and deny what the package does not
    allow. A policy deny or an invalid intent stays as it is (the stricter already won)."""
    decision = verdict.decision.model_copy(update={"package_id": package_id})
    if decision.decision == "deny" or verdict.status == "invalid":
        return Verdict(decision, verdict.status, verdict.tool, verdict.stop_run, verdict.retry_after)
    refused = check_action(engine, package_id, intent.tool, intent.arguments, now=now)
    if refused is None:
        return Verdict(decision, verdict.status, verdict.tool, verdict.stop_run, verdict.retry_after)
    denied = decision.model_copy(update={"decision": "deny", "reasons": [refused], "policy_ids": []})
    return Verdict(denied, "denied", verdict.tool)


def check_action(engine: Engine, package_id: str, tool: str, arguments: Any, *, now: float) -> Reason | None:
    """Why the package refuses this action, or None when it allows it."""
    with reading(engine) as conn:
        row = conn.execute(_LOAD, {"p_id": package_id}).first()
    if row is None:
        return _refuse("package_unknown", f"work package {package_id} is not on record", package_id)
    refused = _live(str(row[0]), float(row[1]), package_id, now)
    if refused is not None:
        return refused
    grants: dict[str, Any] = row[2]["tools"]
    if tool not in grants:
        return _refuse(
            "package_tool_not_allowed",
            f"work package {package_id} does not allow {tool} (it allows {', '.join(sorted(grants))})",
            package_id,
        )
    grant = ToolGrant.model_validate(grants[tool])
    args = arguments if isinstance(arguments, dict) else {}
    for name, bound in grant.arguments.items():
        problem = _outside(bound, args.get(name))
        if problem is not None:
            return _refuse(
                "package_bound", f"{tool}.{name} {problem} (work package {package_id})", package_id
            )
    return None


def _outside(bound: ArgumentBound, value: Any) -> str | None:
    if value is None:
        return None
    if bound.one_of is not None and value not in bound.one_of:
        return f"must be one of {bound.one_of!r}, not {value!r}"
    numeric = bound.min is not None or bound.max is not None or bound.max_total is not None
    if not numeric:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number under this package, not {value!r}"
    if bound.min is not None and value < bound.min:
        return f"{value:g} is below the package's minimum {bound.min:g}"
    if bound.max is not None and value > bound.max:
        return f"{value:g} is above the package's maximum {bound.max:g} per action"
    return None


def reserve(
    conn: Conn, package_id: str, tool: str, arguments: Any, *, cost_micros: int, now: float
) -> Reason | None:
    """Take this action's share of every cumulative bound, all or nothing (the caller's transaction
    rolls back on a refusal). Returns why it was refused, or None."""
    row = conn.execute(_LOAD, {"p_id": package_id}).first()
    if row is None:
        return _refuse("package_unknown", f"work package {package_id} is not on record", package_id)
    refused = _live(str(row[0]), float(row[1]), package_id, now)
    if refused is not None:
        return refused
    args = arguments if isinstance(arguments, dict) else {}
    prefix = f"{tool}:"
    for key, used, limit in conn.execute(_USAGE, {"p_id": package_id}).all():
        if key == BUDGET_KEY:
            amount, what = cost_micros, "budget_usd"
        elif not key.startswith(prefix):
            continue
        elif key == prefix + CALLS:
            amount, what = 1, f"{tool} calls"
        else:
            name = key[len(prefix) :]
            value = args.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            amount, what = micros(value), f"{tool}.{name} total"
        if amount <= 0:
            continue
        taken = conn.execute(_TAKE, {"p_id": package_id, "p_key": key, "p_amount": amount}).rowcount
        if taken != 1:
            return _refuse("package_bound", _exhausted(what, key, int(used), int(limit), amount), package_id)
    return None


def _exhausted(what: str, key: str, used: int, limit: int, amount: int) -> str:
    if key.endswith(":" + CALLS):
        return f"{what}: {used} of {limit} already made; the work package allows no more"
    scale = MICRO
    return (
        f"{what} would reach {(used + amount) / scale:g}, over the work package's limit of {limit / scale:g} "
        f"({used / scale:g} already used)"
    )


__all__ = ["check_action", "gate", "reserve"]
