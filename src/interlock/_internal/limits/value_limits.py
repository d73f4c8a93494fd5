"""Value limits: caps on the sum of an argument over a calendar window and a scope.

``budgets.value_limits`` in the manifest caps, say, the ``amount`` of ``payments.refund`` at 500
per ``ticket_id`` per day. The judgement itself is pure (:func:`judge`, :func:`check_history`): a
limit, the amount an action asks and what the bucket has used decide it, so replay and what-if
can re-judge recorded history with the same code. The live path reserves in the database:

* :func:`reserve`, in the reservation's transaction, takes the action's amount in every limit
  that applies with one conditional UPDATE per counter (refusing to pass the cap), in a fixed
  order, and writes a hold per limit for the step. On PostgreSQL the row lock makes a concurrent
  reservation re-check the cap after the first commits; on SQLite the transaction holds the write
  lock. The cap is never passed, whatever the number of replicas.
* :func:`settle` turns the holds into use when the call executed (or its outcome became unknown),
  or releases them when it failed; :func:`give_back` releases them when a person says an unknown
  outcome did not happen. An action refused after the reservation rolls back with it.
* :func:`headroom` reads what is left, for the approval package.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from itertools import accumulate
from typing import Any

from sqlalchemy import and_, bindparam, select, update

from interlock._internal.audit.canonical import canonical_json, sha256_hex
from interlock._internal.gateway.models import Reason
from interlock._internal.manifest.conditions import Condition, parse_condition
from interlock._internal.manifest.models import Manifest, ToolSpec, ValueLimit
from interlock._internal.store import tables as t
from interlock._internal.store.hot import Conn, InsertIgnore

MICROS = 1_000_000
CODE = "value_limit_exceeded"
_MAX_KEY = 400
_WINDOW_WORDS = {"hour": "hour", "day": "day", "week": "week", "month": "month"}
_THIS = {"hour": "this hour", "day": "today", "week": "this week", "month": "this month"}

_c = t.value_counters
_h = t.value_holds
_PK = and_(
    _c.c.workflow == bindparam("v_workflow"),
    _c.c.limit_id == bindparam("v_limit"),
    _c.c.key == bindparam("v_key"),
    _c.c.period == bindparam("v_period"),
)
_RESERVE = (
    update(_c)
    .where(_PK, _c.c.used_micros + _c.c.reserved_micros + bindparam("v_amount") <= bindparam("v_max"))
    .values(reserved_micros=_c.c.reserved_micros + bindparam("v_amount"), updated_at=bindparam("v_now"))
)
_SETTLE = (
    update(_c)
    .where(_PK)
    .values(
        reserved_micros=_c.c.reserved_micros - bindparam("v_reserved"),
        used_micros=_c.c.used_micros + bindparam("v_used"),
        updated_at=bindparam("v_now"),
    )
)
_READ = select(_c.c.used_micros, _c.c.reserved_micros).where(_PK)
_HOLDS = select(_h).where(_h.c.step_id == bindparam("h_step"), _h.c.state == bindparam("h_state"))
_ENSURE = InsertIgnore(_c)
_INSERT_HOLD = _h.insert()
_MARK = (
    update(_h)
    .where(_h.c.step_id == bindparam("h_step"), _h.c.state == bindparam("h_state"))
    .values(state=bindparam("h_new"))
)


# ---- the pure part: which limits apply, to which bucket, and whether the amount fits ------------


@dataclass(frozen=True)
class Bucket:
    """Where one action counts for one limit: the limit, the scope's key, the window's period."""

    limit: ValueLimit
    key: str
    period: str
    where: str  # the scope in words: "for ticket_id T-1001", "for the workflow"


@dataclass(frozen=True)
class Hold:
    """One limit's share of one action, reserved in its counter until the outcome settles it."""

    limit_id: str
    workflow: str
    key: str
    period: str
    amount_micros: int


@dataclass(frozen=True)
class Prior:
    """An earlier action, as recorded: what replay feeds :func:`check_history`."""

    tool: str
    arguments: Any
    agent_id: str
    run_id: str
    at: float


