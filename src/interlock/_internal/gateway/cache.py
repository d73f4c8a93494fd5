"""Read caching: an idempotent read's answer served from storage instead of the upstream.

A cached answer replaces only the upstream call. The action still passes authentication, policy
and every limit (rate, caps, budgets; a cached answer costs nothing), is recorded as a step of its
own marked ``cached_from`` the step whose call fetched it, and reaches the agent in its stored
form: redacted like every stored result (as an idempotent replay is).

Answers live in the database (``cache_entries``), so every replica shares them. A write the
manifest names (``cache.invalidated_by``) leaves an invalidation mark for the record it changed
(or the whole tool) in its outcome's transaction; an answer is served only when it was fetched
after every mark over it, so a read that raced the write is never served after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, case, exists, or_, select, update
from sqlalchemy.engine import Engine

from interlock._internal.audit.canonical import hash_value
from interlock._internal.gateway.models import Run
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.manifest.models import Manifest, ToolCache
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading, transaction
from interlock._internal.store.hot import Conn, InsertIgnore

MARK = "*"  # the scope of invalidation marks, and the record of a tool-wide mark

_C = t.cache_entries
_M = _C.alias("mark")
_PK = and_(
    _C.c.workflow == bindparam("c_workflow"),
    _C.c.tool == bindparam("c_tool"),
    _C.c.scope == bindparam("c_scope"),
    _C.c.record == bindparam("c_record"),
)
LOOKUP = select(_C.c.result, _C.c.step_id).where(
    _PK,
    _C.c.expires_at > bindparam("c_now"),
    _C.c.result.is_not(None),
    ~exists().where(
        _M.c.workflow == _C.c.workflow,
        _M.c.tool == _C.c.tool,
        _M.c.scope == MARK,
        or_(_M.c.record == _C.c.record, _M.c.record == MARK),
        _M.c.invalidated_at >= _C.c.fetched_at,
    ),
)
_STORE = (
    update(_C)
    .where(_PK, _C.c.fetched_at <= bindparam("c_fetched"))
    .values(
        result=bindparam("c_result"),
        step_id=bindparam("c_step"),
        fetched_at=bindparam("c_fetched"),
        expires_at=bindparam("c_expires"),
    )
)
# Marks only move forward: two writes racing leave the later time.
_MARK = (
    update(_C)
    .where(_PK)
    .values(
        invalidated_at=case(
            (
                or_(_C.c.invalidated_at.is_(None), _C.c.invalidated_at < bindparam("c_now")),
                bindparam("c_now"),
            ),
            else_=_C.c.invalidated_at,
        ),
        expires_at=case(
            (_C.c.expires_at < bindparam("c_expires"), bindparam("c_expires")), else_=_C.c.expires_at
        ),
    )
)


_INSERT = InsertIgnore(_C)


@dataclass(frozen=True)
class Invalidation:
    """A write's effect on one cached tool: the record it changed (``mapping``), or all of them."""

    tool: str
    cache: ToolCache
    mapping: dict[str, str] | None


@dataclass(frozen=True)
class Plan:
    """A workflow version's caching, computed once: the cached tools and what each write spoils."""

    caches: dict[str, ToolCache]
    spoils: dict[str, tuple[Invalidation, ...]]
    longest_ttl_s: float


@dataclass(frozen=True)
class Hit:
    result: Any
    step_id: str | None


def plan(runtime: WorkflowRuntime) -> Plan:
    found = runtime.memo.get(("cache_plan",))
    if found is None:
        found = runtime.memo.setdefault(("cache_plan",), plan_for(runtime.manifest))
    assert isinstance(found, Plan)
    return found


def plan_for(manifest: Manifest) -> Plan:
    caches = {tool.name: tool.cache for tool in manifest.tools if tool.cache is not None}
    spoils: dict[str, list[Invalidation]] = {}
    for name, cache in caches.items():
        for inv in cache.invalidated_by:
            spoils.setdefault(inv.tool, []).append(Invalidation(name, cache, inv.arguments))
    longest = max((c.ttl_s for c in caches.values()), default=0.0)
    return Plan(caches, {k: tuple(v) for k, v in spoils.items()}, longest)


