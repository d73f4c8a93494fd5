"""``interlock pause | resume | pauses`` and ``interlock handoffs``: kill switches and handoffs.

Like ``interlock approvals``, these work on the database directly and act as a named operator
(``--as ID``), who must exist and be active: their roles decide what is allowed, by the same rules
as the HTTP API and the console (:mod:`interlock._internal.permissions`), and the audit log names them. A
handoff resumed with edited arguments sends the held action through the whole pipeline from this
process, with the workflow's active manifest loaded from the database.
"""

from __future__ import annotations

import json
import time
from contextlib import suppress
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from interlock._internal.cli.approvals import (
    AsOpt,
    DbOpt,
    JsonOpt,
    RequiredAsOpt,
    _load_workflow,
    _opened,
    _operator,
)
from interlock._internal.cli.common import console, fail, print_json, print_records, summarize_arguments
from interlock._internal.operations import handoffs as handoff_ops
from interlock._internal.operations import pauses as pause_ops
from interlock.exceptions import InterlockError

if TYPE_CHECKING:
    from interlock._internal.gateway.models import ActionResult
    from interlock._internal.operations.pauses import PauseInfo
    from interlock._internal.runs.handoffs import Handoff, Resolution
    from interlock._internal.service import Interlock


class Scope(StrEnum):
    workflow = "workflow"
    agent = "agent"
    environment = "environment"


class Action(StrEnum):
    resume = "resume"
    stop = "stop"
    resume_with_arguments = "resume-with-arguments"
    happened = "happened"
    not_happened = "not-happened"
    retry = "retry"

    @property
    def resolution(self) -> Resolution:
        return _RESOLUTIONS[self]


_RESOLUTIONS: dict[Action, Resolution] = {
    Action.resume: "resume",
    Action.stop: "stop",
    Action.resume_with_arguments: "resume_with_arguments",
    Action.happened: "happened",
    Action.not_happened: "not_happened",
    Action.retry: "retry",
}

ScopeArg = Annotated[
    Scope,
    typer.Argument(
        metavar="SCOPE",
        help="workflow (its owners, admins and pause_owners may), agent (admins and owners of its "
        "workflow) or environment (admins of every workflow).",
    ),
]
KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="The workflow, agent or environment name.")]
IdArg = Annotated[
    str, typer.Argument(metavar="HANDOFF_ID", help="The handoff (from `interlock handoffs list`).")
]

handoffs_app = typer.Typer(
    help="Handoffs: runs a stop rule handed to a person. List them, show one, and resolve it as a named "
    "operator: resume the run, resume it with the held action's arguments edited (the action then goes "
    "through the whole pipeline from this process), or stop it.",
    no_args_is_help=True,
)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _prepare(il: Interlock, scope: str, key: str) -> None:
    """Load what the pause rules and held approvals need: the workflow's (or agent's) manifest."""
    if scope == "workflow":
        _load_workflow(il, key)  # its pause_owners decide; an unknown workflow stops here
    elif scope == "agent":
        found = il.agents.lookup(key)
        if found is not None:
            with suppress(InterlockError):  # only needed to run held approvals on resume
                _load_workflow(il, found.record.workflow)


# ---- pause, resume, pauses ----------------------------------------------------------------------


def pause(
    scope: ScopeArg,
    key: KeyArg,
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why; kept in the audit log.")],
    as_operator: RequiredAsOpt,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pause a workflow, agent or environment: its next action anywhere is denied until resumed."""
    if not reason.strip():
        fail(
            "give a reason for pausing; it goes in the audit log",
            as_json=as_json,
            error_code="invalid_request",
        )
    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, as_operator, as_json=as_json)
        _prepare(il, scope.value, key)
        info, created = pause_ops.pause(il, operator, scope.value, key, reason=reason)
    if as_json:
        print_json({**info.model_dump(mode="json"), "created": created})
        return
    if created:
        console.print(
            f"paused {scope.value} [bold]{escape(key)}[/]: {escape(info.reason or '')}", highlight=False
        )
    else:
        console.print(
            f"{scope.value} [bold]{escape(key)}[/] was already paused by {escape(info.paused_by or '?')} "
            f"since {_when(info.since)}: {escape(info.reason or 'no reason given')}",
            highlight=False,
        )


def resume(
    scope: ScopeArg, key: KeyArg, as_operator: RequiredAsOpt, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Lift a pause; approved actions it held run now (those of workflows this process can load)."""
    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, as_operator, as_json=as_json)
        _prepare(il, scope.value, key)
        info = pause_ops.resume(il, operator, scope.value, key)
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    console.print(f"resumed {scope.value} [bold]{escape(key)}[/]", highlight=False)


