"""The pipeline's SQL, built once: the hot path only binds parameters, so SQLAlchemy reuses its
compiled form."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, select, update

from interlock._internal.store import tables as t

AGENT_PAUSE = t.pauses.alias("agent_pause")
ENV_PAUSE = t.pauses.alias("env_pause")
LOAD_RUN = (
    select(
        t.runs,
        t.workflows.c.paused,
        t.workflows.c.paused_reason,
        AGENT_PAUSE.c.reason.label("agent_paused_reason"),
        AGENT_PAUSE.c.paused_by.label("agent_paused_by"),
        ENV_PAUSE.c.reason.label("env_paused_reason"),
        ENV_PAUSE.c.paused_by.label("env_paused_by"),
    )
    .select_from(
        t.runs.outerjoin(t.workflows, t.workflows.c.name == t.runs.c.workflow)
        .outerjoin(AGENT_PAUSE, and_(AGENT_PAUSE.c.scope == "agent", AGENT_PAUSE.c.key == t.runs.c.agent_id))
        .outerjoin(
            ENV_PAUSE, and_(ENV_PAUSE.c.scope == "environment", ENV_PAUSE.c.key == t.runs.c.environment)
        )
    )
    .where(t.runs.c.id == bindparam("run_id"))
)
AGENT = t.agents.alias("caller")
LOAD_RUN_AND_AGENT = LOAD_RUN.add_columns(*(c.label(f"a_{c.name}") for c in AGENT.c)).outerjoin(
    AGENT, AGENT.c.id == bindparam("agent_id")
)


_AGENT_KEYS = tuple((c.name, f"a_{c.name}") for c in AGENT.c)


class AgentColumns:
    """The caller's agent columns of a joined row, under their own names: copied once into plain
    attributes (a ``__getattr__`` fallback cost a raised and discarded AttributeError for every
    column read, on every action)."""

    def __init__(self, mapping: Any) -> None:
        self.__dict__.update({name: mapping[key] for name, key in _AGENT_KEYS})


BUMP_STEPS = (
    update(t.runs)
    .where(t.runs.c.id == bindparam("run_id"))
    .values(steps=t.runs.c.steps + 1)
    .returning(t.runs.c.steps)
)
RESERVE = (
    update(t.runs)
    .where(
        t.runs.c.id == bindparam("run_id"),
        t.runs.c.state == "running",
        t.runs.c.steps < bindparam("max_steps"),
        t.runs.c.tool_calls < bindparam("max_tool_calls"),
    )
    .values(steps=t.runs.c.steps + 1, tool_calls=t.runs.c.tool_calls + 1)
    .returning(t.runs.c.steps)
)
# Claim an approved, not yet executed (or held) approval for execution, exactly once, with a lease.
CLAIM_APPROVAL = (
    update(t.approvals)
    .where(
        t.approvals.c.id == bindparam("a_id"),
        t.approvals.c.state == "approved",
        or_(t.approvals.c.execution.is_(None), t.approvals.c.execution == "held"),
    )
    .values(execution="executing", lease_expires_at=bindparam("a_lease"))
    .returning(t.approvals)
)
INT_MAX = 2**31 - 1  # runs.steps and runs.tool_calls are INTEGER on PostgreSQL
ADD_COST = (
    update(t.runs)
    .where(t.runs.c.id == bindparam("run_id"))
    .values(cost_micros=t.runs.c.cost_micros + bindparam("c_cost"))
)
ADD_USAGE = (
    update(t.runs)
    .where(t.runs.c.id == bindparam("run_id"))
    .values(
        cost_micros=t.runs.c.cost_micros + bindparam("c_cost"), tokens=t.runs.c.tokens + bindparam("c_tokens")
    )
)
COUNT_REPEATS = select(func.count()).where(
    t.steps.c.run_id == bindparam("r_run"),
    t.steps.c.tool == bindparam("r_tool"),
    t.steps.c.args_hash == bindparam("r_hash"),
    t.steps.c.status.in_(("executed", "failed")),
)
INSERT_STEP = t.steps.insert()
INSERT_DECISION = t.decisions.insert()
INSERT_IDEMPOTENCY = t.idempotency.insert()
IDEMPOTENCY_KEY = and_(
    t.idempotency.c.agent_id == bindparam("k_agent"), t.idempotency.c.key == bindparam("k_key")
)
FIND_IDEMPOTENCY = select(t.idempotency).where(IDEMPOTENCY_KEY)
DONE_IDEMPOTENCY = (
    update(t.idempotency)
    .where(IDEMPOTENCY_KEY)
    .values(state="done", step_id=bindparam("k_step"), outcome=bindparam("k_outcome"))
)
RELEASE_IDEMPOTENCY = delete(t.idempotency).where(IDEMPOTENCY_KEY)
