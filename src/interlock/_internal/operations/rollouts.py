"""Rollouts as an operator runs them: checked for who asks, the same from every face.

The HTTP API (``/v1/workflows/{name}/rollout``) and ``interlock rollout`` call these;
:class:`~interlock._internal.rollouts.service.RolloutService` does the writing and the audit
events. Starting, promoting and aborting need ``admin`` or ``owner`` on the workflow; reading the
status, any role on it. A workflow the operator holds no role on is a :class:`NotFound`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from interlock._internal.identity.operators import Operator
from interlock._internal.manifest.loader import LoadedManifest
from interlock._internal.permissions import ROLLOUT_MANAGERS, actor, require_any_role, runtime_for
from interlock._internal.rollouts.model import Rollout
from interlock._internal.service import Interlock


def start(
    interlock: Interlock,
    operator: Operator,
    candidate: LoadedManifest,
    *,
    share: float = 0.0,
    agents: Sequence[str] = (),
    triggers: dict[str, list[str]] | None = None,
    max_denial_increase: float | None = None,
    max_escalation_increase: float | None = None,
    min_decisions: int = 20,
) -> Rollout:
    workflow = candidate.manifest.name
    runtime_for(interlock, operator, workflow)
    require_any_role(operator, ROLLOUT_MANAGERS, workflow)
    return interlock.rollouts.start(
        candidate,
        actor=actor(operator),
        share=share,
        agents=agents,
        triggers=triggers,
        max_denial_increase=max_denial_increase,
        max_escalation_increase=max_escalation_increase,
        min_decisions=min_decisions,
    )


def status(interlock: Interlock, operator: Operator, workflow: str, *, examples: int = 3) -> dict[str, Any]:
    runtime_for(interlock, operator, workflow)
    return interlock.rollouts.status(workflow, examples=examples)


def promote(interlock: Interlock, operator: Operator, workflow: str, *, reason: str | None = None) -> Rollout:
    runtime_for(interlock, operator, workflow)
    require_any_role(operator, ROLLOUT_MANAGERS, workflow)
    return interlock.rollouts.promote(workflow, actor=actor(operator), reason=reason)


def abort(interlock: Interlock, operator: Operator, workflow: str, *, reason: str | None = None) -> Rollout:
    runtime_for(interlock, operator, workflow)
    require_any_role(operator, ROLLOUT_MANAGERS, workflow)
    return interlock.rollouts.abort(workflow, actor=actor(operator), reason=reason)
