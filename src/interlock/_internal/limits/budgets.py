"""Budgets per run, per agent per day and per workflow per day, with atomic reservations.

A reservation is one conditional UPDATE per scope that refuses to pass the scope's limit, taken
in a fixed scope order inside the caller's transaction. On PostgreSQL the row lock makes a
concurrent reservation re-check the condition after the first commits; on SQLite the whole
transaction holds the write lock. Either way a budget is never exceeded, whatever the number of
threads, processes or replicas.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, bindparam, select, update

from interlock._internal.audit.chain import append_event
from interlock._internal.gateway.models import Reason
from interlock._internal.manifest.models import Limits, Manifest
from interlock._internal.store import tables as t
from interlock._internal.store.hot import Conn, InsertIgnore

MICROS = 1_000_000
_NO_LIMIT = 2**62
_b = t.budget_counters
_PK = and_(
    _b.c.scope == bindparam("b_scope"), _b.c.key == bindparam("b_key"), _b.c.period == bindparam("b_period")
)

_INSERT = InsertIgnore(_b)
_RESERVE = (
    update(_b)
    .where(
        _PK,
        _b.c.used_micros + _b.c.reserved_micros + bindparam("b_cost") <= bindparam("b_max_cost"),
        _b.c.used_steps + bindparam("b_steps") <= bindparam("b_max_steps"),
        _b.c.used_tool_calls + bindparam("b_calls") <= bindparam("b_max_calls"),
        _b.c.used_tokens <= bindparam("b_max_tokens"),
    )
    .values(
        reserved_micros=_b.c.reserved_micros + bindparam("b_cost"),
        used_steps=_b.c.used_steps + bindparam("b_steps"),
        used_tool_calls=_b.c.used_tool_calls + bindparam("b_calls"),
        updated_at=bindparam("b_now"),
    )
)
_SETTLE = (
    update(_b)
    .where(_PK)
    .values(
        reserved_micros=_b.c.reserved_micros - bindparam("b_reserved"),
        used_micros=_b.c.used_micros + bindparam("b_actual"),
        used_tokens=_b.c.used_tokens + bindparam("b_tokens"),
        updated_at=bindparam("b_now"),
    )
)
_READ = select(_b).where(_PK)
# Mark a scope "nearly spent" once per period, the first time any of its counters crosses its
# threshold; the WHERE makes exactly one transaction (on any replica) win.
_WARN = (
    update(_b)
    .where(
        _PK,
        _b.c.warned_at.is_(None),
        (_b.c.used_micros >= bindparam("w_cost"))
        | (_b.c.used_tokens >= bindparam("w_tokens"))
        | (_b.c.used_steps >= bindparam("w_steps"))
        | (_b.c.used_tool_calls >= bindparam("w_calls")),
    )
    .values(warned_at=bindparam("b_now"))
    .returning(_b.c.used_micros, _b.c.used_tokens, _b.c.used_steps, _b.c.used_tool_calls)
)
DEFAULT_WARN_RATIO = 0.8


def usd_to_micros(usd: float) -> int:
    # Round up: a budget should never be beaten by rounding a price down.
    return math.ceil(round(usd * MICROS, 3))


@dataclass(frozen=True)
class Scope:
    scope: str  # run | agent_day | workflow_day
    key: str
    period: str
    limits: Limits

    @property
    def label(self) -> str:
        return {"run": "run", "agent_day": "agent per day", "workflow_day": "workflow per day"}[self.scope]

    def params(self) -> dict[str, object]:
        return {"b_scope": self.scope, "b_key": self.key, "b_period": self.period}


def day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def scopes_for(manifest: Manifest, *, run_id: str, agent_id: str, now: float) -> list[Scope]:
    """The scopes with at least one cost, token, step or call limit, in lock order.

    The run's own step and tool-call caps live on the run row; only its cost and tokens are here.
    """
    budgets = manifest.budgets
    per_run = budgets.per_run
    scopes = []
    # (Checked field by field: this runs on every action, and most manifests set few budgets.)
    if per_run.max_cost_usd is not None or per_run.max_tokens is not None:
        run_limits = Limits(max_cost_usd=per_run.max_cost_usd, max_tokens=per_run.max_tokens)
        scopes.append(Scope("run", run_id, "", run_limits))
    if _limited(budgets.per_agent_day):
        scopes.append(Scope("agent_day", f"{manifest.name}|{agent_id}", day(now), budgets.per_agent_day))
    if _limited(budgets.per_workflow_day):
        scopes.append(Scope("workflow_day", manifest.name, day(now), budgets.per_workflow_day))
    return scopes


def _limited(limits: Limits) -> bool:
    # Field by field rather than over Limits.model_fields: this runs twice an action (a test
    # keeps the list complete).
    return (
        limits.max_cost_usd is not None
        or limits.max_tokens is not None
        or limits.max_steps is not None
        or limits.max_tool_calls is not None
    )


class BudgetRefused(Exception):
    """Raised inside a transaction so every earlier scope's reservation rolls back with it."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.message)
        self.reason = reason