def micros(value: Any) -> int:
    """An amount in exact millionths (rounded up: a cap is never beaten by rounding down)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return 0
    try:
        scaled = Decimal(str(value)) * MICROS
    except InvalidOperation:
        return 0
    if not scaled.is_finite():
        return 0
    return math.ceil(scaled)


def _lookup(arguments: Any, path: str) -> Any:
    node = arguments
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def period(limit: ValueLimit, at: float) -> str:
    moment = datetime.fromtimestamp(at, UTC)
    if limit.window == "hour":
        return moment.strftime("%Y-%m-%dT%H")
    if limit.window == "day":
        return moment.strftime("%Y-%m-%d")
    if limit.window == "week":
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    return moment.strftime("%Y-%m")


# Parsed conditions by (text, tool spec): the spec is kept with its condition, so an id is never
# reused for another spec while its entry lives.
_CONDITIONS: dict[tuple[str, int], tuple[ToolSpec, Condition]] = {}


def _matches(limit: ValueLimit, spec: ToolSpec, arguments: Any) -> bool:
    if limit.when is None:
        return True
    found = _CONDITIONS.get((limit.when, id(spec)))
    if found is None or found[0] is not spec:
        found = (spec, parse_condition(limit.when, spec.input_schema))
        _CONDITIONS[(limit.when, id(spec))] = found
    return bool(found[1].evaluate(arguments))


def applicable(manifest: Manifest, spec: ToolSpec, arguments: Any) -> list[ValueLimit]:
    """The limits that count this action, in lock order (by id)."""
    limits = [
        v
        for v in manifest.budgets.value_limits
        if spec.name in v.tool_list() and _matches(v, spec, arguments)
    ]
    return sorted(limits, key=lambda v: v.id)


def bucket(limit: ValueLimit, *, agent_id: str, run_id: str, arguments: Any, at: float) -> Bucket:
    scope = {"workflow": "", "agent": agent_id, "run": run_id}[limit.scope]
    values = [_lookup(arguments, p) for p in limit.per]
    encoded = canonical_json([limit.scope, scope, *values])
    key = encoded.decode("utf-8")
    if len(key) > _MAX_KEY:
        key = "sha256:" + sha256_hex(encoded)
    words = [f"{p} {v if v is not None else '(absent)'}" for p, v in zip(limit.per, values, strict=True)]
    if limit.scope != "workflow":
        words.insert(0, f"{limit.scope} {scope}")
    where = "for " + ", ".join(words) if words else "for the workflow"
    return Bucket(limit, key, period(limit, at), where)


def _amount(value: int) -> str:
    return f"{Decimal(value) / MICROS:f}".rstrip("0").rstrip(".") if value % MICROS else str(value // MICROS)


def describe(limit: ValueLimit) -> str:
    """``payments.refund amount at most 500 USD per ticket_id per day (UTC)``"""
    unit = f" {limit.unit}" if limit.unit else ""
    per = "".join(f" per {p}" for p in limit.per)
    scope = "" if limit.scope == "workflow" else f" per {limit.scope}"
    tools = ", ".join(limit.tool_list())
    cap = _amount(micros(limit.max))
    return f"{tools} {limit.argument} at most {cap}{unit}{per}{scope} per {_WINDOW_WORDS[limit.window]} (UTC)"


def judge(b: Bucket, *, amount_micros: int, used_micros: int) -> Reason | None:
    """The pure judgement: does ``amount_micros`` fit beside ``used_micros`` (used and reserved)
    in the bucket's limit? None when it fits, else the reason naming the limit and the headroom."""
    cap = micros(b.limit.max)
    if used_micros + amount_micros <= cap:
        return None
    left = max(0, cap - used_micros)
    unit = f" {b.limit.unit}" if b.limit.unit else ""
    message = (
        f"value limit {b.limit.id} ({describe(b.limit)}): {_amount(used_micros)}{unit} already used "
        f"{_THIS[b.limit.window]} {b.where}, headroom {_amount(left)}{unit}; this action asks "
        f"{_amount(amount_micros)}{unit}"
    )
    return Reason(code=CODE, message=message, policy_id=f"value:{b.limit.id}")


