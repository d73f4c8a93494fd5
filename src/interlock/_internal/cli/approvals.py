"""``interlock approvals``: see what waits for a person, read one, approve, reject or cancel it.

The command works on the database directly and acts as a named operator (``--as ID``): that
operator must exist and be active, their roles decide what the command may do (the same rules as
the API: an approver role for the workflow, never on a run they started unless the manifest
allows it), and the audit log records the decision under their name, noting the command line and
the local user. Whoever can reach the database can act as any operator, so keep database access to
the people who could anyway. An approval that reaches its quorum runs its action from this
process, with the workflow's active manifest and this environment's tool credentials.
"""

from __future__ import annotations

import getpass
import json
import time
from contextlib import suppress
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from interlock._internal.cli.common import (
    console,
    fail,
    opened_interlock,
    print_json,
    print_records,
    summarize_arguments,
)
from interlock.exceptions import InterlockError

if TYPE_CHECKING:
    from interlock._internal.approvals.models import ApprovalView
    from interlock._internal.identity.operators import Operator
    from interlock._internal.service import Interlock

app = typer.Typer(
    help="Approvals: list what waits for a person, show one, approve, reject or cancel it. Commands act "
    "--as a named operator, who must exist and be active: their roles decide what is allowed and the "
    "audit log names them. An approval that reaches its quorum runs its action from this process.",
    no_args_is_help=True,
)

DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
AsOpt = Annotated[
    str | None,
    typer.Option(
        "--as",
        metavar="OPERATOR_ID",
        help="Act as this existing, active operator: their roles apply and the audit log names them. "
        "For list and show it limits the output to their workflows.",
    ),
]
RequiredAsOpt = Annotated[
    str,
    typer.Option(
        "--as",
        metavar="OPERATOR_ID",
        help="Act as this existing, active operator: their roles apply and the audit log names them.",
    ),
]
CommentOpt = Annotated[
    str | None, typer.Option("--comment", "-m", help="Why; on a rejection, what the agent is told.")
]
IdArg = Annotated[str, typer.Argument(metavar="APPROVAL_ID", help="The approval (an action's approval_id).")]


_opened = opened_interlock


def _via() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in some containers
        return "cli"


def _operator(il: Interlock, operator_id: str, *, as_json: bool) -> Operator:
    record = il.operators.get(operator_id)
    if not record.active:
        fail(f"operator {operator_id!r} is {record.status}", as_json=as_json, error_code="operator_disabled")
    return record.principal()


def _load_workflow(il: Interlock, workflow: str) -> None:
    """Load the workflow's active version from the database: its manifest names the approvers,
    and an approved action runs through it, in the service, as it would on a server."""
    il.load_active_workflow(workflow, actor=_via())


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}m"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


_STATE_STYLE = {
    "pending": "yellow",
    "approved": "green",
    "rejected": "red",
    "expired": "dim",
    "cancelled": "dim",
}