def _ensure(conn: Conn, scope: Scope, now: float) -> None:
    """Create the scope's row if it is missing."""
    _INSERT.run(
        conn,
        {
            "scope": scope.scope,
            "key": scope.key,
            "period": scope.period,
            "used_micros": 0,
            "reserved_micros": 0,
            "used_tokens": 0,
            "used_steps": 0,
            "used_tool_calls": 0,
            "updated_at": now,
            "warned_at": None,
        },
    )


def reserve(
    conn: Conn, scopes: list[Scope], *, cost_micros: int, steps: int = 1, tool_calls: int = 1
) -> None:
    """Reserve in every scope or raise :class:`BudgetRefused` (the caller's transaction rolls back)."""
    now = time.time()
    for scope in scopes:
        lim = scope.limits
        params = {
            **scope.params(),
            "b_cost": cost_micros,
            "b_steps": steps,
            "b_calls": tool_calls,
            "b_now": now,
            "b_max_cost": usd_to_micros(lim.max_cost_usd) if lim.max_cost_usd is not None else _NO_LIMIT,
            "b_max_steps": lim.max_steps if lim.max_steps is not None else _NO_LIMIT,
            "b_max_calls": lim.max_tool_calls if lim.max_tool_calls is not None else _NO_LIMIT,
            # Tokens are charged after the fact; once over, nothing more is reserved.
            "b_max_tokens": lim.max_tokens - 1 if lim.max_tokens is not None else _NO_LIMIT,
        }
        if conn.execute(_RESERVE, params).rowcount == 1:
            continue
        # Refused, or the scope has no row yet (its first use today): make sure it exists and try
        # once more (another replica may have just created it: the retry then sees its row).
        _ensure(conn, scope, now)
        if conn.execute(_RESERVE, params).rowcount == 1:
            continue
        raise BudgetRefused(_explain(conn, scope, cost_micros=cost_micros, steps=steps, calls=tool_calls))


def settle(
    conn: Conn, scopes: list[Scope], *, reserved_micros: int, actual_micros: int, tokens: int = 0
) -> None:
    """Turn a reservation into spend (``actual_micros`` may be 0: released on failure)."""
    now = time.time()
    for scope in scopes:
        conn.execute(
            _SETTLE,
            {
                **scope.params(),
                "b_reserved": reserved_micros,
                "b_actual": actual_micros,
                "b_tokens": tokens,
                "b_now": now,
            },
        )


