"""Verifier gates: propose, then verify.

When a manifest's ``verification.verifiers`` covers an approval request (see
:func:`interlock._internal.gateway.records.create_approval`), the request is routed to a verifier
agent before a person: its own identity, holding the verb ``verify``. The verifier reads the same
decision package an approver reads (over HTTP and MCP) and gives one verdict — approve, reject or
escalate to a person — bound to the hash of the arguments it judged, with the model cost of
reaching it.

Whether the verdict *settles* the approval is policy's call, one Cedar request on the verb
``verify`` (:mod:`interlock._internal.policy.verify`): where a ``settle:*`` permit applies and no
forbid fires, an approve verdict approves it (and the action runs once, through the same path as
a person's approval: :meth:`Pipeline.execute_approved`), a reject verdict rejects it. Anywhere
else — and always for ``escalate`` — the verdict is recorded as advice and the approval waits for
a person, who sees the verdict and its reasoning in the package.

In one transaction with the verdict: its cost as a ``verification`` step of the run (charged to
the run, the verifier's own day and the workflow's day), the ``verification.verdict`` audit event,
and, when it settles, the approval's closing event (``approval.approved`` / ``approval.rejected``
with ``verifier`` set and ``decided_by: ["agent:<verifier>"]``).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, RowMapping

from interlock._internal.approvals.models import ApprovalView
from interlock._internal.approvals.service import ApprovalService, clean_comment
from interlock._internal.audit.chain import append_event
from interlock._internal.gateway.models import Reason
from interlock._internal.gateway.records import bump_steps
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.gateway.statements import ADD_USAGE, INSERT_STEP
from interlock._internal.gateway.usage import Priced, route_and_price
from interlock._internal.identity.tokens import AgentPrincipal
from interlock._internal.ids import new_id
from interlock._internal.limits.budgets import charge, scopes_for, usd_to_micros
from interlock._internal.manifest.models import VerifierSpec
from interlock._internal.policy.verify import SettleDecision, decide_settle
from interlock._internal.runs.state import set_state
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading, transaction
from interlock.exceptions import ArgumentsInvalid, ConflictError, NotFound, PermissionDenied

VERDICTS = ("approve", "reject", "escalate")
LIST_STATES = ("awaiting", "all")
MAX_REASONING_CHARS = 2000


class VerificationService:
    """The verifier agents' side of approvals."""

    def __init__(
        self,
        approvals: ApprovalService,
        *,
        runtimes: Callable[[str], WorkflowRuntime],
        model_prices: dict[str, dict[str, float]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.approvals = approvals
        self.engine = approvals.engine
        self._runtimes = runtimes
        self._model_prices = model_prices or {}
        self._clock = clock

    # ---- reading -----------------------------------------------------------------------------

    def list(
        self, principal: AgentPrincipal, *, state: str = "awaiting", limit: int = 100
    ) -> builtins.list[ApprovalView]:
        """The approvals routed to this verifier: awaiting its verdict (default, oldest first), or
        ``all`` of them (newest first)."""
        self._verifier(principal)
        if state not in LIST_STATES:
            raise ArgumentsInvalid(f"state must be one of {', '.join(LIST_STATES)}", field="state")
        if not 1 <= limit <= 1000:
            raise ArgumentsInvalid("limit must be between 1 and 1000", field="limit")
        self.approvals.expire_due()
        query = select(t.approvals).where(
            t.approvals.c.verifier == principal.agent_id, t.approvals.c.workflow == principal.workflow
        )
        if state == "awaiting":
            query = query.where(
                t.approvals.c.state == "pending", t.approvals.c.verification == "awaiting"
            ).order_by(t.approvals.c.created_at, t.approvals.c.id)
        else:
            query = query.order_by(t.approvals.c.created_at.desc(), t.approvals.c.id)
        with reading(self.engine) as conn:
            rows = conn.execute(query.limit(limit)).mappings().all()
        return self.approvals._views(rows, self._clock())

    def get(self, principal: AgentPrincipal, approval_id: str) -> ApprovalView:
        """One approval routed to this verifier, with the package a person would read."""
        self._verifier(principal)
        view = self.approvals.get(approval_id)
        if view.verifier != principal.agent_id or view.workflow != principal.workflow:
            raise NotFound(f"unknown approval {approval_id!r}", code="unknown_approval")
        return view

    # ---- deciding ----------------------------------------------------------------------------

    def decide(
        self,
        principal: AgentPrincipal,
        approval_id: str,
        *,
        verdict: str,
        args_hash: str,
        reasoning: str | None = None,
        model: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float | None = None,
        task: str | None = None,
        via: str | None = None,
    ) -> ApprovalView:
        """Record the verifier's verdict. Where policy lets it settle, approve approves the request
        (and runs the action once, after this commits) and reject rejects it; otherwise the
        request goes to a person with the verdict as advice.

        Raises :class:`NotFound` (``unknown_approval``, also for requests routed elsewhere),
        :class:`PermissionDenied` (``not_a_verifier``), :class:`ConflictError`
        (``args_mismatch`` when ``args_hash`` is not the request's, ``already_verified``,
        ``already_decided``, ``approval_expired``), :class:`ArgumentsInvalid` for a bad verdict.
        """
        spec = self._verifier(principal)
        if verdict not in VERDICTS:
            raise ArgumentsInvalid(f"verdict must be one of {', '.join(VERDICTS)}", field="verdict")
        if reasoning is not None and len(reasoning) > MAX_REASONING_CHARS:
            raise ArgumentsInvalid(f"reasoning exceeds {MAX_REASONING_CHARS} characters", field="reasoning")
        text = clean_comment(reasoning)
        view = self.get(principal, approval_id)
        if view.verification != "awaiting":
            raise ConflictError(
                f"approval {approval_id} already has a verdict ({view.verification})", code="already_verified"
            )
        if args_hash != view.args_hash:
            # A verdict covers exactly the arguments it judged; other arguments are another request.
            raise ConflictError(
                f"the verdict is for arguments with hash {args_hash[:16]}…, but approval {approval_id} "
                f"is for {view.args_hash[:16]}…; read the request again",
                code="args_mismatch",
                details={"args_hash": view.args_hash},
            )
        runtime = self._runtimes(view.workflow)
        priced = None
        if model is not None:
            priced = route_and_price(
                runtime.manifest,
                self._model_prices,
                model=model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=cost_usd,
                task=task,
            )
        cost_micros = usd_to_micros(priced.cost_usd if priced is not None else (cost_usd or 0.0))
        now = self._clock()
        approved = expired = False
        with transaction(self.engine) as conn:
            run = conn.execute(select(t.runs).where(t.runs.c.id == view.run_id)).mappings().one()
            seq = bump_steps(conn, view.run_id)  # the run row first: the lock order of every writer
            row = self.approvals._lock(conn, approval_id)
            if row["expires_at"] <= now:
                self.approvals._close(conn, row, state="expired", actor="interlock", decided_by=[], now=now)
                expired = True
            else:
                if row["verification"] != "awaiting":
                    raise ConflictError(
                        f"approval {approval_id} already has a verdict", code="already_verified"
                    )
                settle = self._settle(runtime, spec, row, run, verdict)
                if priced is not None and priced.refused is not None:
                    settle = SettleDecision(False, "model_refused", priced.refused.message)
                step_id = self._record_cost(
                    conn,
                    row,
                    run,
                    principal,
                    seq,
                    verdict,
                    settle,
                    text,
                    priced,
                    model,
                    task,
                    input_tokens,
                    output_tokens,
                    cost_micros,
                    now,
                )
                conn.execute(
                    insert(t.approval_verdicts).values(
                        approval_id=approval_id,
                        verifier=principal.agent_id,
                        verdict=verdict,
                        args_hash=row["args_hash"],
                        reasoning=text,
                        settles=settle.settles,
                        code=settle.code,
                        policy_ids=list(settle.policy_ids),
                        model=model,
                        input_tokens=input_tokens,
                        output_tokens=output_tokens,
                        cost_micros=cost_micros,
                        step_id=step_id,
                        created_at=now,
                    )
                )
                conn.execute(
                    update(t.approvals)
                    .where(t.approvals.c.id == approval_id)
                    .values(verification="settled" if settle.settles else "escalated")
                )
                append_event(
                    conn,
                    kind="verification.verdict",
                    actor=f"agent:{principal.agent_id}",
                    workflow=row["workflow"],
                    run_id=row["run_id"],
                    data={
                        "approval": approval_id,
                        "tool": row["tool"],
                        "args_hash": row["args_hash"],
                        "verifier": principal.agent_id,
                        "verdict": verdict,
                        "settles": settle.settles,
                        "code": settle.code,
                        "policy_ids": list(settle.policy_ids),
                        "reasoning": text,
                        "model": model,
                        "input_tokens": input_tokens,
                        "output_tokens": output_tokens,
                        "cost_micros": cost_micros,
                        "step": step_id,
                        "via": via,
                    },
                )
                if settle.settles and verdict == "approve":
                    self._approve(conn, row, principal.agent_id, text, now, via)
                    approved = True
                elif settle.settles and verdict == "reject":
                    who = f"agent:{principal.agent_id}"
                    self.approvals._close(
                        conn,
                        row,
                        state="rejected",
                        actor=who,
                        decided_by=[who],
                        comment=text,
                        now=now,
                        via=via,
                        verifier=principal.agent_id,
                    )
        self.approvals.webhooks.wake()
        if expired:
            raise ConflictError(
                f"approval {approval_id} expired before it was decided", code="approval_expired"
            )
        if approved:
            self.approvals._execute(approval_id)
        return self.approvals.get(approval_id)

    # ---- internals ---------------------------------------------------------------------------

    def _verifier(self, principal: AgentPrincipal) -> VerifierSpec:
        manifest = self._runtimes(principal.workflow).manifest
        spec = manifest.verification.verifier(principal.agent_id) if manifest.verification else None
        if spec is None:
            raise PermissionDenied(
                f"agent {principal.agent_id!r} is not a verifier of {principal.workflow!r} "
                "(the manifest's verification.verifiers)",
                code="not_a_verifier",
            )
        return spec

    @staticmethod
    def _settle(
        runtime: WorkflowRuntime, spec: VerifierSpec, row: RowMapping, run: RowMapping, verdict: str
    ) -> SettleDecision:
        if verdict == "escalate":
            return SettleDecision(False, "escalated_by_verifier", f"{spec.agent} asked for a person")
        tool = runtime.tools.get(row["tool"])
        if tool is None or row["payload"] is None:
            return SettleDecision(False, "policy_error", f"tool {row['tool']!r} is no longer in the workflow")
        package = row["package"] or {}
        return decide_settle(
            runtime.compiled,
            verifier=spec.agent,
            workflow=row["workflow"],
            environment=run["environment"],
            tool=row["tool"],
            verb=row["verb"],
            risk=list(package.get("risk") or []),
            arguments=row["payload"],
            input_schema=tool.spec.input_schema,
            data_classes=list(package.get("data_classes") or []),
            verdict=verdict,
        )

    def _record_cost(
        self,
        conn: Connection,
        row: RowMapping,
        run: RowMapping,
        principal: AgentPrincipal,
        seq: int,
        verdict: str,
        settle: SettleDecision,
        reasoning: str | None,
        priced: Priced | None,
        model: str | None,
        task: str | None,
        input_tokens: int,
        output_tokens: int,
        cost_micros: int,
        now: float,
    ) -> str:
        """The verdict as a step of the run, its cost charged to the run, the verifier's day and
        the workflow's day; passing a budget stops the run, as a model call does."""
        step_id = new_id("stp")
        tokens = input_tokens + output_tokens
        conn.execute(ADD_USAGE, {"run_id": row["run_id"], "c_cost": cost_micros, "c_tokens": tokens})
        usage: dict[str, Any] = {"approval": row["id"], "verdict": verdict, "verifier": principal.agent_id}
        if model is not None:
            usage.update(model=model, input_tokens=input_tokens, output_tokens=output_tokens)
        if priced is not None:
            usage.update(priced.usage_fields(task))
        conn.execute(
            INSERT_STEP,
            {
                "id": step_id,
                "run_id": row["run_id"],
                "seq": seq,
                "kind": "verification",
                "tool": row["tool"],
                "verb": "verify",
                "status": "settled" if settle.settles else "referred",
                "decision_id": None,
                "args_hash": row["args_hash"],
                "arguments": usage,
                "result": {
                    "settles": settle.settles,
                    "code": settle.code,
                    "policy_ids": list(settle.policy_ids),
                },
                "error": None,
                "reasoning": reasoning,
                "confidence": None,
                "evidence": None,
                "duration_ms": None,
                "cost_micros": cost_micros,
                "created_at": now,
            },
        )
        manifest = self._runtimes(row["workflow"]).manifest
        scopes = scopes_for(manifest, run_id=row["run_id"], agent_id=principal.agent_id, now=now)
        over: Reason | None = charge(conn, scopes, cost_micros=cost_micros, tokens=tokens) if scopes else None
        if over is not None and run["state"] == "running":
            set_state(
                conn,
                row["run_id"],
                "stopped",
                reason=over.message,
                actor="interlock",
                workflow=row["workflow"],
                data={"code": over.code, "step": step_id},
            )
        return step_id

    def _approve(
        self,
        conn: Connection,
        row: RowMapping,
        verifier: str,
        comment: str | None,
        now: float,
        via: str | None,
    ) -> None:
        """pending → approved by the verifier alone (policy let it settle)."""
        who = f"agent:{verifier}"
        changed = conn.execute(
            update(t.approvals)
            .where(t.approvals.c.id == row["id"], t.approvals.c.state == "pending")
            .values(state="approved", decided_at=now, decided_by=[who], comment=comment)
        ).rowcount
        if changed != 1:  # the row lock makes this unreachable; the condition is the guarantee
            raise ConflictError(f"approval {row['id']} was decided meanwhile", code="already_decided")
        decided = {**row, "state": "approved", "decided_at": now, "decided_by": [who], "comment": comment}
        self.approvals.webhooks.enqueue(
            conn, event="approval.decided", approval_id=row["id"], approval=self.approvals._announce(decided)
        )
        package = conn.execute(select(t.runs.c.package_id).where(t.runs.c.id == row["run_id"])).scalar()
        append_event(
            conn,
            kind="approval.approved",
            actor=who,
            workflow=row["workflow"],
            run_id=row["run_id"],
            data={
                "approval": row["id"],
                "tool": row["tool"],
                "args_hash": row["args_hash"],
                "operator": None,
                "verifier": verifier,
                "comment": comment,
                "approve_votes": 0,
                "quorum": row["quorum"],
                "via": via,
                "decided_by": [who],
                **({"package": str(package)} if package is not None else {}),
            },
        )


__all__ = ["LIST_STATES", "MAX_REASONING_CHARS", "VERDICTS", "VerificationService"]