@app.command("list")
def list_approvals(
    workflow: Annotated[str | None, typer.Option("--workflow", "-w", help="Only this workflow's.")] = None,
    state: Annotated[
        str, typer.Option("--state", help="pending, approved, rejected, expired, cancelled or all.")
    ] = "pending",
    min_age: Annotated[
        float | None, typer.Option("--min-age", help="Only those waiting at least this many seconds.")
    ] = None,
    risk: Annotated[
        str | None, typer.Option("--risk", help="Only those with this risk trait (money, pii, …).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 100,
    as_operator: AsOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List approvals; pending ones oldest first."""
    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, as_operator, as_json=as_json) if as_operator else None
        views = il.approvals.list(
            workflow=workflow, state=state, older_than_s=min_age, risk=risk, operator=operator, limit=limit
        )
    if as_json:
        print_json([v.model_dump(mode="json") for v in views])
        return
    if not views:
        console.print(f"no {'' if state == 'all' else state + ' '}approvals", style="dim")
        return
    rows = []
    for v in views:
        style = _STATE_STYLE.get(v.state, "")
        rows.append(
            {
                "id": escape(v.id),
                "workflow": escape(v.workflow),
                "tool": escape(v.tool),
                "arguments": escape(summarize_arguments(v.arguments)),
                "risk": escape(", ".join(v.risk) or "-"),
                "age": _ago(v.age_s),
                "votes": f"{v.approve_votes}/{v.quorum}",
                "state": f"[{style}]{escape(v.state)}[/]" if style else escape(v.state),
                "expires": _ago(v.expires_in_s) if v.expires_in_s is not None else "-",
            }
        )
    several = len({v.workflow for v in views}) > 1
    columns = ["id", *(["workflow"] if several else []), "tool", "arguments", "risk", "age", "votes", "state"]
    print_records(rows, columns=[*columns, "expires"], key="id", headline=["tool", "state"])


@app.command()
def show(approval_id: IdArg, as_operator: AsOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Show one approval: the proposed action, why, the evidence, the impact either way, the votes."""
    with _opened(db, as_json=as_json) as il:
        view = il.approvals.get(approval_id)
        if as_operator:
            operator = _operator(il, as_operator, as_json=as_json)
            if operator.workflows is not None and view.workflow not in operator.workflows:
                fail(f"unknown approval {approval_id!r}", as_json=as_json, error_code="unknown_approval")
    _print(view, as_json=as_json)


def _decide(
    approval_id: str, operator_id: str, *, approve: bool, comment: str | None, db: str | None, as_json: bool
) -> None:
    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, operator_id, as_json=as_json)
        _load_workflow(il, il.approvals.get(approval_id).workflow)
        view = il.approvals.decide(
            approval_id, operator=operator, approve=approve, comment=comment, via=_via()
        )
    _print(view, as_json=as_json)


@app.command()
def approve(
    approval_id: IdArg,
    as_operator: RequiredAsOpt,
    comment: CommentOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Vote to approve. Reaching the quorum runs the action now, with exactly the approved arguments."""
    _decide(approval_id, as_operator, approve=True, comment=comment, db=db, as_json=as_json)


@app.command()
def reject(
    approval_id: IdArg,
    as_operator: RequiredAsOpt,
    comment: CommentOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Reject: the action never runs, and the agent is told the comment."""
    _decide(approval_id, as_operator, approve=False, comment=comment, db=db, as_json=as_json)


@app.command()
def cancel(
    approval_id: IdArg,
    as_operator: RequiredAsOpt,
    comment: CommentOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Withdraw a pending approval that no longer needs deciding."""
    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, as_operator, as_json=as_json)
        view = il.approvals.get(approval_id)
        # Cancelling runs nothing: without a loadable manifest the default roles decide who may.
        with suppress(InterlockError):
            _load_workflow(il, view.workflow)
        view = il.approvals.cancel(approval_id, operator=operator, comment=comment, via=_via())
    _print(view, as_json=as_json)


def _print(view: ApprovalView, *, as_json: bool) -> None:
    if as_json:
        print_json(view.model_dump(mode="json"))
        return
    p = view.package
    style = _STATE_STYLE.get(view.state, "")
    line = console.print
    line(f"[bold]{escape(view.id)}[/]  [{style}]{escape(view.state)}[/]", highlight=False)
    line(f"workflow   {escape(view.workflow)}   run {escape(view.run_id)}   agent {escape(view.agent_id)}")
    line(
        f"action     [bold]{escape(p.action or view.tool)}[/]"
        + (f" — {escape(p.description)}" if p.description else "")
    )
    line(
        "arguments  " + escape(json.dumps(view.arguments, ensure_ascii=False, sort_keys=True)),
        highlight=False,
    )
    if p.reasoning:
        line(f"reasoning  {escape(p.reasoning)}")
    if p.confidence is not None:
        line(f"confidence {p.confidence:g}")
    for item in p.evidence:
        line(f"evidence   {escape(item)}")
    line(f"risk       {escape(', '.join(view.risk) or 'none')}")
    if p.impact_if_accepted:
        line(f"if approved  {escape(p.impact_if_accepted)}")
    if p.impact_if_rejected:
        line(f"if rejected  {escape(p.impact_if_rejected)}")
    for rule in p.rules:
        line(f"rule       {escape(rule)}")
    for reason in p.policy_reasons:
        line(
            f"policy     {escape(str(reason.get('code')))}: {escape(str(reason.get('message')))}", style="dim"
        )
    line(f"requested  {_when(view.created_at)} ({_ago(view.age_s)} ago)")
    if view.expires_in_s is not None:
        line(f"expires    {_when(view.expires_at)} (in {_ago(view.expires_in_s)})")
    if view.verifier is not None:
        line(f"verifier   {escape(view.verifier)} ({escape(view.verification or 'awaiting')})")
        if view.verdict is not None:
            vd = view.verdict
            settled = "settled" if vd.settles else f"advice: {vd.code}"
            said = f": {escape(vd.reasoning)}" if vd.reasoning else ""
            line(f"  verdict {escape(vd.verdict)} at {_when(vd.created_at)} ({escape(settled)}){said}")
    line(f"votes      {view.approve_votes}/{view.quorum} to approve")
    for vote in view.votes:
        said = f": {escape(vote.comment)}" if vote.comment else ""
        line(f"  {escape(vote.operator_id)} voted {vote.vote} at {_when(vote.created_at)}{said}")
    if view.decided_at is not None:
        who = ", ".join(view.decided_by) or "interlock"
        line(
            f"decided    {_when(view.decided_at)} by {escape(who)}"
            + (f": {escape(view.comment)}" if view.comment else "")
        )
    if view.execution is not None:
        line(f"execution  {escape(view.execution)}")
    if view.outcome is not None:
        outcome = view.outcome
        if outcome.status == "executed":
            detail = json.dumps(outcome.result, ensure_ascii=False, sort_keys=True)
        else:
            detail = outcome.error or "; ".join(r.message for r in outcome.decision.reasons[:1])
        line(
            f"outcome    {escape(outcome.status)}" + (f": {escape(detail)}" if detail else ""),
            highlight=False,
        )
