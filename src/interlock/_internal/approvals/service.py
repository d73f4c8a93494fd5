"""Approvals: read them, decide them, withdraw them, let them expire; then act exactly once.

The pipeline creates a ``pending`` approval when policy asks for a person (see
:mod:`interlock._internal.gateway.pipeline`). From there only people move it, under these rules:

- Who may vote: operators holding one of the workflow's ``approvals.approver_roles`` for that
  workflow (``admin`` is not ``approver`` unless the manifest says so). Agents never vote: this
  service takes an :class:`Operator`, and the HTTP API only accepts operator tokens for it.
- Four eyes: unless ``allow_self_approval``, the operator who started the run may not vote on it.
- Quorum: ``quorum`` approve votes from distinct operators approve it; one reject vote rejects it.
  A person votes once (``approval_votes`` is keyed by approval and operator).
- Once: every decision is a conditional change of a ``pending`` row under its row lock, so two
  people deciding at the same moment decide it once; the approved action then runs through
  :meth:`Pipeline.execute_approved`, which claims it atomically and runs exactly the approved
  arguments (their hash is bound to the approval; an agent that changes them asks anew).
- Time: an approval past ``expires_at`` cannot be decided; it becomes ``expired`` when read, or
  when :meth:`ApprovalService.expire_due` sweeps.

Every transition appends an audit event (who, and their comment) in the same transaction, and
queues the ``approval.decided`` webhook there too. A closed approval (rejected, expired,
cancelled) answers the agent's idempotency key with a ``denied`` result carrying the reason, so
the agent's retry learns why without asking anyone.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import String, and_, exists, func, insert, or_, select, type_coerce, update
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from interlock._internal.approvals.models import (
    STATES,
    ApprovalPackage,
    ApprovalView,
    RunSummary,
    VerdictView,
    Vote,
)
from interlock._internal.approvals.webhooks import WebhookDispatcher, WebhookTarget
from interlock._internal.audit.chain import append_event
from interlock._internal.gateway.models import ActionResult, Decision, Reason
from interlock._internal.gateway.pipeline import Pipeline
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.identity.operators import Operator
from interlock._internal.manifest.models import Approvals
from interlock._internal.permissions import may_unmask
from interlock._internal.runs.store import MICROS
from interlock._internal.store import tables as t
from interlock._internal.store.encryption import keyring_of
from interlock._internal.store.engine import reading, transaction
from interlock._internal.telemetry.redaction import redact, redact_credentials, redact_text
from interlock.exceptions import (
    ArgumentsInvalid,
    ConflictError,
    NotFound,
    PermissionDenied,
    StorageError,
)

log = logging.getLogger("interlock.approvals")

MAX_COMMENT_CHARS = 2000
_BATCH = 200
_ANY_STATE = ("all", "any")
# Who may withdraw a request besides its approvers: the workflow's owners and admins.
_CANCEL_ROLES = ("owner", "admin")


class ApprovalService:
    """Approvals for every workflow in one database.

    ``runtimes`` maps a workflow name to its loaded runtime (``Interlock.runtime``); deciding needs
    the workflow loaded, because its manifest says who may approve and the approved action runs
    through it. ``webhooks`` are the configured receivers (see
    :mod:`interlock._internal.approvals.webhooks`); pass ``dispatcher`` instead to tune retries.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        pipeline: Pipeline,
        runtimes: Callable[[str], WorkflowRuntime],
        webhooks: Sequence[WebhookTarget] = (),
        dispatcher: WebhookDispatcher | None = None,
        public_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self._runtimes = runtimes
        self._clock = clock
        self.public_url = public_url.rstrip("/") if public_url else None
        self.webhooks = (
            dispatcher if dispatcher is not None else WebhookDispatcher(engine, webhooks, clock=clock)
        )
        # The worker also announces approvals the pipeline created (in this or another process).
        self.webhooks.on_poll(self.notify_pending)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the webhook worker (when receivers are configured). A server calls this at startup."""
        self.webhooks.start()

    def close(self) -> None:
        self.webhooks.close()

    # ---- reading -----------------------------------------------------------------------------

    def get(self, approval_id: str) -> ApprovalView:
        """One approval with its package, votes and run. A pending one past its expiry is expired
        now (and the expiry recorded) before it is returned."""
        now = self._clock()
        row = self._row(approval_id)
        if row["state"] == "pending" and row["expires_at"] <= now:
            self._expire([approval_id], now)
            row = self._row(approval_id)
        return self._views([row], now)[0]

    def rows_for_run(self, run_id: str) -> builtins.list[dict[str, Any]]:
        """A run's approvals as stored, oldest first (the run timeline reads them)."""
        query = select(t.approvals).where(t.approvals.c.run_id == run_id).order_by(t.approvals.c.created_at)
        with reading(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def id_for_step(self, run_id: str, step_id: str) -> str | None:
        """The approval a step asked for, if any."""
        query = select(t.approvals.c.id).where(
            t.approvals.c.run_id == run_id, t.approvals.c.step_id == step_id
        )
        with reading(self.engine) as conn:
            found = conn.execute(query).first()
        return None if found is None else str(found[0])

    def list(
        self,
        *,
        workflow: str | None = None,
        state: str | None = "pending",
        older_than_s: float | None = None,
        risk: str | None = None,
        operator: Operator | None = None,
        limit: int = 100,
    ) -> builtins.list[ApprovalView]:
        """Approvals, oldest first when listing pending ones (what has waited longest comes first),
        newest first otherwise. ``state`` None or ``"all"`` lists every state; ``risk`` keeps those
        with that risk trait; ``operator`` keeps those on workflows the operator holds a role for."""
        if state in _ANY_STATE:
            state = None
        if state is not None and state not in STATES:
            raise ArgumentsInvalid(f"unknown state {state!r}; states are {', '.join(STATES)}", field="state")
        if not 1 <= limit <= 1000:
            raise ArgumentsInvalid("limit must be between 1 and 1000", field="limit")
        now = self._clock()
        if state in (None, "pending", "expired"):
            self.expire_due(now)
        query = select(t.approvals)
        if state is not None:
            query = query.where(t.approvals.c.state == state)
        if workflow is not None:
            query = query.where(t.approvals.c.workflow == workflow)
        if older_than_s is not None:
            query = query.where(t.approvals.c.created_at <= now - older_than_s)
        if operator is not None and operator.workflows is not None:
            query = query.where(t.approvals.c.workflow.in_(operator.workflows))
        if state == "pending":
            query = query.order_by(t.approvals.c.created_at, t.approvals.c.id)
        else:
            query = query.order_by(t.approvals.c.created_at.desc(), t.approvals.c.id)
        rows: builtins.list[RowMapping] = []
        offset = 0
        # A risk trait lives inside the package's JSON, so it is filtered here, page by page.
        page = limit if risk is None else _BATCH
        with reading(self.engine) as conn:
            while len(rows) < limit:
                batch = conn.execute(query.limit(page).offset(offset)).mappings().all()
                rows += [r for r in batch if risk is None or risk in ((r["package"] or {}).get("risk") or [])]
                if len(batch) < page:
                    break
                offset += page
        if self.webhooks.enabled and state in (None, "pending"):
            self.notify_pending()
        return self._views(rows[:limit], now)

    def search(
        self,
        *,
        workflows: Sequence[str] | None,
        state: str | None = "pending",
        agent: str | None = None,
        tool: str | None = None,
        text: str | None = None,
        risk: str | None = None,
        older_than_s: float | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[builtins.list[ApprovalView], int]:
        """One page of approvals and how many match, every filter inside the query: ``workflows``
        are the caller's permitted ones (None: no restriction), so a page and the total only count
        what the caller may see. Pending ones oldest first, others newest first. ``text`` looks in
        the approval id, agent, tool and the (redacted) arguments; ``risk`` is a risk trait."""
        if state in _ANY_STATE:
            state = None
        if state is not None and state not in STATES:
            raise ArgumentsInvalid(f"unknown state {state!r}; states are {', '.join(STATES)}", field="state")
        if not 1 <= limit <= 1000:
            raise ArgumentsInvalid("limit must be between 1 and 1000", field="limit")
        if offset < 0:
            raise ArgumentsInvalid("offset must not be negative", field="offset")
        now = self._clock()
        if state in (None, "pending", "expired"):
            self.expire_due(now)
        a = t.approvals.c
        where: builtins.list[ColumnElement[bool]] = []
        if workflows is not None:
            where.append(a.workflow.in_(builtins.list(workflows)))
        if state is not None:
            where.append(a.state == state)
        if agent:
            where.append(a.agent_id == agent)
        if tool:
            where.append(a.tool == tool)
        if older_than_s is not None:
            where.append(a.created_at <= now - older_than_s)
        if risk:
            # A decision's risk is a list of trait names, so the quoted name matches exactly.
            risks = type_coerce(t.decisions.c.risk, String)
            quoted = f'%"{_like(risk)}"%'
            where.append(exists().where(t.decisions.c.id == a.decision_id, risks.like(quoted, escape="\\")))
        if text:
            needle = f"%{_like(text.lower())}%"
            found = [
                func.lower(a.id).like(needle, escape="\\"),
                func.lower(a.agent_id).like(needle, escape="\\"),
                func.lower(a.tool).like(needle, escape="\\"),
            ]
            if keyring_of(self.engine) is None:  # encrypted arguments cannot be searched as text
                found.append(func.lower(type_coerce(a.arguments, String)).like(needle, escape="\\"))
            where.append(or_(*found))
        order = (a.created_at, a.id) if state == "pending" else (a.created_at.desc(), a.id)
        query = select(t.approvals).where(*where).order_by(*order).offset(offset).limit(limit)
        with reading(self.engine) as conn:
            counted = conn.execute(select(func.count()).select_from(t.approvals).where(*where)).scalar()
            rows = conn.execute(query).mappings().all()
        total = int(counted or 0)
        if self.webhooks.enabled and state in (None, "pending"):
            self.notify_pending()
        return self._views(rows, now), total

    def activity(self, workflows: Sequence[str]) -> tuple[int, str]:
        """How many approvals of ``workflows`` wait, and a token that changes whenever one is
        requested or decided there: an inbox polls this instead of reloading its list."""
        a = t.approvals.c
        query = select(
            func.count().filter(a.state == "pending"), func.max(a.created_at), func.max(a.decided_at)
        ).where(a.workflow.in_(builtins.list(workflows)))
        with reading(self.engine) as conn:
            pending, created, decided = conn.execute(query).one()
        return int(pending or 0), f"{int(pending or 0)}:{created or 0:.6f}:{decided or 0:.6f}"

    # ---- unmasked values -----------------------------------------------------------------------

    def masked_fields(self, approval_id: str) -> builtins.list[str]:
        """The top-level arguments of a waiting approval that redaction masked (an e-mail address,
        a card number) and that :meth:`unmask` would show; none once it is decided."""
        row = self._row(approval_id)
        if row["state"] != "pending" or not isinstance(row["payload"], dict):
            return []
        return _differing(row["arguments"], redact_credentials(row["payload"]))

    def unmask(self, approval_id: str, *, operator: Operator, via: str | None = None) -> dict[str, Any]:
        """A waiting approval's arguments as the agent sent them, for an operator holding one of
        the workflow's ``approvals.unmasked_roles``; credentials stay masked. Each call appends an
        ``approval.unmasked`` audit event naming the operator and the fields shown. The exact
        values are kept only while the approval waits, so a decided one has none to show."""
        row = self._row(approval_id)
        runtime = self._runtimes(row["workflow"])
        if not may_unmask(operator, runtime):
            roles = ", ".join(runtime.manifest.approvals.unmasked_roles) or "none"
            raise PermissionDenied(
                f"operator {operator.id!r} may not see unmasked values of {row['workflow']!r}: that takes "
                f"one of the roles in approvals.unmasked_roles ({roles})",
                code="not_entitled",
                details={"operator_id": operator.id, "workflow": row["workflow"]},
            )
        if row["state"] != "pending" or not isinstance(row["payload"], dict):
            raise ConflictError(
                f"approval {approval_id} is {row['state']}: its exact values are kept only while it waits",
                code="already_decided",
            )
        shown = redact_credentials(row["payload"])
        fields = _differing(row["arguments"], shown)
        data: dict[str, Any] = {"approval": approval_id, "operator": operator.id, "fields": fields}
        if via is not None:
            data["via"] = via
        with transaction(self.engine) as conn:
            append_event(
                conn,
                kind="approval.unmasked",
                actor=f"operator:{operator.id}",
                workflow=row["workflow"],
                run_id=row["run_id"],
                data=data,
            )
        return dict(shown)

    # ---- deciding ----------------------------------------------------------------------------

    def decide(
        self,
        approval_id: str,
        *,
        operator: Operator,
        approve: bool,
        comment: str | None = None,
        via: str | None = None,
    ) -> ApprovalView:
        """Record ``operator``'s vote. Reaching the quorum approves and then executes the action
        (after the decision commits); one reject vote rejects. Returns the approval afterwards.

        Raises :class:`PermissionDenied` (``not_eligible``, ``self_approval_forbidden``),
        :class:`NotFound` (``unknown_approval``), :class:`ConflictError` (``already_decided``,
        ``approval_expired``, ``already_voted``).
        """
        text = clean_comment(comment)
        row = self._row(approval_id)
        workflow = row["workflow"]
        config = self._config(workflow, required=True)
        if not any(operator.can(role, workflow) for role in config.approver_roles):
            raise PermissionDenied(
                f"operator {operator.id!r} may not decide approvals of {workflow!r}: that needs one of "
                f"the roles {', '.join(config.approver_roles)}",
                code="not_eligible",
                details={
                    "operator_id": operator.id,
                    "roles": list(config.approver_roles),
                    "workflow": workflow,
                },
            )
        if not config.allow_self_approval and self._started_by(row["run_id"]) in _names(operator):
            raise PermissionDenied(
                f"operator {operator.id!r} started this run and may not decide its approvals "
                "(four-eyes rule; the manifest's approvals.allow_self_approval is false)",
                code="self_approval_forbidden",
                details={"operator_id": operator.id, "workflow": workflow},
            )
        vote = "approve" if approve else "reject"
        actor = f"operator:{operator.id}"
        now = self._clock()
        approved = expired = False
        try:
            with transaction(self.engine) as conn:
                current = self._lock(conn, approval_id)
                if current["expires_at"] <= now:
                    self._close(conn, current, state="expired", actor="interlock", decided_by=[], now=now)
                    expired = True
                else:
                    already = conn.execute(
                        select(t.approval_votes.c.vote).where(
                            t.approval_votes.c.approval_id == approval_id,
                            t.approval_votes.c.operator_id == operator.id,
                        )
                    ).first()
                    if already is not None:
                        raise ConflictError(
                            f"operator {operator.id!r} already voted {already[0]} on this approval",
                            code="already_voted",
                        )
                    conn.execute(
                        insert(t.approval_votes).values(
                            approval_id=approval_id,
                            operator_id=operator.id,
                            vote=vote,
                            comment=text,
                            created_at=now,
                        )
                    )
                    if approve:
                        approved = self._count_approval(conn, current, operator, text, now, via)
                    else:
                        self._close(
                            conn,
                            current,
                            state="rejected",
                            actor=actor,
                            decided_by=[operator.id],
                            comment=text,
                            now=now,
                            via=via,
                        )
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):  # the vote's primary key: a concurrent double vote
                raise ConflictError(
                    f"operator {operator.id!r} already voted on this approval", code="already_voted"
                ) from exc
            raise
        self.webhooks.wake()
        if expired:
            raise _expired_error(approval_id)
        if approved:
            self._execute(approval_id)
        return self.get(approval_id)

    def cancel(
        self, approval_id: str, *, operator: Operator, comment: str | None = None, via: str | None = None
    ) -> ApprovalView:
        """Withdraw a pending request: nothing runs, and the agent's retry learns it was cancelled.
        Open to the workflow's approvers, owners and admins."""
        text = clean_comment(comment)
        row = self._row(approval_id)
        workflow = row["workflow"]
        roles = tuple(dict.fromkeys([*self._config(workflow, required=False).approver_roles, *_CANCEL_ROLES]))
        if not any(operator.can(role, workflow) for role in roles):
            raise PermissionDenied(
                f"operator {operator.id!r} may not cancel approvals of {workflow!r}: that needs one of "
                f"the roles {', '.join(roles)}",
                code="not_eligible",
                details={"operator_id": operator.id, "roles": list(roles), "workflow": workflow},
            )
        now = self._clock()
        expired = False
        with transaction(self.engine) as conn:
            current = self._lock(conn, approval_id)
            if current["expires_at"] <= now:
                self._close(conn, current, state="expired", actor="interlock", decided_by=[], now=now)
                expired = True
            else:
                self._close(
                    conn,
                    current,
                    state="cancelled",
                    actor=f"operator:{operator.id}",
                    decided_by=[operator.id],
                    comment=text,
                    now=now,
                    via=via,
                )
        self.webhooks.wake()
        if expired:
            raise _expired_error(approval_id)
        return self.get(approval_id)

    def expire_due(self, now: float | None = None) -> builtins.list[str]:
        """Expire every pending approval whose time is up (one audit event each); returns their ids."""
        at = self._clock() if now is None else now
        done: builtins.list[str] = []
        while True:
            with reading(self.engine) as conn:
                due = [
                    r[0]
                    for r in conn.execute(
                        select(t.approvals.c.id)
                        .where(t.approvals.c.state == "pending", t.approvals.c.expires_at <= at)
                        .order_by(t.approvals.c.expires_at)
                        .limit(_BATCH)
                    )
                ]
            if not due:
                return done
            expired = self._expire(due, at)
            done += expired
            if len(due) < _BATCH or not expired:
                return done

    def resume_held(self) -> builtins.list[ActionResult]:
        """Run approved actions that are waiting: held while something was paused, or approved
        while this process stopped before running them. Call after a resume; running one twice is
        impossible (the pipeline claims each execution once)."""
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(t.approvals.c.id, t.approvals.c.workflow)
                .where(
                    t.approvals.c.state == "approved",
                    or_(t.approvals.c.execution == "held", t.approvals.c.execution.is_(None)),
                )
                .order_by(t.approvals.c.decided_at)
            ).all()
        results: builtins.list[ActionResult] = []
        for approval_id, workflow in rows:
            try:
                self._runtimes(workflow)
            except NotFound:  # served by another process
                continue
            result = self._execute(approval_id)
            if result is not None:
                results.append(result)
        return results

    # ---- notifications -----------------------------------------------------------------------

    def notify_requested(self, approval_id: str) -> None:
        """Queue ``approval.requested`` for one approval (idempotent); the worker sends it. The
        worker also finds new approvals by itself, so calling this only makes it sooner."""
        if not self.webhooks.enabled:
            return
        row = self._row(approval_id)
        with transaction(self.engine) as conn:
            self.webhooks.enqueue(
                conn, event="approval.requested", approval_id=approval_id, approval=self._announce(row)
            )
        self.webhooks.wake()

    def notify_pending(self) -> int:
        """Queue ``approval.requested`` for pending approvals not announced yet; returns how many."""
        if not self.webhooks.enabled:
            return 0
        announced = exists().where(
            t.webhook_deliveries.c.approval_id == t.approvals.c.id,
            t.webhook_deliveries.c.event == "approval.requested",
        )
        with reading(self.engine) as conn:
            rows = (
                conn.execute(
                    select(t.approvals)
                    .where(t.approvals.c.state == "pending", ~announced)
                    .order_by(t.approvals.c.created_at)
                    .limit(_BATCH)
                )
                .mappings()
                .all()
            )
        if not rows:
            return 0
        added = 0
        with transaction(self.engine) as conn:
            for row in rows:
                added += self.webhooks.enqueue(
                    conn, event="approval.requested", approval_id=row["id"], approval=self._announce(row)
                )
        self.webhooks.wake()
        return added

    # ---- internals ---------------------------------------------------------------------------

    def _row(self, approval_id: str) -> RowMapping:
        with reading(self.engine) as conn:
            row = conn.execute(select(t.approvals).where(t.approvals.c.id == approval_id)).mappings().first()
        if row is None:
            raise NotFound(f"unknown approval {approval_id!r}", code="unknown_approval")
        return row

    @staticmethod
    def _lock(conn: Connection, approval_id: str) -> RowMapping:
        """The approval row, locked for this transaction, if it is still pending."""
        row = (
            conn.execute(select(t.approvals).where(t.approvals.c.id == approval_id).with_for_update())
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"unknown approval {approval_id!r}", code="unknown_approval")
        if row["state"] == "expired":
            raise _expired_error(approval_id)
        if row["state"] != "pending":
            who = ", ".join(row["decided_by"] or []) or "someone"
            raise ConflictError(
                f"approval {approval_id} is already {row['state']} (by {who})",
                code="already_decided",
                details={"state": row["state"], "decided_by": row["decided_by"] or []},
            )
        return row

    def _config(self, workflow: str, *, required: bool) -> Approvals:
        try:
            return self._runtimes(workflow).manifest.approvals
        except NotFound:
            if required:
                raise
            return Approvals()

    def _started_by(self, run_id: str) -> str | None:
        with reading(self.engine) as conn:
            return conn.execute(select(t.runs.c.started_by).where(t.runs.c.id == run_id)).scalar()

    def _count_approval(
        self,
        conn: Connection,
        row: RowMapping,
        operator: Operator,
        comment: str | None,
        now: float,
        via: str | None,
    ) -> bool:
        """After an approve vote: approve when the quorum is reached. True when it was."""
        approvers = [
            r[0]
            for r in conn.execute(
                select(t.approval_votes.c.operator_id)
                .where(t.approval_votes.c.approval_id == row["id"], t.approval_votes.c.vote == "approve")
                .order_by(t.approval_votes.c.created_at, t.approval_votes.c.operator_id)
            )
        ]
        data = {
            "approval": row["id"],
            "tool": row["tool"],
            "args_hash": row["args_hash"],
            "operator": operator.id,
            "comment": comment,
            "approve_votes": len(approvers),
            "quorum": row["quorum"],
            "via": via,
        }
        actor = f"operator:{operator.id}"
        if len(approvers) < row["quorum"]:
            append_event(
                conn,
                kind="approval.voted",
                actor=actor,
                workflow=row["workflow"],
                run_id=row["run_id"],
                data={**data, "vote": "approve", **_package_tag(conn, row["run_id"])},
            )
            return False
        changed = conn.execute(
            update(t.approvals)
            .where(t.approvals.c.id == row["id"], t.approvals.c.state == "pending")
            .values(state="approved", decided_at=now, decided_by=approvers, comment=comment)
        ).rowcount
        if changed != 1:  # the row lock makes this unreachable; the condition is the guarantee
            raise ConflictError(f"approval {row['id']} was decided meanwhile", code="already_decided")
        decided = {**row, "state": "approved", "decided_at": now, "decided_by": approvers, "comment": comment}
        self.webhooks.enqueue(
            conn, event="approval.decided", approval_id=row["id"], approval=self._announce(decided)
        )
        # The audit append locks the chain's tip for every writer: it goes last, just before commit.
        append_event(
            conn,
            kind="approval.approved",
            actor=actor,
            workflow=row["workflow"],
            run_id=row["run_id"],
            data={**data, "decided_by": approvers, **_package_tag(conn, row["run_id"])},
        )
        return True

    def _close(
        self,
        conn: Connection,
        row: RowMapping,
        *,
        state: str,
        actor: str,
        decided_by: builtins.list[str],
        now: float,
        comment: str | None = None,
        via: str | None = None,
        verifier: str | None = None,
    ) -> None:
        """pending → rejected | expired | cancelled, with what the agent is told and the record.
        ``verifier`` names the verifier agent that settled a rejection (it is no operator)."""
        if state == "rejected":
            who = decided_by[0]
            reason = Reason(
                code="rejected",
                message=f"rejected by {who}: {comment}" if comment else f"rejected by {who}",
                policy_id=f"approval:{row['id']}",
            )
        elif state == "cancelled":
            who = decided_by[0]
            reason = Reason(
                code="approval_cancelled",
                message=f"cancelled by {who}: {comment}" if comment else f"cancelled by {who}",
                policy_id=f"approval:{row['id']}",
            )
        else:
            reason = Reason(
                code="approval_expired",
                message=f"no decision before the approval expired ({_iso(row['expires_at'])})",
                policy_id=f"approval:{row['id']}",
            )
        outcome = self._closing_outcome(conn, row, reason)
        changed = conn.execute(
            update(t.approvals)
            .where(t.approvals.c.id == row["id"], t.approvals.c.state == "pending")
            .values(
                state=state,
                decided_at=now,
                decided_by=decided_by,
                comment=comment,
                # The exact arguments were kept only to run them once approved; that will not happen.
                payload=None,
                outcome=outcome,
            )
        ).rowcount
        if changed != 1:
            raise ConflictError(f"approval {row['id']} was decided meanwhile", code="already_decided")
        closed = {**row, "state": state, "decided_at": now, "decided_by": decided_by, "comment": comment}
        self.webhooks.enqueue(
            conn, event="approval.decided", approval_id=row["id"], approval=self._announce(closed)
        )
        append_event(
            conn,
            kind=f"approval.{state}",
            actor=actor,
            workflow=row["workflow"],
            run_id=row["run_id"],
            data={
                "approval": row["id"],
                "tool": row["tool"],
                "args_hash": row["args_hash"],
                "operator": decided_by[0] if decided_by and verifier is None else None,
                "comment": comment,
                "reason": reason.code,
                "via": via,
                **({"verifier": verifier, "decided_by": decided_by} if verifier is not None else {}),
                **_package_tag(conn, row["run_id"]),
            },
        )

    @staticmethod
    def _closing_outcome(conn: Connection, row: RowMapping, reason: Reason) -> dict[str, Any]:
        """The ``denied`` result the agent gets for a closed approval, also stored under its
        idempotency key (replacing the ``pending_approval`` result stored there)."""
        base: ActionResult | None = None
        key = and_(t.idempotency.c.agent_id == row["agent_id"], t.idempotency.c.key == row["idempotency_key"])
        if row["idempotency_key"] is not None:
            stored = conn.execute(select(t.idempotency.c.outcome, t.idempotency.c.step_id).where(key)).first()
            if stored is not None and stored[1] == row["step_id"] and stored[0] is not None:
                base = ActionResult.model_validate(stored[0])
        if base is None:
            decision = Decision(
                decision="deny",
                reasons=[reason],
                tool=row["tool"],
                verb=row["verb"],
                risk=list((row["package"] or {}).get("risk") or []),
                args_hash=row["args_hash"],
            )
            result = ActionResult(
                status="denied", decision=decision, run_id=row["run_id"], step_id=row["step_id"]
            )
        else:
            decision = base.decision.model_copy(update={"decision": "deny", "reasons": [reason]})
            result = base.model_copy(update={"status": "denied", "decision": decision, "replayed": False})
        outcome = result.model_copy(update={"approval_id": row["id"]}).model_dump(mode="json")
        if base is not None:
            conn.execute(
                update(t.idempotency)
                .where(key, t.idempotency.c.step_id == row["step_id"])
                .values(outcome=outcome)
            )
        return outcome

    def _expire(self, ids: Iterable[str], now: float) -> builtins.list[str]:
        expired: builtins.list[str] = []
        with transaction(self.engine) as conn:
            rows = (
                conn.execute(
                    select(t.approvals)
                    .where(
                        t.approvals.c.id.in_(list(ids)),
                        t.approvals.c.state == "pending",
                        t.approvals.c.expires_at <= now,
                    )
                    .order_by(t.approvals.c.id)
                    .with_for_update()
                )
                .mappings()
                .all()
            )
            for row in rows:
                self._close(conn, row, state="expired", actor="interlock", decided_by=[], now=now)
                expired.append(row["id"])
        if expired:
            self.webhooks.wake()
        return expired

    def _execute(self, approval_id: str) -> ActionResult | None:
        # The decision is committed whatever happens here; a failure leaves it approved and not
        # executed, for resume_held (or the next decide) to pick up.
        try:
            return self.pipeline.execute_approved(approval_id)
        except Exception:
            log.exception("approved action %s did not run", approval_id)
            return None

    def _announce(self, row: RowMapping | dict[str, Any]) -> dict[str, Any]:
        """The approval as webhooks carry it: redacted arguments only, never the exact payload."""
        package = row["package"] or {}
        data: dict[str, Any] = {
            "id": row["id"],
            "workflow": row["workflow"],
            "run_id": row["run_id"],
            "agent_id": row["agent_id"],
            "tool": row["tool"],
            "verb": row["verb"],
            "state": row["state"],
            "action": package.get("action"),
            "description": package.get("description"),
            "arguments": redact(row["arguments"]),
            "reasoning": redact(package.get("reasoning")),
            "evidence": redact(package.get("evidence") or []),
            "risk": package.get("risk") or [],
            "impact_if_accepted": package.get("impact_if_accepted"),
            "impact_if_rejected": package.get("impact_if_rejected"),
            "rules": package.get("rules") or [],
            "quorum": row["quorum"],
            "created_at": row["created_at"],
            "expires_at": row["expires_at"],
        }
        if row["state"] != "pending":
            data.update(
                decided_at=row["decided_at"], decided_by=row["decided_by"] or [], comment=row["comment"]
            )
        if self.public_url is not None:
            data["url"] = f"{self.public_url}/ui/approvals/{row['id']}"
        return data

    def _views(self, rows: Sequence[RowMapping], now: float) -> builtins.list[ApprovalView]:
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        run_ids = sorted({r["run_id"] for r in rows})
        votes: dict[str, builtins.list[Vote]] = {}
        runs: dict[str, RunSummary] = {}
        verdicts: dict[str, VerdictView] = {}
        with reading(self.engine) as conn:
            if any(r["verifier"] is not None for r in rows):
                for v in conn.execute(
                    select(t.approval_verdicts).where(t.approval_verdicts.c.approval_id.in_(ids))
                ).mappings():
                    verdicts[v["approval_id"]] = VerdictView(
                        verifier=v["verifier"],
                        verdict=v["verdict"],
                        args_hash=v["args_hash"],
                        reasoning=v["reasoning"],
                        settles=v["settles"],
                        code=v["code"],
                        policy_ids=list(v["policy_ids"] or []),
                        model=v["model"],
                        input_tokens=v["input_tokens"],
                        output_tokens=v["output_tokens"],
                        cost_usd=v["cost_micros"] / MICROS,
                        step_id=v["step_id"],
                        created_at=v["created_at"],
                    )
            for v in conn.execute(
                select(t.approval_votes)
                .where(t.approval_votes.c.approval_id.in_(ids))
                .order_by(t.approval_votes.c.created_at, t.approval_votes.c.operator_id)
            ).mappings():
                votes.setdefault(v["approval_id"], []).append(
                    Vote(
                        operator_id=v["operator_id"],
                        vote=v["vote"],
                        comment=v["comment"],
                        created_at=v["created_at"],
                    )
                )
            for r in conn.execute(select(t.runs).where(t.runs.c.id.in_(run_ids))).mappings():
                runs[r["id"]] = RunSummary(
                    id=r["id"],
                    workflow=r["workflow"],
                    agent_id=r["agent_id"],
                    environment=r["environment"],
                    state=r["state"],
                    state_reason=r["state_reason"],
                    started_by=r["started_by"],
                    steps=r["steps"],
                    tool_calls=r["tool_calls"],
                    cost_usd=r["cost_micros"] / MICROS,
                    started_at=r["started_at"],
                )
        return [
            _view(row, votes.get(row["id"], []), runs.get(row["run_id"]), now, verdicts.get(row["id"]))
            for row in rows
        ]