def check_history(
    manifest: Manifest,
    spec: ToolSpec,
    arguments: Any,
    *,
    agent_id: str,
    run_id: str,
    at: float,
    prior: Iterable[Prior],
) -> Reason | None:
    """Judge an action from recorded history alone (for replay and what-if): ``prior`` are the
    actions that executed before it; those in the same bucket count against each limit."""
    ledger = Ledger(manifest, prior)
    return ledger.refusal(spec.name, arguments, agent_id=agent_id, run_id=run_id, at=at, only_before=False)


# Longest a window lasts, in seconds: how far before a replayed action its history must be read.
WINDOW_S = {"hour": 3600.0, "day": 86_400.0, "week": 7 * 86_400.0, "month": 31 * 86_400.0}


class Ledger:
    """What executed, per limit bucket and period, from the record: replay and what-if judge value
    limits over time against it. Built once from the prior actions; each question is a binary
    search over one bucket's amounts in time order."""

    def __init__(self, manifest: Manifest, prior: Iterable[Prior]) -> None:
        self.manifest = manifest
        self._tools = {tool.name: tool for tool in manifest.tools}
        spent: dict[tuple[str, str, str], list[tuple[float, int]]] = {}
        for p in prior:
            spec = self._tools.get(p.tool)
            if spec is None:
                continue
            for limit in applicable(manifest, spec, p.arguments):
                b = bucket(limit, agent_id=p.agent_id, run_id=p.run_id, arguments=p.arguments, at=p.at)
                amount = micros(_lookup(p.arguments, limit.argument))
                spent.setdefault((limit.id, b.key, b.period), []).append((p.at, amount))
        self._times: dict[tuple[str, str, str], list[float]] = {}
        self._sums: dict[tuple[str, str, str], list[int]] = {}
        for key, items in spent.items():
            items.sort(key=lambda item: item[0])
            self._times[key] = [at for at, _ in items]
            self._sums[key] = list(accumulate(amount for _, amount in items))

    def refusal(
        self,
        tool: str,
        arguments: Any,
        *,
        agent_id: str,
        run_id: str,
        at: float,
        only_before: bool = True,
    ) -> Reason | None:
        """The limit an action of ``tool`` at ``at`` would pass, counting what executed in its
        bucket before it (everything in the ledger with ``only_before=False``), or None."""
        spec = self._tools.get(tool)
        if spec is None:
            return None
        for limit in applicable(self.manifest, spec, arguments):
            b = bucket(limit, agent_id=agent_id, run_id=run_id, arguments=arguments, at=at)
            key = (limit.id, b.key, b.period)
            times = self._times.get(key, [])
            count = bisect_left(times, at) if only_before else len(times)
            used = self._sums[key][count - 1] if count else 0
            refused = judge(b, amount_micros=micros(_lookup(arguments, limit.argument)), used_micros=used)
            if refused is not None:
                return refused
        return None


# ---- the live part: reserve, settle, release, read --------------------------------------------


