"""Rollouts as the embedded Interlock runs them: start, status, promote, abort; which version a
new run gets; and, for each action of a run in a running rollout, the lane that says which
version enforces it and which judges it in shadow.

Versions other than the process's active one are built on demand from their stored text (any
replica can serve a rollout another replica or the CLI started) and share the active runtime's
transports, so in-memory upstreams given to :meth:`Interlock.load_workflow` serve them too.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from interlock._internal.audit.chain import append_event
from interlock._internal.gateway.decide import Intent
from interlock._internal.gateway.models import ActionResult, Run
from interlock._internal.gateway.runtime import WorkflowRuntime, build_runtime
from interlock._internal.gateway.transports.base import Transport
from interlock._internal.manifest.loader import LoadedManifest, load_manifest_text
from interlock._internal.rollouts.model import Lane, Mode, Rollout
from interlock._internal.rollouts.shadow import enforced_word, other_word
from interlock._internal.rollouts.store import RolloutStore
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading
from interlock.exceptions import ArgumentsInvalid, NotFound

if TYPE_CHECKING:
    from interlock._internal.service import Interlock

log = logging.getLogger("interlock.rollouts")

DEFAULT_MIN_DECISIONS = 20


class RolloutService:
    def __init__(self, interlock: Interlock) -> None:
        self._il = interlock
        self.store = RolloutStore(interlock.engine)
        self._versions: dict[str, WorkflowRuntime] = {}
        self._lock = threading.Lock()

    # ---- operators' side -------------------------------------------------------------------------

    def start(
        self,
        candidate: LoadedManifest,
        *,
        actor: str,
        share: float = 0.0,
        agents: Sequence[str] = (),
        triggers: dict[str, list[str]] | None = None,
        max_denial_increase: float | None = None,
        max_escalation_increase: float | None = None,
        min_decisions: int = DEFAULT_MIN_DECISIONS,
    ) -> Rollout:
        """Store the candidate version (without activating it) and start its rollout: in shadow
        when no share, agent or trigger is given, else as a canary."""
        workflow = candidate.manifest.name
        active = self._il.runtime(workflow)
        triggers = dict(triggers or {})
        if not (isinstance(share, int | float) and math.isfinite(share) and 0.0 <= share <= 1.0):
            raise ArgumentsInvalid("share must be a fraction from 0 to 1", field="share")
        for name, value in (
            ("max_denial_increase", max_denial_increase),
            ("max_escalation_increase", max_escalation_increase),
        ):
            if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ArgumentsInvalid(f"{name} must be a fraction from 0 to 1", field=name)
        if min_decisions < 1:
            raise ArgumentsInvalid("min_decisions must be at least 1", field="min_decisions")
        for agent in agents:
            if candidate.manifest.agent(agent) is None:
                raise ArgumentsInvalid(
                    f"agent {agent!r} is not declared in the candidate {candidate.version_id}", field="agents"
                )
        for name, values in triggers.items():
            if not name or not values:
                raise ArgumentsInvalid(
                    "a trigger needs a field name and at least one value", field="triggers"
                )
        active_version = self._active_version(workflow) or active.version_id
        if candidate.version_id == active_version:
            raise ArgumentsInvalid(
                f"{candidate.version_id} is already the active version of {workflow}", field="manifest"
            )
        runtime = self._build(candidate, active)
        try:
            self._il._store_version(candidate, runtime, actor=actor, activate=False)
        except BaseException:
            runtime.close()
            raise
        with self._lock:
            old = self._versions.pop(candidate.version_id, None)
            self._versions[candidate.version_id] = runtime
        if old is not None:
            old.close()
        mode: Mode = "canary" if share > 0 or agents or triggers else "shadow"
        return self.store.start(
            workflow=workflow,
            candidate_version_id=candidate.version_id,
            active_version_id=active_version,
            mode=mode,
            share=float(share),
            agents=list(agents),
            triggers=triggers,
            max_denial_increase=max_denial_increase,
            max_escalation_increase=max_escalation_increase,
            min_decisions=min_decisions,
            actor=actor,
        )

    def status(self, workflow: str, *, examples: int = 3) -> dict[str, Any]:
        """The running rollout (or the last one) and how its candidate's decisions differ."""
        rollout = self.store.latest(workflow)
        if rollout is None:
            raise NotFound(f"workflow {workflow} has had no rollout", code="no_rollout")
        return self.store.comparison(rollout, examples=examples)

    def promote(self, workflow: str, *, actor: str, reason: str | None = None) -> Rollout:
        """Make the candidate the workflow's active version, for every run."""

        def activate(conn: Connection, rollout: Rollout) -> None:
            conn.execute(
                update(t.workflows)
                .where(t.workflows.c.name == workflow)
                .values(active_version_id=rollout.candidate_version_id, updated_at=time.time())
            )
            append_event(
                conn,
                kind="workflow.activated",
                actor=actor,
                workflow=workflow,
                data={
                    "version_id": rollout.candidate_version_id,
                    "previous": rollout.active_version_id,
                    "rollout": rollout.id,
                },
            )

        rollout = self.store.end(workflow, state="promoted", actor=actor, reason=reason, on_end=activate)
        self._follow(rollout.workflow, rollout.candidate_version_id)
        return rollout

    def abort(self, workflow: str, *, actor: str, reason: str | None = None) -> Rollout:
        """End the rollout: every run, canary ones included, goes back to the active version."""
        return self.store.end(workflow, state="aborted", actor=actor, reason=reason)

    # ---- the pipeline's side ---------------------------------------------------------------------

    def assignment(self, workflow: str, runtime: WorkflowRuntime) -> tuple[WorkflowRuntime, Rollout | None]:
        """For a run about to start: the process's runtime (switched to the promoted version if
        another replica promoted one this process has not seen) and the running rollout."""
        running, promoted = self.store.for_run_start(workflow, runtime.version_id)
        if promoted is not None:
            runtime = self._follow(workflow, promoted)
        return runtime, running

    def lane(self, run: Run) -> Lane | None:
        """Which version decides this action of a run started during a rollout, and which one
        judges it in shadow; None once the rollout ended (the active version decides)."""
        assert run.rollout_id is not None
        rollout = self.store.get(run.rollout_id)
        if rollout.state == "promoted":
            self._follow(rollout.workflow, rollout.candidate_version_id)
            return None
        if rollout.state != "running":
            return None
        active = self.version(rollout.workflow, rollout.active_version_id)
        candidate = self.version(rollout.workflow, rollout.candidate_version_id)
        if run.workflow_version == rollout.candidate_version_id:
            return Lane(rollout.id, "candidate", candidate, active)
        return Lane(rollout.id, "active", active, candidate)

    def observe(self, lane: Lane, run: Run, agent_id: str, intent: Intent, result: ActionResult) -> None:
        """Judge the action by the version not enforced and record both words. Never raises: the
        enforced action has happened, and a comparison must not change what the agent is told."""
        if result.replayed:
            return
        try:
            engine = self._il.engine
            other, history = other_word(
                engine, lane.other, run=run, agent_id=agent_id, intent=intent, result=result
            )
            mine = enforced_word(engine, lane.enforced, run=run, result=result, history=history)
            active, candidate = (mine, other) if lane.arm == "active" else (other, mine)
            aborted = self.store.observe(
                lane.rollout_id,
                run_id=run.id,
                step_id=result.step_id,
                agent_id=agent_id,
                tool=intent.tool,
                arm=lane.arm,
                active=active,
                candidate=candidate,
            )
            if aborted is not None:
                log.warning(
                    "rollout %s of %s aborted itself: %s", aborted.id, aborted.workflow, aborted.end_reason
                )
        except Exception:
            log.exception("could not record the rollout comparison for run %s", run.id)

    # ---- versions ----------------------------------------------------------------------------------

    def version(self, workflow: str, version_id: str) -> WorkflowRuntime:
        """A stored version of ``workflow`` ready to serve: the process's active runtime when it
        is that version, else built once from the stored text."""
        current = self._il.runtime(workflow)
        if current.version_id == version_id:
            return current
        with self._lock:
            cached = self._versions.get(version_id)
        if cached is not None:
            return cached
        loaded = self._stored(workflow, version_id, base_dir=current.loaded.base_dir)
        runtime = self._build(loaded, current)
        with self._lock:
            cached = self._versions.setdefault(version_id, runtime)
        if cached is not runtime:
            runtime.close()
        return cached

    def _follow(self, workflow: str, version_id: str) -> WorkflowRuntime:
        """Serve ``version_id`` as this process's active version of ``workflow`` (a promotion)."""
        current = self._il.runtime(workflow)
        if current.version_id == version_id:
            return current
        runtime = self.version(workflow, version_id)
        self._il._serve(runtime)
        with self._lock:
            self._versions.pop(version_id, None)
            self._versions.setdefault(current.version_id, current)  # closed with the service
        return runtime

    def _build(self, loaded: LoadedManifest, active: WorkflowRuntime) -> WorkflowRuntime:
        # Transports the caller handed to load_workflow (not the active runtime's own) are shared.
        shared: dict[str, Transport] = {k: v for k, v in active.transports.items() if k not in active.owned}
        if any(spec.upstream is not None and spec.upstream.kind == "http" for spec in loaded.manifest.tools):
            shared.setdefault("http", self._il.http_transport)
        egress = self._il.egress if any(s.url is not None for s in loaded.manifest.mcp_servers) else None
        return build_runtime(loaded, shared_transports=shared, egress=egress)

    def _stored(self, workflow: str, version_id: str, *, base_dir: Path) -> LoadedManifest:
        v = t.workflow_versions
        with reading(self._il.engine) as conn:
            row = conn.execute(
                select(v.c.manifest, v.c.source_path).where(v.c.id == version_id, v.c.workflow == workflow)
            ).first()
        if row is None:
            raise NotFound(f"version {version_id} of {workflow} is not stored", code="unknown_version")
        source = Path(row.source_path) if row.source_path else None
        # Relative references resolve from where the version was loaded, else the active one's folder.
        folder = source.parent if source is not None and source.parent.is_dir() else base_dir
        return load_manifest_text(row.manifest, file=str(source or f"<{version_id}>"), base_dir=folder)

    def _active_version(self, workflow: str) -> str | None:
        with reading(self._il.engine) as conn:
            row = conn.execute(
                select(t.workflows.c.active_version_id).where(t.workflows.c.name == workflow)
            ).first()
        return None if row is None else row[0]

    def close(self) -> None:
        with self._lock:
            versions, self._versions = list(self._versions.values()), {}
        for runtime in versions:
            runtime.close()