def _view(
    row: RowMapping,
    votes: builtins.list[Vote],
    run: RunSummary | None,
    now: float,
    verdict: VerdictView | None = None,
) -> ApprovalView:
    package = ApprovalPackage.model_validate(row["package"] or {})
    pending = row["state"] == "pending"
    return ApprovalView(
        id=row["id"],
        workflow=row["workflow"],
        run_id=row["run_id"],
        step_id=row["step_id"],
        agent_id=row["agent_id"],
        tool=row["tool"],
        verb=row["verb"],
        state=row["state"],
        args_hash=row["args_hash"],
        arguments=row["arguments"],
        risk=package.risk,
        package=package,
        quorum=row["quorum"],
        approve_votes=sum(1 for v in votes if v.vote == "approve"),
        votes=votes,
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        age_s=max(0.0, now - row["created_at"]),
        expires_in_s=max(0.0, row["expires_at"] - now) if pending else None,
        decided_at=row["decided_at"],
        decided_by=list(row["decided_by"] or []),
        comment=row["comment"],
        execution=row["execution"],
        outcome=None if row["outcome"] is None else ActionResult.model_validate(row["outcome"]),
        run=run,
        verifier=row["verifier"],
        verification=row["verification"],
        verdict=verdict,
    )


def _differing(stored: Any, shown: Mapping[str, Any]) -> builtins.list[str]:
    stored = stored if isinstance(stored, Mapping) else {}
    return [k for k, v in shown.items() if stored.get(k) != v]


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def clean_comment(comment: str | None) -> str | None:
    """A decision's comment as stored: trimmed, bounded, and redacted like every other payload."""
    if comment is None:
        return None
    if not isinstance(comment, str):
        raise ArgumentsInvalid("comment must be text", field="comment")
    text = comment.strip()
    if not text:
        return None
    if len(text) > MAX_COMMENT_CHARS:
        raise ArgumentsInvalid(f"comment exceeds {MAX_COMMENT_CHARS} characters", field="comment")
    if "\x00" in text:
        raise ArgumentsInvalid("comment must not contain NUL characters", field="comment")
    return redact_text(text)


def _names(operator: Operator) -> tuple[str, str]:
    # runs.started_by holds an actor: "operator:<id>" from the API, a bare id from older callers.
    return operator.id, f"operator:{operator.id}"


def _expired_error(approval_id: str) -> ConflictError:
    return ConflictError(f"approval {approval_id} expired before it was decided", code="approval_expired")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _package_tag(conn: Connection, run_id: str) -> dict[str, str]:
    """``{"package": id}`` when the run was started with a work package (its id is on every event
    of the run), else nothing."""
    package_id = conn.execute(select(t.runs.c.package_id).where(t.runs.c.id == run_id)).scalar()
    return {} if package_id is None else {"package": str(package_id)}


__all__ = ["MAX_COMMENT_CHARS", "ApprovalService", "clean_comment"]