def pauses(as_operator: AsOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List every active pause: what, who, why and since when."""
    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, as_operator, as_json=as_json) if as_operator else None
        items = pause_ops.active_pauses(il, operator)
    if as_json:
        print_json([p.model_dump(mode="json") for p in items])
        return
    if not items:
        console.print("nothing is paused", style="dim")
        return
    _pause_table(items)


def _pause_table(items: list[PauseInfo]) -> None:
    rows = [
        {
            "key": escape(p.key),
            "scope": p.scope,
            "workflow": escape(p.workflow or "-"),
            "paused by": escape(p.paused_by or "-"),
            "since": _when(p.since),
            "reason": escape(p.reason or "-"),
        }
        for p in items
    ]
    columns = ["scope", "key", "workflow", "paused by", "since", "reason"]
    print_records(rows, columns=columns, key="key", headline=["scope", "workflow"])


# ---- handoffs -----------------------------------------------------------------------------------


@handoffs_app.command("list")
def list_handoffs(
    workflow: Annotated[str | None, typer.Option("--workflow", "-w", help="Only this workflow's.")] = None,
    state: Annotated[str, typer.Option("--state", help="open, resumed, stopped or all.")] = "open",
    run: Annotated[str | None, typer.Option("--run", help="Only this run's.")] = None,
    as_operator: AsOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List handoffs, newest first (open ones unless --state says otherwise)."""
    if state not in (*handoff_ops.HANDOFF_STATES, "all"):
        fail(
            f"--state must be open, resumed, stopped or all, not {state!r}",
            as_json=as_json,
            error_code="invalid_request",
        )
    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, as_operator, as_json=as_json) if as_operator else None
        items = handoff_ops.visible_handoffs(il, operator, workflow=workflow, state=state, run_id=run)
    if as_json:
        print_json([h.model_dump(mode="json") for h in items])
        return
    if not items:
        console.print(f"no {'' if state == 'all' else state + ' '}handoffs", style="dim")
        return
    rows = [
        {
            "id": escape(h.id),
            "workflow": escape(h.workflow),
            "run": escape(h.run_id),
            "tool": escape(h.tool or "-"),
            "arguments": escape(summarize_arguments(h.arguments)),
            "why": escape(h.message),
            "created": _when(h.created_at),
            "state": escape(h.state),
        }
        for h in items
    ]
    columns = ["id", "workflow", "run", "tool", "arguments", "why", "created", "state"]
    print_records(rows, columns=columns, key="id", headline=["tool", "state"], whole=("run",))


@handoffs_app.command()
def show(handoff_id: IdArg, as_operator: AsOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Show one handoff: the run, the held action and its (redacted) arguments, why, how it ended."""
    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, as_operator, as_json=as_json) if as_operator else None
        handoff = handoff_ops.visible_handoff(il, operator, handoff_id)
    _print(handoff, None, as_json=as_json)


@handoffs_app.command()
def resolve(
    handoff_id: IdArg,
    action: Annotated[
        Action,
        typer.Option(
            "--action",
            help="resume, stop, or resume-with-arguments (needs --args); for an outcome-unknown "
            "handoff: happened (needs --evidence), not-happened, or retry (same upstream key).",
        ),
    ],
    as_operator: RequiredAsOpt,
    args: Annotated[
        str | None, typer.Option("--args", metavar="JSON", help="The edited arguments, a JSON object.")
    ] = None,
    comment: Annotated[
        str | None, typer.Option("--comment", "-m", help="Why; kept with the handoff.")
    ] = None,
    evidence: Annotated[
        str | None,
        typer.Option("--evidence", help="With happened: what shows it happened; kept in the audit log."),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Resolve a handoff: resume the run, resume it with edited arguments, or stop it; an
    outcome-unknown one: it happened (with evidence), it did not, or retry it now."""
    arguments: Any = None
    if args is not None:
        try:
            arguments = json.loads(args)
        except ValueError as exc:
            fail(f"--args is not JSON: {exc}", as_json=as_json, error_code="invalid_arguments")
        if not isinstance(arguments, dict):
            fail("--args must be a JSON object", as_json=as_json, error_code="invalid_arguments")
    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, as_operator, as_json=as_json)
        if action in (Action.resume_with_arguments, Action.retry):
            _load_workflow(il, il.handoffs.get(handoff_id).workflow)  # the action runs through it
        handoff, result = handoff_ops.resolve(
            il,
            operator,
            handoff_id,
            action=action.resolution,
            arguments=arguments,
            comment=comment,
            evidence=evidence,
        )
    if as_json:
        print_json(
            {
                "handoff": handoff.model_dump(mode="json"),
                "action_result": None if result is None else result.model_dump(mode="json"),
            }
        )
        return
    _print(handoff, result, as_json=False)


def _print(handoff: Handoff, result: ActionResult | None, *, as_json: bool) -> None:
    if as_json:
        print_json(handoff.model_dump(mode="json"))
        return
    line = console.print
    line(f"[bold]{escape(handoff.id)}[/]  {escape(handoff.state)}", highlight=False)
    line(f"workflow   {escape(handoff.workflow)}   run {escape(handoff.run_id)}", highlight=False)
    line(f"why        {escape(handoff.message)} ({escape(handoff.reason_code)})", highlight=False)
    if handoff.tool is not None:
        line(f"action     [bold]{escape(handoff.tool)}[/]", highlight=False)
        line(
            "arguments  " + escape(json.dumps(handoff.arguments, ensure_ascii=False, sort_keys=True)),
            highlight=False,
        )
    line(f"created    {_when(handoff.created_at)}")
    if handoff.resolved_at is not None:
        resolution = handoff.resolution if isinstance(handoff.resolution, dict) else {}
        said = f": {resolution['comment']}" if resolution.get("comment") else ""
        line(
            f"resolved   {_when(handoff.resolved_at)} by {escape(handoff.resolved_by or '?')} "
            f"({escape(str(resolution.get('action', handoff.state)))}){escape(said)}",
            highlight=False,
        )
    if result is not None:
        if result.executed:
            detail = json.dumps(result.result, ensure_ascii=False, sort_keys=True, default=str)
        else:
            detail = result.error or "; ".join(r.message for r in result.decision.reasons[:1])
        line(
            f"edited action  {escape(result.status)}" + (f": {escape(detail)}" if detail else ""),
            highlight=False,
        )
        if result.approval_id:
            line(f"approval   {escape(result.approval_id)}", highlight=False)


__all__ = ["handoffs_app", "pause", "pauses", "resume"]