def warn_nearly_spent(
    conn: Conn,
    scopes: list[Scope],
    *,
    workflow: str,
    run_id: str | None,
    ratio: float = DEFAULT_WARN_RATIO,
) -> int:
    """Append ``budget.nearly_spent`` for each scope whose spend first crossed ``ratio`` of a limit
    (once per scope and period, across replicas). Returns how many were announced."""
    now = time.time()
    announced = 0
    for scope in scopes:
        lim = scope.limits

        def threshold(limit: float | None, *, scale: float = 1) -> int:
            return _NO_LIMIT if limit is None else max(1, math.ceil(limit * scale * ratio))

        row = conn.execute(
            _WARN,
            {
                **scope.params(),
                "b_now": now,
                "w_cost": threshold(lim.max_cost_usd, scale=MICROS),
                "w_tokens": threshold(lim.max_tokens),
                "w_steps": threshold(lim.max_steps),
                "w_calls": threshold(lim.max_tool_calls),
            },
        ).first()
        if row is None:
            continue
        announced += 1
        append_event(
            conn,
            kind="budget.nearly_spent",
            actor="interlock",
            workflow=workflow,
            run_id=run_id if scope.scope == "run" else None,
            data={
                "scope": scope.scope,
                "key": scope.key,
                "period": scope.period,
                "ratio": ratio,
                "used": {
                    "cost_usd": row[0] / MICROS,
                    "tokens": row[1],
                    "steps": row[2],
                    "tool_calls": row[3],
                },
                "limits": lim.model_dump(exclude_none=True),
                "run": run_id,
            },
        )
    return announced


def charge(conn: Conn, scopes: list[Scope], *, cost_micros: int, tokens: int) -> Reason | None:
    """Charge spend that already happened (a model call). Returns the first limit now passed."""
    now = time.time()
    over: Reason | None = None
    for scope in scopes:
        _ensure(conn, scope, now)
        conn.execute(
            _SETTLE,
            {**scope.params(), "b_reserved": 0, "b_actual": cost_micros, "b_tokens": tokens, "b_now": now},
        )
        row = conn.execute(_READ, scope.params()).mappings().one()
        lim = scope.limits
        if (
            over is None
            and lim.max_cost_usd is not None
            and row["used_micros"] > usd_to_micros(lim.max_cost_usd)
        ):
            over = _reason(scope, f"max_cost_usd={lim.max_cost_usd:g}", row["used_micros"] / MICROS)
        if over is None and lim.max_tokens is not None and row["used_tokens"] > lim.max_tokens:
            over = _reason(scope, f"max_tokens={lim.max_tokens}", row["used_tokens"])
    return over


def _reason(scope: Scope, limit: str, used: float) -> Reason:
    return Reason(
        code="budget_exceeded",
        message=f"{scope.label} budget {limit} would be exceeded (used {used:g}); the run is stopped",
        policy_id=f"budget:{scope.scope}",
    )


def _explain(conn: Conn, scope: Scope, *, cost_micros: int, steps: int, calls: int) -> Reason:
    row = conn.execute(_READ, scope.params()).mappings().one()
    lim = scope.limits
    if lim.max_cost_usd is not None and row["used_micros"] + row[
        "reserved_micros"
    ] + cost_micros > usd_to_micros(lim.max_cost_usd):
        spent = (row["used_micros"] + row["reserved_micros"]) / MICROS
        return _reason(scope, f"max_cost_usd={lim.max_cost_usd:g}", spent)
    if lim.max_steps is not None and row["used_steps"] + steps > lim.max_steps:
        return _reason(scope, f"max_steps={lim.max_steps}", row["used_steps"])
    if lim.max_tool_calls is not None and row["used_tool_calls"] + calls > lim.max_tool_calls:
        return _reason(scope, f"max_tool_calls={lim.max_tool_calls}", row["used_tool_calls"])
    return _reason(scope, f"max_tokens={lim.max_tokens}", row["used_tokens"])


def usage(conn: Conn, *, scope: str, key: str, period: str = "") -> dict[str, float]:
    row = conn.execute(_READ, {"b_scope": scope, "b_key": key, "b_period": period}).mappings().first()
    if row is None:
        return {"cost_usd": 0.0, "reserved_usd": 0.0, "tokens": 0, "steps": 0, "tool_calls": 0}
    return {
        "cost_usd": row["used_micros"] / MICROS,
        "reserved_usd": row["reserved_micros"] / MICROS,
        "tokens": row["used_tokens"],
        "steps": row["used_steps"],
        "tool_calls": row["used_tool_calls"],
    }