class ValueRefused(Exception):
    """Raised inside the reservation's transaction so everything taken before rolls back."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.message)
        self.reason = reason


def _params(workflow: str, b: Bucket) -> dict[str, Any]:
    return {"v_workflow": workflow, "v_limit": b.limit.id, "v_key": b.key, "v_period": b.period}


def _used(conn: Conn, workflow: str, b: Bucket) -> int:
    row = conn.execute(_READ, _params(workflow, b)).first()
    return 0 if row is None else int(row[0]) + int(row[1])


def reserve(
    conn: Conn,
    manifest: Manifest,
    spec: ToolSpec,
    arguments: Any,
    *,
    workflow: str,
    agent_id: str,
    run_id: str,
    step_id: str,
    now: float,
) -> tuple[Hold, ...]:
    """Reserve the action's amount in every limit that applies, or raise :class:`ValueRefused`.
    Returns the holds written (none: no limit applies, nothing to settle)."""
    holds: list[Hold] = []
    for limit in applicable(manifest, spec, arguments):
        b = bucket(limit, agent_id=agent_id, run_id=run_id, arguments=arguments, at=now)
        amount = micros(_lookup(arguments, limit.argument))
        params = {**_params(workflow, b), "v_amount": amount, "v_max": micros(limit.max), "v_now": now}
        if conn.execute(_RESERVE, params).rowcount != 1:
            # Refused, or the bucket's first use this period: create it and try once more (another
            # replica may have just created it; the retry then sees its row).
            _ENSURE.run(
                conn,
                {
                    "workflow": workflow,
                    "limit_id": limit.id,
                    "key": b.key,
                    "period": b.period,
                    "used_micros": 0,
                    "reserved_micros": 0,
                    "updated_at": now,
                },
            )
            if conn.execute(_RESERVE, params).rowcount != 1:
                refused = judge(b, amount_micros=amount, used_micros=_used(conn, workflow, b))
                assert refused is not None
                raise ValueRefused(refused)
        conn.execute(
            _INSERT_HOLD,
            {
                "step_id": step_id,
                "limit_id": limit.id,
                "workflow": workflow,
                "key": b.key,
                "period": b.period,
                "amount_micros": amount,
                "state": "reserved",
                "created_at": now,
            },
        )
        holds.append(Hold(limit.id, workflow, b.key, b.period, amount))
    return tuple(holds)


def _move(
    conn: Conn,
    step_id: str,
    *,
    state: str,
    new: str,
    used: int,
    reserved: int,
    now: float,
    holds: tuple[Hold, ...] | None = None,
) -> None:
    if holds is None:  # not carried by the caller (recovery): read them
        rows = conn.execute(_HOLDS, {"h_step": step_id, "h_state": state}).mappings().all()
        holds = tuple(
            Hold(r["limit_id"], r["workflow"], r["key"], r["period"], int(r["amount_micros"])) for r in rows
        )
    for hold in sorted(holds, key=lambda h: h.limit_id):
        conn.execute(
            _SETTLE,
            {
                "v_workflow": hold.workflow,
                "v_limit": hold.limit_id,
                "v_key": hold.key,
                "v_period": hold.period,
                "v_reserved": hold.amount_micros * reserved,
                "v_used": hold.amount_micros * used,
                "v_now": now,
            },
        )
    if holds:
        conn.execute(_MARK, {"h_step": step_id, "h_state": state, "h_new": new})


def settle(
    conn: Conn, step_id: str, *, happened: bool, now: float, holds: tuple[Hold, ...] | None = None
) -> None:
    """The step's reserved holds become use (it executed, or may have) or are released (it failed).
    ``holds`` are what :func:`reserve` returned, when the caller still has them."""
    if happened:
        _move(conn, step_id, state="reserved", new="used", used=1, reserved=1, now=now, holds=holds)
    else:
        _move(conn, step_id, state="reserved", new="released", used=0, reserved=1, now=now, holds=holds)


def give_back(conn: Conn, step_id: str, *, now: float) -> None:
    """A person confirmed the step's call did not happen: what it used is released."""
    _move(conn, step_id, state="used", new="released", used=-1, reserved=0, now=now)


def headroom(
    conn: Conn,
    manifest: Manifest,
    spec: ToolSpec,
    arguments: Any,
    *,
    workflow: str,
    agent_id: str,
    run_id: str,
    now: float,
) -> list[dict[str, Any]]:
    """For each limit that applies: the cap, what is used or reserved, what is left, and whether
    this action's amount fits (what an approver sees)."""
    out: list[dict[str, Any]] = []
    for limit in applicable(manifest, spec, arguments):
        b = bucket(limit, agent_id=agent_id, run_id=run_id, arguments=arguments, at=now)
        used = _used(conn, workflow, b)
        cap = micros(limit.max)
        amount = micros(_lookup(arguments, limit.argument))
        left = max(0, cap - used)
        out.append(
            {
                "id": limit.id,
                "limit": describe(limit),
                "description": limit.description,
                "scope": b.where,
                "period": b.period,
                "unit": limit.unit,
                "max": cap / MICROS,
                "used": used / MICROS,
                "headroom": left / MICROS,
                "amount": amount / MICROS,
                "fits": amount <= left,
            }
        )
    return out


__all__ = [
    "CODE",
    "WINDOW_S",
    "Bucket",
    "Hold",
    "Ledger",
    "Prior",
    "ValueRefused",
    "applicable",
    "bucket",
    "check_history",
    "describe",
    "give_back",
    "headroom",
    "judge",
    "period",
    "reserve",
    "settle",
]