def _lookup(arguments: Any, path: str) -> Any:
    node = arguments
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _record(environment: str, key: Any) -> str:
    return hash_value([environment, key])


def record_of(cache: ToolCache, environment: str, arguments: Any) -> str:
    """The hash naming the record an answer is about: the environment and the key arguments."""
    key = arguments if cache.key is None else {k: _lookup(arguments, k) for k in cache.key}
    return _record(environment, key)


def _where(run: Run, tool: str, cache: ToolCache, arguments: Any) -> dict[str, Any]:
    return {
        "c_workflow": run.workflow,
        "c_tool": tool,
        "c_scope": run.id if cache.scope == "run" else "",
        "c_record": record_of(cache, run.environment, arguments),
    }


def lookup(engine: Engine, runtime: WorkflowRuntime, run: Run, tool: str, arguments: Any) -> Hit | None:
    """A fresh answer for this read, or None (not cached, expired, or made stale by a write)."""
    cache = plan(runtime).caches.get(tool)
    if cache is None:
        return None
    with reading(engine) as conn:
        row = conn.execute(LOOKUP, {**_where(run, tool, cache, arguments), "c_now": time.time()}).first()
    if row is None:
        return None
    return Hit(result=row[0], step_id=row[1])


def _upsert(conn: Conn, statement: Any, params: dict[str, Any], row: dict[str, Any]) -> None:
    if conn.execute(statement, params).rowcount:
        return
    if not _INSERT.run(conn, row):
        conn.execute(statement, params)  # another transaction created it meanwhile


def store(
    conn: Conn,
    runtime: WorkflowRuntime,
    run: Run,
    tool: str,
    arguments: Any,
    result: Any,
    *,
    step_id: str,
    fetched_at: float,
) -> bool:
    """Keep a fresh answer (in the outcome's transaction). ``fetched_at`` is when its call began:
    a mark at or after it means a write may have changed the record, and the answer is not served."""
    cache = plan(runtime).caches.get(tool)
    if cache is None or result is None:
        return False
    where = _where(run, tool, cache, arguments)
    expires = fetched_at + cache.ttl_s
    params = {**where, "c_result": result, "c_step": step_id, "c_fetched": fetched_at, "c_expires": expires}
    row = {
        "workflow": where["c_workflow"],
        "tool": tool,
        "scope": where["c_scope"],
        "record": where["c_record"],
        "result": result,
        "step_id": step_id,
        "fetched_at": fetched_at,
        "expires_at": expires,
        "invalidated_at": None,
    }
    _upsert(conn, _STORE, params, row)
    return True


def invalidate(
    conn: Conn, runtime: WorkflowRuntime, run: Run, tool: str, arguments: Any, *, now: float
) -> int:
    """Mark what the write ``tool`` with these arguments made stale (in its outcome's transaction).
    Returns how many marks were set."""
    p = plan(runtime)
    spoiled = p.spoils.get(tool, ())
    for inv in spoiled:
        if inv.mapping is None or inv.cache.key is None:
            record = MARK
        else:
            key = {k: _lookup(arguments, inv.mapping[k]) for k in inv.cache.key}
            record = _record(run.environment, key)
        params = {
            "c_workflow": run.workflow,
            "c_tool": inv.tool,
            "c_scope": MARK,
            "c_record": record,
            "c_now": now,
            # A mark must outlive every answer fetched before it.
            "c_expires": now + p.longest_ttl_s,
        }
        row = {
            "workflow": run.workflow,
            "tool": inv.tool,
            "scope": MARK,
            "record": record,
            "result": None,
            "step_id": None,
            "fetched_at": 0.0,
            "expires_at": now + p.longest_ttl_s,
            "invalidated_at": now,
        }
        _upsert(conn, _MARK, params, row)
    return len(spoiled)


def purge_expired(engine: Engine, *, now: float | None = None) -> int:
    """Drop answers and marks past their expiry (housekeeping)."""
    with transaction(engine) as conn:
        return int(conn.execute(_C.delete().where(_C.c.expires_at < (now or time.time()))).rowcount)


__all__ = ["Hit", "Plan", "invalidate", "lookup", "plan", "plan_for", "purge_expired", "record_of", "store"]
